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
        # a word swap whose words take as many tokens as they replace maps every token to
        # itself: M v is v, exactly, and the product is skipped
        self._same_tokens = mapper is not None and torch.equal(
            mapper, torch.eye(mapper.shape[-1]).expand_as(mapper))
        self.collector = collector
        self._table_cache: dict[tuple[Any, Any], dict[str, torch.Tensor]] = {}
        self._plan_step(0)

    def bind(self, layers: dict[str, Layer]) -> None:
        super().bind(layers)
        if self.collector is not None:
            self.collector.bind(layers)

    def begin(self, latent_hw, layout):  # type: ignore[no-untyped-def]
        super().begin(latent_hw, layout)
        if self.collector is not None:
            self.collector.begin(latent_hw, layout)

    def begin_step(self, step: int, steps: int) -> None:
        super().begin_step(step, steps)
        self._plan_step(step)

    def _plan_step(self, step: int) -> None:
        """What `step` controls, worked out once and not in every layer."""
        inject = (self.self_steps > step).nonzero().flatten()
        self._inject = inject if len(inject) < len(self.self_steps) else None  # None: all
        self._inject_on: dict[Any, torch.Tensor] = {}
        self._self_active = len(inject) > 0
        editing = self.cross != "none" or self.reweight is not None
        self._cross_on = editing and step < self.cross_steps

    def _cross_active(self) -> bool:
        return self._cross_on

    def wants(self, layer: Layer) -> bool:
        if not layer.cross:
            return self._self_active and layer.factor >= self.min_factor
        return self._cross_on or (self.collector is not None and self.collector.wants(layer))

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
        q, k = query.clone(), key.clone()
        for rows in (t.view(g, s, b, *t.shape[1:]) for t in (q, k)):
            if self._inject is None:  # every sample: plain slices, no index tensors
                rows[:, :, 1] = rows[:, :, 0]
            else:
                inject = self._inject_on.get(query.device)
                if inject is None:  # once per step on the device, not in every layer
                    inject = self._inject_on[query.device] = self._inject.to(query.device)
                rows[:, inject, 1] = rows[:, inject, 0]
        return fused(q, k, value)

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
        q, k, v = (t.view(g, s, b, *t.shape[1:]) for t in (query, key, value))
        after = v[1, :, 1]  # conditional half, after branch: (samples, heads, tokens, dim)
        tables = self._tables(after)
        if self.reweight is not None:
            after = after * tables["weights"][:, None, :, None]
        extra = None
        if self.cross == "replace" and not self._same_tokens:
            after = torch.einsum("sij,shjd->shid", tables["mapper"], after)
        elif self.cross == "refine":
            extra = fused(q[1, :, 1], k[1, :, 1], after * tables["keep"])
            after = torch.einsum("sij,shjd->shid", tables["take"], after)
        q, k = query, key
        if self.cross != "none":  # attend with the before branch's probabilities
            q, k = query.clone(), key.clone()
            for rows in (t.view(g, s, b, *t.shape[1:]) for t in (q, k)):
                rows[1, :, 1] = rows[1, :, 0]
        v = value.clone()
        v.view(g, s, b, *v.shape[1:])[1, :, 1] = after
        out = fused(q, k, v)
        if extra is not None:
            out.view(g, s, b, *out.shape[1:])[1, :, 1] += extra
        return out

    def _tables(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """The edit's fixed tensors on `like`'s device and dtype, made once per run, not in
        every layer: reweight scales, the replace mapper, refine's alignment and its take
        matrix A."""
        key = (like.device, like.dtype)
        if key not in self._table_cache:
            tables: dict[str, torch.Tensor] = {}
            if self.reweight is not None:
                tables["weights"] = self.reweight.to(like)
            if self.mapper is not None:
                tables["mapper"] = self.mapper.to(like)
            if self.refine is not None:
                index, alpha = self.refine[0].to(like.device), self.refine[1].to(like)
                tables.update(index=index, alpha=alpha, keep=(1 - alpha)[:, None, :, None])
                take = torch.zeros(len(alpha), alpha.shape[1], alpha.shape[1],
                                   dtype=like.dtype, device=like.device)
                tables["take"] = take.scatter_(1, index[:, None, :], alpha[:, None, :])
            self._table_cache[key] = tables
        return self._table_cache[key]

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
        tables = self._tables(probs)
        if self.cross == "replace":
            new = base
            if not self._same_tokens:
                new = torch.einsum("shqi,sij->shqj", base, tables["mapper"])
        elif self.cross == "refine":
            index = tables["index"]
            taken = torch.gather(base, -1, index[:, None, None, :].expand_as(base))
            alpha = tables["alpha"][:, None, None, :]
            new = taken * alpha + after * (1 - alpha)
        else:
            new = after
        if self.reweight is not None:
            new = new * tables["weights"][:, None, None, :]
        return torch.stack([base, new], dim=1).view_as(probs)
