"""The shapes world: a small synthetic world where every stage can be judged against truth.

`world` draws scenes of one or two coloured shapes on a coloured background and writes their
captions; `oracle` reads the attributes back from any image of the world.
"""

from editkit import hookimpl


@hookimpl
def register_caption_generators(register):
    from .captions import ShapesCaptions

    register(ShapesCaptions)


@hookimpl
def register_judges(register):
    from .judge import ShapesJudge

    register(ShapesJudge)
