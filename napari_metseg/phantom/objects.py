"""Metastases, vessels and T1-bright mimics placed in the phantom's brain.

Everything is drawn on the phantom grid (RAS voxel order, isotropic spacing)
as soft fractions in ``[0, 1]`` with a one-voxel partial-volume edge, so
small objects look blurred the way they do in real scans. The generator
mixes these fractions into each sequence's tissue intensities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_metseg.phantom.anatomy import Anatomy

#: Gap (mm, plus two voxels) kept between the edges of two lesions, so each
#: stays its own connected component.
LESION_GAP_MM = 3.0


@dataclass(frozen=True)
class Lesion:
    """One synthetic metastasis.

    ``centre_mm``: RAS+ world position (mm). ``radius_mm``: mean radius of the
    enhancing lesion (the truth outline; necrosis included). ``kind``:
    ``"solid"`` or ``"ring"`` (enhancing rim of ``rim_mm`` around a necrotic
    core). ``oedema_mm``: radius of the surrounding oedema. ``enhancement``:
    intensity added on ``bravo`` relative to white matter (``cube_post`` gets
    more, as its contrast-to-noise is higher).
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    kind: str
    rim_mm: float
    oedema_mm: float
    enhancement: float
    axes: tuple[float, float, float]
    rotation: tuple[float, float, float, float]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class ObjectMaps:
    """Soft fractions ``(x, y, z)`` float32 of everything drawn, plus the truth mask.

    ``enhancing``: enhancing tissue weighted by each lesion's enhancement.
    ``lesion``: lesion tissue (enhancing + necrotic). ``necrosis``: necrotic
    core. ``oedema``: oedema, zero inside lesions. ``vessel`` / ``vessel_gain``:
    vessel fraction and its enhancement. ``mimic``: T1-bright non-lesions.
    ``truth``: uint8, 1 on every voxel whose centre lies inside a lesion.
    """

    enhancing: np.ndarray
    lesion: np.ndarray
    necrosis: np.ndarray
    oedema: np.ndarray
    vessel: np.ndarray
    vessel_gain: np.ndarray
    mimic: np.ndarray
    truth: np.ndarray


def empty_maps(shape: tuple[int, int, int]) -> ObjectMaps:
    def zeros() -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    return ObjectMaps(
        zeros(), zeros(), zeros(), zeros(), zeros(), zeros(), zeros(), np.zeros(shape, np.uint8)
    )


def sample_lesions(
    rng: np.random.Generator,
    anatomy: Anatomy,
    n_lesions: int,
    diameter_range_mm: tuple[float, float],
    enhancement_range: tuple[float, float] = (0.3, 0.7),
    ring_from_mm: float = 6.0,
) -> list[Lesion]:
    """Draw ``n_lesions`` non-touching lesions inside the brain, largest first.

    Diameters are log-uniform skewed to small ones (about half under 5 mm).
    ``enhancement_range``: the lesions' enhancement is drawn from it (low
    values give subtle lesions); lesions become rings from ``ring_from_mm``
    across, more often the larger they are.
    Centres favour the grey/white-matter junction, where metastases seed, and
    keep the whole lesion inside the brain.
    """
    low, high = diameter_range_mm
    diameters = low * (high / low) ** (rng.random(n_lesions) ** 1.7)
    parenchyma = (anatomy.gm + anatomy.wm).reshape(-1)
    junction = (4.0 * anatomy.gm * anatomy.wm + 0.15).reshape(-1)
    depth = anatomy.brain_depth.reshape(-1)
    placed: list[Lesion] = []
    for diameter in np.sort(diameters)[::-1]:
        radius = float(diameter / 2.0)
        while True:
            lesion = _lesion_shape(rng, radius, enhancement_range, ring_from_mm)
            extent = radius * max(lesion.axes)
            centre = _free_centre(rng, anatomy, placed, extent, parenchyma, junction, depth)
            if centre is not None:
                break
            radius *= 0.8  # the brain is crowded: settle for a smaller lesion
        placed.append(replace(lesion, centre_mm=tuple(float(v) for v in centre)))
    return placed


