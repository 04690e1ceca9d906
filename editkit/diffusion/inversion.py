"""Real-image inversion for Stable Diffusion 1.x/2.x: a photo -> the noise DDIM sampling
turns back into it, so a renderer can edit the photo instead of an image it drew itself.

- `encode_image`: the photo's latents (the VAE's mean, scaled: deterministic).
- `ddim_invert`: the deterministic DDIM update run backwards, from the photo's latents to
  noise, one latent per step. Model outputs (epsilon or v) are read as epsilon through the
  scheduler's alphas.
- `invert`: the trajectory plus what sampling needs to follow it under classifier-free
  guidance, by `method`:
  - "ddim": the unconditional embedding of the negative prompt (exact at guidance 1 only);
  - "null-text" (Mokady et al. 2022): per-step unconditional embeddings optimised so the
    guided sampler lands on the inverted trajectory at every step;
  - "negative-prompt" (Miyake et al. 2023): the caption's own embedding as the unconditional
    one, which makes the guided prediction the conditional one: no optimisation.
  - "edit-friendly" (Huberman-Spiegelglas et al. 2024, the inversion LEDITS++ uses): each
    step's latent is drawn independently from the photo's forward process, and the noise map
    that takes DDIM with eta 1 from one to the next under guidance is kept
    (`Inversion.step_noise`). Sampling with those maps gives the photo back exactly at any
    guidance, and sampling another caption with them keeps the photo's layout while the
    caption's change is made in full. It may start a few steps in (`skip`).
- `reconstruct`: DDIM sampling back from the inverted noise with those embeddings;
  `psnr` and `pixel_error` say how well it came back, one number per image.

Sampling runs on DDIM timesteps with eta 0 (`DDIMScheduler` from the model's scheduler
config), whatever scheduler the model ships with: inversion is only exact for that sampler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from editkit.diffusion.sampling import decode, encode_prompts

METHODS = ("ddim", "null-text", "negative-prompt", "edit-friendly")


@dataclass
class Inversion:
    """An inverted batch. `latents[0]` is the photos' latents and `latents[-1]` the noise
    sampling starts from; `latents[k]` is the latent after k inversion steps, so sampling
    step i (at `timesteps[i]`) should land on `latents[steps - 1 - i]`. `uncond[i]` is the
    unconditional embedding for sampling step i, (samples, tokens, dim); `guidance` the scale
    of each image it was made for."""

    latents: list[torch.Tensor]
    timesteps: torch.Tensor
    prompts: list[str]
    method: str
    guidance: list[float]
    uncond: list[torch.Tensor]
    stats: dict[str, Any] = field(default_factory=dict)
    step_noise: list[torch.Tensor] | None = None  # edit-friendly: one noise map a step
    start_step: int = 0  # steps of the schedule skipped before the first one kept

    @property
    def noise(self) -> torch.Tensor:
        return self.latents[-1]

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def target(self, step: int) -> torch.Tensor:
        """The latent sampling step `step` should produce."""
        return self.latents[self.steps - 1 - step]


    @property
    def schedule_steps(self) -> int:
        """The `steps` the sampling schedule was set to (skipped steps included)."""
        return self.start_step + self.steps

    def sampling(self) -> dict[str, Any]:
        """What `sample_pairs` needs to sample along this inversion (`scheduler="ddim"`,
        `steps=self.schedule_steps`)."""
        return {"noise": self.noise, "uncond": self.uncond, "step_noise": self.step_noise,
                "start_step": self.start_step}


def ddim_scheduler(pipe: Any, steps: int) -> Any:
    """A DDIM scheduler (eta 0) from the model's scheduler config, set to `steps`."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device=pipe.unet.device)
    return sched


def _images_tensor(pipe: Any, image: Any, height: int | None, width: int | None
                   ) -> torch.Tensor:
    """PIL image(s) or (n, 3, H, W) / (3, H, W) tensors in [0, 1] -> [-1, 1] on the VAE."""
    if isinstance(image, torch.Tensor):
        image = image if image.ndim == 4 else image[None]
        if height is not None or width is not None:
            image = torch.nn.functional.interpolate(
                image.float(), size=(height or image.shape[-2], width or image.shape[-1]),
                mode="bilinear", align_corners=False, antialias=True)
        pixels = image.float().clamp(0, 1) * 2 - 1
    else:
        pixels = pipe.image_processor.preprocess(image, height=height, width=width)
    return pixels.to(pipe.vae.device, pipe.vae.dtype)


