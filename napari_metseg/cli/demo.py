"""``metseg demo``: the sample case segmented by the bundled model, in napari or as files.

The sample phantom is written once to the user cache folder
(``$XDG_CACHE_HOME/napari-metseg``, else ``~/.cache/napari-metseg``) and read
back from there, so napari and ``--headless`` see the same files. napari is
imported only when a window opens.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path

from napari_metseg._napari import SAMPLE_SEED, SAMPLE_SPACING
from napari_metseg.devices import DEVICES
from napari_metseg.errors import MetsegError, ModelFileError
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="segment the sample case with the bundled model (napari, or files with --headless)",
        description=(
            "Generate the synthetic sample case (cached), open it in napari with the MetSeg "
            "workbench and run the bundled model. With --headless, write the sequences, "
            "probability.nii.gz, mask.nii.gz (lesion ids, 0 background) and lesions.csv "
            "to --out instead, without a display."
        ),
    )
    parser.add_argument("--headless", action="store_true", help="write files, open no window")
    parser.add_argument("--out", type=Path, help="output folder for --headless (created)")
    parser.add_argument(
        "--model", type=Path, default=None, help="model file (default: the bundled model)"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="default: auto")
    parser.add_argument(
        "--spacing",
        type=float,
        default=SAMPLE_SPACING,
        help=f"voxel size of the sample case in mm (default {SAMPLE_SPACING})",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=CANDIDATE_THRESHOLD,
        help=f"lesion probability threshold (default {CANDIDATE_THRESHOLD})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.headless and args.out is None:
        raise MetsegError("--headless needs --out DIR")
    model_path = _model_path(args.model)
    folder = sample_folder(args.spacing)
    if args.headless:
        write_results(folder, model_path, args.out, args.device, args.threshold)
    else:
        _show(folder, args.model, args.device)


def cache_dir() -> Path:
    """The user cache folder of napari-metseg."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "napari-metseg"


def sample_folder(spacing: float = SAMPLE_SPACING) -> Path:
    """The sample phantom's files in the cache, written there first if missing."""
    from napari_metseg.phantom import write_phantom

    folder = cache_dir() / f"sample_seed{SAMPLE_SEED}_{spacing:g}mm"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sample-", dir=folder.parent))
    write_phantom(staging, SAMPLE_SEED, spacing=spacing, name="sample")
    try:
        staging.rename(folder)
    except OSError:  # another process wrote it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("sample case cached in %s", folder)
    return folder


def write_results(
    folder: Path,
    model_path: Path,
    out: Path,
    device: str = "auto",
    threshold: float = CANDIDATE_THRESHOLD,
) -> None:
    """Segment the case in ``folder`` and write sequences, probability, mask and table to ``out``."""
    from napari_metseg.io import read_case
    from napari_metseg.model import load_model
    from napari_metseg.pipeline import segment_to_files

    segment_to_files(
        read_case(folder),
        load_model(model_path),
        out,
        device=device,
        threshold=threshold,
        write_sequences=True,
        progress=_log_progress,
    )


def _model_path(path: Path | None) -> Path:
    """The model file to use; the bundled one must exist when none is given."""
    from napari_metseg.model import default_model_path

    if path is not None:
        return path
    bundled = Path(default_model_path())
    if not bundled.exists():
        raise ModelFileError(
            f"the bundled model is missing: expected it at {bundled} "
            "(reinstall napari-metseg, or pass --model FILE)"
        )
    return bundled


def _show(folder: Path, model: Path | None, device: str) -> None:
    # PyTorch before the viewer: torchvision loads triton, whose LLVM clashes with Mesa's
    # once a software-rendered OpenGL canvas exists (a segfault under Xvfb).
    import napari

    import napari_metseg.model  # noqa: F401

    viewer = napari.Viewer(title="MetSeg demo")
    viewer.open(folder, plugin="napari-metseg")
    _, workbench = viewer.window.add_plugin_dock_widget("napari-metseg", "MetSeg workbench")
    workbench.segment_panel.set_model_path(model)
    workbench.segment_panel.set_device(device)
    workbench.run()
    napari.run()


def _log_progress(done: int, total: int, message: str) -> None:
    logger.info("%s (%d/%d)", message, done, total)
