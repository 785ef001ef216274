"""Annotator-realistic benchmark of the active-correction loop (issue #13).

Usage: ``python -m bench.correction_loop [--cases 4] [--profiles tiny,large,...]
[--variants lopsided,weighted_ce,ignore] [--device cpu] [--threads 2]``.

Held-out phantoms (seeds from 9000, never used in training, 1.5 mm like the
sample case) are segmented with the bundled model (``--model`` for another),
then a simulated annotator corrects them the way people do, one profile at a
time, each from the base model:

- ``tiny``: a 3x3 brush dab (at most 9 voxels, one slice) at the centre of the
  two smallest lesions the model missed (or, when it missed none, of the two
  smallest lesions), the size of stroke one paints on a 1-voxel lesion;
- ``large``: a 3x3 dab at the centre of the two largest lesions it missed or
  found only partly (< half of the lesion at p >= 0.10);
- ``reject``: only 'not lesion': every voxel of the largest false positive;
- ``wrong_undo``: a 3x3 lesion dab on healthy white matter far from every
  lesion, one round, then undo (the previous model and prediction come back);
- ``five``: five rounds, one dab per round on the next missed lesion (smallest
  first; then on found ones, as a confirming annotator does), strokes accumulating, each round from the base model with every
  stroke so far (as the workspace does).

After each round (p >= 0.10, 26-connected candidates): painted lesions found
(a candidate overlaps the lesion), rejected false positives removed (none of
their voxels left at p >= 0.10), sensitivity on the lesions nobody painted,
lesion volume outside the truth and false-positive components >= 10 mm^3, next
to the base model's, the attempts the trust region needed, refusals, and the
round's seconds (fine-tuning plus the whole-case prediction it returns). In
fast mode the first round of a case builds the frozen-part cache of the case
(``correction.cache``); later rounds reuse it, as a caller that keeps
``FinetuneResult.cache`` does.
Variants: unmarked voxels anchored to the frozen teacher with the lopsided
bootstrap (beta 0.1), with class-weighted CE (beta 1), or ignored.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from bench.machine import describe, matmul_gflops
from napari_metseg.case import Case
from napari_metseg.correction import LESION, FinetuneConfig, empty_corrections, finetune
from napari_metseg.correction.cache import CaseContext
from napari_metseg.engine import Segmenter
from napari_metseg.errors import RunawayError
from napari_metseg.lesions import label_components
from napari_metseg.model import MetsegNet, load_model
from napari_metseg.phantom import make_phantom
from napari_metseg.preprocess import PreparedCase, prepare_case, restore_slices
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

PROFILES = ("tiny", "large", "reject", "wrong_undo", "five")
#: Variant -> how unmarked voxels count.
VARIANTS = {
    "lopsided": {"unmarked": "teacher", "beta": 0.1},
    "weighted_ce": {"unmarked": "teacher", "beta": 1.0},
    "ignore": {"unmarked": "ignore"},
}
#: False-positive components count from this volume (the multi-centre study's 10 mm^3).
FP_MIN_MM3 = 10.0


@dataclass
class Bench:
    """One held-out case ready for rounds: truth components, base prediction, base scores."""

    case: Case
    prepared: PreparedCase
    truth: np.ndarray
    base: np.ndarray
    base_score: dict
    cache: CaseContext | None = None


def score(probability: np.ndarray, truth: np.ndarray, voxel_mm3: float) -> dict:
    """Detections, volume outside the truth and false-positive components of a prediction."""
    candidates, count = label_components(probability >= CANDIDATE_THRESHOLD)
    hit = np.unique(truth[candidates > 0])
    touching = set(np.unique(candidates[truth > 0]).tolist())
    sizes = np.bincount(candidates.ravel(), minlength=count + 1) * voxel_mm3
    false = [c for c in range(1, count + 1) if c not in touching and sizes[c] >= FP_MIN_MM3]
    covered = np.bincount(truth[candidates > 0], minlength=truth.max() + 1)
    return {
        "found": set(hit[hit > 0].tolist()),
        "covered": covered,
        "outside_mm3": float(np.count_nonzero((candidates > 0) & (truth == 0)) * voxel_mm3),
        "fp": len(false),
        "candidates": candidates,
        "false": false,
    }


def dab(corrections: np.ndarray, truth: np.ndarray, lesion: int, value: int = LESION) -> None:
    """A 3x3 in-plane dab at the centre of mass of ``lesion`` (on its central slice)."""
    z, r, c = np.round(np.argwhere(truth == lesion).mean(axis=0)).astype(int)
    corrections[z, max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = value


def healthy_dab(corrections: np.ndarray, bench: Bench, rng: np.random.Generator) -> None:
    """A 3x3 lesion dab on tissue at least 20 voxels from any lesion and any candidate."""
    brain = bench.prepared  # tissue slices are the ones worth painting on
    busy = (bench.truth > 0) | (bench.base >= CANDIDATE_THRESHOLD)
    middle = np.flatnonzero(brain.tissue)[len(np.flatnonzero(brain.tissue)) // 2]
    image = bench.case.images[next(iter(bench.case.images))][middle]
    candidates = np.argwhere(image > np.percentile(image, 70))
    far = [
        (r, c)
        for r, c in candidates[rng.permutation(len(candidates))[:500]]
        if not busy[
            max(middle - 20, 0) : middle + 21, max(r - 20, 0) : r + 21, max(c - 20, 0) : c + 21
        ].any()
    ]
    r, c = far[0]
    corrections[middle, r - 1 : r + 2, c - 1 : c + 2] = LESION


def run_round(bench: Bench, model: MetsegNet, corrections: np.ndarray, variant: str, args) -> dict:
    """One fine-tuning round from ``model``; the probability it returns and how it went."""
    config = FinetuneConfig.from_dict(
        {
            "mode": args.mode,
            "device": args.device,
            "iterations": args.iterations,
            **VARIANTS[variant],
            **args.settings,
        }
    )
    started = time.perf_counter()
    try:
        result = finetune(
            bench.case,
            model,
            corrections,
            config,
            prepared=bench.prepared,
            reference=bench.base,
            cache=bench.cache,
        )
    except RunawayError:
        return {
            "probability": bench.base,
            "attempts": config.backoffs + 1,
            "refused": 1,
            "seconds": time.perf_counter() - started,
        }
    bench.cache = result.cache  # the next round of this case reuses it (as the workspace may)
    return {
        "probability": result.probability,
        "attempts": result.attempts,
        "refused": 0,
        "seconds": time.perf_counter() - started,
    }


def measure(
    bench: Bench, outcome: dict, painted: set[int], rejected: np.ndarray | None = None
) -> dict:
    """Scores of a round's prediction; ``rejected``: voxels marked 'not lesion'."""
    voxel = bench.case.geometry.voxel_volume
    now = score(outcome["probability"], bench.truth, voxel)
    lesions = set(range(1, int(bench.truth.max()) + 1))
    unpainted = lesions - painted
    return {
        "painted": len(painted),
        "painted_found": len(painted & now["found"]),
        "rejected": int(rejected is not None),
        "rejected_left": int(
            rejected is not None and bool((now["candidates"][rejected] > 0).any())
        ),
        "unpainted": len(unpainted),
        "unpainted_found": len(unpainted & now["found"]),
        "base_unpainted_found": len(unpainted & bench.base_score["found"]),
        "outside_mm3": now["outside_mm3"],
        "base_outside_mm3": bench.base_score["outside_mm3"],
        "fp": now["fp"],
        "base_fp": bench.base_score["fp"],
        "attempts": outcome["attempts"],
        "refused": outcome["refused"],
        "seconds": outcome["seconds"],
    }


