"""The CLIP token-length check: a caption longer than the text encoder reads is cut silently
by the renderer, so the image would not show the end of it. Counted with the render model's
own tokenizer (only the tokenizer is loaded), never estimated from words."""

from __future__ import annotations

from typing import Any

from editkit.errors import ModelError
from editkit.models import load, resolve
from editkit.plugin.kinds import Reject

CLIP_MAX = 77


class TokenLimit:
    """Counts tokens (start and end tokens included) of each caption of a triplet."""

    def __init__(self, ref: str):
        from transformers import AutoTokenizer

        model = resolve(ref)
        self.ref = ref
        try:
            self.tokenizer = load(AutoTokenizer, model, "tokenizer", subfolder="tokenizer")
        except ModelError:
            self.tokenizer = load(AutoTokenizer, model, "tokenizer")
        limit = getattr(self.tokenizer, "model_max_length", CLIP_MAX) or CLIP_MAX
        self.limit = int(limit) if limit <= 4096 else CLIP_MAX
        self.tokenizer.model_max_length = 10**6  # we count; the library need not warn

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    def problem(self, triplet: dict[str, Any]) -> Reject | None:
        for key in ("input", "edit", "output"):
            n = self.count(triplet[key])
            if n > self.limit:
                return Reject("too many tokens", f"{key} has {n} tokens, the text encoder of "
                              f"{self.ref} reads {self.limit}")
        return None


def tokenizer_ref(recipe: Any) -> str | None:
    """captions.tokenizer when set, else the render stage's `model` option, else None."""
    spec = recipe.model.captions
    if spec is not None and spec.tokenizer:
        return spec.tokenizer
    render = recipe.plugins.get("render")
    if render is not None:
        model = render.options_dict().get("model")
        return str(model) if model else None
    return None
