"""Train the shapes world's CLIP (`shapes-clip`) from a seed, and judge it with the world's truth.

    python -m tools.shapes.train_clip OUT [--seed 0] [--steps 2000] [--batch 64]
    python -m tools.shapes.train_clip OUT --eval-only

A standard transformers CLIPModel (64-wide towers, 64 px images in 8 px patches) with the
world's own BPE tokenizer, trained on `use: shapes` triplets: each batch holds B scenes and
their one-attribute edits, so the contrastive loss has to tell a red circle from a blue one
(hard negatives), not just one scene from another. A second term asks the image change to point
the way the caption change does, cos(E(after) - E(before), T(output) - T(input)): that is
the directional similarity the `clip` filter thresholds, and a model this small does not pick
it up from contrastive pairs alone the way web-scale CLIP does. Images get light Gaussian
noise so rendered (not drawn) images still land near their captions. The temperature is
learned, as in CLIP (a fixed 0.07 was tried: image similarity of true edits fell from 0.62 to
0.55).

The evaluation prints, on held-out scenes: caption retrieval, own caption vs the edited one,
and the filter's scores (CLIP_dir / CLIP_im / CLIP_out) for true pairs against broken ones.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from editkit.builtins.shapes.captions import leave_unsaid
from editkit.builtins.shapes.pairs import BROKEN, broken_afters, drawn, world_pairs
from editkit.builtins.shapes.world import UNSAID
from tools.shapes.encoder_script import (
    finish,
    optimiser,
    pixel_values,
    print_table,
    run,
    start,
    update,
)
from tools.shapes.train_world import world_words

IMAGE_SIZE = 64
TRAIN_SEED = 10_000  # triplet seeds for training and held-out evaluation, far from recipe seeds
HELD_OUT_SEED = 20_000


def build_clip(path: Path) -> tuple[Any, Any]:
    """A fresh CLIPModel and its processor; the tokenizer is written to `path` first."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from editkit.models.tiny import build_tiny_tokenizer

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
    return model, CLIPProcessor(image_processor=images, tokenizer=tokenizer)


def pair_captions(pairs: list[Any], rate: float, rng: random.Random) -> list[str]:
    """The befores' captions, then the afters', each pair's leaving each of UNSAID out at
    `rate` (both alike, never what its edit needs said), as `use: shapes` may."""
    unsaid = [leave_unsaid(p.kind, list(UNSAID), rate, rng) if rate else frozenset()
              for p in pairs]
    return [p.before.caption(u) for p, u in zip(pairs, unsaid)] + \
        [p.after.caption(u) for p, u in zip(pairs, unsaid)]


