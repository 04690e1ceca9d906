"""Train the shapes world's text-to-image model from a seed: a small latent diffusion model
(AutoencoderKL + UNet2DConditionModel + CLIP text encoder) saved as a StableDiffusionPipeline.

Why these choices: the world is 64 px of flat colours, so a VAE with two downsamplings
(16x16x4 latents) learns it in minutes and keeps the UNet cheap; the text encoder is trained
with the UNet from scratch on the world's own vocabulary; captions are dropped 10% of the
time so classifier-free guidance can sharpen the prompted attributes at sampling time.

    python -m tools.shapes.train_world OUT [--seed 0] [--vae-steps 1500+800] \
        [--decoder-steps 3000] [--unet-steps 4000+12000+8000+8000+8000] [--snapshot-every 2000]
        [--device cuda] [--unet-channels 32,64,64] [--attention-from 1] [--locality-steps N]
    python -m tools.shapes.train_world OUT --start-from shapes-sd --locality-steps 2000 \
        --unet-steps 4000 --lr 2.5e-4      # continue a trained model on local latents

`--unet-channels` and `--attention-from` (0: cross-attention at the 16x16 level too) train
a UNet of another size than the shipped one, with caches of its own; `--device cuda` runs
every phase on a GPU. The shipped model is the defaults (phases 1-2 on one CPU thread, the
rest on two), continued by `--start-from` with `--locality-steps 2000 --unet-steps 4000 --lr
2.5e-4` (its train_stats.json says so).

`--locality-steps N` adds a VAE phase after the decoder polish (`train_locality`): the
shipped VAE's latents are not local (GroupNorm statistics and a wide receptive field put the
background and the other shape into every cell), so an editor that copied the cells of what
an edit keeps would still get 0.23 of background edits right (`vae_locality`); after 2000
locality steps 1.00 (all edits 0.99, round trip 0.996). The new latents need a UNet trained
on them: its caches are tagged `-lN`. Trained from scratch on them the UNet learns position
slowly (0.28 after three phases); continued from a trained one (`--start-from`) it keeps it
(0.72 after 4,000 steps).

`--grounding W` and `--binding W` add losses that teach the model which shape of a
two-shape prompt goes where. Without them the model drew the right two cells 84% of the time
but swapped the shapes in 37% (position 0.53 for each of two shapes, 1.00 for one):
`grounding_loss` (TokenCompose's token loss on the world's exact boxes) asks each shape
phrase's cross-attention to fall inside that shape's box; `binding_loss` asks the causal text
encoder's last token of each phrase to hold all of that shape's attributes (alone it made
the encoder's probes perfect but moved position not at all; grounding alone is untried).
Both together, 4,000 steps from the old shipped model (`--start-from`, lr 2.5e-4, both
weights 0.02): position for each of two shapes 0.80, every attribute right 0.66 -> 0.84
(eval_world, 300 prompts, cfg 4); 4,000 more from there (lr 1.25e-4, grounding 0.05):
0.99 and 0.977; 4,000 more with `--unsaid 0.25` (captions that leave size, place or
background out, so the model also draws what a caption does not say): 0.997 and 0.983, the
shipped `shapes-sd` (docs/history/shapes-models.md, 2026-11-24 to 2026-11-25). The losses
cost nothing at sampling: the saved model is a plain StableDiffusionPipeline.

The third to fifth UNet phases (lr 2.5e-4, 1.25e-4, 6.25e-5) are where the model learns
where a prompt puts a shape: position 0.19 -> 0.59 -> 0.70 -> 0.71 of samples, every attribute
right 0.10 -> 0.49 -> 0.635 -> 0.675 (eval_world, 200 prompts, cfg 4; kind, colour and size
are right about 98% of the time from the second phase on). A loss that weighs the shapes'
latent cells 10x in the third phase was worse on every attribute (all right 0.27), not used.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from editkit.builtins.shapes.world import (
    BACKGROUNDS,
    COLOURS,
    COLUMNS,
    IMAGE_SIZE,
    ROWS,
    SHAPES,
    SIZES,
    UNSAID,
    Scene,
    draw,
    random_scene,
    shape_box,
)
from editkit.diffusion.control import attention_control, unet_layers
from editkit.diffusion.grounding import AttentionRecorder, attention_inside_loss

CAPTION_DROP = 0.1
# DDPM's linear schedule, not Stable Diffusion's scaled one: at 16x16 latents SD's last step
# still holds 7% of the signal, so the sampler's pure noise fixes the mean colour (the
# background) and the layout before the prompt can; here the last step keeps 0.6%.
# And v-prediction: with epsilon-prediction the loss at high noise barely depends on the
# caption (the noise is the input), so the first sampling steps, which fix the background
# and the layout, ignored it.
NOISE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001,
         "beta_end": 0.02, "prediction_type": "v_prediction"}


def world_words() -> list[str]:
    """Every word a caption or instruction of the world can use (the tokenizer's corpus)."""
    words = [*SHAPES, *COLOURS, *BACKGROUNDS, *SIZES, *COLUMNS, *ROWS,
             "a", "and", "on", "at", "in", "the", "background", "make", "turn", "into",
             "add", "remove"]
    return words * 20


def world_dataset(count: int, seed: int) -> tuple[Any, list[Scene]]:
    """`count` random scenes drawn by the world: (uint8 tensor N x 3 x 64 x 64, scenes)."""
    import numpy as np
    import torch

    rng = random.Random(f"editkit-shapes-train:{seed}")
    images, scenes = [], []
    for _ in range(count):
        scene = random_scene(rng)
        images.append(np.asarray(draw(scene)))
        scenes.append(scene)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), scenes


