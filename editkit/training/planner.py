"""The memory planner of the flow editors: GPU memory and host RAM of a LoRA run on FLUX.1
Kontext, FLUX.2 klein or Qwen-Image-Edit, from the model's configs alone (no weights read).

The transformer, text encoder(s) and VAE are built on the meta device from their config.json
files (a local folder, the Hugging Face cache, or the real configs shipped below), so every
parameter count is exact; the LoRA's layers are those peft matches (`LoraConfig`'s suffix rule,
peft's own function) among the transformer's `nn.Linear` layers, r x (in + out) each.

GPU memory is the larger of two phases, plus `CUDA_OVERHEAD`:

- the caching pass (cache_latents / cache_text): the text encoder(s) and the VAE in the weight
  dtype, and the larger of one VAE encode at the resolution and one prompt through the text
  encoders. The transformer is not on the GPU yet (the trainer caches before it moves it);
- training: the transformer (nf4: 0.5 B a weight + one 8-bit scale per 64 + one fp32 scale per
  256 scales + code tables, as bitsandbytes stores them (`quantize.quantized_bytes`); int8: 1 B
  + one fp32 scale per row; else the weight dtype), the layers `quantize` keeps in the compute
  dtype, the LoRA in fp32 with its fp32 gradients, optimizer state (adamw 8 B a parameter;
  adamw8bit 2 B + one fp32 scale per 256 for tensors of at least min_8bit_size, 8 B below),
  an fp32 EMA (unless on the CPU), the VAE (kept for validation edits), the text encoders when
  their outputs are not cached, and the activations of a step.

Activations are counted from the block code of diffusers (`_BLOCKS`): per token, the tensors
autograd saves for the backward pass with a frozen base and a LoRA, under autocast on a GPU
(layer norms run in fp32 there; on a CPU in the compute dtype):

- a LayerNorm saves its input (fp32 under CUDA autocast) and two statistics a token;
- an RMSNorm over the heads (query and key) saves an fp32 copy of its input and one statistic a
  head (diffusers' own RMSNorm, in Qwen-Image, also the 16-bit input);
- attention through SDPA (flash or memory-efficient kernels) saves q, k, v, the output and the
  log-sum-exp a head and token, never the tokens x tokens score matrix;
- the MLP saves its hidden activation's input (GELU) or, for FLUX.2's SwiGLU, the fused
  projection's output and the gate's output;
- a frozen layer saves nothing (its weight is a parameter), but a LoRA layer saves its input
  for lora_A's gradient: a 16-bit copy per layer when the input is fp32 or when peft upcasts a
  16-bit input to the fp32 LoRA and autocast casts it back; peft's bitsandbytes LoRA layers
  skip that upcast under CUDA autocast, so on a quantized base the input itself is saved, once
  for all layers that share it, and nothing when it is the attention output SDPA saves anyway.
  lora_B saves its rank-wide input; autocast keeps a 16-bit copy of the LoRA weights.

Without gradient checkpointing every block's saved tensors are alive at the end of the forward
pass; with it (diffusers' non-reentrant checkpoint per block) only each block's inputs are, plus
one block's recomputed tensors during its backward. On top comes the backward pass's working
memory: `WORKSPACE` x (the largest block's saved bytes), calibrated on the CPU against the peak
of real steps. Tokens a training example: the image's (resolution² / (VAE scale x patch)²), as
many for the image to edit, and the text's (the pipelines' max_sequence_length, 512; for
Qwen-Image-Edit an upper bound: its instruction plus the condition image's vision tokens).

Host RAM: the largest part as loaded on the CPU before it is quantized or moved (the weight
dtype), the caches kept in memory (latents of both images, mirrored too when random_flip is on,
and the text embeddings, all fp32), and an EMA kept on the CPU.

The estimate is a plan, not a promise: the GPU benchmark (`benchmarks/train.py --model
kontext-sized ...`) prints CUDA's max allocated beside it.

Shipped configs (`SHIPPED`), the fields that set shapes, the others at their class defaults as in
the real files:
- FLUX.1-Kontext-dev (black-forest-labs/FLUX.1-Kontext-dev): FLUX.1-dev's architecture (BFL's
  flux repository, src/flux/util.py, gives `flux-dev-kontext` flux-dev's params: hidden 3072,
  24 heads, 19 double and 38 single blocks, context 4096, vec 768, axes 16/56/56, guidance
  embedding), in diffusers' names as FLUX.1-dev's transformer/config.json has them; the text
  encoders and VAE are FLUX.1-dev's: CLIP ViT-L/14's text config
  (openai/clip-vit-large-patch14: 768 wide, 12 layers, 12 heads, 3072 MLP, vocab 49408, 77
  positions); T5 v1.1 XXL encoder (google/t5-v1_1-xxl, FLUX's text_encoder_2: d_model 4096,
  d_ff 10240, d_kv 64, 64 heads, 24 layers, vocab 32128, gated-gelu); the FLUX VAE (128, 256,
  512, 512 channels, 2 layers a block, 16 latent channels, no quant convs).
- FLUX.2-klein-4B and -9B: transformer configs from diffusers' scripts/convert_flux2_to_diffusers.py
  (klein-4b: 24 heads, 5 double + 20 single blocks, joint_attention_dim 7680; klein-9b: 32
  heads, 8 + 24, 12288), matching the published transformer/config.json; text encoders
  Qwen3-4B and Qwen3-8B (Qwen3ForCausalLM config.json: 2560/4096 wide, 36 layers, 32 heads,
  8 KV heads, head_dim 128, MLP 9728/12288, vocab 151936, tied embeddings for 4B only); VAE
  AutoencoderKLFlux2 as the conversion script builds it (its class defaults: 32 latent
  channels, 2x2 patches).
- Qwen-Image-Edit-2509: transformer as Qwen-Image-Edit's transformer/config.json is quoted in
  public code (60 blocks, 24 heads of 128, joint_attention_dim 3584, 64 in / 16 out channels,
  patch 2; the 2509 release has no zero_cond_t, 2511's has); text encoder
  Qwen2.5-VL-7B-Instruct's config.json (3584 wide, 28 layers, 28 heads, 4 KV heads, MLP
  18944, vocab 152064; vision tower 32 layers of 1280, MLP 3420, 16 heads, out 3584); VAE
  AutoencoderKLQwenImage (base 96, multipliers 1 2 4 4, 2 blocks, z 16).

Against the published sizes, the meta builds give: FLUX.1 Kontext dev transformer 11.90 B (12 B),
T5-XXL encoder 4.76 B (4.7 B), CLIP-L 123 M; klein 4B transformer 3.88 B, 9B 9.08 B (4B / 9B),
Qwen3-4B 4.02 B, Qwen3-8B 8.19 B; Qwen-Image transformer 20.43 B (20 B), Qwen2.5-VL-7B 8.29 B;
the FLUX.2 VAE 84,046,115 parameters, the count of the real checkpoint.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editkit.errors import ModelError
from editkit.training.memory import GIB, OPTIMIZER_BYTES, _gib, cpu_has_bf16, half_weights
from editkit.training.quantize import quantizable, quantized_bytes

# CUDA's context (about 0.5 GiB, outside torch's allocator) and the caching allocator's
# fragmentation reserve (about 0.5 GiB): what nvidia-smi shows beyond max_memory_allocated
CUDA_OVERHEAD = 1.0 * GIB
# the backward pass's working memory (gradients of a block's activations, a recomputed MLP
# activation) as a share of the largest block's saved bytes: calibrated on the CPU against the
# peak of real forward and backward passes of small FLUX.1, FLUX.2 and Qwen-Image transformers
# with a LoRA (0.2 to 0.6 there; tests/training/test_planner.py measures it again)
WORKSPACE = 0.5
TEXT_TOKENS = 512  # the pipelines' max_sequence_length
# peak of a VAE encode in no_grad, in tensors as large as its first level's output (channels
# x pixels), measured with a live-tensor tracker on these classes: the FLUX encoders hold 5,
# Qwen-Image's causal 3D one keeps each convolution's input for the next frame, about 10.5
VAE_ENCODE_TENSORS = {"AutoencoderKL": 5.0, "AutoencoderKLFlux2": 5.0,
                      "AutoencoderKLQwenImage": 10.5}
EIGHT_BIT_BLOCK = 256  # bitsandbytes' 8-bit optimizers: one fp32 scale per 256 values a state

_DIFFUSERS_PARTS = ("transformer", "vae")

SHIPPED: dict[str, dict[str, Any]] = {}


def _flux1_vae() -> dict[str, Any]:
    return {"_class_name": "AutoencoderKL", "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "in_channels": 3, "out_channels": 3,
            "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 32,
            "mid_block_add_attention": True, "sample_size": 1024, "scaling_factor": 0.3611,
            "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False}


def _flux2_transformer(heads: int, double: int, single: int, joint: int) -> dict[str, Any]:
    return {"_class_name": "Flux2Transformer2DModel", "attention_head_dim": 128,
            "axes_dims_rope": [32, 32, 32, 32], "eps": 1e-06, "guidance_embeds": False,
            "in_channels": 128, "joint_attention_dim": joint, "mlp_ratio": 3.0,
            "num_attention_heads": heads, "num_layers": double, "num_single_layers": single,
            "out_channels": None, "patch_size": 1, "rope_theta": 2000,
            "timestep_guidance_channels": 256}


def _qwen3(hidden: int, mlp: int, tied: bool) -> dict[str, Any]:
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 128,
            "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": mlp,
            "max_position_embeddings": 40960, "num_attention_heads": 32,
            "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
            "rope_theta": 1000000, "tie_word_embeddings": tied, "vocab_size": 151936}


SHIPPED["black-forest-labs/FLUX.1-Kontext-dev"] = {
    "_class_name": "FluxKontextPipeline",
    "transformer": ("diffusers", "FluxTransformer2DModel", {
        "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": True,
        "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24,
        "num_layers": 19, "num_single_layers": 38, "out_channels": None, "patch_size": 1,
        "pooled_projection_dim": 768}),
    "text_encoder": ("transformers", "CLIPTextModel", {
        "model_type": "clip_text_model", "hidden_act": "quick_gelu", "hidden_size": 768,
        "intermediate_size": 3072, "max_position_embeddings": 77, "num_attention_heads": 12,
        "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408,
        "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}),
    "text_encoder_2": ("transformers", "T5EncoderModel", {
        "model_type": "t5", "d_ff": 10240, "d_kv": 64, "d_model": 4096,
        "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu", "is_gated_act": True,
        "num_heads": 64, "num_layers": 24, "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
        "vocab_size": 32128}),
    "vae": ("diffusers", "AutoencoderKL", _flux1_vae()),
}
SHIPPED["black-forest-labs/FLUX.2-klein-4B"] = {
    "_class_name": "Flux2KleinPipeline",
    "transformer": ("diffusers", "Flux2Transformer2DModel", _flux2_transformer(24, 5, 20, 7680)),
    "text_encoder": ("transformers", "Qwen3ForCausalLM", _qwen3(2560, 9728, True)),
    "vae": ("diffusers", "AutoencoderKLFlux2", {"latent_channels": 32, "patch_size": [2, 2]}),
}
SHIPPED["black-forest-labs/FLUX.2-klein-9B"] = {
    **SHIPPED["black-forest-labs/FLUX.2-klein-4B"],
    "transformer": ("diffusers", "Flux2Transformer2DModel",
                    _flux2_transformer(32, 8, 24, 12288)),
    "text_encoder": ("transformers", "Qwen3ForCausalLM", _qwen3(4096, 12288, False)),
}
SHIPPED["Qwen/Qwen-Image-Edit-2509"] = {
    "_class_name": "QwenImageEditPlusPipeline",
    "transformer": ("diffusers", "QwenImageTransformer2DModel", {
        "attention_head_dim": 128, "axes_dims_rope": [16, 56, 56], "guidance_embeds": False,
        "in_channels": 64, "joint_attention_dim": 3584, "num_attention_heads": 24,
        "num_layers": 60, "out_channels": 16, "patch_size": 2}),
    "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration", {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944,
        "max_position_embeddings": 128000, "num_attention_heads": 28,
        "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default",
                         "type": "default"},
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "vocab_size": 152064,
        "vision_config": {
            "depth": 32, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu",
            "hidden_size": 1280, "in_channels": 3, "intermediate_size": 3420,
            "model_type": "qwen2_5_vl", "num_heads": 16, "out_hidden_size": 3584,
            "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112}}),
    "vae": ("diffusers", "AutoencoderKLQwenImage", {
        "attn_scales": [], "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
        "num_res_blocks": 2, "temperal_downsample": [False, True, True], "z_dim": 16}),
}


# --- the model, from its configs ---------------------------------------------------------

@dataclass
class TextPart:
    name: str
    cls: str
    params: int
    per_token: int  # activation elements of one prompt through it, a token
    per_token_pair: int  # and a pair of tokens (explicit attention scores)


@dataclass
class FlowModel:
    """What the planner knows of one editor: exact sizes from its configs."""

    ref: str
    source: str  # where the configs came from
    title: str  # the family's title
    transformer_class: str
    transformer_params: int
    linears: dict[str, tuple[int, int, bool]]  # nn.Linear name -> (in, out, bias)
    quantizable: tuple[str, ...]  # what `quantize` replaces
    blocks: tuple[tuple[str, str], ...]  # (kind, name prefix) of each repeated block
    dims: dict[str, int]  # D (inner width), H (heads), head_dim, in_channels
    mlp: dict[str, int]  # per block kind: the MLP's hidden width
    text: tuple[TextPart, ...]
    vae_class: str
    vae_params: int
    vae_channels: int  # the first encoder level's channels
    pixels_per_token: int  # VAE scale x patch: one token covers this many pixels a side
    text_tokens: int
    pooled: int  # width of a pooled text embedding cached beside the hidden states (Kontext)
    text_reads_image: bool
    default_targets: tuple[str, ...]
    lora_cache: dict[tuple[str, ...], dict[str, tuple[int, int]]] = field(
        default_factory=dict, repr=False)

    def lora_layers(self, targets: list[str] | tuple[str, ...] | None
                    ) -> dict[str, tuple[int, int]]:
        """The linear layers a LoRA on `targets` wraps (None: the family's defaults), as peft
        matches target names, with their (in, out)."""
        key = tuple(targets or self.default_targets)
        if key not in self.lora_cache:
            from peft import LoraConfig
            from peft.tuners.tuners_utils import check_target_module_exists

            config = LoraConfig(r=1, target_modules=list(key))
            self.lora_cache[key] = {name: (fan_in, fan_out)
                                    for name, (fan_in, fan_out, _) in self.linears.items()
                                    if check_target_module_exists(config, name)}
            if not self.lora_cache[key]:
                raise ModelError(f"target_modules {list(key)} match no linear layer of the "
                                 f"{self.title} transformer",
                                 "name layers by suffix as peft does, e.g. attn.to_q")
        return self.lora_cache[key]


def flow_model(ref: str | Path) -> FlowModel:
    """The planner's model of `ref`: a local folder (or built-in), a hub id in the Hugging Face
    cache, or one of the SHIPPED hub ids. Nothing is downloaded."""
    index, source = _configs(str(ref))
    return _built(str(ref), source, json.dumps(index, sort_keys=True, default=list))


def _configs(ref: str) -> tuple[dict[str, Any], str]:
    """(parts as name -> (library, class, config), where they came from)."""
    from editkit.models import _hub_cached_json, _read_json, resolve

    folder: Path | None = None
    if Path(ref).expanduser().is_dir():
        folder = Path(ref).expanduser()
    elif ref not in SHIPPED:
        try:
            resolved = resolve(ref)
        except ModelError:
            resolved = None
        if resolved is not None and resolved.source != "hub":
            folder = Path(resolved.location)
    if folder is not None:
        index = _read_json(folder / "model_index.json")
        if index is None:
            raise ModelError(f"'{ref}' has no model_index.json",
                             "give the folder of a diffusers pipeline")
        return _parts(index, lambda part: _read_json(folder / part / "config.json")), \
            f"configs in {folder}"
    index = _hub_cached_json(ref, "model_index.json")
    if index is not None:
        parts = _parts(index, lambda part: _hub_cached_json(ref, f"{part}/config.json"))
        if all(config for _, _, config in parts.values()):
            return parts, "configs in the Hugging Face cache"
    if ref in SHIPPED:
        return {k: v for k, v in SHIPPED[ref].items() if k != "_class_name"}, \
            "configs shipped with editkit"
    raise ModelError(f"no configs for '{ref}': not a local folder, not in the Hugging Face "
                     "cache and not one editkit ships",
                     f"download its configs (huggingface-cli download {ref} --include "
                     f"'*.json') or use one of: {', '.join(SHIPPED)}")


def _parts(index: dict[str, Any], read: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in index.items():
        if name in _DIFFUSERS_PARTS or name.startswith("text_encoder"):
            if isinstance(value, list) and len(value) == 2 and value[1]:
                out[name] = (value[0], value[1], read(name) or {})
    if "transformer" not in out or "vae" not in out:
        raise ModelError("the pipeline names no transformer and VAE",
                         "give a FLUX.1 Kontext, FLUX.2 klein or Qwen-Image-Edit pipeline")
    return out


@functools.lru_cache(maxsize=16)
def _built(ref: str, source: str, index_json: str) -> FlowModel:
    import torch

    from editkit.models.families import FAMILIES

    index = json.loads(index_json)
    with torch.device("meta"):
        modules = {name: _meta_module(library, cls, config)
                   for name, (library, cls, config) in index.items()}
    transformer = modules["transformer"]
    tcls = type(transformer).__name__
    family = next((f for f in FAMILIES.values()
                   if getattr(f, "transformer_class", None) == tcls), None)
    if family is None:
        raise ModelError(f"{tcls} is not a flow editor's transformer",
                         "plan memory for FLUX.1 Kontext, FLUX.2 klein or Qwen-Image-Edit")
    linears = {name: (m.in_features, m.out_features, m.bias is not None)
               for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    blocks = tuple((_BLOCK_KINDS[type(block).__name__], f"{lst}.{i}")
                   for lst in ("transformer_blocks", "single_transformer_blocks")
                   for i, block in enumerate(getattr(transformer, lst, ())))
    config = transformer.config
    D = config.num_attention_heads * config.attention_head_dim
    mlp = {kind: _mlp_width(kind, prefix, linears, D) for kind, prefix in blocks}
    vae = modules["vae"]
    text = tuple(_text_part(name, module) for name, module in modules.items()
                 if name.startswith("text_encoder"))
    return FlowModel(
        ref=ref, source=source, title=family.title, transformer_class=tcls,
        transformer_params=_count(transformer), linears=linears,
        quantizable=tuple(quantizable(transformer)), blocks=blocks,
        dims={"D": D, "H": config.num_attention_heads, "head_dim": config.attention_head_dim,
              "in_channels": config.in_channels},
        mlp=mlp, text=text, vae_class=type(vae).__name__, vae_params=_count(vae),
        vae_channels=_vae_channels(vae.config), pixels_per_token=_pixels_per_token(tcls, config,
                                                                                 vae.config),
        text_tokens=int(getattr(family, "max_sequence_length", TEXT_TOKENS)),
        pooled=768 if "text_encoder_2" in modules else 0,
        text_reads_image=bool(getattr(family, "text_reads_image", False)),
        default_targets=tuple(family.lora_targets))


def _meta_module(library: str, cls_name: str, config: dict[str, Any]) -> Any:
    import importlib

    try:
        cls = getattr(importlib.import_module(library), cls_name)
    except (ImportError, AttributeError):
        raise ModelError(f"{library} has no {cls_name}",
                         f"upgrade {library}, or plan for a model whose parts it knows") from None
    if library == "diffusers":
        return cls.from_config(config)
    return cls._from_config(cls.config_class.from_dict(config))


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _vae_channels(config: Any) -> int:
    return int(config.get("base_dim") or config["block_out_channels"][0])


def _pixels_per_token(tcls: str, config: Any, vae: Any) -> int:
    """Pixels a side one transformer token covers: the VAE's downscale times the packing."""
    if tcls == "QwenImageTransformer2DModel":
        return 2 ** len(vae["temperal_downsample"]) * config.patch_size
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    if tcls == "Flux2Transformer2DModel":  # the VAE patchifies 2x2, the transformer does not
        return scale * vae.get("patch_size", (2, 2))[0] * config.patch_size
    return scale * 2  # FLUX.1: the pipeline packs 2x2 latents into a token


def _text_part(name: str, module: Any) -> TextPart:
    """A text encoder's size and the activations of one prompt through it (no_grad): the
    hidden states the pipeline keeps (all layers' for Qwen's, which the pipelines read a few
    of), a few layer-wide tensors, the MLP's hidden, a causal LM's logits, and T5's explicit
    attention scores and position bias (the only one here without SDPA)."""
    cfg = module.config
    text = getattr(cfg, "text_config", None) or cfg
    hidden = getattr(text, "hidden_size", None) or text.d_model
    layers = getattr(text, "num_hidden_layers", None) or text.num_layers
    inner = getattr(text, "intermediate_size", None) or text.d_ff
    heads = getattr(text, "num_attention_heads", None) or text.num_heads
    kind = getattr(text, "model_type", "")
    keeps = layers + 1 if kind.startswith("qwen") else 2
    per_token = hidden * (keeps + 3) + 3 * inner
    cls = type(module).__name__
    if cls.endswith(("ForCausalLM", "ForConditionalGeneration")):
        per_token += text.vocab_size
    pairs = 4 * heads if kind == "t5" else 0  # scores, bias, softmax (in fp32)
    return TextPart(name, cls, _count(module), per_token, pairs)


# --- activations: what a block saves for the backward pass ------------------------------

_BLOCK_KINDS = {"FluxTransformerBlock": "flux-double",
                "FluxSingleTransformerBlock": "flux-single",
                "Flux2TransformerBlock": "flux2-double",
                "Flux2SingleTransformerBlock": "flux2-single",
                "QwenImageTransformerBlock": "qwen"}

_MLP_LAYER = {"flux-double": ("ff.net.0.proj", 1), "flux-single": ("proj_mlp", 1),
              "flux2-double": ("ff.linear_out", 0), "flux2-single": ("attn.to_out", 0),
              "qwen": ("img_mlp.net.0.proj", 1)}


def _mlp_width(kind: str, prefix: str, linears: dict[str, tuple[int, int, bool]],
               D: int) -> int:
    """The MLP's hidden width in a block (FLUX.2's single blocks: to_out reads the attention
    output and the MLP's side by side)."""
    layer, side = _MLP_LAYER[kind]
    width = linears[f"{prefix}.{layer}"][side]
    return width - D if kind == "flux2-single" else width


# A LoRA layer group: layers reading the same input, its width ("D", "M" or "D+M") and kind:
# "mod" a LayerNorm's modulated output (fp32 under CUDA autocast), "saved" a tensor the block
# saves anyway (the attention output), "fresh" one made for these layers only.
def _dual(img_mlp: tuple[str, str], txt_mlp: tuple[str, str]) -> dict[str, list[Any]]:
    """The LoRA groups of a double-stream block: each stream's q, k, v projections, attention
    output layer, MLP input and output layers (`*_mlp`: their names)."""
    return {"img": [(("attn.to_q", "attn.to_k", "attn.to_v"), "D", "mod"),
                    (("attn.to_out.0",), "D", "saved"), ((img_mlp[0],), "D", "mod"),
                    ((img_mlp[1],), "M", "fresh")],
            "txt": [(("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "D", "mod"),
                    (("attn.to_add_out",), "D", "saved"), ((txt_mlp[0],), "D", "mod"),
                    ((txt_mlp[1],), "M", "fresh")]}


# Per kind: "streams" (the image and text tokens apart, or "all" tokens together), the LoRA
# groups of each, and the saved bytes a token of each stream (`_fixed`).
_BLOCKS: dict[str, dict[str, Any]] = {
    "flux-double": {"streams": _dual(("ff.net.0.proj", "ff.net.2"),
                                     ("ff_context.net.0.proj", "ff_context.net.2")),
                    "ln": 2, "rms": "torch", "mlp": "gelu"},
    "flux2-double": {"streams": _dual(("ff.linear_in", "ff.linear_out"),
                                      ("ff_context.linear_in", "ff_context.linear_out")),
                     "ln": 2, "rms": "torch", "mlp": "swiglu"},
    "qwen": {"streams": _dual(("img_mlp.net.0.proj", "img_mlp.net.2"),
                              ("txt_mlp.net.0.proj", "txt_mlp.net.2")),
             "ln": 2, "rms": "diffusers", "mlp": "gelu"},
    "flux-single": {"streams": {"all": [
        (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "D", "mod"),
        (("proj_out",), "D+M", "fresh")]}, "ln": 1, "rms": "torch", "mlp": "gelu"},
    "flux2-single": {"streams": {"all": [
        (("attn.to_qkv_mlp_proj",), "D", "mod"), (("attn.to_out",), "D+M", "fresh")]},
        "ln": 1, "rms": "torch", "mlp": "parallel"},
}


@dataclass(frozen=True)
class Policy:
    """How a step stores its activations."""

    act: int  # bytes of an activation: the compute dtype
    ln: int  # bytes a LayerNorm saves its input in (fp32 under CUDA autocast)
    autocast: bool
    # peft's bitsandbytes LoRA layers feed lora_A their input as it is: under CUDA autocast
    # (their test is torch.is_autocast_enabled(), CUDA's), not under the CPU's
    shared_input: bool
    rank: int


def policy(options: Any, cpu: bool = False) -> Policy:
    half = options.mixed_precision in ("fp16", "bf16") and (
        not cpu or options.mixed_precision != "bf16" or cpu_has_bf16())
    act = 2 if half else 4
    return Policy(act=act, ln=4 if half and not cpu else act, autocast=half,
                  shared_input=half and not cpu and getattr(options, "quantize", "none") != "none",
                  rank=options.rank)


def _lora_group_bytes(count: int, width: int, kind: str, p: Policy) -> float:
    """Bytes a token that `count` LoRA layers reading one input save for lora_A and lora_B."""
    if count == 0:
        return 0
    lora_b = count * p.rank * p.act
    if not p.autocast:  # fp32: lora_A saves the input itself, once
        return lora_b + (0 if kind == "saved" else p.act * width)
    if (kind == "mod" and p.ln == 4) or not p.shared_input:  # a 16-bit copy per layer
        return lora_b + count * p.act * width
    return lora_b + (0 if kind == "saved" else p.act * width)


def _fixed(kind: str, D: int, M: int, H: int, p: Policy) -> tuple[float, float]:
    """(bytes a token of each stream, bytes a token of the joint attention) a block saves
    besides its LoRA layers."""
    spec = _BLOCKS[kind]
    ln = spec["ln"] * (p.ln * D + 2 * p.ln)
    rms = 2 * (4 * D + 4 * H) + (2 * p.act * D if spec["rms"] == "diffusers" else 0)
    mlp = {"gelu": p.act * M, "swiglu": 3 * p.act * M,
           "parallel": p.act * (3 * D + 2 * M) + p.act * M}[spec["mlp"]]
    attention = (3 if spec["mlp"] == "parallel" else 4) * p.act * D + 4 * H
    return ln + rms + mlp, attention


def block_saved(kind: str, prefix: str, dims: dict[str, int], M: int, tokens: tuple[int, int],
                lora: set[str] | dict[str, Any], p: Policy) -> float:
    """Bytes one block saves for the backward pass, for (image, text) tokens of a batch."""
    D, H = dims["D"], dims["H"]
    n_img, n_txt = tokens
    per_stream, attention = _fixed(kind, D, M, H, p)
    total = attention * (n_img + n_txt)
    widths = {"D": D, "M": M, "D+M": D + M}
    for stream, groups in _BLOCKS[kind]["streams"].items():
        n = {"img": n_img, "txt": n_txt, "all": n_img + n_txt}[stream]
        total += per_stream * n
        for names, width, input_kind in groups:
            count = sum(f"{prefix}.{name}" in lora for name in names)
            total += _lora_group_bytes(count, widths[width], input_kind, p) * n
    return total


def activations(model: FlowModel, options: Any, p: Policy, lora: dict[str, Any]) -> float:
    """Peak bytes of a training step's activations (forward and backward) at a batch."""
    side = options.resolution // model.pixels_per_token
    image = side * side * options.batch_size
    n_img, n_txt = 2 * image, model.text_tokens * options.batch_size
    D = model.dims["D"]
    saved = [block_saved(kind, prefix, model.dims, model.mlp[kind], (n_img, n_txt), lora, p)
             for kind, prefix in model.blocks]
    largest = max(saved)
    if options.gradient_checkpointing:
        body = len(saved) * (n_img + n_txt) * p.act * D + largest
    else:
        body = sum(saved)
    rope = (n_img + n_txt) * model.dims["head_dim"] * 8 // options.batch_size
    head = n_img * (p.ln * D + 2 * p.ln) + image * model.dims["in_channels"] * 4 * 4
    casts = sum(fan_in + fan_out for fan_in, fan_out in lora.values()) * p.rank * p.act \
        if p.autocast else 0
    return body + WORKSPACE * largest + rope + head + casts


# --- the plan ------------------------------------------------------------------------------

@dataclass
class Plan:
    model: FlowModel
    options: Any
    training: dict[str, float]  # GPU parts while training
    caching: dict[str, float]  # GPU parts of the caching pass (empty without one)
    host: dict[str, float]
    lora_params: int
    pairs: int | None

    @property
    def total(self) -> float:
        """Peak GPU bytes: the larger phase plus CUDA's context and the allocator's reserve."""
        return CUDA_OVERHEAD + max(sum(self.training.values()), sum(self.caching.values()))

    @property
    def host_total(self) -> float:
        return sum(self.host.values())

    def parts(self) -> dict[str, float]:
        """The peak in `editkit.training.memory.estimate`'s parts (weights, gradients,
        optimizer, ema, activations, total) for the run's log and manifest; "caching pass" is
        what that pass needs beyond training, when it needs more, so the parts add up."""
        t = self.training
        weights = sum(v for k, v in t.items() if k not in ("gradients", "optimizer", "ema",
                                                           "activations"))
        out = {"weights": weights, "gradients": t["gradients"], "optimizer": t["optimizer"],
               "ema": t["ema"], "activations": t["activations"],
               "caching pass": max(0.0, sum(self.caching.values()) - sum(t.values())),
               "overhead": CUDA_OVERHEAD}
        out["total"] = self.total
        return out


def plan(model: FlowModel, options: Any, cpu: bool = False, pairs: int | None = None) -> Plan:
    """The memory plan of a LoRA run with `options` (the flow trainer's: resolution,
    batch_size, rank, target_modules, quantize, optimizer, mixed_precision,
    gradient_checkpointing, ema, ema_on_cpu, cache_latents, cache_text, min_8bit_size);
    `pairs`: training pairs, for the caches held in RAM."""
    p = policy(options, cpu)
    weight = 2 if half_weights(options.mixed_precision, cpu) else 4
    lora = model.lora_layers(getattr(options, "target_modules", None))
    tensors = [n * options.rank for fan_in, fan_out in lora.values() for n in (fan_in, fan_out)]
    lora_params = sum(tensors)
    quantize = getattr(options, "quantize", "none")
    cache_latents = getattr(options, "cache_latents", True)
    cache_text = getattr(options, "cache_text", True)
    text_weights = sum(t.params for t in model.text) * weight
    vae_weights = model.vae_params * weight
    training = {"transformer": _transformer_bytes(model, quantize, weight),
                "LoRA (fp32)": lora_params * 4, "gradients": lora_params * 4,
                "optimizer": sum(_optimizer_bytes(n, options) for n in tensors),
                "ema": lora_params * 4 if options.ema and not options.ema_on_cpu else 0,
                "VAE": vae_weights, "text encoders": 0 if cache_text else text_weights}
    steps = [activations(model, options, p, lora)]
    if not cache_latents:
        steps.append(2 * options.batch_size * _vae_encode(model, options.resolution, p.act))
    if not cache_text:
        steps.append(options.batch_size * _text_forward(model, p.act))
    training["activations"] = max(steps)
    caching: dict[str, float] = {}
    if cache_latents or cache_text:
        encode = [_vae_encode(model, options.resolution, p.act)] if cache_latents else [0]
        caching = {"text encoders": text_weights, "VAE": vae_weights,
                   "encoding": max(*encode, _text_forward(model, p.act) if cache_text else 0)}
    host = {"largest part loaded": max(
        [model.transformer_params * weight, vae_weights] + [t.params * weight
                                                            for t in model.text])}
    if pairs:
        host["caches"] = pairs * _cached_bytes(model, options)
    if options.ema and options.ema_on_cpu:
        host["EMA"] = lora_params * 4
    return Plan(model, options, training, caching, host, lora_params, pairs)


def _transformer_bytes(model: FlowModel, quantize: str, weight: int) -> float:
    if quantize == "none":
        return model.transformer_params * weight
    packed = 0
    dense = model.transformer_params
    for name in model.quantizable:
        fan_in, fan_out, bias = model.linears[name]
        packed += quantized_bytes(fan_in, fan_out, bias, quantize, weight)
        dense -= fan_in * fan_out + (fan_out if bias else 0)
    return packed + dense * weight


def _optimizer_bytes(numel: int, options: Any) -> float:
    if options.optimizer == "adamw" or numel < getattr(options, "min_8bit_size", 4096):
        return numel * OPTIMIZER_BYTES["adamw"]
    return numel * (OPTIMIZER_BYTES[options.optimizer] + 2 * 4 / EIGHT_BIT_BLOCK)


def _vae_encode(model: FlowModel, resolution: int, act: int) -> float:
    """Peak bytes of one image's VAE encode (no_grad), the image included."""
    pixels = resolution * resolution
    return (VAE_ENCODE_TENSORS.get(model.vae_class, 10.5) * model.vae_channels + 3) * pixels * act


def _text_forward(model: FlowModel, act: int) -> float:
    """Peak bytes of one prompt through the text encoder that needs most (no_grad)."""
    tokens = model.text_tokens
    return max((t.per_token * tokens + t.per_token_pair * tokens ** 2) * act
               for t in model.text)


def _cached_bytes(model: FlowModel, options: Any) -> float:
    """RAM the caches hold a training pair: fp32 latents of both images (mirrored too with
    random_flip) and the instruction's embeddings (per mirror when the text reads the image)."""
    flips = 2 if getattr(options, "random_flip", True) else 1
    side = options.resolution // model.pixels_per_token
    latents = 2 * flips * side * side * model.dims["in_channels"] * 4
    width = model.linears["context_embedder"][0] if "context_embedder" in model.linears \
        else model.linears["txt_in"][0]
    text = (model.text_tokens * width + model.pooled) * 4
    return latents + text * (flips if model.text_reads_image else 1)


# --- what is printed ------------------------------------------------------------------------

def describe(result: Plan) -> list[str]:
    """The plan as a table: GPU memory by part in each phase, host RAM, and the peak."""
    o, m = result.options, result.model
    side = o.resolution // m.pixels_per_token
    quantize = getattr(o, "quantize", "none")
    lines = [f"memory plan: {m.title} ({m.ref}, {m.source}), {o.resolution} px "
             f"({2 * side * side} image + {m.text_tokens} text tokens an example), batch "
             f"{o.batch_size}, LoRA rank {o.rank} ({result.lora_params / 1e6:.1f} M "
             f"parameters), {quantize if quantize != 'none' else 'bf16'} base, "
             f"{o.optimizer}, mixed precision {o.mixed_precision}, gradient checkpointing "
             f"{'on' if o.gradient_checkpointing else 'off'}",
             f"  {'part':<28}{'training GiB':>13}{'caching GiB':>13}"]
    names = list(dict.fromkeys([*result.training, *result.caching]))
    for name in names:
        t, c = result.training.get(name, 0), result.caching.get(name, 0)
        if t or c:
            lines.append(f"  {name:<28}{_cell(t):>13}{_cell(c):>13}")
    lines.append(f"  {'CUDA context + allocator':<28}{_cell(CUDA_OVERHEAD):>13}"
                 f"{_cell(CUDA_OVERHEAD if result.caching else 0):>13}")
    train = CUDA_OVERHEAD + sum(result.training.values())
    cache = CUDA_OVERHEAD + sum(result.caching.values()) if result.caching else 0
    lines.append(f"  {'total':<28}{_cell(train):>13}{_cell(cache):>13}")
    lines.append(f"  peak GPU {result.total / GIB:.2f} GiB; host RAM "
                 f"{result.host_total / GIB:.2f} GiB ("
                 + ", ".join(f"{k} {_gib(v)}" for k, v in result.host.items()) + ")")
    return lines


def _cell(value: float) -> str:
    return f"{value / GIB:.2f}" if value else "-"


def summary(parts: dict[str, float]) -> str:
    """One line, as `editkit.training.memory.describe` writes it."""
    shown = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items() if k != "total")
    return f"memory estimate: {_gib(parts['total'])} ({shown})"


def estimate(model: FlowModel, options: Any, cpu: bool = False) -> dict[str, float]:
    """`plan(...).parts()`: the signature of `editkit.training.memory.estimate`."""
    return plan(model, options, cpu).parts()


def fitting_changes(model: FlowModel, options: Any, available: float,
                    cpu: bool = False) -> list[str]:
    """Concrete option changes whose plan fits in `available` GPU bytes: each alone, then the
    fewest of them taken together in this order (quantize to nf4, 8-bit AdamW, gradient
    checkpointing, batch 1 with accumulation, caches, EMA on the CPU, bf16, resolution 768 then
    512, half the rank) that fits."""
    o = options
    candidates: list[dict[str, Any]] = []
    if getattr(o, "quantize", "none") != "nf4":
        candidates.append({"quantize": "nf4"})
    if o.optimizer == "adamw":
        candidates.append({"optimizer": "adamw8bit"})
    if not o.gradient_checkpointing:
        candidates.append({"gradient_checkpointing": True})
    if o.batch_size > 1:
        candidates.append({"batch_size": 1,
                           "gradient_accumulation": o.gradient_accumulation * o.batch_size})
    for cache in ("cache_text", "cache_latents"):
        if not getattr(o, cache, True):
            candidates.append({cache: True})
    if o.ema and not o.ema_on_cpu:
        candidates.append({"ema_on_cpu": True})
    if o.mixed_precision == "no" and (not cpu or cpu_has_bf16()):
        candidates.append({"mixed_precision": "bf16"})
    candidates += [{"resolution": r} for r in (768, 512) if o.resolution > r]
    if o.rank > 1:
        candidates.append({"rank": o.rank // 2})

    def total(change: dict[str, Any]) -> float:
        return plan(model, o.model_copy(update=change), cpu).total

    out = [f"{_change_text(c)} (about {_gib(t)})" for c in candidates
           if (t := total(c)) <= available]
    combined: dict[str, Any] = {}
    for i, change in enumerate(candidates):
        combined.update(change)
        if i and (t := total(combined)) <= available:
            out.append(f"{_change_text(combined)} (about {_gib(t)})")
            break
    caching = plan(model, o, cpu).caching
    if not out and CUDA_OVERHEAD + sum(caching.values()) > available:
        out.append(f"none: the caching pass alone needs about "
                   f"{_gib(CUDA_OVERHEAD + sum(caching.values()))} (the text encoders' "
                   f"{_gib(caching['text encoders'])}); cache on a larger GPU")
    return out


def _change_text(change: dict[str, Any]) -> str:
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in change.items())