@torch.no_grad()
def encode_image(pipe: Any, image: Any, height: int | None = None,
                 width: int | None = None) -> torch.Tensor:
    """The latents of PIL image(s) or [0, 1] tensors, (n, C, h, w) in the UNet's dtype:
    the VAE posterior's mean times the scaling factor (no sampling, so deterministic)."""
    pixels = _images_tensor(pipe, image, height, width)
    posterior = pipe.vae.encode(pixels).latent_dist
    latents = posterior.mean * pipe.vae.config.scaling_factor
    return latents.to(pipe.unet.device, pipe.unet.dtype)


def _alpha(sched: Any, timestep: Any) -> torch.Tensor:
    t = int(timestep)
    return sched.alphas_cumprod[t] if t >= 0 else sched.final_alpha_cumprod


def step_alphas(sched: Any, timestep: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_bar at `timestep`, alpha_bar at the timestep DDIM steps to from it), exactly as
    `DDIMScheduler.step` picks them."""
    previous = int(timestep) - sched.config.num_train_timesteps // sched.num_inference_steps
    return _alpha(sched, timestep), _alpha(sched, previous)


def predict(sched: Any, output: torch.Tensor, sample: torch.Tensor, alpha: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, epsilon) a model output implies for `sample` at noise level `alpha` (alpha_bar),
    for the scheduler's `prediction_type`: epsilon, v_prediction or sample."""
    alpha = alpha.to(sample.device, torch.float32)
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    out, x = output.float(), sample.float()
    kind = sched.config.prediction_type
    if kind == "epsilon":
        return (x - s * out) / a, out
    if kind == "v_prediction":
        return a * x - s * out, a * out + s * x
    if kind == "sample":
        return out, (x - a * out) / s
    raise ValueError(f"unknown prediction_type '{kind}'")


def ddim_step(sched: Any, output: torch.Tensor, timestep: Any, sample: torch.Tensor
              ) -> torch.Tensor:
    """One deterministic DDIM step (eta 0) down from `timestep`; differentiable (the
    null-text optimisation backpropagates through it), else equal to `DDIMScheduler.step`."""
    alpha, alpha_prev = step_alphas(sched, timestep)
    x0, eps = predict(sched, output, sample, alpha)
    alpha_prev = alpha_prev.to(x0.device)
    return (alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps).to(sample.dtype)


def ddim_inverse_step(sched: Any, output: torch.Tensor, timestep: Any, sample: torch.Tensor,
                      model_input: torch.Tensor | None = None) -> torch.Tensor:
    """The DDIM step down from `timestep` run backwards: `sample` is at the level DDIM steps
    to from `timestep`, `output` the model's at (`model_input`, timestep), `model_input`
    `sample` unless given; returns the latent at `timestep` that a DDIM step with that output
    takes to `sample`."""
    alpha, alpha_prev = step_alphas(sched, timestep)
    seen = sample if model_input is None else model_input
    _, eps = predict(sched, output, seen, alpha)  # epsilon for the input the model saw
    alpha, alpha_prev = alpha.to(eps.device), alpha_prev.to(eps.device)
    x0 = (sample.float() - (1 - alpha_prev).sqrt() * eps) / alpha_prev.sqrt()
    return (alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps).to(sample.dtype)


def _prompts(prompt: str | Sequence[str], count: int) -> list[str]:
    prompts = [prompt] * count if isinstance(prompt, str) else list(prompt)
    if len(prompts) != count:
        raise ValueError(f"{len(prompts)} prompts for {count} images")
    return prompts


def _unet(pipe: Any, latents: torch.Tensor, t: Any, embeds: torch.Tensor) -> torch.Tensor:
    return pipe.unet(latents, t, encoder_hidden_states=embeds, return_dict=False)[0]


def _scales(guidance: float | Sequence[float], count: int) -> list[float]:
    scales = [float(guidance)] * count if isinstance(guidance, (int, float)) else \
        [float(g) for g in guidance]
    if len(scales) != count:
        raise ValueError(f"{len(scales)} guidance scales for {count} images")
    return scales


