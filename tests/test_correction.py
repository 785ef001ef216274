"""Corrections -> samples and targets, the correction loss, fine-tuning (fast and full)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.correction import (
    LESION,
    NOT_LESION,
    CorrectionError,
    FinetuneConfig,
    accept_lesion,
    correction_loss,
    empty_corrections,
    finetune,
    reject_lesion,
    sample_targets,
    select_samples,
)
from napari_metseg.correction.finetune import backbone_features, head_logits
from napari_metseg.correction.samples import check_corrections, to_network_grid
from napari_metseg.engine import segment
from napari_metseg.errors import GeometryError
from napari_metseg.model import ModelConfig, build_model, load_model
from napari_metseg.preprocess import PreprocessConfig

pytestmark = pytest.mark.usefixtures("one_thread")

#: The blob of the hand-built case: slices 3-4, rows and columns 10-17.
BLOB = (slice(3, 5), slice(10, 18), slice(10, 18))


@pytest.fixture(scope="module")
def blob_case() -> Case:
    """8 slices of 32 x 32 noise on a head-like disc, with one bright blob (the 'lesion')."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:32, :32]
    head = ((rows - 16) ** 2 + (cols - 16) ** 2 < 15**2).astype(np.float32)
    images = {}
    for name in SEQUENCES:
        volume = 0.4 * head + 0.05 * rng.random((8, 32, 32), dtype=np.float32)
        volume[BLOB] += 1.0
        images[name] = volume * head
    truth = np.zeros((8, 32, 32), dtype=np.uint8)
    truth[BLOB] = 1
    geometry = Geometry((8, 32, 32), np.eye(4), (8, 32, 32), np.eye(4))
    return Case(images, geometry, truth=truth, name="blob")


@pytest.fixture()
def model(tiny_model_path):
    return load_model(tiny_model_path)


def strokes() -> np.ndarray:
    """A few short lesion strokes inside the blob and a not-lesion mark elsewhere."""
    corrections = empty_corrections((8, 32, 32))
    corrections[3, 13, 12:16] = LESION
    corrections[4, 12:15, 14] = LESION
    corrections[4, 22:24, 22:24] = NOT_LESION
    return corrections


def test_accept_and_reject_mark_whole_predicted_lesions() -> None:
    labels = np.zeros((2, 4, 4), dtype=np.int32)
    labels[0, :2, :2] = 1
    labels[1, 2:, 2:] = 2
    corrections = empty_corrections(labels.shape)
    accept_lesion(corrections, labels, 1)
    reject_lesion(corrections, labels, 2)
    assert np.count_nonzero(corrections == LESION) == 4
    assert np.all(corrections[labels == 2] == NOT_LESION)
    assert np.all(corrections[labels == 0] == 0)
    with pytest.raises(ValueError, match="label 3"):
        accept_lesion(corrections, labels, 3)


def test_network_grid_keeps_thin_strokes_and_drops_conflicts() -> None:
    native = np.zeros((1, 64, 64), dtype=np.uint8)
    native[0, 10, 10] = LESION  # one voxel: must survive a 4x shrink
    native[0, 40, 40] = LESION  # both marks in the same 4 x 4 block: a conflict
    native[0, 41, 41] = NOT_LESION
    small = to_network_grid(native, 16)
    assert small[0, 2, 2] == LESION
    assert small[0, 10, 10] == 0
    assert np.count_nonzero(small) == 1
    grown = to_network_grid(np.full((1, 2, 2), NOT_LESION, dtype=np.uint8), 8)
    assert np.all(grown == NOT_LESION)


def test_samples_are_corrected_then_neighbour_then_random_slices() -> None:
    corrections = empty_corrections((20, 8, 8))
    corrections[5, 2, 2] = LESION
    corrections[12, 3, 3] = NOT_LESION
    tissue = np.ones(20, dtype=bool)
    tissue[:2] = False
    samples = select_samples(corrections, 8, tissue, neighbours=1, random_slices=3)
    assert samples.slices[:2].tolist() == [5, 12]
    assert sorted(samples.slices[2:6].tolist()) == [4, 6, 11, 13]
    assert samples.kinds.count("random") == 3
    far = samples.slices[6:]
    assert len(set(far.tolist()) - {0, 1, 4, 5, 6, 11, 12, 13}) == 3
    assert samples.marks[0, 2, 2] == LESION and samples.marks[1, 3, 3] == NOT_LESION
    with pytest.raises(CorrectionError, match="no corrections"):
        select_samples(empty_corrections((4, 8, 8)), 8)
    with pytest.raises(GeometryError, match="values"):
        check_corrections(np.full((4, 8, 8), 3, dtype=np.uint8), (4, 8, 8))
    with pytest.raises(GeometryError, match="grid"):
        check_corrections(empty_corrections((4, 8, 8)), (4, 8, 9))


