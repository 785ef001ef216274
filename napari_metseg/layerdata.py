"""napari layer data ``(data, kwargs, layer_type)`` for cases and results, without napari.

The reader, the sample data and the workbench build every layer here, so each
MetSeg layer carries the same metadata: ``sequence``, ``role`` (``image``,
``truth``, ``probability``, ``lesions``, ``corrections``, ``saliency``),
``source`` (file path), ``affine_ras`` (internal indices to RAS+ mm),
``axcodes`` / ``source_axcodes`` and the :class:`~napari_metseg.case.Geometry`
itself, which the writers use to put results back on the source grid.

Plain numpy: opening a file imports neither napari nor the widgets, and the
transform arithmetic napari does (scale, shear, rotate, affine) is repeated in
:func:`world_matrix` so placing a foreign layer needs no napari either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.errors import GeometryError
from napari_metseg.io.naming import guess_role

if TYPE_CHECKING:
    from napari_metseg.importance import LesionChanges

LayerData = tuple[np.ndarray, dict[str, Any], str]

#: Names of the result layers the workbench adds once per case and updates in place.
PROBABILITY_LAYER = "probability"
LESIONS_LAYER = "lesions"
TRUTH_LAYER = "truth"
#: The Labels layer of the user's corrections (1 lesion, 2 not lesion; METHOD's active correction).
CORRECTIONS_LAYER = "corrections"
#: Prefix of the per-sequence saliency layers (``saliency bravo``, ...).
SALIENCY_LAYER = "saliency"
#: The Points layer ringing lesions that appeared (green) or disappeared (red) in a round.
CHANGES_LAYER = "lesion changes"
CHANGE_COLORS = {"new": "lime", "removed": "red"}
#: Colours of the corrections layer: nothing for 0, yellow for a lesion, magenta for not lesion.
CORRECTION_COLORS: dict[int | None, str] = {
    None: "transparent",
    0: "transparent",
    1: "yellow",
    2: "magenta",
}
#: File endings the reader takes (the manifest's ``filename_patterns``).
VOLUME_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: A saliency map's colours: transparent at zero, then dark red through yellow to white, with
#: opacity rising with the value, so low saliency leaves the image untouched.
SALIENCY_COLORS = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],
        [0.55, 0.0, 0.0, 0.35],
        [1.0, 0.35, 0.0, 0.7],
        [1.0, 0.9, 0.1, 0.9],
        [1.0, 1.0, 1.0, 1.0],
    ],
    dtype=np.float32,
)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_MASK_NAME = re.compile(r"(^|[_\-. ])(seg|mask|labels?|truth|gt)($|[_\-. ])", re.IGNORECASE)


def layer_metadata(
    geometry: Geometry, role: str, sequence: str | None = None, source: str = ""
) -> dict[str, Any]:
    """The metadata every MetSeg layer carries (see the module docstring)."""
    return {
        "sequence": sequence,
        "role": role,
        "source": source,
        "affine_ras": geometry.affine.tolist(),
        "axcodes": "".join(geometry.axcodes),
        "source_axcodes": "".join(geometry.source_axcodes),
        "geometry": geometry,
    }


def file_stem(path: str | Path) -> str:
    """A file's name without its volume ending (``T1_post_gd.nii.gz`` -> ``T1_post_gd``)."""
    name = Path(path).name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem if Path(name).suffix else name


def image_layer(
    data: np.ndarray,
    geometry: Geometry,
    name: str,
    sequence: str | None = None,
    source: str = "",
    visible: bool = True,
) -> LayerData:
    """An Image layer of one sequence in internal order, placed by ``geometry``."""
    kwargs = {
        "name": name,
        "affine": geometry.napari_affine,
        "metadata": layer_metadata(geometry, "image", sequence, source),
        "colormap": "gray",
        "visible": visible,
    }
    return np.asarray(data, dtype=np.float32), kwargs, "image"


def labels_layer(
    data: np.ndarray, geometry: Geometry, name: str, role: str = "truth", source: str = ""
) -> LayerData:
    """A Labels layer (truth mask or lesion ids) placed by ``geometry``."""
    kwargs = {
        "name": name,
        "affine": geometry.napari_affine,
        "metadata": layer_metadata(geometry, role, None, source),
        "opacity": 0.5,
    }
    return np.asarray(data).astype(np.int32, copy=False), kwargs, "labels"


