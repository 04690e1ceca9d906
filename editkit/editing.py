"""`editkit edit`: one-off edits of real images with an instruction-editing model.

The aspect ratio is kept: the long side goes to `size`, both sides round to what the model
accepts, and the result is returned at the input's size (said out loud when it differs).
The settings go into the PNG so any edit can be reproduced.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from editkit import __version__
from editkit.errors import InputError
from editkit.run.folder import IMAGE_SUFFIXES

# InstructPix2Pix's own guidance: what an editor is run with when neither the user nor the
# editor's editkit_weights.json says otherwise (`pick_guidance`, the one rule)
DEFAULT_GUIDANCE = {"text": 7.5, "image": 1.5}


def pick_guidance(text: float | None, image: float | None,
                  recommended: dict[str, float] | None) -> dict[str, Any]:
    """The guidance an editor runs with, one rule for `editkit edit`, `editkit eval` and the
    evaluate stage so they judge one editor alike: a value given wins, then the editor's
    recommendation (its editkit_weights.json), then InstructPix2Pix's 7.5 / 1.5. Says where
    each came from ("given", "model" or "default")."""
    fallback, origin = (recommended, "model") if recommended else (DEFAULT_GUIDANCE, "default")
    return {"text": fallback["text"] if text is None else text,
            "image": fallback["image"] if image is None else image,
            "text_from": origin if text is None else "given",
            "image_from": origin if image is None else "given"}


@dataclass
class EditSettings:
    instruction: str
    steps: int = 20
    guidance: float | None = None  # None: the model's recommendation, else DEFAULT_GUIDANCE
    image_guidance: float | None = None
    seed: int = 0
    variations: int = 1
    size: int | None = None  # None: the model's own resolution (native_size)
    output_size: str = "input"  # "input" or "model"
    batch_size: int = 4
    feather: float = 4.0
    localize: bool = False  # the mask from the model's attention to the instruction's words
    localize_words: list[str] | None = None  # None: the instruction's content words
    localize_threshold: float | None = None  # None: Otsu's threshold per image

    def __post_init__(self) -> None:
        """Settings that cannot work are refused before any image is read (the CLI's option
        types say the same at parsing; this guards the library call)."""
        if not self.instruction.strip():
            raise InputError("the instruction is empty", 'say what to change, like "remove '
                             'the cars"')
        for name in ("guidance", "image_guidance", "feather"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name} {value} is not a finite number of 0 or more",
                                 "give a number like 7.5 (guidance) or 4 (feather)")
        for name in ("steps", "variations", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} {getattr(self, name)} is below 1", "give 1 or more")
        if self.size is not None and self.size < 8:
            raise InputError(f"size {self.size} is below 8 pixels", "give a long side like 512")
        if self.output_size not in ("input", "model"):
            raise InputError(f"output_size {self.output_size!r} is neither input nor model",
                             "use input or model")


class UnreadableImages(InputError):
    """Some inputs could not be read: the others were edited and written (`written`)."""

    def __init__(self, failed: list[tuple[Path, str]], total: int, written: list[Path]):
        self.failed, self.written = failed, written
        names = ", ".join(str(path) for path, _ in failed[:3]) + (", ..." if len(failed) > 3
                                                                  else "")
        super().__init__(f"{len(failed)} of {total} images could not be read ({names}); the "
                         f"other {total - len(failed)} were edited",
                         "pass PNG, JPEG or WebP files")


def collect_images(paths: list[str]) -> list[Path]:
    """Files as given and the images inside folders, with a clear error for what is missing."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise InputError(f"folder {text} holds no images",
                                 f"expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}")
            found += inside
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"no such file: {text}", "check the path")
    return found


def open_image(path: Path) -> Any:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path} is not an image that can be read ({exc})",
                         "pass a PNG, JPEG or WebP file") from None


def working_size(width: int, height: int, size: int, multiple: int) -> tuple[int, int]:
    """The long side to `size`, the short one scaled to keep the ratio, both rounded to
    `multiple` (never below it)."""
    scale = size / max(width, height)
    return tuple(max(multiple, int(round(side * scale / multiple)) * multiple)  # type: ignore
                 for side in (width, height))


def model_multiple(pipe: Any) -> int:
    """Image sides must divide by the VAE's factor times the UNet's downsampling."""
    downs = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    return int(pipe.vae_scale_factor) * downs


def native_size(pipe: Any) -> int:
    """The side the model was trained at: the UNet's sample size in pixels (512 for Stable
    Diffusion 1.5 and InstructPix2Pix, 64 for the shapes world's models)."""
    sample = pipe.unet.config.sample_size
    sample = max(sample) if isinstance(sample, (list, tuple)) else sample
    return int(sample) * int(pipe.vae_scale_factor)


