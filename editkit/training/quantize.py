"""The frozen transformer of a LoRA run held in 4 or 8 bits (QLoRA), with bitsandbytes.

`quantize` swaps the transformer's `nn.Linear` layers for bitsandbytes `Linear4bit` (nf4,
double quantisation: the per-64-weight scales are themselves stored in 8 bits, with one fp32
scale per 256 of them) or `Linear8bitLt` (int8 rows with an fp32 scale each, fp16 weights not
kept, the outlier threshold of diffusers' `BitsAndBytesConfig`). It goes layer by layer: each
weight is cast to the compute dtype, sent to the device and quantized there, and the original
layer is dropped, so the device never holds more than the quantized layers so far plus one
16-bit layer, and the copy on the CPU shrinks as it goes.

Only the layers inside the repeated blocks (the model's `nn.ModuleList` children:
`transformer_blocks`, `single_transformer_blocks`) are quantized, which hold over 99% of the
weights. What is outside them stays in the compute dtype: the input projections (FLUX
`x_embedder`, `context_embedder`; Qwen-Image `img_in`, `txt_in`), the timestep, guidance and
pooled-text embedders (`time_text_embed`, `time_guidance_embed`), FLUX.2's modulation shared by
all blocks (`double_stream_modulation_img`, `double_stream_modulation_txt`,
`single_stream_modulation`) and the output layers (`norm_out`, `proj_out`). Diffusers'
bitsandbytes quantizer, by default, converts every `nn.Linear`; its documentation advises
leaving `proj_out` out (`llm_int8_skip_modules`) for stability, and these few small layers see
every token or the timestep of every block, where 4-bit error costs most.

bitsandbytes 0.50 quantizes and runs both kinds on the CPU too (its CPU kernels), so the same
code path is tested without a GPU; diffusers' own `BitsAndBytesConfig` loading refuses without
one, which is why editkit quantizes a loaded model itself. A LoRA added afterwards
(`transformer.add_adapter(LoraConfig(...))`) wraps the quantized layers (peft's bitsandbytes
LoRA layers), and its state dict has the same keys as on the full-precision model, so the saved
LoRA loads on the unquantized pipeline. The module is marked as a bitsandbytes-loaded one is
(`is_quantized`, `is_loaded_in_4bit` / `is_loaded_in_8bit`): diffusers then refuses `.to(dtype)`,
which would cast the packed 4-bit bytes as if they were numbers, and peft uses its bitsandbytes
LoRA layers.
"""

from __future__ import annotations

from typing import Any

from editkit.errors import RunError

KINDS = ("nf4", "int8")
NF4_BLOCK = 64  # weights per absmax scale (bitsandbytes' 4-bit default)
NESTED_BLOCK = 256  # absmax scales per fp32 scale with double quantisation
INT8_THRESHOLD = 6.0  # diffusers' BitsAndBytesConfig llm_int8_threshold: outlier columns in fp16


def block_lists(module: Any) -> list[str]:
    """The names of `module`'s children that hold its repeated blocks (`nn.ModuleList`s)."""
    import torch

    return [name for name, child in module.named_children()
            if isinstance(child, torch.nn.ModuleList)]


def kept_layers(module: Any) -> list[str]:
    """The `nn.Linear` layers `quantize` leaves in the compute dtype by default: those outside
    the repeated blocks."""
    import torch

    inside = tuple(f"{name}." for name in block_lists(module))
    return [name for name, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.startswith(inside)]


