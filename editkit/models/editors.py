"""Load an instruction-editing model from whatever the user points at.

An edit model is an InstructPix2Pix pipeline of its model family (Stable Diffusion 1.x/2.x or
SDXL; `editkit.models.families` loads and runs it). It may come from a hub id, a local diffusers
folder, a built-in tiny model, a finished run folder (its `train/final/`), a folder holding
`editkit_weights.json` (or a plugin's model of that kind, like `shapes-edit`), or a LoRA
`.safetensors` file applied to its base. Trainers write
`editkit_weights.json` so that every one of these loads the same way:

    {"type": "pipeline"}                                  a full pipeline in the same folder
    {"type": "lora", "base": REF, "lora": FILE, "conv_in": FILE or null,
     "base_probe": [32 numbers] (optional)}

Either may add "guidance": {"text": T, "image": I}, the guidance the trainer recommends
(`editkit edit` uses it when no --guidance / --image-guidance is given; a flow editor's has
no "image"), and "steps", the denoising steps it recommends. A LoRA may add
"prediction_type" ("epsilon", "v_prediction" or "sample"): what its UNet was trained to
predict (editkit's trainers always write it; absent, the base's scheduler decides; a full
pipeline's own scheduler config says it already). "base_probe" is a
sample of the base UNet's weights when the LoRA was trained: a LoRA on a base that has since
changed (a retrained local folder, an updated built-in model) loads without complaint and
edits badly, so loading compares the sample and refuses with one clear line. A LoRA's base
may be of either family, a text-to-image model (with "conv_in", its widened input layer) or
an InstructPix2Pix editor: the base's family decides which pipeline loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from editkit.errors import ModelError
from editkit.models import ModelRef, check_family, pick_device, pick_dtype, resolve

DEFAULT_EDIT_MODEL = "timbrooks/instruct-pix2pix"
WEIGHTS_FILE = "editkit_weights.json"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what a diffusers UNet may predict


@dataclass(frozen=True)
class EditModelSpec:
    ref: str
    type: str  # "pipeline" or "lora"
    pipeline: ModelRef  # the pipeline itself, or the LoRA's base
    lora: Path | None = None
    conv_in: Path | None = None
    guidance: dict[str, float] | None = None  # recommended {"text": T, "image": I}
    base_probe: tuple[float, ...] | None = None  # the base's weights_probe at training time
    prediction_type: str | None = None  # the LoRA's recorded one; None: the base's
    family: str | None = None  # the editor's model family ("sd", "sdxl"), known once loaded
    steps: int | None = None  # recommended denoising steps (flow editors' trainers write it)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"ref": self.ref, "type": self.type,
                                "pipeline": self.pipeline.describe()}
        if self.family is not None:
            info["family"] = self.family
        if self.lora is not None:
            info["lora"] = str(self.lora)
        if self.conv_in is not None:
            info["conv_in"] = str(self.conv_in)
        if self.guidance is not None:
            info["guidance"] = self.guidance
        if self.prediction_type is not None:
            info["prediction_type"] = self.prediction_type
        return info


def _from_weights_file(ref: str, folder: Path, base: str | None) -> EditModelSpec:
    try:
        data = json.loads((folder / WEIGHTS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {folder / WEIGHTS_FILE}: {exc}",
                         "the trained weights are incomplete; re-run the train stage") from None
    guidance = data.get("guidance")
    if guidance is not None and not (
            isinstance(guidance, dict) and isinstance(guidance.get("text"), (int, float))
            and isinstance(guidance.get("image", 0), (int, float))):
        raise ModelError(f"{folder / WEIGHTS_FILE} has a malformed guidance entry {guidance!r}",
                         'expected {"text": number, "image": number} ("image" only for '
                         "InstructPix2Pix editors), or no entry")
    steps = data.get("steps")
    if steps is not None and not (isinstance(steps, int) and steps > 0):
        raise ModelError(f"{folder / WEIGHTS_FILE} has a malformed steps entry {steps!r}",
                         "expected a positive whole number of denoising steps, or no entry")
    if data.get("type") == "pipeline":
        return EditModelSpec(ref, "pipeline", ModelRef(ref, "local", str(folder.resolve())),
                             guidance=guidance)
    if data.get("type") == "lora":
        lora = folder / data.get("lora", "pytorch_lora_weights.safetensors")
        conv_in = folder / data["conv_in"] if data.get("conv_in") else None
        prediction = data.get("prediction_type")
        if prediction is not None and prediction not in PREDICTION_TYPES:
            raise ModelError(f"{folder / WEIGHTS_FILE} has an unknown prediction_type "
                             f"{prediction!r}", f"expected one of {', '.join(PREDICTION_TYPES)}, "
                             "or no entry (the base's)")
        probe = data.get("base_probe")
        if probe is not None and not (isinstance(probe, list) and probe and all(
                isinstance(v, (int, float)) for v in probe)):
            raise ModelError(f"{folder / WEIGHTS_FILE} has a malformed base_probe entry",
                             "expected a list of numbers, or no entry")
        # a --base chosen by the user is taken as meant: the probe checks only the recorded one
        return EditModelSpec(ref, "lora", resolve(base or data.get("base") or
                                                  DEFAULT_EDIT_MODEL), lora, conv_in,
                             guidance, tuple(probe) if probe and not base else None,
                             prediction, steps=steps)
    raise ModelError(f"{folder / WEIGHTS_FILE} has unknown type {data.get('type')!r}",
                     "expected 'pipeline' or 'lora'")


def resolve_edit_model(ref: str | Path, base: str | None = None) -> EditModelSpec:
    """What `ref` names, without loading anything heavy."""
    text = str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "manifest.json").exists() or (path / "train").is_dir():
            final = path / "train" / "final"
            if not (final / WEIGHTS_FILE).exists():
                raise ModelError(f"run folder {text} has no trained weights yet",
                                 "run its train stage first (editkit run RECIPE --only train)")
            return _from_weights_file(text, final, base)
        if (path / WEIGHTS_FILE).exists():
            return _from_weights_file(text, path, base)
        if (path / "model_index.json").exists():
            return EditModelSpec(text, "pipeline", ModelRef(text, "local", str(path.resolve())))
        raise ModelError(f"{text} is neither a diffusers pipeline folder nor a run folder",
                         "point --model at a folder with model_index.json, a run folder, "
                         "a LoRA .safetensors file or a hub id")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelError(f"{text} is not a model: only .safetensors LoRA files load",
                             "pass a LoRA .safetensors file, a folder or a hub id")
        sibling = path.parent / WEIGHTS_FILE
        if sibling.exists():
            spec = _from_weights_file(text, path.parent, base)
            return EditModelSpec(text, "lora", spec.pipeline, path, spec.conv_in,
                                 spec.guidance, base_probe=spec.base_probe,
                                 prediction_type=spec.prediction_type, steps=spec.steps)
        return EditModelSpec(text, "lora", resolve(base or DEFAULT_EDIT_MODEL), path)
    named = resolve(text)
    if named.source == "builtin" and (Path(named.location) / WEIGHTS_FILE).is_file():
        return _from_weights_file(text, Path(named.location), base)  # a shipped editor
    return EditModelSpec(text, "pipeline", named)


def is_text_to_image(ref: str | Path) -> bool:
    """True when `ref` is a local or built-in pipeline whose UNet takes only the noisy latents
    (in = out channels: a text-to-image model, not an editor); read from its config without
    loading weights."""
    try:
        spec = resolve_edit_model(ref)
    except ModelError:
        return False
    if spec.type != "pipeline" or spec.pipeline.source == "hub":
        return False
    config = Path(spec.pipeline.location) / "unet" / "config.json"
    try:
        unet = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return unet.get("in_channels", 4) == unet.get("out_channels", 4)


def with_prediction_type(scheduler: Any, prediction_type: str | None) -> Any:
    """`scheduler` as it is, or a copy of its class whose model predicts `prediction_type`
    (the noise, the velocity, or the clean latents themselves)."""
    if prediction_type is None or prediction_type == scheduler.config.prediction_type:
        return scheduler
    return type(scheduler).from_config(scheduler.config, prediction_type=prediction_type)


CONV_IN_INITS = ("zeros", "copy")


def widen_conv_in(unet: Any, in_channels: int = 8, init: str = "zeros") -> None:
    """Give a text-to-image UNet extra input channels for the image condition. `zeros`: the
    UNet starts out ignoring the image, exactly as InstructPix2Pix did. `copy`: the noisy
    latents' weights duplicated onto the image channels and both halved (Marigold, Ke et al.,
    CVPR 2024), so it starts out reading the input image as if it were the picture being
    denoised. `in_channels` is twice the latent channels (8 for Stable Diffusion's 4)."""
    import torch

    if init not in CONV_IN_INITS:
        raise ValueError(f"conv_in init must be one of {CONV_IN_INITS}, not {init!r}")
    old = unet.conv_in
    if old.in_channels == in_channels:
        return
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                          old.padding, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        if init == "copy":
            new.weight[:, : old.in_channels] = old.weight / 2
            new.weight[:, old.in_channels: 2 * old.in_channels] = old.weight / 2
        else:
            new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


PROBE_SIZE = 32


def weights_probe(unet: Any) -> list[float]:
    """PROBE_SIZE of the UNet's weights, spread over its weight tensors (conv_in, which an
    editor widens, left out): any retraining changes them, a change of dtype barely does."""
    tensors = sorted((name, param) for name, param in unet.named_parameters()
                     if name.endswith(".weight") and not name.startswith("conv_in.")
                     and param.numel() > 1)
    values = []
    for i in range(PROBE_SIZE):
        flat = tensors[i * len(tensors) // PROBE_SIZE][1].detach().flatten()
        values.append(round(float(flat[(i * 7919) % flat.numel()]), 6))
    return values


def _check_base(unet: Any, spec: EditModelSpec) -> None:
    import math

    if spec.base_probe is None:
        return
    now = weights_probe(unet)
    if len(now) != len(spec.base_probe) or not all(
            math.isclose(a, b, rel_tol=2e-2, abs_tol=1e-3) for a, b in zip(now, spec.base_probe)):
        raise ModelError(
            f"{spec.ref} was trained as a LoRA on another '{spec.pipeline.ref}' than the one "
            "found now (its base weights have changed since)",
            "retrain the editor on this base (editkit run RECIPE --fresh), or pass --base to "
            "apply it to this one anyway")


# how a LoRA file names the down half of a layer, in every key format diffusers loads
_LORA_DOWN = (".lora_A.", ".lora.down.", ".lora_down.", ".lora_linear_layer.down.")


def _check_lora_loaded(denoiser: Any, prefix: str, spec: EditModelSpec) -> None:
    """Every layer of the denoiser (UNet or transformer) the LoRA file holds is on it:
    `load_lora_weights` only warns when keys it cannot place are left over (a file saved
    half in diffusers' old format)."""
    from safetensors import safe_open

    with safe_open(str(spec.lora), "pt") as f:
        wanted = sum(1 for k in f.keys()
                     if k.startswith(f"{prefix}.") and any(d in k for d in _LORA_DOWN))
    loaded = sum(1 for m in denoiser.modules() if len(getattr(m, "lora_A", ()) or ()) > 0)
    if loaded < wanted:
        raise ModelError(
            f"LoRA {spec.lora}: only {loaded} of its {wanted} "
            f"{'UNet' if prefix == 'unet' else prefix} layers loaded onto "
            f"'{spec.pipeline.ref}'",
            "retrain with this editkit (older ones saved LoRAs on convolutions half in "
            "diffusers' old key format), or check that it was trained on this base (--base)")


def load_edit_pipeline(ref: str | Path, device: str = "auto", dtype: str = "auto",
                       base: str | None = None) -> tuple[Any, EditModelSpec]:
    """The InstructPix2Pix pipeline of its family (Stable Diffusion's or SDXL's) for `ref`,
    on the chosen device, and what it was (its `family` filled in)."""
    from editkit.models.families import family_for

    spec = resolve_edit_model(ref, base)
    # FLUX, ..., or a text-to-image model with no conv_in to make it an editor: one line
    # before loading, not a failure mid-call
    check_family(spec.pipeline, "editor" if spec.conv_in is None else "edit")
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    family = family_for(spec.pipeline)
    spec = replace(spec, family=family.name)
    pipe = family.load_editor(spec.pipeline, torch_dtype)
    if getattr(family, "flow", False):
        return _with_lora(pipe, pipe.transformer, "transformer", spec).to(device), spec
    if spec.conv_in is not None:
        from safetensors.torch import load_file

        widen_conv_in(pipe.unet, 2 * pipe.unet.config.out_channels)
        weights = load_file(str(spec.conv_in))
        pipe.unet.conv_in.load_state_dict({k.split("conv_in.")[-1]: v.to(torch_dtype)
                                           for k, v in weights.items()})
    if pipe.unet.config.in_channels != 2 * pipe.unet.config.out_channels:
        raise ModelError(
            f"'{spec.pipeline.ref}' is a text-to-image model (its UNet takes "
            f"{pipe.unet.config.in_channels} channels), not an instruction editor",
            "use an InstructPix2Pix model (like timbrooks/instruct-pix2pix) or a run trained "
            "from it")
    pipe = _with_lora(pipe, pipe.unet, "unet", spec)
    pipe.scheduler = with_prediction_type(pipe.scheduler, spec.prediction_type)
    return pipe.to(device), spec


def _with_lora(pipe: Any, denoiser: Any, prefix: str, spec: EditModelSpec) -> Any:
    """`pipe` with the spec's LoRA (if any) loaded onto `denoiser` (the UNet or the
    transformer, its keys under `prefix`) and fused, progress bars off."""
    _check_base(denoiser, spec)
    if spec.lora is not None:
        try:
            pipe.load_lora_weights(str(spec.lora.parent), weight_name=spec.lora.name)
        except Exception as exc:
            raise ModelError(f"could not load LoRA {spec.lora} onto '{spec.pipeline.ref}': "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                             "check that the LoRA was trained on this base (--base)") from exc
        _check_lora_loaded(denoiser, prefix, spec)
        # merged into the base weights: each layer then runs one matmul instead of three
        # (the same numbers; a rank-64 shapes editor edits 1.7x faster on CPU, BENCHMARKS.md)
        pipe.fuse_lora()
    pipe.set_progress_bar_config(disable=True)
    return pipe
