"""Copy a training run's best model into the package as the bundled default model.

Usage: ``.venv/bin/python scripts/bundle_model.py RUN_DIR "COMMAND THAT TRAINED IT" [DEST]``
(DEST: another folder to write to instead, e.g. a GPU machine's output folder).
Weights are stored in float16 (half the size; loading casts them back), and the
model's JSON keeps the run's configuration, validation metrics and the command.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from napari_metseg.model import default_model_path, load_model, save_model


def main() -> None:
    run, command = Path(sys.argv[1]), sys.argv[2]
    destination = Path(sys.argv[3]) if len(sys.argv) > 3 else default_model_path()
    model = load_model(run / "best")
    path = save_model(model, destination, {"command": command}, dtype=torch.float16)
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    print(f"bundled {run / 'best'} -> {path} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
