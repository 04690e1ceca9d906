import random

from editkit.builtins.shapes.oracle import read_scene, same_scene
from editkit.builtins.shapes.world import Scene, Shape, draw, random_scene


def test_oracle_reads_back_clean_renders():
    rng = random.Random(0)
    scenes = [random_scene(rng) for _ in range(600)]
    right = sum(same_scene(read_scene(draw(s)), s) for s in scenes)
    assert right / len(scenes) >= 0.99


def test_oracle_sees_a_single_changed_attribute():
    scene = Scene((Shape("circle", "red", "large", "top", "left"),
                   Shape("square", "blue", "small", "bottom", "right")), "white")
    for change in ({"colour": "green"}, {"kind": "triangle"}, {"size": "small"},
                   {"row": "middle"}):
        edited = scene.with_shape(0, **change)
        seen = read_scene(draw(edited))
        assert same_scene(seen, edited) and not same_scene(seen, scene)


def test_caption_names_every_attribute():
    scene = Scene((Shape("triangle", "yellow", "small", "middle", "center"),), "black")
    assert scene.caption() == "a small yellow triangle in the center on a black background"
    assert scene.caption(frozenset({"size", "background"})) == \
        "a yellow triangle in the center"
    assert scene.caption(frozenset({"place"})) == "a small yellow triangle on a black background"


def test_shapes_triplets_may_leave_attributes_unsaid_but_never_the_edited_one():
    from editkit.builtins.shapes.captions import ShapesCaptions, scene_from_dict
    from editkit.plugin.kinds import CaptionJob

    full = next(iter(ShapesCaptions(ShapesCaptions.Options(batch=200)).generate(
        CaptionJob(count=200, seed=5))))
    options = ShapesCaptions.Options(batch=200, unsaid=["size", "place", "background"],
                                     unsaid_rate=0.5)
    triplets = next(iter(ShapesCaptions(options).generate(CaptionJob(count=200, seed=5))))
    left_out = {"size": 0, "place": 0, "background": 0}
    for plain, t in zip(full, triplets):
        # the same scenes and edits as without `unsaid`: only the captions say less
        assert {k: v for k, v in plain.items() if k not in ("input", "output")} == \
            {k: v for k, v in t.items() if k not in ("input", "output")}
        before, after = scene_from_dict(t["scene_before"]), scene_from_dict(t["scene_after"])
        words = t["input"].split()
        gone = {"size": not {"small", "large"} & set(words),
                "place": not {"top", "middle", "bottom", "left", "right", "center"} &
                set(words),
                "background": "background" not in words}
        assert t["input"] == before.caption(frozenset(u for u, g in gone.items() if g))
        assert t["output"] == after.caption(frozenset(u for u, g in gone.items() if g))
        needed = {"size": "size", "background": "background", "add": "place"}
        assert not gone.get(needed.get(t["edit_kind"], ""), False), t
        for u, g in gone.items():
            left_out[u] += g
    assert all(40 < n < 100 for n in left_out.values()), left_out


def test_shapes_triplets_are_one_true_edit_each():
    from editkit.builtins.shapes.captions import ShapesCaptions, scene_from_dict
    from editkit.captions.checks import check_triplet
    from editkit.plugin.kinds import CaptionJob

    generator = ShapesCaptions(ShapesCaptions.Options(batch=50))
    triplets = next(iter(generator.generate(CaptionJob(count=50, seed=3))))
    assert {t["edit_kind"] for t in triplets} == {"colour", "kind", "size", "background",
                                                 "add", "remove"}
    for t in triplets:
        assert check_triplet(t) is None, t
        before, after = scene_from_dict(t["scene_before"]), scene_from_dict(t["scene_after"])
        assert before.caption() == t["input"] and after.caption() == t["output"]
        assert not same_scene(before, after)
        # the oracle sees exactly the stated change in clean renders
        assert same_scene(read_scene(draw(after)), after)
    assert triplets == next(iter(generator.generate(CaptionJob(count=50, seed=3))))


