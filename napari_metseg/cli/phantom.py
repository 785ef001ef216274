"""``metseg phantom``: write a synthetic brain-metastasis case as NIfTI files."""

from __future__ import annotations

import argparse
import logging

from napari_metseg.phantom import PhantomConfig, write_phantom

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write a synthetic case (4 sequences + truth) as NIfTI",
        description=(
            "Generate a synthetic brain-metastasis case from the MNI152 template: "
            "<NAME>_{bravo,cube_pre,cube_post,flair,seg}.nii.gz and <NAME>_lesions.json."
        ),
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--seed", type=int, required=True, help="random seed (same seed, same case)"
    )
    parser.add_argument(
        "--n-lesions",
        type=_lesion_count,
        default=None,
        help=f"number of lesions, 1 to {PhantomConfig.max_lesions} (default: drawn from the seed)",
    )
    parser.add_argument(
        "--spacing", type=_spacing, default=1.5, help="voxel size in mm (default 1.5)"
    )
    parser.add_argument("--name", default=None, help="file name prefix (default phantom_<seed>)")
    parser.set_defaults(func=run)


def _lesion_count(text: str) -> int:
    count = int(text)
    if not 1 <= count <= PhantomConfig.max_lesions:
        raise argparse.ArgumentTypeError(
            f"must lie in [1, {PhantomConfig.max_lesions}], got {count}"
        )
    return count


def _spacing(text: str) -> float:
    spacing = float(text)
    if not 0.5 <= spacing <= 8.0:
        raise argparse.ArgumentTypeError(f"must lie in [0.5, 8] mm, got {spacing}")
    return spacing


def run(args: argparse.Namespace) -> None:
    out = write_phantom(
        args.out, args.seed, n_lesions=args.n_lesions, spacing=args.spacing, name=args.name
    )
    logger.info("phantom written to %s", out)
