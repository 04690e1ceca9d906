"""The run folder: records in atomic shards, stage fingerprints, the manifest, and a lock.

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
from pathlib import Path
from typing import Any, Iterator

from .errors import RunError

SHARD_PREFIX = "shard-"
_UMASK = os.umask(0)
os.umask(_UMASK)
SHARD_SUFFIX = ".jsonl"


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
