"""The active-correction loop: corrections -> samples (``samples``), fine-tuning
(``finetune``), model versions with undo / redo and autosaved strokes
(``workspace``). No Qt here: the GUI calls these with a progress callable and
a cancel event.
"""

from napari_metseg.correction.finetune import (
    FinetuneConfig,
    FinetuneResult,
    correction_loss,
    finetune,
)
from napari_metseg.correction.samples import (
    LESION,
    NOT_LESION,
    UNMARKED,
    CorrectionError,
    accept_lesion,
    empty_corrections,
    reject_lesion,
    sample_targets,
    select_samples,
)
from napari_metseg.correction.workspace import Workspace, WorkspaceError

__all__ = [
    "LESION",
    "NOT_LESION",
    "UNMARKED",
    "CorrectionError",
    "FinetuneConfig",
    "FinetuneResult",
    "Workspace",
    "WorkspaceError",
    "accept_lesion",
    "correction_loss",
    "empty_corrections",
    "finetune",
    "reject_lesion",
    "sample_targets",
    "select_samples",
]
