"""One sampling loop for before/after pairs over diffusers components.

Per step the UNet runs once on a batch of 4 x samples: [unconditional | conditional] x
samples x [before, after]. Both images of a sample start from the same noise (and, with
ancestral schedulers, draw the same step noise), so they differ only where the prompts and
the attention controller make them differ.

To edit a photo instead of an image drawn from a seed, `sample_pairs` takes the photo's
inverted noise (`noise`) and per-step unconditional embeddings (`uncond`) from
`editkit.diffusion.inversion`, and a `latent_hook` may pin the before branch to the inverted
trajectory.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from editkit.diffusion.control import AttentionController, attention_control
from editkit.diffusion.schedulers import make_scheduler
from editkit.models.families import encode_prompts, family_of  # noqa: F401 (re-exported)

# latent_hook(step, before, after) -> after, or (before, after): runs after every scheduler
# step; what it returns replaces the latents the next step starts from.
LatentHook = Callable[[int, torch.Tensor, torch.Tensor],
                      torch.Tensor | tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PairBatch:
    """One batch of samples; lists are per sample."""

    before: list[str]
    after: list[str]
    seeds: list[int]
    guidance: list[float]
    negative: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.seeds)


def vae_scale(pipe: Any) -> int:
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def latent_size(pipe: Any, height: int, width: int) -> tuple[int, int]:
    scale = vae_scale(pipe)
    return height // scale, width // scale




def initial_noise(pipe: Any, seeds: list[int], latent_hw: tuple[int, int],
                  place: tuple[Any, Any] | None = None) -> torch.Tensor:
    """(samples, C, h, w) noise, each sample from its own seed on the CPU (device-independent),
    moved to the UNet's (device, dtype), or `place` when the caller knows it."""
    channels = pipe.unet.config.in_channels
    noise = [torch.randn((1, channels, *latent_hw), generator=torch.Generator("cpu")
                         .manual_seed(int(seed)), dtype=torch.float32) for seed in seeds]
    device, dtype = place or (pipe.unet.device, pipe.unet.dtype)
    return torch.cat(noise).to(device, dtype)


def _check_shape(what: str, tensor: Any, expected: tuple[int, ...]) -> None:
    shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
    if shape != expected:
        raise ValueError(f"{what} must be a tensor of shape {expected}, got "
                         f"{shape if shape is not None else type(tensor).__name__}")


