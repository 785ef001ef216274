"""npe2 hooks: the reader, the NIfTI writers and the sample case (thin wrappers).

The reader turns a single volume into an Image layer (a Labels layer when the
file name says ``seg`` / ``mask`` / ``labels``) and a case folder into one
Image layer per sequence plus the truth, all in internal order placed by the
reference grid (:attr:`~napari_metseg.case.Geometry.napari_affine`), each named
after its file (the ``sequence`` metadata says what it plays). The writers put
a layer back on its source grid through :func:`napari_metseg.io.write_volume`.
The layer data comes from the Qt- and napari-free :mod:`napari_metseg.layerdata`,
so reading a file imports neither napari nor the widgets; :func:`activate` (the
manifest's ``on_activate``) is the one hook that touches napari's settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_metseg.errors import GeometryError
from napari_metseg.layerdata import (
    VOLUME_SUFFIXES,
    LayerData,
    case_layers,
    file_stem,
    geometry_from_napari_affine,
    guess_sequence,
    image_layer,
    labels_layer,
    looks_like_mask,
    world_matrix,
)

logger = logging.getLogger(__name__)

#: Patterns napari's built-in (imageio) reader claims too: with two readers and no preference
#: (``settings.plugins.extension2reader``) napari asks "Choose reader" for every such file.
SHARED_PATTERNS: tuple[str, ...] = ("*.nii", "*.nii.gz")
PLUGIN = "napari-metseg"
#: Slice files a case folder may hold one level down (one folder per sequence).
_SLICE_SUFFIXES: tuple[str, ...] = (".png", ".dcm")
_MAX_ENTRIES = 500

#: The sample case: phantom seed and voxel size (mm), shared with ``metseg demo``.
SAMPLE_SEED = 7
SAMPLE_SPACING = 1.5

PathOrPaths = str | os.PathLike | list[str | os.PathLike]


def activate(context: Any = None) -> None:
    """npe2's ``on_activate`` (the first time napari runs one of MetSeg's commands: read,
    sample data): :func:`prefer_metseg_reader`."""
    prefer_metseg_reader()


def prefer_metseg_reader() -> None:
    """Make MetSeg napari's reader for :data:`SHARED_PATTERNS`, so opening one asks no
    "Choose reader"; a choice the user made (preferences, the reader dialog) stays.
    Docking the workbench calls it too: napari docks a widget without activating its plugin."""
    from napari.settings import get_settings

    preferences = get_settings().plugins.extension2reader
    missing = {pattern: PLUGIN for pattern in SHARED_PATTERNS if pattern not in preferences}
    if missing:
        get_settings().plugins.extension2reader = {**preferences, **missing}


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list[LayerData]] | None:
    """A reader for volume files and case folders, or None for anything else.

    Only cheap checks here (file endings, a look into a folder); reading
    errors surface when the returned reader runs.
    """
    paths = [Path(p) for p in path] if isinstance(path, list) else [Path(path)]
    if paths and all(_is_volume_file(p) for p in paths):
        return read_layers
    if len(paths) == 1 and _looks_like_case_folder(paths[0]):
        return read_layers
    return None


def read_layers(path: PathOrPaths) -> list[LayerData]:
    """Layers of each path: a case for a folder, one layer for a volume file."""
    from napari_metseg.io import read_case

    layers: list[LayerData] = []
    for item in path if isinstance(path, list) else [path]:
        item = Path(item)
        if item.is_dir():
            layers.extend(case_layers(read_case(item)))
        else:
            layers.append(_volume_layer(item))
    return layers


def _volume_layer(path: Path) -> LayerData:
    from napari_metseg.io import read_volume

    volume = read_volume(path)
    name = file_stem(path)
    if looks_like_mask(name):
        return labels_layer(volume.data, volume.geometry, name, source=str(path))
    return image_layer(
        volume.data,
        volume.geometry,
        name,
        sequence=guess_sequence(name, {}),
        source=str(path),
    )


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """Write an image layer as NIfTI on its source grid; returns the path written."""
    return [_write(path, np.asarray(data, dtype=np.float32), attributes, kind="image")]


def write_labels(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a labels layer as an integer NIfTI on its source grid; returns the path written."""
    return [_write(path, np.asarray(data), attributes, kind="mask")]


def _write(path: str, data: np.ndarray, attributes: dict, kind: str) -> str:
    from napari_metseg.io import write_volume

    if data.ndim != 3:
        raise GeometryError(
            f"layer {attributes.get('name')!r} is {data.ndim}D; only 3D volumes are written"
        )
    geometry = (attributes.get("metadata") or {}).get("geometry")
    if geometry is None or tuple(geometry.shape) != data.shape:
        geometry = geometry_from_napari_affine(data.shape, world_matrix(attributes))
        data = geometry.to_internal(data)
    write_volume(path, data, geometry, kind=kind)
    logger.info("wrote layer %r to %s", attributes.get("name"), path)
    return str(path)


def sample_case() -> list[LayerData]:
    """The synthetic sample case: four sequences and the truth mask."""
    from napari_metseg.phantom import make_phantom

    return case_layers(make_phantom(SAMPLE_SEED, spacing=SAMPLE_SPACING))


def _is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES) and path.is_file()


def _looks_like_case_folder(path: Path) -> bool:
    """A folder holding volume files, or sub-folders of volumes or slices."""
    if not path.is_dir():
        return False
    try:
        entries = sorted(path.iterdir())[:_MAX_ENTRIES]
        if any(_is_volume_file(entry) for entry in entries):
            return True
        for folder in (entry for entry in entries if entry.is_dir()):
            for index, entry in enumerate(folder.iterdir()):
                if index >= _MAX_ENTRIES:
                    break
                if entry.name.lower().endswith(VOLUME_SUFFIXES + _SLICE_SUFFIXES):
                    return True
    except OSError:
        return False
    return False
