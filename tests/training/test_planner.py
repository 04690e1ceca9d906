"""The flow editors' memory planner (editkit.training.planner): real configs built on the meta
device give the published sizes, the 1024 px plans order as they must, the advice fits, and on
small models the estimates match what real tensors hold (weights) and what a real step saves
and peaks at (activations, VAE encode), measured on the CPU."""

from __future__ import annotations

import gc
import json

import pytest

torch = pytest.importorskip("torch")

from editkit.errors import ModelError  # noqa: E402
from editkit.training import planner  # noqa: E402
from editkit.training.memory import GIB  # noqa: E402

KONTEXT = "black-forest-labs/FLUX.1-Kontext-dev"
KLEIN_4B = "black-forest-labs/FLUX.2-klein-4B"
KLEIN_9B = "black-forest-labs/FLUX.2-klein-9B"
QWEN = "Qwen/Qwen-Image-Edit-2509"


def options(**changes):
    from editkit.training.flow import FlowLoraOptions

    base = dict(resolution=1024, batch_size=1, mixed_precision="bf16", quantize="nf4",
                optimizer="adamw8bit", gradient_checkpointing=True)
    return FlowLoraOptions(**{**base, **changes})


# --- real sizes ---------------------------------------------------------------------------

@pytest.mark.parametrize("ref,transformer,text", [
    (KONTEXT, 12e9, {"text_encoder": 123e6, "text_encoder_2": 4.7e9}),
    (KLEIN_4B, 4e9, {"text_encoder": 4.0e9}),
    (KLEIN_9B, 9e9, {"text_encoder": 8.2e9}),
    (QWEN, 20e9, {"text_encoder": 8.29e9}),
])
def test_meta_builds_give_the_published_sizes(ref, transformer, text):
    model = planner.flow_model(ref)
    assert model.source == "configs shipped with editkit"
    print(f"\n{ref}: transformer {model.transformer_params / 1e9:.2f} B, "
          + ", ".join(f"{t.name} {t.params / 1e9:.2f} B" for t in model.text)
          + f", VAE {model.vae_params / 1e6:.1f} M")
    assert model.transformer_params == pytest.approx(transformer, rel=0.04)
    assert {t.name: t.params for t in model.text} == pytest.approx(text, rel=0.03)
    assert model.pixels_per_token == 16
    if ref != QWEN:
        assert model.vae_params == (84_046_115 if "klein" in ref else 83_819_683)


def test_a_config_the_planner_cannot_find_is_refused_with_a_hint():
    with pytest.raises(ModelError, match="huggingface-cli download"):
        planner.flow_model("someone/not-a-model")


# --- the plans at 1024 px -----------------------------------------------------------------

@pytest.mark.parametrize("ref", [KONTEXT, KLEIN_4B, KLEIN_9B, QWEN])
def test_plans_at_1024_order_sensibly(ref):
    model = planner.flow_model(ref)
    plans = {q: planner.plan(model, options(quantize=q)) for q in ("nf4", "int8", "none")}
    print("\n" + "\n".join(planner.describe(plans["nf4"])))
    weights = {q: p.training["transformer"] for q, p in plans.items()}
    assert weights["nf4"] < weights["int8"] < weights["none"]
    assert weights["none"] == model.transformer_params * 2
    assert 0.25 < weights["nf4"] / weights["none"] < 0.30  # 4 bits and scales, 16-bit rest
    training = {q: sum(p.training.values()) for q, p in plans.items()}
    assert training["nf4"] < training["int8"] < training["none"]
    # the peak is the larger phase: klein 4B's caching pass (its Qwen3 in bf16) outweighs
    # training on a 4-bit base
    assert plans["nf4"].total <= plans["int8"].total < plans["none"].total

    full = planner.plan(model, options(gradient_checkpointing=False))
    assert full.training["activations"] > 3 * plans["nf4"].training["activations"]
    adamw = planner.plan(model, options(optimizer="adamw"))
    assert adamw.training["optimizer"] == pytest.approx(4 * plans["nf4"].training["optimizer"],
                                                        rel=0.05)
    batch = planner.plan(model, options(batch_size=2))
    assert 1.5 < batch.training["activations"] / plans["nf4"].training["activations"] < 2.1
    uncached = planner.plan(model, options(cache_text=False))
    assert uncached.training["text encoders"] == sum(t.params for t in model.text) * 2
    assert not planner.plan(model, options(cache_text=False, cache_latents=False)).caching
    assert planner.plan(model, options(resolution=512)).total < plans["nf4"].total
    parts = plans["nf4"].parts()
    assert parts["total"] == plans["nf4"].total
    assert planner.summary(parts).startswith("memory estimate: ")


