"""Workspace files: JSON records and strokes written atomically (:mod:`napari_metseg.atomic`),
and model digests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_metseg.atomic import atomic_write, write_npz
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


def write_json(target: Path, content: dict[str, Any]) -> None:
    text = json.dumps(content, indent=2) + "\n"
    atomic_write(target, lambda temporary: Path(temporary).write_text(text))


def write_corrections(target: Path, corrections: np.ndarray) -> None:
    write_npz(target, compressed=True, corrections=corrections)


def read_corrections(path: Path) -> np.ndarray:
    try:
        with np.load(path) as data:
            return data["corrections"].astype(np.uint8)
    except (OSError, KeyError, ValueError) as error:
        raise WorkspaceError(f"{path}: unreadable corrections: {error}") from error
