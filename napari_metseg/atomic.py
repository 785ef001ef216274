"""Files written so that a crash never leaves half of one.

A file is written to a temporary file in the target's folder, synced to
disk, then renamed over the target (a rename within a folder is atomic), so a
reader finds the old file or the new one, never a torn one: model files,
workspace autosaves and result volumes all go through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

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
