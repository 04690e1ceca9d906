"""`editkit edit --localize`: where to edit, from the edit model's own attention.

While InstructPix2Pix edits, the cross-attention of its UNet to the instruction's content
words ("cars" in "remove the cars") says where the model acts. Those maps (from the
`WordMaps` level, averaged over its layers, the steps and the heads; sized from the latents,
so any aspect ratio works) are normalised and thresholded into a mask that is then used
exactly as a `--mask` file is.

The pipeline batches three copies of each sample for guidance, [text + image | image only |
unconditional]; only the first, text-conditioned copy is read, and only in the captured
layers: every other layer, and the other two copies, keep the fused kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from editkit.diffusion.alignment import STOPWORDS, _norm, word_weights
from editkit.diffusion.control import Layer, attention_control, attention_probs, fused
from editkit.diffusion.masks import attention_heat, otsu_threshold
from editkit.diffusion.word_maps import WordMaps, map_factor
from editkit.errors import InputError
from editkit.models.families import family_of

# Words of an instruction that say what to do or refer back, not where: never localized.
EDIT_WORDS = frozenset(
    "make makes made turn turns add adds remove removes change changes replace replaces put "
    "give set convert transform swap erase delete let have get place show become be more "
    "less so as instead very please now there them they it he she him her his their".split())

DILATE = 1  # cells of the attention map added around the thresholded region


def instruction_words(instruction: str, override: list[str] | None = None) -> list[str]:
    """The words whose attention is localized: `override` (each must occur in the
    instruction), else the instruction's content words (no stop words, no edit verbs)."""
    present = [_norm(w) for w in instruction.split() if _norm(w)]
    if override:
        wanted = [_norm(w) for w in override if _norm(w)]
        missing = [w for w in wanted if w not in present]
        if missing or not wanted:
            raise InputError(f"--localize-words {','.join(override)}: "
                             f"{', '.join(missing) or 'no word'} not in the instruction "
                             f"{instruction!r}", "pick words the instruction contains")
        return list(dict.fromkeys(wanted))
    words = [w for w in present if w not in STOPWORDS and w not in EDIT_WORDS]
    if not words:
        raise InputError(f"the instruction {instruction!r} has no content word to localize",
                         "name the words with --localize-words, or pass --mask")
    return list(dict.fromkeys(words))


class InstructionMaps(WordMaps):
    """`WordMaps` for the InstructPix2Pix batch: `weights` is (samples, 1, tokens); the UNet
    batch is the samples alone (no guidance) or [text + image | image | none] x samples."""

    def attend(self, layer: Layer, attn: Any, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> torch.Tensor:
        n = self.weights.shape[0]
        if query.shape[0] not in (n, 3 * n):
            raise ValueError(f"expected an InstructPix2Pix batch of {n} or {3 * n} rows, "
                             f"got {query.shape[0]}")
        probs = attention_probs(attn, query[:n], key[:n])
        self.observe(layer, probs)
        self.count(layer)
        text = probs @ value[:n]
        if query.shape[0] == n:
            return text
        return torch.cat([text, fused(query[n:], key[n:], value[n:])])


def edit_with_maps(pipe: Any, instruction: str, images: list[Any], words: list[str],
                   steps: int, **call: Any) -> tuple[list[Any], torch.Tensor, InstructionMaps]:
    """Run the InstructPix2Pix `pipe` on `images` (all one size) and return the edited
    images, the (samples, 1, h, w) attention maps on `words` and the controller (its
    `materialised` says where probabilities were computed). Processors are restored."""
    length = int(pipe.tokenizer.model_max_length)
    weights = word_weights(pipe.tokenizer, instruction, words, length)
    if float(weights.sum()) == 0:
        raise InputError(f"the words {', '.join(words)} fall past the {length} tokens the "
                         "text encoder reads", "shorten the instruction")
    n = len(images)
    width, height = images[0].size
    factor = int(pipe.vae_scale_factor)
    controller = InstructionMaps(weights.expand(n, 1, length).clone(),
                                 target=map_factor((height // factor, width // factor)))

    with attention_control(pipe.unet, controller):
        controller.begin((height // factor, width // factor), (3, n, 1))
        controller.begin_step(0, steps)
        edited = family_of(pipe).edit(pipe, [instruction] * n, images, steps,
                                      on_step=lambda i: controller.begin_step(i + 1, steps),
                                      **call)
    maps = controller.maps()
    if maps is None:
        raise InputError("the edit model has no cross-attention to localize with",
                         "pass --mask instead")
    return edited, maps, controller


def localize_mask(maps: torch.Tensor, size: tuple[int, int],
                  threshold: float | None = None) -> tuple[torch.Tensor, list[float]]:
    """(samples, 1, h, w) maps -> (samples, 1, height, width) binary masks at `size`
    (width, height) and the cut used for each: `threshold` on the normalised map, or
    Otsu's threshold per sample when None."""
    heat = attention_heat(maps, (size[1], size[0]), DILATE)
    cuts = [otsu_threshold(h) if threshold is None else float(threshold) for h in heat]
    masks = torch.stack([(h > cut).float() for h, cut in zip(heat, cuts)])
    return masks, cuts