def test_targets_and_ignore_masks() -> None:
    marks = np.array([[[LESION, NOT_LESION, 0, 0]]], dtype=np.uint8)
    base = np.array([[[0.1, 0.9, 0.8, 0.2]]], dtype=np.float32)
    target, ignore = sample_targets(marks, "ignore")
    assert target.tolist() == [[[1, 0, 0, 0]]]
    assert ignore.tolist() == [[[False, False, True, True]]]
    target, ignore = sample_targets(marks, "bootstrap", base, keep_threshold=0.5)
    # marks win over the model; unmarked voxels take its prediction
    assert target.tolist() == [[[1, 0, 1, 0]]]
    assert not ignore.any()
    with pytest.raises(ValueError, match="probability"):
        sample_targets(marks, "bootstrap")


@pytest.mark.parametrize("unmarked", ["ignore", "bootstrap"])
def test_unmarked_voxels_get_no_gradient_only_when_ignored(unmarked) -> None:
    marks = np.zeros((1, 4, 4), dtype=np.uint8)
    marks[0, 0, 0] = LESION
    marks[0, 3, 3] = NOT_LESION
    target, ignore = sample_targets(marks, unmarked, np.full((1, 4, 4), 0.3, np.float32))
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = correction_loss(
        logits,
        torch.from_numpy(target).long(),
        torch.from_numpy(marks != 0),
        torch.from_numpy(ignore),
        alpha=3.0,
        beta=0.1,
    )
    loss.backward()
    moved = logits.grad.abs().sum(dim=1)[0] > 0
    assert moved[0, 0] and moved[3, 3]
    unmarked_moved = moved[torch.from_numpy(marks[0] == 0)]
    assert not unmarked_moved.any() if unmarked == "ignore" else unmarked_moved.all()


@pytest.mark.parametrize("integration", ["input", "mid", "end", "subtraction"])
def test_cached_features_plus_head_equal_the_network(integration) -> None:
    torch.manual_seed(0)
    config = ModelConfig(integration=integration, preprocess=PreprocessConfig(size=32, context=0))
    network = build_model(config).eval()
    x = torch.rand(2, config.in_channels, 32, 32)
    with torch.no_grad():
        split = head_logits(network, backbone_features(network, x), (32, 32))
        torch.testing.assert_close(split, network(x))


def test_fast_round_learns_the_strokes_and_leaves_the_input_model_alone(blob_case, model) -> None:
    before_weights = {k: v.clone() for k, v in model.state_dict().items()}
    before = segment(blob_case, model, device="cpu")
    calls = []
    # the random model's own prediction is noise: weigh it no more than the strokes
    config = FinetuneConfig(mode="fast", iterations=40, lr=3e-3, unmarked_weight=1.0, device="cpu")
    result = finetune(blob_case, model, strokes(), config, progress=lambda *a: calls.append(a))
    assert result.mode == "fast" and result.n_lesion_voxels == 7
    assert calls[-1][:2] == (40, 40)
    assert result.corrected_loss_after < 0.5 * result.corrected_loss_before
    after = segment(blob_case, result.model, device="cpu")
    assert after[BLOB].mean() > before[BLOB].mean() + 0.1
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before_weights[name])
    tuned = result.model.state_dict()
    backbone = [k for k in tuned if k.startswith("backbone.") and tuned[k].is_floating_point()]
    head = [k for k in tuned if k.startswith("head.") and k.endswith("weight")]
    assert all(torch.equal(tuned[k], before_weights[k]) for k in backbone)
    assert any(not torch.equal(tuned[k], before_weights[k]) for k in head)


def test_full_round_trains_the_backbone_too(blob_case, model) -> None:
    config = FinetuneConfig(mode="full", iterations=3, device="cpu", unmarked="ignore")
    result = finetune(blob_case, model, strokes(), config)
    assert result.mode == "full" and result.n_samples == 2  # ignore mode: corrected slices only
    first = "backbone.0.0.weight"
    assert not torch.equal(result.model.state_dict()[first], model.state_dict()[first])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["fast", "full"])
def test_rounds_on_cuda_learn_the_strokes(blob_case, model, mode) -> None:
    config = FinetuneConfig(mode=mode, iterations=40, lr=3e-3, unmarked_weight=1.0, device="cuda")
    result = finetune(blob_case, model, strokes(), config)
    assert result.corrected_loss_after < 0.5 * result.corrected_loss_before
    after = segment(blob_case, result.model, device="cpu")
    assert after[BLOB].mean() > segment(blob_case, model, device="cpu")[BLOB].mean() + 0.1
