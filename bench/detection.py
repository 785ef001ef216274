"""Lesion detection of a model on fresh phantoms drawn unlike any training case.

Usage: ``python -m bench.detection [--model PATH ...] [--cases 8] [--threads 2]
[--lesions 15] [--repeat 3]`` from the repository root. ``--model`` may be given
several times (default: the bundled model); every model sees the same cases.

The cases. Seeds 31000, 31001, ... (the bundled models, their members and the
v5, v6, v7h, fine and P candidates trained and validated on 1000-1053,
20000-20062, 21000-21087, 22000-22071, 22100-22171 and 24000-24071; the tests
and the sample case use 7, 777 and 778). Each case takes its generator
settings (noise, bias, vessels, contrast jitter, thick-slice FLAIR, subtle
and ring lesions) from
:func:`~napari_metseg.phantom.randomised` of another seed (33000, 33001, ...),
so the settings are a fresh draw too, and a voxel size of 1.2 mm (even cases)
or 1.0 mm (odd ones) instead of the drawn one. Generating a case takes 10-20
s, so cases are cached as ``.npz`` in ``$TMPDIR/metseg-bench-detection``
(keyed by the settings and the generator's source).

Per model and sequence set (all of the model's sequences, then each one switched
off in turn: the subsets a user gets by unticking one *present* box; ``--sets
2`` for all and without the first only, the sets issue #14 named), pooled over the
cases with :func:`~napari_metseg.metrics.evaluate_case` /
:func:`~napari_metseg.metrics.evaluate_dataset` (candidates at 0.10, centre
within 1 mm, METHOD.md):

- sensitivity per size stratum of the truth lesion's LONGEST diameter
  (:func:`~napari_metseg.lesions.longest_diameters`): < 3, 3-5, 5-10, >= 10 mm;
- mAP; false-positive components of at least 10 mm^3 per case in the map the
  plugin draws (p >= 0.10) and at p >= 0.5;
- Dice of found lesions (each detected truth lesion against the candidates
  that hit it) and the median ratio of their volumes (candidates / truth),
  over all of them and per size stratum;
- per size stratum, where the masks of found lesions lie (:func:`edge_shares`):
  the share of the lesion marked, of its one-voxel shell, and the voxels
  marked further out;
- mean network seconds and whole-case seconds per case (pre-processing,
  network, restore to the case grid and the lesion table).

Then the network seconds of the sample case (``metseg demo``'s phantom, all
four sequences), the best of ``--repeat`` runs. Timings on a shared CPU vary:
take the minimum of repeated runs.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from bench.machine import describe, matmul_gflops
from napari_metseg._napari import SAMPLE_SEED, SAMPLE_SPACING
from napari_metseg.case import SEQUENCES, Case, Geometry
from napari_metseg.engine import Segmenter
from napari_metseg.lesions import label_components, lesion_table
from napari_metseg.metrics import (
    CaseEvaluation,
    evaluate_case,
    evaluate_dataset,
    false_positive_components,
    sensitivity_by_size,
)
from napari_metseg.model import load_model
from napari_metseg.phantom import make_phantom, randomised
from napari_metseg.presence import each_one_off

FIRST_SEED = 31000
#: Offset of the seed whose generator-settings draw a case uses.
SETTINGS_SEED_OFFSET = 2000
SPACINGS_MM = (1.2, 1.0)
SIZE_EDGES_MM = (3.0, 5.0, 10.0)
#: The 6-connected neighbourhood: one voxel shell per dilation.
EDGE_BALL = ndimage.generate_binary_structure(3, 1)
CANDIDATE_THRESHOLD = 0.10
HIGH_THRESHOLD = 0.5
FP_MIN_VOLUME_MM3 = 10.0
#: Seeds that trained, validated or test the bundled models; the bench must avoid them.
USED_SEEDS = {
    *range(1000, 1054),
    *range(20000, 20063),
    *range(21000, 21088),
    *range(22000, 22072),
    *range(22100, 22172),
    *range(24000, 24072),
    7,
    777,
    778,
}
CACHE_DIR = Path(tempfile.gettempdir()) / "metseg-bench-detection"


def sequence_sets(sequences: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Label -> sequences switched off: none, then each one in turn.

    Every single one off, not only ``bravo``: the bundled v7 draws 5.4 false
    positives per case with all four and without ``bravo``, but 14.6, 36.9 and
    22.6 without ``cube_pre``, ``cube_post`` and ``flair``.
    """
    return {
        f"all {len(sequences)}" if off is None else f"without {off}": () if off is None else (off,)
        for off, _ in each_one_off(sequences)
    }


