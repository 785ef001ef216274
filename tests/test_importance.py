"""Censor-one-out sequence importance on hand-made probability volumes."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_metseg import importance
from napari_metseg.case import Case, Geometry
from napari_metseg.errors import Cancelled, SequenceError
from napari_metseg.importance import NONE_OFF, LesionChanges, compare_lesions, sequence_importance

SHAPE = (8, 20, 20)


@pytest.fixture
def case():
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    geometry = Geometry(SHAPE, affine, SHAPE, affine)
    images = {name: np.zeros(SHAPE, np.float32) for name in ("bravo", "cube_post", "flair")}
    return Case(images, geometry, name="hand")


def fake_segment(calls):
    """bravo finds lesion A; lesion B is 0.6 sure with cube_post, 0.3 without;
    switching flair off makes a false positive C appear."""

    def segment(case, model, present=None, device="auto", progress=None, cancel=None):
        calls.append(tuple(present))
        progress(1, 1, "done")
        probability = np.zeros(case.shape, np.float32)
        if "bravo" in present:
            probability[1:3, 2:5, 2:5] = 0.9
        probability[4:6, 10:14, 10:14] = 0.6 if "cube_post" in present else 0.3
        if "flair" not in present:
            probability[1:2, 15:17, 15:17] = 0.2
        return probability

    return segment


def test_compare_names_lost_and_gained_lesions():
    reference = np.zeros((3, 6, 6), np.int32)
    reference[0, 0:2, 0:2] = 1
    reference[2, 4:6, 4:6] = 2
    other = np.zeros_like(reference)
    other[0, 1:3, 1:3] = 5  # touches lesion 1
    other[1, 3, 0] = 6  # new
    other[2, 0, 5] = 7  # new
    changes = compare_lesions(reference, other)
    assert (changes.lost, changes.gained) == ((2,), (6, 7))
    assert changes.summary() == "2 new lesions, 1 removed"
    assert compare_lesions(other, reference) == LesionChanges(lost=(6, 7), gained=(2,))
    assert compare_lesions(reference, reference).summary() == "0 new lesions, 0 removed"
    one = np.zeros_like(reference)
    one[1, 3, 0] = 1
    assert compare_lesions(np.zeros_like(reference), one).summary() == "1 new lesion, 0 removed"
    with pytest.raises(ValueError, match="shape"):
        compare_lesions(reference, other[:2])


def test_each_present_sequence_is_switched_off_once(case, monkeypatch):
    calls = []
    monkeypatch.setattr(importance, "segment", fake_segment(calls))
    reports = []
    table = sequence_importance(case, "model", progress=lambda *a: reports.append(a))
    assert calls == [
        ("bravo", "cube_post", "flair"),
        ("cube_post", "flair"),
        ("bravo", "flair"),
        ("bravo", "cube_post"),
    ]
    assert list(table["off"]) == [NONE_OFF, "bravo", "cube_post", "flair"]
    assert list(table["lesions"]) == [2, 1, 2, 3]
    assert list(table["lost"]) == [0, 1, 0, 0]
    assert list(table["gained"]) == [0, 0, 0, 1]
    np.testing.assert_allclose(table["mean_confidence"], [0.75, 0.6, 0.6, (0.9 + 0.6 + 0.2) / 3])
    np.testing.assert_allclose(table["confidence_change"], table["mean_confidence"] - 0.75)
    assert reports[-1][:2] == (1000, 1000)
    assert all(done <= total for done, total, _ in reports)
    assert [r[0] for r in reports] == sorted(r[0] for r in reports)


def test_a_known_baseline_is_not_recomputed(case, monkeypatch):
    calls = []
    segment = fake_segment(calls)
    monkeypatch.setattr(importance, "segment", segment)
    baseline = segment(case, None, present=case.sequences, progress=lambda *a: None)
    calls.clear()
    table = sequence_importance(case, "model", present=("bravo", "flair"), baseline=baseline)
    assert calls == [("flair",), ("bravo",)]
    assert list(table["off"]) == [NONE_OFF, "bravo", "flair"]
    assert list(table["lost"]) == [0, 1, 0]


def test_one_sequence_is_not_enough(case, monkeypatch):
    monkeypatch.setattr(importance, "segment", fake_segment([]))
    with pytest.raises(SequenceError, match=r"at least two.*\['flair'\]"):
        sequence_importance(case, "model", present=("flair",))


def test_cancel_stops_between_runs(case, monkeypatch):
    cancel = threading.Event()
    calls = []
    segment = fake_segment(calls)

    def segment_then_cancel(*args, **kwargs):
        cancel.set()
        return segment(*args, **kwargs)

    monkeypatch.setattr(importance, "segment", segment_then_cancel)
    with pytest.raises(Cancelled):
        sequence_importance(case, "model", cancel=cancel)
    assert len(calls) == 1
