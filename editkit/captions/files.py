"""Existing captions for the LLM generators' `input_captions`: the model then writes only
each caption's edit and output (how InstructPix2Pix edited LAION captions), so the inputs
describe real photographs rather than what a model imagines.

Accepted: a text file (one caption a line), a `.jsonl`/`.json` file of objects (JSON lines,
or one array) or a `.csv` file with a header, both read from the first column named
`caption`, `input` or `text` (any case), or a folder of such files read in sorted path order
(a Hugging Face dataset saved with `Dataset.to_json`). Blank captions are skipped; caption
number i is the i-th non-blank one over all files, which is what resuming counts by.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

from editkit.errors import InputError

COLUMNS = ("caption", "input", "text")
SUFFIXES = (".txt", ".jsonl", ".json", ".csv")
HINT = ("give a text file with one caption a line, a .jsonl/.json/.csv file with a caption, "
        "input or text column, or a folder of them")


def caption_files(ref: str | Path) -> list[Path]:
    """The files of `ref` in reading order; InputError when there are none."""
    path = Path(ref).expanduser()
    if path.is_file():
        return [path]
    if not path.exists():
        raise InputError(f"input captions: {path} does not exist", HINT)
    if not path.is_dir():
        raise InputError(f"input captions: {path} is not a file or a folder", HINT)
    if any(path.glob("*.arrow")):
        raise InputError(f"input captions: {path} is a dataset saved with save_to_disk "
                         "(Arrow files)", "save it as JSON lines instead: "
                         "dataset.to_json('captions.jsonl'), and give that file")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts)
                   and p.name not in ("dataset_info.json", "state.json",
                                      "dataset_dict.json"))
    if not files:
        raise InputError(f"input captions: {path} holds no {', '.join(SUFFIXES)} files", HINT)
    return files


def iter_captions(ref: str | Path) -> Iterator[str]:
    """Every non-blank caption of `ref`, in order, read lazily (validation reads only one)."""
    for path in caption_files(ref):
        suffix = path.suffix.lower()
        try:
            if suffix in (".jsonl", ".json"):
                yield from _json_captions(path)
            elif suffix == ".csv":
                yield from _csv_captions(path)
            else:
                with path.open(encoding="utf-8") as handle:
                    for line in handle:
                        if line.strip():
                            yield line.strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"input captions: cannot read {path}: {exc}",
                             "give a readable UTF-8 file") from None


def read_captions(ref: str | Path) -> list[str]:
    """All captions of `ref`; InputError when it has none."""
    captions = list(iter_captions(ref))
    if not captions:
        raise InputError(f"input captions: {ref} has no captions", HINT)
    return captions


def _column(keys: list[str], where: str) -> str:
    lower = {k.lower(): k for k in keys}
    for name in COLUMNS:
        if name in lower:
            return lower[name]
    raise InputError(f"input captions: {where} has no caption, input or text field "
                     f"(fields: {', '.join(keys) or 'none'})",
                     "name the caption column caption, input or text")


def _caption(row: dict[str, Any], where: str) -> str | None:
    value = row[_column(list(row), where)]
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"input captions: {where}: the caption is not text: {value!r}", HINT)
    return value.strip() or None


def _json_captions(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        start = handle.read(4096).lstrip()[:1]
        handle.seek(0)
        if start == "[":  # one JSON array
            try:
                rows = json.load(handle)
            except json.JSONDecodeError as exc:
                raise InputError(f"input captions: {path} is not valid JSON: {exc}",
                                 HINT) from None
            numbered: Any = enumerate(rows, 1)
        else:
            numbered = ((n, line) for n, line in enumerate(handle, 1) if line.strip())
        for number, row in numbered:
            where = f"{path}:{number}"
            if isinstance(row, str) and start != "[":
                try:
                    row = json.loads(row)
                except json.JSONDecodeError as exc:
                    raise InputError(f"input captions: {where} is not JSON: {exc.msg}",
                                     "give one JSON object a line") from None
            if isinstance(row, str):
                caption: str | None = row.strip() or None
            elif isinstance(row, dict):
                caption = _caption(row, where)
            else:
                raise InputError(f"input captions: {where} is not an object or a string",
                                 HINT)
            if caption:
                yield caption


def _csv_captions(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        column = _column(list(reader.fieldnames or []), str(path))
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                yield value
