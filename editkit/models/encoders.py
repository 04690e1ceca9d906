"""Image and text embeddings (CLIP, DINOv2) and the similarity metrics built on them.

One module for the `clip` and `dino` filters and for `editkit eval`, so a filter score and an
evaluation number mean exactly the same thing. The definitions are InstructPix2Pix's
(`metrics/clip_similarity.py` in its repository): embeddings are L2-normalised, and

- image similarity      cos(E(before), E(after))
- directional similarity cos(E(after) - E(before), T(output caption) - T(input caption))
- text-image similarity  cos(E(image), T(its caption))
- DINO similarity       cos of DINOv2 CLS features of before and after.

Embeddings are computed in batches on `pick_device()` and cached on disk keyed by the image
file's content hash and the model, so re-filtering with new thresholds computes nothing again.
torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from editkit.errors import InputError
from editkit.evaluation.settings import CLIP_DEFAULT, DINO_DEFAULT  # noqa: F401 (re-exported)
from editkit.run.folder import atomic_write_bytes, fingerprint

CLIP_MAX_TOKENS = 77
UNREADABLE = "unreadable image"


# --- plain numbers ------------------------------------------------------------------------


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 0.0 when either vector is zero (a direction that does not exist)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 0.0 if denom < 1e-12 else float(np.dot(a, b) / denom)


def clip_pair_scores(before: np.ndarray, after: np.ndarray, text_before: np.ndarray,
                     text_after: np.ndarray) -> dict[str, float]:
    """InstructPix2Pix's four CLIP numbers for one pair (embeddings need not be normalised)."""
    before, after, text_before, text_after = normalise(
        np.stack([before, after, text_before, text_after]))
    return {
        "clip_image": cosine(before, after),
        "clip_direction": cosine(after - before, text_after - text_before),
        "clip_text_before": cosine(before, text_before),
        "clip_text_after": cosine(after, text_after),
    }


def l1_distance(a: Any, b: Any) -> float:
    """Mean absolute difference of two RGB images in [0, 1] (b resized to a's size if needed)."""
    from PIL import Image

    a = a.convert("RGB")
    b = b.convert("RGB")
    if b.size != a.size:
        b = b.resize(a.size, Image.Resampling.LANCZOS)
    x = np.asarray(a, dtype=np.float64) / 255.0
    y = np.asarray(b, dtype=np.float64) / 255.0
    return float(np.abs(x - y).mean())


# --- files ----------------------------------------------------------------------------------


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes; `InputError` if it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}",
                         "check that the file exists") from None


def decode_image(data: bytes, path: str | Path) -> Any:
    """The RGB image in `data` (read from `path`); `InputError` if it is not one."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot decode image {path}: {exc}",
                         "the file is corrupt or not an image") from None


def read_image(path: str | Path) -> tuple[Any, str]:
    """The RGB image in `path` and the sha256 of its bytes; `InputError` if it cannot be read."""
    data = read_bytes(path)
    return decode_image(data, path), hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    """Vectors on disk, one `.npy` per key, in a folder per model: safe to share between runs
    and processes (each file is written atomically)."""

    def __init__(self, root: Path | None, model_key: str):
        self.folder = Path(root) / model_key if root is not None else None

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        if self.folder is None:
            return None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged cache entry is recomputed

    def put(self, key: str, vector: np.ndarray) -> None:
        if self.folder is None:
            return
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(self._path(key), buffer.getvalue())


# --- encoders -------------------------------------------------------------------------------


@dataclass
class EncoderStats:
    """What an encoder did: the filters record it, the cache test counts `model_calls`."""

    model_calls: int = 0
    images_embedded: int = 0
    images_cached: int = 0
    texts_embedded: int = 0
    texts_cached: int = 0
    texts_truncated: int = 0
    unreadable: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "extra"}
        return {**data, **self.extra}


class Encoder(ABC):
    """A vision model that embeds images in batches, loaded on first use (a fully cached
    re-run never loads it). Subclasses set `what` and implement `_load` and `_embed`."""

    what = "model"

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto",
                 batch_size: int = 32, cache_dir: Path | None = None):
        from editkit.models import resolve

        self.ref = resolve(model)
        self.device_preference = device
        self.dtype_preference = dtype
        self.batch_size = max(1, int(batch_size))
        self.stats = EncoderStats()
        self._model: Any = None
        self._processor: Any = None
        self.device = "unloaded"
        self.cache_key = self.what + "-" + fingerprint(
            {"kind": self.what, "model": self.ref.describe(), "dtype": dtype, "device": device})
        self.use_cache(cache_dir)

    def use_cache(self, cache_dir: Path | None) -> None:
        """Keep embeddings under `cache_dir` (None: compute every time)."""
        self.cache = EmbeddingCache(Path(cache_dir) if cache_dir else None, self.cache_key)

    def describe(self) -> dict[str, Any]:
        return {**self.ref.describe(), "device": self.device, "batch_size": self.batch_size}

    def _ensure(self) -> None:
        if self._model is not None:
            return
        from editkit.models import pick_device, pick_dtype

        self.device = pick_device(self.device_preference)
        self.torch_dtype = pick_dtype(self.device, self.dtype_preference)
        self._model, self._processor = self._load()
        self._model.to(self.device, dtype=self.torch_dtype).eval()

    @abstractmethod
    def _load(self) -> tuple[Any, Any]:
        """The model and its processor, through `editkit.models.load`."""

    @abstractmethod
    def _embed(self, images: list[Any]) -> np.ndarray:
        """One model call: embeddings of a batch of RGB images."""

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Embeddings (rows, not normalised) of PIL images, `batch_size` per model call."""
        self._ensure()
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            out.append(self._embed(chunk))
            self.stats.model_calls += 1
        self.stats.images_embedded += len(images)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed_files(self, paths: Iterable[str | Path]) -> dict[str, np.ndarray | str]:
        """Path -> embedding, from the cache where the content was seen before; an unreadable
        file maps to the reason (a string) instead of raising."""
        results: dict[str, np.ndarray | str] = {}
        pending: list[tuple[str, str, Any]] = []
        for path in dict.fromkeys(str(p) for p in paths):
            try:
                data = read_bytes(path)
                digest = hashlib.sha256(data).hexdigest()
                cached = self.cache.get(digest)  # a cached content decoded fine before
                if cached is None:
                    pending.append((path, digest, decode_image(data, path)))
            except InputError as exc:
                results[path] = exc.message
                self.stats.unreadable += 1
                continue
            if cached is not None:
                results[path] = cached
                self.stats.images_cached += 1
        if pending:
            vectors = self.encode_images([image for _, _, image in pending])
            for (path, digest, _), vector in zip(pending, vectors):
                self.cache.put(digest, vector)
                results[path] = vector
        return results


