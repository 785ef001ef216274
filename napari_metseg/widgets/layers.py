"""The workbench's side of napari layers: add-or-update, reading a layer back, comparing.

napari hands a plugin's widget a ``PublicOnlyProxy`` of the viewer, and every
layer reached through it is a fresh proxy: ``type(layer)`` is the proxy and
``a is b`` fails for the same layer. So layers are told apart with
``isinstance`` (which the proxy forwards) and :func:`same_layer` (their
``unique_id``), never by identity. The layer data itself is built by the
Qt-free :mod:`napari_metseg.layerdata`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from napari import layers as napari_layers

from napari_metseg.case import Case, Geometry
from napari_metseg.errors import GeometryError, SequenceError
from napari_metseg.layerdata import geometry_from_napari_affine, world_matrix

if TYPE_CHECKING:
    import napari

_LAYER_TYPES = {
    "image": napari_layers.Image,
    "labels": napari_layers.Labels,
    "points": napari_layers.Points,
}


def same_layer(first: Any, second: Any) -> bool:
    """True when both are the same layer (either may be a proxy, or None)."""
    if first is None or second is None:
        return first is second
    return first.unique_id == second.unique_id


def find_layer(viewer: napari.Viewer, role: str, layer_type: str = "labels") -> Any:
    """The viewer's layer of ``layer_type`` whose metadata ``role`` is ``role``, or None."""
    kind = _LAYER_TYPES[layer_type]
    for layer in viewer.layers:
        if isinstance(layer, kind) and layer.metadata.get("role") == role:
            return layer
    return None


def show_layer(
    viewer: napari.Viewer, data: np.ndarray, kwargs: dict[str, Any], layer_type: str
) -> napari.layers.Layer:
    """Add a layer, or update the same-named layer of that type in place.

    Updating keeps the user's display settings (opacity, colormap, visibility)
    while the data, placement, metadata and features follow the new result
    (and the contrast limits of a saliency map, whose range changes every time).
    """
    name = kwargs["name"]
    if name in viewer.layers and isinstance(viewer.layers[name], _LAYER_TYPES[layer_type]):
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
