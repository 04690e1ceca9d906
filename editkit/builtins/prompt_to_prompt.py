"""`use: prompt-to-prompt`: before/after pairs that differ only where the captions differ.

Self-attention injection for a drawn fraction of the steps (InstructPix2Pix's recipe; works
for any caption pair), optional cross-attention edits (`replace` for word swaps, `refine`
for prompts of different lengths, per-word `reweight`) and optional local blending from the
attention of the edited words. Every setting and seed goes into the pair's `settings`.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from editkit import hookimpl
from editkit.diffusion.renderer import PairOptions, PairRenderer, Sample, TripletProblem, draw


class PromptToPromptOptions(PairOptions):
    # the option that holds a model, and what it must be (checked at recipe validation)
    MODEL_OPTIONS: ClassVar[dict[str, str]] = {"model": "render"}

    control: bool = Field(
        True, description="attention control on; false renders the two prompts "
        "independently from the same noise (no injection, cross edit, reweighting or "
        "blending): the baseline that shows what the control is worth")
    self_fraction: tuple[float, float] = Field(
        (0.1, 0.9), description="fraction of the steps with self-attention injection; each "
        "sample draws one from this range (InstructPix2Pix: 0.1 to 0.9)")
    self_resolution: float = Field(
        1.0, gt=0, le=1, description="inject into self-attention layers whose map side is at "
        "most this fraction of the latent side (1: all layers, as InstructPix2Pix; 0.5: the "
        "original Prompt-to-Prompt's 32x32-and-below at 512 px)")
    cross: Literal["none", "replace", "refine"] = Field(
        "none", description="cross-attention edit: replace (word swap), refine (aligned tokens)")
    cross_fraction: float = Field(0.8, ge=0, le=1, description="fraction of steps with the "
                                  "cross-attention edit and reweighting")
    on_mismatch: Literal["error", "refine"] = Field(
        "error", description="a word swap between prompts of different word counts: reject "
                             "the triplet, or fall back to refine")
    reweight: dict[str, float] = Field(default_factory=dict,
                                       description="per-word attention scales in the after prompt")
    edited_scale: float = Field(1.0, ge=0, description="attention scale for the triplet's "
                                "edited words (its `words`) in the after prompt")
    local_blend: bool = Field(False, description="keep the before latents outside the "
                              "attention of the edited words")
    blend_threshold: float = Field(0.3, gt=0, lt=1, description="local blend: cells where "
                                   "the edited words' attention (peak 1) is above this are "
                                   "edited; lower grows the edited region")
    blend_start: float = Field(0.2, ge=0, le=1, description="fraction of steps before "
                               "local blending starts")

    @model_validator(mode="after")
    def _check_fraction(self) -> "PromptToPromptOptions":
        lo, hi = self.self_fraction
        if not 0 <= lo <= hi <= 1:
            raise ValueError("self_fraction must be a range within 0..1, low end first")
        return self


class PromptToPrompt(PairRenderer):
    name = "prompt-to-prompt"
    Options = PromptToPromptOptions

    def draws(self, rng: random.Random) -> dict[str, Any]:
        fraction = draw(rng, self.options.self_fraction)  # drawn either way: same seeds
        return {"self_fraction": fraction if self.options.control else 0.0}

    def plan(self, triplet: dict[str, Any]) -> dict[str, Any]:
        from editkit.diffusion import alignment

        opts = self.options
        if not opts.control:
            return {"settings": {"control": False, "cross": "none", "cross_fraction": 0.0,
                                 "local_blend": False}}
        tokenizer = self.pipeline().tokenizer
        length = tokenizer.model_max_length
        before, after = triplet["input"], triplet["output"]
        words = list(triplet.get("words") or alignment.changed_words(before, after))
        mode = opts.cross
        plan: dict[str, Any] = {}
        detail = ""
        if mode == "replace":
            try:
                plan["mapper"] = alignment.replace_mapper(tokenizer, before, after, length)
            except alignment.AlignmentError as exc:
                if opts.on_mismatch == "error":
                    raise TripletProblem("word swap needs prompts of equal length",
                                         f"{exc}; set on_mismatch: refine to align them") from None
                mode, detail = "refine", str(exc)
        if mode == "refine":
            plan["refine"] = alignment.refine_alignment(tokenizer, before, after, length)
        scales = dict(opts.reweight)
        if opts.edited_scale != 1.0:
            scales.update({w: opts.edited_scale for w in words})
        if scales:
            weights = alignment.word_weights(tokenizer, after, [], length, base=1.0)
            for word, scale in scales.items():
                hit = alignment.word_weights(tokenizer, after, [word], length) > 0
                weights[hit] = scale
            plan["reweight"] = weights
        if opts.local_blend:
            plan["blend"] = [alignment.word_weights(tokenizer, p, words, length)
                             for p in (before, after)]
        truncated = [p for p in (before, after)
                     if alignment.token_words(tokenizer, p, length).truncated]
        plan["settings"] = {
            "cross": mode, "cross_fraction": opts.cross_fraction if mode != "none" or scales
            else 0.0, "self_resolution": opts.self_resolution, "reweight": scales,
            "local_blend": opts.local_blend, "words": words,
            **({"fallback": detail} if detail else {}),
            **({"blend_threshold": opts.blend_threshold, "blend_start": opts.blend_start}
               if opts.local_blend else {}),
            **({"truncated": truncated} if truncated else {})}
        return plan

    def sample(self, pipe: Any, samples: list[Sample]) -> tuple[Any, Any, Any]:
        import torch

        from editkit.diffusion import masks as maskops
        from editkit.diffusion.prompt_to_prompt import PromptToPrompt as Control
        from editkit.diffusion.sampling import PairBatch, latent_size, sample_pairs
        from editkit.diffusion.word_maps import WordMaps, map_factor

        opts = self.options
        length = pipe.tokenizer.model_max_length
        eye = torch.eye(length)
        plans = [s.plan for s in samples]
        modes = {s.settings["cross"] for s in samples}
        if len(modes) > 1:
            return self._split(pipe, samples)
        cross = modes.pop()
        reweight = None
        if any("reweight" in p for p in plans):
            reweight = torch.stack([p.get("reweight", torch.ones(length)) for p in plans])
        collector = None
        latent_hw = latent_size(pipe, opts.height, opts.width)
        if opts.local_blend and opts.control:
            collector = WordMaps(torch.stack([torch.stack(p["blend"]) for p in plans]),
                                 target=map_factor(latent_hw))
        control = Control(
            self_steps=[round(s.settings["self_fraction"] * opts.steps) for s in samples],
            self_resolution=opts.self_resolution, cross=cross,
            cross_steps=round(opts.cross_fraction * opts.steps),
            mapper=torch.stack([p.get("mapper", eye) for p in plans]) if cross == "replace"
            else None,
            refine=(torch.stack([p["refine"][0] for p in plans]),
                    torch.stack([p["refine"][1] for p in plans])) if cross == "refine" else None,
            reweight=reweight, collector=collector)
        state: dict[str, Any] = {"mask": None}

        def local_blend(step: int, before: Any, after: Any) -> Any:
            if collector is None or step < round(opts.blend_start * opts.steps):
                return after
            maps = collector.maps()
            if maps is None:
                return after
            state["mask"] = maskops.attention_mask(maps, latent_hw, opts.blend_threshold)
            return maskops.blend(before, after, state["mask"].to(after.dtype))

        batch = PairBatch(before=[s.triplet["input"] for s in samples],
                          after=[s.triplet["output"] for s in samples],
                          seeds=[s.seed for s in samples],
                          guidance=[s.guidance for s in samples],
                          negative=opts.negative_prompt)
        start = {"scheduler": opts.scheduler, **self.start(pipe, samples)}
        before, after = sample_pairs(pipe, batch, steps=opts.steps, height=opts.height,
                                     width=opts.width, controller=control,
                                     latent_hook=local_blend, **start)
        mask = state["mask"]
        if mask is not None:
            mask = maskops.resize(mask, (opts.height, opts.width)).round()
        return before, after, mask

    def start(self, pipe: Any, samples: list[Sample]) -> dict[str, Any]:
        """Where sampling starts: extra `sample_pairs` arguments (noise, scheduler, ...);
        none here: each sample's seed draws its noise."""
        return {}

    def _split(self, pipe: Any, samples: list[Sample]) -> tuple[Any, Any, Any]:
        """Samples whose triplets need different cross modes render in one batch per mode."""
        import torch

        groups: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(s.settings["cross"], []).append(i)
        parts = {mode: self.sample(pipe, [samples[i] for i in idx])
                 for mode, idx in groups.items()}
        flat = [i for idx in groups.values() for i in idx]
        back = [flat.index(i) for i in range(len(samples))]
        before = torch.cat([parts[m][0] for m in groups])[back]
        after = torch.cat([parts[m][1] for m in groups])[back]
        masks = None
        if all(parts[m][2] is not None for m in groups):
            masks = torch.cat([parts[m][2] for m in groups])[back]
        return before, after, masks


@hookimpl
def register_renderers(register):
    register(PromptToPrompt)
