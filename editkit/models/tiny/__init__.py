"""Build tiny, randomly initialised models and save them like hub checkpoints.

Sizes are chosen so a 32x32 image renders in a few milliseconds per step on a CPU while
keeping every architectural feature the real models have (cross-attention at two
resolutions, 4- and 8-channel UNets, a VAE with a scaling factor, a BPE tokenizer with
CLIP's special tokens and 77-token limit).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

# Words the tiny tokenizer learns merges for, so common captions tokenise into whole words.
CORPUS = """
a an the of and with in on at by to for from into is are photo picture image view street
road house houses car cars tree trees bicycle bench lamp post sky cloud clouds sun snow rain
fog night day morning evening summer winter autumn spring red blue green yellow white black
orange purple brown wooden modern old new small large big tall room sofa chair table bed lamp
window door wall floor rug plant painting kitchen living bedroom bathroom dog cat person people
circle square triangle shape shapes background make turn paint add remove replace change
swap put take away get rid it them this that there quiet busy park sea city sidewalk building
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def _learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    vocab = Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in words if w)
    merges: list[tuple[str, str]] = []
    for _ in range(count):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, freq in vocab.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, freq in vocab.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        vocab = merged
    return merges


def build_tiny_tokenizer(path: str | Path, words: list[str] | None = None) -> Path:
    """A CLIP BPE tokenizer (vocab.json + merges.txt) learnt from a small word list."""
    from transformers import CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges = _learn_merges(words or CORPUS, 400)
    for a, b in merges:
        token = a + b
        if token not in vocab_list:
            vocab_list.append(token)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"),
                              model_max_length=77, pad_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    return path


# Qwen's added tokens in the real vocabularies' order (Qwen2.5 and Qwen3 alike): the special
# ones, then those decoded as text (Qwen3 adds <tool_response>, </tool_response>, <think> and
# </think> after them)
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>")
QWEN_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
              "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")


def build_qwen_tokenizer(texts: list[str], count: int, added: tuple[str, ...] = QWEN_ADDED
                         ) -> Any:
    """Qwen's tokenizer class with a byte-level BPE of `count` merges learnt (by the
    `tokenizers` library, on Qwen's own pre-tokenizer split) from `texts` first, then the word
    list; then Qwen's special tokens and `added`: <|endoftext|> pads, <|im_end|> ends."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = Qwen2Tokenizer()._tokenizer.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + count, initial_alphabet=alphabet,
                                  min_frequency=1, show_progress=False)
    learner.train_from_iterator([*texts, " ".join(CORPUS), *CORPUS], trainer=trainer)
    vocab = dict(sorted(learner.get_vocab().items(), key=lambda item: item[1]))
    for token in (*QWEN_SPECIAL, *added):
        vocab[token] = len(vocab)
    merges = [tuple(pair) for pair in json.loads(learner.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", unk_token=None,
                               model_max_length=131072, errors="replace",
                               additional_special_tokens=list(QWEN_SPECIAL))
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tokenizer


def _text_config(vocab_size: int, hidden: int = 32) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=37,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                projection_dim=hidden, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                pad_token_id=vocab_size - 1)


def build_tiny_sd(path: str | Path, in_channels: int = 4, prediction_type: str = "epsilon",
                  sample_size: int = 16, seed: int = 0, sd2: bool = False) -> Path:
    """A Stable Diffusion pipeline folder (in_channels=8 makes an InstructPix2Pix UNet).

    `sd2=True` uses the SD 2.x UNet layout: linear projections in the transformer blocks,
    per-block head sizes and upcast attention (pair it with v-prediction)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    torch.manual_seed(seed)
    build_tiny_tokenizer(path / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(len(tokenizer))))
    unet = UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        **(dict(attention_head_dim=(4, 8), use_linear_projection=True, upcast_attention=True)
           if sd2 else dict(attention_head_dim=8)),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32,
        sample_size=sample_size * 2,
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    if in_channels == 8:
        from diffusers import StableDiffusionInstructPix2PixPipeline as Pipeline
    else:
        from diffusers import StableDiffusionPipeline as Pipeline
    pipe = Pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                    scheduler=scheduler, safety_checker=None, feature_extractor=None,
                    requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_ip2p(path: str | Path, seed: int = 0) -> Path:
    return build_tiny_sd(path, in_channels=8, seed=seed)


