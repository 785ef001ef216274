"""The bundled default model on phantoms it never saw, on the CPU.

The default model is the weight average of two models trained on randomised
phantoms with seeds 20000-20062 and 22000-22071 (the exact runs are in
``napari_metseg/models/default/TRAINING.md``; a model made with ``metseg
train --init`` also counts the seeds of the model it started from, an average
those of its members); seeds 777 and 778 are outside that range and use the
generator's default settings at 1.5 mm with lesions of every size (down to
single voxels).

What this pins, by running the model, with all four sequences and without
``bravo`` (METHOD.md rules: candidates at p >= 0.10, centre within 1 mm of the
lesion; size = the truth lesion's longest diameter):

- Every lesion of 10 mm or more is found (the issue's target).
- At least 90% of the lesions of 3-10 mm are found (the issue's target). The
  shipped model finds 10 and 10 of 10 (v4: 8 and 10; v1 2 and 5, so this
  fails for a network that only sees large lesions).
- Few false alarms: at most 3 false-positive components of 10 mm^3 or more
  per case at p >= 0.5 (the shipped model: 0.5 and 0.5), and at most 5 in
  the p >= 0.10 map the plugin draws (the shipped model: 4.0 and 1.5; v4 3.5
  and 4.5; v2 drew 16 with all four sequences).
- The network ranks lesion voxels above the rest of the head (voxel ROC AUC of
  at least 0.95; a random network scores about 0.5).
- The files load without unpickling and record how they were made.

Lesions under 3 mm (one or two voxels at 1.5 mm) carry no bar: the model finds
4 and 5 of 9 (TRAINING.md).
"""

from __future__ import annotations

import pytest

from napari_metseg.case import SEQUENCES
from napari_metseg.engine import Segmenter
from napari_metseg.metrics import evaluate_case, evaluate_dataset, false_positive_components
from napari_metseg.model import load_model, read_model_description
from napari_metseg.phantom import make_phantom

FRESH_SEEDS = (777, 778)
CANDIDATE_THRESHOLD = 0.10
FP_THRESHOLD = 0.5
SIZE_EDGES_MM = (3.0, 10.0)
MIN_SENSITIVITY = {"3-10 mm": 0.9, ">= 10 mm": 1.0}
MIN_AUC = 0.95
FP_MIN_VOLUME_MM3 = 10.0
MAX_FALSE_POSITIVES_PER_CASE = 3.0
MAX_FAINT_FALSE_POSITIVES_PER_CASE = 5.0


@pytest.fixture(scope="module")
def fresh_cases():
    return [make_phantom(seed, n_lesions=12, spacing=1.5) for seed in FRESH_SEEDS]


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(load_model(None), "cpu")


def test_bundled_model_records_its_training() -> None:
    description = read_model_description(None)
    records = training_records(description["metadata"])
    assert records, "the bundled model must record how it was trained"
    for training in records:
        assert training["config"]["sequence_dropout"] is True
        assert training["config"]["decoder"] == description["model"]["decoder"]
        assert not seen_phantom_seeds(training) & set(FRESH_SEEDS), (
            "the test phantoms must be unseen"
        )
    assert "command" in description["metadata"] or "average" in description["metadata"]


def training_records(metadata: dict) -> list[dict]:
    """The training records of a model: its own, or each member's of a weight average
    (``scripts/average_models.py``)."""
    if "average" in metadata:
        members = metadata["average"]["members"].values()
        return [record for member in members for record in training_records(member)]
    return [metadata["training"]] if "training" in metadata else []


def seen_phantom_seeds(training: dict) -> set[int]:
    """Phantom seeds a model's weights have seen, through the runs it started from."""
    config = training["config"]
    first = config["synthetic_seed"]
    seen = set(range(first, first + config["synthetic_train"] + config["synthetic_val"]))
    for spec in [*config["train"], *config["val"]]:
        kind, _, seed = spec.partition(":")
        if kind in ("phantom", "phantom-random"):
            seen.add(int(seed))
    parent = training.get("started_from", {}).get("training")
    return seen | (seen_phantom_seeds(parent) if parent else set())


@pytest.mark.slow
@pytest.mark.parametrize("switched_off", [(), ("bravo",)], ids=["all-four", "without-bravo"])
def test_bundled_model_finds_the_lesions_of_fresh_phantoms(
    fresh_cases, segmenter, switched_off
) -> None:
    present = tuple(name not in switched_off for name in SEQUENCES)
    evaluations, faint = [], []
    for case in fresh_cases:
        probability = segmenter(case, present=present).probability
        faint.append(
            false_positive_components(
                probability >= CANDIDATE_THRESHOLD,
                case.truth,
                case.geometry.voxel_volume,
                FP_MIN_VOLUME_MM3,
            )
        )
        evaluation = evaluate_case(
            probability,
            case.truth,
            case.geometry,
            threshold=FP_THRESHOLD,
            candidate_threshold=CANDIDATE_THRESHOLD,
            fp_min_volume_mm3=FP_MIN_VOLUME_MM3,
            size_edges_mm=SIZE_EDGES_MM,
            name=case.name,
        )
        assert evaluation.auc >= MIN_AUC, f"{case.name}: voxel AUC {evaluation.auc:.3f}"
        evaluations.append(evaluation)
    pooled = evaluate_dataset(evaluations)
    strata = pooled.size_sensitivity.set_index("stratum")
    for stratum, bar in MIN_SENSITIVITY.items():
        found, total = strata.loc[stratum, "detected"], strata.loc[stratum, "lesions"]
        assert total >= 4, f"the fresh phantoms should hold several lesions of {stratum}"
        assert found / total >= bar, (
            f"{found} of {total} lesions of {stratum} found with {switched_off or 'nothing'} off"
        )
    assert pooled.false_positives_min_volume_per_case <= MAX_FALSE_POSITIVES_PER_CASE
    assert sum(faint) / len(faint) <= MAX_FAINT_FALSE_POSITIVES_PER_CASE, f"p >= 0.10: {faint}"
