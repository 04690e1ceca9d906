"""The run folder: records in atomic shards, stage fingerprints, the manifest, a lock, and
the dataset format (its one writer and its one reader).

A stage knows what is done from what is on disk. Records are appended as whole shards written
to a temporary name, flushed and renamed into place, so a run killed at any moment leaves
either a whole shard or none: resuming never loses a written record and never doubles one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from editkit.errors import InputError, RunError

SHARD_PREFIX = "shard-"
_UMASK = os.umask(0)
os.umask(_UMASK)
SHARD_SUFFIX = ".jsonl"
# the picture files editkit reads wherever it takes images (edit inputs, instance images, a
# folder of pictures in the report)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a part.

    `durable` also flushes it to the disk before the rename, so it survives a power cut,
    not only a killed process; counters rewritten after every request skip that."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: Path, data: Any, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n",
                      durable)


def atomic_save_image(image: Any, path: Path, **save_args: Any) -> None:
    """Save a PIL image atomically (PNG unless the suffix says otherwise)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=(path.suffix.lstrip(".") or "png").upper().replace("JPG", "JPEG"),
               **save_args)
    atomic_write_bytes(path, buffer.getvalue())


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RecordStore:
    """Append-only JSONL records of one stage, in shards written atomically."""

    def __init__(self, directory: Path, writer: str = ""):
        """`writer` tags this process's shards (`shard-r01-000003.jsonl`) so several
        processes can append to one stage without choosing the same name."""
        self.directory = Path(directory)
        self.writer = writer
        self.directory.mkdir(parents=True, exist_ok=True)
        self._swept = False
        self._next: int | None = None  # this writer's next shard number, once looked up

    def _sweep(self) -> None:
        """Remove this writer's temporary files left by a write killed before its rename.
        Only its own: another process may be writing one of its own right now."""
        for stale in self.directory.glob(f".{SHARD_PREFIX}{self.writer}[0-9]*.tmp"):
            stale.unlink(missing_ok=True)
        self._swept = True

    def shards(self) -> list[Path]:
        return sorted(self.directory.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))

    def read(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for shard in self.shards():
            with shard.open(encoding="utf-8") as handle:
                records += [json.loads(line) for line in handle if line.strip()]
        return records

    def append(self, records: list[dict[str, Any]]) -> Path | None:
        if not records:
            return None
        if not self._swept:
            self._sweep()
        prefix = f"{SHARD_PREFIX}{self.writer}"
        if self._next is None:  # look once; after that this store is the only writer
            mine = sorted(self.directory.glob(f"{prefix}[0-9]*{SHARD_SUFFIX}"))
            self._next = int(mine[-1].name[len(prefix):-len(SHARD_SUFFIX)]) + 1 if mine else 0
        path = self.directory / f"{prefix}{self._next:06d}{SHARD_SUFFIX}"
        text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
        atomic_write_text(path, text)
        self._next += 1
        return path

    def clear(self) -> None:
        for shard in self.shards():
            shard.unlink()
        self._next = None


class RunFolder:
    """One run's folder: `recipe.yaml`, `manifest.json` and one folder per stage."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def store(self, stage: str, writer: str = "") -> RecordStore:
        return RecordStore(self.stage_dir(stage), writer)

    # --- the lock: two processes writing one run folder would double records --------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunError(
                f"{self.path} is in use by another editkit run",
                "wait for it to finish, or set output= to another folder",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    # --- stage fingerprints -------------------------------------------------------------

    def stage_state(self, stage: str) -> dict[str, Any] | None:
        path = self.stage_dir(stage) / "stage.json"
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def write_stage_state(self, stage: str, state: dict[str, Any]) -> None:
        atomic_write_json(self.stage_dir(stage) / "stage.json", state)

    def has_work(self, stage: str) -> bool:
        directory = self.stage_dir(stage)
        return directory.exists() and any(
            p.name != "stage.json" for p in directory.iterdir()
        )

    def remove_stage(self, stage: str) -> None:
        shutil.rmtree(self.stage_dir(stage), ignore_errors=True)

    # --- manifest ------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        path = self.path / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def update_manifest(self, **changes: Any) -> dict[str, Any]:
        data = self.manifest()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        atomic_write_json(self.path / "manifest.json", data)
        return data


# --- the dataset: its one writer and its one reader ------------------------------------------
#
#   dataset/README.md                a dataset card; its YAML header names the splits
#   dataset/train/metadata.jsonl     a row per pair: input_image_file_name,
#   dataset/train/images/            edited_image_file_name, edit_prompt, input, output, seed,
#   dataset/__test__/metadata.jsonl  scores, split, id; the held-out rows live in __test__/
#   dataset/__test__/images/
#
# Hugging Face `datasets` turns each `<column>_file_name` into an Image column `<column>`, and
# its data-file patterns pass over folders named `__name__` unless a pattern names one: so
# `load_dataset(folder)` reads the two splits the card names, while the call diffusers'
# InstructPix2Pix trainer makes, `load_dataset("imagefolder", data_files={"train":
# "folder/**"})`, sees the train rows alone. Older runs and users' folders have the flat layout
# (`metadata.jsonl` with `input_image`/`edited_image` paths and a `split` column, beside the
# images); the reader takes both.

DATASET = "dataset"
FILTERS = "filters"


def filter_folder(index: int, use: str) -> str:
    """The run-relative folder of the recipe's filter number `index` (`filters/0-clip`)."""
    return f"{FILTERS}/{index}-{use}"


def filter_folders(run: str | Path) -> list[Path]:
    """The filters' record folders in a run, in the order the filters ran."""
    root = Path(run) / FILTERS
    found = [d for d in root.iterdir() if d.is_dir() and d.name.split("-", 1)[0].isdigit()] \
        if root.is_dir() else []
    return sorted(found, key=lambda d: int(d.name.split("-", 1)[0]))
METADATA = "metadata.jsonl"
SPLIT_FOLDERS = {"train": "train", "test": "__test__"}
IMAGE_COLUMNS = ("input_image", "edited_image")
_FILE_NAME = "_file_name"
_COLUMN_NOTES = {
    "input_image": "the image before the edit",
    "edited_image": "the image after the edit",
    "edit_prompt": "the instruction that turns one into the other",
    "input": "a caption of the image before the edit",
    "output": "a caption of the image after the edit",
    "seed": "the seed the pair was rendered with",
    "scores": "the filters' scores of the pair",
    "split": "`train`, or `test` for a held-out row (trainers skip those)",
    "id": "the pair's id in the run's records",
}


def is_dataset(folder: str | Path) -> bool:
    """Whether `folder` holds a dataset, in either layout."""
    folder = Path(folder)
    return any((folder / sub / METADATA).is_file() for sub in ("", *SPLIT_FOLDERS.values()))


def find_dataset(path: str | Path, fix: str = "pass a run folder that has been through "
                 "filters, or a folder with metadata.jsonl (columns input_image, edit_prompt, "
                 "edited_image)") -> Path:
    """The dataset of `path`: a run folder's `dataset/`, or `path` itself."""
    path = Path(path)
    for folder in (path / DATASET, path):
        if is_dataset(folder):
            return folder
    raise InputError(f"{path} has no metadata.jsonl (nor train/metadata.jsonl, nor a run's "
                     f"dataset/)", fix)


@dataclass
class DatasetRows:
    """What `read_dataset` found. Each row holds its columns as written, with `input_image`
    and `edited_image` as absolute paths, and always an `id` and a `split`."""

    folder: Path
    rows: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)  # lines left out, and why
    has_split: bool = True  # False: a flat dataset without a split column (no held-out part)
    fingerprint: str = ""  # of the rows' content, whatever the layout holding them

    def split(self, name: str) -> list[dict[str, Any]]:
        """The rows of split `name`; "train" is every row not held out."""
        if name == "train":
            return [r for r in self.rows if r["split"] != "test"]
        return [r for r in self.rows if r["split"] == name]


