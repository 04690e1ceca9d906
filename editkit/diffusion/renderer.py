"""The shared half of the pair renderers: options every one has, model loading, per-sample
seeds and draws, batching triplets x samples into one sampling call, and turning latents
into PIL images or rejects.

A renderer subclasses `PairRenderer` and implements `plan` (per-triplet preparation that may
reject the triplet) and `sample` (one batched sampling call with its controller and hook).
"""

from __future__ import annotations

import hashlib
import random
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from pydantic import Field, field_validator, model_validator

from editkit.plugin.kinds import PluginOptions, Reject, Renderer, RenderJob


class PairOptions(PluginOptions):
    model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                       description="hub id, local folder or built-in (tiny-sd, tiny-sd-v)")
    samples: int = Field(4, ge=1, description="pairs per triplet, each from its own seed")
    steps: int = Field(50, ge=1, description="denoising steps of each pair; fewer is faster "
                       "and coarser (renderer options given as fractions of steps count these)")
    width: int = Field(512, ge=8, description="image width in pixels, a multiple of 8; best at "
                       "the model's training size (512 for SD 1.5)")
    height: int = Field(512, ge=8, description="image height in pixels, a multiple of 8")
    guidance: tuple[float, float] = Field((7.5, 15.0), description="classifier-free guidance "
                                          "range; each sample draws one (InstructPix2Pix)")
    scheduler: str = Field("default", description="default (the model's), ddim, euler, "
                           "euler-ancestral, dpm++, unipc, ... or a diffusers class name")
    negative_prompt: str = Field("", description="text guided away from in both images "
                                 "(the unconditional prompt of classifier-free guidance)")
    device: str = Field("auto", description="auto (cuda, then mps, then cpu), or cpu, cuda, "
                        "cuda:N, mps; one not available here is an error")
    dtype: str = Field("auto", description="weights' precision: auto (fp32 on the CPU, fp16 "
                       "elsewhere), fp32, fp16 or bf16")
    triplets_per_batch: int = Field(1, ge=1, description="triplets per sampling batch")

    @field_validator("guidance", mode="before")
    @classmethod
    def _one_or_two(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _check(self) -> "PairOptions":
        from editkit.diffusion.schedulers import SCHEDULERS

        if self.guidance[0] > self.guidance[1]:
            raise ValueError("guidance: the range's low end is above its high end")
        if self.width % 8 or self.height % 8:
            raise ValueError("width and height must be multiples of 8")
        if self.scheduler not in (*SCHEDULERS, "default") and not self.scheduler.endswith(
                "Scheduler"):
            raise ValueError(f"unknown scheduler '{self.scheduler}'; use default or one of: "
                             f"{', '.join(SCHEDULERS)}")
        return self


class TripletProblem(Exception):
    """A triplet this renderer cannot render as asked: becomes a rejected record."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Sample:
    """One pair to render: its triplet, index, seed, draws and per-triplet plan."""

    triplet: dict[str, Any]
    index: int
    seed: int
    guidance: float
    plan: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)


def sample_seed(seed: int, triplet_id: str, sample: int) -> int:
    """A seed that depends on (run seed, triplet, sample) only, so a pair renders the same
    alone, in any batch, on any rank."""
    digest = hashlib.sha256(f"editkit-render:{seed}:{triplet_id}:{sample}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def draw(rng: random.Random, span: tuple[float, float]) -> float:
    return round(rng.uniform(*span), 4) if span[0] != span[1] else float(span[0])


def planned(triplets: list[dict[str, Any]], samples: int, plan: Callable[[dict[str, Any]], Any]
            ) -> Iterator[tuple[dict[str, Any], Any] | Reject]:
    """Each triplet with what `plan` prepares for it, or, where `plan` raises TripletProblem,
    one reject for each of the triplet's `samples`."""
    for triplet in triplets:
        try:
            made = plan(triplet)
        except TripletProblem as problem:
            for n in range(samples):
                yield Reject(problem.reason, problem.detail,
                             data={"triplet_id": triplet["id"], "sample": n})
            continue
        yield triplet, made


class PairRenderer(Renderer):
    Options = PairOptions
    _pipe: Any = None

    def pipeline(self) -> Any:
        """The diffusers components, loaded once per renderer."""
        if self._pipe is None:
            from editkit.models import pick_device, pick_dtype
            from editkit.models.families import family_for

            device = pick_device(self.options.device)
            family = family_for(self.options.model)
            self._pipe = family.load_text_to_image(
                self.options.model, device, pick_dtype(device, self.options.dtype))
        return self._pipe

    # --- what a renderer implements --------------------------------------------------

    def plan(self, triplet: dict[str, Any]) -> dict[str, Any]:
        """Per-triplet preparation; raise TripletProblem to reject the triplet."""
        return {}

    def draws(self, rng: random.Random) -> dict[str, Any]:
        """Per-sample random settings beyond seed and guidance."""
        return {}

    @abstractmethod
    def sample(self, pipe: Any, samples: list[Sample]) -> tuple[Any, Any, Any]:
        """Render `samples` in one batch: (before latents, after latents, masks or None),
        masks as (samples, 1, H, W) in [0, 1] at image size."""

    def finish(self, pipe: Any, samples: list[Sample], before: Any, after: Any,
               masks: Any) -> tuple[Any, Any]:
        """Decoded images (n, 3, H, W) in [0, 1] -> final images; default unchanged."""
        return before, after

    # --- the shared loop -------------------------------------------------------------

    def render(self, job: RenderJob) -> Iterator[dict[str, Any] | Reject]:
        samples: list[Sample] = []
        for item in planned(job.triplets, self.options.samples, self.plan):
            if isinstance(item, Reject):
                yield item
                continue
            triplet, plan = item
            for n in range(self.options.samples):
                seed = sample_seed(job.seed, triplet["id"], n)
                rng = random.Random(seed)
                guidance = draw(rng, self.options.guidance)
                extra = self.draws(rng)
                settings = {"seed": seed, "guidance": guidance, "steps": self.options.steps,
                            "scheduler": self.options.scheduler, "width": self.options.width,
                            "height": self.options.height, "model": self.options.model,
                            "negative_prompt": self.options.negative_prompt,
                            "renderer": self.name, **plan.get("settings", {}), **extra}
                samples.append(Sample(triplet, n, seed, guidance, plan, settings))
        if not samples:
            return
        yield from self._render_samples(samples)

    def _render_samples(self, samples: list[Sample]) -> Iterator[dict[str, Any] | Reject]:
        import torch

        from editkit.diffusion.sampling import decode, to_pil

        pipe = self.pipeline()
        before, after, masks = self.sample(pipe, samples)
        images = decode(pipe, torch.cat([before, after]))
        finite = torch.isfinite(before).flatten(1).all(1) & torch.isfinite(after).flatten(1).all(1)
        finite &= torch.isfinite(images).flatten(1).all(1).view(2, -1).all(0)
        first, second = self.finish(pipe, samples, images[:len(samples)],
                                    images[len(samples):], masks)
        for i, s in enumerate(samples):
            data = {"triplet_id": s.triplet["id"], "sample": s.index, "settings": s.settings}
            if not bool(finite[i]):
                yield Reject("non-finite image (NaN)", "the sampler or the VAE diverged for "
                             "this seed", data=data)
                continue
            item = {**data, "before": to_pil(first[i]), "after": to_pil(second[i])}
            if masks is not None:
                item["mask"] = to_pil(masks[i].expand(3, -1, -1).float().cpu())
            yield item
