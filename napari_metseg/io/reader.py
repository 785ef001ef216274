"""``read_case``: the sequences of a case on one reference grid."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np

from napari_metseg.case import SEQUENCES, Case
from napari_metseg.errors import SequenceError
from napari_metseg.io.layouts import CaseSources, PathOrPaths, scan_case
from napari_metseg.io.resample import check_overlap, register_rigid, resample_to
from napari_metseg.io.volume import Volume

logger = logging.getLogger(__name__)

#: Reference grid when none is asked for: the first of these the case holds.
REFERENCE_ORDER: tuple[str, ...] = ("bravo", "cube_post")


def read_case(
    path_or_paths: PathOrPaths,
    mapping: Mapping[str, str] | str | os.PathLike | None = None,
    reference: str | None = None,
    register: bool = False,
    series: str | None = None,
) -> Case:
    """Read a case folder, a list of files or a single file into a :class:`Case`.

    Sequences are found by :func:`~napari_metseg.io.layouts.scan_case`
    (``mapping`` overrides guessing; ``series`` picks a DICOM series). Every
    sequence and the truth are resampled in physical space onto the grid of
    ``reference`` (default ``bravo``, else ``cube_post``, else the first found):
    trilinear for images, nearest neighbour for the truth; grids equal to the
    reference are taken as they are. ``register=True`` first aligns each
    sequence to the reference by rigid registration (Mattes mutual
    information); the truth is assumed drawn in the reference's space.

    Raises :class:`~napari_metseg.errors.ReadError`, ``GeometryError`` (no
    overlap, 2D data) or ``SequenceError`` (unknown names, nothing recognised).
    """
    found = scan_case(path_or_paths, mapping=mapping, series=series)
    reference_name = choose_reference(found, reference)
    fixed = found.volumes[reference_name]
    notes = list(found.notes)
    notes.append(
        f"reference grid: {reference_name} ({fixed.path.name}): {fixed.geometry.summary()}"
    )
    images: dict[str, np.ndarray] = {}
    for name, volume in found.volumes.items():
        if name == reference_name:
            images[name] = volume.data
            continue
        check_overlap(volume.geometry, fixed.geometry, volume.path.name, fixed.path.name)
        transform = None
        if register:
            transform = register_rigid(fixed.data, fixed.geometry, volume.data, volume.geometry)
            shift = float(np.linalg.norm(transform[:3, 3]))
            notes.append(
                f"{name}: rigidly registered to {reference_name} (translation {shift:.1f} mm)"
            )
        images[name] = _onto(volume, fixed, transform, order=1, name=name, notes=notes)
    truth = None
    if found.truth is not None:
        check_overlap(found.truth.geometry, fixed.geometry, found.truth.path.name, fixed.path.name)
        labels = _onto(found.truth, fixed, None, order=0, name="truth", notes=notes)
        truth = _label_array(labels)
        values = np.unique(truth)
        if values.size > 2:
            notes.append(f"truth holds labels {values[values > 0].tolist()} (kept as they are)")
    sources = {name: str(volume.path) for name, volume in found.volumes.items()}
    if found.truth is not None:
        sources["truth"] = str(found.truth.path)
    for note in notes:
        logger.debug("case %s: %s", found.name, note)
    return Case(
        images=images,
        geometry=fixed.geometry,
        truth=truth,
        name=found.name,
        reference=reference_name,
        sources=sources,
        mapping_notes=notes,
    )


def choose_reference(found: CaseSources, reference: str | None = None) -> str:
    """The sequence whose grid the case uses: ``reference``, else bravo, cube_post, first."""
    if reference is not None:
        if reference not in found.volumes:
            raise SequenceError(
                f"reference {reference!r} is not in case {found.name!r}; it holds "
                f"{', '.join(found.volumes)} (valid names: {', '.join(SEQUENCES)})"
            )
        return reference
    for name in REFERENCE_ORDER:
        if name in found.volumes:
            return name
    return next(iter(found.volumes))


def _onto(
    volume: Volume,
    fixed: Volume,
    transform: np.ndarray | None,
    order: int,
    name: str,
    notes: list[str],
) -> np.ndarray:
    if transform is None and volume.geometry.same_grid(fixed.geometry):
        notes.append(f"{name}: already on the reference grid")
        return volume.data
    method = "trilinear" if order else "nearest neighbour"
    notes.append(
        f"{name}: resampled onto the reference grid ({method}) from {volume.geometry.summary()}"
    )
    return resample_to(
        volume.data, volume.geometry, fixed.geometry, order=order, transform=transform
    )


def _label_array(labels: np.ndarray) -> np.ndarray:
    """Truth voxels as uint8 (uint16 when label ids exceed 255)."""
    rounded = np.rint(labels)
    return rounded.astype(np.uint8 if rounded.max(initial=0) <= 255 else np.uint16)