# what the binding heads read from each shape phrase's last token, and their class counts
BOUND = (("row", ROWS), ("column", COLUMNS), ("kind", SHAPES), ("colour", tuple(COLOURS)),
         ("size", tuple(SIZES)))


def phrase_targets(scenes: list[Scene], tokenizer: Any, shapes: int = 2,
                   unsaid: list[frozenset[str]] | None = None) -> Any:
    """Per scene and shape: the token index that ends the shape's phrase in the caption and
    the shape's attributes as class numbers (BOUND's order); -1 throughout where a scene has
    fewer shapes, and for an attribute its caption leaves unsaid (`unsaid`, per scene, as
    `Scene.caption` takes it). The text encoder is causal, so that token is the first that
    can hold the whole phrase (its place words come after its noun)."""
    import torch

    targets = torch.full((len(scenes), shapes, 2 + len(BOUND)), -1, dtype=torch.long)
    for n, scene in enumerate(scenes):
        left_out = unsaid[n] if unsaid else frozenset()
        prefix = ""
        for k, shape in enumerate(scene.shapes):
            before = prefix + (" and " if k else "")
            prefix = before + shape.phrase(left_out)
            end = len(tokenizer(prefix).input_ids) - 2  # [bos] words [eos]: the last word
            if end >= tokenizer.model_max_length - 1:
                continue  # truncated away
            noun = len(tokenizer(before + shape.phrase(left_out | {"place"})).input_ids) - 2
            targets[n, k, 0], targets[n, k, 1] = end, noun
            for j, (name, values) in enumerate(BOUND):
                said = "place" if name in ("row", "column") else name
                if said not in left_out:
                    targets[n, k, 2 + j] = values.index(getattr(shape, name))
    return targets


def unsaid_captions(scenes: list[Scene], rate: float,
                    generator: Any = None) -> tuple[list[str], list[frozenset[str]]]:
    """Each scene's caption with each of UNSAID left out at `rate` (drawn from the torch
    `generator`): the captions, and what each leaves out."""
    import torch

    left = torch.rand(len(scenes), len(UNSAID), generator=generator) < rate
    unsaid = [frozenset(u for u, out in zip(UNSAID, row) if out) for row in left.tolist()]
    return [s.caption(u) for s, u in zip(scenes, unsaid)], unsaid


def shape_masks(scenes: list[Scene], size: int, shapes: int = 2) -> Any:
    """Per scene and shape, the cells of a `size` x `size` map its box touches (flattened,
    row-major as attention maps are); zeros where a scene has fewer shapes."""
    import math

    import torch

    masks = torch.zeros(len(scenes), shapes, size, size)
    for n, scene in enumerate(scenes):
        for k, shape in enumerate(scene.shapes):
            left, top, right, bottom = shape_box(shape, size)
            masks[n, k, math.floor(top):math.ceil(bottom), math.floor(left):math.ceil(right)] = 1
    return masks.flatten(2)


def binding_loss(hidden: Any, targets: Any, heads: Any) -> Any:
    """Cross-entropy of linear heads that read each shape's attributes (place included) from
    the last token of its phrase: pushes the text encoder to tie a phrase's place words to
    its shape, which the diffusion loss alone barely does (probes on the token: row 0.66,
    column 0.91 for the second shape of a caption, kind/colour/size 1.00)."""
    import torch

    present = targets[..., 0] >= 0
    if not present.any():
        return hidden.sum() * 0.0
    rows = torch.arange(len(hidden), device=hidden.device)[:, None].expand_as(present)
    tokens = hidden[rows[present], targets[..., 0][present]]
    logits = heads(tokens).split([len(values) for _, values in BOUND], dim=1)
    labels = targets[present][:, 2:]
    losses = [torch.nn.functional.cross_entropy(lg[labels[:, j] >= 0],
                                                labels[:, j][labels[:, j] >= 0])
              for j, lg in enumerate(logits) if (labels[:, j] >= 0).any()]  # said ones only
    return sum(losses) / len(BOUND)


# the shipped UNet: 32/64/64 channels, cross-attention at the 8x8 and 4x4 levels only
UNET_CHANNELS = (32, 64, 64)
ATTENTION_FROM = 1


