"""Simulated-annotator benchmark of the active-correction loop (issue #7).

Usage: ``python -m bench.correction_loop [--rounds 3] [--cases 2] [--threads 1]``
from the repository root; ``--model default --spacing 1.5`` starts from the
bundled model instead of step 1, on phantoms like the sample case.

1. A deliberately weak model: a short CPU training run on phantoms whose masks
   lost half their lesions (``censor_rate=0.5``), light backbone at
   ``--size`` pixels; cached under ``--cache`` and reused.
2. Held-out phantom cases (other seeds). Each round a simulated annotator
   paints a short stroke (3 voxels through the centre, on the central slice)
   inside ``--k`` missed lesions (largest first) and marks the largest false
   positive (every voxel of the component) as not lesion; then one
   fast-mode fine-tuning round runs and the case is segmented again.
3. After each round: sensitivity on the lesions never painted (a lesion is
   detected when the mask at probability 0.5 overlaps it), false-positive
   components (26-connected, overlapping no lesion), seconds of the
   fine-tuning round and of the re-segmentation. The lopsided bootstrap
   (beta 0.1) is compared with plain class-weighted cross-entropy (beta 1) on
   the same strokes; both start from the same model and see the same
   annotator (whose choices depend on each variant's own predictions).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_metseg.correction import (
    LESION,
    FinetuneConfig,
    empty_corrections,
    finetune,
    reject_lesion,
)
from napari_metseg.engine import predict_prepared
from napari_metseg.lesions import label_components
from napari_metseg.model import default_model_path, load_model
from napari_metseg.phantom import make_phantom
from napari_metseg.preprocess import prepare_case, restore_slices
from napari_metseg.training.config import TrainConfig
from napari_metseg.training.loop import train

#: Loss variants compared: name -> beta of the unmarked voxels' term.
VARIANTS = {"lopsided (beta 0.1)": 0.1, "weighted CE (beta 1)": 1.0}


def weak_model(cache: Path, size: int, iterations: int, spacing: float) -> Path:
    """Train (or reuse) the weak starting model; returns its folder."""
    out = cache / f"weak_s{size}_i{iterations}_sp{spacing:g}"
    if (out / "final" / "config.json").exists():
        return out / "final"
    config = TrainConfig(
        synthetic_train=4,
        synthetic_seed=100,
        phantom_spacing=spacing,
        size=size,
        backbone="light",
        loss="weighted_ce",
        censor_rate=0.5,
        iterations=iterations,
        batch_size=8,
        lr=1e-3,
        val_interval=iterations,
        log_interval=max(1, iterations // 5),
        device="cpu",
        amp=False,
        cache_dir=str(cache / "cases"),
        out_dir=str(out),
    )
    started = time.perf_counter()
    train(config)
    print(f"weak model: {iterations} iterations in {time.perf_counter() - started:.0f} s")
    return out / "final"


def evaluate(probability: np.ndarray, labels: np.ndarray, painted: set[int]) -> dict:
    """Detection of the unpainted lesions and false-positive components at 0.5."""
    predicted, count = label_components(probability >= 0.5)
    hit = np.unique(labels[predicted > 0])
    detected = set(hit[hit > 0].tolist())
    unpainted = [lesion for lesion in range(1, labels.max() + 1) if lesion not in painted]
    found = sum(lesion in detected for lesion in unpainted)
    touching = np.unique(predicted[labels > 0])
    false = [c for c in range(1, count + 1) if c not in set(touching.tolist())]
    return {
        "sensitivity": found / len(unpainted) if unpainted else float("nan"),
        "n_unpainted": len(unpainted),
        "fp": len(false),
        "detected": detected,
        "predicted": predicted,
        "false": false,
    }


def annotate(
    corrections: np.ndarray, labels: np.ndarray, score: dict, painted: set[int], k: int
) -> None:
    """Paint short strokes in ``k`` missed lesions, reject the largest false positive."""
    sizes = np.bincount(labels.ravel())
    missed = [
        lesion
        for lesion in np.argsort(-sizes)
        if lesion > 0 and sizes[lesion] and lesion not in score["detected"]
    ]
    missed = [lesion for lesion in missed if lesion not in painted][:k]
    for lesion in missed:
        voxels = np.argwhere(labels == lesion)
        z, r, c = np.round(voxels.mean(axis=0)).astype(int)
        for dc in (-1, 0, 1):
            if labels[z, r, min(max(c + dc, 0), labels.shape[2] - 1)] == lesion:
                corrections[z, r, c + dc] = LESION
        if not np.any(corrections[labels == lesion] == LESION):
            corrections[tuple(voxels[len(voxels) // 2])] = LESION
        painted.add(int(lesion))
    if score["false"]:
        predicted = score["predicted"]
        largest = max(score["false"], key=lambda c: int(np.count_nonzero(predicted == c)))
        reject_lesion(corrections, predicted, largest)


def run_case(seed: int, model_path: Path, args: argparse.Namespace) -> list[dict]:
    case = make_phantom(seed, n_lesions=args.lesions, spacing=args.spacing)
    labels, _ = label_components(case.truth > 0)
    base = load_model(model_path)
    prepared = prepare_case(case, base.config.sequences, config=base.config.preprocess)
    start = restore_slices(predict_prepared(prepared, base, "cpu"), prepared.native_shape)
    rows = []
    for variant, beta in VARIANTS.items():
        model, probability = base, start
        corrections = empty_corrections(case.shape)
        painted: set[int] = set()
        score = evaluate(probability, labels, painted)
        rows.append(_row(seed, variant, 0, score, painted, 0.0, 0.0))
        for round_index in range(1, args.rounds + 1):
            annotate(corrections, labels, score, painted, args.k)
            config = FinetuneConfig(
                mode="fast",
                beta=beta,
                iterations=args.iterations,
                lr=args.lr,
                unmarked_weight=args.unmarked_weight,
                device="cpu",
                seed=round_index,
            )
            result = finetune(prepared, model, corrections, config)
            model = result.model
            started = time.perf_counter()
            probability = restore_slices(
                predict_prepared(prepared, model, "cpu"), prepared.native_shape
            )
            infer = time.perf_counter() - started
            score = evaluate(probability, labels, painted)
            rows.append(_row(seed, variant, round_index, score, painted, result.seconds, infer))
    return rows


def _row(seed, variant, round_index, score, painted, seconds, infer) -> dict:
    return {
        "case": seed,
        "variant": variant,
        "round": round_index,
        "painted": len(painted),
        "unpainted": score["n_unpainted"],
        "sensitivity": score["sensitivity"],
        "fp": score["fp"],
        "finetune_s": seconds,
        "segment_s": infer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--lesions", type=int, default=10, help="lesions per held-out case")
    parser.add_argument("--k", type=int, default=2, help="missed lesions painted per round")
    parser.add_argument("--iterations", type=int, default=30, help="steps per round")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning rate (mode default)")
    parser.add_argument("--unmarked-weight", type=float, default=FinetuneConfig.unmarked_weight)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--spacing", type=float, default=3.0, help="phantom spacing in mm")
    parser.add_argument("--train-iterations", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench_correction"))
    parser.add_argument(
        "--model", help="start from this model ('default': the bundled one), not a weak one"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.threads} thread(s)"
    )
    if args.model:
        model_path = default_model_path() if args.model == "default" else Path(args.model)
    else:
        model_path = weak_model(args.cache, args.size, args.train_iterations, args.spacing)
    rows = []
    for seed in range(9000, 9000 + args.cases):
        rows += run_case(seed, model_path, args)
    header = f"{'variant':22} {'round':>5} {'painted':>7} {'sens(unpainted)':>15} {'FP':>5} {'round s':>8} {'segment s':>9}"
    print(header)
    for variant in VARIANTS:
        for round_index in range(args.rounds + 1):
            chosen = [r for r in rows if r["variant"] == variant and r["round"] == round_index]
            print(
                f"{variant:22} {round_index:>5} {sum(r['painted'] for r in chosen):>7} "
                f"{np.nanmean([r['sensitivity'] for r in chosen]):>15.3f} "
                f"{np.mean([r['fp'] for r in chosen]):>5.1f} "
                f"{np.mean([r['finetune_s'] for r in chosen]):>8.2f} "
                f"{np.mean([r['segment_s'] for r in chosen]):>9.2f}"
            )


if __name__ == "__main__":
    main()
