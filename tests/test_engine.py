"""Whole-case inference on the CPU (and on CUDA where there is one)."""

from __future__ import annotations

import json
import threading

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_metseg.case import SEQUENCES, Case
from napari_metseg.cli import main
from napari_metseg.devices import resolve_device
from napari_metseg.engine import Segmenter, segment
from napari_metseg.errors import Cancelled, DeviceError, ModelFileError, SequenceError
from napari_metseg.model import load_model
from napari_metseg.phantom import make_phantom, write_phantom
from napari_metseg.presence import presence_flags

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def case() -> Case:
    return make_phantom(5, n_lesions=3, spacing=6.0)


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return load_model(tiny_model_path)


def test_segment_gives_a_probability_volume_on_the_case_grid(case, model) -> None:
    calls = []
    probability = segment(case, model, device="cpu", progress=lambda *a: calls.append(a))
    assert probability.shape == case.shape and probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    assert calls[-1][0] == calls[-1][1] > 0  # progress reached its total
    # Deterministic on the CPU.
    np.testing.assert_array_equal(segment(case, model, device="cpu"), probability)


def test_empty_slices_are_skipped_with_probability_zero(case, model) -> None:
    images = {name: image.copy() for name, image in case.images.items()}
    for image in images.values():
        image[:3] = 0.0
    probability = segment(Case(images, case.geometry), model, device="cpu")
    assert np.all(probability[:3] == 0.0)
    messages = []
    result = Segmenter(model, "cpu")(
        Case(images, case.geometry), progress=lambda d, t, m: messages.append(m)
    )
    assert any("empty slices skipped" in message for message in messages)
    np.testing.assert_array_equal(result.probability, probability)
    assert result.info.skipped >= 3 and result.info.slices == case.shape[0]
    assert result.info.present == SEQUENCES and result.info.precision == "float32"


def test_segmenter_batch_size_does_not_change_the_result(case, model) -> None:
    whole = Segmenter(model, "cpu", batch_size=64)(case)
    single = Segmenter(model, "cpu", batch_size=1)(case)
    np.testing.assert_allclose(single.probability, whole.probability, atol=1e-5)
    assert single.info.batch_size == 1
    with pytest.raises(ValueError, match="batch_size"):
        Segmenter(model, "cpu", batch_size=0)


def test_bfloat16_on_the_cpu_stays_close_to_float32(case, model) -> None:
    exact = Segmenter(model, "cpu")(case)
    fast = Segmenter(model, "cpu", precision="bfloat16")(case)
    assert exact.info.precision == "float32" and fast.info.precision == "bfloat16"
    assert fast.probability.dtype == np.float32
    np.testing.assert_allclose(fast.probability, exact.probability, atol=0.05)
    with pytest.raises(ValueError, match="precision"):
        Segmenter(model, "cpu", precision="int8")


def test_switching_a_sequence_off_changes_the_input(case, model) -> None:
    all_on = segment(case, model, device="cpu")
    no_bravo = segment(case, model, present=("cube_pre", "cube_post", "flair"), device="cpu")
    assert np.abs(all_on - no_bravo).max() > 0
    # Switching off through a mapping and through flags gives the same result.
    np.testing.assert_array_equal(
        segment(case, model, present={"bravo": False}, device="cpu"), no_bravo
    )
    # A case that lacks bravo is the same as bravo switched off.
    lacking = Case({k: v for k, v in case.images.items() if k != "bravo"}, case.geometry)
    np.testing.assert_array_equal(segment(lacking, model, device="cpu"), no_bravo)


def test_presence_errors(case, model) -> None:
    with pytest.raises(SequenceError):
        segment(case, model, present=(), device="cpu")
    with pytest.raises(SequenceError, match="unknown sequences"):
        presence_flags(SEQUENCES, ("t2w",))
    foreign = Case({"t2w": case.images["bravo"]}, case.geometry, name="foreign")
    with pytest.raises(ModelFileError, match="holds only"):
        segment(foreign, model, device="cpu")
    assert presence_flags(SEQUENCES, [True, False, True, True])["cube_pre"] is False


def test_cancel_stops_between_batches(case, model) -> None:
    """Cancel set by the progress callback after the first batch: no second batch runs."""
    cancel = threading.Event()
    batches = []

    def progress(done: int, total: int, message: str) -> None:
        if message.startswith("segmenting") and done > 0:
            batches.append(done)
            cancel.set()

    segmenter = Segmenter(model, "cpu", batch_size=1)
    with pytest.raises(Cancelled):
        segmenter(case, progress=progress, cancel=cancel)
    assert batches == [1]


def test_auto_device_without_gpu_is_cpu() -> None:
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(DeviceError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(DeviceError, match="tpu9"):
        resolve_device("tpu9")


def test_cli_segment_writes_nifti_with_the_case_affine(tmp_path, tiny_model_path) -> None:
    folder = write_phantom(tmp_path / "case", seed=6, n_lesions=2, spacing=6.0, name="p6")
    out = tmp_path / "out"
    code = main(["segment", str(folder), "--model", str(tiny_model_path), "--out", str(out)])
    assert code == 0
    reference = nib.load(folder / "p6_bravo.nii.gz")
    for name in ("probability.nii.gz", "mask.nii.gz"):
        written = nib.load(out / name)
        np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)
        assert written.shape == reference.shape
    assert (out / "lesions.csv").exists()
    record = json.loads((out / "segmentation.json").read_text())
    assert record["present"] == list(SEQUENCES) and record["device"] == "cpu"
    assert record["slices"] == reference.shape[2] and record["threshold"] == 0.10
    code = main(
        ["segment", str(folder), "--model", str(tiny_model_path), "--out", str(out / "no_flair")]
        + ["--sequences", "bravo,cube_pre,cube_post"]
    )
    assert code == 0
    record = json.loads((out / "no_flair" / "segmentation.json").read_text())
    assert record["present"] == ["bravo", "cube_pre", "cube_post"]
    code = main(["segment", str(folder), "--model", str(tmp_path / "absent"), "--out", str(out)])
    assert code == 2
    code = main(
        ["segment", str(folder), "--model", str(tiny_model_path), "--out", str(out)]
        + ["--sequences", "bravo,t2w"]
    )
    assert code == 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_cpu(case, model) -> None:
    cpu = segment(case, model, device="cpu")
    result = Segmenter(model, "cuda")(case)
    np.testing.assert_allclose(result.probability, cpu, atol=0.05)
    assert result.info.precision in ("bfloat16", "float16")
