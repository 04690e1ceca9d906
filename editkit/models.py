"""Resolve a model reference (hub id, local folder, built-in name) and load it.

Loading always goes through the library's own `from_pretrained`, so a built-in tiny model,
a folder on disk and a hub checkpoint take the same path. Failures become one `ModelError`
line that says which reference failed and what to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError

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
    from .testing.tiny import BUILDERS

    return sorted({*BUILDERS, *_registered_models()})


def _registered_models() -> dict[str, Any]:
    from .plugins import registry

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
    from .testing.tiny import BUILDERS

    if text in BUILDERS:
        from .testing.tiny import tiny_model

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
    """`cls.from_pretrained(ref)` with errors turned into one clear line."""
    from .quiet import quiet_progress_bars

    quiet_progress_bars()
    model_ref = ref if isinstance(ref, ModelRef) else resolve(ref)
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


def _cached_revision(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:
        return None