def _column(scales: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(scales, device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def _guided(pipe: Any, latents: torch.Tensor, t: Any, cond: torch.Tensor,
            uncond: torch.Tensor | None, scales: list[float]) -> torch.Tensor:
    """The classifier-free guided model output, per-image scales, in one batched UNet call
    (an unguided one where every scale is 1)."""
    if uncond is None or all(g == 1.0 for g in scales):
        return _unet(pipe, latents, t, cond)
    both = _unet(pipe, torch.cat([latents, latents]), t, torch.cat([uncond, cond]))
    out_u, out_c = both.chunk(2)
    return out_u + _column(scales, out_u) * (out_c - out_u)


@torch.no_grad()
def ddim_invert(pipe: Any, latents: torch.Tensor, prompt: str | Sequence[str], steps: int,
                guidance: float | Sequence[float] = 1.0, negative: str = "",
                fixed_point: int = 0) -> list[torch.Tensor]:
    """DDIM inversion of (n, C, h, w) latents: [latents, after 1 step, ..., noise], steps + 1
    tensors. At guidance 1 (the usual) only the conditional prediction is used.

    Each step reads the model at the lower noise level's latent, as the DDIM step it undoes
    read it at the higher one. `fixed_point` > 0 refines each step that many times by reading
    the model at the latent found so far (a fixed-point iteration, as in Pan et al. 2023's
    AIDI), so the DDIM step undoes the inversion step more exactly, at that many more UNet
    calls a step. It converges at guidance 1; under guidance it can diverge."""
    sched = ddim_scheduler(pipe, steps)
    count = latents.shape[0]
    cond = encode_prompts(pipe, _prompts(prompt, count))
    scales = _scales(guidance, count)
    uncond = encode_prompts(pipe, [negative] * count)
    x = latents.to(pipe.unet.device, pipe.unet.dtype)
    trajectory = [x]
    for t in sched.timesteps.flip(0):
        out = _guided(pipe, sched.scale_model_input(x, t), t, cond, uncond, scales)
        up = ddim_inverse_step(sched, out, t, x)
        for _ in range(fixed_point):
            out = _guided(pipe, sched.scale_model_input(up, t), t, cond, uncond, scales)
            up = ddim_inverse_step(sched, out, t, x, model_input=up)
        x = up
        trajectory.append(x)
    return trajectory


def invert(pipe: Any, image: Any, prompt: str | Sequence[str], *, steps: int = 50,
           guidance: float | Sequence[float] = 1.0, method: str = "ddim", negative: str = "",
           fixed_point: int = 0, inner_steps: int = 10, lr: float = 1e-2,
           tolerance: float = 1e-5, height: int | None = None, width: int | None = None,
           seed: int | Sequence[int] = 0, skip: int = 0) -> Inversion:
    """Invert photo(s) (PIL, [0, 1] tensors, or (n, C, h, w) latents) captioned `prompt` for
    sampling back at `guidance` (one scale, or one per image) with `method` (see the
    module's doc). "ddim" inverts at `guidance` too; the others invert at guidance 1.
    `fixed_point`: see `ddim_invert` (for the methods that invert at guidance 1).

    null-text: at each sampling step at most `inner_steps` Adam steps (learning rate `lr`,
    decaying to half over the run) on each image's unconditional embedding, each image
    stopping on its own once its latent error (mean squared) is under `tolerance`, growing
    linearly to 100 x `tolerance` by the last step (Mokady et al.'s schedule at 50 steps).

    edit-friendly: inverts at `guidance`; `seed` (one, or one per image) draws the
    independent noise of each step; `skip` leaves out the first steps of the schedule."""
    if method not in METHODS:
        raise ValueError(f"unknown inversion method '{method}'; use one of {', '.join(METHODS)}")
    start = time.perf_counter()
    if isinstance(image, torch.Tensor) and image.ndim == 4 and \
            image.shape[1] == pipe.unet.config.in_channels:  # latents (4 channels), not RGB
        latents = image.to(pipe.unet.device, pipe.unet.dtype)
    else:
        latents = encode_image(pipe, image, height, width)
    count = latents.shape[0]
    prompts = _prompts(prompt, count)
    scales = _scales(guidance, count)
    sched = ddim_scheduler(pipe, steps)
    timesteps = sched.timesteps
    stats: dict[str, Any] = {}
    if method == "edit-friendly":
        result = _edit_friendly(pipe, latents, prompts, sched, scales, negative, seed, skip)
        result.stats["seconds"] = time.perf_counter() - start
        return result
    if skip:
        raise ValueError("skip is for the edit-friendly inversion only")
    if method == "ddim":
        trajectory = ddim_invert(pipe, latents, prompts, steps, guidance=scales,
                                 negative=negative, fixed_point=fixed_point)
        uncond = [encode_prompts(pipe, [negative] * count)] * steps
    elif method == "negative-prompt":
        trajectory = ddim_invert(pipe, latents, prompts, steps, fixed_point=fixed_point)
        uncond = [encode_prompts(pipe, prompts)] * steps
    else:
        trajectory = ddim_invert(pipe, latents, prompts, steps, fixed_point=fixed_point)
        uncond, stats = _null_text(pipe, trajectory, prompts, sched, scales, negative,
                                   inner_steps, lr, tolerance)
    stats["seconds"] = time.perf_counter() - start
    return Inversion(trajectory, timesteps, prompts, method, scales, uncond, stats)


def _seeds(seed: int | Sequence[int], count: int) -> list[int]:
    seeds = [int(seed)] * count if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} images")
    return seeds


@torch.no_grad()
def _edit_friendly(pipe: Any, latents: torch.Tensor, prompts: list[str], sched: Any,
                   scales: list[float], negative: str, seed: int | Sequence[int], skip: int
                   ) -> Inversion:
    """Independent forward-process latents at every timestep, then the eta-1 DDIM noise map
    between each and the next (the photo's latents after the last)."""
    steps = len(sched.timesteps)
    if not 0 <= skip < steps:
        raise ValueError(f"skip {skip} is outside 0..{steps - 1}")
    count = latents.shape[0]
    generators = [torch.Generator("cpu").manual_seed(s) for s in _seeds(seed, count)]
    x0 = latents.float()
    levels = []
    for t in sched.timesteps:
        eps = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators])
        alpha = _alpha(sched, t).to(x0.device, torch.float32)
        levels.append((alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps.to(x0.device))
                      .to(latents.dtype))
    cond = encode_prompts(pipe, prompts)
    uncond = encode_prompts(pipe, [negative] * count)
    maps = []
    for i in range(skip, steps):
        t = sched.timesteps[i]
        x = levels[i]
        out = _guided(pipe, sched.scale_model_input(x, t), t, cond, uncond, scales)
        mean = sched.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(x),
                          return_dict=False)[0]
        previous = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
        std = sched._get_variance(t, torch.tensor(previous)).sqrt().to(x.device, torch.float32)
        target = levels[i + 1] if i + 1 < steps else latents
        maps.append(((target.float() - mean.float()) / std).to(latents.dtype))
    trajectory = [latents] + levels[skip:][::-1]
    return Inversion(trajectory, sched.timesteps[skip:], prompts, "edit-friendly", scales,
                     [uncond] * (steps - skip), {"noise_std": float(torch.stack(maps).std())},
                     step_noise=maps, start_step=skip)


