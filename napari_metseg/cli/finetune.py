"""``metseg finetune``: fine-tune a model on one case's corrections, write a new model.

The corrections file is a label volume (NIfTI, NRRD, ...) on the case's
reference grid or resampled onto it: 1 = lesion, 2 = not lesion, 0 = not
looked at. The input model file is only read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_metseg.cli._progress import progress_bar
from napari_metseg.correction import FinetuneConfig, finetune
from napari_metseg.correction.config import MODES
from napari_metseg.correction.objective import UNMARKED_MODES
from napari_metseg.devices import DEVICES
from napari_metseg.errors import GeometryError
from napari_metseg.io import read_case, read_volume
from napari_metseg.io.resample import resample_to
from napari_metseg.model import load_model, save_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on a case's corrections (1 lesion, 2 not lesion)",
        description="Fine-tune a MetSeg model on the corrections painted on one case.",
    )
    parser.add_argument("case", nargs="+", help="case folder, or the files of one case")
    parser.add_argument(
        "--corrections", required=True, type=Path, help="label volume: 1 lesion, 2 not lesion"
    )
    parser.add_argument("--model", default=None, help="model to start from (default: bundled)")
    parser.add_argument(
        "--out", required=True, type=Path, help="new model (folder or .safetensors)"
    )
    parser.add_argument("--mode", default="auto", choices=MODES)
    parser.add_argument("--unmarked", default="teacher", choices=UNMARKED_MODES)
    parser.add_argument(
        "--iterations", type=int, default=None, help="optimizer steps (default: the mode's)"
    )
    parser.add_argument("--beta", type=float, default=FinetuneConfig.beta)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--mapping", default=None, help="sequence mapping (JSON file or text)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    case = read_case(args.case if len(args.case) > 1 else args.case[0], mapping=args.mapping)
    volume = read_volume(args.corrections)
    labels = resample_to(volume.data, volume.geometry, case.geometry, order=0)
    if not np.allclose(labels, np.round(labels)):
        raise GeometryError(f"{args.corrections}: corrections must hold whole numbers 0, 1, 2")
    model = load_model(args.model)
    config = FinetuneConfig(
        mode=args.mode,
        unmarked=args.unmarked,
        iterations=args.iterations,
        beta=args.beta,
        device=args.device,
    )
    with progress_bar(not args.no_progress) as progress:
        result = finetune(case, model, np.round(labels).astype(np.uint8), config, progress=progress)
    save_model(
        result.model,
        args.out,
        {
            "finetune": {
                "case": case.name,
                "parent": str(args.model or "default"),
                **result.metrics(),
            }
        },
    )
    print(
        f"{case.name}: fine-tuned ({result.mode}, {result.seconds:.1f} s, attempt "
        f"{result.attempts}), stroke loss {result.corrected_loss_before:.4f} -> "
        f"{result.corrected_loss_after:.4f}; {result.strokes.summary()}; {result.growth.describe()}"
        f" -> {args.out}"
    )
