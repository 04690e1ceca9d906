import numpy as np
import pytest
import torch
from pair_checks import pixels, png, render, renderer
from pydantic import ValidationError

from editkit.builtins.prompt_to_prompt import PromptToPrompt
from editkit.diffusion import alignment
from editkit.plugin.kinds import Reject

SWAP = {"id": "000001", "input": "a photo of a red car", "output": "a photo of a blue car",
        "words": ["blue"]}
LONGER = {"id": "000002", "input": "a photo of a red car",
          "output": "a photo of a red car and a dog", "words": ["dog"]}
SAME = {"id": "000003", "input": "a photo of a red car", "output": "a photo of a red car"}


def make(**options):
    return renderer(PromptToPrompt, dict(model="tiny-sd", samples=2, steps=3, width=32,
                                         height=32), **options)


def test_same_prompt_with_full_injection_gives_identical_images():
    out = render(make(self_fraction=(1.0, 1.0)), SAME)
    assert len(out) == 2
    assert all(png(o["before"]) == png(o["after"]) for o in out)


def test_same_seed_same_bytes_and_other_seed_other_bytes():
    first, second = render(make(), SWAP), render(make(), SWAP)
    assert [png(o["after"]) for o in first] == [png(o["after"]) for o in second]
    assert [o["settings"] for o in first] == [o["settings"] for o in second]
    other = render(make(), SWAP, seed=1)
    assert png(other[0]["before"]) != png(first[0]["before"])


def test_a_pair_renders_the_same_alone_or_batched_with_other_triplets():
    alone = render(make(), SWAP)
    batched = render(make(triplets_per_batch=2), SAME, SWAP)
    assert [o["settings"]["seed"] for o in batched if o["triplet_id"] == "000001"] == \
        [o["settings"]["seed"] for o in alone]


def test_every_setting_and_draw_is_recorded_within_its_range():
    out = render(make(samples=6, guidance=(8, 9), self_fraction=(0.2, 0.4)), SWAP)
    seeds = {o["settings"]["seed"] for o in out}
    assert len(seeds) == 6
    for o in out:
        s = o["settings"]
        assert 8 <= s["guidance"] <= 9 and 0.2 <= s["self_fraction"] <= 0.4
        assert s["cross"] == "none" and s["scheduler"] == "default" and s["steps"] == 3
        assert s["model"] == "tiny-sd" and s["renderer"] == "prompt-to-prompt"


def test_word_swap_of_different_lengths_is_rejected_or_falls_back_to_refine():
    out = render(make(cross="replace"), SWAP, LONGER)
    swapped = [o for o in out if not isinstance(o, Reject)]
    rejected = [o for o in out if isinstance(o, Reject)]
    assert {o["triplet_id"] for o in swapped} == {"000001"}
    assert all(o["settings"]["cross"] == "replace" for o in swapped)
    assert [r.data["triplet_id"] for r in rejected] == ["000002", "000002"]
    assert rejected[0].reason == "word swap needs prompts of equal length"
    assert "6 ('a photo of a red car') vs 9" in rejected[0].detail
    out = render(make(cross="replace", on_mismatch="refine", triplets_per_batch=2), SWAP, LONGER)
    modes = {o["triplet_id"]: o["settings"]["cross"] for o in out}
    assert modes == {"000001": "replace", "000002": "refine"}
    assert "same number of words" in [o for o in out if o["triplet_id"] == "000002"][0][
        "settings"]["fallback"]


def test_reweighting_the_edited_words_changes_the_after_image_only():
    plain = render(make(), SWAP)
    heavy = render(make(edited_scale=4.0), SWAP)
    # the before branch only changes kernel (materialised vs fused): rounding, not content
    before = np.abs(pixels(plain[0]["before"]) - pixels(heavy[0]["before"])).max()
    after = np.abs(pixels(plain[0]["after"]) - pixels(heavy[0]["after"])).max()
    assert before <= 2 and after > before
    assert heavy[0]["settings"]["reweight"] == {"blue": 4.0}


def test_local_blend_saves_a_mask_and_keeps_the_source_outside_it():
    out = render(make(local_blend=True, blend_start=0.0, blend_threshold=0.5, width=48), SWAP)
    for o in out:
        assert o["mask"].size == (48, 32)
        assert o["settings"]["local_blend"] and o["settings"]["words"] == ["blue"]


def test_schedulers_by_name_and_unknown_ones_are_refused():
    for name in ("euler-ancestral", "dpm++"):
        out = render(make(scheduler=name, samples=1), SAME)
        assert png(out[0]["before"]) == png(out[0]["after"]), name
    with pytest.raises(ValidationError, match="unknown scheduler 'eulr'"):
        make(scheduler="eulr")
    with pytest.raises(ValidationError, match="self_fraction"):
        make(self_fraction=(0.9, 0.1))


def test_a_diverging_model_gives_rejected_pairs_not_a_crash():
    renderer = make()
    pipe = renderer.pipeline()
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias.fill_(float("nan"))
    out = render(renderer, SWAP)
    assert [o.reason for o in out] == ["non-finite image (NaN)"] * 2


def test_alignments():
    tokenizer = make().pipeline().tokenizer
    n = tokenizer.model_max_length
    mapper = alignment.replace_mapper(tokenizer, SWAP["input"], SWAP["output"], n)
    assert mapper.shape == (n, n) and torch.equal(mapper.sum(0), torch.ones(n))
    index, alpha = alignment.refine_alignment(tokenizer, LONGER["input"], LONGER["output"], n)
    words = alignment.token_words(tokenizer, LONGER["output"], n)
    new = [p for w, span in zip(words.words, words.positions) for p in span if w in ("and", "dog")]
    assert all(alpha[p] == 0 for p in new)
    kept = [p for w, span in zip(words.words, words.positions) for p in span if w == "car"]
    assert all(alpha[p] == 1 and index[p] == p for p in kept)
    assert alignment.changed_words("a red car", "a blue car") == ["red", "blue"]


def test_control_off_renders_the_two_prompts_independently_from_the_same_noise():
    """`control: false` (the broken-on-purpose baseline): the after-image is what the
    output caption renders alone from that seed. (Tiny random models attend almost
    uniformly, so what control changes is measured in the shapes world, not here.)"""
    reverse = {**SWAP, "input": SWAP["output"], "output": SWAP["input"]}
    off = render(make(control=False, cross="replace", local_blend=True), SWAP)
    alone = render(make(control=False), reverse)
    for pair, other in zip(off, alone):
        assert np.abs(pixels(pair["after"]) - pixels(other["before"])).max() <= 1
        s = pair["settings"]
        assert s["control"] is False and s["cross"] == "none" and s["self_fraction"] == 0.0
        assert "mask" not in pair
    on = render(make(cross="replace", local_blend=True), SWAP)
    assert all(o["settings"]["self_fraction"] > 0 and o["settings"]["cross"] == "replace"
               and "mask" in o for o in on)