@torch.no_grad()
def sample_pairs(pipe: Any, batch: PairBatch, *, steps: int, height: int, width: int,
                 scheduler: str = "default", controller: AttentionController | None = None,
                 latent_hook: LatentHook | None = None, noise: torch.Tensor | None = None,
                 uncond: Sequence[torch.Tensor] | None = None,
                 step_noise: Sequence[torch.Tensor] | None = None, start_step: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise `batch` and return (before, after) latents, each (samples, C, h, w).

    `noise` (samples, C, h, w) replaces the seeds' initial noise for both images of each
    sample, as it is (not scaled by the scheduler's `init_noise_sigma`): it is the latent at
    the first timestep, such as `Inversion.noise`. `uncond` (one (samples, tokens, dim)
    tensor per step, such as `Inversion.uncond`) replaces the negative prompt's embedding as
    the unconditional one at each step, shared by the before and after images of a sample.
    To sample back along an inversion, use `scheduler="ddim"` and the inversion's `steps`
    (and its guidance in `batch.guidance`): the inverted noise and embeddings only hold for
    DDIM (eta 0) on the same timesteps.

    `latent_hook(step, before, after)` runs after every scheduler step and returns the new
    `after`, or a `(before, after)` pair, e.g. to pin the before images to the inverted
    trajectory (`Inversion.target(step)`).

    `step_noise` (one (samples, C, h, w) tensor per step run) makes the DDIM steps stochastic
    (eta 1) with exactly this noise, shared by the two images of a sample: with an
    edit-friendly inversion's noise maps (`Inversion.step_noise`) the before image comes back
    exactly. `start_step` skips the first steps of the `steps` schedule: sampling starts at
    `timesteps[start_step]` from `noise`, and `uncond`/`step_noise` hold one entry per step
    run; the controller counts only the steps run."""
    texts = [text for pair in zip(batch.before, batch.after) for text in pair]
    latents = _denoise(pipe, texts, batch.seeds, batch.guidance, batch.negative, 2, steps=steps,
                       height=height, width=width, scheduler=scheduler, controller=controller,
                       latent_hook=latent_hook, noise=noise, uncond=uncond,
                       step_noise=step_noise, start_step=start_step)
    pairs = latents.view(len(batch), 2, *latents.shape[1:])
    return pairs[:, 0], pairs[:, 1]


@torch.no_grad()
def sample_images(pipe: Any, prompts: list[str], seeds: list[int], guidance: list[float], *,
                  steps: int, height: int, width: int, scheduler: str = "default",
                  negative: str = "") -> torch.Tensor:
    """Text-to-image latents (samples, C, h, w), one image per prompt: each is the before
    image `sample_pairs` gives for the same prompt, seed, guidance and settings (the same
    loop, with one image per sample instead of two), at half its cost."""
    return _denoise(pipe, list(prompts), seeds, guidance, negative, 1, steps=steps,
                    height=height, width=width, scheduler=scheduler)


def _denoise(pipe: Any, texts: list[str], seeds: list[int], guidance_scales: list[float],
             negative: str, group: int, *, steps: int, height: int, width: int,
             scheduler: str = "default", controller: AttentionController | None = None,
             latent_hook: LatentHook | None = None, noise: torch.Tensor | None = None,
             uncond: Sequence[torch.Tensor] | None = None,
             step_noise: Sequence[torch.Tensor] | None = None, start_step: int = 0
             ) -> torch.Tensor:
    """The sampling loop of `sample_pairs` for `group` images per sample (`texts` holds
    samples x group prompts, sample-major): all images of a sample start from its seed's
    noise. The latent hook sees (before, after) and needs a group of two."""
    count = len(seeds)
    latent_hw = latent_size(pipe, height, width)
    channels = pipe.unet.config.in_channels
    if noise is not None:
        _check_shape("noise", noise, (count, channels, *latent_hw))
    # diffusers finds a model's device and dtype by walking its modules: once per call here
    device, dtype = pipe.unet.device, pipe.unet.dtype
    sched = make_scheduler(scheduler, pipe.scheduler.config)
    sched.set_timesteps(steps, device=device)
    if not 0 <= start_step < steps:
        raise ValueError(f"start_step {start_step} is outside 0..{steps - 1}")
    if start_step and noise is None:
        raise ValueError("start_step needs the noise to start from (noise=...)")
    timesteps = sched.timesteps[start_step:]
    if step_noise is not None:
        if type(sched).__name__ != "DDIMScheduler":
            raise ValueError("step_noise needs scheduler='ddim'")
        if len(step_noise) != len(timesteps):
            raise ValueError(f"step_noise has {len(step_noise)} maps for {len(timesteps)} "
                             "sampling steps: give one per step")
        for i, item in enumerate(step_noise):
            _check_shape(f"step_noise[{i}]", item, (count, channels, *latent_hw))
    conditioning = family_of(pipe).encode(pipe, [negative] * (group * count), texts,
                                          (height, width))
    embeds = conditioning.hidden
    if uncond is not None and conditioning.added is not None:
        raise ValueError("uncond (per-step unconditional embeddings of an inversion) is for "
                         "Stable Diffusion 1.x/2.x models")
    if uncond is not None:
        if len(uncond) != len(timesteps):
            raise ValueError(f"uncond has {len(uncond)} embeddings for {len(timesteps)} "
                             "sampling steps: give one per step")
        for i, item in enumerate(uncond):
            _check_shape(f"uncond[{i}]", item, (count, *embeds.shape[1:]))
    if noise is None:
        latents = initial_noise(pipe, seeds, latent_hw, (device, dtype))
        latents = latents.repeat_interleave(group, dim=0)
        latents = latents * sched.init_noise_sigma
    else:
        latents = noise.to(device, dtype).repeat_interleave(group, dim=0)
    guidance = torch.tensor(guidance_scales, device=latents.device,
                            dtype=latents.dtype).repeat_interleave(group).view(-1, 1, 1, 1)
    step_kwargs: dict[str, Any] = {}
    if "generator" in inspect.signature(sched.step).parameters:
        # one generator per image, the images of a sample seeded alike: same step noise
        step_kwargs["generator"] = [torch.Generator(latents.device).manual_seed(int(s) + 1)
                                    for s in seeds for _ in range(group)]
    control = controller or AttentionController()
    with attention_control(pipe.unet, control) if controller is not None else nullcontext():
        control.begin(latent_hw, (2, count, group))
        for i, t in enumerate(timesteps):
            control.begin_step(i, len(timesteps))
            if uncond is not None:
                shared = uncond[i].to(embeds.device, embeds.dtype).repeat_interleave(group, 0)
                embeds = torch.cat([shared, embeds[group * count:]])
            model_in = sched.scale_model_input(torch.cat([latents, latents]), t)
            conditioning.hidden = embeds
            output = pipe.unet(model_in, t, **conditioning.unet_kwargs(), return_dict=False)[0]
            out_uncond, out_text = output.chunk(2)
            guided = out_uncond + guidance * (out_text - out_uncond)
            if step_noise is not None:
                shared = step_noise[i].to(latents.device, latents.dtype)
                step_kwargs = {"eta": 1.0, "variance_noise": shared.repeat_interleave(group, 0)}
            latents = sched.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
            if latent_hook is not None:
                pairs = latents.view(count, 2, *latents.shape[1:])
                before, after = pairs[:, 0], pairs[:, 1]
                hooked = latent_hook(i, before, after)
                if isinstance(hooked, tuple):
                    if len(hooked) != 2:
                        raise ValueError(f"latent_hook returned {len(hooked)} tensors: return "
                                         "after, or (before, after)")
                    before, after = hooked
                    _check_shape("latent_hook's before", before, tuple(pairs[:, 0].shape))
                else:
                    after = hooked
                _check_shape("latent_hook's after", after, tuple(pairs[:, 1].shape))
                latents = torch.stack([before.to(latents.dtype), after.to(latents.dtype)],
                                      dim=1).flatten(0, 1)
    return latents


@torch.no_grad()
def decode(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1], (n, 3, H, W) float32 on the CPU (NaN stays NaN).

    As the family's own pipeline decodes: a VAE that overflows in fp16 (SDXL's, whose config
    says `force_upcast`) decodes in fp32, and latents are denormalised with the VAE's
    `latents_mean`/`latents_std` where its config has them."""
    vae = pipe.vae
    held = vae.dtype
    dtype = family_of(pipe).vae_dtype(vae, held)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    latents = latents.to(dtype)
    if mean is not None and std is not None:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1).to(latents) for v in (mean, std))
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    if dtype != held:
        vae.to(dtype)
    try:
        images = vae.decode(latents, return_dict=False)[0]
    finally:
        if dtype != held:
            vae.to(held)
    return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


def to_pil(image: torch.Tensor) -> Any:
    """One (3, H, W) image in [0, 1] -> PIL."""
    from PIL import Image

    array = (image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    return Image.fromarray(array)
