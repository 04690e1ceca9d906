"""Train the shapes world's DINOv2-style encoder (`shapes-dino`) from a seed, and judge it.

    python -m tools.shapes.train_dino OUT [--seed 0] [--steps 1200] [--batch 48]
    python -m tools.shapes.train_dino OUT --eval-only

A standard transformers Dinov2Model (64 wide, 64 px images in 8 px patches) saved with its
BitImageProcessor, so the `dino` filter loads it like facebook/dinov2-base. The filter reads
the cosine similarity of CLS features as "the edit kept the scene's structure", so that
geometry is what we train, contrastively across edits: a scene and its `use: shapes` edit
(another colour, size, kind or background, a shape added or removed) are a positive pair; the
other scenes of the batch and, as hard negatives, the same shapes moved to other cells are the
negatives. Why not supervised heads for every attribute (per-cell kind/colour/size,
background): they make the CLS token encode colour and kind as much as layout, and an edit
changes those by design, so the cosine would fall for good pairs by however many dimensions
those heads happened to take. One auxiliary head on the CLS token (dropped when saving)
predicts which of the nine cells hold a shape: occupancy is what every attribute edit keeps,
and without it the CLS token settled on a bag of colours (measured: the same shapes moved to
other cells scored 0.996). The first 300 steps train that head alone (joined from the start,
the contrastive loss won and the occupancy loss stayed at chance for 500 steps; alone it falls
to 0.13 by step 200). Position embeddings start at std 0.5 instead of 0.02: at 0.02 a ViT this
small did not get position into its CLS token within the step budget (occupancy loss flat at
chance for 300 steps; at 0.5 it fell to 0.04). Both views get a shift of up to two pixels and
light noise: rendered shapes are not exactly where the world draws them.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from editkit.builtins.shapes.pairs import drawn, moved, world_pairs
from editkit.builtins.shapes.world import COLUMNS, ROWS, Scene, random_scene
from tools.shapes.encoder_script import (
    finish,
    optimiser,
    pixel_values,
    print_table,
    run,
    start,
    update,
)

IMAGE_SIZE = 64
TRAIN_SEED = 30_000  # triplet seeds for training and held-out evaluation, far from recipe seeds
HELD_OUT_SEED = 40_000


def build_dino() -> tuple[Any, Any]:
    """A fresh Dinov2Model and the image processor the filter will load beside it."""
    import torch
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    config = Dinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                          mlp_ratio=2, image_size=IMAGE_SIZE, patch_size=8)
    processor = BitImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)
    model = Dinov2Model(config)
    with torch.no_grad():  # see the module docstring: position must be loud from the start
        model.embeddings.position_embeddings.normal_(0.0, 0.5)
    return model, processor


def _jitter(pixels: Any, generator: Any, shift: int, noise: float) -> Any:
    """Each image shifted by up to `shift` pixels (the border wraps: it is background) plus
    Gaussian noise."""
    import torch

    out = torch.empty_like(pixels)
    offsets = torch.randint(-shift, shift + 1, (len(pixels), 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = torch.roll(pixels[i], (dy, dx), dims=(1, 2))
    return out + noise * torch.randn(out.shape, generator=generator)


def occupancy(scene: Scene) -> list[float]:
    """Which of the nine cells hold a shape: the layout, untouched by attribute edits."""
    cells = scene.cells()
    return [float((row, column) in cells) for row in ROWS for column in COLUMNS]


def train(out: Path, seed: int = 0, pairs: int = 4000, steps: int = 1200, batch: int = 48,
          lr: float = 1e-3, temperature: float = 0.1, shift: int = 2, noise: float = 0.1,
          layout_weight: float = 1.0, layout_steps: int = 300, threads: int = 1) -> dict:
    """Train from `seed` and save to `out`; returns the training stats."""
    import torch
    import torch.nn.functional as F

    settings = dict(seed=seed, pairs=pairs, steps=steps, batch=batch, lr=lr,
                    temperature=temperature, shift=shift, noise=noise,
                    layout_weight=layout_weight, layout_steps=layout_steps, threads=threads)
    out, started = start(out, seed, threads)
    rng = random.Random(f"editkit-shapes-dino-train:{seed}")
    data = world_pairs(pairs, TRAIN_SEED + seed)
    batch = min(batch, len(data))  # a smoke run with fewer pairs than a batch
    model, processor = build_dino()
    scenes = ([p.before for p in data] + [p.after for p in data]
              + [moved(p.before, rng) for p in data])
    pixels = pixel_values(processor, drawn(scenes))
    occupied = torch.tensor([occupancy(s) for s in scenes])
    print(f"[{time.time() - started:6.1f}s] {len(data)} pairs drawn", flush=True)
    head = torch.nn.Linear(model.config.hidden_size, len(occupied[0]))  # not saved
    adam, schedule = optimiser(torch.nn.ModuleList([model, head]), lr, 5e-2, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    n = len(data)
    for step in range(steps):
        chosen = torch.randperm(n, generator=generator)[:batch]
        index = torch.cat([chosen, chosen + n, chosen + 2 * n])  # before, edited, moved
        images = _jitter(pixels[index], generator, shift, noise)
        cls = model(pixel_values=images).pooler_output
        layout = F.binary_cross_entropy_with_logits(head(cls), occupied[index])
        features = F.normalize(cls, dim=-1)
        anchor, positive, hard = features[:batch], features[batch:2 * batch], features[2 * batch:]
        candidates = torch.cat([positive, hard])  # anchor i's positive is row i
        targets = torch.arange(batch)
        contrastive = (F.cross_entropy(anchor @ candidates.T / temperature, targets)
                       + F.cross_entropy(positive @ torch.cat([anchor, hard]).T / temperature,
                                         targets)) / 2
        loss = layout_weight * layout + (contrastive if step >= layout_steps else 0.0)
        update(adam, schedule, loss)
        if step % 100 == 0 or step == steps - 1:
            print(f"[{time.time() - started:6.1f}s] step {step} contrastive "
                  f"{contrastive.item():.4f} layout {layout.item():.4f}", flush=True)
    return finish(out, model, processor, settings, started)


def similarities(model: str, count: int = 200, seed: int = HELD_OUT_SEED) -> dict[str, list]:
    """Cosine similarity (through the `dino` filter's own encoder) of held-out scenes against
    their edits (by edit kind), the same shapes moved to other cells, and unrelated scenes."""
    from editkit.models.encoders import DinoEncoder, cosine

    encoder = DinoEncoder(model, device="cpu")
    rng = random.Random(f"editkit-shapes-dino-pairs:{seed}")
    pairs = world_pairs(count, seed)
    others = {"moved": [moved(p.before, rng) for p in pairs],
              "unrelated": [random_scene(rng) for _ in pairs]}
    befores = encoder.encode_images(drawn([p.before for p in pairs]))
    afters = encoder.encode_images(drawn([p.after for p in pairs]))
    table: dict[str, list[float]] = {}
    for p, b, a in zip(pairs, befores, afters):
        table.setdefault(f"edited: {p.kind}", []).append(cosine(b, a))
    table = dict(sorted(table.items()))
    table["edited: all"] = [v for values in table.values() for v in values]
    for name, scenes in others.items():
        table[name] = [cosine(b, o) for b, o in zip(befores, encoder.encode_images(drawn(scenes)))]
    return table


def report(model: str, count: int = 200) -> None:
    """Print mean similarity and the pass rate at a few `min_similarity` thresholds."""
    table = similarities(model, count)
    thresholds = [0.3, 0.5, 0.7, 0.9]
    rows = [[name, sum(v) / len(v), min(v)] + [sum(x >= t for x in v) / len(v)
                                              for t in thresholds]
            for name, v in table.items()]
    print_table(f"DINO CLS cosine on {count} held-out scenes",
                ["pair", "mean", "min"] + [f"pass@{t}" for t in thresholds], rows)


def main() -> None:
    run(__doc__, train, report, steps=1200, batch=48)


if __name__ == "__main__":
    main()
