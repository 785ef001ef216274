"""Fixtures for the napari GUI tests: tiny phantom cases and a fast stand-in engine."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_metseg.phantom import make_phantom

#: Voxel size of test phantoms in mm (a 48 x 59 x 50 grid).
SPACING = 4.0


@pytest.fixture(scope="session")
def tiny_case():
    return make_phantom(3, n_lesions=2, spacing=SPACING)


class FakeSegment:
    """Stands in for ``engine.segment``: records each call, returns ``probability`` (or
    ``probability(present)`` when it is a function of the presence vector).

    With ``block=True`` it waits for the cancel event and raises as the engine
    does; ``error`` is raised instead of returning.
    """

    def __init__(self, probability=None, error=None, block=False):
        self.calls = []
        self.probability = probability
        self.error = error
        self.block = block
        self.started = threading.Event()

    def __call__(self, case, model, present=None, device="auto", progress=None, cancel=None):
        from napari_metseg.progress import check_cancel

        self.calls.append({"case": case, "present": present, "device": device})
        self.started.set()
        if self.block:
            cancel.wait(10)
            check_cancel(cancel)
        if self.error is not None:
            raise self.error
        if progress is not None:
            progress(1, 1, "done")
        if callable(self.probability):
            return self.probability(tuple(present))
        if self.probability is not None:
            return self.probability
        return np.zeros(case.shape, dtype=np.float32)

    def keeping_context(self, case, model, present=None, device="auto", progress=None, cancel=None):
        """Stands in for ``segment_keeping_context``: the same call, no cache kept."""
        return self(case, model, present, device, progress, cancel), None


@pytest.fixture
def fake_engine(monkeypatch):
    """Replace the network: model loading returns a token, segment a FakeSegment."""
    from napari_metseg.widgets import run_state, workers

    fake = FakeSegment()
    monkeypatch.setattr(workers, "segment", fake)
    monkeypatch.setattr(workers, "segment_keeping_context", fake.keeping_context)
    monkeypatch.setattr(run_state, "load_model", lambda path, device="cpu": "model")
    return fake


@pytest.fixture(autouse=True)
def workspace_root(tmp_path, monkeypatch):
    """Correction workspaces of widget tests go to a temporary folder, never the user's."""
    from napari_metseg.correction.workspace import WORKSPACES_ENV

    root = tmp_path / "workspaces"
    monkeypatch.setenv(WORKSPACES_ENV, str(root))
    return root


@pytest.fixture
def notifications(monkeypatch):
    """The messages the workbench and the correction loop would show, by kind."""
    from napari_metseg.widgets import correction_loop, explain_panel, run_state, workbench

    shown = {"error": [], "info": []}
    for module in (workbench, correction_loop, run_state, explain_panel):
        for kind in ("error", "info"):
            if hasattr(module, f"show_{kind}"):
                monkeypatch.setattr(module, f"show_{kind}", shown[kind].append)
    return shown


@pytest.fixture
def viewer_with_case(make_napari_viewer, tiny_case):
    """A napari viewer showing the tiny case's layers, as the reader would add them."""
    from napari_metseg.layerdata import case_layers

    viewer = make_napari_viewer()
    for data, kwargs, layer_type in case_layers(tiny_case):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return viewer


@pytest.fixture
def dock():
    """Dock the workbench as the Plugins menu does (napari hands it a proxy of the viewer)."""

    def dock_workbench(viewer):
        _, widget = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
        return widget

    return dock_workbench


@pytest.fixture
def layer_counts():
    """How many layers of each result role a viewer holds (each must be 0 or 1)."""

    def count(viewer) -> dict[str, int]:
        roles = ("probability", "lesions", "corrections", "lesion changes")
        return {
            role: sum(layer.metadata.get("role") == role for layer in viewer.layers)
            for role in roles
        }

    return count
