"""Tiny models and helpers for tests, ours and third-party plugins'.

Everything here is built offline from random weights and saved with `save_pretrained`, so
loading goes through the same `from_pretrained` code a hub id would.
"""

from editkit.models.tiny import (
    build_tiny_clip,
    build_tiny_dinov2,
    build_tiny_ip2p,
    build_tiny_sd,
    build_tiny_tokenizer,
    sharpen_attention,
    tiny_model,
)

__all__ = ["build_tiny_clip", "build_tiny_dinov2", "build_tiny_ip2p", "build_tiny_sd",
           "build_tiny_tokenizer", "sharpen_attention", "tiny_model"]
