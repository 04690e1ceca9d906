"""editkit: make instruction-following image editors for your domain.

The names below are the public surface a plugin imports: `hookimpl`, the base class of each
plugin kind with the job its method receives, and the errors to raise.

    from editkit import CaptionGenerator, CaptionJob, PluginOptions, hookimpl

Importing this package must stay cheap: the CLI imports it on every start, so the plugin kinds
(pydantic) load on first use and heavy libraries (torch, diffusers, transformers) are imported
inside the functions that need them.
"""

from __future__ import annotations

from typing import Any

import pluggy

__version__ = "0.2.0"

hookimpl = pluggy.HookimplMarker("editkit")

_KINDS = ("PluginOptions", "Plugin", "Reject", "CaptionJob", "CaptionGenerator",
          "IndexedCaptionGenerator", "RenderJob", "Renderer", "FilterJob", "Filter", "TrainJob",
          "Trainer", "Verdict", "HeldOut", "Judge")
_ERRORS = ("EditkitError", "InputError", "ModelError", "NeedsKeyError", "PluginError",
           "RecipeError", "RunError")

__all__ = ["__version__", "hookimpl", *_KINDS, *_ERRORS]


def __getattr__(name: str) -> Any:
    if name in _KINDS:
        from editkit.plugin import kinds

        return getattr(kinds, name)
    if name in _ERRORS:
        from editkit import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'editkit' has no attribute {name!r}")
