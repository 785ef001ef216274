"""Batched torch CLAHE and resize against scikit-image / SciPy, on the CPU and on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.exposure import equalize_adapthist

from napari_metseg.case import Case, Geometry
from napari_metseg.preprocess import PreprocessConfig, prepare_volumes
from napari_metseg.torchprep.clahe import clahe
from napari_metseg.torchprep.resize import resize

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _scipy_resize(stack: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The resize the engine used before torch: Gaussian anti-aliasing + affine_transform."""
    scale = np.array([1.0, stack.shape[1] / rows, stack.shape[2] / cols])
    sigma = np.maximum(0.0, (scale - 1.0) / 2.0)
    source = ndimage.gaussian_filter(stack, sigma, mode="nearest") if sigma.any() else stack
    return ndimage.affine_transform(
        source,
        scale,
        offset=0.5 * scale - 0.5,
        output_shape=(stack.shape[0], rows, cols),
        order=1,
        mode="nearest",
        output=np.float32,
    )


def _images(shape, seed=0) -> np.ndarray:
    """Smooth head-like slices with a dark background (the histograms CLAHE meets)."""
    rng = np.random.default_rng(seed)
    images = ndimage.gaussian_filter(rng.random(shape), (0, 2, 2)).astype(np.float32)
    images -= images.min()
    images /= images.max()
    images[:, : shape[1] // 5] = 0.0
    return images


@pytest.mark.parametrize(
    ("shape", "kernel", "clip"),
    [
        ((3, 64, 64), None, 0.01),  # the model's settings: 8 x 8 regions of 2^k pixels
        ((2, 37, 50), None, 0.01),  # sizes no multiple of the region: reflect padding
        ((2, 40, 40), 7, 0.03),  # odd regions: the float64 blend
        ((2, 32, 32), 8, 0.0),  # no clipping (plain AHE)
    ],
)
def test_clahe_equals_skimage_bit_for_bit(shape, kernel, clip) -> None:
    images = _images(shape)
    out = clahe(torch.from_numpy(images), clip, kernel).numpy()
    for index in range(shape[0]):
        expected = equalize_adapthist(images[index], kernel_size=kernel, clip_limit=clip)
        np.testing.assert_array_equal(out[index], expected)


def test_clahe_keeps_empty_slices_empty_and_flattens_constant_ones() -> None:
    images = np.zeros((3, 16, 16), dtype=np.float32)
    images[1] = 0.25  # a constant slice: skimage clips it to its top grey level
    images[2] = _images((1, 16, 16))[0]
    out = clahe(torch.from_numpy(images)).numpy()
    assert not out[0].any()
    np.testing.assert_array_equal(out[1], equalize_adapthist(images[1]))
    np.testing.assert_array_equal(out[2], equalize_adapthist(images[2]))


@pytest.mark.parametrize("size", [(23, 17), (64, 80), (40, 40)])
def test_resize_equals_scipy_to_float32_rounding(size) -> None:
    stack = _images((2, 40, 40), seed=1)
    out = resize(torch.from_numpy(stack), *size).numpy()
    expected = _scipy_resize(stack, *size)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-7)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("test", ["clahe", "resize", "prepare"])
def test_cuda_preprocessing_equals_the_cpu(test) -> None:
    images = torch.from_numpy(_images((6, 70, 90), seed=2))
    if test == "clahe":
        np.testing.assert_array_equal(clahe(images.cuda()).cpu().numpy(), clahe(images).numpy())
    elif test == "resize":
        for size in ((256, 256), (31, 45)):
            gpu = resize(images.cuda(), *size).cpu().numpy()
            np.testing.assert_allclose(gpu, resize(images, *size).numpy(), rtol=0, atol=2e-7)
    else:
        volume = images.numpy() * 300.0
        geometry = Geometry(volume.shape, np.eye(4), volume.shape, np.eye(4))
        case = Case({"bravo": volume, "flair": volume[::-1].copy()}, geometry)
        config = PreprocessConfig(size=64)
        gpu = prepare_volumes(case, config=config, device="cuda").volumes.cpu().numpy()
        cpu = prepare_volumes(case, config=config, device="cpu").volumes.numpy()
        # a float32 ulp of the resize may move a pixel across a CLAHE grey-level bin
        difference = np.abs(gpu - cpu)
        assert difference.mean() < 1e-4 and difference.max() < 0.05
