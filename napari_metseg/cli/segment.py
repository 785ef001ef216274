"""``metseg segment``: probability and mask of a case with a model, as NIfTI."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_metseg.cli._progress import progress_bar
from napari_metseg.io import read_case
from napari_metseg.model import load_model
from napari_metseg.pipeline import segment_to_files


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment a case: probability.nii.gz, mask.nii.gz (lesion ids) and lesions.csv",
        description="Segment brain metastases in a case (folder or files) with a MetSeg model.",
    )
    parser.add_argument("case", nargs="+", help="case folder, or the files of one case")
    parser.add_argument("--model", default=None, help="model file or folder (default: bundled)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--sequences",
        default=None,
        help="comma-separated sequences switched on (default: all the case has)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    parser.add_argument(
        "--threshold", type=float, default=0.10, help="lesion probability threshold"
    )
    parser.add_argument("--mapping", default=None, help="sequence mapping (JSON file or text)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    case = read_case(args.case if len(args.case) > 1 else args.case[0], mapping=args.mapping)
    model = load_model(args.model)
    present = None if args.sequences is None else [s.strip() for s in args.sequences.split(",")]
    with progress_bar(not args.no_progress, unit="slice") as progress:
        result = segment_to_files(
            case, model, args.out, present, args.device, args.threshold, progress=progress
        )
    info = result.info
    print(
        f"{case.name}: {len(result.table)} lesions at threshold {args.threshold:g} "
        f"with {', '.join(info.present)} on {info.device} in {info.seconds:.1f} s -> {args.out}"
    )
