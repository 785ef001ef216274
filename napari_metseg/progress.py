"""Progress reporting and cancellation shared by the core's long-running functions.

Core functions take a plain callable and a ``threading.Event`` rather than any
GUI object, so the same code serves napari's thread workers, the CLI's progress
bar and plain scripts (the pattern micro-sam and nnU-Net use).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from napari_metseg.errors import Cancelled

#: ``progress(done, total, message)``; ``done`` and ``total`` count work units.
ProgressCallback = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str) -> None:
    """Default callback: report nothing."""


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`Cancelled` when the user has asked to stop."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by the user")
