"""A tiny random Qwen-Image-Edit editor, built offline (its tokenizer built in code).

The real Qwen-Image-Edit-2509/2511 is a QwenImageEditPlusPipeline of a Qwen-Image transformer
(60 dual-stream blocks over 2x2-packed 16-channel latents, 3-axis rotary positions, and for 2511
a zero timestep for the image-to-edit tokens), the Qwen-Image VAE (a causal 3-D VAE with a frame
axis, 8x down, latents normalised by per-channel mean and std), Qwen2.5-VL-7B as the text encoder
(its vision tower reads the image to edit), Qwen's byte-level BPE tokenizer, a Qwen2-VL processor
and Qwen-Image's dynamically shifted flow-matching scheduler. The tiny one keeps all of that at
widths of 16 to 32, with the real VAE's latent statistics and scheduler config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Qwen/Qwen-Image-Edit-2509's scheduler_config.json (Qwen-Image's: an exponential shift set by
# the image's token count, and a terminal sigma of 0.02)
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True,
                 base_shift=0.5, max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192,
                 shift_terminal=0.02, time_shift_type="exponential", invert_sigmas=False,
                 stochastic_sampling=False, use_karras_sigmas=False,
                 use_exponential_sigmas=False, use_beta_sigmas=False)
# the real VAE's per-channel latent statistics (its config's latents_mean and latents_std)
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
               2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]
# the pipeline's prompt template without the instruction: the tokenizer learns its words so it
# splits them as Qwen's does, and the 64 tokens the pipeline drops are this system prefix
TEMPLATE_LINES = [
    "system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify "
    "the image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate.", "user\n", "assistant\n",
    "Picture 1: Picture 2: Picture 3: "]


def qwen_vl_tokenizer(count: int = 700) -> Any:
    """Qwen2.5-VL's tokenizer (`build_qwen_tokenizer`), its merges learnt from the pipeline's
    template lines first (each often, so its pieces are merged whole as Qwen's are) and then
    editkit's word list."""
    from editkit.models.tiny import build_qwen_tokenizer

    return build_qwen_tokenizer(TEMPLATE_LINES * 8, count)


def qwen_vl_encoder(tokenizer: Any, hidden: int = 32) -> Any:
    """A Qwen2.5-VL with a vision tower (window attention in one block, full in the other, 2x2
    patch merging into the text width), grouped-query attention and multimodal rotary sections,
    its vision token ids those of `tokenizer`."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=1024, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                             "mrope_section": [2, 3, 3]},
            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2,
                           out_hidden_size=hidden, fullatt_block_indexes=[1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        vision_token_id=ids("<|vision_pad|>"), tie_word_embeddings=False)
    return Qwen2_5_VLForConditionalGeneration(config)


def build(path: str | Path, seed: int = 0, plus: bool = True) -> Path:
    """A QwenImageEditPlusPipeline folder with every part of the real model (2511's zero
    timestep for the image to edit included) at a tiny size; `plus=False`: the first
    Qwen-Image-Edit's QwenImageEditPipeline. Sides are multiples of 16 (the VAE downsamples 8x
    as the real one does, then 2x2 packing); the pipelines encode the image to edit at about a
    megapixel whatever the output size, which is most of a tiny edit's time (about a second
    on a CPU core)."""
    import diffusers
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from editkit.models.qwen_image_edit import processor_class

    path = Path(path)
    tokenizer = qwen_vl_tokenizer()
    torch.manual_seed(seed)
    text_encoder = qwen_vl_encoder(tokenizer)
    # Qwen2.5-VL's preprocessor_config.json: CLIP's mean and std, 14-px patches merged 2x2
    images = Qwen2VLImageProcessorPil(
        min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2,
        merge_size=2, image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711])
    processor = processor_class()(image_processor=images, tokenizer=tokenizer)
    # narrow, and no residual blocks on the way down: the pipelines encode a megapixel image
    vae = AutoencoderKLQwenImage(
        base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=0,
        temperal_downsample=[False, True, True], latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6), zero_cond_t=plus)
    editor = "QwenImageEditPlusPipeline" if plus else "QwenImageEditPipeline"
    pipe = getattr(diffusers, editor)(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, processor=processor,
        transformer=transformer)
    pipe.save_pretrained(path, safe_serialization=True)
    _name_processor(path, "Qwen2VLProcessor")
    return path


def _name_processor(path: Path, name: str) -> None:
    """The real processor class named where the pipeline was saved with editkit's (see
    `editkit.models.qwen_image_edit.processor_class`)."""
    index = json.loads((path / "model_index.json").read_text())
    index["processor"] = ["transformers", name]
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for file in ("processor_config.json", "tokenizer_config.json"):
        config = json.loads((path / "processor" / file).read_text())
        config["processor_class"] = name
        (path / "processor" / file).write_text(json.dumps(config, indent=2, sort_keys=True))
