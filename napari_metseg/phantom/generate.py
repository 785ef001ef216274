"""Synthesise the four sequences of a phantom case from anatomy and objects.

Each sequence is a mix of tissue intensities (grey / white matter, CSF, skull,
scalp) weighted by the tissue fractions, then oedema, T1-bright mimics,
lesions and vessels mixed in with their own intensities per sequence. The
relative intensities follow the usual appearance of each contrast:

- ``bravo`` (post-contrast T1 gradient echo): white > grey >> CSF; lesions
  and vessels enhance alike, so ``bravo`` alone cannot tell them apart;
- ``cube_pre`` (pre-contrast T1 spin echo): lesions slightly darker than grey
  matter; mimics bright; vessels a faint flow void;
- ``cube_post`` (post-contrast T1 spin echo): lesions enhance more strongly
  than on ``bravo``; vessels stay dark (blood suppression);
- ``flair``: grey > white, CSF suppressed, oedema bright.

``bravo`` is the reference grid (the truth is drawn on it); the other
sequences are moved by a small random rigid transform, and every sequence
gets its own smooth bias field and Rician noise inside the head.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.phantom.acquisition import jitter_contrast, thick_slices
from napari_metseg.phantom.anatomy import Anatomy, load_anatomy
from napari_metseg.phantom.objects import (
    Lesion,
    ObjectMaps,
    draw_lesions,
    draw_mimics,
    draw_vessels,
    empty_maps,
    sample_lesions,
)

logger = logging.getLogger(__name__)

#: Relative intensity of each tissue class and object, per sequence. ``lesion``
#: is non-enhancing lesion tissue; enhancement adds ``enhancing_gain`` times
#: the lesion's enhancement; ``vessel`` multiplies the tissue under a vessel
#: (flow void) unless ``vessel_gain`` makes it enhance.
CONTRASTS: dict[str, dict[str, float]] = {
    "bravo": {
        "gm": 0.62, "wm": 1.0, "csf": 0.12, "skull": 0.05, "scalp": 0.9,
        "lesion": 0.95, "necrosis": 0.2, "oedema": 0.72, "mimic": 1.45,
        "enhancing_gain": 1.0, "vessel": 1.0, "vessel_gain": 1.0,
    },
    "cube_pre": {
        "gm": 0.68, "wm": 0.85, "csf": 0.18, "skull": 0.05, "scalp": 0.95,
        "lesion": 0.6, "necrosis": 0.25, "oedema": 0.6, "mimic": 1.35,
        "enhancing_gain": 0.0, "vessel": 0.85, "vessel_gain": 0.0,
    },
    "cube_post": {
        "gm": 0.7, "wm": 0.85, "csf": 0.2, "skull": 0.05, "scalp": 0.95,
        "lesion": 0.85, "necrosis": 0.25, "oedema": 0.62, "mimic": 1.4,
        "enhancing_gain": 1.6, "vessel": 0.85, "vessel_gain": 0.0,
    },
    "flair": {
        "gm": 0.8, "wm": 0.62, "csf": 0.08, "skull": 0.05, "scalp": 0.7,
        "lesion": 0.95, "necrosis": 0.85, "oedema": 1.3, "mimic": 0.7,
        "enhancing_gain": 0.0, "vessel": 1.0, "vessel_gain": 0.0,
    },
}  # fmt: skip


@dataclass(frozen=True)
class PhantomConfig:
    """Knobs of the phantom generator; the defaults give a realistic, hard case.

    Counts: ``max_lesions`` (lesions per case when not given, drawn from 1 to
    this, skewed low), ``n_vessels`` enhancing tubes, up to ``max_mimics``
    T1-bright non-lesions. Sizes in mm: ``diameter_range_mm``. Artefacts:
    ``noise`` (Rician sigma as a fraction of white matter on each sequence),
    ``bias`` (peak amplitude of the log bias field), ``max_shift_mm`` and
    ``max_rotation_deg`` (misregistration of the non-reference sequences).
    Appearance: lesions enhance by a factor drawn from ``enhancement_range``
    and are rings from ``ring_from_mm`` across (sometimes); ``contrast_jitter``
    (log-normal sigma) moves each tissue's intensity per sequence and case;
    ``flair_thickness_mm`` > 0 acquires ``flair`` in slices that thick (a
    2D FLAIR's partial-volume blur). The defaults change nothing of the
    generator's earlier cases; :mod:`napari_metseg.phantom.randomise` draws
    these per case for training that transfers.
    """

    max_lesions: int = 30
    diameter_range_mm: tuple[float, float] = (2.0, 30.0)
    n_vessels: int = 80
    max_mimics: int = 4
    noise: float = 0.04
    bias: float = 0.15
    max_shift_mm: float = 1.0
    max_rotation_deg: float = 1.0
    enhancement_range: tuple[float, float] = (0.3, 0.7)
    ring_from_mm: float = 6.0
    contrast_jitter: float = 0.0
    flair_thickness_mm: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.diameter_range_mm
        if not 0.0 < low <= high:
            raise ValueError(
                f"diameter_range_mm must be 0 < low <= high, got {self.diameter_range_mm}"
            )
        low, high = self.enhancement_range
        if not 0.0 < low <= high:
            raise ValueError(
                f"enhancement_range must be 0 < low <= high, got {self.enhancement_range}"
            )
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be at least 1, got {self.max_lesions}")
        for name in (
            "n_vessels",
            "max_mimics",
            "noise",
            "bias",
            "max_shift_mm",
            "max_rotation_deg",
            "ring_from_mm",
            "contrast_jitter",
            "flair_thickness_mm",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class Phantom:
    """A generated case and what was put into it.

    ``lesions`` and ``mimics`` go into the JSON next to the files. ``vessels``,
    ``mimic_mask`` and ``oedema`` are bool masks on the case grid (voxels more
    than half vessel / mimic / oedema), for checking contrasts and counting
    the false positives vessels and mimics cause.
    """

    case: Case
    seed: int
    spacing: float
    lesions: list[Lesion]
    mimics: list[dict]
    n_vessels: int
    vessels: np.ndarray
    mimic_mask: np.ndarray
    oedema: np.ndarray

    def description(self) -> dict:
        """JSON-ready record: seed, spacing, lesions (centres in RAS mm, radii in mm)."""
        return {
            "seed": self.seed,
            "spacing_mm": self.spacing,
            "n_lesions": len(self.lesions),
            "lesions": [lesion.to_json() for lesion in self.lesions],
            "mimics": self.mimics,
            "n_vessels": self.n_vessels,
            "template": "MNI152 ICBM 2009a symmetric (nilearn)",
        }


def generate_phantom(
    seed: int,
    n_lesions: int | None = None,
    spacing: float = 1.5,
    config: PhantomConfig = PhantomConfig(),
) -> Phantom:
    """Generate a synthetic case with its lesion records; deterministic per ``seed``."""
    rng = np.random.default_rng(seed)
    if n_lesions is None:
        n_lesions = 1 + int((config.max_lesions - 1) * rng.random() ** 2.5)
    if not 1 <= n_lesions <= config.max_lesions:
        raise ValueError(f"n_lesions must lie in [1, {config.max_lesions}], got {n_lesions}")
    anatomy = load_anatomy(float(spacing))
    maps = empty_maps(anatomy.shape)
    lesions = sample_lesions(
        rng,
        anatomy,
        n_lesions,
        config.diameter_range_mm,
        config.enhancement_range,
        config.ring_from_mm,
    )
    draw_lesions(maps, anatomy, lesions)
    n_vessels = draw_vessels(maps, anatomy, rng, config.n_vessels)
    mimics = draw_mimics(maps, anatomy, rng, int(rng.integers(0, config.max_mimics + 1)))
    geometry = Geometry.from_source(anatomy.shape, anatomy.affine)
    images = {}
    for index, sequence in enumerate(SEQUENCES):
        table = CONTRASTS[sequence]
        if config.contrast_jitter > 0:
            table = jitter_contrast(table, rng, config.contrast_jitter)
        clean = _contrast(anatomy, maps, table)
        if sequence == "flair" and config.flair_thickness_mm > 0:
            clean = thick_slices(clean, anatomy.spacing, config.flair_thickness_mm)
        if index > 0:
            clean = _misregister(clean, anatomy.spacing, rng, config)
        noisy = _acquire(clean, rng, config, CONTRASTS[sequence]["wm"])
        images[sequence] = geometry.to_internal(noisy)
    name = f"phantom_{seed:03d}"
    case = Case(
        images,
        geometry,
        truth=geometry.to_internal(maps.truth),
        name=name,
        reference="bravo",
        sources={sequence: f"phantom seed {seed}" for sequence in SEQUENCES},
        mapping_notes=[f"synthetic case from seed {seed} at {spacing} mm"],
    )
    logger.debug("phantom seed %d: %d lesions, %d mimics", seed, len(lesions), len(mimics))
    return Phantom(
        case,
        int(seed),
        float(spacing),
        lesions,
        mimics,
        n_vessels,
        vessels=geometry.to_internal(maps.vessel > 0.5),
        mimic_mask=geometry.to_internal(maps.mimic > 0.5),
        oedema=geometry.to_internal(maps.oedema > 0.5),
    )


def make_phantom(
    seed: int,
    n_lesions: int | None = None,
    spacing: float = 1.5,
    config: PhantomConfig = PhantomConfig(),
) -> Case:
    """A synthetic brain-metastasis case in memory: four sequences and a ``truth`` mask.

    Anatomy comes from nilearn's bundled MNI152 template resampled to
    ``spacing`` mm (1.5 mm: a 131 x 155 x 126 grid in a few seconds; 3 mm for
    tiny test cases). ``n_lesions`` (1 to ``config.max_lesions``) is drawn from
    the seed when None. The same seed always gives the same case.
    """
    return generate_phantom(seed, n_lesions, spacing, config).case


def _contrast(anatomy: Anatomy, maps: ObjectMaps, table: dict[str, float]) -> np.ndarray:
    """Noise-free image of one sequence on the phantom grid."""
    image = (
        table["gm"] * anatomy.gm
        + table["wm"] * anatomy.wm
        + table["csf"] * anatomy.csf
        + table["skull"] * anatomy.skull
        + table["scalp"] * anatomy.scalp
    )
    image += maps.oedema * (table["oedema"] - image)
    image += maps.mimic * (table["mimic"] - image)
    lesion_value = (
        table["lesion"] * (maps.lesion - maps.necrosis)
        + table["necrosis"] * maps.necrosis
        + table["enhancing_gain"] * maps.enhancing
    )
    image = image * (1.0 - maps.lesion) + lesion_value
    vessel_value = image * table["vessel"] + table["vessel_gain"] * maps.vessel_gain
    image += maps.vessel * (vessel_value - image)
    return image.astype(np.float32)


def _misregister(
    image: np.ndarray, spacing: float, rng: np.random.Generator, config: PhantomConfig
) -> np.ndarray:
    """Move an image by a small random rigid transform about the grid centre."""
    angles = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, size=3)
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    shift = rng.uniform(-config.max_shift_mm, config.max_shift_mm, size=3) / spacing
    centre = (np.array(image.shape) - 1) / 2.0
    offset = centre - rotation @ centre + shift
    return ndimage.affine_transform(image, rotation, offset=offset, order=1, output=np.float32)


def _acquire(
    image: np.ndarray, rng: np.random.Generator, config: PhantomConfig, white: float
) -> np.ndarray:
    """Bias field, Rician noise inside the head, and a scanner gain; zero background."""
    head = image > 1e-3
    axes = [np.linspace(-1.0, 1.0, size, dtype=np.float32) for size in image.shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * y, y * z, x * z, x * x - 0.33, y * y - 0.33, z * z - 0.33]
    weights = rng.normal(size=len(terms))
    log_bias = sum(w * t for w, t in zip(weights, terms, strict=True))
    log_bias *= config.bias / max(float(np.abs(log_bias).max()), 1e-6)
    biased = image * np.exp(log_bias)
    sigma = config.noise * white
    real = biased + rng.normal(scale=sigma, size=image.shape).astype(np.float32)
    imaginary = rng.normal(scale=sigma, size=image.shape).astype(np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    gain = 1000.0 * rng.uniform(0.8, 1.2)
    return np.where(head, magnitude * gain, 0.0).astype(np.float32)


def write_phantom(
    out_dir: str | Path,
    seed: int,
    n_lesions: int | None = None,
    spacing: float = 1.5,
    config: PhantomConfig = PhantomConfig(),
    name: str | None = None,
) -> Path:
    """Generate a phantom and write it as NIfTI; returns the folder written to.

    Files: ``<name>_bravo.nii.gz``, ``<name>_cube_pre.nii.gz``,
    ``<name>_cube_post.nii.gz``, ``<name>_flair.nii.gz``, ``<name>_seg.nii.gz``
    (uint8 truth) and ``<name>_lesions.json`` (seed, spacing, lesion centres in
    RAS mm, radii in mm, kinds). ``name`` defaults to ``phantom_<seed>``.
    """
    from napari_metseg.io import write_volume  # SimpleITK: not needed to generate in memory

    phantom = generate_phantom(seed, n_lesions, spacing, config)
    name = name or phantom.case.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geometry = phantom.case.geometry
    for sequence, image in phantom.case.images.items():
        write_volume(out / f"{name}_{sequence}.nii.gz", image, geometry, kind="image")
    write_volume(out / f"{name}_seg.nii.gz", phantom.case.truth, geometry, kind="mask")
    record = phantom.description() | {"name": name}
    (out / f"{name}_lesions.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("wrote phantom %r (%d lesions) to %s", name, len(phantom.lesions), out)
    return out
