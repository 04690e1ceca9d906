from collections import Counter
from pathlib import Path

import pytest
import yaml

from editkit.captions.checks import check_triplet, dedupe_key
from editkit.captions.packs import load_pack
from editkit.testing.llmserver import LLMServer

ROOT = Path(__file__).resolve().parents[2]


def reason(**triplet):
    problem = check_triplet(triplet)
    return problem.reason if problem else None


def test_valid_triplet_passes():
    assert reason(input="a red car", edit="make the car blue", output="a blue car") is None


def test_schema_problems():
    assert reason(input="a red car", edit="", output="a blue car") == "invalid schema"
    assert check_triplet(["not", "a", "dict"]).reason == "invalid schema"


def test_output_must_differ():
    assert reason(input="A red car.", edit="do nothing", output="a red  car") == \
        "output same as input"


def test_add_and_remove_consistency():
    assert reason(input="a street with trees", edit="add a tree",
                  output="a street with more trees") == "add: input already has it"
    assert reason(input="an empty street", edit="remove the cars",
                  output="an empty street at night") == "remove: input lacks it"
    assert reason(input="a street with parked cars", edit="remove the cars",
                  output="an empty street") is None
    assert reason(input="a room", edit="put a green lamp on the table",
                  output="a room with a green lamp") is None


def test_an_added_thing_must_be_in_the_output():
    problem = check_triplet({"input": "a quiet street with parked cars",
                             "edit": "add a red bicycle next to the bench",
                             "output": "a quiet street with parked cars and a blue bus"})
    assert problem.reason == "added thing missing from output"
    assert "'red bicycle'" in problem.detail
    assert reason(input="a street", edit="insert a dog", output="a wet street") == \
        "added thing missing from output"


@pytest.mark.parametrize("before, edit, after", [
    ("a quiet street", "add snow", "a snowy quiet street"),  # a derived form
    ("a road", "add puddles", "a road with a puddle"),  # the other number
    ("a garden", "add leaves on the grass", "a garden with a leaf on the grass"),
    ("a street", "add children playing", "a street with a child playing"),
    ("a room", "add more light", "a brightly lit room"),  # a listed synonym
    ("a room", "add a vintage filter", "a vintage photo of a room"),  # one of its words
    ("a quiet street", "Please add a bike.", "a quiet street with a bicycle"),
])
def test_added_things_are_found_in_their_other_forms(before, edit, after):
    assert reason(input=before, edit=edit, output=after) is None


def test_a_removed_thing_must_be_gone_from_the_output():
    problem = check_triplet({"input": "a busy street with a red bus and shops",
                             "edit": "remove the red bus",
                             "output": "a busy street with shops and a red bus parked"})
    assert problem.reason == "removed thing still in output"
    assert "'red bus'" in problem.detail
    assert reason(input="a street with buses", edit="erase the buses",
                  output="a street with a bus") == "removed thing still in output"


@pytest.mark.parametrize("before, edit, after", [
    ("a street with parked cars", "remove the cars", "a street without cars"),
    ("a street with parked cars", "delete the cars", "a street with no cars"),
    ("a street with parked cars", "remove the cars", "a street with the cars removed"),
    ("a street with two cars", "remove one of the cars", "a street with one car"),
    ("a red car and a blue car", "remove the red car", "a blue car"),  # another one stays
    ("a table with a cup", "remove the cup please", "a bare table"),
    ("a table with a cup", "remove it", "a bare table"),  # nothing named to look for
])
def test_removals_that_leave_a_mention_are_kept(before, edit, after):
    assert reason(input=before, edit=edit, output=after) is None


@pytest.mark.parametrize("edit", [
    "add a tree and remove the car",
    "make it snowy, then add a dog",
    "remove the car; add a bus",
    "make it night and turn the lights on",
    "add a dog then make it rainy",
    "paint the door red, and then replace the car with a bus",
])
def test_chained_edits_are_rejected(edit):
    problem = check_triplet({"input": "a street with a car, a door and trees", "edit": edit,
                             "output": "a snowy street with a bus at night"})
    assert problem.reason == "several edits in one"
    assert edit.split()[0] in problem.detail


