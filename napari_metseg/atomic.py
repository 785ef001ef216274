"""Files written so that a crash never leaves half of one.

A file is written to a temporary file in the target's folder, synced to
disk, then renamed over the target (a rename within a folder is atomic), so a
reader finds the old file or the new one, never a torn one: model files,
workspace autosaves, result volumes and training caches all go through
:func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Permissions of written files (``mkstemp`` would leave them readable by the owner only).
FILE_MODE = 0o644


def atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Create or replace ``target`` by ``write(temporary_path)`` and one rename."""
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_npz(target: Path, compressed: bool = False, **arrays: np.ndarray) -> None:
    """``arrays`` to ``target`` with ``np.savez`` (or ``savez_compressed``), atomically."""
    save = np.savez_compressed if compressed else np.savez

    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:  # a path would gain NumPy's ".npz" suffix
            save(stream, **arrays)

    atomic_write(target, write)
