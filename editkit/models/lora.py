"""LoRA weights in the file format diffusers' pipelines read with `load_lora_weights`."""

from __future__ import annotations

from typing import Any


def lora_layers(module: Any) -> dict[str, Any]:
    """`module`'s LoRA weights in peft's own key format, for `save_lora_weights`.

    Not through `convert_state_dict_to_diffusers`, as diffusers' example trainers do: that
    renames only the attention projections (to_q.lora_A -> to_q.lora.down), so a LoRA that
    also targets convolutions or time embeddings is saved half in each format, and
    `load_lora_weights`, seeing peft keys, silently drops the renamed half (a warning, no
    error). Peft's keys load as they are, whatever the targets."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous()
            for k, v in get_peft_model_state_dict(module).items()}


def lora_metadata(module: Any) -> dict[str, Any] | None:
    """`module`'s LoRA config as diffusers' `save_lora_weights` stores it in the file
    (`*_lora_adapter_metadata`), so `load_lora_weights` rebuilds the adapter with its alpha:
    without it the loader guesses alpha = rank, and a LoRA trained with another alpha would
    load at rank/alpha times its trained strength. The keys diffusers' loader itself reads
    from a file without metadata: training-only settings (dropout, initialisation) stay out."""
    config = getattr(module, "peft_config", {}).get("default")
    if config is None:
        return None
    keys = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_dora",
            "lora_bias")
    data = config.to_dict()
    return {k: sorted(data[k]) if isinstance(data[k], set) else data[k] for k in keys}