def corrections_layer(data: np.ndarray, geometry: Geometry) -> LayerData:
    """The ``corrections`` Labels layer (uint8: 0 unmarked, 1 lesion, 2 not lesion) on the
    reference grid, coloured so the two marks never look alike."""
    kwargs = {
        "name": CORRECTIONS_LAYER,
        "affine": geometry.napari_affine,
        "metadata": layer_metadata(geometry, "corrections"),
        "colormap": dict(CORRECTION_COLORS),
        "opacity": 0.8,
    }
    return np.asarray(data).astype(np.uint8, copy=False), kwargs, "labels"


def case_layers(case: Case) -> list[LayerData]:
    """One Image layer per sequence in channel order (the reference one visible), plus
    the truth if the case has one. A layer read from a file keeps the file's name (its
    ``sequence`` metadata says what it plays); a generated one is named for its sequence."""
    layers = [
        image_layer(
            image,
            case.geometry,
            name=_source_name(case, sequence),
            sequence=sequence,
            source=case.sources.get(sequence, ""),
            visible=sequence == case.reference,
        )
        for sequence, image in sorted(case.images.items(), key=_channel_order)
    ]
    if case.truth is not None:
        source = case.sources.get(TRUTH_LAYER, "")
        name = _source_name(case, TRUTH_LAYER)
        layers.append(labels_layer(case.truth, case.geometry, name, source=source or case.name))
    return layers


def _source_name(case: Case, sequence: str) -> str:
    """The file (or DICOM folder) name a layer was read from, else the sequence."""
    source = case.sources.get(sequence, "")
    if Path(source).is_absolute() or source.lower().endswith(VOLUME_SUFFIXES):
        return file_stem(source)
    return sequence


def _channel_order(item: tuple[str, np.ndarray]) -> tuple[int, str]:
    name = item[0]
    return (SEQUENCES.index(name) if name in SEQUENCES else len(SEQUENCES), name)


def looks_like_mask(name: str) -> bool:
    """True for file or layer names such as ``case_seg``, ``mask``, ``labels``."""
    return bool(_MASK_NAME.search(name))


def guess_sequence(name: str, metadata: Mapping[str, Any], sequences=SEQUENCES) -> str | None:
    """The sequence a layer plays: its ``sequence`` metadata, else one of ``sequences`` its
    name contains (longest first, so ``cube_post`` never matches a shorter name), else the
    sequence the naming rules give (``t1c``, ``T1_post_gd``, ``mprage``, ``t2_flair``...:
    :func:`napari_metseg.io.naming.guess_role`)."""
    sequence = metadata.get("sequence")
    if sequence in sequences:
        return sequence
    lowered = name.lower()
    for candidate in sorted(sequences, key=len, reverse=True):
        if candidate.lower() in lowered:
            return candidate
    guessed = guess_role(name)
    if guessed is not None and guessed[0] in sequences:
        return guessed[0]
    return None


def geometry_from_napari_affine(shape: tuple[int, ...], napari_affine: np.ndarray) -> Geometry:
    """The grid of an array placed in napari by ``napari_affine`` (LPS ``(z, y, x)`` mm).

    The array is taken as stored (its own voxel order is the source order), so
    writing it back through the geometry keeps that order.
    """
    if len(shape) != 3:
        raise GeometryError(f"a 3D volume is needed, got an array of shape {tuple(shape)}")
    lps = np.asarray(napari_affine, dtype=np.float64)[[2, 1, 0, 3]]
    return Geometry.from_source(tuple(shape), _RAS_TO_LPS @ lps)


def world_matrix(transform: Mapping[str, Any]) -> np.ndarray:
    """The data-to-world matrix of a layer from its ``scale``, ``translate``, ``rotate``
    (a matrix), ``shear`` (upper-triangular values or a matrix) and ``affine``, composed as
    napari composes them: ``affine @ [rotate @ shear @ diag(scale) | translate]``."""
    scale = np.asarray(transform["scale"], dtype=np.float64)
    ndim = scale.size
    rotate = transform.get("rotate")
    rotate = np.eye(ndim) if rotate is None else np.asarray(rotate, dtype=np.float64)
    if rotate.shape != (ndim, ndim):
        raise GeometryError(f"rotate must be a {ndim}x{ndim} matrix, got shape {rotate.shape}")
    shear = transform.get("shear")
    shear = np.asarray(() if shear is None else shear, dtype=np.float64)
    if shear.ndim == 1:
        upper = np.eye(ndim)
        if shear.size:
            upper[np.triu_indices(ndim, 1)] = shear
        shear = upper
    physical = np.eye(ndim + 1)
    physical[:ndim, :ndim] = rotate @ shear @ np.diag(scale)
    physical[:ndim, ndim] = np.asarray(transform["translate"], dtype=np.float64)
    affine = transform.get("affine")
    if affine is not None and hasattr(affine, "affine_matrix"):
        affine = affine.affine_matrix
    matrix = np.eye(ndim + 1) if affine is None else np.asarray(affine, dtype=np.float64)
    return matrix @ physical