class ClipEncoder(Encoder):
    """CLIP image and text features (the projections the two towers share)."""

    what = "clip"

    def _load(self) -> tuple[Any, Any]:
        from transformers import CLIPModel, CLIPProcessor

        from editkit.models import load

        return (load(CLIPModel, self.ref, "CLIP model"),
                load(CLIPProcessor, self.ref, "CLIP processor"))

    def _embed(self, images: list[Any]) -> np.ndarray:
        import torch

        pixels = self._processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            features = self._model.get_image_features(
                pixel_values=pixels.to(self.device, dtype=self.torch_dtype))
        return _tensor(features)

    def embed_texts(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        """Caption -> text embedding, cached like images; captions over CLIP's 77 tokens are
        truncated and counted in `stats.texts_truncated`."""
        results: dict[str, np.ndarray] = {}
        pending: list[tuple[str, str]] = []
        for text in dict.fromkeys(texts):
            key = hashlib.sha256(("text\0" + text).encode("utf-8")).hexdigest()
            cached = self.cache.get(key)
            if cached is not None:
                results[text] = cached
                self.stats.texts_cached += 1
            else:
                pending.append((text, key))
        if not pending:
            return results
        import torch

        self._ensure()
        tokenizer = self._processor.tokenizer
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            texts_chunk = [t for t, _ in chunk]
            full = tokenizer(texts_chunk, truncation=False)["input_ids"]
            self.stats.texts_truncated += sum(len(ids) > CLIP_MAX_TOKENS for ids in full)
            tokens = tokenizer(texts_chunk, padding=True, truncation=True,
                               max_length=CLIP_MAX_TOKENS, return_tensors="pt")
            with torch.inference_mode():
                features = self._model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device))
            self.stats.model_calls += 1
            for (text, key), vector in zip(chunk, _tensor(features)):
                self.cache.put(key, vector)
                results[text] = vector
        self.stats.texts_embedded += len(pending)
        return results


class DinoEncoder(Encoder):
    """DINOv2's CLS token after the final layer norm (`pooler_output`)."""

    what = "dino"

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, AutoModel

        from editkit.models import load

        return (load(AutoModel, self.ref, "DINOv2 model"),
                load(AutoImageProcessor, self.ref, "DINOv2 image processor"))

    def _embed(self, images: list[Any]) -> np.ndarray:
        import torch

        pixels = self._processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self._model(pixel_values=pixels.to(self.device, dtype=self.torch_dtype))
        return _tensor(out.pooler_output)


def unreadable(pair: dict[str, Any], embeddings: dict[str, Any]) -> str | None:
    """Why a pair cannot be scored (its before or after image did not load), or None."""
    for role in ("before", "after"):
        value = embeddings.get(str(pair[f"{role}_path"]))
        if isinstance(value, str):
            return f"{UNREADABLE} ({role}): {value}"
    return None


def plugin_encoder(plugin: Any, cls: type[Encoder], cache_dir: Path | None) -> Any:
    """The filter plugin's encoder, made on its first batch and reused (model loaded once)
    for the rest; its stats start from zero for each batch, so they are that batch's."""
    encoder = getattr(plugin, "_encoder", None)
    if encoder is None:
        opts = plugin.options
        encoder = cls(opts.model, device=opts.device, batch_size=opts.batch_size)
        plugin._encoder = encoder
    encoder.use_cache(cache_dir)
    encoder.stats = EncoderStats()
    return encoder


def _tensor(features: Any) -> np.ndarray:
    """Model output -> float32 rows (newer transformers return an output object here)."""
    if not hasattr(features, "float"):
        features = getattr(features, "pooler_output", None)
        if features is None:
            raise TypeError("unexpected model output")
    return features.float().cpu().numpy().astype(np.float32)