def bench_seeds(n_cases: int) -> list[int]:
    seeds = [FIRST_SEED + index for index in range(n_cases)]
    if USED_SEEDS & {*seeds, *(seed + SETTINGS_SEED_OFFSET for seed in seeds)}:
        raise ValueError(f"{n_cases} cases reach seeds used in training or tests")
    return seeds


def bench_case(index: int, seed: int, n_lesions: int) -> Case:
    """The phantom of ``seed``, generated once and then read from the cache."""
    _, config = randomised(seed + SETTINGS_SEED_OFFSET)
    spacing = SPACINGS_MM[index % len(SPACINGS_MM)]
    key = hashlib.sha256(
        repr((seed, spacing, n_lesions, astuple(config), _generator_digest())).encode()
    ).hexdigest()[:16]
    path = CACHE_DIR / f"phantom_{seed}_{spacing:g}mm_{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            geometry = Geometry.from_source(tuple(stored["source_shape"]), stored["source_affine"])
            images = {name: stored[name] for name in SEQUENCES}
            return Case(images, geometry, stored["truth"], f"phantom_{seed}", "bravo")
    case = make_phantom(seed, n_lesions=n_lesions, spacing=spacing, config=config)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(
        partial,
        source_shape=np.asarray(case.geometry.source_shape),
        source_affine=case.geometry.source_affine,
        truth=case.truth,
        **case.images,
    )
    partial.replace(path)
    return case


def _generator_digest() -> str:
    """Digest of the phantom generator's source, so a changed generator misses the cache."""
    folder = Path(make_phantom.__code__.co_filename).parent
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.py")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


#: A bench run of one case: :func:`run_case`'s result.
Run = tuple[CaseEvaluation, int, float, float, pd.DataFrame]


def run_case(segmenter: Segmenter, case: Case, switched_off: tuple[str, ...]) -> Run:
    """``(evaluation, FP components >= 10 mm^3 at p >= 0.5, network s, whole-case s,
    edge_shares of the found lesions)``."""
    present = tuple(name not in switched_off for name in segmenter.model.config.sequences)
    start = time.perf_counter()
    result = segmenter(case, present=present)
    lesion_table(result.probability, case.geometry, CANDIDATE_THRESHOLD)
    whole = time.perf_counter() - start
    evaluation = evaluate_case(
        result.probability,
        case.truth,
        case.geometry,
        threshold=CANDIDATE_THRESHOLD,
        candidate_threshold=CANDIDATE_THRESHOLD,
        fp_min_volume_mm3=FP_MIN_VOLUME_MM3,
        size_edges_mm=SIZE_EDGES_MM,
        name=case.name,
    )
    high_fp = false_positive_components(
        result.probability >= HIGH_THRESHOLD,
        case.truth > 0,
        case.geometry.voxel_volume,
        FP_MIN_VOLUME_MM3,
    )
    edges = edge_shares(result.probability, case.truth, evaluation)
    return evaluation, high_fp, result.info.seconds, whole, edges


