"""Prompt-to-Prompt attention control for a batch of (before, after) samples.

- Self-attention injection (as InstructPix2Pix generated its data): for the first
  `self_steps[s]` steps of sample s, the after-image's self-attention layers use the
  before-image's attention probabilities, in both guidance halves. Since those are
  softmax(q_before k_before^T), the fused kernel computes them from the before branch's
  queries and keys: nothing is materialised and the cost is that of plain attention.
- Cross-attention edits, conditional half only, for the first `cross_steps` steps: `replace`
  (word swap through a token mapper), `refine` (aligned tokens take the before attention, new
  tokens keep their own), and a per-token `reweight` on top. All are linear in the
  probabilities, so they run in the fused kernel on transformed values.
- An optional `WordMaps` collector for local blending sees the edited probabilities: only
  its layers materialise them.
"""

from __future__ import annotations

from typing import Any

import torch

from editkit.diffusion.control import AttentionController, Layer, attention_probs, fused
from editkit.diffusion.word_maps import WordMaps


class PromptToPrompt(AttentionController):
    def __init__(self, *, self_steps: list[int], self_resolution: float = 1.0,
                 cross: str = "none", cross_steps: int = 0,
                 mapper: torch.Tensor | None = None,
                 refine: tuple[torch.Tensor, torch.Tensor] | None = None,
                 reweight: torch.Tensor | None = None, collector: WordMaps | None = None):
        if cross == "replace" and mapper is None:
            raise ValueError("cross='replace' needs a mapper")
        if cross == "refine" and refine is None:
            raise ValueError("cross='refine' needs an alignment")
        self.self_steps = torch.tensor(self_steps)
        self.min_factor = 1.0 / max(self_resolution, 1e-6) - 1e-6
        self.cross, self.cross_steps = cross, cross_steps
        self.mapper, self.refine, self.reweight = mapper, refine, reweight
        self.collector = collector

    def bind(self, layers: dict[str, Layer]) -> None:
        super().bind(layers)
        if self.collector is not None:
            self.collector.bind(layers)

    def begin(self, latent_hw, layout):  # type: ignore[no-untyped-def]
        super().begin(latent_hw, layout)
        if self.collector is not None:
            self.collector.begin(latent_hw, layout)

    def _cross_active(self) -> bool:
        editing = self.cross != "none" or self.reweight is not None
        return editing and self.step < self.cross_steps

    def wants(self, layer: Layer) -> bool:
        if not layer.cross:
            return layer.factor >= self.min_factor and bool((self.self_steps > self.step).any())
        return self._cross_active() or (self.collector is not None and self.collector.wants(layer))

    def attend(self, layer: Layer, attn: Any, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> torch.Tensor:
        self.count(layer, materialised=False)
        if layer.cross:
            return self._cross(layer, attn, query, key, value)
        return self._self(attn, query, key, value)

    def _self(self, attn: Any, query: torch.Tensor, key: torch.Tensor,
              value: torch.Tensor) -> torch.Tensor:
        """softmax(q_before k_before^T) v_after for injected samples: the before-image's
        probabilities applied to the after-image's values. That is scaled-dot-product
        attention with the before branch's queries and keys, so the fused kernel computes it
        in the same single call as every other row, with no probabilities materialised."""
        g, s, b = self.layout
        inject = (self.self_steps > self.step).to(query.device)
        q, k = (t.view(g, s, b, *t.shape[1:]).clone() for t in (query, key))
        q[:, inject, 1] = q[:, inject, 0]
        k[:, inject, 1] = k[:, inject, 0]
        return fused(q.view_as(query), k.view_as(key), value)

    def _cross(self, layer: Layer, attn: Any, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> torch.Tensor:
        if self.collector is not None and self.collector.wants(layer):
            return self._cross_materialised(layer, attn, query, key, value)
        return self._cross_fused(query, key, value)

    def _cross_fused(self, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor) -> torch.Tensor:
        """Every cross-attention edit here is linear in the probabilities, so it moves onto
        the values: replace is P_before (M v_after), refine is P_before (A v_after) +
        P_after ((1 - alpha) v_after), reweight scales v_after's token rows. The fused kernel
        computes them with no probabilities materialised."""
        g, s, b = self.layout
        q, k, v = (t.view(g, s, b, *t.shape[1:]).clone() for t in (query, key, value))
        after = v[1, :, 1]  # conditional half, after branch: (samples, heads, tokens, dim)
        if self.reweight is not None:
            after = after * self.reweight.to(after)[:, None, :, None]
        extra = None
        if self.cross == "replace":
            mapper = self.mapper.to(after)  # type: ignore[union-attr]
            after = torch.einsum("sij,shjd->shid", mapper, after)
        elif self.cross == "refine":
            index, alpha = self.refine  # type: ignore[misc]
            alpha = alpha.to(after)
            extra = fused(q[1, :, 1], k[1, :, 1], after * (1 - alpha)[:, None, :, None])
            take = torch.zeros(s, alpha.shape[1], alpha.shape[1], dtype=after.dtype,
                               device=after.device)
            take.scatter_(1, index.to(after.device)[:, None, :], alpha[:, None, :])
            after = torch.einsum("sij,shjd->shid", take, after)
        if self.cross != "none":  # attend with the before branch's probabilities
            q[1, :, 1], k[1, :, 1] = q[1, :, 0], k[1, :, 0]
        v[1, :, 1] = after
        out = fused(q.view_as(query), k.view_as(key), v.view_as(value))
        if extra is not None:
            out = out.view(g, s, b, *out.shape[1:])
            out[1, :, 1] += extra
            out = out.view_as(query)
        return out

    def _cross_materialised(self, layer: Layer, attn: Any, query: torch.Tensor,
                            key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Where local blending reads the maps: probabilities of the conditional half."""
        self.count(layer, materialised=True)
        half = query.shape[0] // 2
        uncond = fused(query[:half], key[:half], value[:half])
        probs = attention_probs(attn, query[half:], key[half:])
        if self._cross_active():
            probs = self._edit_cross(probs)
        self.collector.observe(layer, probs)  # type: ignore[union-attr]
        return torch.cat([uncond, probs @ value[half:]])

    def _edit_cross(self, probs: torch.Tensor) -> torch.Tensor:
        s = self.layout[1]
        pairs = probs.view(s, 2, *probs.shape[1:])
        base, after = pairs[:, 0], pairs[:, 1]
        if self.cross == "replace":
            mapper = self.mapper.to(probs.device, probs.dtype)  # type: ignore[union-attr]
            new = torch.einsum("shqi,sij->shqj", base, mapper)
        elif self.cross == "refine":
            index, alpha = (t.to(probs.device) for t in self.refine)  # type: ignore[union-attr]
            taken = torch.gather(base, -1, index[:, None, None, :].expand_as(base))
            alpha = alpha.to(probs.dtype)[:, None, None, :]
            new = taken * alpha + after * (1 - alpha)
        else:
            new = after
        if self.reweight is not None:
            new = new * self.reweight.to(probs.device, probs.dtype)[:, None, None, :]
        return torch.stack([base, new], dim=1).view_as(probs)