def profile_rounds(bench: Bench, model: MetsegNet, profile: str, variant: str, args) -> list[dict]:
    """The rounds of one annotator profile on one case; a row per measured state."""
    truth, found = bench.truth, bench.base_score["found"]
    sizes = np.bincount(truth.ravel())
    lesions = [int(lesion) for lesion in np.argsort(sizes) if lesion > 0 and sizes[lesion]]
    missed = [lesion for lesion in lesions if lesion not in found]
    corrections = empty_corrections(bench.case.shape)
    painted: set[int] = set()
    if profile in ("tiny", "large"):
        if profile == "tiny":
            chosen = (missed or lesions)[:2]
        else:
            partly = [
                lesion
                for lesion in lesions
                if bench.base_score["covered"][lesion] < 0.5 * sizes[lesion]
            ]
            chosen = partly[::-1][:2] or lesions[::-1][:1]
        for lesion in chosen:
            dab(corrections, truth, lesion)
            painted.add(lesion)
        return [measure(bench, run_round(bench, model, corrections, variant, args), painted)]
    if profile == "reject":
        if not bench.base_score["false"]:
            return []
        candidates = bench.base_score["candidates"]
        largest = max(bench.base_score["false"], key=lambda c: np.count_nonzero(candidates == c))
        corrections[candidates == largest] = 2
        outcome = run_round(bench, model, corrections, variant, args)
        return [measure(bench, outcome, painted, candidates == largest)]
    if profile == "wrong_undo":
        healthy_dab(corrections, bench, np.random.default_rng(0))
        wrong = measure(bench, run_round(bench, model, corrections, variant, args), painted)
        undone = measure(
            bench, {"probability": bench.base, "attempts": 0, "refused": 0, "seconds": 0.0}, painted
        )
        return [wrong, undone]
    rows = []
    for lesion in (missed + [lesion for lesion in lesions if lesion not in missed])[:5]:
        dab(corrections, truth, lesion)
        painted.add(lesion)
        rows.append(
            measure(bench, run_round(bench, model, corrections, variant, args), set(painted))
        )
    return rows


