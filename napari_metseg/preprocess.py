"""Pre-processing of a case into network input (METHOD.md, "Pre-processing").

The method's only normalisation is contrast-limited adaptive histogram
equalisation (CLAHE) per axial slice and per sequence, after every slice is
resized to ``size x size``. The network then sees 2.5D stacks: each slice with
``context`` neighbours on either side, sequence-major on the channel axis.

Steps of :func:`prepare_case`, per present sequence:

1. robust normalisation of the whole volume to ``[0, 1]`` (clip to the 99.5th
   percentile of nonzero voxels), so one bright artefact cannot squash a slice;
2. in-plane resize of every slice to ``size x size`` (linear, Gaussian
   anti-aliasing when shrinking; aspect ratio is not kept, as in the method);
3. CLAHE of every slice on its own (``skimage.exposure.equalize_adapthist``,
   reproduced in torch by :mod:`napari_metseg.torchprep.clahe`).

Steps 2 and 3 run in torch on any device: :func:`prepare_volumes` leaves the
result where the network runs (the engine's path), :func:`prepare_case`
returns NumPy arrays (training, fine-tuning, saliency). Absent sequences stay
exact zeros. The ``n / k`` presence scaling is *not* done here:
:func:`napari_metseg.model.dropout.apply_presence` is its one implementation,
shared by training and inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_metseg.case import SEQUENCES, Case
from napari_metseg.errors import GeometryError, ReadError, SequenceError
from napari_metseg.presence import Presence, presence_flags
from napari_metseg.torchprep.clahe import clahe
from napari_metseg.torchprep.resize import resize

logger = logging.getLogger(__name__)

#: Percentile (of nonzero voxels) mapped to 1 by the robust normalisation.
UPPER_PERCENTILE = 99.5
#: Normalised intensity above which a voxel counts as head tissue.
TISSUE_LEVEL = 0.05
#: Fraction of a slice's pixels that must be tissue for the slice to count.
TISSUE_FRACTION = 1e-3


@dataclass(frozen=True)
class PreprocessConfig:
    """How a case becomes network input; stored (as a dict) in model files.

    ``size``: every slice is resized to ``size x size`` pixels. ``context``:
    neighbouring slices on each side, so each sequence contributes
    ``2 * context + 1`` channels. ``clahe_clip_limit``: skimage's normalised
    clip limit (0 to 1). ``clahe_kernel_size``: CLAHE contextual region in
    pixels of the resized slice; ``None`` uses skimage's default, 1/8 of the
    slice.
    """

    size: int = 256
    context: int = 2
    clahe_clip_limit: float = 0.01
    clahe_kernel_size: int | None = None

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        if self.context < 0:
            raise ValueError(f"context must be >= 0 slices, got {self.context}")
        if not 0.0 <= self.clahe_clip_limit <= 1.0:
            raise ValueError(f"clahe_clip_limit must lie in [0, 1], got {self.clahe_clip_limit}")
        if self.clahe_kernel_size is not None and self.clahe_kernel_size < 1:
            raise ValueError(f"clahe_kernel_size must be >= 1 pixel, got {self.clahe_kernel_size}")


@dataclass
class PreparedCase:
    """A case ready for the network.

    ``volumes``: float32 (float16 in a training set) ``(n_sequences, n_slices, size, size)``, CLAHE'd in
    ``[0, 1]``, exact zeros for absent sequences, channel order ``sequences``.
    ``present``: bool ``(n_sequences,)``. ``native_shape``: ``(slices, rows,
    cols)`` of the case's reference grid, for :func:`restore_slices`.
    ``tissue``: bool ``(n_slices,)``, True where some present sequence shows
    head tissue (the engine may skip the other slices).
    """

    volumes: np.ndarray
    sequences: tuple[str, ...]
    present: np.ndarray
    native_shape: tuple[int, int, int]
    tissue: np.ndarray
    config: PreprocessConfig


def prepare_case(
    case: Case,
    sequences: Sequence[str] = SEQUENCES,
    present: Presence = None,
    config: PreprocessConfig = PreprocessConfig(),
) -> PreparedCase:
    """Normalise, resize and CLAHE every sequence of ``case`` the model uses.

    ``sequences`` are the model's sequence names in channel order. ``present``
    switches sequences off (read by :func:`~napari_metseg.presence.presence_flags`). A sequence
    the case lacks is absent whatever ``present`` says. Sequences of the case
    that the model does not use are ignored (and logged).

    Raises :class:`SequenceError` when no sequence is left, or ``present`` does
    not match ``sequences``; :class:`ReadError` when a used volume holds NaN or
    infinite voxels.
    """
    prepared = prepare_volumes(case, sequences, present, config, "cpu")
    return PreparedCase(
        prepared.volumes.numpy(),
        prepared.sequences,
        prepared.present,
        prepared.native_shape,
        prepared.tissue,
        config,
    )


@dataclass
class DevicePreparedCase:
    """:class:`PreparedCase` with ``volumes`` a float32 tensor on the model's device.

    ``seconds``: how long the pre-processing took (set by the engine).
    """

    volumes: torch.Tensor
    sequences: tuple[str, ...]
    present: np.ndarray
    native_shape: tuple[int, int, int]
    tissue: np.ndarray
    config: PreprocessConfig
    seconds: float = 0.0


def fed_sequences(case: Case, sequences: Sequence[str], present: Presence = None) -> np.ndarray:
    """Bool ``(n_sequences,)``: the model ``sequences`` that ``present`` switches on and
    ``case`` holds, i.e. the ``present`` flags :func:`prepare_case` gives (without preparing).

    Raises :class:`SequenceError` when none is left.
    """
    wanted = list(presence_flags(tuple(sequences), present).values())
    flags = np.array(
        [wanted[i] and name in case.images for i, name in enumerate(sequences)], dtype=bool
    )
    if not flags.any():
        raise SequenceError(
            f"case {case.name!r} has none of the sequences {list(sequences)} switched on "
            f"(case holds {list(case.sequences)}, requested presence {wanted})"
        )
    return flags


def prepare_volumes(
    case: Case,
    sequences: Sequence[str] = SEQUENCES,
    present: Presence = None,
    config: PreprocessConfig = PreprocessConfig(),
    device: torch.device | str = "cpu",
) -> DevicePreparedCase:
    """:func:`prepare_case` on ``device``: resize and CLAHE run there, the result stays.

    The robust intensity range is found on the host (NumPy's partition); the
    volume goes to the device once, raw, and everything after runs there.
    """
    device = torch.device(device)
    sequences = tuple(sequences)
    ignored = [name for name in case.sequences if name not in sequences]
    if ignored:
        logger.info("case %r: ignoring sequences the model does not use: %s", case.name, ignored)
    flags = fed_sequences(case, sequences, present)
    n_slices, rows, cols = case.shape
    size = config.size
    # every present sequence overwrites its slot; zeroing all of it first cost ~7 %
    volumes = torch.empty((len(sequences), n_slices, size, size), device=device)
    tissue = torch.zeros(n_slices, dtype=torch.bool, device=device)
    for index, name in enumerate(sequences):
        if not flags[index]:
            volumes[index] = 0.0
            continue
        image = case.images[name]
        window = intensity_window(image, f"sequence {name!r} of case {case.name!r}")
        if window is None:
            volumes[index] = 0.0
            continue
        source = torch.from_numpy(np.asarray(image, dtype=np.float32))
        if device.type == "cuda":
            source = source.pin_memory()
        normalised = _apply_window(source.to(device, non_blocking=True), window)
        tissue |= _tissue(normalised)
        clahe(
            resize(normalised, size, size),
            config.clahe_clip_limit,
            config.clahe_kernel_size,
            out=volumes[index],
        )
    tissue_flags = tissue.cpu().numpy()
    logger.debug(
        "prepared case %r: %s present, %d of %d slices with tissue",
        case.name,
        [name for name, flag in zip(sequences, flags, strict=True) if flag],
        int(tissue_flags.sum()),
        n_slices,
    )
    return DevicePreparedCase(
        volumes, sequences, flags, (n_slices, rows, cols), tissue_flags, config
    )


def intensity_window(volume: np.ndarray, label: str = "volume") -> tuple[float, float] | None:
    """``(offset, scale)`` mapping a volume robustly to ``[0, 1]``; ``None`` if all zero.

    The range ``[min(0, p0.5), p99.5]`` of the nonzero voxels maps to
    ``[0, 1]`` (values then clipped), so magnitude images keep a zero
    background and a few hot voxels do not darken everything else. Both
    numbers are float32 values, so the host and every device apply them alike.
    ``label`` names the volume in the error raised for NaN / inf voxels.
    """
    volume = np.asarray(volume, dtype=np.float32)
    finite = np.isfinite(volume)
    if not finite.all():
        bad = int(volume.size - np.count_nonzero(finite))
        raise ReadError(
            f"{label} holds {bad} non-finite voxels (NaN or infinity); "
            "fix or mask the file before segmenting"
        )
    nonzero = volume[volume != 0]
    if nonzero.size == 0:
        logger.warning("%s is all zeros", label)
        return None
    low, high = np.percentile(nonzero, [100.0 - UPPER_PERCENTILE, UPPER_PERCENTILE])
    low = min(0.0, float(low))
    high = float(high)
    if high <= low:
        high = float(nonzero.max())
    if high <= low:
        return None
    return float(np.float32(low)), float(np.float32(1.0 / (high - low)))


def normalise_volume(volume: np.ndarray, label: str = "volume") -> np.ndarray:
    """A volume mapped to float32 ``[0, 1]`` by :func:`intensity_window` (zeros if all zero)."""
    volume = np.asarray(volume, dtype=np.float32)
    window = intensity_window(volume, label)
    if window is None:
        return np.zeros_like(volume)
    return _apply_window(torch.from_numpy(volume), window).numpy()


def _apply_window(volume: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    offset, scale = window
    return ((volume - offset) * scale).clamp_(0.0, 1.0)


def tissue_slices(normalised: np.ndarray) -> np.ndarray:
    """Bool ``(n_slices,)``: slices of a ``[0, 1]`` volume that show head tissue.

    A slice counts when at least :data:`TISSUE_FRACTION` of its pixels (one at
    least) exceed :data:`TISSUE_LEVEL`, so faint background noise does not.
    """
    return _tissue(torch.as_tensor(np.asarray(normalised))).numpy()


def _tissue(normalised: torch.Tensor) -> torch.Tensor:
    n_pixels = normalised.shape[1] * normalised.shape[2]
    needed = max(1, int(np.ceil(TISSUE_FRACTION * n_pixels)))
    return (normalised > TISSUE_LEVEL).sum(dim=(1, 2)) >= needed


def resize_slices(stack: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize every slice of ``(n, r, c)`` to ``(n, rows, cols)``, float32.

    Linear interpolation with pixel centres aligned as in
    ``skimage.transform.resize`` and Gaussian anti-aliasing along an axis that
    shrinks (:func:`napari_metseg.torchprep.resize.resize`, on the CPU). The
    same function undoes itself (:func:`restore_slices`).
    """
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim != 3:
        raise GeometryError(f"a stack of slices (n, rows, cols) is needed, got shape {stack.shape}")
    if rows < 1 or cols < 1:
        raise GeometryError(f"target slice size must be positive, got {rows} x {cols}")
    return resize(torch.from_numpy(stack), rows, cols).numpy()


def clahe_slices(stack: np.ndarray, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """CLAHE every slice of a ``[0, 1]`` float stack ``(n, H, W)`` on its own.

    Equal to ``skimage.exposure.equalize_adapthist`` per 2D slice (each slice
    is stretched to its own range first and its output spans ``[0, 1]``), as
    one torch batch on the CPU. All-zero slices stay zero.
    """
    images = torch.from_numpy(np.asarray(stack, dtype=np.float32))
    return clahe(images, config.clahe_clip_limit, config.clahe_kernel_size).numpy()


def stack_25d(
    volumes: np.ndarray | torch.Tensor, slice_indices: Sequence[int] | np.ndarray, context: int = 2
) -> np.ndarray | torch.Tensor:
    """2.5D network input for the given centre slices, of the volumes' type and device.

    ``volumes`` ``(n_seq, n_slices, H, W)`` -> ``(batch, n_seq * (2 * context +
    1), H, W)``, sequence-major: ``[seq0 z-c..z+c, seq1 z-c..z+c, ...]``.
    Neighbours beyond the volume repeat the edge slice (METHOD.md). A tensor
    is indexed where it lies, so a GPU builds its own batches.
    """
    if not isinstance(volumes, torch.Tensor):
        volumes = np.asarray(volumes)
    if volumes.ndim != 4:
        raise ValueError(f"volumes must be (n_seq, n_slices, H, W), got shape {volumes.shape}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    n_seq, n_slices, height, width = volumes.shape
    centres = np.asarray(slice_indices, dtype=np.int64).reshape(-1)
    outside = centres[(centres < 0) | (centres >= n_slices)]
    if outside.size:
        raise ValueError(f"slice indices {outside.tolist()} outside [0, {n_slices - 1}]")
    offsets = np.arange(-context, context + 1)
    neighbours = np.clip(centres[:, None] + offsets[None, :], 0, n_slices - 1)
    if isinstance(volumes, torch.Tensor):
        picked = volumes[:, torch.from_numpy(neighbours).to(volumes.device)]
        return picked.transpose(0, 1).reshape(centres.size, n_seq * offsets.size, height, width)
    out = np.empty((centres.size, n_seq, offsets.size, height, width), dtype=volumes.dtype)
    for sequence in range(n_seq):
        np.take(volumes[sequence], neighbours, axis=0, out=out[:, sequence])
    return out.reshape(centres.size, n_seq * offsets.size, height, width)


def restore_slices(stack: np.ndarray, native_shape: tuple[int, int, int]) -> np.ndarray:
    """Undo the in-plane resize: ``(n_slices, size, size)`` -> ``native_shape``, float32.

    Linear interpolation (anti-aliased where the native grid is coarser), so a
    probability volume predicted at ``size x size`` lands on the case's grid.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] != native_shape[0]:
        raise GeometryError(
            f"stack of shape {stack.shape} cannot be restored to {tuple(native_shape)}: "
            "the slice counts must match"
        )
    return resize_slices(stack, int(native_shape[1]), int(native_shape[2]))