def read_dataset(path: str | Path, required: tuple[str, ...] = (), fix: str | None = None
                 ) -> DatasetRows:
    """Read a dataset in either layout (`path` may be a run folder). A row missing one of the
    `required` columns, or a line that is not JSON, is left out and named in `problems`:
    one bad line does not stop a dataset of thousands."""
    folder = find_dataset(path, fix) if fix else find_dataset(path)
    split_layout = any((folder / sub / METADATA).is_file() for sub in SPLIT_FOLDERS.values())
    sources = ([(folder / sub / METADATA, split) for split, sub in SPLIT_FOLDERS.items()
                if (folder / sub / METADATA).is_file()] if split_layout
               else [(folder / METADATA, None)])
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    canonical: list[tuple[str, str]] = []
    has_split = split_layout
    texts = []
    for meta, split in sources:
        base = meta.parent.absolute()
        where = meta.relative_to(folder).as_posix()
        text = meta.read_text("utf-8")
        texts.append(text)
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where} line {number}: not JSON ({exc.msg})")
                canonical.append(("", line))
                continue
            if not isinstance(data, dict):
                problems.append(f"{where} line {number}: not a JSON object")
                continue
            for column in IMAGE_COLUMNS:
                if column + _FILE_NAME in data:
                    data[column] = data.pop(column + _FILE_NAME)
            canonical.append((str(data.get("id", "")), json.dumps(data, sort_keys=True)))
            has_split = has_split or "split" in data
            missing = [c for c in required if not data.get(c)]
            if missing:
                problems.append(f"{where} line {number}: missing {', '.join(missing)}")
                continue
            for column in IMAGE_COLUMNS:
                if data.get(column):
                    data[column] = base / str(data[column])
            if "id" not in data:  # numbered by line; a held-out file's numbers say so
                data["id"] = (f"{number:06d}" if split in (None, "train")
                              else f"{split}-{number:06d}")
            data["split"] = split or data.get("split") or "train"
            rows.append(data)
    # the flat layout's fingerprint is its file's, as before; the split layout's is that of
    # the same rows written flat, so rewriting a flat dataset in splits changes nothing
    content = (texts[0] if not split_layout else
               "".join(text + "\n" for _, text in sorted(canonical)))
    return DatasetRows(folder=folder, rows=rows, problems=problems, has_split=has_split,
                       fingerprint=fingerprint(content))


