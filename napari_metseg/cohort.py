"""Segment a whole cohort in one call: one model load, the next case read while this one runs.

:func:`segment_cohort` takes a dataset folder (see
:func:`napari_metseg.io.cases.list_cases`), loads nothing twice and keeps the
device busy: a loader thread reads case ``i + 1`` (file inflation and NumPy
release the GIL) while the calling thread runs the network, the lesion table
and the writing of case ``i``. On a GPU the loader pre-processes the case too
(its kernels queue behind the network's); on a CPU the calling thread does,
since there the two torch workloads share the same cores: ``metseg segment``
on 3 sample cases and 2 cores took 11.07-11.23 s that way and 11.29-11.76 s
with the pre-processing in the loader (three alternating runs each).

Each case gets its own folder under ``out`` with the files of
:func:`napari_metseg.pipeline.write_results`; a case whose
``segmentation.json`` exists is done and skipped (resume after a crash or a
cancel) unless ``overwrite``. A case that fails to read or segment is logged,
recorded in the summary as failed, and the rest go on.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set) every rank
takes every ``WORLD_SIZE``-th case and its own GPU, and writes its own summary.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from napari_metseg.engine import Presence, Segmenter
from napari_metseg.errors import MetsegError
from napari_metseg.io import read_case
from napari_metseg.io.cases import list_cases
from napari_metseg.io.layouts import PathOrPaths
from napari_metseg.pipeline import RECORD, write_results
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

logger = logging.getLogger(__name__)

#: Columns of the cohort summary, one row per case of this rank.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "case",
    "status",
    "lesions",
    "volume_mm3",
    "seconds",
    "sequences",
    "error",
)

#: What a bad case may raise and still let the cohort go on (a bug still stops it).
CASE_ERRORS = (MetsegError, OSError, ValueError, RuntimeError)


@dataclass(frozen=True)
class Share:
    """This process's part of a cohort: every ``size``-th case from ``rank``."""

    rank: int = 0
    size: int = 1

    @classmethod
    def from_environment(cls) -> Share:
        """The ``torchrun`` rank and world size, or the whole cohort."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def rank_device(device: str = "auto") -> str:
    """Under ``torchrun``, ``auto`` / ``cuda`` become this rank's GPU (``LOCAL_RANK``)."""
    local = os.environ.get("LOCAL_RANK")
    if local is not None and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(local)}"
    return device


@dataclass(frozen=True)
class CohortResult:
    """The summary table (:data:`SUMMARY_COLUMNS`) and the CSV it was written to."""

    summary: pd.DataFrame
    path: Path


def segment_cohort(
    folder: str | os.PathLike,
    segmenter: Segmenter,
    out: str | os.PathLike,
    present: Presence = None,
    threshold: float = CANDIDATE_THRESHOLD,
    overwrite: bool = False,
    mapping: Mapping[str, str] | str | os.PathLike | None = None,
    share: Share | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> CohortResult:
    """Segment every case of ``folder`` into ``out/<case>/``; write and return the summary.

    The summary (``out/summary.csv``, or ``summary_rank<r>.csv`` per rank
    under ``torchrun``) has a row per case: ``status`` is ``done``,
    ``skipped`` (done before) or ``failed`` (with the ``error``); ``lesions``
    and ``volume_mm3`` (all lesions together) at ``threshold``; ``seconds``
    of the case's own stages, reading to writing (time spent waiting for the
    device excluded); the ``sequences`` fed to the model.
    ``progress`` counts cases.
    """
    progress = progress or no_progress
    share = share or Share.from_environment()
    out = Path(out)
    cases = list_cases(folder)[share.rank :: share.size]
    rows: list[dict] = []
    todo = []
    for name, source in cases:
        record = out / name / RECORD
        if record.is_file() and not overwrite:
            rows.append(_row_from_record(name, "skipped", json.loads(record.read_text())))
        else:
            todo.append((name, source))
    progress(len(rows), len(cases), f"{len(rows)} cases done before")
    loader = _Loader(todo, segmenter, present, mapping)
    try:
        for name, loaded in loader:
            check_cancel(cancel)
            progress(len(rows), len(cases), f"segmenting {name}")
            if isinstance(loaded, BaseException):
                rows.append(_failed(name, loaded))
                continue
            case, ahead, read_seconds = loaded
            earlier = read_seconds + (0.0 if ahead is None else ahead.seconds)
            started = time.perf_counter()
            try:
                prepared = segmenter.prepare(case, present) if ahead is None else ahead
                segmentation = segmenter.segment_prepared(prepared, cancel=cancel)
                written = write_results(
                    case, segmentation, out / name, threshold, stages={"read": read_seconds}
                )
            except CASE_ERRORS as error:
                rows.append(_failed(name, error))
                continue
            rows.append(
                {
                    "case": name,
                    "status": "done",
                    "lesions": len(written.table),
                    "volume_mm3": float(written.table["volume_mm3"].sum()),
                    "seconds": earlier + time.perf_counter() - started,
                    "sequences": ";".join(written.info.present),
                    "error": "",
                }
            )
    finally:
        loader.close()
    progress(len(rows), len(cases), "cohort done")
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    name = "summary.csv" if share.size == 1 else f"summary_rank{share.rank}.csv"
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / name, index=False)
    return CohortResult(summary, out / name)


def _row_from_record(name: str, status: str, record: dict) -> dict:
    stages = record.get("stages", {})
    return {
        "case": name,
        "status": status,
        "lesions": record.get("lesions"),
        "volume_mm3": record.get("volume_mm3"),
        "seconds": sum(stages.values()) if stages else record.get("seconds"),
        "sequences": ";".join(record.get("present", ())),
        "error": "",
    }


def _failed(name: str, error: BaseException) -> dict:
    logger.error("case %s failed and is skipped: %s", name, error)
    return {"case": name, "status": "failed", "error": str(error).splitlines()[0]}


class _Loader:
    """Reads (and on an accelerator pre-processes) the cases in a thread, one case ahead.

    Yields ``(name, (case, prepared, read_seconds))``, ``prepared`` being
    ``None`` on a CPU (the module docstring says why), or ``(name, error)``
    for a case that could not be read or prepared.
    """

    def __init__(
        self,
        cases: list[tuple[str, PathOrPaths]],
        segmenter: Segmenter,
        present: Presence,
        mapping: Mapping[str, str] | str | os.PathLike | None,
    ) -> None:
        self._cases = cases
        self._segmenter = segmenter
        self._present = present
        self._mapping = mapping
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metseg-cohort-loader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for name, source in self._cases:
            if self._stop.is_set():
                return
            started = time.perf_counter()
            try:
                case = read_case(source, mapping=self._mapping)
                read_seconds = time.perf_counter() - started
                prepared = (
                    None
                    if self._segmenter.device.type == "cpu"
                    else self._segmenter.prepare(case, self._present)
                )
                item = (case, prepared, read_seconds)
            except CASE_ERRORS as error:
                item = error
            while not self._stop.is_set():
                try:
                    self._queue.put((name, item), timeout=0.1)
                    break
                except queue.Full:
                    continue
        self._queue.put(None)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        self._thread.join()
