"""Workspace files written so that a crash never leaves half of one: atomic writes.

Every file is written to a temporary file in the same folder, flushed to
disk, then renamed over the target (a rename within a folder is atomic), so
a reader finds the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_metseg.errors import WorkspaceError


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a model file, or of every file in a model folder (sorted by name)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def atomic_write(target: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_json(target: Path, content: dict[str, Any]) -> None:
    text = (json.dumps(content, indent=2) + "\n").encode()
    atomic_write(target, lambda stream: stream.write(text))


def write_corrections(target: Path, corrections: np.ndarray) -> None:
    atomic_write(target, lambda stream: np.savez_compressed(stream, corrections=corrections))


def read_corrections(path: Path) -> np.ndarray:
    try:
        with np.load(path) as data:
            return data["corrections"].astype(np.uint8)
    except (OSError, KeyError, ValueError) as error:
        raise WorkspaceError(f"{path}: unreadable corrections: {error}") from error
