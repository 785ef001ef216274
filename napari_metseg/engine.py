"""Whole-case inference: pre-processing, batched 2.5D prediction, back to the case grid.

:func:`segment` is what the GUI, the CLI and scripts call. It runs on CUDA,
then Apple MPS, then the CPU (``device="auto"``); on a GPU it uses autocast
(bf16 where supported, else fp16), channels-last memory, pinned host memory
and as large a batch as fits (halving it on out-of-memory). Slices without
head tissue are skipped (probability 0). Progress goes to a plain callback and
a ``threading.Event`` cancels between batches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from napari_metseg.case import Case
from napari_metseg.model import MetsegNet, apply_presence
from napari_metseg.preprocess import PreparedCase, prepare_case, restore_slices, stack_25d
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress

logger = logging.getLogger(__name__)

#: Slices per batch to start from, per device type (halved on out-of-memory).
START_BATCH = {"cuda": 64, "mps": 16, "cpu": 8}

Presence = Sequence[str] | Sequence[bool] | Mapping[str, bool] | None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA, else Apple MPS, else CPU; other names are checked."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but PyTorch finds no CUDA device")
    return device


def presence_flags(sequences: Sequence[str], present: Presence) -> dict[str, bool]:
    """Normalise the ways a caller names present sequences into ``{name: bool}``.

    ``present`` may be ``None`` (all), a collection of names, a bool per model
    sequence, or a mapping; unknown names raise ``ValueError`` naming them.
    """
    if present is None:
        return dict.fromkeys(sequences, True)
    if isinstance(present, Mapping):
        flags = {name: bool(present.get(name, True)) for name in sequences}
        unknown = set(present) - set(sequences)
    elif all(isinstance(item, str) for item in present):
        flags = {name: name in present for name in sequences}
        unknown = set(present) - set(sequences)
    else:
        if len(present) != len(sequences):
            raise ValueError(
                f"{len(present)} presence flags for the {len(sequences)} sequences {sequences}"
            )
        return {name: bool(flag) for name, flag in zip(sequences, present, strict=True)}
    if unknown:
        raise ValueError(f"unknown sequences {sorted(unknown)}; the model uses {list(sequences)}")
    return flags


def segment(
    case: Case,
    model: MetsegNet,
    present: Presence = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Lesion probability of every voxel of ``case``: float32, shape ``case.shape``.

    ``present`` switches model sequences off (they are fed as zeros and the
    rest scaled by n/k); sequences the case lacks are absent anyway, and case
    sequences the model does not know are ignored. ``model`` is moved to the
    chosen device.
    """
    progress = progress or no_progress
    config = model.config
    flags = presence_flags(config.sequences, present)
    progress(0, 1, "pre-processing")
    prepared = prepare_case(case, config.sequences, flags, config.preprocess)
    check_cancel(cancel)
    stack = predict_prepared(prepared, model, device, batch_size, progress, cancel)
    return restore_slices(stack, prepared.native_shape)


def predict_prepared(
    prepared: PreparedCase,
    model: MetsegNet,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Probability ``(n_slices, size, size)`` of a prepared case (0 on skipped slices)."""
    progress = progress or no_progress
    device = resolve_device(device)
    model.to(device).eval()
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    slices = np.flatnonzero(prepared.tissue)
    skipped = prepared.tissue.size - slices.size
    if skipped:
        logger.info("skipping %d of %d slices without head tissue", skipped, prepared.tissue.size)
    n_slices, size = prepared.volumes.shape[1], prepared.volumes.shape[2]
    probability = np.zeros((n_slices, size, size), dtype=np.float32)
    present = torch.from_numpy(prepared.present)
    batch = batch_size or START_BATCH.get(device.type, 8)
    done = 0
    message = f"segmenting on {device.type}" + (
        f" ({skipped} empty slices skipped)" if skipped else ""
    )
    progress(0, slices.size, message)
    while done < slices.size:
        check_cancel(cancel)
        chunk = slices[done : done + batch]
        try:
            probability[chunk] = _predict_batch(prepared, chunk, model, present, device)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            logger.info("out of memory: batch size halved to %d", batch)
            continue
        done += chunk.size
        progress(done, slices.size, message)
    return probability


def _predict_batch(
    prepared: PreparedCase,
    chunk: np.ndarray,
    model: MetsegNet,
    present: torch.Tensor,
    device: torch.device,
) -> np.ndarray:
    x = torch.from_numpy(stack_25d(prepared.volumes, chunk, prepared.config.context))
    gpu = device.type in ("cuda", "mps")
    if device.type == "cuda":
        x = x.pin_memory()
    x = apply_presence(x.to(device, non_blocking=True), present.to(device))
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = (
        torch.bfloat16
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else torch.float16
    )
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=gpu):
        logits = model(x)
    return torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()