def write_dataset_folder(folder: str | Path, rows: list[dict[str, Any]], title: str = "",
                         about: str = "") -> Path:
    """Write `rows` as a dataset in `folder`, replacing whatever was there as a whole.

    Each row holds its columns, `split` ("test" holds it out; anything else trains) and
    `input_image`/`edited_image`: paths of image files, hard-linked (copied across file
    systems) beside the metadata. The folder is built under a temporary name and swapped in,
    so a reader sees the old dataset or the new one, never a mix of the two."""
    folder = Path(folder)
    new = folder.parent / f".{folder.name}.new"
    old = folder.parent / f".{folder.name}.old"
    for stale in (new, old):
        shutil.rmtree(stale, ignore_errors=True)
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for row in rows:
        copy = {k: dict(v) if isinstance(v, dict) else v for k, v in row.items()}
        by_split["test" if row.get("split") == "test" else "train"].append(copy)
    left_out = _align_types(by_split)
    counts = {split: len(members) for split, members in by_split.items()}
    for split, members in by_split.items():
        if not members and split == "test":
            continue
        sub = new / SPLIT_FOLDERS[split]
        (sub / "images").mkdir(parents=True)
        names: dict[str, Path] = {}
        lines = []
        for row in members:
            for column in IMAGE_COLUMNS:
                source = row.pop(column, None)
                if source:
                    row[column + _FILE_NAME] = f"images/{_link_image(Path(source), sub, names)}"
            lines.append(json.dumps(row, sort_keys=True, allow_nan=False))
        atomic_write_text(sub / METADATA, "".join(line + "\n" for line in lines))
    found = {k.removesuffix(_FILE_NAME) for members in by_split.values() for r in members
             for k in r}
    columns = [c for c in _COLUMN_NOTES if c in found] + sorted(found - set(_COLUMN_NOTES))
    atomic_write_text(new / "README.md", _dataset_card(counts, columns, title, about, left_out))
    if folder.exists():
        os.rename(folder, old)
    os.rename(new, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _link_image(source: Path, split_dir: Path, names: dict[str, Path]) -> str:
    """Hard-link `source` into `split_dir/images/` under its own name (numbered when another
    file took it) and return that name; an image two rows share is linked once."""
    name, n = source.name, 1
    while name in names and names[name] != source:
        n += 1
        name = f"{source.stem}-{n}{source.suffix}"
    if name not in names:
        target = split_dir / "images" / name
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        names[name] = source
    return name


def _kind(value: Any) -> str | None:
    """The type `datasets` (through pyarrow's JSON reader) infers from one value."""
    if value is None:
        return None
    for kind in (bool, int, float, str, dict, list):
        if isinstance(value, kind):
            return kind.__name__
    return type(value).__name__


def _align_types(by_split: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Make every split's metadata give `datasets` one schema, which it requires of the
    metadata files of one dataset (it refuses a column of numbers in one split and of nulls in
    the other). Every row gets every column, and every key of a dict column such as `scores`;
    non-finite numbers become null; numbers with a fraction anywhere are floats everywhere. A
    column still of several kinds, or with values in one split and none in another (its type
    cannot be told there), is left out; its name is returned for the card."""
    import math

    rows = [r for members in by_split.values() for r in members]
    paths: list[tuple[str, ...]] = []
    for column in sorted({k for r in rows for k in r} - set(IMAGE_COLUMNS)):
        values = [r.get(column) for r in rows]
        if any(isinstance(v, dict) for v in values) and all(
                v is None or isinstance(v, dict) for v in values):
            for r in rows:
                r[column] = r.get(column) or {}
            paths += [(column, key) for key in sorted({k for r in rows for k in r[column]})]
        else:
            paths.append((column,))
    left_out = []
    for column, *key in paths:
        holders = [r if not key else r[column] for r in rows]  # the dicts holding the values
        name = key[0] if key else column
        for h in holders:
            value = h.setdefault(name, None)
            if isinstance(value, float) and not math.isfinite(value):
                h[name] = None
        kinds = {_kind(h[name]) for h in holders} - {None}
        if kinds == {"int", "float"}:
            for h in holders:
                if _kind(h[name]) == "int":
                    h[name] = float(h[name])
            kinds = {"float"}
        typed_everywhere = all(
            any((r if not key else r[column])[name] is not None for r in members)
            for members in by_split.values() if members)
        if len(kinds) > 1 or (kinds and not typed_everywhere):
            left_out.append(".".join([column, *key]))
            for h in holders:
                del h[name]
    return left_out


def _dataset_card(counts: dict[str, int], columns: list[str], title: str, about: str,
                  left_out: list[str]) -> str:
    """README.md: the YAML header `load_dataset(folder)` reads its splits from, and a card."""
    splits = [s for s in SPLIT_FOLDERS if counts[s]] or ["train"]
    header = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        header += [f"  - split: {split}", f'    path: "{SPLIT_FOLDERS[split]}/**"']
    header += ["task_categories:", "- image-to-image", "tags:", "- image-editing",
               "- instruct-pix2pix", "- editkit", "---", ""]
    table = ["| column | holds |", "|---|---|"]
    table += [f"| {c} | {_COLUMN_NOTES.get(c, '')} |" for c in columns]
    body = [f"# {title or 'Edit pairs'}", ""]
    if about:
        body += [about, ""]
    body += [
        "Before/after image pairs with the instruction that turns one into the other, in the "
        "columns diffusers' InstructPix2Pix trainer reads: "
        f"{counts['train']} training rows and {counts['test']} held out.", "",
        "```python", "from datasets import load_dataset", "",
        'pairs = load_dataset("path/to/this/folder")  # the train and test splits', "```", "",
        "`train_instruct_pix2pix.py --train_data_dir path/to/this/folder` (diffusers' example "
        "trainer) trains on the train split alone: the held-out rows live in `__test__/`, "
        "which the `**` pattern it loads with passes over.", "", *table, ""]
    if left_out:
        body += [f"Left out: {', '.join(left_out)} (values in one split only, or of mixed "
                 "kinds: `datasets` needs one schema for both splits).", ""]
    return "\n".join(header + body)