def _null_text(pipe: Any, trajectory: list[torch.Tensor], prompts: list[str], sched: Any,
               scales: list[float], negative: str, inner_steps: int, lr: float,
               tolerance: float) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Per-step unconditional embeddings: each step starts from the last step's, and Adam
    moves each image's own embedding until the guided DDIM step from the current latent lands
    on the inverted one. Images at guidance 1 need no fitting (their unconditional half has
    no effect). Only the embeddings get gradients (`torch.autograd.grad`), so the model's
    parameters are left as they are."""
    steps = len(sched.timesteps)
    count = len(prompts)
    with torch.no_grad():
        cond = encode_prompts(pipe, prompts)
        start = encode_prompts(pipe, [negative] * count)
    params = [torch.nn.Parameter(start[i:i + 1].detach().float().clone()) for i in range(count)]
    fitted = [k for k in range(count) if scales[k] != 1.0]
    x = trajectory[-1]
    out: list[torch.Tensor] = []
    inner_used: list[int] = []
    errors: list[float] = []
    for i, t in enumerate(sched.timesteps):
        target = trajectory[steps - 1 - i].float()
        model_in = sched.scale_model_input(x, t)
        with torch.no_grad():
            out_c = _unet(pipe, model_in, t, cond)
        optimiser = torch.optim.Adam(params, lr=lr * (1 - i / (2 * steps)))
        limit = tolerance * (1 + 100 * i / steps)
        active = list(fitted)
        used = 0
        for _ in range(inner_steps if active else 0):
            with torch.enable_grad():
                embeds = torch.cat([params[k] for k in active]).to(cond.dtype)
                out_u = _unet(pipe, model_in[active], t, embeds)
                guided = out_u + _column([scales[k] for k in active], out_u) * (
                    out_c[active] - out_u)
                landed = ddim_step(sched, guided, t, x[active]).float()
                losses = (landed - target[active]).pow(2).flatten(1).mean(1)
                grads = torch.autograd.grad(losses.sum(), [params[k] for k in active])
            used += 1
            for param in params:
                param.grad = None
            for k, grad in zip(active, grads):
                params[k].grad = grad
            optimiser.step()
            active = [k for k, loss in zip(active, losses.tolist()) if loss >= limit]
            if not active:
                break
        inner_used.append(used)
        uncond = torch.cat([p.detach() for p in params]).to(cond.dtype)
        out.append(uncond)
        with torch.no_grad():
            out_u = _unet(pipe, model_in, t, uncond)
            x = ddim_step(sched, out_u + _column(scales, out_u) * (out_c - out_u), t, x)
        errors.append(float((x.float() - target).pow(2).mean()))
    return out, {"inner_steps": inner_used, "latent_error": errors}


@torch.no_grad()
def reconstruct_latents(pipe: Any, inversion: Inversion, prompt: str | Sequence[str] | None
                        = None, guidance: float | Sequence[float] | None = None
                        ) -> torch.Tensor:
    """DDIM sampling from the inverted noise with the inversion's per-step unconditional
    embeddings; `prompt` and `guidance` default to the inversion's."""
    count = inversion.noise.shape[0]
    prompts = inversion.prompts if prompt is None else _prompts(prompt, count)
    scales = inversion.guidance if guidance is None else _scales(guidance, count)
    sched = ddim_scheduler(pipe, inversion.schedule_steps)
    cond = encode_prompts(pipe, prompts)
    x = inversion.noise
    for i, t in enumerate(sched.timesteps[inversion.start_step:]):
        out = _guided(pipe, sched.scale_model_input(x, t), t, cond, inversion.uncond[i],
                      scales)
        if inversion.step_noise is None:
            x = ddim_step(sched, out, t, x)
        else:
            x = sched.step(out, t, x, eta=1.0, variance_noise=inversion.step_noise[i],
                           return_dict=False)[0]
    return x


