"""Corrections and the training samples made from them.

A *corrections* volume is uint8 on the case's reference grid ``(slice, row,
col)``: :data:`LESION` (1) where the user painted a lesion the model missed,
:data:`NOT_LESION` (2) where the user marked something the model took for a
lesion (a vessel, a mimic), :data:`UNMARKED` (0) wherever nobody looked.
Strokes are sparse: a lesion is usually marked by a few voxels inside it, not
outlined.

Fine-tuning trains on the slices that carry corrections, plus a few
neighbouring and random slices of the same case so the model does not forget
what it already knew; the loss on them is in
:mod:`napari_metseg.correction.objective`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_metseg.errors import CorrectionError, GeometryError

#: Values of a corrections volume.
UNMARKED, LESION, NOT_LESION = 0, 1, 2
#: Where a sample slice comes from.
CORRECTED, NEIGHBOUR, RANDOM = "corrected", "neighbour", "random"


def empty_corrections(shape: Sequence[int]) -> np.ndarray:
    """A corrections volume with nothing marked: uint8 zeros of ``shape``."""
    return np.zeros(tuple(int(s) for s in shape), dtype=np.uint8)


def check_corrections(corrections: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``corrections`` as uint8 after checking its shape and values (0, 1, 2).

    Raises :class:`~napari_metseg.errors.GeometryError` naming the shapes or
    values found.
    """
    array = np.asarray(corrections)
    if tuple(array.shape) != tuple(shape):
        raise GeometryError(
            f"corrections of shape {array.shape} do not match the case grid {tuple(shape)}"
        )
    values = np.unique(array)
    bad = values[~np.isin(values, (UNMARKED, LESION, NOT_LESION))]
    if bad.size:
        raise GeometryError(
            f"corrections hold values {bad.tolist()}; only 0 (unmarked), 1 (lesion) "
            "and 2 (not lesion) are allowed"
        )
    return array.astype(np.uint8, copy=False)


def accept_lesion(corrections: np.ndarray, labels: np.ndarray, label: int) -> np.ndarray:
    """Mark every voxel of predicted lesion ``label`` (in a lesion label map) as lesion.

    ``labels`` is an integer map on the case grid (e.g. the ``labels`` of
    :func:`napari_metseg.lesion_table`). Changes ``corrections`` in place and
    returns it; raises ``ValueError`` when ``label`` is not in ``labels``.
    """
    return _mark(corrections, labels, label, LESION)


def reject_lesion(corrections: np.ndarray, labels: np.ndarray, label: int) -> np.ndarray:
    """Mark every voxel of predicted lesion ``label`` as not lesion (in place)."""
    return _mark(corrections, labels, label, NOT_LESION)


def _mark(corrections: np.ndarray, labels: np.ndarray, label: int, value: int) -> np.ndarray:
    if corrections.shape != labels.shape:
        raise GeometryError(
            f"labels of shape {labels.shape} do not match corrections {corrections.shape}"
        )
    where = labels == label
    if label <= 0 or not where.any():
        raise ValueError(f"label {label} is not a lesion of the label map")
    corrections[where] = value
    return corrections


def _corrected_slices(corrections: np.ndarray) -> np.ndarray:
    """Indices of the slices holding at least one marked voxel, ascending."""
    return np.flatnonzero(np.any(corrections != UNMARKED, axis=(1, 2)))


def to_network_grid(corrections: np.ndarray, size: int) -> np.ndarray:
    """Resize corrections slices ``(n, rows, cols)`` to ``(n, size, size)`` without losing strokes.

    A network pixel takes a mark when a native pixel it covers carries it
    (so a one-voxel stroke survives shrinking) or when the native pixel
    nearest its centre does (so enlarging fills every pixel). A pixel that
    would carry both marks stays unmarked.
    """
    n, rows, cols = corrections.shape
    row_to = np.minimum(((np.arange(rows) + 0.5) * size / rows).astype(np.int64), size - 1)
    col_to = np.minimum(((np.arange(cols) + 0.5) * size / cols).astype(np.int64), size - 1)
    row_from = np.minimum(((np.arange(size) + 0.5) * rows / size).astype(np.int64), rows - 1)
    col_from = np.minimum(((np.arange(size) + 0.5) * cols / size).astype(np.int64), cols - 1)
    out = np.zeros((n, size, size), dtype=np.uint8)
    hits = []
    for value in (LESION, NOT_LESION):
        marked = corrections == value
        hit = marked[:, row_from][:, :, col_from]
        z, r, c = np.nonzero(marked)
        hit[z, row_to[r], col_to[c]] = True
        hits.append(hit)
    lesion, not_lesion = hits
    out[lesion & ~not_lesion] = LESION
    out[not_lesion & ~lesion] = NOT_LESION
    return out


@dataclass
class CorrectionSamples:
    """The slices a fine-tuning round trains on.

    ``slices``: int ``(n,)`` centre slice indices; ``kinds``: where each comes
    from (:data:`CORRECTED`, :data:`NEIGHBOUR`, :data:`RANDOM`); ``marks``:
    uint8 ``(n, size, size)`` corrections on the network grid.
    """

    slices: np.ndarray
    kinds: tuple[str, ...]
    marks: np.ndarray

    @property
    def corrected(self) -> np.ndarray:
        """Bool ``(n,)``: samples from slices that carry corrections."""
        return np.array([kind == CORRECTED for kind in self.kinds], dtype=bool)

    @property
    def marked(self) -> np.ndarray:
        """Bool ``(n, size, size)``: voxels the user marked (lesion or not)."""
        return self.marks != UNMARKED


def select_samples(
    corrections: np.ndarray,
    size: int,
    tissue: np.ndarray | None = None,
    neighbours: int = 1,
    random_slices: int = 4,
    rng: np.random.Generator | None = None,
) -> CorrectionSamples:
    """The corrected slices, ``neighbours`` slices on each side of them and
    ``random_slices`` other slices (with tissue where ``tissue`` is given).

    ``corrections``: uint8 ``(slices, rows, cols)`` on the case grid. Raises
    :class:`CorrectionError` when nothing is marked.
    """
    if neighbours < 0 or random_slices < 0:
        raise ValueError(
            f"neighbours and random_slices must be >= 0, got {neighbours}, {random_slices}"
        )
    n_slices = corrections.shape[0]
    corrected = _corrected_slices(corrections)
    if corrected.size == 0:
        raise CorrectionError("no corrections: mark a missed lesion or a false positive first")
    rng = rng or np.random.default_rng(0)
    usable = np.ones(n_slices, dtype=bool) if tissue is None else np.asarray(tissue, bool).copy()
    usable[corrected] = False
    near = np.unique(
        np.clip(corrected[:, None] + np.arange(-neighbours, neighbours + 1), 0, n_slices - 1)
    )
    near = near[usable[near]]
    usable[near] = False
    pool = np.flatnonzero(usable)
    far = np.sort(rng.choice(pool, size=min(random_slices, pool.size), replace=False))
    slices = np.concatenate([corrected, near, far]).astype(np.int64)
    kinds = (CORRECTED,) * corrected.size + (NEIGHBOUR,) * near.size + (RANDOM,) * far.size
    return CorrectionSamples(slices, kinds, to_network_grid(corrections[slices], size))
