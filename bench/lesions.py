"""Time lesion_table and evaluate_case on a 160 x 256 x 256 volume with 100 lesions.

Usage: ``python -m bench.lesions [--lesions 100] [--repeat 3] [--seed 0]``.
Lesions are balls of random radius (1-8 voxels) on 1 x 0.94 x 0.94 mm voxels;
the probability is a noisy, blurred copy of the truth with some lesions missed
and some false positives added, so matching and the curves see realistic
mixtures. Prints the best time over ``--repeat`` runs and the machine.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
from scipy import ndimage

from bench.machine import describe
from bench.preprocess import best_of
from napari_metseg.lesions import lesion_table
from napari_metseg.metrics import evaluate_case

SHAPE = (160, 256, 256)
SPACING = (1.0, 0.9375, 0.9375)


def synthetic_case(n_lesions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(probability float32, truth bool)`` with ``n_lesions`` separated balls."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(SHAPE, dtype=bool)
    predicted = np.zeros(SHAPE, dtype=np.float32)
    grid = np.mgrid[-9:10, -9:10, -9:10]
    placed = 0
    while placed < n_lesions:
        radius = rng.uniform(1.0, 8.0)
        centre = rng.integers(10, np.array(SHAPE) - 10)
        window = tuple(slice(c - 9, c + 10) for c in centre)
        if truth[window].any():
            continue
        ball = np.sum(grid**2, axis=0) <= radius**2
        truth[window] |= ball
        if rng.random() < 0.9:
            predicted[window] = np.maximum(predicted[window], ball * rng.uniform(0.3, 1.0))
        if rng.random() < 0.3:
            shifted = tuple(slice(c - 9, c + 10) for c in rng.integers(10, np.array(SHAPE) - 10))
            predicted[shifted] = np.maximum(predicted[shifted], ball * rng.uniform(0.15, 0.5))
        placed += 1
    smooth = ndimage.gaussian_filter(predicted, 1.0)
    noise = rng.uniform(0.0, 0.05, SHAPE).astype(np.float32)
    return np.clip(smooth + noise, 0.0, 1.0).astype(np.float32), truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesions", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    probability, truth = synthetic_case(args.lesions, args.seed)

    table_time, (table, _) = best_of(
        args.repeat, lambda: lesion_table(probability, SPACING, threshold=0.10)
    )
    eval_time, result = best_of(
        args.repeat, lambda: evaluate_case(probability, truth, SPACING, threshold=0.5)
    )
    print(f"machine: {describe()}, Python {platform.python_version()}")
    print(
        f"volume {SHAPE} (slice, row, col), {args.lesions} truth lesions, "
        f"{len(table)} candidates at 0.10"
    )
    print(f"{'step':<16}{'best of ' + str(args.repeat):>14}")
    print(f"{'lesion_table':<16}{table_time * 1000:>11.0f} ms")
    print(f"{'evaluate_case':<16}{eval_time * 1000:>11.0f} ms")
    print(
        f"mAP {result.average_precision:.3f}, max sensitivity {result.max_sensitivity:.3f}, "
        f"voxel AUC {result.auc:.4f}, Dice {result.dice:.3f}"
    )


if __name__ == "__main__":
    main()