@pytest.mark.parametrize("edit, after", [
    ("make it sunny and dry", "a sunny dry street with a car"),
    ("add a bench and plant pots", "a street with a car, a bench and plant pots"),
    ("add a truck with turn signals on", "a street with a car and a truck with turn signals on"),
    ("remove the pots and pans", "a street with a car"),
    ("make it look red, white and blue", "a red, white and blue street with a car"),
])
def test_one_edit_with_and_in_it_is_kept(edit, after):
    before = "a street with a car and pots and pans" if "pans" in edit else "a street with a car"
    assert reason(input=before, edit=edit, output=after) is None


def test_an_output_that_rewrites_the_scene_is_rejected():
    problem = check_triplet({"input": "a living room with a grey sofa and a rug",
                             "edit": "make the sofa blue",
                             "output": "a snowy mountain village with wooden chalets, ski "
                                       "lifts and pine forests under stars"})
    assert problem.reason == "output changes more than the edit"
    assert "-grey" in problem.detail and "+chalets" in problem.detail
    bloated = ("a red car with a dog, a marching band, fireworks over a castle, buses, a "
               "giraffe, balloons, a crowd of tourists, a clown, a rainbow, a hot air balloon "
               "and a brass statue")
    assert reason(input="a red car", edit="add a dog", output=bloated) == \
        "output changes more than the edit"
    # a season rewrites a few words of the scene, and is fine
    assert reason(input="a sunroom full of plants with green garden views in summer",
                  edit="make it autumn",
                  output="a sunroom full of plants with orange autumn foliage outside") is None


def shapes_triplets():
    """The shapes world's captions as its recipes and its judge ask for them, and more."""
    from editkit.builtins.shapes.captions import ShapesCaptions, ShapesOptions

    configs = [({}, 0, 1500), ({"max_shapes": 3}, 1, 1500),
               ({"max_shapes": 3, "unsaid": ["size", "place", "background"]}, 2, 1500)]
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        data = yaml.safe_load(recipe.read_text())
        captions = data.get("captions") or {}
        if captions.get("use") == "shapes":
            configs.append((captions.get("options") or {}, data.get("seed", 0),
                            captions["count"]))
    assert len(configs) >= 5  # the shapes and quickstart recipes were found
    for options, seed, count in configs:
        generator = ShapesCaptions(ShapesOptions(**options))
        yield from (generator.triplet(seed, i) for i in range(count))


def template_triplets():
    from editkit.builtins.template import TemplateCaptions, TemplateOptions

    for options in [{}, {"scenes": ["on a quiet street", "in a park"], "max_objects": 4},
                    {"subjects": ["car", "house", "tree", "bench"],
                     "attributes": ["red", "blue"]}]:
        generator = TemplateCaptions(TemplateOptions(**options))
        yield from (generator.triplet(0, i) for i in range(1000))


def test_every_triplet_the_built_in_generators_make_passes():
    """No false rejects on what editkit itself writes: the domain packs' few-shot examples,
    the template and shapes generators (the shapes recipes' whole streams, so their kept
    triplets and numbers do not move) and the LLM test server's replies."""
    with LLMServer() as server:
        served = server.make_triplets(20) + server.edit_triplets(
            ["a quiet street with parked cars", "A Red Door."], "ok")
    sources = {
        "packs": [e for name in ("streetview", "interior") for e in load_pack(name).examples],
        "template": list(template_triplets()),
        "shapes": list(shapes_triplets()),
        "llm test server": served,
    }
    for name, triplets in sources.items():
        rejected = [(t, check_triplet(t)) for t in triplets if check_triplet(t) is not None]
        assert rejected == [], (name, Counter(r.reason for _, r in rejected), rejected[:3])
    assert len(sources["shapes"]) > 5000 and len(sources["packs"]) >= 60


def test_dedupe_key_normalises():
    a = {"input": "A red car.", "edit": "Make it BLUE", "output": "a blue car"}
    b = {"input": "a red  car", "edit": "make it blue!", "output": "A blue car"}
    assert dedupe_key(a) == dedupe_key(b)
