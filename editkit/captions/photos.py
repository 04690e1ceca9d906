"""The user's photos as inputs: listing a folder, reading a photo, and the image part of a chat
message.

A chat message carries images the way Ollama's API does, as `images: [base64 PNG, ...]` beside
`content`; `openai_messages` turns such messages into OpenAI's content parts, so every vision
request is written once for both clients.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from editkit.errors import InputError
from editkit.run.folder import IMAGE_SUFFIXES


def list_photos(folder: str | Path) -> list[Path]:
    """The image files in `folder` (not its subfolders), sorted by name: a stable order, so a
    photo's position is its identity across resumed runs."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"photos: {root} is not a folder",
                         "give a folder of .png/.jpg/.webp photos")
    return sorted(p for p in root.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_photo(path: str | Path) -> Any:
    """The photo as an RGB PIL image; a file that is not a readable image raises InputError
    (the caller records it as a rejected photo and goes on)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"photo {Path(path).name} is not a readable image: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                         "replace or remove the file") from None


def encode_image(image: Any, max_side: int | None = 1024) -> str:
    """`image` (PIL) as base64 PNG, scaled down so its longer side is at most `max_side`."""
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with `images` as OpenAI's content parts (text first, then each image as a
    data URL); messages without images pass through unchanged."""
    out = []
    for message in messages:
        images = message.get("images")
        if not images:
            out.append(message)
            continue
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.get("content", "")}]
        parts += [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}
                  for b64 in images]
        out.append({k: v for k, v in message.items() if k not in ("images", "content")}
                   | {"content": parts})
    return out
