"""The CLI's rendering of the core's ``progress(done, total, message)`` callbacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from napari_metseg.progress import ProgressCallback


@contextmanager
def progress_bar(enabled: bool = True, unit: str = "it") -> Iterator[ProgressCallback]:
    """A tqdm bar (on stderr) driven by progress callbacks; closed on exit."""
    with tqdm(total=1, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True) as bar:

        def progress(done: int, total: int, message: str) -> None:
            bar.total = max(total, 1)
            bar.n = done
            bar.set_description(message)
            bar.refresh()

        yield progress
