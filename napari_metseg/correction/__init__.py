"""The active-correction loop: corrections -> samples (``samples``), the round's
objective (``objective``) and trust region (``trust``), fine-tuning
(``finetune``), model versions with undo / redo and autosaved strokes
(``workspace``), the lesions with the marks applied (``annotation``). No Qt
here: the GUI calls these with a progress callable and a cancel event.
"""

from napari_metseg.correction.annotation import annotated_lesions
from napari_metseg.correction.finetune import FinetuneConfig, FinetuneResult, finetune
from napari_metseg.correction.objective import correction_loss
from napari_metseg.correction.samples import (
    LESION,
    NOT_LESION,
    UNMARKED,
    accept_lesion,
    empty_corrections,
    reject_lesion,
    select_samples,
)
from napari_metseg.correction.trust import TrustRegion
from napari_metseg.correction.workspace import Workspace
from napari_metseg.errors import CorrectionError, RunawayError, WorkspaceError

__all__ = [
    "LESION",
    "NOT_LESION",
    "UNMARKED",
    "CorrectionError",
    "FinetuneConfig",
    "FinetuneResult",
    "RunawayError",
    "TrustRegion",
    "Workspace",
    "WorkspaceError",
    "accept_lesion",
    "annotated_lesions",
    "correction_loss",
    "empty_corrections",
    "finetune",
    "reject_lesion",
    "select_samples",
]
