"""Fast mode's whole-case cache: decoding it equals segmenting with the network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.correction.cache import CaseContext, segment_keeping_context
from napari_metseg.engine import segment
from napari_metseg.model import ModelConfig, build_model, load_model
from napari_metseg.preprocess import PreprocessConfig, prepare_case

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def case() -> Case:
    """6 slices of 24 x 20 noise (not the network's 32 x 32, so the restore resizes)."""
    rng = np.random.default_rng(1)
    images = {name: rng.random((6, 24, 20), dtype=np.float32) for name in SEQUENCES}
    images["bravo"][0] = 0.0  # a slice without tissue in any sequence is skipped...
    for name in SEQUENCES:
        images[name][0] = 0.0  # ...by the engine and by the cache alike
    return Case(images, Geometry((6, 24, 20), np.eye(4), (6, 24, 20), np.eye(4)), name="noise")


@pytest.mark.parametrize("present", [None, ("bravo", "flair")])
def test_decoding_the_cache_equals_segmenting(case, tiny_model_path, present) -> None:
    model = load_model(tiny_model_path)
    prepared = prepare_case(case, model.config.sequences, present, model.config.preprocess)
    cache = CaseContext.build(model, prepared, torch.device("cpu"))
    assert 0 not in cache.slices.tolist()
    base = segment(case, model, present=present, device="cpu")
    np.testing.assert_allclose(cache.base_probability(), base, atol=1e-5)
    # a fine-tuned decoder on the same frozen part: the cache still predicts it exactly
    tuned = load_model(tiny_model_path)
    with torch.no_grad():
        for parameter in tuned.decoder_parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    after = segment(case, tuned, present=present, device="cpu")
    assert np.abs(after - base).max() > 1e-3
    np.testing.assert_allclose(cache.predict(tuned), after, atol=1e-5)


@pytest.mark.parametrize("decoder", ["none", "plus"])
def test_the_split_holds_for_both_decoders(case, decoder) -> None:
    torch.manual_seed(0)
    config = ModelConfig(decoder=decoder, preprocess=PreprocessConfig(size=32))
    model = build_model(config).eval()
    prepared = prepare_case(case, config.sequences, config=config.preprocess)
    cache = CaseContext.build(model, prepared, torch.device("cpu"))
    np.testing.assert_allclose(
        cache.base_probability(), segment(case, model, device="cpu"), atol=1e-5
    )


def test_the_cache_fits_only_its_own_model_and_prepared_case(case, tiny_model_path) -> None:
    model = load_model(tiny_model_path)
    prepared = prepare_case(case, model.config.sequences, config=model.config.preprocess)
    cache = CaseContext.build(model, prepared, torch.device("cpu"))
    assert cache.fits(model, prepared)
    # an equal model loaded again, or the case prepared again: not trusted, rebuilt
    assert not cache.fits(load_model(tiny_model_path), prepared)
    again = prepare_case(case, model.config.sequences, config=model.config.preprocess)
    assert not cache.fits(model, again)
    fewer = prepare_case(case, model.config.sequences, ("bravo",), model.config.preprocess)
    assert not cache.fits(model, fewer)
    with torch.no_grad():  # trained in place (as an optimizer step does)
        next(model.parameters()).add_(1e-3)
    assert not cache.fits(model, prepared)


@pytest.mark.parametrize("present", [None, ("bravo", "flair")])
def test_a_run_keeps_the_cache_build_gives_and_segments_as_segment_does(
    case, tiny_model_path, present
) -> None:
    model = load_model(tiny_model_path)
    probability, kept = segment_keeping_context(case, model, present, "cpu")
    np.testing.assert_array_equal(probability, segment(case, model, present=present, device="cpu"))
    assert kept.fits(model, kept.prepared)
    expected = prepare_case(case, model.config.sequences, present, model.config.preprocess)
    np.testing.assert_array_equal(kept.prepared.volumes, expected.volumes)
    np.testing.assert_array_equal(kept.prepared.present, expected.present)
    built = CaseContext.build(model, expected, torch.device("cpu"))
    np.testing.assert_array_equal(kept.slices, built.slices)
    assert torch.equal(kept.context.out, built.context.out)
    assert torch.equal(kept.teacher, built.teacher)
    assert not kept.context.out.is_inference()  # trainable against (fast mode's batches)
