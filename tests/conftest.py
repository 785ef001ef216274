"""Fixtures shared across the test suite."""

from __future__ import annotations

import pytest
import torch

from napari_metseg.model import ModelConfig, build_model, save_model
from napari_metseg.preprocess import PreprocessConfig


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A light-backbone model on 32 x 32 slices with random weights, saved once.

    Its batch-norm statistics are fitted to random inputs, so that (unlike a
    freshly initialised network in eval mode) its output depends on the input.
    """
    torch.manual_seed(0)
    network = build_model(ModelConfig(preprocess=PreprocessConfig(size=32))).train()
    with torch.no_grad():
        for _ in range(10):
            network(torch.rand(4, network.config.in_channels, 32, 32))
    return save_model(network.eval(), tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def one_thread():
    """Tiny networks run fastest on one thread, and do not stall when cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def builds(monkeypatch):
    """The presence vector of every CaseContext.build (fast mode's whole-case cache) of the test."""
    from napari_metseg.correction.cache import CaseContext

    calls = []
    real = CaseContext.build.__func__

    def build(cls, model, prepared, *args, **kwargs):
        calls.append(tuple(prepared.present.tolist()))
        return real(cls, model, prepared, *args, **kwargs)

    monkeypatch.setattr(CaseContext, "build", classmethod(build))
    return calls