def test_the_table_names_every_part_and_the_peak():
    lines = planner.describe(planner.plan(planner.flow_model(KONTEXT), options(), pairs=100))
    text = "\n".join(lines)
    assert lines[0].startswith("memory plan: FLUX.1 Kontext")
    assert "8192 image + 512 text tokens" in lines[0]
    for part in ("transformer", "LoRA (fp32)", "optimizer", "activations", "text encoders",
                 "encoding", "CUDA context + allocator", "peak GPU", "host RAM", "caches"):
        assert part in text


def test_fitting_changes_say_when_the_caching_pass_is_what_does_not_fit():
    model = planner.flow_model(KLEIN_9B)  # Qwen3-8B alone is 15.3 GiB in bf16
    fixes = planner.fitting_changes(model, options(), 16 * GIB)
    assert len(fixes) == 1 and fixes[0].startswith("none: the caching pass alone needs")


@pytest.mark.parametrize("ref,gib", [(KONTEXT, 24), (KONTEXT, 16), (KLEIN_9B, 24),
                                     (KLEIN_4B, 16)])
def test_fitting_changes_suggest_nf4_for_small_cards(ref, gib):
    model = planner.flow_model(ref)
    start = options(quantize="none", optimizer="adamw", gradient_checkpointing=False,
                    batch_size=2)
    assert planner.plan(model, start).total > gib * GIB
    fixes = planner.fitting_changes(model, start, gib * GIB)
    print(f"\n{ref} on {gib} GiB: " + "; ".join(fixes))
    assert fixes and any("quantize=nf4" in fix for fix in fixes)
    for fix in fixes:  # each says a change that, applied, fits
        change = dict(item.split("=") for item in fix.split(" (")[0].split())
        typed = {k: (v == "true" if v in ("true", "false") else
                     int(v) if v.isdigit() else v) for k, v in change.items()}
        assert planner.plan(model, start.model_copy(update=typed)).total <= gib * GIB


# --- small models: estimates against what real tensors hold -------------------------------

TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                 attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48,
                 pooled_projection_dim=32, axes_dims_rope=[4, 14, 14], guidance_embeds=True)
TINY_FLUX2 = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                  attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48,
                  timestep_guidance_channels=32, axes_dims_rope=[8, 8, 8, 8],
                  guidance_embeds=False)
TINY_QWEN = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                 attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48,
                 axes_dims_rope=[8, 12, 12])
TINY = {"flux": ("FluxKontextPipeline", "FluxTransformer2DModel", TINY_FLUX, "AutoencoderKL"),
        "flux2": ("Flux2KleinPipeline", "Flux2Transformer2DModel", TINY_FLUX2,
                  "AutoencoderKLFlux2"),
        "qwen": ("QwenImageEditPlusPipeline", "QwenImageTransformer2DModel", TINY_QWEN,
                 "AutoencoderKLQwenImage")}
TINY_VAE = {"AutoencoderKL": dict(block_out_channels=[32, 64, 128, 128],
                                  down_block_types=["DownEncoderBlock2D"] * 4,
                                  up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4,
                                  layers_per_block=2, use_quant_conv=False,
                                  use_post_quant_conv=False),
            "AutoencoderKLFlux2": dict(block_out_channels=[32, 64, 128, 128],
                                       latent_channels=4),
            "AutoencoderKLQwenImage": dict(base_dim=32, z_dim=4, dim_mult=[1, 2, 4, 4],
                                           num_res_blocks=2, attn_scales=[],
                                           temperal_downsample=[False, True, True])}


def config_folder(path, kind):
    """A pipeline folder of configs only (model_index.json and each part's config.json)."""
    from transformers import CLIPTextConfig

    pipeline, transformer, config, vae = TINY[kind]
    parts = {"transformer": ("diffusers", transformer, config),
             "vae": ("diffusers", vae, TINY_VAE[vae]),
             "text_encoder": ("transformers", "CLIPTextModel",
                              CLIPTextConfig(hidden_size=32, intermediate_size=37,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             vocab_size=100).to_dict())}
    index = {"_class_name": pipeline}
    for name, (library, cls, part) in parts.items():
        (path / name).mkdir(parents=True)
        (path / name / "config.json").write_text(json.dumps({"_class_name": cls, **part}))
        index[name] = [library, cls]
    (path / "model_index.json").write_text(json.dumps(index))
    return path


