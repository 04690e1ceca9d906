"""What the pair sampler's and the renderers' tests share, whatever the model family: a
renderer with options over a test's defaults, its records, an image's pixels and PNG bytes,
and one Prompt-to-Prompt cross-attention edit sampled fused and materialised."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from editkit.plugin.kinds import RenderJob


def renderer(cls: Any, defaults: dict[str, Any], pipe: Any = None, **options: Any) -> Any:
    """`cls` with `options` over `defaults`; `pipe`: loaded weights it shares."""
    made = cls(cls.Options(**{**defaults, **options}))
    if pipe is not None:
        made._pipe = pipe
    return made


def render(made: Any, *triplets: dict[str, Any], seed: int = 0) -> list[Any]:
    torch.set_num_threads(1)
    return list(made.render(RenderJob(triplets=list(triplets), seed=seed)))


def pixels(image: Any) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def cross_edit_runs(pipe: Any, cross: str, height: int, width: int) -> tuple[Any, Any, Any]:
    """(fused, mixed, controller): one cross-attention edit (with a reweighted token) sampled
    with the fused kernel alone, and again with a word-map collector whose level
    materialises the probabilities. The replace swaps a word for one of more tokens, so its
    mapper is not the identity."""
    from editkit.diffusion import alignment
    from editkit.diffusion.prompt_to_prompt import PromptToPrompt
    from editkit.diffusion.sampling import PairBatch, sample_pairs
    from editkit.diffusion.word_maps import WordMaps

    tokenizer = pipe.tokenizer
    n = tokenizer.model_max_length
    before = "a photo of a red car"
    after = "a photo of a crimson car" if cross == "replace" else \
        "a photo of a blue car and a tree"
    mapper = alignment.replace_mapper(tokenizer, before, after, n) if cross == "replace" \
        else torch.eye(n)
    assert cross != "replace" or not torch.equal(mapper, torch.eye(n))
    refine = alignment.refine_alignment(tokenizer, before, after, n)
    reweight = torch.ones(2, n)
    reweight[:, 5] = 3.0
    pair = PairBatch(before=[before] * 2, after=[after] * 2, seeds=[1, 2], guidance=[7.5] * 2)

    def control(collect: bool) -> Any:
        maps = WordMaps(torch.ones(2, 2, n), target=1) if collect else None
        return PromptToPrompt(self_steps=[0, 0], cross=cross, cross_steps=3,
                              mapper=mapper.repeat(2, 1, 1), reweight=reweight,
                              refine=tuple(t.repeat(2, 1) for t in refine), collector=maps)

    fused = sample_pairs(pipe, pair, steps=3, height=height, width=width,
                         controller=control(False))
    both = control(True)
    mixed = sample_pairs(pipe, pair, steps=3, height=height, width=width, controller=both)
    return fused, mixed, both


def sharpened(name: str) -> Any:
    """Model `name`'s text-to-image pipeline on the CPU, with attention that acts like a
    trained model's (`sharpen_attention`)."""
    from editkit.models.families import family_for
    from editkit.testing import sharpen_attention

    torch.set_num_threads(1)
    pipe = family_for(name).load_text_to_image(name, "cpu", torch.float32)
    sharpen_attention(pipe.unet)
    return pipe


def mask_file(folder: Any, width: int, height: int, columns: int) -> Any:
    """A mask image white in its first `columns` columns (the region that may change)."""
    from PIL import Image

    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, :columns] = 255
    path = folder / "mask.png"
    Image.fromarray(mask).save(path)
    return path


def split_by_mask(pair: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """(mask, before, after, outside) of a rendered pair; outside: where its mask is 0."""
    mask = pixels(pair["mask"])[..., 0]
    return mask, pixels(pair["before"]), pixels(pair["after"]), mask == 0


def injection_distances(pipe: Any, n: int, **size: int) -> tuple[Any, Any]:
    """Per sample, the mean distance between the before and the after latents of `n` seeds
    without and with self-attention injection at every step."""
    from editkit.diffusion.prompt_to_prompt import PromptToPrompt
    from editkit.diffusion.sampling import PairBatch, sample_pairs

    pairs = PairBatch(before=["a photo of a red car"] * n, after=["a photo of a blue car"] * n,
                      seeds=list(range(1, n + 1)), guidance=[7.5] * n)
    free, held = (sample_pairs(pipe, pairs, steps=4, **size,
                               controller=PromptToPrompt(self_steps=[steps] * n))
                  for steps in (0, 4))
    return tuple((b - a).abs().flatten(1).mean(1) for b, a in (free, held))
