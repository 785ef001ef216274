"""Training data: split files, settings, cached preparation, slice sampling, batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_metseg.case import Geometry
from napari_metseg.errors import ReadError
from napari_metseg.model import ModelConfig, build_model
from napari_metseg.preprocess import PreparedCase, PreprocessConfig
from napari_metseg.training import datasets
from napari_metseg.training.config import TrainConfig
from napari_metseg.training.datasets import (
    TrainingCase,
    load_case,
    load_split,
    phantom_specs,
    prepare_cases,
)
from napari_metseg.training.mining import false_positive_slices
from napari_metseg.training.sampling import (
    SliceSampler,
    make_batch,
    size_factors,
    slice_sources,
)


def toy_case(n_slices: int, lesion_slices: list[int], size: int = 8) -> TrainingCase:
    """Slice ``z`` of sequence ``s`` holds the value ``10 * s + z`` everywhere."""
    n_seq = 2
    values = 10 * np.arange(n_seq)[:, None] + np.arange(n_slices)[None, :]
    volumes = np.broadcast_to(values[:, :, None, None], (n_seq, n_slices, size, size))
    mask = np.zeros((n_slices, size, size), dtype=bool)
    for z in lesion_slices:
        mask[z, 2, 1] = True
    geometry = Geometry((n_slices, size, size), np.eye(4), (n_slices, size, size), np.eye(4))
    prepared = PreparedCase(
        volumes.astype(np.float16),
        ("a", "b"),
        np.array([True, True]),
        (n_slices, size, size),
        np.ones(n_slices, dtype=bool),
        PreprocessConfig(size=size, context=1),
    )
    return TrainingCase("toy", prepared, mask.astype(np.uint8), mask, geometry)


def test_split_file_resolves_relative_paths(tmp_path):
    split = tmp_path / "splits" / "split.json"
    split.parent.mkdir()
    split.write_text(json.dumps({"train": ["../cases/a", "phantom:7"], "val": ["/data/b"]}))
    loaded = load_split(split)
    assert loaded["train"] == [str((tmp_path / "cases" / "a").resolve()), "phantom:7"]
    assert loaded["val"] == ["/data/b"] and loaded["test"] == []


def test_split_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"training": []}))
    with pytest.raises(ReadError, match="training"):
        load_split(bad)
    bad.write_text("{not json")
    with pytest.raises(ReadError, match="bad.json"):
        load_split(bad)


def test_config_round_trip_and_typed_overrides(tmp_path):
    config = TrainConfig().with_overrides(
        ["lr=1e-4", "val_sequences=cube_pre,flair", "sequence-dropout=false", "split=none"]
    )
    assert config.lr == 1e-4 and config.val_sequences == ("cube_pre", "flair")
    assert config.sequence_dropout is False and config.split is None
    config.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == config
    assert TrainConfig().alpha == 3.0 and TrainConfig().oversample == 10.0
    assert TrainConfig().sequence_dropout and TrainConfig().dropout_rate == 0.25


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("iterations=ten", "'ten'"),
        ("amp=maybe", "'maybe'"),
        ("colour=red", "'colour=red'"),
        ("loss=dice", "'dice'"),
        ("val_sequences=t2", "t2"),
    ],
)
def test_bad_overrides_name_the_value(override, fragment):
    with pytest.raises(ValueError, match=fragment):
        TrainConfig().with_overrides([override])


def test_sampler_oversamples_lesion_slices():
    cases = [toy_case(10, [3]), toy_case(10, [])]
    sampler = SliceSampler(cases, oversample=10.0)
    # 20 slices, one with a lesion: weight 10 against 19
    assert len(sampler) == 20
    picks = sampler.sample(np.random.default_rng(0), 29000)
    share = sum(pick == (0, 3) for pick in picks) / len(picks)
    assert share == pytest.approx(10 / 29, abs=0.01)


def test_size_aware_sampler_favours_slices_of_small_lesions():
    case = toy_case(12, [])
    case.truth[1:4, 1:7, 1:7] = 1  # 3 x 6 x 6 voxels of 1 mm: about 6.6 mm across
    case.truth[8, 3, 3] = 1  # one voxel: about 1.2 mm across, factor capped at 4
    case.mask[:] = case.truth > 0
    factors = size_factors(case)
    small = np.cbrt(6 * 108 / np.pi)
    assert factors[1:4] == pytest.approx(10.0 / small)
    assert factors[8] == 4.0 and factors[[0, 5, 11]].tolist() == [1.0, 1.0, 1.0]
    plain = SliceSampler([case], oversample=10.0)
    aware = SliceSampler([case], oversample=10.0, size_aware=True)
    # tissue slices keep weight 1, lesion slices get 10 times the size factor
    assert aware.probabilities[8] / aware.probabilities[0] == pytest.approx(40.0)
    assert plain.probabilities[8] / plain.probabilities[0] == pytest.approx(10.0)
    assert aware.lesion.tolist() == plain.lesion.tolist()


def test_randomised_phantom_specs_draw_their_own_spacing():
    assert phantom_specs(5, 2, randomised=True) == ["phantom-random:5", "phantom-random:6"]
    case = load_case("phantom-random:5", phantom_min_diameter=8.0)
    from napari_metseg.phantom import randomised

    spacing, _ = randomised(5)
    assert case.geometry.spacing == pytest.approx((spacing,) * 3)
    with pytest.raises(ReadError, match="integer"):
        load_case("phantom-random:x")


def test_sampler_skips_slices_without_tissue():
    case = toy_case(6, [2])
    case.tissue[:] = False
    assert SliceSampler([case]).sample(np.random.default_rng(0), 5) == [(0, 2)] * 5


def test_batch_layout_edges_and_flip():
    sources = slice_sources([toy_case(6, [0])], torch.device("cpu"))
    x, y, present = make_batch(sources, [(0, 0), (0, 5)], context=1)
    assert x.shape == (2, 6, 8, 8) and x.dtype == sources[0].volumes.dtype
    # sequence-major, edge slice repeated: [s0 z-1, z, z+1, s1 z-1, z, z+1]
    assert x[0, :, 0, 0].tolist() == [0, 0, 1, 10, 10, 11]
    assert x[1, :, 0, 0].tolist() == [4, 5, 5, 14, 15, 15]
    assert y.shape == (2, 8, 8) and y[0, 2, 1] and not y[1].any()
    assert present.tolist() == [[True, True], [True, True]]
    flips = [
        make_batch(sources, [(0, 0)], 1, np.random.default_rng(s))[1][0, 2, 6] for s in range(8)
    ]
    assert any(flips) and not all(flips)


def test_prepare_cases_censors_and_caches(tmp_path, monkeypatch):
    specs = ["phantom:3", "phantom:4"]
    config = PreprocessConfig(size=32)
    shared = {"phantom_spacing": 4.0, "cache_dir": tmp_path}
    cases, record = prepare_cases(specs, ("bravo", "flair"), config, **shared)
    assert record.n_removed == 0 and len(list(tmp_path.glob("*.npz"))) == 2
    case = cases[0]
    assert case.volumes.shape == (2, case.truth.shape[0], 32, 32)
    assert case.volumes.dtype == np.float16 and case.mask.any()

    def no_reading(*args):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(datasets, "load_case", no_reading)
    censored, record = prepare_cases(
        specs, ("bravo", "flair"), config, censor_rate=1.0, censor_mode="size", **shared
    )
    assert record.n_removed == record.n_lesions > 0
    assert not any(item.truth.any() or item.mask.any() for item in censored)
    assert np.array_equal(censored[0].volumes, case.volumes)  # read back from the cache


def test_workers_prepare_the_same_cases_in_order():
    specs = ["phantom:5", "phantom:3", "phantom:4"]
    shared = {"phantom_spacing": 4.0, "config": PreprocessConfig(size=32)}
    serial, _ = prepare_cases(specs, ("bravo", "flair"), **shared)
    steps = []
    parallel, _ = prepare_cases(
        specs, ("bravo", "flair"), workers=3, progress=lambda *step: steps.append(step), **shared
    )
    assert [case.name for case in parallel] == [case.name for case in serial]
    for one, other in zip(serial, parallel, strict=True):
        assert np.array_equal(one.volumes, other.volumes) and np.array_equal(one.truth, other.truth)
    assert steps[-1] == (3, 3, "cases prepared")
    with pytest.raises(ReadError, match="missing"):
        prepare_cases([specs[0], "/no/such/case/missing"], ("bravo",), workers=2, **shared)


def test_phantom_min_diameter_makes_training_lesions_bigger():
    def component_sizes(case) -> list[int]:
        labels, count = ndimage.label(case.truth > 0)
        return np.bincount(labels.ravel(), minlength=count + 1)[1:].tolist()

    default = datasets.load_case("phantom:3", phantom_spacing=4.0)
    larger = datasets.load_case("phantom:3", phantom_spacing=4.0, phantom_min_diameter=10.0)
    # a 10 mm lesion is about 8 voxels of 4 mm; crowding may shrink it by 0.8
    assert min(component_sizes(default)) < 4 <= min(component_sizes(larger))
    config = TrainConfig().with_overrides(["phantom_min_diameter=10"])
    assert config.phantom_min_diameter == 10.0


def test_sampler_favours_plain_slices_with_false_positives_and_leaves_lesion_slices():
    cases = [toy_case(10, [3]), toy_case(10, [])]
    sampler = SliceSampler(cases, oversample=10.0)
    hard = [np.zeros(10, dtype=bool), np.zeros(10, dtype=bool)]
    hard[0][[3, 5]] = hard[1][7] = True
    assert sampler.favour(hard, 4.0) == 2  # the lesion slice keeps its 10
    picks = sampler.sample(np.random.default_rng(0), 35000)
    counts = {pick: picks.count(pick) / len(picks) for pick in [(0, 3), (0, 5), (1, 7), (1, 0)]}
    assert counts[(0, 3)] == pytest.approx(10 / 35, abs=0.01)
    assert counts[(0, 5)] == pytest.approx(4 / 35, abs=0.01)
    assert counts[(1, 7)] == pytest.approx(4 / 35, abs=0.01)
    assert counts[(1, 0)] == pytest.approx(1 / 35, abs=0.005)
    assert sampler.favour([np.zeros(10, dtype=bool)] * 2, 10.0) == 0  # forgets the last call
    assert sampler.probabilities.max() == pytest.approx(10 / 29)


@pytest.mark.parametrize("bias, found", [(10.0, [0, 1, 3, 5]), (-10.0, [])])
def test_hard_negatives_are_plain_slices_where_the_network_draws_lesion(bias, found):
    case = toy_case(6, [2], size=32)  # slice 2 holds a lesion: not a plain slice
    case.prepared.tissue[4] = False  # nor is a slice without tissue
    network = build_model(ModelConfig(sequences=("a", "b"), preprocess=case.prepared.config))
    classifier = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([0.0, bias]))
    (hard,) = false_positive_slices(network, [case], ("a", "b"), "cpu")
    assert np.flatnonzero(hard).tolist() == found
