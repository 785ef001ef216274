"""``metseg evaluate``: score probability volumes against truth masks, case by case.

Pairs cases by name (see :func:`find_pairs`), runs
:func:`napari_metseg.metrics.evaluate_case` on each and
:func:`~napari_metseg.metrics.evaluate_dataset` on all, and writes to ``--out``:
``cases.csv`` (one row per case), ``candidates.csv`` and ``lesions.csv``
(records with a ``case`` column), ``summary.json`` (pooled scores, settings,
per-case rows; NaN as ``null``), ``pr_curve.png``, ``roc_curve.png`` and
``sensitivity_by_size.png``; then prints a short table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from napari_metseg.errors import GeometryError, ReadError
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

logger = logging.getLogger(__name__)

_NIFTI = re.compile(r"^(?P<stem>.+?)\.nii(\.gz)?$", re.IGNORECASE)
_PREDICTION_NAMES = ("probability",)
_TRUTH_NAMES = ("seg", "mask", "truth", "label", "labels")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score predictions against truth masks (detection mAP, Dice, AUC, plots)",
        description=(
            "Pair PRED_DIR/<case>/probability.nii.gz (or <case>_probability.nii.gz) with "
            "TRUTH_DIR/<case>/...seg.nii.gz (or <case>_seg.nii.gz, <case>.nii.gz); truth voxels "
            "> 0 are lesion (see --truth-labels). Writes cases.csv, candidates.csv, lesions.csv, summary.json and "
            "PR / ROC / size-sensitivity plots to --out."
        ),
    )
    parser.add_argument("pred_dir", type=Path, metavar="PRED_DIR")
    parser.add_argument("truth_dir", type=Path, metavar="TRUTH_DIR")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--threshold",
        type=_probability,
        default=0.5,
        help="voxel threshold for Dice / precision / recall / false positives (default 0.5; "
        "use summary.json's youden_threshold from a validation set)",
    )
    parser.add_argument(
        "--candidate-threshold",
        type=_probability,
        default=CANDIDATE_THRESHOLD,
        help=f"threshold of lesion candidates for detection (default {CANDIDATE_THRESHOLD})",
    )
    parser.add_argument(
        "--hit-distance",
        type=_non_negative,
        default=1.0,
        help="mm from a truth voxel within which a candidate's centre counts (default 1)",
    )
    parser.add_argument(
        "--min-volume",
        type=_non_negative,
        default=10.0,
        help="mm^3 limit of the second false-positive count (default 10)",
    )
    parser.add_argument(
        "--truth-labels",
        type=_labels,
        default=None,
        help="comma-separated truth label values that are lesion (default: every value > 0; "
        "BraTS-METS enhancing tumour and necrosis without oedema: 1,3)",
    )
    parser.set_defaults(func=run)


def _labels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected integers like 1,3, got {text!r}") from error
    if any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"label values must be > 0, got {text!r}")
    return values


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite value >= 0, got {value}")
    return value


def find_pairs(pred_dir: Path, truth_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(case, prediction file, truth file)`` for every case found in both folders.

    Predictions: ``<case>/probability.nii[.gz]`` or ``<case>_probability.nii[.gz]``.
    Truth: ``<case>/`` holding one NIfTI whose name ends in ``seg`` / ``mask`` /
    ``truth`` / ``label(s)`` (``seg.nii.gz``, ``<case>_seg.nii.gz``,
    ``<case>-seg.nii.gz``...), or ``<case>_seg.nii[.gz]`` / ``<case>-seg...`` /
    ``<case>.nii[.gz]`` directly in the folder (a suffixed name wins over a bare
    one). Predictions without truth are left out with a warning; truth masks
    without predictions are ignored (a truth folder may hold a whole dataset).
    """
    for folder in (pred_dir, truth_dir):
        if not folder.is_dir():
            raise ReadError(f"{folder}: no such folder")
    predictions = _files(pred_dir, _PREDICTION_NAMES, bare_allowed=False)
    truths = _files(truth_dir, _TRUTH_NAMES, bare_allowed=True)
    if not predictions:
        raise ReadError(
            f"{pred_dir}: no <case>/probability.nii.gz or <case>_probability.nii.gz found"
        )
    for name in sorted(set(predictions) - set(truths)):
        logger.warning("case %s has no truth mask in %s; left out", name, truth_dir)
    logger.debug("truth without prediction: %s", sorted(set(truths) - set(predictions)))
    pairs = [
        (name, predictions[name], truths[name]) for name in sorted(predictions) if name in truths
    ]
    if not pairs:
        raise ReadError(
            f"no case of {pred_dir} ({', '.join(sorted(predictions))}) has a truth mask in "
            f"{truth_dir}"
        )
    return pairs


