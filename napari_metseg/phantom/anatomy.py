"""Head anatomy for the phantom, from the MNI152 2009 template nilearn ships.

nilearn bundles (offline, no download) the ICBM 2009a symmetric T1 template
and its grey- and white-matter probability maps at 1 mm. We resample them to
the phantom's spacing, derive CSF inside the brain as what grey and white
matter leave over, and add shells outside the brain (extracerebral CSF, skull,
scalp) so the head has a realistic outline on a zero background.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from napari_metseg.errors import ReadError

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Outer radii (mm from the brain surface) of the extracerebral shells.
CSF_SHELL_MM = 2.0
SKULL_SHELL_MM = 7.0
SCALP_SHELL_MM = 12.0


@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions on the phantom grid (RAS voxel order), each ``(x, y, z)`` float32.

    ``gm``, ``wm``, ``csf``, ``skull`` and ``scalp`` sum to 1 inside the head
    and to 0 outside. ``brain_depth`` is the distance in mm from each voxel to
    the brain surface (0 outside the brain), used to keep lesions inside.
    ``affine`` maps voxel indices to RAS+ mm.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    skull: np.ndarray
    scalp: np.ndarray
    brain_depth: np.ndarray
    affine: np.ndarray
    spacing: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.gm.shape)

    @property
    def head(self) -> np.ndarray:
        """Bool: voxels inside the head (anything but air)."""
        return (self.gm + self.wm + self.csf + self.skull + self.scalp) > 0.5


def template_directory() -> Path:
    """Folder of nilearn's bundled template files (found without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ReadError("the phantom needs nilearn's bundled MNI152 template: install nilearn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def _load_template(key: str) -> tuple[np.ndarray, np.ndarray]:
    path = template_directory() / _TEMPLATE_FILES[key]
    if not path.is_file():
        raise ReadError(f"nilearn's MNI152 template file is missing: {path}")
    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=np.float32) / 255.0, image.affine


@functools.lru_cache(maxsize=4)
def load_anatomy(spacing: float) -> Anatomy:
    """The template's tissues on an isotropic ``spacing`` mm grid (cached per spacing).

    The arrays are shared between calls and set read-only.
    """
    if not 0.5 <= spacing <= 8.0:
        raise ValueError(f"phantom spacing must lie in [0.5, 8] mm, got {spacing}")
    t1, affine = _load_template("t1")
    gm, _ = _load_template("gm")
    wm, _ = _load_template("wm")
    template_spacing = float(np.linalg.norm(affine[:3, 0]))
    step = spacing / template_spacing
    shape = tuple(int(np.floor((s - 1) / step)) + 1 for s in t1.shape)

    def resample(volume: np.ndarray) -> np.ndarray:
        if step > 1.0:
            volume = ndimage.gaussian_filter(volume, (step - 1.0) / 2.0)
        return ndimage.affine_transform(
            volume, [step] * 3, output_shape=shape, order=1, output=np.float32
        )

    brain_fraction = np.clip(resample((t1 > 0).astype(np.float32)), 0.0, 1.0)
    gm_r = np.clip(resample(gm), 0.0, 1.0)
    wm_r = np.clip(resample(wm), 0.0, 1.0)
    parenchyma = np.minimum(gm_r + wm_r, brain_fraction)
    total = np.maximum(gm_r + wm_r, 1e-6)
    gm_r = gm_r * parenchyma / total
    wm_r = wm_r * parenchyma / total
    brain = ndimage.binary_fill_holes(brain_fraction > 0.5)
    csf = np.where(brain, 1.0 - gm_r - wm_r, 0.0).astype(np.float32)

    outside_mm = ndimage.distance_transform_edt(~brain) * spacing
    air = 1.0 - parenchyma

    def beyond(radius_mm: float) -> np.ndarray:
        # soft step from 0 to 1 across one voxel around ``radius_mm`` outside the brain
        return np.clip((outside_mm - radius_mm) / spacing + 0.5, 0.0, 1.0).astype(np.float32)

    csf += np.where(brain, 0.0, air * (1.0 - beyond(CSF_SHELL_MM))).astype(np.float32)
    skull = air * (beyond(CSF_SHELL_MM) - beyond(SKULL_SHELL_MM)) * ~brain
    scalp = air * (beyond(SKULL_SHELL_MM) - beyond(SCALP_SHELL_MM)) * ~brain
    depth = (ndimage.distance_transform_edt(brain) * spacing).astype(np.float32)

    grid_affine = affine @ np.diag([step, step, step, 1.0])
    arrays = [gm_r, wm_r, csf, skull, scalp, depth]
    for array in arrays:
        array.setflags(write=False)
    return Anatomy(*arrays, affine=grid_affine, spacing=float(spacing))
