"""Running the core's long work off the GUI thread.

:func:`background` wraps any core function (segmentation, fine-tuning,
saliency, sequence importance, or the two wrappers here) in a napari thread worker; ``idle`` is set when
the function has returned or raised, so closing the viewer can wait for it.
Progress and cancellation are the core's own: a plain callable and a
``threading.Event``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.qt.threading import FunctionWorker, create_worker

from napari_metseg.case import Case
from napari_metseg.correction import FinetuneConfig, FinetuneResult, Workspace
from napari_metseg.correction.cache import CaseContext, segment_keeping_context
from napari_metseg.engine import segment


def run_segmentation(
    load_model: Callable[[], Any],
    case: Case,
    present: Sequence[str],
    device: str,
    keep_context: bool,
    progress: Callable[[int, int, str], None],
    cancel: threading.Event,
) -> tuple[np.ndarray, CaseContext | None]:
    """Load (or reuse) the model, then segment ``case``: the probability volume, and with
    ``keep_context`` fast fine-tuning's cache of the case (None otherwise)."""
    progress(0, 1, "loading the model")
    model = load_model()
    if keep_context:
        return segment_keeping_context(case, model, tuple(present), device, progress, cancel)
    probability = segment(
        case, model, present=tuple(present), device=device, progress=progress, cancel=cancel
    )
    return probability, None


@dataclass
class Round:
    """One fine-tuning round: the version it made, its prediction and how training went."""

    version: str
    probability: np.ndarray
    result: FinetuneResult


def finetune_round(
    workspace: Workspace,
    case: Case,
    present: Sequence[str],
    config: FinetuneConfig,
    reference: np.ndarray | None,
    context: CaseContext | None,
    progress: Callable[[int, int, str], None],
    cancel: threading.Event,
) -> Round:
    """Fine-tune the base model on the saved strokes; the round's own prediction comes back.

    ``reference``: the base model's prediction with ``present`` when already
    computed (the round's trust region needs it); ``context``: fast mode's
    cache that the run of the base model kept, if it did.
    """
    result = workspace.finetune(
        case, config, tuple(present), progress, cancel, reference=reference, context=context
    )
    return Round(workspace.current, result.probability, result)


def background(
    function: Callable[..., Any], idle: threading.Event, *args: Any, **kwargs: Any
) -> FunctionWorker:
    """An unstarted worker running ``function(*args, **kwargs)``; sets ``idle`` when done.

    Errors are left to the caller's ``errored`` handler (none are re-raised).
    """
    idle.clear()

    def run() -> Any:
        try:
            return function(*args, **kwargs)
        finally:
            idle.set()

    return create_worker(run, _start_thread=False, _ignore_errors=True)
