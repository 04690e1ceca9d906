"""The shapes judge on pairs the world draws itself (the oracle reads those perfectly), and
the pair/filter numbers of the evaluate stage on a hand-made run folder."""

import json

import pytest

from editkit.builtins.shapes.captions import scene_from_dict, scene_to_dict
from editkit.builtins.shapes.judge import ShapesJudge
from editkit.builtins.shapes.world import Scene, Shape, draw
from editkit.errors import InputError
from editkit.run.folder import RecordStore

BEFORE = Scene((Shape("circle", "red", "large", "top", "left"),
                Shape("square", "blue", "small", "bottom", "right")), "white")


def record(after, before=BEFORE, edit_kind="colour"):
    return {"id": "000000-0", "edit_kind": edit_kind, "scene_before": scene_to_dict(before),
            "scene_after": scene_to_dict(after)}


def judged(after_true, after_drawn, before_drawn=BEFORE, **kw):
    return ShapesJudge().pair(record(after_true, **kw), draw(before_drawn), draw(after_drawn))


def test_a_correct_edit_is_good():
    after = BEFORE.with_shape(0, colour="green")
    verdict = judged(after, after)
    assert verdict.good and verdict.reasons == [] and verdict.kind == "colour"
    assert verdict.detail["before_as_captioned"] is True


@pytest.mark.parametrize("drawn, reason", [
    (BEFORE, "colour not changed"),
    (BEFORE.with_shape(0, colour="yellow"), "colour yellow, not green"),
    (BEFORE.with_shape(0, colour="green", size="small"), "circle size changed too"),
    (Scene(BEFORE.with_shape(0, colour="green").shapes, "black"), "background changed too"),
    (Scene(BEFORE.with_shape(0, colour="green").shapes[:1], "white"), "square missing"),
    (BEFORE.with_shape(0, colour="green").with_shape(1, row="middle"), "square moved"),
])
def test_a_wrong_or_extra_or_missing_change_is_bad_with_its_reason(drawn, reason):
    verdict = judged(BEFORE.with_shape(0, colour="green"), drawn)
    assert not verdict.good and verdict.reasons == [reason]


def test_every_edit_kind_is_judged_both_ways():
    cases = {
        "kind": (BEFORE.with_shape(0, kind="triangle"), "kind not changed"),
        "size": (BEFORE.with_shape(1, size="large"), "size not changed"),
        "background": (Scene(BEFORE.shapes, "gray"), "background not changed"),
        "add": (Scene(BEFORE.shapes + (Shape("triangle", "orange", "small", "middle",
                                             "center"),), "white"), "triangle not added"),
        "remove": (Scene(BEFORE.shapes[1:], "white"), "circle not removed"),
    }
    for kind, (after, reason) in cases.items():
        assert judged(after, after, edit_kind=kind).good, kind
        bad = judged(after, BEFORE, edit_kind=kind)
        assert not bad.good and bad.reasons == [reason] and bad.kind == kind


def test_the_edit_is_judged_against_what_the_before_image_shows():
    """A before-image drawn off its caption (orange, not red) with the instructed change
    made is still a correct example of the instruction; the detail says it was off."""
    after = BEFORE.with_shape(0, colour="green")
    verdict = judged(after, after, before_drawn=BEFORE.with_shape(0, colour="orange"))
    assert verdict.good and verdict.detail["before_as_captioned"] is False
    no_circle = judged(after, after, before_drawn=Scene(BEFORE.shapes[1:], "white"))
    assert not no_circle.good and no_circle.reasons == ["before-image has no circle"]
    already = judged(after, after, before_drawn=after)
    assert not already.good and "nothing to change" in already.reason


def test_held_out_inputs_are_drawn_by_the_world_and_judged_on_truth():
    judge = ShapesJudge(ShapesJudge.Options(edits=["colour", "size"]))
    cases = judge.held_out(40, seed=5)
    assert [c.instruction for c in cases] == [c.instruction for c in judge.held_out(40, 5)]
    assert [c.instruction for c in cases] != [c.instruction for c in judge.held_out(40, 6)]
    assert {c.truth["edit_kind"] for c in cases} == {"colour", "size"}
    for case in cases:
        before = scene_from_dict(case.truth["scene_before"])
        after = scene_from_dict(case.truth["scene_after"])
        assert case.image.tobytes() == draw(before).tobytes() and case.input == before.caption()
        assert judge.edit(case.truth, draw(after)).good
        kept = judge.edit(case.truth, case.image)
        assert not kept.good and kept.reasons == [f"{case.truth['edit_kind']} not changed"]


