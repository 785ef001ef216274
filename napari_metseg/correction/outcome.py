"""What a round did with each stroke: the answer an annotator looks for after Fine-tune.

The change report counts lesions that appeared or disappeared anywhere; the
annotator also needs to know whether the lesions they painted are now found
and the false ones they marked are gone. A round can pass its trust region
and still leave a painted lesion under the candidate threshold (fast mode
trains only the decoder's last layers, and a 1-voxel lesion can look like
thousands of other spots to them), so that is said, not left to be noticed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_metseg.correction.samples import LESION, NOT_LESION
from napari_metseg.lesions import label_components
from napari_metseg.thresholds import CANDIDATE_THRESHOLD


@dataclass(frozen=True)
class StrokeOutcome:
    """Painted lesions (3D patches of lesion marks) a candidate now covers at the centre,
    and 'not lesion' patches with no voxel left at or above the candidate threshold.

    A painted lesion counts as found when a candidate covers the voxel of its
    patch nearest the patch's centroid, where the annotator aimed: a 3x3 dab on
    a 1-voxel lesion is 8 voxels of healthy tissue. Counting a candidate that
    merely touched the patch, a round on correction-benchmark case 9002 stopped
    as answered with a candidate at the dab's edge and the lesion under its
    centre still missed.
    """

    painted: int
    found: int
    rejected: int
    cleared: int

    @property
    def answered(self) -> bool:
        """Every painted lesion found and every marked false one dropped."""
        return self.found == self.painted and self.cleared == self.rejected

    def summary(self) -> str:
        """``"the model finds 1 of 2 painted lesions, drops 1 of 1 marked false ones"``
        (the lesion table holds every mark whatever the model says)."""
        parts = []
        if self.painted:
            parts.append(f"finds {self.found} of {self.painted} painted lesions")
        if self.rejected:
            parts.append(f"drops {self.cleared} of {self.rejected} marked false ones")
        return f"the model {', '.join(parts)}" if parts else ""


def stroke_outcome(
    corrections: np.ndarray, probability: np.ndarray, threshold: float = CANDIDATE_THRESHOLD
) -> StrokeOutcome:
    """How ``probability`` (case grid) answers the strokes of ``corrections`` (same grid)."""
    if corrections.shape != probability.shape:
        raise ValueError(
            f"corrections {corrections.shape} and probability {probability.shape} differ in shape"
        )
    candidate = probability >= threshold
    painted, n_painted = label_components(corrections == LESION)
    found = sum(bool(candidate[centre]) for centre in _centres(painted))
    rejected, n_rejected = label_components(corrections == NOT_LESION)
    left = np.unique(rejected[candidate & (rejected > 0)])
    return StrokeOutcome(n_painted, found, n_rejected, n_rejected - left.size)


def _centres(patches: np.ndarray) -> list[tuple[int, ...]]:
    """Per labelled patch, its voxel nearest the patch's centroid."""
    centres = []
    for label, box in enumerate(ndimage.find_objects(patches), start=1):
        voxels = np.argwhere(patches[box] == label)
        nearest = ((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1).argmin()
        centres.append(tuple(int(v) + b.start for v, b in zip(voxels[nearest], box, strict=True)))
    return centres