def test_configs_in_the_hugging_face_cache_are_read_without_downloading(tmp_path, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-kontext"
    config_folder(repo / "snapshots" / ("0" * 40), "flux")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    model = planner.flow_model("someone/tiny-kontext")
    assert model.source == "configs in the Hugging Face cache"
    assert model.title == "FLUX.1 Kontext"
    assert model.transformer_params == sum(p.numel() for p in real_transformer("flux")
                                           .parameters())


def real_transformer(kind):
    import diffusers

    torch.manual_seed(0)
    return getattr(diffusers, TINY[kind][1])(**TINY[kind][2])


@pytest.mark.parametrize("kind", ["flux", "flux2", "qwen"])
@pytest.mark.parametrize("quantize", ["nf4", "int8", "none"])
def test_the_weights_estimate_is_what_the_quantized_transformer_holds(tmp_path, kind,
                                                                      quantize):
    from editkit.training.quantize import held_bytes
    from editkit.training.quantize import quantize as quantized

    model = planner.flow_model(config_folder(tmp_path / kind, kind))
    assert model.source == f"configs in {tmp_path / kind}"
    transformer = real_transformer(kind)
    assert model.transformer_params == sum(p.numel() for p in transformer.parameters())
    if quantize == "none":
        to_bf16(transformer)
    else:
        quantized(transformer, quantize, torch.bfloat16, "cpu")
        if quantize == "int8":  # int8 layers move their scales on the first call
            for layer in transformer.modules():
                if hasattr(layer, "init_8bit_state") and layer.weight.CB is not None:
                    layer.init_8bit_state()
    estimate = planner.plan(model, options(quantize=quantize, resolution=64)) \
        .training["transformer"]
    held = held_bytes(transformer)
    print(f"\n{kind} {quantize}: estimate {estimate:,.0f} bytes, held {held:,}")
    assert estimate == pytest.approx(held, rel=0.02)


class LiveTensors:
    """A dispatch mode that follows the storages ops create (those alive before it started are
    not counted) and keeps the peak of their sum."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        from torch.utils.weak import WeakIdKeyDictionary

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        storage = t.untyped_storage()
                        if storage not in tracker.live and \
                                storage.data_ptr() not in tracker.before:
                            tracker.live[storage] = storage.nbytes()
                tracker.peak = max(tracker.peak, sum(tracker.live.values()))
                return out

        self.mode = Mode()
        self.live = WeakIdKeyDictionary()
        self.before = existing_storages()
        self.peak = 0

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def existing_storages() -> set[int]:
    import warnings

    with warnings.catch_warnings():  # isinstance on deprecated torch objects warns
        warnings.simplefilter("ignore")
        return {o.untyped_storage().data_ptr() for o in gc.get_objects()
                if isinstance(o, torch.Tensor) and o.device.type != "meta"}


def to_bf16(module):
    """The module's weights in bf16 (as `.to(dtype)` does, without diffusers' warning about
    fp32 modules these transformers do not have)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.bfloat16)
    return module


def lora_transformer(kind, model, checkpointing):
    """The small transformer as the flow trainer holds it: 16-bit frozen base, LoRA on the
    family's default targets in fp32."""
    from peft import LoraConfig

    transformer = to_bf16(real_transformer(kind))
    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                       target_modules=list(model.default_targets)))
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    return transformer


def step_inputs(kind, side, text):
    g = torch.Generator().manual_seed(0)
    images = 2 * side * side  # the noisy latents and the image to edit
    common = dict(hidden_states=torch.randn(1, images, 16, generator=g).bfloat16(),
                  encoder_hidden_states=torch.randn(1, text, 48, generator=g).bfloat16(),
                  timestep=torch.tensor([0.5]).bfloat16())
    if kind == "qwen":
        return {**common, "encoder_hidden_states_mask": torch.ones(1, text, dtype=torch.bool),
                "img_shapes": [[(1, side, side), (1, side, side)]]}
    axes = 3 if kind == "flux" else 4
    common.update(img_ids=torch.zeros(images, axes), txt_ids=torch.zeros(text, axes))
    if kind == "flux":
        common.update(pooled_projections=torch.randn(1, 32, generator=g).bfloat16(),
                      guidance=torch.tensor([3.5]))
    return common