def test_a_record_without_truth_is_one_clear_error():
    with pytest.raises(InputError) as err:
        ShapesJudge().pair({"id": "000007-0", "edit_kind": "colour"}, draw(BEFORE), draw(BEFORE))
    assert "000007-0 has no shapes-world truth" in err.value.message
    assert "captions: {use: shapes}" in err.value.hint


# --- pair accuracy and filter precision/recall on a hand-made run folder ---------------------


def hand_made_run(folder):
    """Eight pairs of four triplets: pairs 0, 1, 2, 4, 6 are good, 3, 5, 7 are not (the
    after-image is the before-image). Filter 0 keeps 0-3 and 5-7 (rejects the good 4);
    filter 1 keeps 0, 1, 3, 7 of those: the dataset. One render reject is not judged."""
    triplets, pairs = [], []
    for t in range(4):
        after = BEFORE.with_shape(t % 2, colour=["green", "purple", "orange", "yellow"][t])
        triplets.append({**record(after), "id": f"{t:06d}", "status": "kept",
                         "input": BEFORE.caption(), "edit": "e", "output": after.caption()})
        for s in range(2):
            n = 2 * t + s
            pid = f"{t:06d}-{s}"
            images = folder / "render" / "images"
            images.mkdir(parents=True, exist_ok=True)
            draw(BEFORE).save(images / f"{pid}-before.png")
            draw(after if n in (0, 1, 2, 4, 6) else BEFORE).save(images / f"{pid}-after.png")
            pairs.append({"id": pid, "triplet_id": f"{t:06d}", "sample": s, "status": "kept",
                          "before": f"images/{pid}-before.png",
                          "after": f"images/{pid}-after.png", "edit_kind": "colour"})
    pairs.append({"id": "000003-2", "triplet_id": "000003", "sample": 2, "status": "rejected",
                  "reason": "non-finite image (NaN)"})
    RecordStore(folder / "captions").append(triplets)
    RecordStore(folder / "render").append(pairs)
    ids = [p["id"] for p in pairs[:8]]
    first = [i for n, i in enumerate(ids) if n != 4]
    second = [ids[n] for n in (0, 1, 3, 7)]
    RecordStore(folder / "filters" / "0-clip").append(
        [{"id": i, "status": "kept" if i in first else "rejected", "scores": {}} for i in ids])
    RecordStore(folder / "filters" / "1-dino").append(
        [{"id": i, "status": "kept" if i in second else "rejected", "scores": {}}
         for i in first])
    (folder / "dataset").mkdir()
    (folder / "dataset" / "metadata.jsonl").write_text("".join(
        json.dumps({"id": i, "input_image": "x", "edit_prompt": "e", "split": "train"}) + "\n"
        for i in second))
    return folder


def test_pair_accuracy_and_filter_precision_recall_are_counted_right(tmp_path):
    from editkit.evaluation.judging import dataset_ids, filter_numbers, judge_pairs, pair_numbers

    run = hand_made_run(tmp_path)
    verdicts = judge_pairs(run, ShapesJudge())
    assert [v["good"] for v in verdicts] == [True, True, True, False, True, False, True, False]
    kept = dataset_ids(run)
    pairs = pair_numbers(verdicts, kept)
    assert pairs["before_filters"] == {"pairs": 8, "good": 5, "accuracy": 5 / 8}
    assert pairs["after_filters"] == {"pairs": 4, "good": 2, "accuracy": 2 / 4}
    assert pairs["reasons"] == {"colour not changed": 3}
    filters = filter_numbers(run, verdicts, kept)
    assert filters["all"] == {"scored": 8, "good": 5, "kept": 4, "kept_good": 2,
                              "precision": 0.5, "recall": 2 / 5}
    # clip saw all 8 and kept 7 (4 of the 5 good); dino saw those 7 and kept 4 (2 of 4 good)
    assert filters["each"]["0-clip"] == {"scored": 8, "good": 5, "kept": 7, "kept_good": 4,
                                         "precision": 4 / 7, "recall": 4 / 5}
    assert filters["each"]["1-dino"] == {"scored": 7, "good": 4, "kept": 4, "kept_good": 2,
                                         "precision": 0.5, "recall": 0.5}


def test_held_out_inputs_the_trainer_saw_are_left_out():
    from editkit.evaluation.judging import held_out_cases

    judge = ShapesJudge()
    first = judge.held_out(6, seed=0)
    seen = {(first[1].input, first[1].instruction), (first[4].input, first[4].instruction)}
    cases, left_out = held_out_cases(judge, 6, 0, seen)
    assert left_out == 2 and len(cases) == 6
    assert all((c.input, c.instruction) not in seen for c in cases)
    assert [c.instruction for c in cases[:4]] == [first[i].instruction for i in (0, 2, 3, 5)]
