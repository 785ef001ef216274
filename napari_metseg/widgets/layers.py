"""Between the core's ``Case`` / result arrays and napari layers.

Layer data tuples ``(data, kwargs, layer_type)`` are built here for the reader,
the sample data and the workbench alike, so every layer of a case carries the
same metadata: ``sequence``, ``role`` (``image``, ``truth``, ``probability``,
``lesions``), ``source`` (file path), ``affine_ras`` (internal indices to RAS+
mm), ``axcodes`` / ``source_axcodes`` and the :class:`~napari_metseg.case.Geometry`
itself, which the writers use to put results back on the source grid.

No Qt here: the reader imports this module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.errors import GeometryError, SequenceError

if TYPE_CHECKING:
    import napari
    import napari.layers

LayerData = tuple[np.ndarray, dict[str, Any], str]

#: Names of the result layers the workbench adds and updates.
PROBABILITY_LAYER = "probability"
LESIONS_LAYER = "lesions"
TRUTH_LAYER = "truth"
#: The Labels layer of the user's corrections (1 lesion, 2 not lesion; METHOD's active correction).
CORRECTIONS_LAYER = "corrections"
#: Prefix of the per-sequence saliency layers (``saliency bravo``, ...).
SALIENCY_LAYER = "saliency"

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


#: Colours of the corrections layer: nothing for 0, yellow for a lesion, magenta for not lesion.
CORRECTION_COLORS: dict[int | None, str] = {
    None: "transparent",
    0: "transparent",
    1: "yellow",
    2: "magenta",
}


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
    the truth if the case has one."""
    layers = [
        image_layer(
            image,
            case.geometry,
            name=sequence,
            sequence=sequence,
            source=case.sources.get(sequence, ""),
            visible=sequence == case.reference,
        )
        for sequence, image in sorted(case.images.items(), key=_channel_order)
    ]
    if case.truth is not None:
        layers.append(labels_layer(case.truth, case.geometry, TRUTH_LAYER, source=case.name))
    return layers


def _channel_order(item: tuple[str, np.ndarray]) -> tuple[int, str]:
    name = item[0]
    return (SEQUENCES.index(name) if name in SEQUENCES else len(SEQUENCES), name)


def looks_like_mask(name: str) -> bool:
    """True for file or layer names such as ``case_seg``, ``mask``, ``labels``."""
    return bool(_MASK_NAME.search(name))


def guess_sequence(name: str, metadata: Mapping[str, Any], sequences=SEQUENCES) -> str | None:
    """The sequence a layer plays: its ``sequence`` metadata, else a name in ``sequences``.

    Longer sequence names are tried first, so ``cube_post`` never matches a
    shorter name it contains.
    """
    sequence = metadata.get("sequence")
    if sequence in sequences:
        return sequence
    lowered = name.lower()
    for candidate in sorted(sequences, key=len, reverse=True):
        if candidate.lower() in lowered:
            return candidate
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
    """The full data-to-world matrix of a layer from its ``scale``, ``translate``,
    ``rotate``, ``shear`` and ``affine`` (a layer data tuple's kwargs, or a writer's
    attributes), composed as napari composes them."""
    from napari.utils.transforms import Affine

    ndim = len(transform["scale"])
    physical = Affine(
        scale=transform["scale"],
        translate=transform["translate"],
        rotate=transform.get("rotate"),
        shear=transform.get("shear"),
        ndim=ndim,
    )
    affine = transform.get("affine")
    matrix = np.eye(ndim + 1) if affine is None else np.asarray(affine, dtype=np.float64)
    if isinstance(affine, Affine):
        matrix = affine.affine_matrix
    return matrix @ physical.affine_matrix


def layer_volume(layer: napari.layers.Layer) -> tuple[np.ndarray, Geometry]:
    """``layer``'s data in internal order and its grid.

    A MetSeg layer keeps its geometry in its metadata; any other layer is
    placed by its transform (scale, translate, rotate, shear, affine, read as
    LPS ``(z, y, x)`` mm) and reoriented to internal order.
    """
    data = np.asarray(layer.data)
    geometry = layer.metadata.get("geometry")
    if isinstance(geometry, Geometry) and geometry.shape == data.shape:
        return data, geometry
    transform = {
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine,
    }
    geometry = geometry_from_napari_affine(data.shape, world_matrix(transform))
    return geometry.to_internal(data), geometry