def test_decoder_polish_changes_the_decoder_and_no_latent(tmp_path):
    import torch

    from tools.shapes.train_world import build_models, train_decoder, world_dataset

    torch.manual_seed(0)
    vae = build_models(tmp_path / "tok")["vae"]
    images, _ = world_dataset(8, seed=0)
    x = images[:2].float() / 127.5 - 1
    with torch.no_grad():
        latents, decoded = vae.encode(x).latent_dist.mode(), vae.decode(
            vae.encode(x).latent_dist.mode()).sample
    lines = []
    train_decoder(vae, images, steps=3, batch=2, log=lines.append)
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mode(), latents)  # the UNet stays valid
        assert not torch.allclose(vae.decode(latents).sample, decoded)
    assert lines[0].startswith("decoder start: oracle") and "2 held-back images" in lines[0]
    assert all(p.requires_grad for p in vae.parameters())  # left trainable, as it was


def test_eval_world_pairs_wanted_and_read_shapes_one_to_one():
    from tools.shapes.eval_world import compare

    want = Scene((Shape("circle", "red", "large", "top", "left"),
                  Shape("square", "blue", "small", "bottom", "right")), "white")
    # the circle drawn in the wrong cell and as a square: its colour and size still count
    seen = Scene((Shape("square", "red", "large", "middle", "center"),
                  Shape("square", "blue", "small", "bottom", "right")), "white")
    scores = compare(want, seen)
    assert scores["kind"] == 0.5 and scores["colour"] == 1.0 and scores["size"] == 1.0
    assert scores["position"] == 0.5 and scores["all"] == 0.0
    # one read shape cannot stand for both wanted shapes
    two = Scene((Shape("circle", "red", "large", "top", "left"),
                 Shape("circle", "blue", "small", "bottom", "right")), "white")
    lone = Scene((Shape("circle", "red", "large", "top", "left"),), "white")
    assert compare(two, lone)["kind"] == 0.5 and compare(two, lone)["colour"] == 0.5
    assert compare(want, want) == {"background": 1.0, "kind": 1.0, "colour": 1.0,
                                   "size": 1.0, "position": 1.0, "all": 1.0}


def test_min_shapes_sets_how_many_shapes_a_triplet_starts_from():
    import pytest
    from pydantic import ValidationError

    from editkit.builtins.shapes.captions import ShapesCaptions
    from editkit.plugin.kinds import CaptionJob

    generator = ShapesCaptions(ShapesCaptions.Options(batch=40, min_shapes=2,
                                                      edits=["colour", "kind"]))
    triplets = next(iter(generator.generate(CaptionJob(count=40, seed=1))))
    assert {len(t["scene_before"]["shapes"]) for t in triplets} == {2}
    with pytest.raises(ValidationError, match="min_shapes 3 is above max_shapes 2"):
        ShapesCaptions.Options(min_shapes=3)


def test_train_world_other_unet_architecture_has_its_own_caches_and_loads(tmp_path):
    import json

    from diffusers import StableDiffusionPipeline

    from tools.shapes.train_world import train

    out = tmp_path / "sd"
    stats = train(out, images=32, vae_steps=(2,), decoder_steps=2, unet_steps=(2, 2), batch=4,
                  unet_channels=(32, 48, 48), attention_from=0, locality_steps=2)
    assert stats["unet_channels"] == [32, 48, 48] and stats["attention_from"] == 0
    assert stats["locality_steps"] == 2
    caches = sorted(p.name for p in tmp_path.iterdir() if "-unet-" in p.name)
    assert caches == [".sd-unet-0-32-2+2-c32.48.48-a0-l2", ".sd-unet-0-32-2-c32.48.48-a0-l2"]
    assert (tmp_path / ".sd-vae-0-32-2-decoder-2-local-2" / "config.json").exists()
    assert (tmp_path / ".sd-vae-0-32-2-decoder-2-local-2-latents.pt").exists()
    pipe = StableDiffusionPipeline.from_pretrained(out)
    config = pipe.unet.config
    assert tuple(config.block_out_channels) == (32, 48, 48)
    assert config.down_block_types[0] == "CrossAttnDownBlock2D"  # attention at 16x16 too
    assert config.up_block_types[-1] == "CrossAttnUpBlock2D"
    image = pipe("a red circle at the top left on a white background", num_inference_steps=2,
                 height=64, width=64, output_type="pil").images[0]
    assert image.size == (64, 64)
    assert json.loads((out / "train_stats.json").read_text())["device"] == "cpu"

    # --start-from continues that model: no VAE phases, its UNet trained on, caches its own
    more = train(tmp_path / "more", images=32, unet_steps=(2,), batch=4, locality_steps=1,
                 start_from=str(out), binding=0.1, grounding=0.1, unsaid=0.5)
    assert more["start_from"] == str(out) and more["vae_steps"] == ()
    assert more["binding"] == 0.1 and more["grounding"] == 0.1 and more["unsaid"] == 0.5
    assert more["unet_channels"] == [32, 48, 48] and more["attention_from"] == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".more-vae-")]
    unet_caches = [p.name for p in tmp_path.iterdir() if p.name.startswith(".more-unet-")]
    assert len(unet_caches) == 1 and "-from-sd-" in unet_caches[0]
    assert unet_caches[0].endswith("-b0.1-g0.1-u0.5")  # other losses and captions: own caches
    continued = StableDiffusionPipeline.from_pretrained(tmp_path / "more")
    moved = max((a - b).abs().max().item() for a, b in
                zip(continued.unet.parameters(), pipe.unet.parameters()))
    assert 0 < moved < 1e-2  # two warm-up steps from the start model's weights, not afresh
    assert continued.vae.config.scaling_factor != pipe.vae.config.scaling_factor  # local VAE


