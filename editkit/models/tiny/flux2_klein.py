"""A tiny random FLUX.2 klein editor, built offline (its tokenizer built in code).

The real FLUX.2-klein-4B is a Flux2KleinPipeline of a FLUX.2 transformer (5 double and 20
single blocks, 128 latent channels after the 2x2 patchify, no guidance embedding), the FLUX.2
VAE (32 latent channels, 8x down, batch-norm statistics of the patchified latents), a Qwen3
causal LM whose hidden states of layers 9, 18 and 27 are stacked as text, Qwen's byte-level BPE
tokenizer with its chat template, and FLUX's dynamically shifted flow-matching scheduler. The
tiny one keeps all of that: its Qwen3 is narrow but 28 layers deep, so the pipeline's own
layers (9, 18, 27) exist and it runs with the pipeline's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the tokens Qwen3 adds after Qwen2.5's (decoded as text): its tool replies and thinking markers
QWEN3_ADDED = ("<tool_response>", "</tool_response>", "<think>", "</think>")
# Qwen3's chat template for plain messages: what `apply_chat_template(..., add_generation_prompt
# =True, enable_thinking=False)` gives the real tokenizer for a user message (an empty
# thinking block opens the answer)
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")
# the real model's scheduler_config.json (FLUX's: shifted by the image's token count; the
# FLUX.2 pipelines pass their own empirical mu)
SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                 base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                 max_image_seq_len=4096, time_shift_type="exponential")


def qwen3_tokenizer() -> Any:
    """Qwen3's tokenizer: Qwen's byte-level BPE learnt from editkit's word list and the chat
    template's role names, Qwen3's added tokens and its chat template."""
    from editkit.models.tiny import QWEN_ADDED, build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer(["system", "user", "assistant"] * 3, 600,
                                     (*QWEN_ADDED, *QWEN3_ADDED))
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def build(path: str | Path, seed: int = 0, distilled: bool = True) -> Path:
    """A Flux2KleinPipeline folder with every part of the real model at a tiny size
    (`distilled`: the step-distilled FLUX.2-klein-4B's model_index, else a -base- one's). 16-px
    multiples: the VAE downsamples 8x as the real one does and the latents are patchified 2x2."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    tokenizer = qwen3_tokenizer()
    torch.manual_seed(seed)
    hidden = 16
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32,
        num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        max_position_embeddings=1024, tie_word_embeddings=True, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    latent_channels = 4
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=4, sample_size=64)
    # batch-norm statistics as a trained VAE has them (not the identity a fresh one holds),
    # so the normalisation of the latents is exercised
    vae.bn.running_mean.copy_(torch.randn(4 * latent_channels) * 0.5)
    vae.bn.running_var.copy_(torch.rand(4 * latent_channels) + 0.5)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * hidden,
        timestep_guidance_channels=32, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
        rope_theta=2000, eps=1e-6, guidance_embeds=False)
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                              text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=distilled)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
