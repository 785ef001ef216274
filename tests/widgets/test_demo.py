"""``metseg demo --headless``: the sample case's results as files, without a display."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_metseg import model
from napari_metseg.cli import main
from napari_metseg.cli.demo import sample_folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_network(monkeypatch):
    """Model loading and segmentation replaced: probability = bright bravo voxels."""
    calls = []

    def segment(case, model, present=None, device="auto", progress=None, cancel=None):
        calls.append(device)
        bravo = case.images["bravo"]
        return (bravo > np.percentile(bravo, 99.9)).astype(np.float32) * 0.9

    def load_model(path=None, device="cpu"):
        return "model"

    from napari_metseg.widgets import run_state, workers

    for module in (model, run_state):
        monkeypatch.setattr(module, "load_model", load_model)
    monkeypatch.setattr(workers, "segment", segment)
    monkeypatch.setattr(
        workers, "segment_keeping_context", lambda *args, **kwargs: (segment(*args, **kwargs), None)
    )
    return calls


def test_headless_demo_writes_its_files(cache, tmp_path, tiny_model_path):
    out = tmp_path / "out"
    argv = ["demo", "--headless", "--out", str(out), "--model", str(tiny_model_path)]
    assert main([*argv, "--spacing", "4", "--threshold", "0.01"]) == 0
    names = {"bravo", "cube_pre", "cube_post", "flair", "probability", "mask"}
    files = {f"{n}.nii.gz" for n in names} | {"lesions.csv", "segmentation.json"}
    assert {p.name for p in out.iterdir()} == files
    source = nib.load(next(sample_folder(4.0).glob("*_bravo.nii.gz")))
    mask = nib.load(out / "mask.nii.gz")
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
    table = pd.read_csv(out / "lesions.csv")
    assert len(table) == len(np.unique(np.asarray(mask.dataobj))) - 1 > 0


def test_sample_is_cached(cache):
    folder = sample_folder(4.0)
    assert folder.is_relative_to(cache)
    stamp = folder.stat().st_mtime_ns
    assert sample_folder(4.0) == folder and folder.stat().st_mtime_ns == stamp


def test_missing_bundled_model_names_the_expected_path(cache, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "models" / "default.safetensors"
    monkeypatch.setattr(model, "default_model_path", lambda: missing)
    assert main(["demo", "--headless", "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_headless_needs_an_output_folder(cache, capsys):
    assert main(["demo", "--headless"]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.gui
def test_demo_opens_the_case_docks_the_workbench_and_runs(
    cache, tmp_path, fake_network, make_napari_viewer, monkeypatch, qtbot
):
    import napari

    viewers = []

    def viewer_factory(**kwargs):
        viewers.append(make_napari_viewer(**kwargs))
        return viewers[-1]

    monkeypatch.setattr(napari, "Viewer", viewer_factory)
    monkeypatch.setattr(napari, "run", lambda: None)
    argv = ["demo", "--model", str(tmp_path / "tiny.safetensors"), "--spacing", "4"]
    assert main([*argv, "--device", "cpu"]) == 0
    (viewer,) = viewers
    qtbot.waitUntil(lambda: "lesions" in viewer.layers, timeout=60_000)
    assert [layer.metadata["sequence"] for layer in viewer.layers][:4] == [
        "bravo",
        "cube_pre",
        "cube_post",
        "flair",
    ]
    roles = [layer.metadata.get("role") for layer in viewer.layers]
    assert [roles.count(r) for r in ("probability", "lesions", "corrections")] == [1, 1, 1]
    assert "probability" in viewer.layers
    assert "MetSeg workbench" in " ".join(viewer.window.dock_widgets)
    assert fake_network == ["cpu"]