def test_kept_cells_cover_the_kept_shape_only_and_the_shipped_vae_is_local():
    """The mask an editor that copies what it keeps would use. The VAE shipped before
    2026-11-24 carried the background under every shape (copying a shape's cells got 0.23 of
    background edits right, docs/history/shapes-models.md); the shipped one was trained local
    (`train_world --locality-steps 2000`): copying what an edit keeps decodes right."""
    from diffusers import AutoencoderKL

    from editkit.builtins.shapes.world import Scene, Shape
    from editkit.models import resolve
    from tools.shapes.train_world import kept_cells, vae_locality

    square = Shape("square", "red", "small", "top", "left")  # 12 px box centred at (10.7, 10.7)
    circle = Shape("circle", "blue", "large", "bottom", "right")
    before = Scene((square, circle), "white")
    after = Scene((square, Shape("circle", "green", "large", "bottom", "right")), "white")
    mask = kept_cells(before, after, 16)
    assert mask[1:5, 1:5].all() and mask.sum() == 16  # the square's 4x4 cells, nothing else
    assert kept_cells(before, Scene(before.shapes, "black"), 16).sum() == 16 + 36
    vae = AutoencoderKL.from_pretrained(resolve("shapes-sd").location, subfolder="vae")
    locality = vae_locality(vae, count=64)
    assert set(locality) >= {"all", "background", "colour"}
    assert locality["background"] > 0.95 and locality["all"] > 0.95


def test_binding_targets_point_at_each_phrase_end_and_the_loss_teaches_the_encoder(tmp_path):
    import torch

    from editkit.builtins.shapes.world import Scene, Shape
    from tools.shapes.train_world import BOUND, binding_loss, build_models, phrase_targets

    models = build_models(tmp_path / "tok")
    tokenizer, encoder = models["tokenizer"], models["text_encoder"]
    two = Scene((Shape("circle", "red", "small", "middle", "left"),
                 Shape("square", "blue", "large", "top", "right")), "black")
    one = Scene((Shape("triangle", "green", "large", "middle", "center"),), "white")
    targets = phrase_targets([two, one], tokenizer)
    ids = tokenizer(two.caption()).input_ids
    words = [tokenizer.decode([ids[i]]).strip() for i in targets[0, :, 0].tolist()]
    assert words == ["left", "right"]  # the last word of each shape's phrase
    nouns = [tokenizer.decode([ids[i]]).strip() for i in targets[0, :, 1].tolist()]
    assert nouns == ["circle", "square"]  # where it starts to know which shape it is
    assert targets[0, 1, 2:].tolist() == [0, 2, 1, list(dict(BOUND)["colour"]).index("blue"), 1]
    assert targets[1, 0, 0] == len(tokenizer(one.shapes[0].phrase()).input_ids) - 2
    assert (targets[1, 1] == -1).all()  # no second shape
    # a caption without places and sizes: the phrase is "a red circle", nothing to read of
    # row, column or size; the loss reads what is said and stays finite
    said = phrase_targets([two], tokenizer, unsaid=[frozenset({"place", "size"})])
    short = tokenizer(two.caption(frozenset({"place", "size"}))).input_ids
    assert [tokenizer.decode([short[i]]).strip() for i in said[0, :, 0].tolist()] == \
        ["circle", "square"]
    assert (said[0, :, 0] == said[0, :, 1]).all()
    assert said[0, 0, 2:].tolist() == [-1, -1, 0, list(dict(BOUND)["colour"]).index("red"), -1]
    assert torch.isfinite(binding_loss(encoder(torch.tensor([short]))[0], said,
                                       torch.nn.Linear(64, sum(len(v) for _, v in BOUND))))

    # the two captions differ only in which shape is where: heads and encoder learn it
    swapped = Scene((Shape("circle", "red", "small", "top", "right"),
                     Shape("square", "blue", "large", "middle", "left")), "black")
    scenes = [two, swapped]
    tokens = tokenizer([s.caption() for s in scenes], padding="max_length",
                       max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    targets = phrase_targets(scenes, tokenizer)
    heads = torch.nn.Linear(64, sum(len(v) for _, v in BOUND))
    optimiser = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], lr=3e-3)
    losses = []
    for _ in range(30):
        loss = binding_loss(encoder(tokens)[0], targets, heads)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    empty = torch.full_like(targets, -1)
    assert binding_loss(encoder(tokens)[0], empty, heads).item() == 0.0