def _free_centre(
    rng: np.random.Generator,
    anatomy: Anatomy,
    placed: list[Lesion],
    extent: float,
    parenchyma: np.ndarray,
    junction: np.ndarray,
    depth: np.ndarray,
) -> np.ndarray | None:
    """A centre (RAS mm) in parenchyma, ``extent`` mm deep, clear of ``placed``; None if none found."""
    candidates = np.flatnonzero((parenchyma > 0.5) & (depth >= extent + anatomy.spacing))
    if candidates.size == 0:
        return None
    weights = junction[candidates] / junction[candidates].sum()
    for index in rng.choice(candidates, size=100, p=weights):
        centre = _voxel_to_world(anatomy, np.array(np.unravel_index(index, anatomy.shape), float))
        if all(
            np.linalg.norm(centre - np.asarray(other.centre_mm))
            >= extent + other.radius_mm * max(other.axes) + LESION_GAP_MM + 2 * anatomy.spacing
            for other in placed
        ):
            return centre
    return None


def _lesion_shape(
    rng: np.random.Generator,
    radius: float,
    enhancement_range: tuple[float, float],
    ring_from_mm: float,
) -> Lesion:
    """A lesion of mean radius ``radius`` mm (its centre is set once placed)."""
    diameter = 2.0 * radius
    ring = rng.random() < np.clip((diameter - ring_from_mm) / 14.0, 0.0, 0.8)
    axes = rng.uniform(0.8, 1.2, size=3)
    axes /= np.cbrt(np.prod(axes))
    rim = float(min(rng.uniform(1.5, 3.0), 0.5 * radius)) if ring else 0.0
    if diameter < 6.0:
        oedema = radius + rng.uniform(0.0, 4.0)
    else:
        oedema = radius * rng.uniform(1.4, 2.6) + rng.uniform(2.0, 8.0)
    return Lesion(
        centre_mm=(0.0, 0.0, 0.0),
        radius_mm=round(radius, 3),
        kind="ring" if ring else "solid",
        rim_mm=round(rim, 3),
        oedema_mm=round(float(oedema), 3),
        enhancement=round(float(rng.uniform(*enhancement_range)), 3),
        axes=tuple(round(float(a), 4) for a in axes),
        rotation=tuple(float(q) for q in Rotation.random(rng=rng).as_quat()),
    )


def _voxel_to_world(anatomy: Anatomy, index: np.ndarray) -> np.ndarray:
    return anatomy.affine[:3, :3] @ index + anatomy.affine[:3, 3]


