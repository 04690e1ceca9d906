import pytest
from pydantic import ValidationError

from editkit.builtins.template import TemplateCaptions
from editkit.captions.checks import check_triplet
from editkit.plugin.kinds import CaptionJob


def take(generator, n, seed=0, start=0):
    out = []
    for batch in generator.generate(CaptionJob(count=n, seed=seed, start=start)):
        out += batch
        if len(out) >= n:
            return out[:n]


def make(**options):
    return TemplateCaptions(TemplateCaptions.Options(**options))


def test_same_seed_same_triplets_other_seed_others():
    gen = make()
    assert take(gen, 50, seed=1) == take(make(), 50, seed=1)
    assert take(gen, 50, seed=1) != take(gen, 50, seed=2)


def test_resuming_from_an_index_continues_the_stream():
    gen = make(batch=8)
    assert take(gen, 30)[10:] == take(gen, 20, start=10)


def test_every_triplet_passes_the_checks_and_is_one_edit():
    for triplet in take(make(max_objects=3), 400):
        assert check_triplet(triplet) is None, triplet
        kind = triplet["edit_kind"]
        assert kind in {"change", "add", "remove", "replace"}
        for word in triplet["words"]:
            assert word in (triplet["output"] if kind != "remove" else triplet["input"])


def test_add_and_remove_semantics():
    triplets = take(make(edits=["add", "remove"]), 100)
    for t in triplets:
        subject = t["words"][-1]
        if t["edit_kind"] == "add":
            assert subject not in t["input"] and subject in t["output"]
        else:
            assert subject in t["input"] and subject not in t["output"]


def test_custom_vocabulary_and_verbs_are_used():
    triplets = take(make(subjects=["sofa", "rug"], attributes=["velvet", "linen"],
                         edits=["change"], verbs={"change": ["reupholster the {subject} in "
                                                             "{attribute}"]},
                         caption="a living room with {objects}{scene}",
                         scenes=["at dusk"]), 10)
    assert all(t["edit"].startswith("reupholster the ") for t in triplets)
    assert all(t["input"].startswith("a living room with ") and t["input"].endswith("at dusk")
               for t in triplets)


def test_bad_options_say_what_is_wrong():
    with pytest.raises(ValidationError, match="unknown field"):
        make(verbs={"change": ["make the {thing} {attribute}"]})
    with pytest.raises(ValidationError, match="max_objects >= 2"):
        make(max_objects=1)
    with pytest.raises(ValidationError, match="extra"):
        make(colours=["red"])


def test_two_subjects_in_every_scene_still_leave_one_to_add_or_swap_in():
    gen = make(subjects=["car", "house"], attributes=["red", "blue"], max_objects=4)
    triplets = [gen.triplet(0, i) for i in range(200)]
    assert {t["edit_kind"] for t in triplets} == {"change", "add", "remove", "replace"}
    assert all(check_triplet(t) is None for t in triplets)
