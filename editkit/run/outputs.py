"""Where results will be written, checked before any work starts.

A run folder, an `editkit edit --out` or an `editkit eval --out` that cannot be written is
found out when the first file is saved: after minutes or hours of work. These checks look
at the file system only (nothing is created) so recipe validation and argument parsing can
refuse such a place in one line.
"""

from __future__ import annotations

import os
from pathlib import Path


def folder_problem(path: str | Path, what: str = "output folder") -> str | None:
    """Why `path` cannot be (or become) a folder this process writes into, or None.

    It may exist as a folder, or not exist yet: then the nearest folder above it that does
    exist must be writable, and nothing on the way may be a file."""
    target = Path(path).expanduser()
    if target.exists():
        if not target.is_dir():
            return f"{what} {path} is a file, not a folder; name a folder (or remove the file)"
        if not os.access(target, os.W_OK | os.X_OK):
            return f"{what} {path} cannot be written here; choose a folder you can write to"
        return None
    above = target.absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        return (f"{what} {path} cannot be made: {above} is a file, not a folder; "
                "choose another place")
    if not os.access(above, os.W_OK | os.X_OK):
        return (f"{what} {path} cannot be made: {above} cannot be written here; choose a "
                "folder you can write to")
    return None


def file_problem(path: str | Path, what: str = "output file") -> str | None:
    """Why a file cannot be written at `path` (it is a folder, or its folder cannot be
    written), or None."""
    target = Path(path).expanduser()
    if target.is_dir():
        return f"{what} {path} is a folder; name a file, or pass the folder to write into it"
    if target.exists() and not os.access(target, os.W_OK):
        return f"{what} {path} cannot be overwritten here; choose another name"
    problem = folder_problem(target.parent, "its folder")
    return f"{what} {path}: {problem}" if problem else None