def _files(folder: Path, suffixes: tuple[str, ...], bare_allowed: bool) -> dict[str, Path]:
    """Case name -> file, from case sub-folders and from files directly in ``folder``."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            inner = [
                p for p in sorted(entry.iterdir()) if _case_of(p.name, suffixes, bare_ok=False)
            ]
            if len(inner) > 1:
                raise ReadError(f"{entry}: several candidate files {[p.name for p in inner]}")
            if inner:
                found[entry.name] = inner[0]
            continue
        match = _NIFTI.match(entry.name)
        if match is None:
            continue
        case = _case_of(entry.name, suffixes, bare_ok=bare_allowed)
        if case:
            found.setdefault(case, entry)
    return found


def _case_of(filename: str, suffixes: tuple[str, ...], bare_ok: bool) -> str | None:
    """The case name of ``<case>[_-]<suffix>.nii[.gz]`` (or ``<suffix>.nii.gz`` in a folder).

    Returns the stem itself for a bare ``<case>.nii.gz`` when ``bare_ok``; a
    file named just ``<suffix>.nii.gz`` yields the suffix (only its folder
    name matters then).
    """
    match = _NIFTI.match(filename)
    if match is None:
        return None
    stem = match.group("stem")
    for suffix in suffixes:
        if stem.lower() == suffix:
            return stem
        for separator in ("_", "-"):
            if stem.lower().endswith(separator + suffix):
                return stem[: -len(suffix) - 1]
    return stem if bare_ok else None


def run(args: argparse.Namespace) -> None:
    from napari_metseg.io import read_volume
    from napari_metseg.metrics import evaluate_case, evaluate_dataset
    from napari_metseg.metrics.plots import (
        plot_pr_curve,
        plot_roc_curve,
        plot_size_sensitivity,
    )

    pairs = find_pairs(args.pred_dir, args.truth_dir)
    results = []
    for index, (name, prediction_path, truth_path) in enumerate(pairs, start=1):
        prediction, truth = read_volume(prediction_path), read_volume(truth_path)
        if not prediction.geometry.same_grid(truth.geometry):
            raise GeometryError(
                f"case {name}: {prediction_path} ({prediction.geometry.summary()}) and "
                f"{truth_path} ({truth.geometry.summary()}) are not on the same grid"
            )
        low, high = float(prediction.data.min()), float(prediction.data.max())
        if low < 0.0 or high > 1.0:
            raise ReadError(
                f"{prediction_path}: values span [{low:g}, {high:g}]; a probability map in "
                "[0, 1] is needed"
            )
        logger.info("[%d/%d] evaluating %s", index, len(pairs), name)
        results.append(
            evaluate_case(
                prediction.data,
                _lesion_mask(truth.data, args.truth_labels),
                prediction.geometry,
                threshold=args.threshold,
                candidate_threshold=args.candidate_threshold,
                hit_distance_mm=args.hit_distance,
                fp_min_volume_mm3=args.min_volume,
                name=name,
            )
        )
    dataset = evaluate_dataset(results)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cases = pd.DataFrame([result.summary() for result in results])
    cases.to_csv(out / "cases.csv", index=False)
    _records(results, "candidates").to_csv(out / "candidates.csv", index=False)
    _records(results, "lesions").to_csv(out / "lesions.csv", index=False)
    settings = {
        "pred_dir": str(args.pred_dir),
        "truth_dir": str(args.truth_dir),
        "threshold": args.threshold,
        "candidate_threshold": args.candidate_threshold,
        "hit_distance_mm": args.hit_distance,
        "fp_min_volume_mm3": args.min_volume,
        "truth_labels": list(args.truth_labels) if args.truth_labels else "all > 0",
    }
    summary = {
        "settings": settings,
        "dataset": dataset.summary(),
        "cases": cases.to_dict("records"),
    }
    (out / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
    plot_pr_curve(dataset, results, out / "pr_curve.png")
    plot_roc_curve(dataset, results, out / "roc_curve.png")
    plot_size_sensitivity(dataset, out / "sensitivity_by_size.png")
    print(format_table(cases, dataset.summary()))
    logger.info("results written to %s", out)


def _lesion_mask(truth: np.ndarray, labels: tuple[int, ...] | None) -> np.ndarray:
    """Truth voxels counted as lesion: every value > 0, or only the given label values."""
    if labels is None:
        return truth > 0
    return np.isin(np.rint(truth).astype(np.int64), labels)


def _records(results: list, attribute: str) -> pd.DataFrame:
    frames = [getattr(r, attribute).assign(case=r.name) for r in results]
    table = pd.concat(frames, ignore_index=True)
    return table[["case", *[c for c in table.columns if c != "case"]]]


def format_table(cases: pd.DataFrame, pooled: dict[str, Any]) -> str:
    """The per-case scores and the pooled line as fixed-width text."""
    columns = [
        ("case", "name", "{}"),
        ("lesions", "n_lesions", "{:d}"),
        ("cands", "n_candidates", "{:d}"),
        ("mAP", "average_precision", "{:.3f}"),
        ("maxSens", "max_sensitivity", "{:.3f}"),
        ("TPDice", "tp_dice", "{:.3f}"),
        ("AUC", "auc", "{:.4f}"),
        ("Dice", "dice", "{:.3f}"),
        ("FP", "false_positives", "{:d}"),
        ("FP>=min", "false_positives_min_volume", "{:d}"),
    ]
    width = max(8, *(len(str(n)) for n in cases["name"]))
    header = f"{'case':<{width}}" + "".join(f"{title:>9}" for title, _, _ in columns[1:])
    lines = [header]
    for row in cases.to_dict("records"):
        cells = [_cell(fmt, row[key]) for _, key, fmt in columns[1:]]
        lines.append(f"{row['name']:<{width}}" + "".join(f"{c:>9}" for c in cells))
    lines.append(
        f"pooled over {pooled['n_cases']} cases: mAP {pooled['average_precision']:.3f} "
        f"(95% CI {pooled['ci_low']:.3f}-{pooled['ci_high']:.3f}), max sensitivity "
        f"{pooled['max_sensitivity']:.3f}, TP Dice {pooled['tp_dice']:.3f}, "
        f"Youden threshold {pooled['youden_threshold']:.3f}"
    )
    return "\n".join(lines)


def _cell(fmt: str, value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(int(value) if fmt == "{:d}" else value)


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None, recursively, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value
