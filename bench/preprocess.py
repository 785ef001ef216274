"""Time pre-processing of a 256 x 256 x 160 four-sequence case, stage by stage.

Usage: ``python -m bench.preprocess [--slices 160] [--size 256] [--repeat 3]``.
The case is a phantom (nilearn's MNI152 template) resampled onto the benchmark
grid, so CLAHE sees realistic head slices rather than noise. Prints a table of
the best time per stage over ``--repeat`` runs and the machine it ran on.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
from scipy import ndimage

from bench.machine import describe
from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.phantom import make_phantom
from napari_metseg.preprocess import (
    PreprocessConfig,
    clahe_slices,
    normalise_volume,
    prepare_case,
    resize_slices,
    stack_25d,
)


def benchmark_case(slices: int, rows: int, cols: int) -> Case:
    phantom = make_phantom(seed=0, spacing=1.5)
    target = (slices, rows, cols)
    zoom = [t / s for t, s in zip(target, phantom.shape, strict=True)]
    images = {
        name: ndimage.zoom(image, zoom, order=1, output=np.float32)[:slices, :rows, :cols]
        for name, image in phantom.images.items()
    }
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    return Case(images, Geometry(target, affine, target, affine), name="bench")


def best_of(repeat: int, function) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=160)
    parser.add_argument("--size", type=int, default=256, help="native rows = cols = network size")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    case = benchmark_case(args.slices, args.size, args.size)
    config = PreprocessConfig(size=256)
    volumes = list(case.images.values())

    rows = []
    t_norm, normalised = best_of(args.repeat, lambda: [normalise_volume(v) for v in volumes])
    rows.append(("normalise (4 volumes)", t_norm))
    t_resize, resized = best_of(
        args.repeat, lambda: [resize_slices(v, config.size, config.size) for v in normalised]
    )
    rows.append(("resize to 256 x 256", t_resize))
    t_big, _ = best_of(args.repeat, lambda: [resize_slices(v, 512, 512) for v in normalised])
    rows.append(("(upsample to 512 x 512)", t_big))
    t_clahe, equalised = best_of(args.repeat, lambda: [clahe_slices(v, config) for v in resized])
    rows.append(("CLAHE per slice", t_clahe))
    stacked = np.stack(equalised)
    batches = np.array_split(np.arange(args.slices), max(1, args.slices // 16))
    t_stack, _ = best_of(args.repeat, lambda: [stack_25d(stacked, b, 2).shape for b in batches])
    rows.append(("2.5D stacks (batches of 16)", t_stack))
    t_total, _ = best_of(args.repeat, lambda: prepare_case(case, config=config))
    rows.append(("prepare_case total", t_total))

    print(f"pre-processing, case {case.shape} x {len(SEQUENCES)} sequences, best of {args.repeat}")
    print(f"{'stage':<28}{'seconds':>10}")
    for label, seconds in rows:
        print(f"{label:<28}{seconds:>10.3f}")
    print(f"machine: {describe()}, Python {platform.python_version()}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
