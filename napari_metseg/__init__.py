"""napari-metseg: brain metastasis segmentation on multi-sequence MRI.

The public Python API is re-exported here and imported lazily, so that napari
can discover the plugin (and read files) without paying for PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_API: dict[str, str] = {
    "Case": "napari_metseg.case",
    "Geometry": "napari_metseg.case",
    "SEQUENCES": "napari_metseg.case",
    "MetsegError": "napari_metseg.errors",
    "ModelConfig": "napari_metseg.model",
    "build_model": "napari_metseg.model",
    "load_model": "napari_metseg.model",
    "save_model": "napari_metseg.model",
    "sequence_dropout": "napari_metseg.model",
    "apply_presence": "napari_metseg.model",
    "segment": "napari_metseg.engine",
    "Segmenter": "napari_metseg.engine",
    "compute_saliency": "napari_metseg.saliency",
    "CumulativeSaliency": "napari_metseg.saliency",
    "sequence_importance": "napari_metseg.importance",
    "compare_lesions": "napari_metseg.importance",
    "Volume": "napari_metseg.io",
    "read_case": "napari_metseg.io",
    "read_volume": "napari_metseg.io",
    "write_volume": "napari_metseg.io",
    "PreparedCase": "napari_metseg.preprocess",
    "PreprocessConfig": "napari_metseg.preprocess",
    "prepare_case": "napari_metseg.preprocess",
    "PhantomConfig": "napari_metseg.phantom",
    "make_phantom": "napari_metseg.phantom",
    "write_phantom": "napari_metseg.phantom",
    "LesionTable": "napari_metseg.lesions",
    "lesion_table": "napari_metseg.lesions",
    "write_lesion_mask": "napari_metseg.lesions",
    "write_lesion_table": "napari_metseg.lesions",
    "CaseEvaluation": "napari_metseg.metrics",
    "DatasetEvaluation": "napari_metseg.metrics",
    "evaluate_case": "napari_metseg.metrics",
    "evaluate_dataset": "napari_metseg.metrics",
    "hanley_mcneil_ci": "napari_metseg.metrics",
    "wilcoxon_rank_sum": "napari_metseg.metrics",
    "youden_threshold": "napari_metseg.metrics",
    "weighted_ce": "napari_metseg.losses",
    "bootstrap": "napari_metseg.losses",
    "lopsided_bootstrap": "napari_metseg.losses",
    "LopsidedBootstrapLoss": "napari_metseg.losses",
    "censor_lesions": "napari_metseg.training.censoring",
    "TrainConfig": "napari_metseg.training.config",
    "TrainResult": "napari_metseg.training.loop",
    "train": "napari_metseg.training.loop",
    "FinetuneConfig": "napari_metseg.correction",
    "Workspace": "napari_metseg.correction",
    "finetune": "napari_metseg.correction",
    "accept_lesion": "napari_metseg.correction",
    "reject_lesion": "napari_metseg.correction",
    "empty_corrections": "napari_metseg.correction",
    "annotated_lesions": "napari_metseg.correction",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_metseg' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
