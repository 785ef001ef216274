"""The bundled default model finds the lesions of a phantom it never saw, on the CPU.

The default model is trained on phantoms with seeds from 1000 on
(``TrainConfig.synthetic_seed``; the exact run is recorded in
``napari_metseg/models/default/TRAINING.md``); seed 777 is outside that range.
Thresholds: lesions of at least 6 mm diameter (3 voxels across on the 2 mm
phantom grid, about 4 pixels on the model's 128-pixel slices) must be found
at 80 % with all four sequences and 60 % without ``bravo``. Smaller lesions
are left out: below 3 pixels a lesion is at the limit of what the reduced
input size resolves, and the studies themselves report most misses there.
The lower bar without ``bravo`` reflects the study, where the dropout network
lost some sensitivity when the most informative sequence was missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

model_module = pytest.importorskip("napari_metseg.model")
engine = pytest.importorskip("napari_metseg.engine")

from napari_metseg.case import SEQUENCES  # noqa: E402
from napari_metseg.metrics import evaluate_case  # noqa: E402
from napari_metseg.phantom import make_phantom  # noqa: E402

MIN_DIAMETER_MM = 6.0
FRESH_SEED = 777


def bundled_model_path() -> Path:
    if not hasattr(model_module, "default_model_path"):
        pytest.skip("napari_metseg.model has no default_model_path")
    path = Path(model_module.default_model_path())
    if not path.exists():
        pytest.skip(f"the bundled model files are absent ({path})")
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("switched_off", "minimum"),
    [((), 0.8), (("bravo",), 0.6)],
    ids=["all-four", "without-bravo"],
)
def test_bundled_model_detects_fresh_phantom_lesions(switched_off, minimum):
    model = model_module.load_model(bundled_model_path(), device="cpu")
    case = make_phantom(FRESH_SEED, n_lesions=12, spacing=2.0)
    present = tuple(name not in switched_off for name in SEQUENCES)
    probability = engine.segment(case, model, present=present, device="cpu")
    scores = evaluate_case(probability, case.truth, case.geometry)
    large = scores.lesions[scores.lesions["diameter_mm"] >= MIN_DIAMETER_MM]
    assert len(large) >= 3, "the fresh phantom should hold several lesions of 6 mm or more"
    sensitivity = float(large["detected"].mean())
    assert sensitivity >= minimum, (
        f"sensitivity {sensitivity:.2f} on {len(large)} lesions >= {MIN_DIAMETER_MM} mm "
        f"with {switched_off or 'all sequences'} off"
    )