def train(out: Path, seed: int = 0, pairs: int = 4000, steps: int = 2000, batch: int = 64,
          lr: float = 1e-3, noise: float = 0.1, direction_weight: float = 1.0,
          threads: int = 1, unsaid: float = 0.0) -> dict:
    """Train from `seed` and save to `out`; returns the training stats. `unsaid` > 0: each
    step's captions leave size, place and background out at that rate (`pair_captions`)."""
    import torch
    import torch.nn.functional as F

    settings = dict(seed=seed, pairs=pairs, steps=steps, batch=batch, lr=lr, noise=noise,
                    direction_weight=direction_weight, threads=threads, unsaid=unsaid)
    out, started = start(out, seed, threads)
    data = world_pairs(pairs, TRAIN_SEED + seed)
    batch = min(batch, len(data))  # a smoke run with fewer pairs than a batch
    model, processor = build_clip(out)
    pixels = pixel_values(processor, drawn([p.before for p in data] + [p.after for p in data]))
    rng = random.Random(f"editkit-shapes-clip-unsaid:{seed}")
    tokens = processor.tokenizer(pair_captions(data, 0, rng), padding="longest",
                                 return_tensors="pt")
    ids, mask = tokens.input_ids, tokens.attention_mask
    print(f"[{time.time() - started:6.1f}s] {len(data)} pairs drawn, {ids.shape[1]} tokens max",
          flush=True)
    adam, schedule = optimiser(model, lr, 1e-2, steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        chosen = torch.randperm(len(data), generator=generator)[:batch]
        index = torch.cat([chosen, chosen + len(data)])  # befores, then their afters
        images = pixels[index] + noise * torch.randn(pixels[index].shape, generator=generator)
        if unsaid:  # this step's captions, each pair's saying less at random
            said = processor.tokenizer(
                pair_captions([data[i] for i in chosen.tolist()], unsaid, rng),
                padding="longest", return_tensors="pt")  # shorter: padded to `ids`' width
            width = ids.shape[1] - said.input_ids.shape[1]
            step_ids = F.pad(said.input_ids, (0, width), value=processor.tokenizer.pad_token_id)
            step_mask = F.pad(said.attention_mask, (0, width), value=0)
        else:
            step_ids, step_mask = ids[index], mask[index]
        output = model(input_ids=step_ids, attention_mask=step_mask, pixel_values=images)
        same = (step_ids[:, None, :] == step_ids[None, :, :]).all(-1).float()
        targets = same / same.sum(1, keepdim=True)  # a caption twice in a batch: both positive
        contrastive = (F.cross_entropy(output.logits_per_image, targets)
                       + F.cross_entropy(output.logits_per_text, targets)) / 2
        image_step = output.image_embeds[batch:] - output.image_embeds[:batch]
        text_step = output.text_embeds[batch:] - output.text_embeds[:batch]
        direction = 1 - F.cosine_similarity(image_step, text_step, dim=-1).mean()
        loss = contrastive + direction_weight * direction
        update(adam, schedule, loss)
        if step % 100 == 0 or step == steps - 1:
            print(f"[{time.time() - started:6.1f}s] step {step} contrastive "
                  f"{contrastive.item():.4f} direction {direction.item():.4f}", flush=True)
    return finish(out, model, processor, settings, started)


def pair_scores(model: str, count: int = 200, seed: int = HELD_OUT_SEED,
                unsaid: float = 0.0) -> dict[str, Any]:
    """Mean CLIP scores (through the `clip` filter's own encoder) of true and broken pairs of
    held-out `use: shapes` triplets, and how often the true pair's direction beats each broken
    one. Captions are always the triplet's: that is what the filter compares images against
    (`unsaid` > 0: leaving size, place and background out at that rate, as `use: shapes`
    with `unsaid` writes them)."""
    from editkit.models.encoders import ClipEncoder, clip_pair_scores

    encoder = ClipEncoder(model, device="cpu")
    rng = random.Random(f"editkit-shapes-clip-pairs:{seed}")
    pairs = world_pairs(count, seed)
    captions = pair_captions(pairs, unsaid, random.Random(f"editkit-shapes-unsaid:{seed}"))
    afters = {"true": [p.after for p in pairs]}
    broken = [broken_afters(p, rng) for p in pairs]
    afters.update({name: [b[name] for b in broken] for name in BROKEN})
    befores = encoder.encode_images(drawn([p.before for p in pairs]))
    texts = encoder.embed_texts(captions)
    scores: dict[str, list[dict[str, float]]] = {}
    for name, scenes in afters.items():
        images = encoder.encode_images(drawn(scenes))
        scores[name] = [clip_pair_scores(b, a, texts[captions[n]], texts[captions[n + count]])
                        for n, (b, a) in enumerate(zip(befores, images))]
    for kind in sorted({p.kind for p in pairs}):
        scores[f"true: {kind}"] = [s for s, p in zip(scores["true"], pairs) if p.kind == kind]
    means = {name: {key: sum(s[key] for s in rows) / len(rows) for key in rows[0]}
             for name, rows in scores.items()}
    for name, rows in scores.items():  # the low tail of image similarity, for min_image
        means[name]["clip_image_p5"] = sorted(s["clip_image"] for s in rows)[len(rows) // 20]
    wins = {name: sum(t["clip_direction"] > b["clip_direction"]
                      for t, b in zip(scores["true"], scores[name])) / count for name in BROKEN}
    return {"means": means, "direction_wins": wins}


def retrieval(model: str, count: int = 200, seed: int = HELD_OUT_SEED) -> dict[str, float]:
    """Top-1 caption retrieval among `count` held-out scenes (both ways), and how often an
    image prefers its own caption to its one-attribute edit's (per edit kind; chance 0.5)."""
    import numpy as np

    from editkit.models.encoders import ClipEncoder, normalise

    encoder = ClipEncoder(model, device="cpu")
    pairs = world_pairs(count, seed)
    scenes = list(dict.fromkeys(p.before for p in pairs))
    images = normalise(encoder.encode_images(drawn(scenes)))
    captions = encoder.embed_texts(s.caption() for s in scenes)
    texts = normalise(np.stack([captions[s.caption()] for s in scenes]))
    similarity = images @ texts.T
    truth = np.arange(len(scenes))
    table = {"image->caption": float((similarity.argmax(1) == truth).mean()),
             "caption->image": float((similarity.argmax(0) == truth).mean())}
    after_images = normalise(encoder.encode_images(drawn([p.after for p in pairs])))
    before_images = normalise(encoder.encode_images(drawn([p.before for p in pairs])))
    texts = encoder.embed_texts(t for p in pairs for t in (p.before.caption(), p.after.caption()))
    hits: dict[str, list[float]] = {}
    for p, before, after in zip(pairs, before_images, after_images):
        own, edited = normalise(np.stack([texts[p.before.caption()], texts[p.after.caption()]]))
        hits.setdefault(p.kind, []).append(float(before @ own > before @ edited))
        hits[p.kind].append(float(after @ edited > after @ own))
    for kind, values in sorted(hits.items()):
        table[f"own vs edited: {kind}"] = sum(values) / len(values)
    return table


def report(model: str, count: int = 200) -> None:
    """Print the held-out tables."""
    table = retrieval(model, count)
    print_table(f"caption retrieval on {count} held-out scenes", ["test", "accuracy"],
                [[k, v] for k, v in table.items()])
    for unsaid, said in ((0.0, "saying everything"),
                         (0.5, "leaving size, place, background out at 0.5")):
        result = pair_scores(model, count, unsaid=unsaid)
        rows = [[name, m["clip_direction"], m["clip_image"], m["clip_image_p5"],
                 m["clip_text_after"], m["clip_text_before"],
                 result["direction_wins"].get(name, "")]
                for name, m in result["means"].items()]
        print_table(f"filter scores of {count} held-out `use: shapes` pairs (mean; p5: 5th "
                    f"percentile; captions the triplet's, {said})",
                    ["after image", "CLIP_dir", "CLIP_im", "CLIP_im p5", "CLIP_out", "CLIP_in",
                     "true dir wins"], rows)


def main() -> None:
    run(__doc__, train, report, steps=2000, batch=64, captions=True)


if __name__ == "__main__":
    main()
