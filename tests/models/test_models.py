import pytest

from editkit.errors import ModelError
from editkit.models import load, pick_device, pick_dtype, resolve


def test_resolve_local_builtin_and_hub(tmp_path):
    assert resolve(tmp_path).source == "local"
    assert resolve("stable-diffusion-v1-5/stable-diffusion-v1-5").source == "hub"
    builtin = resolve("tiny-clip")
    assert builtin.source == "builtin"
    assert (builtin.location and (__import__("pathlib").Path(builtin.location) / "config.json")
            .exists())


def test_resolve_rejects_nonsense_with_the_choices():
    with pytest.raises(ModelError) as info:
        resolve("not a model")
    assert "built-ins:" in str(info.value) and "tiny-sd" in str(info.value)


def test_device_and_dtype_on_cpu():
    import torch

    assert pick_device("auto") == "cpu"
    assert pick_dtype("cpu") is torch.float32
    assert pick_dtype("cuda") is torch.float16
    with pytest.raises(ModelError, match="not available"):
        pick_device("cuda")


def test_unreachable_hub_model_is_one_clear_error():
    from transformers import CLIPModel

    with pytest.raises(ModelError) as info:
        load(CLIPModel, "nobody-here/no-such-model", "CLIP model")
    text = str(info.value)
    assert text.startswith("could not load CLIP model 'nobody-here/no-such-model'")
    assert "pass the local folder" in text


def test_local_folder_loads_through_from_pretrained(tmp_path):
    from transformers import CLIPModel

    from editkit.testing import build_tiny_clip

    folder = build_tiny_clip(tmp_path / "clip")
    model = load(CLIPModel, str(folder))
    assert model.config.projection_dim == 32