def build_tiny_sdxl(path: str | Path, in_channels: int = 4, seed: int = 0) -> Path:
    """An SDXL pipeline folder (in_channels=8: an SDXL InstructPix2Pix editor): two CLIP text
    encoders (the second with a projection, whose pooled embedding and the size/crop time ids
    feed the UNet's added embedding), a UNet with SDXL's text_time embedding, linear
    projections and two transformer layers at the lower level, a VAE that downsamples 8x as
    the real one does, and SDXL's Euler scheduler. 64 px images make 8x8 latents."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    path = Path(path)
    torch.manual_seed(seed)
    build_tiny_tokenizer(path / "tokenizer")
    build_tiny_tokenizer(path / "tokenizer_2")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(path / "tokenizer_2")
    text_encoder = CLIPTextModel(CLIPTextConfig(**_text_config(len(tokenizer))))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_text_config(len(tokenizer_2))))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4,
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(4, 8), use_linear_projection=True,
        transformer_layers_per_block=(1, 2), cross_attention_dim=64,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=32 + 6 * time_dim)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64, scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    if in_channels == 8:
        from diffusers import StableDiffusionXLInstructPix2PixPipeline as Pipeline
    else:
        from diffusers import StableDiffusionXLPipeline as Pipeline
    pipe = Pipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                    tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet,
                    scheduler=scheduler, force_zeros_for_empty_prompt=True,
                    add_watermarker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_clip(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A CLIPModel with its processor (tokenizer + PIL image processor)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    path = Path(path)
    torch.manual_seed(seed)
    build_tiny_tokenizer(path)
    tokenizer = CLIPTokenizer.from_pretrained(path)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, image_size=image_size, patch_size=8, projection_dim=32)
    config = CLIPConfig(text_config=_text_config(len(tokenizer)), vision_config=vision,
                        projection_dim=32)
    CLIPModel(config).save_pretrained(path, safe_serialization=True)
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                   crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def build_tiny_dinov2(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A Dinov2Model with its (PIL) image processor."""
    import torch
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    path = Path(path)
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          mlp_ratio=2, image_size=image_size, patch_size=8)
    Dinov2Model(config).save_pretrained(path, safe_serialization=True)
    BitImageProcessorPil(size={"shortest_edge": image_size},
                         crop_size={"height": image_size, "width": image_size},
                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                         do_convert_rgb=True).save_pretrained(path)
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "tiny-sd": build_tiny_sd,
    "tiny-sd-v": lambda p: build_tiny_sd(p, prediction_type="v_prediction"),
    "tiny-sd2": lambda p: build_tiny_sd(p, prediction_type="v_prediction", sd2=True),
    "tiny-ip2p": build_tiny_ip2p,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-sdxl-ip2p": lambda p: build_tiny_sdxl(p, in_channels=8),
    "tiny-clip": build_tiny_clip,
    "tiny-dinov2": build_tiny_dinov2,
    "tiny-flux-kontext": lambda p: _flow_builder("flux_kontext")(p),
    "tiny-flux2-klein": lambda p: _flow_builder("flux2_klein")(p),
    "tiny-qwen-image-edit": lambda p: _flow_builder("qwen_image_edit")(p),
}


def _flow_builder(module: str) -> Callable[[Path], Path]:
    """The builder of a flow editor's tiny model (its own module: they import more)."""
    import importlib

    return importlib.import_module(f"editkit.models.tiny.{module}").build


def models_home() -> Path:
    root = os.environ.get("EDITKIT_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "editkit")
    return Path(root) / "models"


def tiny_model(name: str) -> Path:
    """The folder of built-in tiny model `name`, built once and cached under EDITKIT_HOME."""
    import fcntl

    if name not in BUILDERS:
        raise KeyError(name)
    home = models_home()
    target = home / name
    if (target / ".complete").exists():
        return target
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes building one model take turns
        if (target / ".complete").exists():
            return target
        staging = Path(tempfile.mkdtemp(dir=home, prefix=f".{name}."))
        try:
            BUILDERS[name](staging)
            (staging / ".complete").write_text("ok\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def sharpen_attention(unet: "object", gain: float = 8.0) -> "object":
    """Scale every attention layer's query and key weights by `gain` (in place).

    Random initial weights give near-uniform attention, so attention control has almost
    nothing to act on; sharpened maps behave like a trained model's for control tests.
    """
    import torch

    with torch.no_grad():
        for name, module in unet.named_modules():  # type: ignore[attr-defined]
            if name.endswith(("attn1", "attn2")):
                module.to_q.weight.mul_(gain)
                module.to_k.weight.mul_(gain)
    return unet
