"""Corrections -> samples, and fine-tuning rounds (fast and full) on a hand-built case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_metseg.correction.stages as stages_module
from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.correction import (
    LESION,
    NOT_LESION,
    CorrectionError,
    FinetuneConfig,
    RunawayError,
    TrustRegion,
    accept_lesion,
    empty_corrections,
    finetune,
    reject_lesion,
    select_samples,
)
from napari_metseg.correction.outcome import StrokeOutcome
from napari_metseg.correction.samples import check_corrections, to_network_grid
from napari_metseg.correction.trust import Growth, lesion_growth
from napari_metseg.engine import segment
from napari_metseg.errors import GeometryError
from napari_metseg.model import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
#: The module, which ``napari_metseg.correction.finetune`` (the function) hides.

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


#: The tiny random model's own prediction is noise near 0.5 everywhere: no lesion the
#: teacher vouches for (keep_threshold), no anchor, strokes weighing more; and the round
#: may change what it likes (the trust region is pinned below and in test_correction_trust).
#: Both kinds of stroke weigh alike (alpha 1): a random decoder lifts everything at once,
#: and with every stroke in every fast step alpha 3 drowned the 'not lesion' mark.
LEARN = {
    "keep_threshold": 0.9,
    "stroke_share": 0.9,
    "anchor_weight": 0.0,
    "hold_weight": 0.0,
    "risers": 0,
    "alpha": 1.0,
    "trust": TrustRegion(growth_factor=1e6, growth_mm3=1e12, extra_components=10**6),
}
#: The teacher holds the unmarked voxels and fast mode trains only the decoder's tail, so
#: the strokes' term falls slowly: to 0.83 of its start in 40 fast steps on a CPU.
LEARNED_LOSS_RATIO = 0.9


def assert_learned(result, before: np.ndarray, after: np.ndarray) -> None:
    """The round answered the strokes: their term fell, a voxel under the painted lesion rose
    (one is all a lesion stroke asks for) and the 'not lesion' mark fell."""
    assert result.corrected_loss_after < LEARNED_LOSS_RATIO * result.corrected_loss_before
    assert after[BLOB].max() > before[BLOB].max() + 0.05
    rejected = strokes() == NOT_LESION
    assert after[rejected].mean() < before[rejected].mean() - 0.1


def test_fast_round_learns_the_strokes_and_leaves_the_input_model_alone(blob_case, model) -> None:
    before_weights = {k: v.clone() for k, v in model.state_dict().items()}
    before = segment(blob_case, model, device="cpu")
    calls = []
    config = FinetuneConfig(mode="fast", iterations=40, lr=3e-3, device="cpu", **LEARN)
    result = finetune(blob_case, model, strokes(), config, progress=lambda *a: calls.append(a))
    assert result.mode == "fast" and result.n_lesion_voxels == 7 and result.attempts == 1
    assert (40, 40) in [call[:2] for call in calls]
    after = segment(blob_case, result.model, device="cpu")
    np.testing.assert_allclose(result.probability, after, atol=1e-5)
    assert_learned(result, before, after)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before_weights[name])
    tuned = result.model.state_dict()
    head = {id(p) for p in result.model.decoder_parameters()}
    named = dict(result.model.named_parameters())
    frozen = [k for k, p in named.items() if id(p) not in head]
    assert frozen and all(torch.equal(tuned[k], before_weights[k]) for k in frozen)
    assert any(
        not torch.equal(tuned[k], before_weights[k]) for k, p in named.items() if id(p) in head
    )


def test_full_round_trains_the_backbone_too(blob_case, model) -> None:
    config = FinetuneConfig(mode="full", iterations=3, device="cpu", unmarked="ignore", **LEARN)
    result = finetune(blob_case, model, strokes(), config)
    assert result.mode == "full"
    head = {id(p) for p in result.model.decoder_parameters()}
    frozen_before = [
        p for p in model.parameters() if id(p) not in {id(q) for q in model.decoder_parameters()}
    ]
    frozen_after = [p for p in result.model.parameters() if id(p) not in head]
    assert any(not torch.equal(a, b) for a, b in zip(frozen_after, frozen_before, strict=True))


def test_a_round_over_the_trust_region_is_refused_and_changes_nothing(blob_case, model) -> None:
    """Held against a base that saw no lesion, with no growth allowed, a round is refused."""
    marks = strokes()
    marks[marks == NOT_LESION] = 0
    config = FinetuneConfig(
        mode="fast",
        unmarked="ignore",
        iterations=20,
        lr=1e-2,
        backoffs=1,
        device="cpu",
        trust=TrustRegion(margin_mm=2.0, growth_factor=1.0, growth_mm3=0.0),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nothing = np.zeros(blob_case.shape, np.float32)
    with pytest.raises(RunawayError, match="away from the strokes"):
        finetune(blob_case, model, marks, config, reference=nothing)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name])


def scripted_checks(
    monkeypatch, within: list[bool], answered: list[bool], lost: tuple[int, ...] = (0,)
) -> None:
    """Stage checks of a round read ``within``, ``answered`` and the base candidates
    ``lost`` in turn (last repeats)."""
    calls = {"growth": 0, "strokes": 0}

    def growth(probability, *args):
        index = min(calls["growth"], len(within) - 1)
        gone = lost[min(calls["growth"], len(lost) - 1)]
        calls["growth"] += 1
        allowed = 1.0 if within[index] else -1.0
        reading = Growth(0.0, 0.0, allowed, 0, 0, lost_candidates=gone)
        return reading, np.zeros(probability.shape, bool)

    def outcome(*args):
        index = min(calls["strokes"], len(answered) - 1)
        calls["strokes"] += 1
        return StrokeOutcome(2, 2 if answered[index] else 1, 0, 0)

    monkeypatch.setattr(stages_module, "lesion_growth", growth)
    monkeypatch.setattr(stages_module, "stroke_outcome", outcome)


def test_a_round_stops_at_the_first_check_that_answers_every_stroke(
    blob_case, model, monkeypatch
) -> None:
    scripted_checks(monkeypatch, within=[True], answered=[False, True])
    config = FinetuneConfig(mode="fast", iterations=40, check_every=10, device="cpu", **LEARN)
    calls = []
    result = finetune(blob_case, model, strokes(), config, progress=lambda *a: calls.append(a))
    assert result.steps == 20 and len(result.losses) == 20 and result.attempts == 1
    assert calls[-1][:2] == (40, 40)  # the progress bar reads done
    after = segment(blob_case, result.model, device="cpu")
    np.testing.assert_allclose(result.probability, after, atol=1e-5)


@pytest.mark.parametrize(("lost", "steps"), [((2, 0), 20), ((2, 2, 1, 1), 30)])
def test_an_answered_round_runs_on_to_win_back_lost_candidates_until_recover_until(
    blob_case, model, monkeypatch, lost, steps
) -> None:
    """A base candidate lost away from the strokes may come back with more steps; past
    ``recover_until`` more steps grow specks instead, and the round stops."""
    scripted_checks(monkeypatch, within=[True], answered=[True], lost=lost)
    config = FinetuneConfig(
        mode="fast", iterations=40, check_every=10, recover_until=30, device="cpu", **LEARN
    )
    result = finetune(blob_case, model, strokes(), config)
    assert result.steps == steps and result.attempts == 1


def test_a_last_check_over_the_trust_region_falls_back_to_the_latest_within(
    blob_case, model, monkeypatch
) -> None:
    """Steps past a good stage that leave the trust region are dropped, not the attempt."""
    scripted_checks(monkeypatch, within=[True, False], answered=[False])
    config = FinetuneConfig(mode="fast", iterations=30, check_every=10, device="cpu", **LEARN)
    result = finetune(blob_case, model, strokes(), config)
    assert result.steps == 10 and len(result.losses) == 10 and result.attempts == 1
    assert result.metrics()["steps"] == 10
    after = segment(blob_case, result.model, device="cpu")
    np.testing.assert_allclose(result.probability, after, atol=1e-5)


@pytest.mark.parametrize(
    ("within", "answered", "attempts", "steps", "lr_scale"),
    [
        ([False, True], [True], 2, 10, 0.5),  # the retry at half the step answers within
        ([True, False], [False, True], 3, 10, 1.0),  # no retry does: the first attempt's stage
        ([False, False, False, True], [True], 3, 20, 0.25),  # the last attempt runs on
    ],
)
def test_an_answered_check_out_of_the_trust_region_is_retried_at_once(
    blob_case, model, monkeypatch, within, answered, attempts, steps, lr_scale
) -> None:
    """More steps at the same size grow what the attempt sprouted; a smaller step may not.
    When no retry answers within the trust region an earlier stage within it stays, and
    the last attempt, with no retry left, runs on."""
    scripted_checks(monkeypatch, within=within, answered=answered)
    config = FinetuneConfig(mode="fast", iterations=30, check_every=10, device="cpu", **LEARN)
    result = finetune(blob_case, model, strokes(), config)
    assert result.attempts == attempts and result.steps == steps and result.growth.within
    assert result.lr == pytest.approx(config.for_mode("fast").lr * lr_scale)
    after = segment(blob_case, result.model, device="cpu")
    np.testing.assert_allclose(result.probability, after, atol=1e-5)


def test_a_diverged_round_counts_as_a_runaway() -> None:
    base = np.zeros((2, 4, 4), np.float32)
    away = np.ones_like(base, dtype=bool)
    assert not lesion_growth(np.full_like(base, np.nan), base, away, 1.0, TrustRegion())[0].within


@pytest.mark.parametrize("corrections", ["empty", "off_grid"])
def test_bad_corrections_get_a_clear_error(blob_case, model, corrections) -> None:
    marks = empty_corrections((8, 32, 32)) if corrections == "empty" else strokes()[:, :, :20]
    error = CorrectionError if corrections == "empty" else GeometryError
    with pytest.raises(error, match="no corrections" if corrections == "empty" else "grid"):
        finetune(blob_case, model, marks, FinetuneConfig(device="cpu"))


def test_only_not_lesion_marks_make_a_round(blob_case, model) -> None:
    marks = empty_corrections((8, 32, 32))
    marks[BLOB] = NOT_LESION
    config = FinetuneConfig(mode="fast", iterations=10, lr=3e-3, device="cpu", **LEARN)
    result = finetune(blob_case, model, marks, config)
    assert result.n_lesion_voxels == 0 and result.n_not_lesion_voxels == 128
    assert result.probability[BLOB].mean() <= segment(blob_case, model, device="cpu")[BLOB].mean()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["fast", "full"])
def test_rounds_on_cuda_learn_the_strokes(blob_case, model, mode) -> None:
    config = FinetuneConfig(mode=mode, iterations=40, lr=3e-3, device="cuda", **LEARN)
    result = finetune(blob_case, model, strokes(), config)
    before = segment(blob_case, model, device="cpu")
    assert_learned(result, before, segment(blob_case, result.model, device="cpu"))
