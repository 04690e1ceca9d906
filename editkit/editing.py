"""`editkit edit`: one-off edits of real images with an instruction-editing model (a Stable
Diffusion or SDXL InstructPix2Pix editor; its family runs it).

The aspect ratio is kept: the long side goes to `size`, both sides round to what the model
accepts, and the result is returned at the input's size (said out loud when it differs).
The settings go into the PNG so any edit can be reproduced.

An edit may be confined to a mask: one given (`mask`), one found in the model's attention to
the instruction's words (`localize`), or one a text-prompted segmenter finds in each input
image (`mask_words` and/or `region`). A found mask is saved beside the result and then used
exactly as a given one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from editkit import __version__
from editkit.errors import InputError
from editkit.evaluation.best_of import Candidate, candidates
from editkit.models.segmenter import DEFAULT_SEGMENTER, GENERIC_PROMPT, REGIONS
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
            # a flow editor's recommendation has no image guidance (it has none): None
            "image": fallback.get("image") if image is None else image,
            "text_from": origin if text is None else "given",
            "image_from": origin if image is None else "given"}


@dataclass
class EditSettings:
    instruction: str
    steps: int | None = None  # None: the model's recommendation, else its family's
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
    mask_words: list[str] | None = None  # the segmenter's mask: where these are (united)
    region: str | None = None  # foreground or background of mask_words (or GENERIC_PROMPT)
    mask_threshold: float | None = 0.5  # the segmenter map's cut; None: Otsu's per image

    @property
    def segment(self) -> bool:
        """Whether a segmenter finds the mask in each input image."""
        return self.mask_words is not None or self.region is not None

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
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"{name} {getattr(self, name)} is below 1", "give 1 or more")
        if self.size is not None and self.size < 8:
            raise InputError(f"size {self.size} is below 8 pixels", "give a long side like 512")
        if self.output_size not in ("input", "model"):
            raise InputError(f"output_size {self.output_size!r} is neither input nor model",
                             "use input or model")
        if self.mask_words is not None:
            self.mask_words = [w.strip() for w in self.mask_words if w and w.strip()]
            if not self.mask_words:
                raise InputError("the mask words are empty",
                                 'name what the edit changes, like "car,bus"')
        if self.region is not None and self.region not in REGIONS:
            raise InputError(f"region {self.region!r} is neither foreground nor background",
                             "use foreground or background")
        cut = self.mask_threshold
        if cut is not None and not (math.isfinite(cut) and 0 < cut < 1):
            raise InputError(f"mask threshold {cut} is not between 0 and 1",
                             "give a number between 0 and 1, or None for Otsu's")
        if self.localize and self.segment:
            raise InputError("localize and mask_words/region both find the mask",
                             "use one of them")


EMPTY_MASK_HINT = "lower --mask-threshold (or give otsu), or change --mask-words / --region"


class SkippedImages(InputError):
    """Some inputs were not edited: `failed` could not be read, `empty` got an empty mask
    from the segmenter. The others were edited and written (`written`)."""

    def __init__(self, failed: list[tuple[Path, str]], total: int, written: list[Path],
                 empty: list[tuple[Path, str]] | None = None):
        self.failed, self.empty, self.written = failed, list(empty or []), written

        def names(items: list[tuple[Path, str]]) -> str:
            return ", ".join(str(path) for path, _ in items[:3]) + (
                ", ..." if len(items) > 3 else "")

        parts = [f"{len(failed)} of {total} images could not be read ({names(failed)})"
                 ] if failed else []
        if self.empty:
            parts.append(f"{len(self.empty)} of {total} images have an empty mask "
                         f"({names(self.empty)})")
        rest = total - len(failed) - len(self.empty)
        hints = ["pass PNG, JPEG or WebP files"] if failed else []
        hints += [EMPTY_MASK_HINT] if self.empty else []
        super().__init__(" and ".join(parts) + (f"; the other {rest} were edited" if rest
                                                else "; none was edited"), "; ".join(hints))


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
    """Image sides must divide by the VAE's factor times the UNet's downsampling (a flow
    editor's transformer: times its 2x2 patches)."""
    if getattr(pipe, "unet", None) is None:
        return int(pipe.vae_scale_factor) * 2
    downs = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    return int(pipe.vae_scale_factor) * downs


def native_size(pipe: Any) -> int:
    """The side the model was trained at: the UNet's sample size in pixels (512 for Stable
    Diffusion 1.5 and InstructPix2Pix, 1024 for SDXL, 64 for the shapes world's models); a
    flow editor's default size (1024 for the real ones)."""
    if getattr(pipe, "unet", None) is None:
        return int(getattr(pipe, "default_sample_size", 128)) * int(pipe.vae_scale_factor)
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
                  f"Guidance: {settings['guidance']}, "
                  + ("" if settings.get("image_guidance") is None else
                     f"Image guidance: {settings['image_guidance']}, ")
                  + f"Seed: {settings['seed']}, "
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


def beside_variations(targets: list[Path], kind: str) -> Path:
    """A file one image's results share (its grid, its segmenter mask): `<stem>-<kind>.png`
    beside them, the stem without the variation number when there are several."""
    first = targets[0]
    stem = first.stem.rsplit("-", 1)[0] if len(targets) > 1 else first.stem
    return first.with_name(f"{stem}-{kind}.png")


def found_mask_paths(targets: list[list[Path]], settings: EditSettings) -> list[list[Path]]:
    """Where the masks `localize` (one per result) or the segmenter (one per image) find
    are saved; refused before any work when one would overwrite a result."""
    if settings.localize:
        found = [[mask_path(target) for target in row] for row in targets]
    elif settings.segment:
        found = [[beside_variations(row, "mask")] for row in targets]
    else:
        return [[] for _ in targets]
    results = {target for row in targets for target in row}
    for row in found:
        for where in row:
            if where in results:
                raise InputError(f"the mask {where} would overwrite the result of the same "
                                 "name", "rename that input, or pass another --out")
    return found


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
    found, info = localized_mask(maps, size, words, threshold)
    save_mask(found, path)
    return {**info, "mask": str(path)}


def localized_mask(maps: Any, size: tuple[int, int], words: list[str],
                   threshold: float | None) -> tuple[Any, dict[str, Any]]:
    """One sample's (1, h, w) attention maps thresholded into a mask of `size`, and what
    the PNG metadata records about it (but where it is saved)."""
    from editkit.diffusion.localize import localize_mask

    found, cuts = localize_mask(maps[None], size, threshold)
    return found[0], {"words": words, "threshold": "otsu" if threshold is None else threshold,
                      "cut": round(cuts[0], 4), "area": round(float(found.mean()), 6)}


def saved_soft_mask(mask: Any, feather: float) -> Any:
    """The soft mask a found (1, h, w) mask gives once saved as a grey PNG and read back
    like a `--mask` (`load_mask` at its own size), without the file: a candidate's mask is
    used before it is known whether it is saved."""
    from editkit.diffusion import masks

    grey = (mask.clamp(0, 1) * 255).round() / 255
    return masks.feather(grey[None].float(), feather)[0]


def region_phrase(settings: EditSettings) -> str:
    """What the segmenter's mask covers, for messages: "car, bus", "everything but car"."""
    named = (", ".join(settings.mask_words) if settings.mask_words
             else f"the foreground ({GENERIC_PROMPT!r})")
    return f"everything but {named}" if settings.region == "background" else named


def find_region_masks(images: list[Any], settings: EditSettings, segmenter: str,
                      device: str, dtype: str) -> tuple[list[Any], list[dict[str, Any]],
                                                         dict[str, Any]]:
    """The segmenter's binary mask (1, h, w; bool) of each image at its own size, what was
    found (`Segmenter.region_mask`'s stats) and the segmenter's description. The segmenter is
    let go before the editor loads; `batch_size` images go through it at a time."""
    from editkit.models.segmenter import Segmenter

    model = Segmenter(segmenter, device=device, dtype=dtype, batch_size=settings.batch_size)
    threshold = "otsu" if settings.mask_threshold is None else settings.mask_threshold
    masks: list[Any] = []
    stats: list[dict[str, Any]] = []
    for start in range(0, len(images), settings.batch_size):
        found, info = model.region_mask(images[start:start + settings.batch_size],
                                        settings.mask_words, settings.region, threshold)
        masks += [mask.bool() for mask in found]
        stats += info
    return masks, stats, model.describe()


def save_region_mask(mask: Any, size: tuple[int, int], path: Path, stats: dict[str, Any],
                     segmenter: dict[str, Any]) -> dict[str, Any]:
    """Save one image's segmenter mask at `size` (width, height) to `path` and return what
    the PNG metadata records about it. Resizing averages areas, so a thin region that shrinks
    fades at its edges and never vanishes."""
    import torch.nn.functional as F

    mask = mask.float()
    if (mask.shape[-1], mask.shape[-2]) != tuple(size):
        mask = F.interpolate(mask[None], size=(size[1], size[0]), mode="area")[0]
    save_mask(mask, path)
    return {"words": stats["words"], "region": stats["region"],
            "threshold": "otsu" if stats["method"] == "otsu" else stats["threshold"],
            "cut": round(stats["threshold"], 4), "area": round(float(mask.mean()), 6),
            "mask": str(path), "segmenter": segmenter}


def screen_region_masks(paths: list[Path], stats: list[dict[str, Any]],
                        settings: EditSettings, single: bool, say: Callable[[str], None]
                        ) -> list[tuple[Path, str]]:
    """The images whose segmenter mask is empty, with why, each said as skipped; a single
    image's is refused outright. A mask that covers a whole image is said: that edit is not
    confined."""
    empty = []
    for path, info in zip(paths, stats):
        where = f"{path}: the mask of {region_phrase(settings)}"
        cut = f"threshold {info['threshold']:.4g}"
        if info["area"] == 0:
            if single:
                raise InputError(f"{where} is empty at {cut}", EMPTY_MASK_HINT)
            empty.append((path, f"{where} is empty at {cut}"))
            say(f"skipped: {where} is empty at {cut}")
        elif info["area"] == 1:
            say(f"{where} covers the whole image at {cut}, so the edit is not confined; "
                "raise --mask-threshold to confine it")
    return empty


def with_guidance(settings: EditSettings, recommended: dict[str, float] | None,
                  say: Callable[[str], None]) -> EditSettings:
    """Guidance not given is the model's recommendation (editkit_weights.json), else
    InstructPix2Pix's 7.5 / 1.5."""
    picked = pick_guidance(settings.guidance, settings.image_guidance, recommended)
    chosen = replace(settings, guidance=picked["text"], image_guidance=picked["image"])
    if recommended and "image" not in recommended:  # a flow editor: text guidance only
        if settings.guidance is None:
            say(f"guidance {chosen.guidance:g} (unless given: the editor's recommendation)")
        return chosen
    if recommended and (settings.guidance is None or settings.image_guidance is None):
        say(f"guidance {chosen.guidance:g}, image guidance {chosen.image_guidance:g} "
            "(unless given: the model's recommendation, from its editkit_weights.json)")
    return chosen


def refuse_for_family(settings: EditSettings, family: Any) -> None:
    """Settings the editor's family cannot honour: a flow editor has no image guidance and
    no UNet attention for --localize."""
    if not getattr(family, "flow", False):
        return
    if settings.image_guidance is not None:
        raise InputError(f"{family.title} has no image guidance",
                         "drop --image-guidance (--guidance sets its text guidance)")
    if settings.localize:
        raise InputError(f"--localize reads an InstructPix2Pix UNet's attention; "
                         f"{family.title} has none", "use --mask-words or --mask")


def candidate_plan(settings: EditSettings, best_of: Any = None) -> list[Candidate]:
    """The samples each image gets: its variations (seeds seed..seed+N-1 at the chosen
    guidance), or `best_of`'s candidates (seeds and a guidance sweep around it)."""
    if best_of is not None:
        return candidates(best_of.count, settings.seed, settings.guidance,
                          settings.image_guidance, best_of.sweep)
    return [Candidate(k + 1, settings.seed + k, settings.guidance, settings.image_guidance)
            for k in range(settings.variations)]


def with_family_defaults(settings: EditSettings, spec: Any, family: Any, pipe: Any,
                         say: Callable[[str], None]) -> EditSettings:
    """Steps and guidance not given: the editor's recommendation (its editkit_weights.json),
    else its family's (a flow editor's model card), else InstructPix2Pix's. A flow editor
    has no image guidance: asking for one is refused."""
    guidance, steps = family.edit_defaults(pipe)
    refuse_for_family(settings, family)
    if settings.steps is None:
        settings = replace(settings, steps=spec.steps or steps)
    return with_guidance(settings, spec.guidance or guidance, say)


def run_edits(paths: list[str], settings: EditSettings, model: str, out: str | None,
              base: str | None = None, mask: str | None = None, device: str = "auto",
              dtype: str = "auto", say: Callable[[str], None] = print,
              segmenter: str = DEFAULT_SEGMENTER, best_of: Any = None) -> list[Path]:
    """Edit every readable image of `paths` and return the files written. An unreadable
    image, or one whose segmenter mask (`settings.mask_words` / `region`, found by
    `segmenter` before the editor loads) is empty, is said (one line) and skipped; when any
    was, `SkippedImages` is raised after the others are written. A mask that covers the
    whole image is said, and the edit is then not confined. Everything that can be checked
    (outputs, mask, model family, the judge) is checked before a model loads.

    `best_of` (`editkit.evaluation.best_of.BestOf`) makes that many candidates of each edit
    and writes the one its judge scores best, with every candidate's settings and scores in
    its PNG and in `<stem>.best-of.json`; `settings.variations` equal to its count also
    saves every candidate (and the grid, the best framed)."""
    if settings.localize and mask:
        raise InputError("--localize finds the mask itself; it cannot be combined with --mask",
                         "drop one of them")
    if settings.segment and mask:
        raise InputError("--mask-words and --region find the mask themselves; they cannot be "
                         "combined with --mask", "drop one of them")
    words: list[str] = []
    if settings.localize:
        from editkit.diffusion.localize import instruction_words

        words = instruction_words(settings.instruction, settings.localize_words)
        cut = settings.localize_threshold
        say(f"--localize: the mask comes from the attention to {', '.join(words)} "
            f"(threshold {'otsu' if cut is None else cut})")
    if settings.segment:
        from editkit.models import resolve

        resolve(segmenter)  # a reference that names nothing fails now
        cut = settings.mask_threshold
        say(f"the mask is {region_phrase(settings)}, as {segmenter} finds it in each image "
            f"(threshold {'otsu' if cut is None else cut})")
    if best_of is not None and settings.variations not in (1, best_of.count):
        raise InputError(f"--variations {settings.variations} with --best-of {best_of.count}: "
                         "--variations shows every candidate", f"give --variations "
                         f"{best_of.count} (as --best-of) or leave it out")
    images = collect_images(paths)
    targets = output_paths(images, out, settings.variations)
    if best_of is not None and settings.variations > 1:
        targets = [row + [row[0].with_name(f"{row[0].stem.rsplit('-', 1)[0]}.png")]
                   for row in targets]  # every candidate, then the best
        taken = [target for row in targets for target in row]
        if len(set(taken)) < len(taken):
            raise InputError("two inputs' results would share a file name (like a.png's "
                             "best and a-1.png's)", "rename one of the inputs")
    found_masks = found_mask_paths(targets, settings)
    if mask:
        open_image(Path(mask))  # a mask that cannot be read fails now, not after the edits
    opened, failed = [], []
    for path, target, where in zip(images, targets, found_masks):  # checked before loading
        try:
            opened.append((path, open_image(path), target, where))
        except InputError as exc:
            if len(images) == 1:
                raise
            failed.append((path, exc.message))
            say(f"skipped: {exc.message}")
    if not opened:
        raise InputError(f"none of the {len(images)} images can be read ({failed[0][1]}, ...)",
                         "pass PNG, JPEG or WebP files")
    from editkit.models import check_family

    check_family(model)  # a FLUX.1 dev, ... model: one line before torch loads
    if base:
        check_family(base)
    from editkit.models.editors import resolve_edit_model
    from editkit.models.families import family_for

    refuse_for_family(settings, family_for(resolve_edit_model(model, base).pipeline))
    judge, prepared = None, {}
    if best_of is not None:  # a judge that cannot judge these edits says so now
        from editkit.evaluation.best_of import make_judge

        judge = make_judge(best_of, device=device, dtype=dtype)
        prepared = {path: judge.prepare(image, settings.instruction)
                    for path, image, _, _ in opened}
    total, empty = len(images), []
    region_masks: list[Any] = []
    region_stats: list[dict[str, Any]] = []
    if settings.segment:
        region_masks, region_stats, described = find_region_masks(
            [image for _, image, _, _ in opened], settings, segmenter, device, dtype)
        empty = screen_region_masks([path for path, _, _, _ in opened], region_stats,
                                    settings, total == 1, say)
        if len(empty) == len(opened):
            raise SkippedImages(failed, total, [], empty)
        keep = [i for i, info in enumerate(region_stats) if info["area"] > 0]
        opened, region_masks, region_stats = ([items[i] for i in keep] for items in
                                              (opened, region_masks, region_stats))
    images = [path for path, _, _, _ in opened]
    originals = [image for _, image, _, _ in opened]
    targets = [target for _, _, target, _ in opened]
    found_masks = [where for _, _, _, where in opened]
    import torch

    from editkit.models.editors import load_edit_pipeline
    from editkit.models.families import family_named

    pipe, spec = load_edit_pipeline(model, device=device, dtype=dtype, base=base)
    family = family_named(spec.family)
    settings = with_family_defaults(settings, spec, family, pipe, say)
    if settings.size is None:
        settings = replace(settings, size=native_size(pipe))
    multiple = model_multiple(pipe)
    plan = candidate_plan(settings, best_of)
    jobs: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
    for index, image in enumerate(originals):
        work = working_size(*image.size, settings.size, multiple)
        final = image.size if settings.output_size == "input" else work
        if work != image.size:
            back = f", returned at {final[0]}x{final[1]}" if final == image.size else ""
            say(f"{images[index]}: {image.size[0]}x{image.size[1]} is edited at "
                f"{work[0]}x{work[1]} (long side {settings.size}, sides multiple of "
                f"{multiple}){back}")
        for k, candidate in enumerate(plan):  # one pipeline call runs one guidance
            jobs.setdefault((work, candidate.guidance, candidate.image_guidance),
                            []).append((index, k))
    written: list[Path] = []
    results: dict[tuple[int, int], Any] = {}
    maps: dict[tuple[int, int], Any] = {}
    for (work, guidance, image_guidance), items in jobs.items():
        for start in range(0, len(items), settings.batch_size):
            batch = items[start:start + settings.batch_size]
            inputs = [originals[i].resize(work) for i, _ in batch]
            generators = [torch.Generator("cpu").manual_seed(plan[k].seed) for _, k in batch]
            call = dict(guidance_scale=guidance, image_guidance_scale=image_guidance,
                        generator=generators)
            if settings.localize:
                from editkit.diffusion.localize import edit_with_maps

                out_images, found, _ = edit_with_maps(pipe, settings.instruction, inputs, words,
                                                      settings.steps, **call)
                maps.update(zip(batch, found))
            else:
                out_images = family.edit(pipe, [settings.instruction] * len(batch), inputs,
                                         settings.steps, **call)
            for (i, k), edited in zip(batch, out_images):
                results[(i, k)] = edited
    for index, image in enumerate(originals):
        final = image.size if settings.output_size == "input" else results[(index, 0)].size
        before = image.resize(final)
        soft = load_mask(mask, final, settings.feather) if mask else None
        segmented = None
        if settings.segment:
            where = found_masks[index][0]
            segmented = save_region_mask(region_masks[index], final, where,
                                         region_stats[index], described)
            soft = load_mask(str(where), final, settings.feather)  # exactly as --mask
        edits, localized = [], []
        for k in range(len(plan)):
            edited = results[(index, k)].resize(final)
            found = None
            if settings.localize:
                found = localized_mask(maps[(index, k)], final, words,
                                       settings.localize_threshold)
                soft = saved_soft_mask(found[0], settings.feather)  # exactly as --mask
                if not found[1]["area"]:
                    say(f"{images[index]}: no region stands out in the attention to "
                        f"{', '.join(words)}; the image is returned unchanged")
            if soft is not None:
                edited = blend(before, edited, soft)
            edits.append(edited)
            localized.append(found)
        common = {"input": str(images[index]), "mask": mask, "model": spec.describe(),
                  "editkit": __version__, "segment": segmented}

        def save(k: int, target: Path, extra: dict[str, Any]) -> None:
            """Candidate k at `target`, its mask beside it when localized, recorded."""
            record = {**asdict(settings), **common, **extra, "seed": plan[k].seed,
                      "guidance": plan[k].guidance, "image_guidance": plan[k].image_guidance,
                      "working_size": list(results[(index, k)].size), "localize": None}
            if localized[k] is not None:
                where = mask_path(target)
                save_mask(localized[k][0], where)
                record["localize"] = {**localized[k][1], "mask": str(where)}
            save_with_settings(edits[k], target, record)
            written.extend([target] + ([Path(record["localize"]["mask"])]
                                       if record["localize"] else []))

        shown = targets[index][:settings.variations] if settings.variations > 1 else []
        chosen = None
        if judge is not None:
            from editkit.evaluation.best_of import choose, sidecar_path, summary

            scored = judge.score(before, settings.instruction, edits, prepared[images[index]])
            chosen = choose(scored)
            picked = summary(plan, scored, chosen, judge.describe(), shown or None)
            best = targets[index][-1]
            say(f"{images[index]}: candidate {plan[chosen].number} of {len(plan)} is the best "
                f"(score {picked['score']:.4g}; seed {plan[chosen].seed}, guidance "
                f"{plan[chosen].guidance:g}" + ("" if plan[chosen].image_guidance is None else
                                                 f", image guidance "
                                                 f"{plan[chosen].image_guidance:g}") + ")")
            save(chosen, best, {"best_of": picked})
            from editkit.run.folder import atomic_write_json

            atomic_write_json(sidecar_path(best), {
                "input": str(images[index]), "instruction": settings.instruction,
                "output": str(best), "model": spec.describe(), "editkit": __version__,
                **picked})
            written.append(sidecar_path(best))
            for k, target in enumerate(shown):
                save(k, target, {"best_of": {"candidate": plan[k].number,
                                             "best": k == chosen, **scored[k],
                                             "chosen": str(best)}})
        else:
            for k, target in enumerate(targets[index]):
                save(k, target, {})
        if segmented:
            written.append(Path(segmented["mask"]))
        if shown:
            from editkit.run.folder import atomic_save_image

            sheet = grid([before] + edits)
            if chosen is not None:
                from editkit.evaluation.best_of import mark_best

                sheet = mark_best(sheet, chosen + 1, before.size, min(4, len(edits) + 1))
            atomic_save_image(sheet, beside_variations(shown, "grid"))
            written.append(beside_variations(shown, "grid"))
    if failed or empty:
        raise SkippedImages(failed, total, written, empty)
    return written
