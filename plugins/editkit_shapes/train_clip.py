"""Train a small CLIPModel on the shapes world from a seed, contrastively on world images and
their captions, and judge it with the world's truth: given an image, does it prefer its own
caption over the same caption with one attribute changed?

    python -m editkit_shapes.train_clip OUT [--seed 0] [--steps 600] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from .captions import edit_scene
from .train_world import world_dataset, world_words
from .world import draw, random_scene

IMAGE_SIZE = 64


def build_clip(path: Path) -> tuple[Any, Any]:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from editkit.testing.tiny import build_tiny_tokenizer

    build_tiny_tokenizer(path, world_words())
    tokenizer = CLIPTokenizer.from_pretrained(path)
    vocab = len(tokenizer)
    text = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
                bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=8, projection_dim=64)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = CLIPProcessor(image_processor=images, tokenizer=tokenizer)
    return model, processor


def _pixels(processor: Any, images: list[Any]) -> Any:
    return processor(images=images, return_tensors="pt").pixel_values


def train(out: Path, seed: int = 0, count: int = 6000, steps: int = 600, batch: int = 64,
          lr: float = 1e-3, threads: int = 2) -> dict:
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data, captions = world_dataset(count, seed + 1)
    model, processor = build_clip(out)
    pictures = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in data]
    pixels = _pixels(processor, pictures)
    ids = processor.tokenizer(captions, padding="max_length", max_length=32,
                              truncation=True, return_tensors="pt").input_ids
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    model.train()
    for step in range(steps):
        index = torch.randperm(len(ids))[:batch]
        # the same caption can occur twice in a batch: treat both as positives
        same = (ids[index][:, None, :] == ids[index][None, :, :]).all(-1).float()
        output = model(input_ids=ids[index], pixel_values=pixels[index])
        targets = same / same.sum(1, keepdim=True)
        loss = (torch.nn.functional.cross_entropy(output.logits_per_image, targets)
                + torch.nn.functional.cross_entropy(output.logits_per_text, targets)) / 2
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"[{time.time() - started:7.1f}s] clip step {step} loss {loss.item():.4f}",
                  flush=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    stats = {"seed": seed, "images": count, "steps": steps, "batch": batch, "lr": lr,
             "seconds": round(time.time() - started, 1),
             "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
    (out / "train_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def attribute_accuracy(model: Any, processor: Any, count: int = 300, seed: int = 0) -> dict:
    """For each edit kind: how often the image scores its own caption above the caption of
    the same scene with that one attribute edited (chance: 0.5)."""
    import torch

    rng = random.Random(f"editkit-shapes-clip-eval:{seed}")
    results: dict[str, list[float]] = {}
    for _ in range(count):
        scene = random_scene(rng)
        kind = rng.choice(["colour", "kind", "size", "background", "add", "remove"])
        edited = edit_scene(scene, kind, rng)
        if edited is None:
            continue
        texts = processor.tokenizer([scene.caption(), edited[0].caption()], padding=True,
                                    return_tensors="pt")
        with torch.no_grad():
            logits = model(input_ids=texts.input_ids, attention_mask=texts.attention_mask,
                           pixel_values=_pixels(processor, [draw(scene)])).logits_per_image[0]
        results.setdefault(kind, []).append(float(logits[0] > logits[1]))
    table = {k: sum(v) / len(v) for k, v in sorted(results.items())}
    table["all"] = sum(sum(v) for v in results.values()) / sum(len(v) for v in results.values())
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args()
    from transformers import CLIPModel, CLIPProcessor

    from editkit.models import load

    if not args.eval_only:
        print(train(args.out, args.seed, steps=args.steps, batch=args.batch))
    model = load(CLIPModel, args.out, "CLIP model")
    processor = load(CLIPProcessor, args.out, "CLIP processor")
    table = attribute_accuracy(model, processor)
    print("own caption preferred over a one-attribute edit (chance 0.5):")
    for key, value in table.items():
        print(f"  {key:12} {value:.3f}")


if __name__ == "__main__":
    main()