def unet_blocks(levels: int, attention_from: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Down and up block types with cross-attention at every level from `attention_from`
    (0 = the 16x16 level too) down to the lowest."""
    down = tuple("DownBlock2D" if i < attention_from else "CrossAttnDownBlock2D"
                 for i in range(levels))
    up = tuple(kind.replace("Down", "Up") for kind in reversed(down))
    return down, up


def architecture_tag(channels: tuple[int, ...], attention_from: int) -> str:
    """'' for the shipped UNet, else a suffix that keeps other architectures' caches apart."""
    if tuple(channels) == UNET_CHANNELS and attention_from == ATTENTION_FROM:
        return ""
    return f"-c{'.'.join(str(c) for c in channels)}-a{attention_from}"


def build_models(tokenizer_dir: Path, channels: tuple[int, ...] = UNET_CHANNELS,
                 attention_from: int = ATTENTION_FROM) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from editkit.models.tiny import build_tiny_tokenizer

    build_tiny_tokenizer(tokenizer_dir, world_words())
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, projection_dim=64,
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    tokenizer.model_max_length = 32
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=64, mid_block_add_attention=False)
    down, up = unet_blocks(len(channels), attention_from)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=tuple(channels),
        layers_per_block=1, norm_num_groups=16, cross_attention_dim=64, attention_head_dim=8,
        down_block_types=down, up_block_types=up,
        # the caption, pooled by attention, is also added to the time embedding: every
        # ResNet block (the 16x16 ones too) sees the global attributes (background, colours)
        # at once, where cross-attention alone learns them slowly at this size
        addition_embed_type="text", addition_embed_type_num_heads=4)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet}


def _to_float(images: Any) -> Any:
    return images.float() / 127.5 - 1.0


def shape_weighted_loss(recon: Any, x: Any, background: Any) -> Any:
    """L1 + L2 with the shapes' pixels weighed 10x: they are a tenth of the image, and the
    oracle reads their colour and corners."""
    weight = 1 + 9 * ((x - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    return (weight * (recon - x).abs()).mean() + (weight * (recon - x) ** 2).mean()


def _cosine_adamw(params: Any, lr: float, steps: int) -> tuple[Any, Any]:
    """AdamW without weight decay and a cosine from lr down to a twentieth (the VAE phases)."""
    import math

    import torch

    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.05 + 0.475 * (1 + math.cos(math.pi * s / max(1, steps))))
    return optimiser, decay


def _update(loss: Any, params: Any, optimiser: Any, decay: Any) -> None:
    """One clipped optimiser step and one schedule step."""
    import torch

    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimiser.step()
    decay.step()


def train_vae(vae: Any, images: Any, steps: int, batch: int, log: Any, crop: int = 32,
              lr: float = 2e-3) -> None:
    """A deterministic autoencoder (the posterior's mode; the KL term only keeps the latents
    tame) trained on 32 px crops, one random crop per image: the VAE is convolutional, so crops
    teach it the same edges and colours at a quarter of the cost. The loss weighs the shapes'
    pixels 10x: they are a tenth of the image, and the oracle reads their colour and corners."""
    import torch

    device = next(vae.parameters()).device
    optimiser, decay = _cosine_adamw(vae.parameters(), lr, steps)
    size = images.shape[-1]
    check = _to_float(images[:64])
    vae.train()
    for step in range(steps):
        index = torch.randint(0, len(images), (batch,))
        corners = torch.randint(0, (size - crop) // 4 + 1, (batch, 2)) * 4
        x = _to_float(torch.stack([images[i, :, t:t + crop, l:l + crop]
                                   for i, (t, l) in zip(index.tolist(), corners.tolist())])
                      ).to(device)
        background = _to_float(images[index, :, :1, :1]).to(device)  # always background
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mode()).sample
        loss = shape_weighted_loss(recon, x, background) + 1e-7 * posterior.kl().mean()
        _update(loss, vae.parameters(), optimiser, decay)
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step} loss {loss.item():.5f} oracle {vae_oracle(vae, check):.3f}")
    vae.eval()


