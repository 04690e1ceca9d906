"""`use: masked-blend`: the after-image may change only inside a mask.

At every step the edited branch is blended with the source outside the mask
(`x_t * m + (1 - m) * y_t`, Blended Latent Diffusion); after decoding, the before-image is
pasted back outside the mask (`paste`), so the unmasked region is the same pixels. The mask
comes from the attention of named words (the triplet's `words`, or `words` here), from a mask
image, or from a foreground/background split of the caption's attention (Otsu threshold).
Edges are feathered; the mask is saved with the pair.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from editkit import hookimpl
from editkit.diffusion.renderer import PairOptions, PairRenderer, Sample, TripletProblem

MaskSource = Literal["words", "image", "foreground", "background", "region"]


class MaskedBlendOptions(PairOptions):
    # the option that holds a model, and what it must be (checked at recipe validation)
    MODEL_OPTIONS: ClassVar[dict[str, str]] = {"model": "render"}

    mask: MaskSource = Field("words", description="words: attention of the edited words; "
                             "image: mask_image; foreground/background: split of the caption's "
                             "attention; region: the triplet's `region` picks one")
    words: list[str] = Field(default_factory=list, description="words whose attention makes "
                             "the mask (default: the triplet's `words`, else the changed words)")
    mask_image: str | None = Field(None, description="mask file, white = may change (mask: "
                                   "image); a triplet's own `mask` path wins")
    threshold: float = Field(0.3, gt=0, lt=1, description="attention threshold for word masks")
    feather: float = Field(2.0, ge=0, description="soft edge: blur sigma in image pixels")
    paste: bool = Field(True, description="paste the before-image back outside the mask")

    @model_validator(mode="after")
    def _needs_image(self) -> "MaskedBlendOptions":
        if self.mask == "image" and not self.mask_image:
            raise ValueError("mask: image needs mask_image (a file path)")
        return self


class MaskedBlend(PairRenderer):
    name = "masked-blend"
    Options = MaskedBlendOptions

    def plan(self, triplet: dict[str, Any]) -> dict[str, Any]:
        import torch

        from editkit.diffusion import alignment

        opts = self.options
        tokenizer = self.pipeline().tokenizer
        length = tokenizer.model_max_length
        before, after = triplet["input"], triplet["output"]
        source = opts.mask
        if source == "region":
            source = triplet.get("region")
            if source not in ("foreground", "background"):
                raise TripletProblem("triplet has no region", "mask: region needs each "
                                     "triplet's `region` to be foreground or background")
        settings: dict[str, Any] = {"mask": source, "feather": opts.feather, "paste": opts.paste}
        plan: dict[str, Any] = {"source": source, "settings": settings}
        if source == "image":
            path = triplet.get("mask") or opts.mask_image
            if not Path(str(path)).is_file():
                raise TripletProblem("mask image not found", str(path))
            plan["image"] = settings["mask_image"] = str(path)
        elif source == "words":
            words = opts.words or list(triplet.get("words") or
                                       alignment.changed_words(before, after))
            weights = [alignment.word_weights(tokenizer, p, words, length)
                       for p in (before, after)]
            if not any(bool(w.any()) for w in weights):
                raise TripletProblem("mask words not in the captions", ", ".join(words))
            plan["weights"] = torch.stack(weights)
            settings.update(words=words, threshold=opts.threshold)
        else:
            plan["weights"] = torch.stack([alignment.content_weights(tokenizer, before, length),
                                           torch.zeros(length)])
        return plan

    def sample(self, pipe: Any, samples: list[Sample]) -> tuple[Any, Any, Any]:
        import torch

        from editkit.diffusion import masks as maskops
        from editkit.diffusion.sampling import PairBatch, latent_size, sample_pairs, vae_scale
        from editkit.diffusion.word_maps import WordMaps, map_factor

        opts = self.options
        latent_hw = latent_size(pipe, opts.height, opts.width)
        length = pipe.tokenizer.model_max_length
        static = [maskops.load_mask(s.plan["image"], latent_hw)[0]
                  if s.plan["source"] == "image" else None for s in samples]
        collector = None
        if any(m is None for m in static):
            collector = WordMaps(torch.stack([s.plan.get("weights", torch.zeros(2, length))
                                              for s in samples]), target=map_factor(latent_hw))
        soft = opts.feather / vae_scale(pipe)
        state: dict[str, Any] = {"mask": None}

        def current_mask() -> Any:
            maps = collector.maps() if collector is not None else None
            out = []
            for i, s in enumerate(samples):
                if static[i] is not None:
                    out.append(static[i])
                elif maps is None:
                    out.append(torch.ones(1, *latent_hw))
                elif s.plan["source"] == "words":
                    out.append(maskops.attention_mask(maps[i:i + 1], latent_hw,
                                                      opts.threshold)[0])
                else:
                    # the source image's own split: the before branch is never blended
                    fg = maskops.foreground_mask(maps[i:i + 1, 0], latent_hw)[0]
                    out.append(fg if s.plan["source"] == "foreground" else 1 - fg)
            return torch.stack(out)

        def blend(step: int, before: Any, after: Any) -> Any:
            mask = current_mask()
            state["mask"] = mask
            return maskops.blend(before, after, maskops.feather(mask, soft).to(after))

        batch = PairBatch(before=[s.triplet["input"] for s in samples],
                          after=[s.triplet["output"] for s in samples],
                          seeds=[s.seed for s in samples],
                          guidance=[s.guidance for s in samples], negative=opts.negative_prompt)
        before, after = sample_pairs(pipe, batch, steps=opts.steps, height=opts.height,
                                     width=opts.width, scheduler=opts.scheduler,
                                     controller=collector, latent_hook=blend)
        pixels = maskops.resize(state["mask"], (opts.height, opts.width))
        return before, after, maskops.feather((pixels > 0.5).float(), opts.feather)

    def finish(self, pipe: Any, samples: list[Sample], before: Any, after: Any,
               masks: Any) -> tuple[Any, Any]:
        if not self.options.paste:
            return before, after
        from editkit.diffusion.masks import blend

        return before, blend(before, after, masks.to(after))


@hookimpl
def register_renderers(register):
    register(MaskedBlend)
