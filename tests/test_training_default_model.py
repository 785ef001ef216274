"""The bundled default model on phantoms it never saw, on the CPU.

The default model was trained on phantoms with seeds 1000-1053 (the exact run
is in ``napari_metseg/models/default/TRAINING.md``); seeds 777 and 778 are
outside that range and use the generator's default lesion sizes (down to
single voxels), not the training set's 3 mm minimum.

What this pins, with all four sequences and without ``bravo``:

- Lesions of 10 mm or more are detected (METHOD.md rules: candidates at 0.10,
  centre within 1 mm) at a sensitivity of at least 0.8. The shipped model finds
  5 of 5 in both settings. Below that size it is not yet reliable (TRAINING.md
  gives the numbers), so no bar is set there.
- Few false alarms: at most 3 false-positive components per case at the 0.10
  threshold. The shipped model has 0.0 with all four sequences and 1.0 without
  ``bravo``; the CPU-trained 128-pixel model it replaced had 12.5.
- The network ranks lesion voxels above the rest of the head (voxel ROC AUC of
  at least 0.95; the shipped model scores 0.998-0.999, a random one about 0.5).
- The files load without unpickling and record how they were made.
"""

from __future__ import annotations

import pytest

from napari_metseg.case import SEQUENCES
from napari_metseg.engine import segment
from napari_metseg.metrics import evaluate_case, evaluate_dataset
from napari_metseg.model import load_model, read_model_description
from napari_metseg.phantom import make_phantom

FRESH_SEEDS = (777, 778)
LARGE_MM = 10.0
MIN_LARGE_SENSITIVITY = 0.8
MIN_AUC = 0.95
MAX_FALSE_POSITIVES_PER_CASE = 3.0


@pytest.fixture(scope="module")
def fresh_cases():
    return [make_phantom(seed, n_lesions=12, spacing=1.5) for seed in FRESH_SEEDS]


def test_bundled_model_records_its_training() -> None:
    description = read_model_description(None)
    training = description["metadata"]["training"]
    assert training["config"]["seed"] == 0
    assert training["config"]["sequence_dropout"] is True
    assert training["validation"]["max_sensitivity"] > 0.3
    assert "command" in description["metadata"]


@pytest.mark.slow
@pytest.mark.parametrize("switched_off", [(), ("bravo",)], ids=["all-four", "without-bravo"])
def test_bundled_model_detects_the_large_lesions_of_fresh_phantoms(
    fresh_cases, switched_off
) -> None:
    model = load_model(None, device="cpu")
    present = tuple(name not in switched_off for name in SEQUENCES)
    evaluations = []
    for case in fresh_cases:
        probability = segment(case, model, present=present, device="cpu")
        evaluation = evaluate_case(probability, case.truth, case.geometry, name=case.name)
        assert evaluation.auc >= MIN_AUC, f"{case.name}: voxel AUC {evaluation.auc:.3f}"
        evaluations.append(evaluation)
    lesions = evaluate_dataset(evaluations)
    large = [
        row.detected
        for evaluation in evaluations
        for row in evaluation.lesions.itertuples()
        if row.diameter_mm >= LARGE_MM
    ]
    sensitivity = sum(large) / len(large)
    assert len(large) >= 4, "the fresh phantoms should hold several large lesions"
    assert sensitivity >= MIN_LARGE_SENSITIVITY, (
        f"{sum(large)} of {len(large)} lesions >= {LARGE_MM} mm found with "
        f"{switched_off or 'nothing'} off (pooled max sensitivity {lesions.max_sensitivity:.2f})"
    )
    assert lesions.false_positives_per_case <= MAX_FALSE_POSITIVES_PER_CASE
