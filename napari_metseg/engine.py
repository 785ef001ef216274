"""Whole-case inference: pre-processing, batched 2.5D prediction, back to the case grid.

A :class:`Segmenter` holds a model on its device, configured once and called
on cases (like nnU-Net's predictor); :func:`segment` is the one-call
convenience that the GUI, the CLI and scripts use. Devices: CUDA, then Apple
MPS, then the CPU (``device="auto"``). On a GPU the engine uses autocast (bf16
where supported, else fp16), pinned host memory and as large a batch as fits
(halving it on out-of-memory, freeing the cache each time). Pre-processing
(resize, CLAHE), the 2.5D stacks and the restore to the case grid run on the
model's device too (:func:`napari_metseg.preprocess.prepare_volumes`), so a
case crosses to the GPU once, raw, and comes back once, as the probability;
:class:`SegmentationInfo` records the time of every stage. Every device gets
channels-last memory (on the CPU it also speeds up oneDNN's depthwise
convolutions of the light backbone). Slices without head tissue are skipped
(probability 0) and counted in :class:`SegmentationInfo`. Progress goes to a
plain callback and a ``threading.Event`` cancels between batches. On the CPU
the result is deterministic for a given model and input.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from napari_metseg.case import Case
from napari_metseg.devices import resolve_device
from napari_metseg.errors import ModelFileError
from napari_metseg.model import MetsegNet, apply_presence, folding
from napari_metseg.model.heads import Features
from napari_metseg.preprocess import (
    DevicePreparedCase,
    PreparedCase,
    prepare_volumes,
    stack_25d,
)
from napari_metseg.presence import Presence, presence_flags
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress
from napari_metseg.torchprep.resize import resize

logger = logging.getLogger(__name__)

#: Slices per batch to start from, per device type (halved on out-of-memory). On 2 CPU
#: threads the bundled model's network took 2.0 s for the sample case at 4 slices per
#: batch, 2.4 at 2, 2.6-2.8 at 8 and 3.1 at 16: the decoder's stride-4 maps of a small
#: batch stay in cache.
START_BATCH = {"cuda": 64, "mps": 16, "cpu": 4}

#: Compute precisions a :class:`Segmenter` accepts (``auto`` picks per device).
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")

#: Called with each batch's frozen-part output (:meth:`MetsegNet.context`) and logits.
KeepContext = Callable[[Features, torch.Tensor], None]


@dataclass(frozen=True)
class SegmentationInfo:
    """How a case was segmented: what the GUI shows and the logs record.

    ``slices`` counts the slices of the case, ``skipped`` those without head
    tissue (not run through the network, probability 0). ``present`` lists
    the model sequences fed (the others were zeros). ``batch_size`` is the
    one that finally fitted; ``seconds`` is the network time alone;
    ``stages`` maps each stage the engine ran (``preprocess``, ``network``,
    ``restore``) to its seconds.
    """

    slices: int
    skipped: int
    present: tuple[str, ...]
    device: str
    precision: str
    batch_size: int
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Segmentation:
    """Lesion probability ``(slice, row, col)`` float32 on the case grid, and how it came."""

    probability: np.ndarray
    info: SegmentationInfo


class Segmenter:
    """A model on its device, ready to segment case after case.

    ``batch_size`` fixes the slices per batch (default: per device,
    :data:`START_BATCH`, halved on out-of-memory and remembered for the
    next case). ``precision``: ``auto`` is bf16 autocast on CUDA cards that
    support it, else fp16 on a GPU, and exact float32 on the CPU;
    ``bfloat16`` autocast on a CPU with AVX-512 BF16 / AMX kernels may run
    faster (probabilities moved by about 1e-3 in our tests; measure with
    ``bench/inference.py --precision``). The model is moved to the device and
    put in eval mode once. ``fold_batchnorm`` runs an inference copy with the
    batch norms folded into the convolutions
    (:func:`~napari_metseg.model.folding.fold_batchnorm`; same output to
    float rounding, faster): ``segmenter.model`` is then that copy, and the
    caller's model stays untouched and trainable. Callers that train
    ``segmenter.model`` (fine-tuning) leave it off.
    """

    def __init__(
        self,
        model: MetsegNet,
        device: str | torch.device = "auto",
        batch_size: int | None = None,
        precision: str = "auto",
        fold_batchnorm: bool = False,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = resolve_device(device)
        # Channels-last suits cuDNN's tensor cores and oneDNN's depthwise kernels alike.
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        if fold_batchnorm:
            self.model = folding.fold_batchnorm(self.model).to(memory_format=torch.channels_last)
        self.batch_size = batch_size or START_BATCH.get(self.device.type, START_BATCH["cpu"])
        if precision == "auto":
            if self.device.type == "cpu":
                precision = "float32"
            elif self.device.type == "cuda" and torch.cuda.is_bf16_supported():
                precision = "bfloat16"
            else:
                precision = "float16"
        self.autocast = precision != "float32"
        self.dtype = getattr(torch, precision)

    @property
    def precision(self) -> str:
        """The compute precision: ``float32``, or ``bfloat16`` / ``float16`` under autocast."""
        return str(self.dtype).removeprefix("torch.")

    def __call__(
        self,
        case: Case,
        present: Presence = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Segmentation:
        """Segment ``case``; see :func:`segment` for ``present``.

        Raises :class:`~napari_metseg.errors.ModelFileError` when the case
        holds none of the model's sequences (the model does not fit the case),
        :class:`~napari_metseg.errors.SequenceError` when the user switched
        every sequence off.
        """
        (progress or no_progress)(0, 1, "pre-processing")
        prepared = self.prepare(case, present)
        check_cancel(cancel)
        return self.segment_prepared(prepared, progress, cancel)

    def prepare(self, case: Case, present: Presence = None) -> DevicePreparedCase:
        """Pre-process ``case`` on the model's device (a cohort does it a case ahead)."""
        config = self.model.config
        if not set(case.sequences) & set(config.sequences):
            raise ModelFileError(
                f"the model reads sequences {list(config.sequences)}, but case {case.name!r} "
                f"holds only {list(case.sequences)}; map the case's files to the model's "
                "sequences or choose a model trained on them"
            )
        flags = presence_flags(config.sequences, present)
        started = time.perf_counter()
        with torch.inference_mode():
            prepared = prepare_volumes(
                case, config.sequences, flags, config.preprocess, self.device
            )
        return replace(prepared, seconds=self._elapsed(started))

    def segment_prepared(
        self,
        prepared: DevicePreparedCase,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        keep: KeepContext | None = None,
    ) -> Segmentation:
        """The network on a :meth:`prepare`-d case, restored to the case grid on the device.

        ``keep``: see :meth:`predict_prepared`.
        """
        with torch.inference_mode():
            stack, info = self._predict(prepared, progress, cancel, keep)
            started = time.perf_counter()
            _, rows, cols = prepared.native_shape
            probability = resize(stack, rows, cols).cpu().numpy()
        stages = {"preprocess": prepared.seconds, "network": info.seconds}
        stages["restore"] = time.perf_counter() - started
        return Segmentation(probability, replace(info, stages=stages))

    def predict_prepared(
        self,
        prepared: PreparedCase | DevicePreparedCase,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        keep: KeepContext | None = None,
    ) -> tuple[np.ndarray, SegmentationInfo]:
        """Probability ``(n_slices, size, size)`` of a prepared case (0 on skipped slices).

        ``keep(context, logits)`` gets every batch's frozen-part output and
        logits, in slice order over the tissue slices, as the network computed
        them on the way to the probability (the same numbers: fast fine-tuning
        keeps them instead of running the network again). They are inference
        tensors: use them outside inference mode through a copy (``torch.cat``).
        """
        with torch.inference_mode():
            stack, info = self._predict(prepared, progress, cancel, keep)
            return stack.cpu().numpy(), info

    def _predict(
        self,
        prepared: PreparedCase | DevicePreparedCase,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        keep: KeepContext | None = None,
    ) -> tuple[torch.Tensor, SegmentationInfo]:
        """Probability on the device; the 2.5D batches are gathered there too."""
        progress = progress or no_progress
        started = time.perf_counter()
        volumes = torch.as_tensor(prepared.volumes).to(self.device, torch.float32)
        slices = np.flatnonzero(prepared.tissue)
        skipped = prepared.tissue.size - slices.size
        if skipped:
            logger.info(
                "skipping %d of %d slices without head tissue", skipped, prepared.tissue.size
            )
        n_slices, size = volumes.shape[1], volumes.shape[2]
        probability = torch.zeros((n_slices, size, size), device=self.device)
        present = torch.from_numpy(prepared.present).to(self.device)
        message = f"segmenting on {self.device.type}" + (
            f" ({skipped} empty slices skipped)" if skipped else ""
        )
        done = 0
        progress(0, slices.size, message)
        try:
            while done < slices.size:
                check_cancel(cancel)
                chunk = slices[done : done + self.batch_size]
                try:
                    x = stack_25d(volumes, chunk, prepared.config.context)
                    index = torch.from_numpy(chunk).to(self.device)
                    probability[index] = self._predict_batch(x, present, keep)
                except torch.OutOfMemoryError:
                    if self.batch_size == 1:
                        raise
                    self.batch_size //= 2
                    self._free_memory()
                    logger.info("out of memory: batch size halved to %d", self.batch_size)
                    continue
                done += chunk.size
                progress(done, slices.size, message)
        except BaseException:
            self._free_memory()
            raise
        info = SegmentationInfo(
            slices=n_slices,
            skipped=int(skipped),
            present=tuple(
                name
                for name, flag in zip(prepared.sequences, prepared.present, strict=True)
                if flag
            ),
            device=str(self.device),
            precision=self.precision,
            batch_size=self.batch_size,
            seconds=self._elapsed(started),
        )
        return probability, info

    def _predict_batch(
        self, x: torch.Tensor, present: torch.Tensor, keep: KeepContext | None
    ) -> torch.Tensor:
        x = apply_presence(x, present).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
            if keep is None:
                logits = self.model(x)
            else:  # the model's forward, split where fast fine-tuning freezes it
                context = self.model.context(self.model.features(x))
                logits = self.model.decode(context)
                keep(context, logits)
        return torch.softmax(logits.float(), dim=1)[:, 1]

    def _elapsed(self, started: float) -> float:
        """Seconds since ``started``, after the device finished the work queued so far."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def _free_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()


def segment(
    case: Case,
    model: MetsegNet,
    present: Presence = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    precision: str = "auto",
) -> np.ndarray:
    """Lesion probability of every voxel of ``case``: float32, shape ``case.shape``.

    ``present`` switches model sequences off (they are fed as zeros and the
    rest scaled by n/k): ``None`` (all), names, a bool per model sequence, or
    a mapping name -> bool. Sequences the case lacks are absent anyway, and
    case sequences the model does not know are ignored (logged). ``model``
    is moved to the chosen device. For the skipped-slice count and timings,
    call a :class:`Segmenter` instead; ``precision`` as there.
    """
    segmenter = Segmenter(model, device, batch_size, precision)
    return segmenter(case, present, progress, cancel).probability


def predict_prepared(
    prepared: PreparedCase,
    model: MetsegNet,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """Probability ``(n_slices, size, size)`` of an already prepared case (benchmarks, fine-tuning)."""
    stack, _ = Segmenter(model, device, batch_size).predict_prepared(prepared, progress, cancel)
    return stack
