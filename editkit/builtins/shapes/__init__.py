"""The shapes world: a small synthetic world where every stage can be judged against truth.

`world` draws scenes of one or two coloured shapes on a coloured background and writes their
captions; `oracle` reads the attributes back from any image of the world.
"""

from pathlib import Path

from editkit import hookimpl

MODELS = Path(__file__).parent / "models"
# shapes-edit: the editor recipes/shapes.yaml trains (seed 0), shipped by ship_editor
MODEL_NAMES = ("shapes-sd", "shapes-clip", "shapes-dino", "shapes-edit")


@hookimpl
def register_caption_generators(register):
    from editkit.builtins.shapes.captions import ShapesCaptions
    from editkit.builtins.shapes.photos import ShapesPhotos

    register(ShapesCaptions)
    register(ShapesPhotos)


@hookimpl
def register_models(register):
    """The world's text-to-image model, CLIP, DINOv2 and editor, shipped as package data; a
    folder that is missing (a build without weights) resolves to a clear error, not a hub
    lookup."""
    for name in MODEL_NAMES:
        register(name, MODELS / name)


@hookimpl
def register_judges(register):
    from editkit.builtins.shapes.judge import ShapesJudge

    register(ShapesJudge)