def edge_shares(
    probability: np.ndarray, truth: np.ndarray, evaluation: CaseEvaluation
) -> pd.DataFrame:
    """Where the mask of each found lesion lies against the truth, voxel shell by shell.

    Per found lesion: ``inside``, the share of its voxels at p >= 0.10; ``shell``,
    the share of the voxels just outside it (its 6-connected one-voxel shell)
    at p >= 0.10; ``beyond``, voxels at p >= 0.10 further out (within 4 voxels),
    per lesion voxel. The phantoms draw every lesion with a one-voxel
    partial-volume edge, so the shell is where a lesion's own signal ends: a
    mask of the lesion and its whole shell scores Dice 0.53 on lesions of
    15-70 voxels (v7 marks about half of it, TRAINING.md).
    """
    labels, _ = label_components(np.asarray(truth) > 0)
    marked = probability >= CANDIDATE_THRESHOLD
    rows = []
    found = evaluation.lesions[evaluation.lesions["detected"]]
    boxes = ndimage.find_objects(labels)
    for lesion in found["lesion"].astype(int):
        box = tuple(slice(max(0, part.start - 5), part.stop + 5) for part in boxes[lesion - 1])
        own, mask = labels[box] == lesion, marked[box]
        near = ndimage.binary_dilation(own, EDGE_BALL)
        far = ndimage.binary_dilation(near, EDGE_BALL, iterations=3) & ~near
        shell = near & ~own
        rows.append(
            {
                "lesion": lesion,
                "inside": mask[own].mean(),
                "shell": mask[shell].mean(),
                "beyond": mask[far].sum() / own.sum(),
            }
        )
    return pd.DataFrame(rows, columns=["lesion", "inside", "shell", "beyond"])


def found_lesions(evaluation: CaseEvaluation) -> pd.DataFrame:
    """The found truth lesions with their Dice and ``ratio``: predicted / true volume (the
    candidates that hit a lesion together)."""
    hits = evaluation.candidates[evaluation.candidates["is_tp"]]
    predicted = hits.groupby("lesion")["volume_mm3"].sum()
    found = evaluation.lesions[evaluation.lesions["detected"]].set_index("lesion")
    return found.assign(ratio=predicted / found["volume_mm3"])


def summary_row(label: str, sequences: str, runs: list[Run]) -> dict[str, str]:
    evaluations = [run[0] for run in runs]
    pooled = evaluate_dataset(evaluations)
    row = {"model": label, "sequences": sequences, "lesions": str(pooled.n_lesions)}
    for stratum in pooled.size_sensitivity.itertuples():
        row[f"{stratum.stratum}"] = f"{stratum.detected}/{stratum.lesions}"
    found = pd.concat([found_lesions(e) for e in evaluations])
    row |= {
        "mAP": f"{pooled.average_precision:.2f}",
        "FP/case@.10": f"{pooled.false_positives_min_volume_per_case:.1f}",
        "FP/case@.5": f"{np.mean([run[1] for run in runs]):.1f}",
        "found Dice": f"{found['dice'].mean():.2f}" if len(found) else "-",
        "vol ratio": f"{found['ratio'].median():.2f}" if len(found) else "-",
        "net s": f"{np.mean([run[2] for run in runs]):.2f}",
        "case s": f"{np.mean([run[3] for run in runs]):.2f}",
    }
    return row


def size_quality_row(label: str, sequences: str, runs: list[Run]) -> dict[str, str]:
    """Dice and median volume ratio of the found lesions per size stratum: where the overall
    numbers come from (v7: 0.83 for lesions of 10 mm and more, 0.40 for 3-5 mm ones)."""
    return stratum_row(
        label,
        sequences,
        runs,
        "Dice, ratio",
        lambda part: f"{part['dice'].mean():.2f}, {part['ratio'].median():.1f} ({len(part)})",
    )


def edge_row(label: str, sequences: str, runs: list[Run]) -> dict[str, str]:
    """The means of :func:`edge_shares` per size stratum: whether the wide masks of small
    lesions are their partial-volume edge (the shell) or reach past it."""
    return stratum_row(
        label,
        sequences,
        runs,
        "inside, shell, beyond",
        lambda part: ", ".join(f"{part[k].mean():.2f}" for k in ("inside", "shell", "beyond")),
    )