def probability_layer(probability: np.ndarray, geometry: Geometry) -> LayerData:
    """The probability heat map, added over the images."""
    kwargs = {
        "name": PROBABILITY_LAYER,
        "affine": geometry.napari_affine,
        "metadata": layer_metadata(geometry, "probability"),
        "colormap": "inferno",
        "blending": "additive",
        "contrast_limits": (0.0, 1.0),
    }
    return np.asarray(probability, dtype=np.float32), kwargs, "image"


def lesions_layer(labels: np.ndarray, table: Any, geometry: Geometry) -> LayerData:
    """The ``lesions`` Labels layer; its ``features`` hold the lesion table (napari finds
    rows by their ``index`` column), so the status bar and the table dock show it."""
    data, kwargs, layer_type = labels_layer(labels, geometry, LESIONS_LAYER, "lesions")
    features = table.copy()
    if "index" not in features.columns:
        features.insert(0, "index", features["label"].to_numpy())
    kwargs["features"] = features
    return data, kwargs, layer_type


def saliency_layers(maps: Mapping[str, np.ndarray], geometry: Geometry) -> list[LayerData]:
    """One heat-map Image layer per sequence's saliency volume (the first one visible).

    ``maps`` holds ``|dL/dX|`` per sequence, each of ``geometry.shape``; the
    contrast tops out at the highest 99.5th percentile of the maps' nonzero
    voxels, so they compare and zero is fully transparent
    (:data:`SALIENCY_COLORS`). Nonzero, because only the region's slices carry
    gradients: over the whole volume the percentile of a lesion on 13 of the
    sample case's 126 slices fell 8 times lower, and 5% of those slices'
    voxels (14% at half strength) lit up across the brain.
    """
    values = [np.asarray(volume, dtype=np.float32) for volume in maps.values()]
    top = max((float(np.percentile(v[v > 0], 99.5)) for v in values if v.any()), default=1.0)
    layers = []
    for index, (sequence, volume) in enumerate(zip(maps, values, strict=True)):
        kwargs = {
            "name": f"{SALIENCY_LAYER} {sequence}",
            "affine": geometry.napari_affine,
            "metadata": layer_metadata(geometry, "saliency", sequence),
            "colormap": {"colors": SALIENCY_COLORS, "name": "metseg saliency"},
            "blending": "translucent",
            "contrast_limits": (0.0, top),
            "visible": index == 0,
        }
        layers.append((volume, kwargs, "image"))
    return layers


def changes_layer(
    before: np.ndarray, after: np.ndarray, changes: LesionChanges, geometry: Geometry
) -> LayerData:
    """A Points layer ringing the centre (voxel indices) of each new (green) and removed
    (red) lesion of :func:`~napari_metseg.importance.compare_lesions`'s ``changes``."""
    centres, kinds, labels = [], [], []
    for kind, volume, ids in (("new", after, changes.gained), ("removed", before, changes.lost)):
        if ids:
            centres.extend(ndimage.center_of_mass(volume > 0, volume, list(ids)))
            kinds.extend([kind] * len(ids))
            labels.extend(ids)
    kwargs = {
        "name": CHANGES_LAYER,
        "affine": geometry.napari_affine,
        "metadata": layer_metadata(geometry, "lesion changes"),
        "features": {"change": kinds, "lesion": labels},
        "face_color": "transparent",
        "border_color": [CHANGE_COLORS[kind] for kind in kinds] or "lime",
        "border_width": 0.2,
        "symbol": "ring",
        "size": 6,
        "out_of_slice_display": True,
    }
    return np.asarray(centres, dtype=np.float64).reshape(-1, 3), kwargs, "points"
