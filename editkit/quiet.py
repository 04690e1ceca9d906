"""Keep the model libraries' advisory chatter (progress bars, deprecation notices, optional
backend notices) off the user's terminal. `EDITKIT_DEBUG=1` leaves it all on."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Call before the libraries are imported: several of them log while importing."""
    if os.environ.get("EDITKIT_DEBUG", "") not in ("", "0"):
        return
    for key, value in {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                       "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                       "TF_CPP_MIN_LOG_LEVEL": "3"}.items():
        os.environ.setdefault(key, value)
    for name in ("bitsandbytes", "transformers", "diffusers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("diffusers", "transformers", "torch", "peft", "accelerate"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


def quiet_progress_bars() -> None:
    """diffusers and transformers draw their own loading bars; editkit draws its own."""
    if os.environ.get("EDITKIT_DEBUG", "") not in ("", "0"):
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
