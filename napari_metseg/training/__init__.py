"""Training: lesion censoring, datasets, the training loop (DDP-ready).

Names are imported lazily, so censoring and configuration work without
loading the network code.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES: dict[str, str] = {
    "CensorRecord": "napari_metseg.training.censoring",
    "censor_lesions": "napari_metseg.training.censoring",
    "TrainConfig": "napari_metseg.training.config",
    "TrainingCase": "napari_metseg.training.datasets",
    "load_split": "napari_metseg.training.datasets",
    "prepare_cases": "napari_metseg.training.datasets",
    "TrainResult": "napari_metseg.training.loop",
    "train": "napari_metseg.training.loop",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_metseg.training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
