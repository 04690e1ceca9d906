"""Resolve a model reference (hub id, local folder, built-in name) and load it.

Loading always goes through the library's own `from_pretrained`, so a built-in tiny model,
a folder on disk and a hub checkpoint take the same path. Failures become one `ModelError`
line that says which reference failed and what to do.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editkit.errors import ModelError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelRef:
    ref: str  # what the user wrote
    source: str  # "local", "builtin" or "hub"
    location: str  # a folder for local/builtin, the hub id for hub

    def describe(self) -> dict[str, Any]:
        """What the manifest records so a run can be reproduced."""
        info: dict[str, Any] = {"ref": self.ref, "source": self.source}
        if self.source == "hub":
            revision = _cached_revision(self.location)
            if revision:
                info["revision"] = revision
        else:
            info["path"] = self.location
        return info


def builtin_names() -> list[str]:
    """The tiny test models and every model folder a plugin registers (`register_models`)."""
    from editkit.models.tiny import BUILDERS

    return sorted({*BUILDERS, *_registered_models()})


def _registered_models() -> dict[str, Any]:
    from editkit.plugin.registry import registry

    return registry().models


def resolve(ref: str | Path) -> ModelRef:
    """What a model reference names: a local folder, a built-in, or a hub id (no torch)."""
    text = str(ref).strip()
    if not text:
        raise ModelError("empty model reference", "give a hub id (org/name) or a local folder")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() and path.suffix != ".safetensors":
            raise ModelError(f"model '{text}' is a file, not a model folder",
                             "pass the folder that holds model_index.json or config.json")
        return ModelRef(text, "local", str(path.resolve()))
    from editkit.models.tiny import BUILDERS

    if text in BUILDERS:
        from editkit.models.tiny import tiny_model

        return ModelRef(text, "builtin", str(tiny_model(text)))
    if HUB_ID.match(text):
        return ModelRef(text, "hub", text)
    registered = _registered_models().get(text)
    if registered is not None:
        return ModelRef(text, "builtin", _registered_folder(registered))
    raise ModelError(
        f"model '{text}' is not a local folder, a hub id (org/name) or a built-in model",
        f"built-ins: {', '.join(builtin_names())}",
    )


def _registered_folder(info: Any) -> str:
    """The folder a plugin registered for a name, if it holds a checkpoint."""
    folder = Path(info.folder)
    # a model (config.json), a pipeline (model_index.json) or a trained editor's weights
    markers = ("config.json", "model_index.json", "editkit_weights.json")
    if not any((folder / marker).is_file() for marker in markers):
        state = "is incomplete" if folder.is_dir() else "does not exist"
        raise ModelError(
            f"built-in model '{info.name}' (from {info.package}): its folder {folder} {state}",
            "reinstall the package that provides it, or pass a local model folder")
    return str(folder.resolve())


def pick_device(preference: str = "auto") -> str:
    """cuda, then mps, then cpu; an explicit choice that is not available is an error."""
    import torch

    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None)
                             and torch.backends.mps.is_available())}
    if preference == "auto":
        return "cuda" if available["cuda"] else "mps" if available["mps"] else "cpu"
    base = preference.split(":")[0]
    if not available.get(base, False):
        raise ModelError(f"device '{preference}' is not available here",
                         "use device=auto, or one of: " + ", ".join(k for k, v in
                                                                   available.items() if v))
    return preference


def pick_dtype(device: str, preference: str = "auto") -> Any:
    """fp32 on the CPU; fp16 on accelerators unless asked otherwise (bf16 where supported)."""
    import torch

    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if preference != "auto":
        if preference not in names:
            raise ModelError(f"unknown dtype '{preference}'", "use auto, fp32, fp16 or bf16")
        return names[preference]
    return torch.float32 if device.startswith("cpu") else torch.float16


def load(cls: Any, ref: str | Path | ModelRef, what: str = "model", **kwargs: Any) -> Any:
    """`cls.from_pretrained(ref)` with errors turned into one clear line. A diffusion model of
    a family editkit does not speak is refused before loading: it might load, and then fail
    deep inside a pipeline call."""
    from editkit.console import quiet_progress_bars

    quiet_progress_bars()
    model_ref = ref if isinstance(ref, ModelRef) else resolve(ref)
    if str(getattr(cls, "__module__", "")).startswith("diffusers"):
        check_family(model_ref)
        _check_pipeline_class(cls, model_ref)
    try:
        return cls.from_pretrained(model_ref.location, **kwargs)
    except Exception as exc:  # the libraries raise OSError, ValueError, EnvironmentError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if model_ref.source == "hub":
            hint = (f"check the id; without network, download it elsewhere "
                    f"(hf download {model_ref.location}) and pass the local folder")
        else:
            hint = "check that the folder holds a complete diffusers/transformers checkpoint"
        raise ModelError(f"could not load {what} '{model_ref.ref}': {first}", hint) from exc


def _check_pipeline_class(cls: Any, ref: ModelRef) -> None:
    """An SDXL model given to a Stable Diffusion 1.x/2.x pipeline class, or the other way
    round: one line before loading, not a shape error deep inside the first call."""
    name = getattr(cls, "__name__", "")
    found = find_family(ref)
    if found is None or not name.startswith("StableDiffusion") or \
            found.name not in ("sd", "ip2p", "sdxl", "sdxl-ip2p"):
        return
    if name.startswith("StableDiffusionXL") != found.name.startswith("sdxl"):
        raise ModelError(f"'{ref.ref}' is {FAMILIES[found.name]} ({found.how}), which "
                         f"{name} does not load",
                         "give it to a stage that takes its family")


def _cached_revision(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:
        return None


# --- model families ---------------------------------------------------------------------
#
# Which kind of diffusion model a reference names, known without loading it or reaching the
# network. The stages speak Stable Diffusion 1.x/2.x and InstructPix2Pix today; any other
# family is refused in one line before work starts (recipe validation, argument parsing) and
# again on loading. The model-family seam of DESIGN.md grows from this table.

FAMILIES: dict[str, str] = {  # family -> how a message names it
    "sd": "a Stable Diffusion 1.x/2.x text-to-image model",
    "ip2p": "an InstructPix2Pix editor",
    "sd-inpaint": "a Stable Diffusion inpainting model",
    "sdxl": "an SDXL model",
    "sdxl-ip2p": "an SDXL InstructPix2Pix editor",
    "sd3": "a Stable Diffusion 3 model",
    "flux": "a FLUX.1 model",
    "flux-kontext": "a FLUX.1 Kontext editor",
    "flux2": "a FLUX.2 model",
    "flux2-klein": "a FLUX.2 klein editor",
    "qwen-image": "a Qwen-Image model",
    "qwen-image-edit": "a Qwen-Image-Edit editor",
    "kandinsky": "a Kandinsky model",
    "pixart": "a PixArt model",
    "sana": "a Sana model",
    "hidream": "a HiDream model",
    "wan": "a Wan model",
    "stable-cascade": "a Stable Cascade model",
    "cogview": "a CogView model",
    "lumina": "a Lumina model",
    "hunyuan": "a HunyuanDiT model",
    "auraflow": "an AuraFlow model",
    "other": "a diffusers pipeline of a kind editkit does not know",
}
FLOW_FAMILIES = ("flux-kontext", "flux2-klein", "qwen-image-edit")
SUPPORTED_FAMILIES = ("sd", "ip2p", "sdxl", "sdxl-ip2p", *FLOW_FAMILIES)
SUPPORTED = ("Stable Diffusion 1.x/2.x and SDXL text-to-image models and InstructPix2Pix "
             "editors, FLUX.1 Kontext, FLUX.2 klein and Qwen-Image-Edit")
SUPPORTED_EXAMPLES = "stable-diffusion-v1-5/stable-diffusion-v1-5 or timbrooks/instruct-pix2pix"

# What an option that holds a model needs from it. A plugin's Options names its model options
# and their roles in `MODEL_OPTIONS` (like {"model": "text-to-image"}); validation checks them.
ROLES: dict[str, tuple[tuple[str, ...], str]] = {
    "text-to-image": (("sd",), "a Stable Diffusion 1.x/2.x text-to-image model"),
    "render": (("sd", "sdxl"), "a Stable Diffusion 1.x/2.x or SDXL text-to-image model"),
    "edit": (("sd", "ip2p", "sdxl", "sdxl-ip2p", *FLOW_FAMILIES),
             "an InstructPix2Pix editor (Stable Diffusion 1.x/2.x or SDXL), a LoRA "
             "editor's text-to-image base, or a FLUX.1 Kontext, FLUX.2 klein or "
             "Qwen-Image-Edit editor"),
    "editor": (("ip2p", "sdxl-ip2p", *FLOW_FAMILIES),
               "an instruction editor (InstructPix2Pix like timbrooks/instruct-pix2pix, an "
               "SDXL one, FLUX.1 Kontext, FLUX.2 klein, Qwen-Image-Edit) or a run trained "
               "from one"),
    "train-base": (("sd", "ip2p", "sdxl", "sdxl-ip2p"),
                   "an InstructPix2Pix editor (Stable Diffusion 1.x/2.x or SDXL), or a Stable "
                   "Diffusion 1.x/2.x or SDXL model to make one from (FLUX.1 Kontext, FLUX.2 "
                   "klein and Qwen-Image-Edit train with use: flow-lora)"),
    "flow-base": (FLOW_FAMILIES, "a FLUX.1 Kontext, FLUX.2 klein or Qwen-Image-Edit editor "
                                 "(Stable Diffusion and SDXL train with use: lora or "
                                 "instruct-pix2pix)"),
}

# model_index.json's `_class_name` -> family, first match wins; "StableDiffusion*" and unknown
# names are decided by the UNet's config (channels, SDXL's extra embeddings)
_CLASS_PREFIXES = (
    ("StableDiffusionXLInstructPix2Pix", "sdxl-ip2p"), ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("StableDiffusionInstructPix2Pix", "ip2p"), ("StableDiffusionInpaint", "sd-inpaint"),
    ("FluxKontext", "flux-kontext"), ("Flux2Klein", "flux2-klein"), ("Flux2", "flux2"),
    ("Flux", "flux"),
    ("QwenImageEdit", "qwen-image-edit"), ("QwenImage", "qwen-image"),
    ("Kandinsky", "kandinsky"), ("PixArt", "pixart"), ("Sana", "sana"),
    ("HiDream", "hidream"), ("Wan", "wan"), ("StableCascade", "stable-cascade"),
    ("Wuerstchen", "stable-cascade"), ("CogView", "cogview"), ("Lumina", "lumina"),
    ("HunyuanDiT", "hunyuan"), ("AuraFlow", "auraflow"),
)
_EDGE = r"(?<![a-z0-9])"  # a name part starts here (after /, -, _, . or the start)
# a hub id that is not in the local cache: well-known names, the unsupported ones first
_NAME_PATTERNS = tuple((re.compile(pattern), family) for pattern, family in (
    (r"kontext", "flux-kontext"),
    (r"flux[._-]?2.*klein", "flux2-klein"),
    (r"flux[._-]?2", "flux2"),
    (r"flux", "flux"),
    (r"qwen[._-]?image[._-]?edit", "qwen-image-edit"),
    (r"qwen[._-]?image", "qwen-image"),
    (rf"(stable[._-]?diffusion[._-]?xl|{_EDGE}sd[._-]?xl).*pix2pix|pix2pix.*{_EDGE}sd[._-]?xl",
     "sdxl-ip2p"),
    (rf"stable[._-]?diffusion[._-]?xl|{_EDGE}sd[._-]?xl|playground[._-]?v2", "sdxl"),
    (rf"stable[._-]?diffusion[._-]?3|{_EDGE}sd[._-]?3", "sd3"),
    (r"kandinsky", "kandinsky"),
    (r"pixart", "pixart"),
    (rf"{_EDGE}sana(?![a-z])", "sana"),
    (r"hidream", "hidream"),
    (rf"{_EDGE}wan(?![a-z])", "wan"),
    (r"stable[._-]?cascade|wuerstchen", "stable-cascade"),
    (r"cogview", "cogview"),
    (rf"{_EDGE}lumina", "lumina"),
    (r"hunyuan", "hunyuan"),
    (r"auraflow", "auraflow"),
    (r"inpaint", "sd-inpaint"),
    (r"pix2pix", "ip2p"),
    (r"stable[._-]?diffusion[._-]?(v?1|2)", "sd"),
))


@dataclass(frozen=True)
class Family:
    name: str  # a key of FAMILIES
    how: str  # how it was known, for messages ("its model_index.json names ...")


def model_family(ref: str | Path | ModelRef) -> str | None:
    """The family of the model `ref` names ("sd", "ip2p", "sdxl", "flux", ... or None when it
    cannot be told without downloading). Reads configs only: no torch, no network."""
    found = find_family(ref)
    return found.name if found else None


def find_family(ref: str | Path | ModelRef) -> Family | None:
    """`model_family` with how it was known: a local folder's (or the Hugging Face cache's)
    model_index.json and UNet config, else a well-known name in the hub id."""
    if isinstance(ref, ModelRef):
        if ref.source == "hub":
            return _hub_family(ref.location)
        return _folder_family(Path(ref.location))
    text = str(ref).strip()
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder_family(path)
    if path.exists():
        return None  # a LoRA file: the base it loads onto decides
    folder = _builtin_folder(text)
    if folder is not None:
        return _folder_family(folder)
    if HUB_ID.match(text):
        return _hub_family(text)
    return None


def family_problem(ref: str | Path | ModelRef, role: str | None = None
                   ) -> tuple[str, str] | None:
    """(what is wrong, the fix) when `ref` is of a family editkit cannot use, or one that
    cannot do `role` (a key of ROLES); None when it can, or when the family is unknown."""
    found = find_family(ref)
    if found is None:
        return None
    shown = ref.ref if isinstance(ref, ModelRef) else str(ref)
    if found.name not in SUPPORTED_FAMILIES:
        return (f"'{shown}' is {FAMILIES[found.name]} ({found.how}): editkit supports "
                f"{SUPPORTED} for now", f"use one of those, like {SUPPORTED_EXAMPLES}")
    if role is not None:
        families, wanted = ROLES[role]
        if found.name not in families:
            return (f"'{shown}' is {FAMILIES[found.name]} ({found.how})",
                    f"this needs {wanted}")
    return None


def check_family(ref: str | Path | ModelRef, role: str | None = None) -> None:
    """Raise `family_problem` as a one-line ModelError."""
    problem = family_problem(ref, role)
    if problem is not None:
        raise ModelError(*problem)


def reference_problem(ref: str, role: str | None = None) -> str | None:
    """Why `ref` cannot be the model of an option, as one line, known before any work and
    offline: a local path that does not exist, a name that is nothing, a file that is not a
    model, an unsupported family. A hub id (owner/name) that is not downloaded passes: it may
    be fetched when the stage runs."""
    text = str(ref).strip()
    if not text:
        return "empty model reference; give a hub id (owner/name) or a local folder"
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() and path.suffix != ".safetensors":
            return (f"'{text}' is a file, not a model folder; pass the folder that holds "
                    "model_index.json or config.json")
    elif text in _tiny_builders() or text in _registered_models():
        if text not in _tiny_builders():
            try:
                _registered_folder(_registered_models()[text])
            except ModelError as exc:
                return str(exc)
    elif looks_local(text):
        return f"'{text}' does not exist; check the path (a folder with model_index.json)"
    elif not HUB_ID.match(text):
        return (f"'{text}' is not a local folder, a hub id (owner/name) or a built-in model; "
                f"built-ins: {', '.join(builtin_names())}")
    problem = family_problem(text, role)
    return f"{problem[0]}; {problem[1]}" if problem else None


def looks_local(text: str) -> bool:
    """A path on this machine rather than a hub id: it starts with ./, ../, / or ~, names a
    .safetensors file, or has separators a hub id (owner/name) cannot have."""
    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or text in (".", ".."):
        return True
    if text.endswith(".safetensors"):
        return True
    separators = {os.sep, os.altsep or os.sep, "/"}
    return any(sep in text for sep in separators) and not HUB_ID.match(text)


def _tiny_builders() -> dict[str, Any]:
    from editkit.models.tiny import BUILDERS

    return BUILDERS


def _builtin_folder(name: str) -> Path | None:
    """The folder of a built-in model already on disk: a tiny model once built, or a folder a
    plugin registered (nothing is built or loaded here)."""
    if name in _tiny_builders():
        from editkit.models.tiny import models_home

        folder = models_home() / name
        return folder if (folder / ".complete").is_file() else None
    if HUB_ID.match(name):
        return None
    info = _registered_models().get(name)
    if info is not None and Path(info.folder).is_dir():
        return Path(info.folder)
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _folder_family(folder: Path, depth: int = 0) -> Family | None:
    weights = _read_json(folder / "editkit_weights.json")
    if weights is not None and weights.get("type") == "lora":
        return _lora_family(folder, weights, depth)
    if weights is None and depth == 0 and (
            (folder / "manifest.json").is_file() or (folder / "train").is_dir()):
        return _folder_family(folder / "train" / "final", depth + 1)  # a run folder
    index = _read_json(folder / "model_index.json")
    if index is None:
        return None
    return _index_family(index, _read_json(folder / "unet" / "config.json"),
                         "its model_index.json")


def _lora_family(folder: Path, weights: dict[str, Any], depth: int) -> Family:
    """An editkit LoRA editor is an editor of its base's family: SDXL's for an SDXL base
    (text-to-image or editor), else InstructPix2Pix."""
    base = str(weights.get("base") or "").strip()
    found = None
    if base and depth < 2:  # a base that is itself a LoRA editor is followed once
        path = Path(base).expanduser()
        where = path if path.is_dir() else _builtin_folder(base)
        found = (_folder_family(where, depth + 1) if where is not None
                 else _hub_family(base) if HUB_ID.match(base) else None)
    if found is not None and found.name in FLOW_FAMILIES:
        return Family(found.name, f"{folder.name} holds an editkit LoRA of "
                                  f"{FAMILIES[found.name]}")
    if found is not None and found.name.startswith("sdxl"):
        return Family("sdxl-ip2p", f"{folder.name} holds an editkit LoRA editor on an SDXL "
                                   "base")
    return Family("ip2p", f"{folder.name} holds an editkit LoRA editor")


def _hub_family(repo_id: str) -> Family | None:
    index = _hub_cached_json(repo_id, "model_index.json")
    if index is not None:
        return _index_family(index, _hub_cached_json(repo_id, "unet/config.json"),
                             "its model_index.json in the Hugging Face cache")
    lowered = repo_id.lower()
    for pattern, family in _NAME_PATTERNS:
        if pattern.search(lowered):
            return Family(family, "known from its hub id")
    return None


def _hub_cached_json(repo_id: str, filename: str) -> dict[str, Any] | None:
    """A file of a hub repository if the local Hugging Face cache has it (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # an id the library refuses, an unreadable cache: nothing known
        return None
    return _read_json(Path(found)) if isinstance(found, str) else None


def _index_family(index: dict[str, Any], unet: dict[str, Any] | None, where: str) -> Family:
    name = str(index.get("_class_name") or "")
    how = f"{where} names {name or 'no pipeline class'}"
    for prefix, family in _CLASS_PREFIXES:
        if name.startswith(prefix):
            return Family(family, how)
    by_unet = _unet_family(unet)
    if by_unet is not None:
        return Family(by_unet, how if by_unet == "sd" else f"{how} with its UNet config")
    return Family("sd" if name.startswith("StableDiffusion") else "other", how)


def _unet_family(unet: dict[str, Any] | None) -> str | None:
    """SD, InstructPix2Pix, inpainting or SDXL from a UNet2DConditionModel's config."""
    if not unet or unet.get("_class_name") != "UNet2DConditionModel":
        return None
    latent, taken = unet.get("out_channels", 4), unet.get("in_channels", 4)
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl-ip2p" if taken == 2 * latent else "sdxl"
    if taken == latent:
        return "sd"
    if taken == 2 * latent:
        return "ip2p"
    if taken == 2 * latent + 1:
        return "sd-inpaint"
    return None
