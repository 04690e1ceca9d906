"""Exponential moving average of the trained weights, optionally kept in CPU memory."""

from __future__ import annotations

from typing import Any


class EMA:
    def __init__(self, named_params: list[tuple[str, Any]], decay: float, on_cpu: bool):
        self.decay = decay
        self.names = [n for n, _ in named_params]
        self.shadow = {n: p.detach().float().clone().to("cpu" if on_cpu else p.device)
                       for n, p in named_params}

    def update(self, named_params: list[tuple[str, Any]], step: int) -> None:
        import torch

        # warm-up as in diffusers' EMAModel: early averages do not drag the initial weights
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, param in named_params:
                shadow = self.shadow[name]
                shadow.mul_(decay).add_(param.detach().float().to(shadow.device),
                                        alpha=1 - decay)

    def copy_to(self, named_params: list[tuple[str, Any]]) -> None:
        import torch

        with torch.no_grad():
            for name, param in named_params:
                param.copy_(self.shadow[name].to(param))

    def state_dict(self) -> dict[str, Any]:
        return {n: t.contiguous().cpu() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.names:
            self.shadow[name].copy_(state[name])
