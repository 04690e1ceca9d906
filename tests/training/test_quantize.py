"""The frozen transformer in 4 and 8 bits (editkit.training.quantize) on a small FLUX.1
transformer, on the CPU: close to the original, a LoRA trains through it, and the LoRA saved
from it has the keys of the full-precision model's."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

from editkit.training.quantize import (  # noqa: E402
    held_bytes,
    kept_layers,
    quantize,
    quantized_bytes,
)

TARGETS = ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj",
           "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
           "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp"]


def small_flux():
    """A FLUX.1 transformer with every layer kind, wide enough for 4-bit blocks to matter
    (the sizes of diffusers' Kontext pipeline test, heads of 64)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2,
                                  num_single_layers=2, attention_head_dim=64,
                                  num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=32, axes_dims_rope=[8, 28, 28],
                                  guidance_embeds=True)


def inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 32, 16, generator=g).to(dtype),
                encoder_hidden_states=torch.randn(1, 8, 32, generator=g).to(dtype),
                pooled_projections=torch.randn(1, 32, generator=g).to(dtype),
                timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                img_ids=torch.zeros(32, 3), txt_ids=torch.zeros(8, 3))


@pytest.fixture(scope="module")
def model():
    return small_flux()


@pytest.fixture(scope="module")
def reference(model):
    with torch.no_grad():
        return model(**inputs()).sample


@pytest.mark.parametrize("kind,bound", [("nf4", 0.03), ("int8", 0.005)])
def test_quantized_output_is_close_to_the_original(model, reference, kind, bound):
    q = copy.deepcopy(model)
    names = quantize(q, kind, torch.float32, "cpu")
    with torch.no_grad():
        out = q(**inputs()).sample
    error = ((out - reference).norm() / reference.norm()).item()
    print(f"\n{kind}: {len(names)} layers quantized, relative output error {error:.4f}")
    assert 0 < error < bound
    held = held_bytes(q)
    q.eval()  # as validation edits run it: the same layers (int8: an int8 matmul now)
    with torch.no_grad():
        evaluated = q(**inputs()).sample
    assert torch.allclose(evaluated, out, rtol=0, atol=0 if kind == "nf4" else 0.02)
    assert held_bytes(q) == held
    kept = kept_layers(model)
    assert {"x_embedder", "context_embedder", "proj_out", "norm_out.linear"} <= set(kept)
    assert "single_transformer_blocks.0.proj_out" in names  # a block's proj_out is quantized
    assert not set(kept) & set(names)
    assert type(q.x_embedder) is torch.nn.Linear
    assert type(q.transformer_blocks[0].attn.to_q).__name__ == \
        {"nf4": "Linear4bit", "int8": "Linear8bitLt"}[kind]


def test_quantizing_is_deterministic(model):
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    quantize(a, "nf4", torch.bfloat16, "cpu")
    quantize(b, "nf4", torch.bfloat16, "cpu")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    with torch.no_grad():
        assert torch.equal(a(**inputs(torch.bfloat16)).sample, b(**inputs(torch.bfloat16)).sample)


def test_a_quantized_model_refuses_a_dtype_cast(model):
    q = copy.deepcopy(model)
    quantize(q, "nf4", torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="quantized"):
        q.to(torch.float32)


@pytest.mark.parametrize("kind,checkpointing", [("nf4", False), ("int8", False),
                                                ("nf4", True)])
def test_a_lora_trains_through_the_quantized_layers_and_saves_full_precision_keys(
        model, kind, checkpointing):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    q = copy.deepcopy(model)
    quantize(q, kind, torch.bfloat16, "cpu")
    q.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                             target_modules=TARGETS))
    if checkpointing:
        q.enable_gradient_checkpointing()
    trained = [p for p in q.parameters() if p.requires_grad]
    for p in trained:  # the LoRA trains in fp32, as the flow trainer keeps it
        p.data = p.data.float()
    layer = q.transformer_blocks[0].attn.to_q
    assert type(layer).__module__ == "peft.tuners.lora.bnb"  # peft's QLoRA layers
    assert type(layer.base_layer).__name__ in ("Linear4bit", "Linear8bitLt")
    before = [p.detach().clone() for p in trained]
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    losses = []
    for _ in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = q(**inputs(torch.bfloat16)).sample.float().pow(2).mean()
        loss.backward()
        reached = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trained]
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(reached)  # lora_A too, once lora_B has left its zero start
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, p) for a, p in zip(before, trained))

    saved = get_peft_model_state_dict(q)
    full = copy.deepcopy(model)
    full.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS))
    assert set(saved) == set(get_peft_model_state_dict(full))
    loaded = set_peft_model_state_dict(full, saved)
    assert not loaded.unexpected_keys
    for key, value in get_peft_model_state_dict(full).items():
        assert torch.equal(value, saved[key].to(value.dtype)), key


def test_nf4_layers_hold_a_quarter_of_bf16_bytes(model):
    q = copy.deepcopy(model)
    names = quantize(q, "nf4", torch.bfloat16, "cpu")
    layers = [q.get_submodule(n) for n in names]
    held = sum(held_bytes(layer) for layer in layers)
    bf16 = sum(2 * model.get_submodule(n).weight.numel()
               + 2 * model.get_submodule(n).bias.numel() for n in names)
    counted = sum(quantized_bytes(layer.in_features, layer.out_features,
                                  layer.bias is not None, "nf4", 2) for layer in layers)
    print(f"\nnf4: {held:,} bytes held for {bf16:,} in bf16 ({held / bf16:.3f})")
    assert held == counted
    assert 0.25 < held / bf16 < 0.30
    q8 = copy.deepcopy(model)
    names8 = quantize(q8, "int8", torch.bfloat16, "cpu")
    with torch.no_grad():
        q8(**inputs(torch.bfloat16))  # int8 layers move their scales on the first call
    held8 = sum(held_bytes(q8.get_submodule(n)) for n in names8)
    counted8 = sum(quantized_bytes(q8.get_submodule(n).in_features,
                                   q8.get_submodule(n).out_features, True, "int8", 2)
                   for n in names8)
    assert held8 == counted8
    assert 0.5 < held8 / bf16 < 0.55


def test_an_unknown_kind_and_a_second_quantization_are_refused(model):
    from editkit.errors import RunError

    with pytest.raises(RunError, match="nf4"):
        quantize(copy.deepcopy(model), "fp8", torch.bfloat16, "cpu")
    q = copy.deepcopy(model)
    quantize(q, "nf4", torch.bfloat16, "cpu")
    with pytest.raises(RunError, match="quantized already"):
        quantize(q, "nf4", torch.bfloat16, "cpu")