def output_paths(images: list[Path], out: str | None, variations: int) -> list[list[Path]]:
    """Where each image's variations go: a file when one image and one variation, else a
    folder (default `edits/`) with `<stem>.png` or `<stem>-<k>.png` per variation.

    An --out that is not an existing folder is a file when it has an image suffix, or any
    suffix for a single result (`result.txt` is refused, not made a folder); it must then be
    the only result. Whatever it is must be writable: all checked before any work."""
    from editkit.run.outputs import file_problem, folder_problem

    results = len(images) * variations
    target = Path(out) if out else None
    if target is not None and not target.is_dir() and (
            target.suffix.lower() in IMAGE_SUFFIXES or target.is_file()
            or (target.suffix and results == 1)):
        if results != 1:
            raise InputError(f"--out {out} is one file but there are {results} results",
                             "pass a folder to --out")
        if target.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"--out {out} is not an image file name",
                             f"end it in {', '.join(sorted(IMAGE_SUFFIXES))}, or pass a "
                             "folder (an existing one, or a name without a suffix)")
        problem = file_problem(target, "--out")
        if problem:
            raise InputError(problem)
        return [[target]]
    folder = target or Path("edits")
    problem = folder_problem(folder, "--out" if target else "output folder")
    if problem:
        raise InputError(problem)
    taken: set[str] = set()
    paths = []
    for image in images:
        stem = image.stem
        n = 2
        while stem in taken:
            stem = f"{image.stem}-{n}"
            n += 1
        taken.add(stem)
        if variations == 1:
            paths.append([folder / f"{stem}.png"])
        else:
            paths.append([folder / f"{stem}-{k + 1}.png" for k in range(variations)])
    return paths


def load_mask(path: str, size: tuple[int, int], feather: float) -> Any:
    """A soft mask in [0, 1] at the output size (width, height), shaped (1, h, w): white is
    edited, black is kept; `feather` blurs its edges by that many pixels (sigma)."""
    from editkit.diffusion import masks

    return masks.feather(masks.load_mask(path, (size[1], size[0])), feather)[0]


def blend(original: Any, edited: Any, mask: Any) -> Any:
    """The edit inside the mask, the original outside, as a picture."""
    import numpy as np
    import torch
    from PIL import Image

    from editkit.diffusion import masks

    a, b = (torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)
            for im in (original, edited))
    mixed = masks.blend(a, b, mask).permute(1, 2, 0).clamp(0, 255).round()
    return Image.fromarray(mixed.to(torch.uint8).numpy())


def save_with_settings(image: Any, path: Path, settings: dict[str, Any]) -> None:
    from PIL.PngImagePlugin import PngInfo

    from editkit.run.folder import atomic_save_image

    info = PngInfo()
    info.add_text("editkit", json.dumps(settings, sort_keys=True))
    info.add_text("parameters", f"{settings['instruction']}\nSteps: {settings['steps']}, "
                  f"Guidance: {settings['guidance']}, Image guidance: "
                  f"{settings['image_guidance']}, Seed: {settings['seed']}, "
                  f"Model: {settings['model']['ref']}")
    if path.suffix.lower() == ".png":
        atomic_save_image(image, path, pnginfo=info)
    else:
        atomic_save_image(image, path)