def prepare_bench(seed: int, model: MetsegNet, args) -> Bench:
    case = make_phantom(seed, spacing=args.spacing)
    prepared = prepare_case(case, model.config.sequences, config=model.config.preprocess)
    stack, _ = Segmenter(model, args.device).predict_prepared(prepared)
    base = restore_slices(stack, prepared.native_shape)
    truth, _ = label_components(case.truth > 0)
    return Bench(case, prepared, truth, base, score(base, truth, case.geometry.voxel_volume))


def summarise(rows: list[dict]) -> str:
    def total(key: str) -> int:
        return sum(row[key] for row in rows)

    painted = total("painted")
    return (
        f"{total('painted_found')}/{painted:<3} "
        f"{total('rejected') - total('rejected_left')}/{total('rejected'):<3} "
        f"{total('unpainted_found'):>3}/{total('unpainted'):<3} (base {total('base_unpainted_found'):>3}) "
        f"{total('outside_mm3') / 1000 / len(rows):>7.2f} (base {total('base_outside_mm3') / 1000 / len(rows):>5.2f}) "
        f"{total('fp') / len(rows):>5.2f} (base {total('base_fp') / len(rows):>4.2f}) "
        f"{total('attempts') / len(rows):>4.2f} {total('refused'):>3} "
        f"{np.mean([row['seconds'] for row in rows]):>6.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--profiles", default=",".join(PROFILES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--model", default=None, help="model file (default: the bundled one)")
    parser.add_argument("--mode", default="fast", choices=("fast", "full"))
    parser.add_argument("--iterations", type=int, default=None, help="default: the mode's")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="another FinetuneConfig value as JSON, e.g. --set lr=1e-3 or "
        "--set 'trust={\"extra_specks\": 4}' (repeatable)",
    )
    parser.add_argument("--spacing", type=float, default=1.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.settings = {
        field: json.loads(value) for field, value in (item.split("=", 1) for item in args.set)
    }
    torch.set_num_threads(args.threads)
    print(
        f"machine: {describe()}, torch {torch.__version__}, {args.threads} thread(s) "
        f"({matmul_gflops():.0f} GFLOP/s float32), device {args.device}, "
        f"mode {args.mode}, settings {args.settings or 'default'}"
    )
    model = load_model(args.model)
    benches = [prepare_bench(seed, model, args) for seed in range(9000, 9000 + args.cases)]
    print(
        "columns: painted found | rejected removed | unpainted found (base) | cm^3 outside truth per state (base) | "
        "FP >= 10 mm^3 per state (base) | attempts | refused | seconds per round"
    )
    for profile in args.profiles.split(","):
        for variant in args.variants.split(","):
            per_round: dict[int, list[dict]] = {}
            for bench in benches:
                for index, row in enumerate(profile_rounds(bench, model, profile, variant, args)):
                    per_round.setdefault(index, []).append(row)
            for index, rows in sorted(per_round.items()):
                label = "undo" if profile == "wrong_undo" and index == 1 else f"round {index + 1}"
                print(f"{profile:10} {variant:11} {label:8} {summarise(rows)}", flush=True)


if __name__ == "__main__":
    main()
