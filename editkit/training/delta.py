"""A LoRA trained as a plain weight difference, exported as LoRA factors.

`parametrization: delta` (use: lora): each targeted layer's weight becomes W0 + D through
`torch.nn.utils.parametrize`, with W0 frozen and D (zeros at first) the trained parameter. At
export D is split by SVD into the rank-r factors peft's LoRA layers hold (B @ A = D exactly
when r is at least D's rank, e.g. r = 64 on 64-channel layers; otherwise the best rank-r
approximation, and the share of D's energy kept is logged), so the file is an ordinary LoRA
that `load_lora_weights` reads.

Why: a LoRA's factors cost two more matrix products a layer, forward and backward. On a small
UNet whose layers are no wider than the rank (the shapes world's: 32 and 64 channels) the
factors buy no saving in trained parameters and cost ~30% more time a step than training the
difference itself (docs/history/training-speed.md, 2026-12-03). Weight decay acts on D, as
it would on the factors, never on the base weights.
"""

from __future__ import annotations

from typing import Any, Callable


def _matches(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of target module names: the full name or its last parts."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _delta_module(weight: Any) -> Any:
    import torch
    from torch import nn

    class Delta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.delta = nn.Parameter(torch.zeros_like(weight, dtype=torch.float32))

        def forward(self, base: Any) -> Any:
            return base + self.delta.to(base.dtype)

    return Delta()


def add_deltas(model: Any, targets: list[str], rank: int) -> tuple[int, int, int]:
    """Make every Linear / Conv2d of `model` named by `targets` train W0 + D; returns (layers,
    the differences' parameters, the parameters rank-`rank` factors of those layers would
    have). Nothing else of `model` is touched (call after `requires_grad_(False)`)."""
    from torch import nn
    from torch.nn.utils import parametrize

    from editkit.errors import RunError

    names, params, factors = [], 0, 0
    for name, module in list(model.named_modules()):
        if not name or not _matches(name, targets):
            continue
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        module.weight.requires_grad_(False)
        parametrize.register_parametrization(module, "weight", _delta_module(module.weight))
        names.append(name)
        weight = module.weight
        params += weight.numel()
        factors += rank * (weight.shape[0] + weight[0].numel())
    if not names:
        raise RunError(f"no layer matches target_modules {targets}",
                       "name layers of the model, e.g. to_q, to_k, to_v, to_out.0")
    return len(names), params, factors


def deltas_to_lora(model: Any, rank: int, alpha: int, targets: list[str],
                   log: Callable[[str], None], what: str) -> None:
    """Replace `model`'s trained differences by a peft LoRA adapter of `rank` holding them:
    the weights go back to W0 and B @ A * alpha / rank = D. Logs the smallest share of a
    layer's energy the rank keeps (1 when exact)."""
    import torch
    from peft import LoraConfig
    from torch.nn.utils import parametrize

    from editkit.errors import RunError

    deltas = {}
    for name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module, "weight"):
            deltas[name] = module.parametrizations.weight[0].delta.detach().float().clone()
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True,
                                 target_modules=list(targets)))
    scale = alpha / rank
    kept, filled = 1.0, set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if len(getattr(module, "lora_A", ()) or ()) == 0:
                continue
            if name not in deltas:
                raise RunError(f"{what}: LoRA layer {name} has no trained difference",
                               "a bug: the delta and LoRA layers should match")
            down, up = module.lora_A["default"].weight, module.lora_B["default"].weight
            delta = deltas[name]
            matrix = delta.reshape(delta.shape[0], -1)
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
            k = min(rank, s.numel())
            energy = float((s ** 2).sum())
            if energy > 0:
                kept = min(kept, float((s[:k] ** 2).sum()) / energy)
            root = s[:k].sqrt()
            b = torch.zeros(matrix.shape[0], rank)
            a = torch.zeros(rank, matrix.shape[1])
            b[:, :k] = u[:, :k] * root / scale
            a[:k] = root[:, None] * vh[:k]
            up.copy_(b.reshape(up.shape).to(up))
            down.copy_(a.reshape(down.shape).to(down))
            filled.add(name)
    if set(deltas) - filled:
        missing = sorted(set(deltas) - filled)
        raise RunError(f"{what}: {len(missing)} trained differences have no LoRA layer "
                       f"(e.g. {missing[0]})", "a bug: the delta and LoRA layers should match")
    log(f"{what}: {len(filled)} trained differences exported as rank-{rank} LoRA factors "
        f"(smallest share of a layer's energy kept: {kept:.4f})")
