"""Gradient saliency: shapes, zeros still get gradient, a one-sequence model puts it all there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_metseg.case import SEQUENCES
from napari_metseg.errors import GeometryError
from napari_metseg.model import ModelConfig, build_model
from napari_metseg.phantom import make_phantom
from napari_metseg.preprocess import PreprocessConfig
from napari_metseg.saliency import CumulativeSaliency, compute_saliency, saliency_totals

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = PreprocessConfig(size=32)


@pytest.fixture(scope="module")
def case():
    return make_phantom(8, n_lesions=2, spacing=6.0)


def test_maps_per_present_sequence_and_aggregates(case) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preprocess=SMALL))
    middle = case.shape[0] // 2
    result = compute_saliency(
        case, model, present=("bravo", "cube_post", "flair"), slice_index=middle
    )
    assert set(result.maps) == {"bravo", "cube_post", "flair"}
    for saliency_map in result.maps.values():
        assert saliency_map.shape == case.shape
        assert saliency_map[middle].sum() > 0
        assert np.all(saliency_map[: middle - 1] == 0)
    assert set(result.per_sequence) == set(SEQUENCES)
    assert list(result.per_offset) == [-2, -1, 0, 1, 2]
    # cube_pre was fed as zeros, yet the loss still has a gradient with respect to it.
    assert result.per_sequence["cube_pre"] > 0
    assert sum(result.per_sequence.values()) == pytest.approx(sum(result.per_offset.values()))


class _OnlyFlair(nn.Module):
    """A toy model whose output depends on the centre flair slice only."""

    def __init__(self) -> None:
        super().__init__()
        self.config = ModelConfig(preprocess=SMALL)
        self.weight = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flair_centre = x[:, 3 * 5 + 2]
        return torch.stack([torch.zeros_like(flair_centre), self.weight * flair_centre - 1], 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_saliency_agrees_with_cpu(case) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preprocess=SMALL)).eval()
    middle = case.shape[0] // 2
    on_cpu = compute_saliency(case, model, slice_index=middle, device="cpu")
    on_gpu = compute_saliency(case, model, slice_index=middle, device="cuda")
    for name, saliency_map in on_cpu.maps.items():
        # cuDNN may convolve in TF32: agree to 5% of the map's peak
        tolerance = 0.05 * float(saliency_map.max())
        np.testing.assert_allclose(on_gpu.maps[name], saliency_map, rtol=0.02, atol=tolerance)


def test_a_model_that_reads_one_sequence_puts_all_saliency_there(case) -> None:
    region = np.zeros(case.shape, dtype=bool)
    region[case.shape[0] // 2 - 1 : case.shape[0] // 2 + 1] = True
    result = compute_saliency(case, _OnlyFlair(), mask=region)
    assert result.per_sequence["flair"] > 0
    for name in ("bravo", "cube_pre", "cube_post"):
        assert result.per_sequence[name] == 0.0
        assert not result.maps[name].any()
    assert result.maps["flair"].any()
    assert result.per_offset[0] == pytest.approx(sum(result.per_offset.values()))


def test_regions_off_the_case_are_refused(case) -> None:
    model = _OnlyFlair()
    with pytest.raises(GeometryError, match="mask"):
        compute_saliency(case, model, mask=np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="slice_index"):
        compute_saliency(case, model, slice_index=case.shape[0])


def test_cumulative_saliency_accumulates_groups() -> None:
    tracker = CumulativeSaliency(SEQUENCES, context=2)
    gradient = torch.zeros(2, 20, 4, 4)
    gradient[:, 5:10] = -1.0  # cube_pre, every offset
    gradient[:, 2] = 2.0  # bravo, offset 0
    tracker.update(gradient)
    tracker.update(gradient)
    assert tracker.per_sequence == {
        "bravo": 128.0,
        "cube_pre": 320.0,
        "cube_post": 0.0,
        "flair": 0.0,
    }
    assert tracker.per_offset[0] == 64.0 + 128.0
    np.testing.assert_array_equal(saliency_totals(gradient, 4) * 2, tracker.totals)
