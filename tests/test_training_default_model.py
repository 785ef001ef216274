"""The bundled default model on a phantom it never saw, on the CPU.

The default model was trained on phantoms with seeds from 1000 on
(``TrainConfig.synthetic_seed``; the exact run is in
``napari_metseg/models/default/TRAINING.md``); seed 777 is outside that range.

What this pins: the bundled files load without unpickling, record how they were
made, and the network ranks lesion voxels above the rest of the head with and
without ``bravo`` (voxel ROC AUC inside the head). A random network scores
about 0.5. The bar is set below what the shipped model measured (see
TRAINING.md) and well above chance; it is a ranking bar, not yet the lesion
detection bar the training issue asks for, which a 20-minute CPU run did not
reach.
"""

from __future__ import annotations

import pytest
from sklearn.metrics import roc_auc_score

from napari_metseg.case import SEQUENCES
from napari_metseg.engine import segment
from napari_metseg.model import load_model, read_model_description
from napari_metseg.phantom import make_phantom

FRESH_SEED = 777
MIN_AUC = 0.85


@pytest.fixture(scope="module")
def fresh_case():
    return make_phantom(FRESH_SEED, n_lesions=12, spacing=1.5)


def test_bundled_model_records_its_training() -> None:
    description = read_model_description(None)
    training = description["metadata"]["training"]
    assert training["config"]["seed"] == 0
    assert training["config"]["sequence_dropout"] is True
    assert "validation" in training


@pytest.mark.slow
@pytest.mark.parametrize("switched_off", [(), ("bravo",)], ids=["all-four", "without-bravo"])
def test_bundled_model_ranks_lesion_voxels_high(fresh_case, switched_off) -> None:
    model = load_model(None, device="cpu")
    present = tuple(name not in switched_off for name in SEQUENCES)
    probability = segment(fresh_case, model, present=present, device="cpu")
    head = fresh_case.images["bravo"] > 0
    auc = roc_auc_score(fresh_case.truth[head] > 0, probability[head])
    assert auc >= MIN_AUC, f"voxel AUC {auc:.3f} with {switched_off or 'all sequences'} off"