def reconstruct(pipe: Any, inversion: Inversion, prompt: str | Sequence[str] | None = None,
                guidance: float | Sequence[float] | None = None) -> torch.Tensor:
    """`reconstruct_latents` decoded: (n, 3, H, W) images in [0, 1] on the CPU."""
    return decode(pipe, reconstruct_latents(pipe, inversion, prompt, guidance))


def _as_tensor(images: Any) -> torch.Tensor:
    """PIL image(s) or tensors in [0, 1] -> (n, 3, H, W) float32 on the CPU."""
    if isinstance(images, torch.Tensor):
        images = images if images.ndim == 4 else images[None]
        return images.detach().float().cpu()
    import numpy as np

    items = images if isinstance(images, (list, tuple)) else [images]
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in items]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def psnr(photos: Any, images: Any) -> list[float]:
    """Peak signal-to-noise ratio in dB of each image against its photo (both PIL or [0, 1]
    tensors of one size): higher is closer, identical is infinite."""
    a, b = _as_tensor(photos), _as_tensor(images)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return [float("inf") if m == 0 else float(-10 * torch.log10(m)) for m in mse]


def pixel_error(photos: Any, images: Any) -> list[float]:
    """Mean absolute pixel difference of each image against its photo, in 0..255 levels."""
    a, b = _as_tensor(photos), _as_tensor(images)
    return [float(e) * 255 for e in (a - b).abs().flatten(1).mean(1)]
