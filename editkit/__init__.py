"""editkit: make instruction-following image editors for your domain.

Importing this package must stay cheap: the CLI imports it on every start, and heavy libraries
(torch, diffusers, transformers) are imported inside the functions that need them.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("editkit")

__all__ = ["__version__", "hookimpl"]