def stratum_row(
    label: str,
    sequences: str,
    runs: list[Run],
    title: str,
    cell: Callable[[pd.DataFrame], str],
) -> dict[str, str]:
    """One table row: ``cell`` of the found lesions of each size stratum."""
    found = pd.concat(
        [found_lesions(run[0]).join(run[4].set_index("lesion"), how="left") for run in runs]
    )
    strata = np.searchsorted(SIZE_EDGES_MM, found["diameter_mm"].to_numpy(float), side="right")
    names = sensitivity_by_size([], [], SIZE_EDGES_MM)["stratum"]
    row = {"model": label, "sequences": sequences}
    for index, name in enumerate(names):
        part = found[strata == index]
        row[f"{name}: {title}"] = cell(part) if len(part) else "-"
    return row


def sample_network_seconds(segmenter: Segmenter, repeat: int) -> float:
    case = make_phantom(SAMPLE_SEED, spacing=SAMPLE_SPACING)
    return min(segmenter(case).info.seconds for _ in range(repeat))


def print_table(rows: list[dict[str, str]]) -> None:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in columns}
    print("| " + " | ".join(c.ljust(widths[c]) for c in columns) + " |")
    print("|" + "|".join("-" * (widths[c] + 2) for c in columns) + "|")
    for row in rows:
        print("| " + " | ".join(row.get(c, "").ljust(widths[c]) for c in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", default=None, help="model folder (repeatable; default: bundled)"
    )
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--lesions", type=int, default=15, help="lesions per case")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the network")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the sample-case timing")
    parser.add_argument(
        "--sets", type=int, default=None, help="only the first N sequence sets (default: all)"
    )
    args = parser.parse_args()
    if args.cases < 1:
        parser.error(f"--cases must be at least 1, got {args.cases}")
    torch.set_num_threads(args.threads)
    models = args.model or ["default"]
    seeds = bench_seeds(args.cases)
    cases = [bench_case(index, seed, args.lesions) for index, seed in enumerate(seeds)]
    print(
        f"machine: {describe()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads ({matmul_gflops():.0f} GFLOP/s float32)"
    )
    print(
        f"cases: seeds {seeds[0]}-{seeds[-1]}, {' / '.join(f'{s:g}' for s in SPACINGS_MM)} mm, "
        f"settings drawn from seeds {seeds[0] + SETTINGS_SEED_OFFSET}-"
        f"{seeds[-1] + SETTINGS_SEED_OFFSET}; size = longest diameter of the truth lesion"
    )
    rows, quality, edges, sample = [], [], [], {}
    for path in models:
        segmenter = Segmenter(load_model(path), "cpu")
        sets = list(sequence_sets(segmenter.model.config.sequences).items())[: args.sets]
        for sequences, switched_off in sets:
            runs = [run_case(segmenter, case, switched_off) for case in cases]
            rows.append(summary_row(path, sequences, runs))
            quality.append(size_quality_row(path, sequences, runs))
            edges.append(edge_row(path, sequences, runs))
        sample[path] = sample_network_seconds(segmenter, args.repeat)
    print_table(rows)
    print("\nfound lesions per size: mean Dice, median volume ratio (found)")
    print_table(quality)
    print(
        "\nfound lesions per size: share of the lesion at p >= 0.10, of its one-voxel shell, "
        "and voxels marked beyond the shell (within 4 voxels) per lesion voxel"
    )
    print_table(edges)
    for path, seconds in sample.items():
        print(
            f"sample case (seed {SAMPLE_SEED}, {SAMPLE_SPACING} mm), network s, best of "
            f"{args.repeat}, {args.threads} threads: {path}: {seconds:.2f}"
        )


if __name__ == "__main__":
    main()