def train_decoder(vae: Any, images: Any, steps: int, batch: int, log: Any,
                  lr: float = 5e-4) -> None:
    """Fine-tune the decoder alone on whole images, the encoder frozen: the latents (and so
    the UNet trained on them) stay valid. The crop-trained VAE shifted colours on gray
    backgrounds (red read as orange) and rounded small corners: a tenth of clean world
    images came back as another scene, capping every stage judged through it."""
    import torch

    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [p for p in vae.parameters() if p.requires_grad]
    device = params[0].device
    optimiser, decay = _cosine_adamw(params, lr, steps)
    held = min(256, len(images) // 4)  # the oracle check's images, not trained on
    check = _to_float(images[-held:])
    log(f"decoder start: oracle {vae_oracle(vae, check):.3f} ({held} held-back images)")
    vae.train()
    for step in range(steps):
        index = torch.randint(0, len(images) - held, (batch,))
        x = _to_float(images[index]).to(device)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.mode()
        background = x[:, :, :1, :1]
        recon = vae.decode(latents).sample
        loss = shape_weighted_loss(recon, x, background)
        _update(loss, params, optimiser, decay)
        if step % 500 == 0 or step == steps - 1:
            log(f"decoder step {step} loss {loss.item():.5f} "
                f"oracle {vae_oracle(vae, check):.3f}")
    vae.requires_grad_(True)
    vae.eval()


def kept_cells(before: Scene, after: Scene, cells: int) -> Any:
    """(cells, cells) float mask: 1 on the latent cells under the shapes an edit keeps."""
    import math

    import torch

    mask = torch.zeros(cells, cells)
    step = IMAGE_SIZE / cells
    for shape in set(before.shapes) & set(after.shapes):
        left, top, right, bottom = shape_box(shape)
        mask[int(top // step):math.ceil(bottom / step),
             int(left // step):math.ceil(right / step)] = 1
    return mask


def _latent_cells(vae: Any) -> int:
    """Latent cells across a world image: the VAE halves the size at each block but the last."""
    return IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1)


def _pair_batch(pairs: list[Any], cells: int) -> tuple[Any, Any, Any]:
    """Drawn before and after images (N x 3 x 64 x 64 in [-1, 1]) and kept-cell masks."""
    import numpy as np
    import torch

    images = {scene: np.asarray(draw(scene)) for p in pairs for scene in (p.before, p.after)}
    before = torch.from_numpy(np.stack([images[p.before] for p in pairs]))
    after = torch.from_numpy(np.stack([images[p.after] for p in pairs]))
    masks = torch.stack([kept_cells(p.before, p.after, cells) for p in pairs])[:, None]
    return (_to_float(before.permute(0, 3, 1, 2)), _to_float(after.permute(0, 3, 1, 2)),
            masks)


def vae_locality(vae: Any, count: int = 128, seed: int = 0) -> dict[str, float]:
    """How local the latents are: for `count` world edits, the kept shapes' latent cells are
    taken from the before image and every other cell from the after image, as an editor that
    copies what it keeps would; the fraction decoded to the right edit, overall and per edit
    kind. 1.0 means copying kept cells is enough; the shipped VAE's latents also carry the
    background and the other shape (GroupNorm statistics, a wide receptive field)."""
    import numpy as np
    import torch
    from PIL import Image

    from editkit.builtins.shapes.judge import change_of, judge_change
    from editkit.builtins.shapes.oracle import read_scene
    from editkit.builtins.shapes.pairs import world_pairs

    pairs = world_pairs(count, seed)
    device = next(vae.parameters()).device
    cells = _latent_cells(vae)
    before, after, masks = _pair_batch(pairs, cells)
    was = vae.training
    vae.eval()
    with torch.no_grad():
        zb = vae.encode(before.to(device)).latent_dist.mode()
        za = vae.encode(after.to(device)).latent_dist.mode()
        masks = masks.to(device)
        out = vae.decode(masks * zb + (1 - masks) * za).sample.clamp(-1, 1).cpu()
    vae.train(was)
    pixels = ((out + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    right: dict[str, list[bool]] = {}
    for pair, image in zip(pairs, pixels):
        good = judge_change(pair.before, change_of(pair.before, pair.after),
                            read_scene(Image.fromarray(image))).good
        right.setdefault("all", []).append(good)
        right.setdefault(pair.kind, []).append(good)
    return {kind: float(np.mean(v)) for kind, v in right.items()}


LOCALITY_BATCH = 16  # pairs a step: four decodes each, as many images as a 32-image VAE step


def train_locality(vae: Any, steps: int, log: Any, seed: int = 0, batch: int = LOCALITY_BATCH,
                   lr: float = 5e-4, pool: int = 4000, weight: float = 0.05) -> None:
    """Teach encoder and decoder that a shape's latents are its own: on world edits, the
    latents of the before and after images spliced (kept shapes' cells from one, the rest
    from the other) must decode to the image the splice stands for, and the kept cells must
    encode alike (`weight`). Reconstruction of both images is kept in the loss. The latents
    change, so a UNet must be trained on them afterwards."""
    import torch

    from editkit.builtins.shapes.pairs import world_pairs

    pairs = world_pairs(pool, seed + 7919)  # not the pairs `vae_locality` measures on
    device = next(vae.parameters()).device
    cells = _latent_cells(vae)
    drawn = _pair_batch(pairs, cells)  # drawn once: drawing costs more than a step
    optimiser, decay = _cosine_adamw(vae.parameters(), lr, steps)
    rng = random.Random(seed)
    log(f"locality start: {vae_locality(vae)}")
    vae.train()
    for step in range(steps):
        index = torch.tensor(rng.sample(range(pool), batch))
        before, after, masks = (t[index].to(device) for t in drawn)
        zb = vae.encode(before).latent_dist.mode()
        za = vae.encode(after).latent_dist.mode()
        spliced = torch.cat([masks * zb + (1 - masks) * za, masks * za + (1 - masks) * zb,
                             zb, za])
        targets = torch.cat([after, before, before, after])
        recon = vae.decode(spliced).sample
        loss = shape_weighted_loss(recon, targets, targets[:, :, :1, :1])
        same = (masks * (zb - za) ** 2).sum() / (masks.sum() * zb.shape[1]).clamp(min=1)
        loss = loss + weight * same
        _update(loss, vae.parameters(), optimiser, decay)
        if step % 250 == 0 or step == steps - 1:
            log(f"locality step {step} loss {loss.item():.5f} kept-cell distance "
                f"{same.item():.4f}")
    vae.eval()
    log(f"locality end: {vae_locality(vae)}")


# the posterior's log-variance after `make_deterministic`: diffusers clamps it at -30, so a
# sample's spread is e^-15 (3e-7), nothing next to latents of spread ~3
DETERMINISTIC_LOGVAR = -30.0


def make_deterministic(vae: Any) -> None:
    """Give the posterior a variance of (almost) zero, so `latent_dist.sample()` is its mode.

    The VAE is trained on the mode with a KL weight too small to shape the variance, which
    stays near 1: a trainer that samples the posterior (InstructPix2Pix's target latents, as
    diffusers' own example does) would then learn from latents with a third of their spread
    added as noise. The decoder never saw those samples; this makes them the mode it saw."""
    import torch

    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0
        vae.quant_conv.bias[channels:] = DETERMINISTIC_LOGVAR


def reconstruct(vae: Any, x: Any) -> list[Any]:
    """The VAE's reconstructions of images `x` (N x 3 x H x W in [-1, 1]) as PIL images."""
    import numpy as np
    import torch
    from PIL import Image

    was = vae.training
    vae.eval()
    with torch.no_grad():
        x = x.to(next(vae.parameters()).device)
        out = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1).cpu()
    vae.train(was)
    pixels = ((out + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def vae_oracle(vae: Any, x: Any) -> float:
    """Fraction of images whose reconstruction the oracle reads as the original's scene."""
    import numpy as np
    from PIL import Image

    from editkit.builtins.shapes.oracle import read_scene, same_scene

    originals = ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return float(np.mean([same_scene(read_scene(Image.fromarray(a)), read_scene(b))
                          for a, b in zip(originals, reconstruct(vae, x))]))


def grounding_loss(maps: list[Any], targets: Any, masks: dict[int, Any]) -> Any:
    """TokenCompose's token loss (Wang et al., CVPR 2024) on the world's exact boxes: for
    each shape, the attention each of its phrase's tokens (from its noun to its last word;
    the encoder is causal, so these are the ones that know the shape) spends over the map
    should fall inside the shape's box: the mean of (1 - share inside)^2 over layers,
    shapes and tokens. `maps` are (batch, heads, queries, keys) probabilities; `masks` the
    flattened box masks (batch x shapes x queries) for each map's query count."""
    import torch

    present = targets[..., 0] >= 0
    keys = torch.arange(maps[0].shape[-1], device=targets.device)
    # (batch, shapes, keys): which tokens belong to each shape's phrase
    member = ((keys >= targets[..., 1:2]) & (keys <= targets[..., 0:1]) & present[..., None])
    return attention_inside_loss(maps, member, masks)


def train_unet(models: dict[str, Any], latents: Any, scenes: list[Scene], steps: int,
               batch: int, lr: float, log: Any, snapshot: Any = None, every: int = 0,
               ema_decay: float = 0.998, binding: float = 0.0, grounding: float = 0.0,
               unsaid: float = 0.0) -> Any:
    """Train UNet and text encoder on the latents of `scenes`; `binding` > 0 adds that
    weight of `binding_loss` (the heads are thrown away after), `grounding` > 0 that weight
    of `grounding_loss` on every cross-attention layer; `unsaid` > 0 leaves each of UNSAID
    out of a step's captions at that rate (`unsaid_captions`), so the model also draws
    from captions that do not say everything."""
    import contextlib

    import torch
    from diffusers import DDPMScheduler

    tokenizer, text_encoder, unet = models["tokenizer"], models["text_encoder"], models["unet"]
    device = next(unet.parameters()).device
    noise_scheduler = DDPMScheduler(**NOISE)

    def tokenize(captions: list[str]) -> Any:
        return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids.to(device)

    # with `unsaid`, each step tokenizes its own captions (and finds its phrases) instead
    ids = None if unsaid else tokenize([s.caption() for s in scenes])
    draws = torch.Generator().manual_seed(0)  # which attributes each step leaves unsaid
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids.to(device)
    latents = latents.to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    heads = targets = None
    phrases = bool(binding or grounding)  # the losses that need each shape's phrase
    if phrases and not unsaid:
        targets = phrase_targets(scenes, tokenizer).to(device)
    recorder, masks = AttentionRecorder(), {}
    if grounding:
        recorder.begin(tuple(latents.shape[-2:]), (1, batch, 1))
        for layer in unet_layers(unet).values():
            h, w = layer.map_size(tuple(latents.shape[-2:]))
            if layer.cross and h * w not in masks:
                masks[h * w] = shape_masks(scenes, h).to(device)
    if binding:
        heads = torch.nn.Linear(text_encoder.config.hidden_size,
                                sum(len(values) for _, values in BOUND)).to(device)
    optimiser = torch.optim.AdamW(params + (list(heads.parameters()) if heads else []),
                                  lr=lr, weight_decay=1e-2)
    warmup = 100

    def schedule(s: int) -> float:  # warm up, then a cosine down to a tenth
        import math

        if s < warmup:
            return (s + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    # an exponential moving average of the weights samples far better than the last step's
    ema = [p.detach().clone() for p in params]
    alphas = noise_scheduler.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    unet.train()
    text_encoder.train()
    # the recorder keeps the cross-attention maps of each step for grounding_loss
    with attention_control(unet, recorder) if grounding else contextlib.nullcontext():
        for step in range(steps):
            index = torch.randint(0, len(latents), (batch,)).to(device)
            x0 = latents[index]
            if unsaid:
                chosen = [scenes[i] for i in index.tolist()]
                captions, left_out = unsaid_captions(chosen, unsaid, draws)
                tokens = tokenize(captions)
            else:
                tokens = ids[index].clone()
            drop = (torch.rand(batch) < CAPTION_DROP).to(device)
            tokens[drop] = empty
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (batch,)).to(device)
            noisy = noise_scheduler.add_noise(x0, noise, t)
            hidden = text_encoder(tokens)[0]
            if grounding:
                recorder.maps.clear()  # this step's maps only
            pred = unet(noisy, t, encoder_hidden_states=hidden).sample
            target = noise_scheduler.get_velocity(x0, noise, t)
            # min-SNR-5 weighting (for v-prediction): converges faster on small budgets
            weight = torch.clamp(snr[t], max=5.0) / (snr[t] + 1)
            loss = (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
            bound = grounded = None
            total = loss
            if phrases:
                kept = (phrase_targets(chosen, tokenizer, unsaid=left_out).to(device) if unsaid
                        else targets[index].clone())
                kept[drop] = -1  # an empty caption binds nothing
            if heads is not None:
                bound = binding_loss(hidden, kept, heads)
                total = total + binding * bound
            if grounding:
                grounded = grounding_loss(recorder.maps, kept,
                                          {q: m[index] for q, m in masks.items()})
                total = total + grounding * grounded
            optimiser.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            scheduler.step()
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
            if step % 50 == 0 or step == steps - 1:
                log(f"unet step {step} loss {loss.item():.5f} lr {scheduler.get_last_lr()[0]:.2e}"
                    + (f" binding {bound.item():.4f}" if bound is not None else "")
                    + (f" grounding {grounded.item():.4f}" if grounded is not None else ""))
            if snapshot is not None and every and (step + 1) % every == 0 and step + 1 < steps:
                with swapped(params, ema):
                    snapshot(step + 1)
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    return noise_scheduler


class swapped:
    """Within the block, `params` hold the `ema` values (restored after)."""

    def __init__(self, params: list[Any], ema: list[Any]):
        self.params, self.ema = params, ema

    def __enter__(self) -> None:
        import torch

        with torch.no_grad():
            self.saved = [p.detach().clone() for p in self.params]
            for p, e in zip(self.params, self.ema):
                p.copy_(e)

    def __exit__(self, *exc: Any) -> None:
        import torch

        with torch.no_grad():
            for p, s in zip(self.params, self.saved):
                p.copy_(s)


def _started(out: Path, start_from: str, log: Any) -> tuple[dict[str, Any], str]:
    """The parts of a trained pipeline to continue from, and the tag its caches carry (the
    start model's folder name and a digest of its weights: another start, other caches).
    The tokenizer is copied into `out` as `build_models` would write it."""
    import hashlib
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from editkit.models import load, resolve

    folder = Path(resolve(start_from).location)
    digest = hashlib.sha256()
    for part in ("vae", "unet", "text_encoder"):
        for weights in sorted((folder / part).glob("*.safetensors")):
            digest.update(weights.read_bytes())
    shutil.copytree(folder / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    models = {"tokenizer": tokenizer,
              "vae": load(AutoencoderKL, str(folder), "VAE", subfolder="vae"),
              "unet": load(UNet2DConditionModel, str(folder), "UNet", subfolder="unet"),
              "text_encoder": load(CLIPTextModel, str(folder), "text encoder",
                                   subfolder="text_encoder")}
    log(f"starting from {folder}")
    return models, f"from-{folder.name}-{digest.hexdigest()[:10]}"


def train(out: Path, seed: int = 0, images: int = 16000,
          vae_steps: tuple[int, ...] = (1500, 800),
          unet_steps: tuple[int, ...] = (4000, 12000, 8000, 8000, 8000),
          batch: int = 32, lr: float = 1e-3, threads: int = 1, snapshot_every: int = 0,
          decoder_steps: int = 3000, device: str = "cpu",
          unet_channels: tuple[int, ...] = UNET_CHANNELS,
          attention_from: int = ATTENTION_FROM, locality_steps: int = 0,
          start_from: str | None = None, binding: float = 0.0,
          grounding: float = 0.0, unsaid: float = 0.0) -> dict:
    """Train every part and save a StableDiffusionPipeline folder at `out`; returns stats.

    Every finished phase is cached beside `out` (VAE phases, the polished decoder, the
    latents, each UNet phase), so a rerun with more phases picks up after the last one; a
    UNet of other channels or attention levels keeps caches of its own.

    `start_from` (a pipeline folder or a built-in name) continues a trained model instead:
    its VAE, UNet, text encoder and tokenizer are loaded, the VAE phases and the decoder
    polish are skipped, and the locality phase and `unet_steps` train on from there (the
    UNet phases' learning rate is `lr` halved each phase, as from scratch)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", flush=True)

    data, scenes = world_dataset(images, seed)
    log(f"drew {len(scenes)} scenes")
    if start_from:
        models, start_tag = _started(out, start_from, log)
        vae_cache = out.parent / f".{out.name}-{start_tag}"
        vae_steps, decoder_steps = (), 0
        unet_channels = tuple(models["unet"].config.block_out_channels)
        attention_from = [b.startswith("CrossAttn")
                          for b in models["unet"].config.down_block_types].index(True)
    else:
        models = build_models(out / "tokenizer", unet_channels, attention_from)
    models["vae"].to(device)
    # the VAE trains in phases (each a cosine schedule, the learning rate halved each time);
    # each phase is kept on disk, so a restarted run picks up after the last finished one
    from diffusers import AutoencoderKL

    for phase in range(len(vae_steps)):
        done = "+".join(str(n) for n in vae_steps[:phase + 1])
        vae_cache = out.parent / f".{out.name}-vae-{seed}-{images}-{done}"
        if (vae_cache / "config.json").exists():
            models["vae"] = AutoencoderKL.from_pretrained(vae_cache).to(device)
            log(f"vae loaded from {vae_cache}")
            continue
        train_vae(models["vae"], data, vae_steps[phase], batch, log, lr=2e-3 / 2 ** phase)
        models["vae"].save_pretrained(vae_cache)
    if decoder_steps:
        # the encoder is done (the latents below come from it); the decoder is polished on
        # whole images, which changes no latent
        decoder_cache = vae_cache.parent / f"{vae_cache.name}-decoder-{decoder_steps}"
        if (decoder_cache / "config.json").exists():
            models["vae"] = AutoencoderKL.from_pretrained(decoder_cache).to(device)
            log(f"vae with its polished decoder loaded from {decoder_cache}")
        else:
            train_decoder(models["vae"], data, decoder_steps, batch, log)
            models["vae"].save_pretrained(decoder_cache)
    if locality_steps:
        # encoder and decoder learn that a shape's latents are its own (train_locality); the
        # latents change, so the latents and UNet caches below are this VAE's own
        polished = decoder_cache if decoder_steps else vae_cache
        local_cache = polished.parent / f"{polished.name}-local-{locality_steps}"
        if (local_cache / "config.json").exists():
            models["vae"] = AutoencoderKL.from_pretrained(local_cache).to(device)
            log(f"local vae loaded from {local_cache}")
        else:
            train_locality(models["vae"], locality_steps, log, seed,
                           pool=max(LOCALITY_BATCH, min(4000, images // 4)))
            models["vae"].save_pretrained(local_cache)
        vae_cache = local_cache
    make_deterministic(models["vae"])
    vae_time = time.time() - started
    latent_cache = vae_cache.parent / f"{vae_cache.name}-latents.pt"
    if latent_cache.exists():
        latents = torch.load(latent_cache)
    else:
        with torch.no_grad():
            latents = torch.cat([models["vae"].encode(_to_float(data[i:i + 256]).to(device))
                                 .latent_dist.mode().cpu() for i in range(0, len(data), 256)])
        torch.save(latents, latent_cache)
    scale = float(1.0 / latents.std())
    models["vae"].register_to_config(scaling_factor=scale)
    latents = latents * scale
    log(f"latents {tuple(latents.shape)} scaling_factor {scale:.4f}")
    def save(folder: Path) -> None:
        sampler = DDIMScheduler(**NOISE, clip_sample=False, set_alpha_to_one=False,
                                steps_offset=1, timestep_spacing="trailing")
        pipe = StableDiffusionPipeline(
            vae=models["vae"], text_encoder=models["text_encoder"],
            tokenizer=models["tokenizer"], unet=models["unet"], scheduler=sampler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)

    def snapshot(step: int) -> None:
        save(out.parent / f"{out.name}-step{step}")
        log(f"snapshot {out.name}-step{step}")

    # the UNet and text encoder train in phases too (each from the last one's EMA weights,
    # a fresh warm-up and cosine, the learning rate halved); each finished phase is kept
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    models["unet"].to(device)
    models["text_encoder"].to(device)
    tag = architecture_tag(unet_channels, attention_from) + \
        (f"-l{locality_steps}" if locality_steps else "") + \
        (f"-{start_tag}" if start_from else "") + (f"-b{binding:g}" if binding else "") + \
        (f"-g{grounding:g}" if grounding else "") + (f"-u{unsaid:g}" if unsaid else "")
    for phase in range(len(unet_steps)):
        done = "+".join(str(n) for n in unet_steps[:phase + 1])
        cache = out.parent / f".{out.name}-unet-{seed}-{images}-{done}{tag}"
        if (cache / "unet" / "config.json").exists():
            models["unet"] = UNet2DConditionModel.from_pretrained(cache / "unet").to(device)
            models["text_encoder"] = CLIPTextModel.from_pretrained(
                cache / "text_encoder").to(device)
            log(f"unet and text encoder loaded from {cache}")
            continue
        train_unet(models, latents, scenes, unet_steps[phase], batch, lr / 2 ** phase, log,
                   snapshot, snapshot_every, binding=binding, grounding=grounding,
                   unsaid=unsaid)
        models["unet"].save_pretrained(cache / "unet")
        models["text_encoder"].save_pretrained(cache / "text_encoder")
    save(out)
    stats = {"seed": seed, "images": images, "vae_steps": vae_steps, "device": device,
             "unet_channels": list(unet_channels), "attention_from": attention_from,
             "decoder_steps": decoder_steps, "locality_steps": locality_steps,
             "unet_steps": unet_steps, "start_from": start_from, "binding": binding,
             "grounding": grounding, "unsaid": unsaid,
             "batch": batch, "lr": lr, "vae_seconds": round(vae_time, 1),
             "total_seconds": round(time.time() - started, 1),
             "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
    log(f"saved {out}: {stats}")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=16000)
    parser.add_argument("--vae-steps", type=lambda v: tuple(int(n) for n in v.split("+")),
                        default=(1500, 800), help="steps of each VAE phase, like 1500+1000")
    parser.add_argument("--unet-steps", type=lambda v: tuple(int(n) for n in v.split("+")),
                        default=(4000, 12000, 8000, 8000, 8000),
                        help="steps of each UNet phase, like 4000+2000")
    parser.add_argument("--decoder-steps", type=int, default=3000,
                        help="then the decoder alone on whole images (latents unchanged)")
    parser.add_argument("--locality-steps", type=int, default=0,
                        help="after the VAE phases, teach it that a shape's latents are its "
                             "own (train_locality; default 0, as shipped)")
    parser.add_argument("--start-from", default=None,
                        help="continue a trained pipeline (folder or built-in name, like "
                             "shapes-sd): no VAE phases, then --locality-steps and "
                             "--unet-steps from its weights")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="also save the EMA model every N steps (OUT-stepN) to judge it")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--unet-channels", type=lambda v: tuple(int(n) for n in v.split(",")),
                        default=UNET_CHANNELS, help="channels per UNet level, like 48,96,96")
    parser.add_argument("--attention-from", type=int, default=ATTENTION_FROM,
                        help="cross-attention at every level from this one down "
                             "(0: the 16x16 level too)")
    parser.add_argument("--binding", type=float, default=0.0,
                        help="weight of a loss that makes the text encoder tie each shape "
                             "phrase's place words to its shape (binding_loss; default 0)")
    parser.add_argument("--grounding", type=float, default=0.0,
                        help="weight of a loss that keeps each shape phrase's cross-attention "
                             "inside the shape's box (grounding_loss; default 0)")
    parser.add_argument("--unsaid", type=float, default=0.0,
                        help="leave each of size, place and background out of a training "
                             "caption at this rate (default 0: captions say everything)")
    args = parser.parse_args()
    if not 0 <= args.unsaid <= 1:
        parser.error(f"--unsaid {args.unsaid}: a rate, from 0 to 1")
    if not 0 <= args.attention_from < len(args.unet_channels):
        parser.error(f"--attention-from {args.attention_from}: the UNet has levels 0 to "
                     f"{len(args.unet_channels) - 1}")
    if any(c % 16 for c in args.unet_channels):
        parser.error(f"--unet-channels {args.unet_channels}: each must divide by 16 "
                     "(the GroupNorm groups)")
    train(args.out, args.seed, args.images, args.vae_steps, args.unet_steps, args.batch,
          args.lr, args.threads, args.snapshot_every, args.decoder_steps, args.device,
          args.unet_channels, args.attention_from, args.locality_steps, args.start_from,
          args.binding, args.grounding, args.unsaid)


if __name__ == "__main__":
    main()
