"""A tiny random FLUX.1 Kontext editor, built offline (its tokenizers built in code)."""

from __future__ import annotations

import json
import string
from pathlib import Path

from editkit.models.tiny import CORPUS, _text_config, build_tiny_tokenizer

# black-forest-labs/FLUX.1-Kontext-dev's scheduler config: the resolution-dependent shift is
# what the pipeline's `mu` feeds, so a tiny model must have it to denoise on the same schedule
SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                 base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                 max_image_seq_len=4096)


def build_t5_tokenizer(path: str | Path, words: list[str] | None = None) -> Path:
    """A T5 tokenizer (a SentencePiece-style Unigram with T5's <pad>=0, </s>=1, <unk>=2 and
    100 sentinels) whose pieces are whole words of a small list and single characters, so
    instructions tokenise into words without a SentencePiece model file."""
    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if not c.isspace()]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    pieces += [("▁" + w, -6.0) for w in dict.fromkeys(words or CORPUS)]
    pieces += [("▁" + c, -9.0) for c in chars] + [(c, -10.0) for c in chars]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=100, model_max_length=512)
    tokenizer.save_pretrained(path)
    return Path(path)


def build(path: str | Path, seed: int = 0) -> Path:
    """A FluxKontextPipeline folder with every part of the real model at a tiny size: a
    guidance-embedded FLUX transformer over 2x2-packed 16-channel latents, a VAE with FLUX's
    shift and scale and an 8x reduction, CLIP (pooled) and T5 (hidden states) text encoders."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    path = Path(path)
    torch.manual_seed(seed)
    build_tiny_tokenizer(path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(len(tokenizer))))
    build_t5_tokenizer(path / "tokenizer_2")
    tokenizer_2 = T5TokenizerFast.from_pretrained(path / "tokenizer_2")
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
        tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
        force_upcast=True)
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(path, safe_serialization=True)
    # the real model_index.json names the tokenizer class T5TokenizerFast (transformers 5
    # calls the same class T5Tokenizer when saving)
    index = json.loads((path / "model_index.json").read_text())
    index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path