def _local_box(
    anatomy: Anatomy, centre_mm: np.ndarray, reach_mm: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Slices of the box around a point and the offsets (mm, ``(..., 3)``) of its voxels."""
    inverse = np.linalg.inv(anatomy.affine)
    centre_index = inverse[:3, :3] @ centre_mm + inverse[:3, 3]
    half = int(np.ceil(reach_mm / anatomy.spacing)) + 1
    box = []
    for axis, size in enumerate(anatomy.shape):
        start = max(0, int(np.floor(centre_index[axis])) - half)
        stop = min(size, int(np.ceil(centre_index[axis])) + half + 1)
        box.append(slice(start, stop))
    grids = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    points = np.stack(grids, axis=-1).astype(float) @ anatomy.affine[:3, :3].T
    return tuple(box), points + anatomy.affine[:3, 3] - centre_mm


def _soft_inside(distance_mm: np.ndarray, radius_mm: float, spacing: float) -> np.ndarray:
    """Fraction of a voxel inside a surface ``radius_mm`` away: a one-voxel ramp."""
    return np.clip(0.5 + (radius_mm - distance_mm) / spacing, 0.0, 1.0).astype(np.float32)


def draw_lesions(maps: ObjectMaps, anatomy: Anatomy, lesions: list[Lesion]) -> None:
    """Paint lesions (enhancing / necrotic parts), their oedema and the truth."""
    spacing = anatomy.spacing
    white = anatomy.wm + 0.3 * anatomy.gm
    for lesion in lesions:
        centre = np.asarray(lesion.centre_mm)
        box, offsets = _local_box(anatomy, centre, lesion.oedema_mm + spacing)
        rotation = Rotation.from_quat(lesion.rotation)
        local = rotation.inv().apply(offsets.reshape(-1, 3)).reshape(offsets.shape)
        # ellipsoidal distance scaled so the surface lies at radius_mm
        scaled = np.linalg.norm(local / np.asarray(lesion.axes), axis=-1)
        inside = _soft_inside(scaled, lesion.radius_mm, spacing)
        core = (
            _soft_inside(scaled, lesion.radius_mm - lesion.rim_mm, spacing)
            if lesion.kind == "ring"
            else np.zeros_like(inside)
        )
        distance = np.linalg.norm(offsets, axis=-1)
        spread = np.clip((lesion.oedema_mm - distance) / (0.3 * lesion.oedema_mm), 0.0, 1.0)
        oedema = (spread * np.clip(white[box] * 1.2, 0.0, 1.0) * (1.0 - inside)).astype(np.float32)
        np.maximum(maps.lesion[box], inside, out=maps.lesion[box])
        np.maximum(maps.necrosis[box], core, out=maps.necrosis[box])
        enhancing = (inside - core) * np.float32(lesion.enhancement)
        np.maximum(maps.enhancing[box], enhancing, out=maps.enhancing[box])
        np.maximum(maps.oedema[box], oedema, out=maps.oedema[box])
        truth = maps.truth[box]
        truth[scaled <= lesion.radius_mm] = 1
        nearest = np.unravel_index(np.argmin(distance), distance.shape)
        truth[nearest] = 1  # a lesion smaller than a voxel still marks one
    np.minimum(maps.oedema, 1.0 - maps.lesion, out=maps.oedema)


def draw_vessels(
    maps: ObjectMaps, anatomy: Anatomy, rng: np.random.Generator, n_vessels: int
) -> int:
    """Paint enhancing tube-like vessels; returns how many were drawn.

    Each vessel is a smooth random walk (1.2 to 3.2 mm across, 15 to 70 mm long)
    starting in grey matter or sulcal CSF, where cortical veins run, and
    stopping at the brain surface. Their enhancement matches the lesions' so
    that on ``bravo`` a vessel seen end-on looks like a small metastasis.
    """
    if n_vessels <= 0:
        return 0
    spacing = anatomy.spacing
    centreline = np.zeros(anatomy.shape, dtype=bool)
    radius_at = np.zeros(anatomy.shape, dtype=np.float32)
    gain_at = np.zeros(anatomy.shape, dtype=np.float32)
    inside = anatomy.brain_depth > 0
    starts = np.flatnonzero((anatomy.gm + anatomy.csf > 0.5) & (anatomy.brain_depth > 2.0))
    upper = np.array(anatomy.shape) - 1
    for _ in range(n_vessels):
        position = np.array(np.unravel_index(rng.choice(starts), anatomy.shape), dtype=float)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        radius = rng.uniform(0.6, 1.6)
        gain = rng.uniform(0.3, 0.7)
        steps = int(rng.uniform(15.0, 70.0) / (0.5 * spacing))
        for _step in range(steps):
            voxel = tuple(np.clip(np.rint(position).astype(int), 0, upper))
            if not inside[voxel]:
                break
            centreline[voxel] = True
            radius_at[voxel] = radius
            gain_at[voxel] = gain
            direction += rng.normal(scale=0.15, size=3)
            direction /= np.linalg.norm(direction)
            position += 0.5 * direction
    distance, nearest = ndimage.distance_transform_edt(~centreline, return_indices=True)
    radius_near = radius_at[tuple(nearest)]
    maps.vessel[...] = _soft_inside(distance * spacing, radius_near, spacing) * (1.0 - maps.lesion)
    maps.vessel_gain[...] = gain_at[tuple(nearest)]
    return n_vessels


def draw_mimics(
    maps: ObjectMaps, anatomy: Anatomy, rng: np.random.Generator, n_mimics: int
) -> list[dict]:
    """Paint small T1-bright blobs (haemorrhage- or fat-like) that are not metastases.

    They are bright on every T1 sequence, before and after contrast, so only
    comparing ``cube_pre`` with ``cube_post`` tells them from enhancing lesions.
    """
    records = []
    candidates = np.flatnonzero((anatomy.wm > 0.5) & (anatomy.brain_depth > 6.0))
    for _ in range(n_mimics):
        index = np.array(np.unravel_index(rng.choice(candidates), anatomy.shape), dtype=float)
        centre = _voxel_to_world(anatomy, index)
        radius = float(rng.uniform(1.0, 3.0))
        box, offsets = _local_box(anatomy, centre, radius + anatomy.spacing)
        blob = _soft_inside(np.linalg.norm(offsets, axis=-1), radius, anatomy.spacing)
        blob *= 1.0 - maps.lesion[box]
        np.maximum(maps.mimic[box], blob, out=maps.mimic[box])
        records.append({"centre_mm": [float(v) for v in centre], "radius_mm": round(radius, 3)})
    return records