@pytest.mark.parametrize("kind", ["flux", "flux2", "qwen"])
def test_each_block_saves_what_the_formula_counts(tmp_path, kind):
    model = planner.flow_model(config_folder(tmp_path / kind, kind))
    transformer = lora_transformer(kind, model, False)
    side, text = 8, 16
    before = existing_storages()
    block, saved = [None], {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in before and key not in saved:
            saved[key] = (block[0], t.untyped_storage().nbytes())
        return t

    for prefix in (p for _, p in model.blocks):
        layer = transformer.get_submodule(prefix)
        layer.register_forward_pre_hook(lambda m, a, prefix=prefix: block.__setitem__(0, prefix))
        layer.register_forward_hook(lambda m, a, o: block.__setitem__(0, None))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        transformer(**step_inputs(kind, side, text))
    p = planner.policy(options(quantize="none", rank=4), cpu=True)
    lora = model.lora_layers(None)
    for kind_, prefix in model.blocks:
        measured = sum(n for b, n in saved.values() if b == prefix)
        counted = planner.block_saved(kind_, prefix, model.dims, model.mlp[kind_],
                                      (2 * side * side, text), lora, p)
        print(f"\n{prefix}: saved {measured:,} bytes, formula {counted:,.0f}")
        assert counted == pytest.approx(measured, rel=0.1)


@pytest.mark.parametrize("kind", ["flux", "flux2", "qwen"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_steps_activation_peak_is_what_the_planner_counts(tmp_path, kind, checkpointing):
    model = planner.flow_model(config_folder(tmp_path / kind, kind))
    transformer = lora_transformer(kind, model, checkpointing)
    side, text = 8, 16
    inputs = step_inputs(kind, side, text)
    lora_grads = 4 * sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    with LiveTensors() as live:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = transformer(**inputs).sample
        out.float().pow(2).mean().backward()
    measured = live.peak - lora_grads  # the plan counts the LoRA's gradients apart
    o = options(quantize="none", rank=4, resolution=side * model.pixels_per_token,
                gradient_checkpointing=checkpointing)
    model.text_tokens = text
    try:
        counted = planner.activations(model, o, planner.policy(o, cpu=True),
                                      model.lora_layers(None))
    finally:
        model.text_tokens = planner.flow_model(tmp_path / kind).text_tokens
    print(f"\n{kind}, checkpointing {checkpointing}: peak {measured:,} bytes, "
          f"planned {counted:,.0f} ({counted / measured:.2f})")
    assert 0.85 < counted / measured < 1.3


@pytest.mark.parametrize("kind", ["flux", "qwen"])
def test_the_vae_encode_peak_is_what_the_planner_counts(tmp_path, kind):
    import diffusers

    model = planner.flow_model(config_folder(tmp_path / kind, kind))
    vae = getattr(diffusers, model.vae_class)(**TINY_VAE[model.vae_class])
    vae.requires_grad_(False)
    pixels = torch.randn(1, 3, 128, 128)
    if kind == "qwen":
        pixels = pixels[:, :, None]  # one frame
    with LiveTensors() as live, torch.no_grad():
        vae.encode(pixels).latent_dist.mode()
    counted = planner._vae_encode(model, 128, 4)
    print(f"\n{model.vae_class}: encode peak {live.peak:,} bytes, planned {counted:,.0f}")
    assert counted == pytest.approx(live.peak + pixels.numel() * 4, rel=0.1)


# --- the benchmark ------------------------------------------------------------------------

def run_benchmark(*args: str) -> str:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "train.py"), *args],
                          capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_benchmark_prints_the_plans_of_a_flow_editor():
    out = run_benchmark("--model", "kontext-sized", "--resolution", "1024", "--batch-size", "1",
                        "--mixed-precision", "bf16", "--estimate-only", "--configs",
                        "nf4,bf16-full")
    assert out.count("memory plan: FLUX.1 Kontext") == 2
    rows = [line for line in out.splitlines() if line.startswith(("nf4 +", "bf16 +"))]
    assert len(rows) == 2
    nf4, full = (float(row.split()[4]) for row in rows)
    assert nf4 < full


@pytest.mark.slow
def test_the_benchmark_trains_a_dry_flow_editor_end_to_end():
    out = run_benchmark("--model", "qwen-edit-sized", "--dry", "--mixed-precision", "bf16",
                        "--batch-size", "1", "--configs", "nf4,bf16")
    lines = out.splitlines()
    assert lines[0].startswith("model qwen-edit-sized, 64 px")
    assert [line.split(" +")[0] for line in lines[2:]] == ["nf4", "bf16"]