def quantizable(module: Any, skip: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The `nn.Linear` layers `quantize(module, ..., skip=skip)` replaces: all but those named
    in `skip` (a name or the name of a module holding it); by default all but `kept_layers`."""
    import torch

    names = [name for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    if skip is None:
        kept = set(kept_layers(module))
        return [name for name in names if name not in kept]
    prefixes = tuple(s.rstrip(".") for s in skip)
    return [name for name in names
            if not any(name == p or name.startswith(p + ".") for p in prefixes)]


def quantize(module: Any, kind: str, compute_dtype: Any, device: Any,
             skip: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Replace `module`'s linear layers with bitsandbytes ones of `kind` ("nf4" or "int8") on
    `device`, computing in `compute_dtype`; every other weight goes to `device` in
    `compute_dtype`. Returns the names of the quantized layers."""
    import torch

    if kind not in KINDS:
        raise RunError(f"quantize: unknown kind '{kind}'", f"use one of: none, {', '.join(KINDS)}")
    if getattr(module, "is_quantized", False):  # bitsandbytes layers are nn.Linear too
        raise RunError(f"quantize: {type(module).__name__} is quantized already",
                       "quantize a model once, as loaded")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RunError(f"quantize: {kind} needs bitsandbytes ({e})",
                       "pip install bitsandbytes, or train with quantize: none") from None
    device = torch.device(device)
    names = quantizable(module, skip)
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        linear = getattr(owner, child)
        setattr(owner, child, _quantized_linear(linear, kind, compute_dtype, device))
        del linear
    done = set(names)
    for name, sub in module.named_modules():
        if name in done:
            continue
        for _, param in sub.named_parameters(recurse=False):
            param.data = _moved(param.data, device, compute_dtype)
        for key, buffer in sub.named_buffers(recurse=False):
            setattr(sub, key, _moved(buffer, device, compute_dtype))
    module.is_quantized = True  # diffusers refuses .to(dtype) on it, which would break it
    # what a bitsandbytes-loaded model says of itself: peft then wraps these layers in its
    # bitsandbytes LoRA layers (QLoRA's), which under autocast feed lora_A the layer's input
    # as it is instead of an fp32 copy
    setattr(module, "is_loaded_in_4bit" if kind == "nf4" else "is_loaded_in_8bit", True)
    return names


def _moved(tensor: Any, device: Any, dtype: Any) -> Any:
    return tensor.to(device, dtype if tensor.is_floating_point() else tensor.dtype)


def _quantized_linear(linear: Any, kind: str, compute_dtype: Any, device: Any) -> Any:
    """One bitsandbytes layer with `linear`'s weights, quantized on `device`."""
    import bitsandbytes as bnb
    import torch

    has_bias = linear.bias is not None
    weight = linear.weight.data.to(dtype=compute_dtype)
    if kind == "nf4":
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                  compute_dtype=compute_dtype, compress_statistics=True,
                                  quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True,
                                         quant_type="nf4", module=layer).to(device)
        # bitsandbytes repacks 4-bit weights for its AVX-512 CPU kernel on the first no-grad
        # call in eval mode: that fails on layers narrower than a block (tiny models) and
        # changes what the layer holds; the plain dequantizing path serves training and
        # validation alike
        layer.support_avx512bf16_for_cpu = False
    else:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False, threshold=INT8_THRESHOLD,
                                    device="meta")
        # Int8Params quantizes when it moves from the CPU
        layer.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False,
                                         has_fp16_weights=False).to(device)
    if has_bias:
        layer.bias = torch.nn.Parameter(linear.bias.data.to(device, compute_dtype),
                                        requires_grad=False)
    layer.requires_grad_(False)
    return layer


def quantized_bytes(fan_in: int, fan_out: int, bias: bool, kind: str, compute_bytes: int) -> int:
    """The bytes bitsandbytes holds for one quantized layer (packed weights, their scales and
    the code tables, the bias in the compute dtype): what `held_bytes` counts on a real one."""
    n = fan_in * fan_out
    extra = fan_out * compute_bytes if bias else 0
    if kind == "int8":
        return n + 4 * fan_out + extra  # int8 rows + one fp32 scale per row
    scales = -(-n // NF4_BLOCK)  # 8-bit absmax per block, after double quantisation
    nested = -(-scales // NESTED_BLOCK) * 4  # fp32 scale per 256 of them
    tables = 16 * 4 + 256 * 4 + 4  # nf4 code, the scales' dynamic code, their offset
    return -(-n // 2) + scales + nested + tables + extra


def held_bytes(module: Any) -> int:
    """Bytes of every tensor `module` holds (parameters, buffers and bitsandbytes' quantization
    state), each storage counted once."""
    storages: dict[tuple[str, int], int] = {}

    def add(tensor: Any) -> None:
        if tensor is None or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()

    for tensor in (*module.parameters(), *module.buffers()):
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        while state is not None:
            for name in ("absmax", "code", "offset"):
                add(getattr(state, name, None))
            state = getattr(state, "state2", None)
        add(getattr(tensor, "SCB", None))
    for sub in module.modules():  # int8 layers move their row scales here on the first call
        state = getattr(sub, "state", None)
        for name in ("CB", "SCB"):
            value = getattr(state, name, None)
            if hasattr(value, "untyped_storage"):
                add(value)
    return sum(storages.values())
