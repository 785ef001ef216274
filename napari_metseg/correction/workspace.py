"""A per-case workspace: model versions made by fine-tuning, undo / redo, autosaved strokes.

Layout of a workspace folder::

    workspace.json        case name and grid, base model (path + SHA-256),
                          current version, redo stack
    corrections.npz       the user's strokes (autosaved, atomically)
    versions/v001/
        model/            the fine-tuned model (safetensors + config.json)
        corrections.npz   the corrections it was trained on
        version.json      parent version, settings, metrics, time

The base model is only ever read: version ``"base"`` stands for it. Every
fine-tuning round writes a new version whose parent is the current one and
makes it current; :meth:`Workspace.undo` goes back to the parent and
:meth:`Workspace.redo` forward again (a new round after an undo drops the redo
stack, as in an editor; the versions stay on disk). A cancelled round writes
nothing, so the previous version stays current, and the strokes were saved
before it started. Every file is written to a temporary file beside it and
renamed, and a version is built in a temporary folder renamed into place, so a
crash never leaves a half-written file or version: reading ignores the leftover
temporaries (``.*.tmp``), and the last good strokes and versions stay.

Where a case's workspace lives: :func:`workspace_folder`, ``<root>/case-<hash>``
of its grid, its images and its base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_metseg.case import Case, Geometry
from napari_metseg.correction.cache import CaseContext, RoundInputs
from napari_metseg.correction.finetune import FinetuneConfig, FinetuneResult, finetune
from napari_metseg.correction.samples import check_corrections, empty_corrections
from napari_metseg.correction.storage import (
    file_digest,
    read_corrections,
    write_corrections,
    write_json,
)
from napari_metseg.engine import Presence
from napari_metseg.errors import ModelFileError, WorkspaceError
from napari_metseg.model import MetsegNet, load_model, save_model
from napari_metseg.model.files import default_model_path
from napari_metseg.preprocess import fed_sequences, prepare_case
from napari_metseg.progress import ProgressCallback

logger = logging.getLogger(__name__)

FORMAT = "napari-metseg-workspace/1"
#: Environment variable naming the folder that holds the per-case workspaces.
WORKSPACES_ENV = "METSEG_WORKSPACES"
BASE = "base"
STATE = "workspace.json"
CORRECTIONS = "corrections.npz"
VERSIONS = "versions"


def workspace_folder(
    root: str | os.PathLike, geometry: Geometry, images_digest: str, base_model: Path | None
) -> Path:
    """The workspace folder of a case: ``root/case-<hash of grid, images and base model>``.

    ``images_digest`` is the :func:`~napari_metseg.case.fingerprint` of every image
    assigned to a sequence, switched on or not, so switching one off keeps the
    workspace. The same images with the same base model find the same folder
    again (the corrections and versions come back); other images, even on an
    identical grid, or another model get their own.
    """
    base = default_model_path() if base_model is None else Path(base_model).resolve()
    identity = {
        "images": images_digest,
        "shape": [int(s) for s in geometry.shape],
        "affine": np.round(np.asarray(geometry.affine, dtype=np.float64), 4).tolist(),
        "base_model": str(base),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Path(root) / f"case-{digest[:12]}"


class Workspace:
    """Model versions and corrections of one case, kept in ``folder``.

    Open an existing folder with ``Workspace(folder)``; create one with
    ``Workspace(folder, base_model=..., shape=case.shape, case_name=case.name)``
    (``base_model`` None or ``"default"``: the bundled model). Reopening
    restores the corrections, the versions and the current version.

    Between rounds on the same :class:`~napari_metseg.case.Case` object and
    presence it keeps the base model, the prepared case and fast mode's cache
    (:class:`RoundInputs`, 0.6 GB on the sample case), so a round neither
    loads, prepares nor caches again; :meth:`drop_inputs` frees them.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        base_model: str | os.PathLike | None = None,
        shape: Sequence[int] | None = None,
        case_name: str = "case",
    ) -> None:
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._inputs: RoundInputs | None = None
        state_file = self.folder / STATE
        if state_file.exists():
            self._state = self._read_state(state_file)
            if shape is not None and tuple(shape) != tuple(self._state["shape"]):
                raise WorkspaceError(
                    f"{self.folder}: workspace of a case with grid {tuple(self._state['shape'])}, "
                    f"not {tuple(shape)}"
                )
        else:
            if shape is None:
                raise WorkspaceError(
                    f"{self.folder}: no workspace there; give the case's grid shape to create one"
                )
            if base_model is None or str(base_model) == "default":
                base_path = default_model_path()
            else:
                base_path = Path(base_model).resolve()
            if not base_path.exists():
                raise ModelFileError(f"{base_path}: no model there")
            self.folder.mkdir(parents=True, exist_ok=True)
            self._state = {
                "format": FORMAT,
                "case": case_name,
                "shape": [int(s) for s in shape],
                "base_model": str(base_path),
                "base_sha256": file_digest(base_path),
                "current": BASE,
                "redo": [],
            }
            self._save_state()
        corrections_file = self.folder / CORRECTIONS
        if corrections_file.exists():
            self._corrections = check_corrections(
                read_corrections(corrections_file), self.shape
            ).copy()
        else:
            self._corrections = empty_corrections(self.shape)

    @staticmethod
    def _read_state(path: Path) -> dict[str, Any]:
        try:
            state = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise WorkspaceError(f"{path}: unreadable workspace state: {error}") from error
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise WorkspaceError(f"{path}: not a napari-metseg workspace")
        return state

    def _save_state(self) -> None:
        write_json(self.folder / STATE, self._state)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid ``(slice, row, col)`` of the case the workspace belongs to."""
        return tuple(self._state["shape"])

    @property
    def base_model(self) -> Path:
        """The base model file (never written)."""
        return Path(self._state["base_model"])

    @property
    def versions(self) -> list[str]:
        """``"base"`` and every version on disk, oldest first (``v001``, ``v002``...)."""
        root = self.folder / VERSIONS
        found = sorted(p.name for p in root.glob("v[0-9]*") if (p / "version.json").exists())
        return [BASE, *found]

    @property
    def current(self) -> str:
        """The active version."""
        return self._state["current"]

    @property
    def can_undo(self) -> bool:
        return self.current != BASE

    @property
    def can_redo(self) -> bool:
        return bool(self._state["redo"])

    def info(self, version: str) -> dict[str, Any]:
        """The record of ``version``: parent, settings, metrics, time (base: its path)."""
        if version == BASE:
            return {"id": BASE, "parent": None, "path": str(self.base_model)}
        path = self.folder / VERSIONS / version / "version.json"
        if not path.exists():
            raise WorkspaceError(f"{self.folder}: no version {version!r}; have {self.versions}")
        return json.loads(path.read_text())

    def model_path(self, version: str | None = None) -> Path:
        """Where the model of ``version`` (default: current) is stored."""
        version = version or self.current
        self.info(version)
        return self.base_model if version == BASE else self.folder / VERSIONS / version / "model"

    def load_model(self, version: str | None = None, device: str = "cpu") -> MetsegNet:
        """The model of ``version`` (default: the current one)."""
        return load_model(self.model_path(version), device=device)

    @property
    def corrections(self) -> np.ndarray:
        """The current strokes, uint8 on the case grid (a copy)."""
        with self._lock:
            return self._corrections.copy()

    def set_corrections(self, corrections: np.ndarray) -> bool:
        """Replace the strokes and autosave them (atomically) to ``corrections.npz``.

        Returns False, writing nothing, when they equal the saved ones: a
        viewer may ask after every redraw, and comparing costs far less than
        writing.
        """
        path = self.folder / CORRECTIONS
        with self._lock:
            if path.exists() and np.array_equal(corrections, self._corrections):
                return False
        checked = check_corrections(corrections, self.shape).copy()
        with self._lock:
            write_corrections(path, checked)
            self._corrections = checked
        return True

    def version_corrections(self, version: str) -> np.ndarray:
        """The corrections ``version`` was trained on."""
        if version == BASE:
            return empty_corrections(self.shape)
        self.info(version)
        return read_corrections(self.folder / VERSIONS / version / CORRECTIONS)

    def add_version(
        self,
        model: MetsegNet,
        corrections: np.ndarray,
        settings: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> str:
        """Store ``model`` as a new version, child of the current one, and make it current."""
        corrections = check_corrections(corrections, self.shape)
        root = self.folder / VERSIONS
        root.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name[1:]) for p in root.glob("v[0-9]*") if p.name[1:].isdigit()]
        version = f"v{max(taken, default=0) + 1:03d}"
        parent = self.current
        record = {
            "id": version,
            "parent": parent,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "settings": settings or {},
            "metrics": metrics or {},
            "n_lesion_marks": int(np.count_nonzero(corrections == 1)),
            "n_not_lesion_marks": int(np.count_nonzero(corrections == 2)),
        }
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{version}.", suffix=".tmp"))
        try:
            save_model(
                model,
                staging / "model",
                {"finetune": {"case": self._state["case"], "version": version, "parent": parent}},
            )
            write_corrections(staging / CORRECTIONS, corrections)
            write_json(staging / "version.json", record)
            os.replace(staging, root / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._state["current"] = version
        self._state["redo"] = []
        self._save_state()
        logger.info("workspace %s: version %s (parent %s)", self.folder, version, parent)
        return version

    def finetune(
        self,
        case: Case,
        config: FinetuneConfig | None = None,
        present: Presence = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        *,
        reference: np.ndarray | None = None,
        context: CaseContext | None = None,
    ) -> FinetuneResult:
        """One round: fine-tune the base model on every current stroke, store a version.

        Every round starts from the base model with all strokes so far (they
        accumulate), so rounds do not compound each other's drift and the
        trust region always holds the round against the base prediction
        (``reference``: the base model's probability with this presence,
        when the caller has it). ``context``: fast mode's cache of this
        ``case`` object, made by a model loaded from the base model file and
        used as this round's base model (a run's
        :func:`~napari_metseg.correction.cache.segment_keeping_context`; the
        caller vouches for both, as for ``reference``: a model's ``metadata``
        path is its training run's, not proof of the file it came from), so
        the round does not compute it again; with another presence it is
        not used. The strokes are saved first; when ``cancel``
        stops the round (:class:`~napari_metseg.errors.Cancelled`) or the
        round is refused, nothing else is written and the current version
        stays active.
        """
        config = config or FinetuneConfig()
        corrections = self.corrections
        with self._lock:
            write_corrections(self.folder / CORRECTIONS, corrections)
        if context is not None:
            self._inputs = RoundInputs(case, context.model, context.prepared, context)
        inputs = self._round_inputs(case, present)
        result = finetune(
            case,
            inputs.model,
            corrections,
            config,
            present,
            progress,
            cancel,
            prepared=inputs.prepared,
            reference=reference,
            cache=inputs.cache,
        )
        if result.cache is not None:  # a full round keeps the fast cache it did not use
            inputs.cache = result.cache
        self.add_version(result.model, corrections, config.to_dict(), result.metrics())
        return result

    def drop_inputs(self) -> None:
        """Free the base model, prepared case and cache kept for the next round."""
        self._inputs = None

    def _round_inputs(self, case: Case, present: Presence) -> RoundInputs:
        """The kept inputs when they are of this ``case`` object and presence, else new ones
        (the base model stays loaded)."""
        kept = self._inputs
        model = kept.model if kept is not None else self.load_model(BASE)
        flags = fed_sequences(case, model.config.sequences, present)
        if (
            kept is None
            or kept.case is not case
            or not np.array_equal(kept.prepared.present, flags)
        ):
            prepared = prepare_case(case, model.config.sequences, flags, model.config.preprocess)
            self._inputs = kept = RoundInputs(case, model, prepared)
        return kept

    def undo(self) -> str:
        """Make the parent of the current version current; returns it."""
        if not self.can_undo:
            raise WorkspaceError("nothing to undo: the base model is active")
        self._state["redo"].append(self.current)
        self._state["current"] = self.info(self.current)["parent"]
        self._save_state()
        return self.current

    def redo(self) -> str:
        """Go forward to the version the last undo left; returns it."""
        if not self.can_redo:
            raise WorkspaceError("nothing to redo")
        self._state["current"] = self._state["redo"].pop()
        self._save_state()
        return self.current

    def select(self, version: str) -> str:
        """Make ``version`` current (the user picked it); going back to an ancestor of the
        current version keeps the way forward on the redo stack, so Redo returns to it."""
        self.info(version)
        chain, step = [], self.current
        while step not in (None, version):
            chain.append(step)
            step = self.info(step)["parent"]
        self._state["redo"] = chain if step == version else []
        self._state["current"] = version
        self._save_state()
        return version

    def export(self, version: str, path: str | os.PathLike) -> Path:
        """Write the model of ``version`` to ``path`` (a ``.safetensors`` file or a folder)."""
        model = self.load_model(version)
        return save_model(
            model, path, {"exported_from": {"workspace": str(self.folder), "version": version}}
        )
