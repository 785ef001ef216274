"""``metseg segment``: probability and mask of a case, or of every case of a dataset folder.

Heavy modules (torch, nibabel, pandas) are imported when the command runs,
not when ``metseg`` builds its parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_metseg.devices import DEVICES
from napari_metseg.thresholds import CANDIDATE_THRESHOLD


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment a case or a cohort: probability.nii.gz, mask.nii.gz (lesion ids), lesions.csv",
        description=(
            "Segment brain metastases with a MetSeg model. INPUT is one case (its folder or "
            "files; results go to --out), or a folder of cases in any supported layout "
            "(BraTS-METS, nnU-Net raw, BrainMetShare, one folder per case): then each case "
            "gets --out/<case>/, cases already done are skipped (unless --overwrite), a bad "
            "case is reported and skipped, and --out/summary.csv lists them all. Under "
            "torchrun every rank takes its share of the cases."
        ),
    )
    parser.add_argument("case", nargs="+", metavar="INPUT", help="case folder or files, or cohort")
    parser.add_argument("--model", default=None, help="model file or folder (default: bundled)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--sequences",
        default=None,
        help="comma-separated sequences switched on (default: all the case has)",
    )
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--threshold", type=float, default=CANDIDATE_THRESHOLD, help="lesion probability threshold"
    )
    parser.add_argument("--mapping", default=None, help="sequence mapping (JSON file or text)")
    parser.add_argument(
        "--overwrite", action="store_true", help="cohort: segment cases already done again"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from napari_metseg.cli._progress import progress_bar
    from napari_metseg.cohort import rank_device, segment_cohort
    from napari_metseg.engine import Segmenter
    from napari_metseg.io import read_case
    from napari_metseg.io.cases import list_cases
    from napari_metseg.model import load_model
    from napari_metseg.pipeline import segment_to_files

    present = None if args.sequences is None else [s.strip() for s in args.sequences.split(",")]
    source = args.case if len(args.case) > 1 else args.case[0]
    cohort = isinstance(source, str) and Path(source).is_dir()
    if cohort:
        cases = list_cases(source)
        cohort = not (len(cases) == 1 and cases[0][1] == Path(source))
    segmenter = Segmenter(load_model(args.model), rank_device(args.device), fold_batchnorm=True)
    if cohort:
        with progress_bar(not args.no_progress, unit="case") as progress:
            result = segment_cohort(
                source,
                segmenter,
                args.out,
                present,
                args.threshold,
                overwrite=args.overwrite,
                mapping=args.mapping,
                progress=progress,
            )
        counts = result.summary["status"].value_counts().to_dict()
        print(
            f"{len(result.summary)} cases: {counts.get('done', 0)} segmented, "
            f"{counts.get('skipped', 0)} done before, {counts.get('failed', 0)} failed "
            f"-> {result.path}"
        )
        return
    case = read_case(source, mapping=args.mapping)
    with progress_bar(not args.no_progress, unit="slice") as progress:
        result = segment_to_files(
            case, segmenter, args.out, present, threshold=args.threshold, progress=progress
        )
    info = result.info
    print(
        f"{case.name}: {len(result.table)} lesions at threshold {args.threshold:g} "
        f"with {', '.join(info.present)} on {info.device} in {info.seconds:.1f} s -> {args.out}"
    )
