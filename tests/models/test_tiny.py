import numpy as np
import torch

from editkit.models import load
from editkit.testing import tiny_model


def test_tiny_sd_generates_deterministically():
    from diffusers import StableDiffusionPipeline

    pipe = load(StableDiffusionPipeline, "tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 4

    def draw():
        return np.asarray(pipe("a red car", num_inference_steps=3, height=32, width=32,
                               generator=torch.Generator().manual_seed(1)).images[0])

    first, second = draw(), draw()
    assert first.shape == (32, 32, 3)
    assert np.array_equal(first, second)


def test_tiny_ip2p_has_eight_input_channels_and_edits():
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    pipe = load(StableDiffusionInstructPix2PixPipeline, "tiny-ip2p")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 8
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    out = pipe("make it blue", image=image, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (32, 32)


def test_tiny_tokenizer_is_clip_shaped():
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model("tiny-sd") / "tokenizer")
    assert tok.model_max_length == 77
    assert tok.tokenize("a photo of a red car") == ["a</w>", "photo</w>", "of</w>", "a</w>",
                                                    "red</w>", "car</w>"]
    ids = tok("a red car").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_tiny_clip_and_dinov2_embed_images():
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPModel, CLIPProcessor, Dinov2Model

    image = Image.new("RGB", (48, 40), (10, 200, 40))
    clip = load(CLIPModel, "tiny-clip")
    processor = load(CLIPProcessor, "tiny-clip")
    inputs = processor(images=[image], text=["a green square"], return_tensors="pt",
                       padding=True)
    out = clip(**inputs)
    assert out.image_embeds.shape == (1, 32) and out.text_embeds.shape == (1, 32)
    dino = load(Dinov2Model, "tiny-dinov2")
    pixels = load(AutoImageProcessor, "tiny-dinov2")(images=[image], return_tensors="pt")
    assert dino(**pixels).pooler_output.shape == (1, 32)
