"""The bundled default model finds the lesions of a phantom it never saw, on the CPU.

The default model is trained on phantoms with seeds from 1000 on
(``TrainConfig.synthetic_seed``; the exact run is recorded in
``napari_metseg/models/default/TRAINING.md``); seed 777 is outside that range.
Thresholds: lesions of at least 6 mm diameter (4 voxels across on the 1.5 mm
phantom grid, about 4 pixels on the model's 160-pixel slices) must be found
at 80 % with all four sequences and 60 % without ``bravo``. Smaller lesions
are left out: below about 3 pixels a lesion is at the limit of what the
reduced input size resolves, and the studies themselves report most misses
there. The lower bar without ``bravo`` reflects the study, where the dropout
network lost some sensitivity when the most informative sequence was missing.
"""

from __future__ import annotations

import pytest

from napari_metseg.case import SEQUENCES
from napari_metseg.engine import segment
from napari_metseg.metrics import evaluate_case
from napari_metseg.model import load_model
from napari_metseg.phantom import make_phantom

MIN_DIAMETER_MM = 6.0
FRESH_SEED = 777


@pytest.fixture(scope="module")
def fresh_case():
    return make_phantom(FRESH_SEED, n_lesions=12, spacing=1.5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("switched_off", "minimum"),
    [((), 0.8), (("bravo",), 0.6)],
    ids=["all-four", "without-bravo"],
)
def test_bundled_model_detects_fresh_phantom_lesions(fresh_case, switched_off, minimum):
    model = load_model(None, device="cpu")
    present = tuple(name not in switched_off for name in SEQUENCES)
    probability = segment(fresh_case, model, present=present, device="cpu")
    scores = evaluate_case(probability, fresh_case.truth, fresh_case.geometry)
    large = scores.lesions[scores.lesions["diameter_mm"] >= MIN_DIAMETER_MM]
    assert len(large) >= 3, "the fresh phantom should hold several lesions of 6 mm or more"
    sensitivity = float(large["detected"].mean())
    assert sensitivity >= minimum, (
        f"sensitivity {sensitivity:.2f} on {len(large)} lesions >= {MIN_DIAMETER_MM} mm "
        f"with {switched_off or 'all sequences'} off"
    )