def test_grounding_loss_reads_each_phrase_attention_inside_its_box(tmp_path):
    import torch

    from editkit.builtins.shapes.world import Scene, Shape
    from editkit.diffusion.control import attention_control
    from tools.shapes.train_world import (
        AttentionRecorder,
        build_models,
        grounding_loss,
        phrase_targets,
        shape_masks,
    )

    scene = Scene((Shape("circle", "red", "small", "top", "left"),
                   Shape("square", "blue", "large", "bottom", "right")), "black")
    masks = shape_masks([scene], 8)
    grid = masks[0].view(2, 8, 8)
    # the small circle's box spans 4.7..16.7 px of 64: cells 0-2 of 8 each way
    assert grid[0].nonzero().min(0).values.tolist() == [0, 0]
    assert grid[0].nonzero().max(0).values.tolist() == [2, 2]
    assert grid[1][7, 7] == 1 and grid[1][:4].sum() == 0 and grid[0][4:].sum() == 0

    models = build_models(tmp_path / "tok")
    targets = phrase_targets([scene], models["tokenizer"])
    keys = 32
    inside = torch.zeros(1, 4, 64, keys)  # every token's attention mass in the circle's box
    inside[0, :, masks[0, 0] > 0, :] = 1.0
    outside = torch.zeros(1, 4, 64, keys)  # ... and here outside both boxes
    outside[0, :, (masks[0, 0] + masks[0, 1]) == 0, :] = 1.0
    mask = {64: masks}
    circle_only = targets.clone()
    circle_only[0, 1] = -1
    assert grounding_loss([inside], circle_only, mask).item() == 0.0
    assert grounding_loss([outside], targets, mask).item() == 1.0
    assert 0.4 < grounding_loss([inside], targets, mask).item() < 0.6  # the square's: wrong

    # recorded from a real UNet call, with gradients into the UNet's and encoder's weights
    unet, encoder = models["unet"], models["text_encoder"]
    tokens = models["tokenizer"]([scene.caption()], padding="max_length", max_length=32,
                                 return_tensors="pt").input_ids
    recorder = AttentionRecorder()
    recorder.begin((16, 16), (1, 1, 1))
    with attention_control(unet, recorder):
        unet(torch.randn(1, 4, 16, 16), torch.tensor([500]),
             encoder_hidden_states=encoder(tokens)[0])
    sizes = sorted({m.shape[2] for m in recorder.maps})
    assert sizes == [16, 64]  # cross-attention at 4x4 and 8x8, as shipped
    loss = grounding_loss(recorder.maps, targets,
                          {q: shape_masks([scene], int(q ** 0.5)) for q in sizes})
    loss.backward()
    attn2 = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    assert attn2.to_q.weight.grad.abs().sum() > 0
    assert encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    assert not any(type(p).__name__ == "ControlledAttnProcessor"
                   for p in unet.attn_processors.values())
