"""Attention control: processors installed on a UNet's attention layers for one run.

A controller decides, per layer and step, whether it controls the layer (`wants`). Only
then does the processor hand queries, keys and values to the controller's `attend`, which
materialises probabilities (`softmax(q k^T)`) only where it must read or change them in a
way the fused kernel cannot express; everywhere else the processor calls the fused
`F.scaled_dot_product_attention`, exactly as diffusers' `AttnProcessor2_0` does. Layer
geometry (the map size of each layer) is derived from the latents of the current call, never
hard-coded, so any resolution and aspect ratio works.

Third-party renderers subclass `AttentionController` and wrap their sampling in
`attention_control(unet, controller)`, which restores the original processors on exit, also
when an exception escapes.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Layer:
    """One attention layer: its processor name, whether it attends to text, and its
    downsampling factor relative to the latents (1 = full latent resolution)."""

    name: str
    cross: bool
    factor: int

    def map_size(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) of this layer's attention map for latents of `latent_hw`: each
        stride-2 convolution (padding 1) rounds up."""
        h, w = latent_hw
        for _ in range(int(math.log2(self.factor))):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w


def attention_modules(unet: Any) -> dict[str, Any]:
    """Processor name (as `unet.attn_processors` names it) -> attention module, found in one
    walk of the UNet."""
    return {f"{name}.processor": module for name, module in unet.named_modules()
            if callable(getattr(type(module), "set_processor", None))}


def unet_layers(unet: Any, names: Any = None) -> dict[str, Layer]:
    """Every attention processor of a diffusers UNet (or those of `names`) with its
    geometry, from the module names diffusers gives blocks (down_blocks.i, mid_block,
    up_blocks.i)."""
    levels = len(unet.config.block_out_channels)
    out: dict[str, Layer] = {}
    for name in unet.attn_processors if names is None else names:
        match = re.match(r"(down_blocks|up_blocks)\.(\d+)\.", name)
        if match:
            index = int(match.group(2))
            level = index if match.group(1) == "down_blocks" else levels - 1 - index
        elif name.startswith("mid_block"):
            level = levels - 1
        else:
            level = 0
        out[name] = Layer(name=name, cross=name.endswith("attn2.processor"), factor=2 ** level)
    return out


class AttentionController:
    """Decides where attention is controlled. The sampling loop calls `begin(latent_hw,
    layout)` once and `begin_step(i, steps)` before each UNet call.

    `layout` is `(guidance, samples, branches)`: the UNet batch is laid out as
    [unconditional | conditional] x samples x [before, after].
    """

    step: int = 0
    steps: int = 1
    latent_hw: tuple[int, int] = (0, 0)
    layout: tuple[int, int, int] = (2, 1, 2)

    def bind(self, layers: dict[str, Layer]) -> None:
        """Called by `attention_control` with the UNet's layers before sampling starts."""
        self.layers = layers

    def begin(self, latent_hw: tuple[int, int], layout: tuple[int, int, int]) -> None:
        self.latent_hw = latent_hw
        self.layout = layout
        self.controlled: dict[tuple[int, str], int] = {}  # (step, layer) -> calls
        self.materialised: dict[tuple[int, str], int] = {}  # ... that computed probabilities

    def begin_step(self, step: int, steps: int) -> None:
        self.step, self.steps = step, steps

    def wants(self, layer: Layer) -> bool:
        """True where this layer needs probabilities at the current step."""
        return False

    def edit(self, layer: Layer, probs: torch.Tensor) -> torch.Tensor:
        """Change probabilities of shape (batch, heads, queries, keys)."""
        return probs

    def attend(self, layer: Layer, attn: Any, query: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor) -> torch.Tensor:
        """Controlled attention for (batch, heads, tokens, dim) tensors. The default
        materialises every row's probabilities and passes them through `edit`."""
        probs = self.edit(layer, attention_probs(attn, query, key))
        self.count(layer)
        return probs @ value

    def count(self, layer: Layer, materialised: bool = True) -> None:
        """Bookkeeping of where control ran (and where it materialised probabilities)."""
        key = (self.step, layer.name)
        self.controlled[key] = self.controlled.get(key, 0) + 1
        if materialised:
            self.materialised[key] = self.materialised.get(key, 0) + 1


def fused(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)


def attention_probs(attn: Any, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale), upcast where the layer asks for it (SD 2.x does)."""
    dtype = query.dtype
    if attn.upcast_attention or attn.upcast_softmax:
        query, key = query.float(), key.float()
    scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
    return scores.softmax(dim=-1).to(dtype)


class ControlledAttnProcessor:
    """`AttnProcessor2_0` with one branch point: the controller's `attend` where it wants
    the probabilities, the fused kernel everywhere else."""

    def __init__(self, layer: Layer, controller: AttentionController):
        self.layer = layer
        self.controller = controller

    def __call__(self, attn: Any, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states.shape if encoder_hidden_states is None
                                          else encoder_hidden_states.shape)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length,
                                                         batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1,
                                                 attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if attention_mask is None and self.controller.wants(self.layer):
            hidden_states = self.controller.attend(self.layer, attn, query, key, value)
        else:
            hidden_states = F.scaled_dot_product_attention(query, key, value,
                                                           attn_mask=attention_mask,
                                                           dropout_p=0.0, is_causal=False)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1,
                                                              attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height,
                                                                    width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def attention_control(unet: Any, controller: AttentionController) -> Iterator[dict[str, Layer]]:
    """Install `controller` on every attention layer of `unet`; restore the original
    processors on exit (normal or not). Yields the layer map."""
    modules = attention_modules(unet)
    original = {name: module.processor for name, module in modules.items()}
    layers = unet_layers(unet, modules)
    controller.bind(layers)
    try:
        for name, module in modules.items():
            module.set_processor(ControlledAttnProcessor(layers[name], controller))
        yield layers
    finally:
        for name, module in modules.items():
            module.set_processor(original[name])