def case_from_layers(assignment: Mapping[str, napari.layers.Image], name: str = "case") -> Case:
    """A Case from image layers, one per sequence, which must share one grid.

    The first layer's grid is the reference; a layer on another grid is
    refused with the names of both (resample it first).
    """
    if not assignment:
        raise SequenceError(
            "no sequence is switched on: assign an image layer to at least one sequence"
        )
    volumes = {sequence: layer_volume(layer) for sequence, layer in assignment.items()}
    reference = next(iter(assignment))
    geometry = volumes[reference][1]
    for sequence, (_, other) in volumes.items():
        if not other.same_grid(geometry):
            raise GeometryError(
                f"layer {assignment[sequence].name!r} ({sequence}) is not on the grid of "
                f"layer {assignment[reference].name!r} ({reference}): {other.summary()} vs "
                f"{geometry.summary()}; resample it first"
            )
    images = {
        sequence: data.astype(np.float32, copy=False) for sequence, (data, _) in volumes.items()
    }
    sources = {
        sequence: str(layer.metadata.get("source") or layer.name)
        for sequence, layer in assignment.items()
    }
    return Case(images, geometry, name=name, reference=reference, sources=sources)


def probability_layer_kwargs(geometry: Geometry) -> dict[str, Any]:
    """Display settings of the probability layer: a heat map added over the images."""
    return {
        "name": PROBABILITY_LAYER,
        "affine": geometry.napari_affine,
        "metadata": layer_metadata(geometry, "probability"),
        "colormap": "inferno",
        "blending": "additive",
        "contrast_limits": (0.0, 1.0),
    }


def saliency_layers(maps: Mapping[str, np.ndarray], geometry: Geometry) -> list[LayerData]:
    """One heat-map Image layer per sequence's saliency volume (the first one visible).

    ``maps`` holds ``|dL/dX|`` per sequence, each of ``geometry.shape``; the
    contrast tops out at the 99.5th percentile of all maps so they compare.
    """
    values = [np.asarray(volume, dtype=np.float32) for volume in maps.values()]
    top = max((float(np.percentile(v, 99.5)) for v in values), default=1.0) or 1.0
    layers = []
    for index, (sequence, volume) in enumerate(zip(maps, values, strict=True)):
        kwargs = {
            "name": f"{SALIENCY_LAYER} {sequence}",
            "affine": geometry.napari_affine,
            "metadata": layer_metadata(geometry, "saliency", sequence),
            "colormap": "viridis",
            "blending": "additive",
            "opacity": 0.7,
            "contrast_limits": (0.0, top),
            "visible": index == 0,
        }
        layers.append((volume, kwargs, "image"))
    return layers


def lesion_features(table) -> Any:
    """The lesion table as Labels ``features``: napari finds rows by their ``index`` column."""
    features = table.copy()
    if "index" not in features.columns:
        features.insert(0, "index", features["label"].to_numpy())
    return features


def show_layer(
    viewer: napari.Viewer, data: np.ndarray, kwargs: dict[str, Any], layer_type: str
) -> napari.layers.Layer:
    """Add a layer, or update the same-named layer of that type in place.

    Updating keeps the user's display settings (opacity, colormap, visibility)
    while the data, placement, metadata and features follow the new result
    (and the contrast limits of a saliency map, whose range changes every time).
    """
    name = kwargs["name"]
    if name in viewer.layers and type(viewer.layers[name]).__name__.lower() == layer_type:
        layer = viewer.layers[name]
        layer.data = data
        layer.affine = kwargs["affine"]
        layer.metadata = kwargs["metadata"]
        if "features" in kwargs:
            layer.features = kwargs["features"]
        if kwargs["metadata"].get("role") == "saliency":
            layer.contrast_limits = kwargs["contrast_limits"]
        return layer
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)