def grid(images: list[Any], columns: int = 4) -> Any:
    from PIL import Image

    width, height = images[0].size
    columns = min(columns, len(images))
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        sheet.paste(image.resize((width, height)), ((i % columns) * width, (i // columns) * height))
    return sheet


def mask_path(target: Path) -> Path:
    """Where a localized edit's mask goes: `<stem>-mask.png` beside the result."""
    return target.with_name(f"{target.stem}-mask.png")


def save_mask(mask: Any, path: Path) -> None:
    """A (1, h, w) mask in [0, 1] as a grey PNG (white = edited), like a `--mask` file."""
    import torch
    from PIL import Image

    from editkit.run.folder import atomic_save_image

    array = (mask[0].clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy()
    atomic_save_image(Image.fromarray(array), path)


def save_localized_mask(maps: Any, size: tuple[int, int], path: Path, words: list[str],
                        threshold: float | None) -> dict[str, Any]:
    """Threshold one sample's (1, h, w) attention maps into a mask of `size`, save it to
    `path` and return what the PNG metadata records about it."""
    from editkit.diffusion.localize import localize_mask

    found, cuts = localize_mask(maps[None], size, threshold)
    save_mask(found[0], path)
    return {"words": words, "threshold": "otsu" if threshold is None else threshold,
            "cut": round(cuts[0], 4), "area": round(float(found.mean()), 6), "mask": str(path)}


def with_guidance(settings: EditSettings, recommended: dict[str, float] | None,
                  say: Callable[[str], None]) -> EditSettings:
    """Guidance not given is the model's recommendation (editkit_weights.json), else
    InstructPix2Pix's 7.5 / 1.5."""
    picked = pick_guidance(settings.guidance, settings.image_guidance, recommended)
    chosen = replace(settings, guidance=picked["text"], image_guidance=picked["image"])
    if recommended and (settings.guidance is None or settings.image_guidance is None):
        say(f"guidance {chosen.guidance:g}, image guidance {chosen.image_guidance:g} "
            "(unless given: the model's recommendation, from its editkit_weights.json)")
    return chosen


def run_edits(paths: list[str], settings: EditSettings, model: str, out: str | None,
              base: str | None = None, mask: str | None = None, device: str = "auto",
              dtype: str = "auto", say: Callable[[str], None] = print) -> list[Path]:
    """Edit every readable image of `paths` and return the files written. An unreadable
    image is said (one line) and skipped; when any was, `UnreadableImages` is raised after
    the others are written. Everything that can be checked (outputs, mask, model family) is
    checked before the model loads."""
    if settings.localize and mask:
        raise InputError("--localize finds the mask itself; it cannot be combined with --mask",
                         "drop one of them")
    words: list[str] = []
    if settings.localize:
        from editkit.diffusion.localize import instruction_words

        words = instruction_words(settings.instruction, settings.localize_words)
        cut = settings.localize_threshold
        say(f"--localize: the mask comes from the attention to {', '.join(words)} "
            f"(threshold {'otsu' if cut is None else cut})")
    images = collect_images(paths)
    targets = output_paths(images, out, settings.variations)
    if mask:
        open_image(Path(mask))  # a mask that cannot be read fails now, not after the edits
    opened, failed = [], []
    for path, target in zip(images, targets):  # every input is checked before loading
        try:
            opened.append((path, open_image(path), target))
        except InputError as exc:
            if len(images) == 1:
                raise
            failed.append((path, exc.message))
            say(f"skipped: {exc.message}")
    if not opened:
        raise InputError(f"none of the {len(images)} images can be read ({failed[0][1]}, ...)",
                         "pass PNG, JPEG or WebP files")
    images = [path for path, _, _ in opened]
    originals = [image for _, image, _ in opened]
    targets = [target for _, _, target in opened]
    from editkit.models import check_family

    check_family(model)  # an SDXL, FLUX, ... model: one line before torch loads
    if base:
        check_family(base)
    import torch

    from editkit.models.editors import load_edit_pipeline

    pipe, spec = load_edit_pipeline(model, device=device, dtype=dtype, base=base)
    settings = with_guidance(settings, spec.guidance, say)
    if settings.size is None:
        settings = replace(settings, size=native_size(pipe))
    multiple = model_multiple(pipe)
    jobs: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for index, image in enumerate(originals):
        work = working_size(*image.size, settings.size, multiple)
        final = image.size if settings.output_size == "input" else work
        if work != image.size:
            back = f", returned at {final[0]}x{final[1]}" if final == image.size else ""
            say(f"{images[index]}: {image.size[0]}x{image.size[1]} is edited at "
                f"{work[0]}x{work[1]} (long side {settings.size}, sides multiple of "
                f"{multiple}){back}")
        for k in range(settings.variations):
            jobs.setdefault(work, []).append((index, k))
    written: list[Path] = []
    results: dict[tuple[int, int], Any] = {}
    maps: dict[tuple[int, int], Any] = {}
    for work, items in jobs.items():
        for start in range(0, len(items), settings.batch_size):
            batch = items[start:start + settings.batch_size]
            inputs = [originals[i].resize(work) for i, _ in batch]
            generators = [torch.Generator("cpu").manual_seed(settings.seed + k) for _, k in batch]
            call = dict(guidance_scale=settings.guidance,
                        image_guidance_scale=settings.image_guidance, generator=generators)
            if settings.localize:
                from editkit.diffusion.localize import edit_with_maps

                out_images, found, _ = edit_with_maps(pipe, settings.instruction, inputs, words,
                                                      settings.steps, **call)
                maps.update(zip(batch, found))
            else:
                out_images = pipe([settings.instruction] * len(batch), image=inputs,
                                  num_inference_steps=settings.steps, **call).images
            for (i, k), edited in zip(batch, out_images):
                results[(i, k)] = edited
    for index, image in enumerate(originals):
        final = image.size if settings.output_size == "input" else results[(index, 0)].size
        soft = load_mask(mask, final, settings.feather) if mask else None
        variants = []
        for k in range(settings.variations):
            edited = results[(index, k)].resize(final)
            localized = None
            if settings.localize:
                where = mask_path(targets[index][k])
                localized = save_localized_mask(maps[(index, k)], final, where, words,
                                                settings.localize_threshold)
                soft = load_mask(str(where), final, settings.feather)  # exactly as --mask
                if not localized["area"]:
                    say(f"{images[index]}: no region stands out in the attention to "
                        f"{', '.join(words)}; the image is returned unchanged")
            if soft is not None:
                edited = blend(image.resize(final), edited, soft)
            record = {**asdict(settings), "seed": settings.seed + k, "input": str(images[index]),
                      "mask": mask, "model": spec.describe(), "editkit": __version__,
                      "working_size": list(results[(index, k)].size), "localize": localized}
            save_with_settings(edited, targets[index][k], record)
            written.append(targets[index][k])
            if localized:
                written.append(Path(localized["mask"]))
            variants.append(edited)
        if settings.variations > 1:
            sheet = targets[index][0].with_name(f"{targets[index][0].stem.rsplit('-', 1)[0]}"
                                                f"-grid.png")
            from editkit.run.folder import atomic_save_image

            atomic_save_image(grid([image.resize(final)] + variants), sheet)
            written.append(sheet)
    if failed:
        raise UnreadableImages(failed, len(failed) + len(opened), written)
    return written
