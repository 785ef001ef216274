"""fold_batchnorm: an inference copy equal to the model, the model itself untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_metseg.engine import Segmenter
from napari_metseg.model import ModelConfig, build_model, load_model
from napari_metseg.model.folding import fold_batchnorm
from napari_metseg.phantom import make_phantom
from napari_metseg.preprocess import PreprocessConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = PreprocessConfig(size=32)


def with_random_statistics(model: nn.Module) -> nn.Module:
    """Batch norms with scales, shifts and running statistics far from the identity."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(decoder="plus", preprocess=SMALL),
        ModelConfig(output_stride=8, integration="mid", sharing="independent", preprocess=SMALL),
        ModelConfig(backbone="resnet50", integration="end", preprocess=SMALL),
        ModelConfig(
            backbone="resnet50", integration="subtraction", decoder="plus", preprocess=SMALL
        ),
    ],
    ids=["light-plus", "light-os8-mid", "resnet50-end", "resnet50-subtraction-plus"],
)
def test_folded_copy_computes_the_same_logits_without_batch_norms(config) -> None:
    torch.manual_seed(0)
    model = with_random_statistics(build_model(config))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, config.in_channels, 32, 32)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(scale))
    # the original keeps its batch norms and values: it can still train and be saved
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], value) for name, value in before.items())


def test_a_folding_segmenter_gives_the_same_probability_and_leaves_the_model(
    tiny_model_path,
) -> None:
    case = make_phantom(5, n_lesions=3, spacing=6.0)
    model = load_model(tiny_model_path)
    plain = Segmenter(model, "cpu")(case).probability
    segmenter = Segmenter(model, "cpu", fold_batchnorm=True)
    assert segmenter.model is not model
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    np.testing.assert_allclose(segmenter(case).probability, plain, atol=1e-5)
