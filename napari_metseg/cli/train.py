"""``metseg train``: train a model from a configuration file plus overrides.

Thin over :func:`napari_metseg.training.loop.train`. Settings come from
``--config FILE`` (JSON, see :class:`~napari_metseg.training.config.TrainConfig`),
then the explicit flags below, then ``--set key=value`` (any setting). Runs
under ``torchrun --nproc_per_node N`` for distributed data-parallel training;
only rank 0 shows the progress bar.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from napari_metseg.devices import DEVICES

#: Explicit flags: option name -> (setting, help).
FLAGS: dict[str, tuple[str, str]] = {
    "--out": ("out_dir", "output folder for logs, checkpoints and model files"),
    "--split": ("split", "split JSON file with train / val / test case lists"),
    "--synthetic-train": ("synthetic_train", "number of synthetic phantom training cases"),
    "--synthetic-val": ("synthetic_val", "number of synthetic phantom validation cases"),
    "--integration": ("integration", "where sequences meet: input, mid, end, subtraction"),
    "--sharing": ("sharing", "branch weights for mid/end: shared, independent, l2_tied"),
    "--backbone": ("backbone", "backbone of the network"),
    "--output-stride": ("output_stride", "backbone output stride (light: 16 or 8)"),
    "--decoder": ("decoder", "none (DeepLabv3, the method's) or plus (DeepLabv3+)"),
    "--head-channels": ("head_channels", "width of the ASPP and decoder (the method's 256)"),
    "--init": ("init", "model to start from (folder, file or 'default') instead of random weights"),
    "--dropout": ("sequence_dropout", "sequence dropout on or off (true / false)"),
    "--loss": ("loss", "weighted_ce, bootstrap or lopsided_bootstrap"),
    "--alpha": ("alpha", "weight of lesion voxels"),
    "--beta": ("beta", "trust in background labels (bootstrap losses)"),
    "--censor-rate": ("censor_rate", "fraction of lesions removed from the masks"),
    "--censor-mode": ("censor_mode", "stochastic or size"),
    "--lr": ("lr", "learning rate"),
    "--iterations": ("iterations", "number of optimiser steps"),
    "--batch-size": ("batch_size", "slices per step and process"),
    "--val-interval": ("val_interval", "iterations between validations"),
    "--val-sequences": ("val_sequences", "comma-separated sequences present in validation"),
    "--size": ("size", "slice size in pixels"),
    "--seed": ("seed", "random seed"),
    "--device": ("device", ", ".join(DEVICES)),
    "--workers": ("workers", "processes preparing cases at once"),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation model (runs under torchrun for several GPUs / processes)",
        description=(
            "Train a model. Settings: --config FILE, then the flags, then --set key=value. "
            "Example: metseg train --synthetic-train 40 --synthetic-val 4 --out run1"
        ),
    )
    parser.add_argument("--config", help="JSON training configuration")
    for flag, (setting, text) in FLAGS.items():
        parser.add_argument(flag, dest=setting, metavar=setting.upper(), help=text)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training setting (repeatable), e.g. --set cache_dir=cache",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` of parsed arguments (file, then flags, then ``--set``)."""
    from napari_metseg.errors import MetsegError
    from napari_metseg.training.config import TrainConfig

    assignments = [
        f"{setting}={getattr(args, setting)}"
        for setting, _ in FLAGS.values()
        if getattr(args, setting) is not None
    ]
    assignments += list(args.overrides)
    if args.resume:
        assignments.append("resume=true")
    try:
        config = TrainConfig.load(args.config) if args.config else TrainConfig()
        return config.with_overrides(assignments)
    except ValueError as error:
        raise MetsegError(f"bad training settings: {error}") from error


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from napari_metseg.training.loop import train

    config = build_config(args)
    show = not args.no_progress and os.environ.get("RANK", "0") == "0"
    bar = tqdm(total=config.iterations, unit="it", disable=not show, dynamic_ncols=True)

    def progress(done: int, total: int, message: str) -> None:
        if total != bar.total:
            bar.reset(total=total)
        bar.n = done
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        result = train(config, progress=progress)
    finally:
        bar.close()
    if show:
        best = (
            f"best validation mAP {result.best_score:.3f} at iteration {result.best_iteration} "
            f"({result.best_model})"
            if result.best_model
            else "no validation cases"
        )
        print(
            f"trained {result.iterations} iterations in {result.seconds / 60:.1f} min; "
            f"final loss {result.final_loss:.4f}; {best}; final model {result.final_model}"
        )
