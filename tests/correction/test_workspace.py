"""Workspace: versions, base model never written, undo / redo, autosave, cancel; metseg finetune."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from napari_metseg.case import SEQUENCES, Case, Geometry, fingerprint
from napari_metseg.cli import main
from napari_metseg.correction import (
    LESION,
    NOT_LESION,
    FinetuneConfig,
    Workspace,
    WorkspaceError,
    empty_corrections,
)
from napari_metseg.correction.storage import file_digest
from napari_metseg.correction.workspace import workspace_folder
from napari_metseg.errors import Cancelled
from napari_metseg.io import write_volume
from napari_metseg.model import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = FinetuneConfig(mode="fast", iterations=3, device="cpu")


@pytest.fixture(scope="module")
def case() -> Case:
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:24, :24]
    head = ((rows - 12) ** 2 + (cols - 12) ** 2 < 11**2).astype(np.float32)
    images = {name: (0.5 + rng.random((6, 24, 24), dtype=np.float32)) * head for name in SEQUENCES}
    geometry = Geometry((6, 24, 24), np.diag([2.0, 1.0, 1.0, 1.0]), (6, 24, 24), np.eye(4))
    return Case(images, geometry, name="tiny")


def marks() -> np.ndarray:
    corrections = empty_corrections((6, 24, 24))
    corrections[2, 10:12, 10] = LESION
    corrections[3, 5, 5] = NOT_LESION
    return corrections


def test_rounds_make_versions_and_never_touch_the_base(tmp_path, case, tiny_model_path) -> None:
    base_hash = file_digest(tiny_model_path)
    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    assert space.versions == ["base"] and space.current == "base" and not space.can_undo
    space.set_corrections(marks())
    result = space.finetune(case, FAST)
    assert space.current == "v001" and space.info("v001")["parent"] == "base"
    assert space.info("v001")["metrics"]["corrected_loss_before"] == result.corrected_loss_before
    np.testing.assert_array_equal(space.version_corrections("v001"), marks())
    space.finetune(case, FAST)
    assert space.versions == ["base", "v001", "v002"] and space.info("v002")["parent"] == "v001"
    assert file_digest(tiny_model_path) == base_hash

    tuned = space.load_model()
    assert space.undo() == "v001"
    assert space.undo() == "base"
    with pytest.raises(WorkspaceError, match="undo"):
        space.undo()
    assert space.model_path() == tiny_model_path.resolve()
    assert space.redo() == "v001" and space.redo() == "v002" and not space.can_redo
    redone = space.load_model()
    for name, tensor in tuned.state_dict().items():
        torch.testing.assert_close(redone.state_dict()[name], tensor)

    space.undo()
    space.finetune(case, FAST)  # a new round after an undo drops the redo stack
    assert space.current == "v003" and space.info("v003")["parent"] == "v001"
    assert not space.can_redo

    exported = space.export("v002", tmp_path / "export.safetensors")
    again = load_model(exported)
    for name, tensor in tuned.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor)
    assert file_digest(tiny_model_path) == base_hash


def test_corrections_autosave_and_reload(tmp_path, case, tiny_model_path) -> None:
    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    assert space.set_corrections(marks())
    written = (tmp_path / "ws" / "corrections.npz").stat().st_mtime_ns
    assert not space.set_corrections(marks())  # unchanged: nothing written
    assert (tmp_path / "ws" / "corrections.npz").stat().st_mtime_ns == written
    space.finetune(case, FAST)
    del space
    reopened = Workspace(tmp_path / "ws")
    np.testing.assert_array_equal(reopened.corrections, marks())
    assert reopened.current == "v001" and reopened.shape == case.shape
    assert not list((tmp_path / "ws").glob(".*tmp"))  # no temporary file left behind
    with pytest.raises(WorkspaceError, match="grid"):
        Workspace(tmp_path / "ws", shape=(6, 24, 25))
    with pytest.raises(WorkspaceError, match="no workspace"):
        Workspace(tmp_path / "elsewhere")


def test_cancel_keeps_the_version_and_the_strokes(tmp_path, case, tiny_model_path) -> None:
    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    space.set_corrections(marks())
    space.finetune(case, FAST)
    strokes = marks()
    strokes[4, 12, 12] = LESION
    space.set_corrections(strokes)
    cancel = threading.Event()

    def progress(done: int, total: int, message: str) -> None:
        cancel.set()

    config = FinetuneConfig(mode="fast", iterations=50, device="cpu")
    with pytest.raises(Cancelled):
        space.finetune(case, config, progress=progress, cancel=cancel)
    assert space.current == "v001" and space.versions == ["base", "v001"]
    np.testing.assert_array_equal(Workspace(tmp_path / "ws").corrections, strokes)


def test_metseg_finetune_writes_a_new_model(tmp_path, case, tiny_model_path) -> None:
    folder = tmp_path / "case"
    for name, image in case.images.items():
        write_volume(folder / f"tiny_{name}.nii.gz", image, case.geometry)
    write_volume(tmp_path / "corrections.nii.gz", marks(), case.geometry, kind="mask")
    base_hash = file_digest(tiny_model_path)
    out = tmp_path / "tuned"
    code = main(
        [
            "finetune",
            str(folder),
            "--corrections",
            str(tmp_path / "corrections.nii.gz"),
            "--model",
            str(tiny_model_path),
            "--out",
            str(out),
            "--iterations",
            "2",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    tuned = load_model(out)
    assert tuned.metadata["finetune"]["mode"] == "fast"
    assert file_digest(tiny_model_path) == base_hash
    write_volume(tmp_path / "empty.nii.gz", np.zeros(case.shape), case.geometry, kind="mask")
    code = main(
        ["finetune", str(folder), "--corrections", str(tmp_path / "empty.nii.gz")]
        + ["--model", str(tiny_model_path), "--out", str(out), "--no-progress"]
    )
    assert code == 2


def test_a_crash_before_the_rename_keeps_the_last_good_strokes(
    tmp_path, case, tiny_model_path, monkeypatch
) -> None:
    """The autosave dies between writing its temporary file and renaming it: the saved
    strokes stay the last good ones, the workspace opens, and the next save writes."""
    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    space.set_corrections(marks())
    newer = marks()
    newer[4, 12, 12] = LESION

    def crash(source, target):
        raise OSError("simulated crash before the rename")

    with monkeypatch.context() as patch:
        patch.setattr("napari_metseg.correction.workspace.os.replace", crash)
        with pytest.raises(OSError, match="simulated"):
            space.set_corrections(newer)
    np.testing.assert_array_equal(Workspace(tmp_path / "ws").corrections, marks())
    np.testing.assert_array_equal(space.corrections, marks())  # memory follows the disk
    assert space.set_corrections(newer)  # not taken for "unchanged": written now
    np.testing.assert_array_equal(Workspace(tmp_path / "ws").corrections, newer)


def test_leftover_temporaries_of_a_killed_process_are_ignored(
    tmp_path, case, tiny_model_path
) -> None:
    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    space.set_corrections(marks())
    space.finetune(case, FAST)
    folder = tmp_path / "ws"
    (folder / ".corrections.npz.k1ll3d.tmp").write_bytes(b"half a file")
    (folder / ".workspace.json.k1ll3d.tmp").write_text('{"format": ')
    half = folder / "versions" / ".v002.k1ll3d.tmp"
    (half / "model").mkdir(parents=True)
    reopened = Workspace(folder)
    assert reopened.versions == ["base", "v001"] and reopened.current == "v001"
    np.testing.assert_array_equal(reopened.corrections, marks())
    reopened.finetune(case, FAST)
    assert reopened.versions == ["base", "v001", "v002"]
    assert reopened.info("v002")["parent"] == "v001"


def test_a_failed_version_write_leaves_no_version(
    tmp_path, case, tiny_model_path, monkeypatch
) -> None:
    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    space.set_corrections(marks())

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("napari_metseg.correction.workspace.write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        space.finetune(case, FAST)
    monkeypatch.undo()
    reopened = Workspace(tmp_path / "ws")
    assert reopened.versions == ["base"] and reopened.current == "base"
    assert not list((tmp_path / "ws" / "versions").iterdir())


def test_select_goes_back_to_base_and_redo_returns(tmp_path, case, tiny_model_path) -> None:
    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    space.set_corrections(marks())
    space.finetune(case, FAST)
    space.finetune(case, FAST)
    assert space.select("base") == "base" and Workspace(tmp_path / "ws").current == "base"
    assert space.redo() == "v001" and space.redo() == "v002" and not space.can_redo
    space.select("v001")
    assert space.current == "v001" and space.can_redo
    with pytest.raises(WorkspaceError, match="no version"):
        space.select("v009")


def test_workspace_folder_follows_the_grid_images_and_base_model(tmp_path, case, tiny_model_path):
    geometry, images = case.geometry, fingerprint(case.images)
    folder = workspace_folder(tmp_path, geometry, images, tiny_model_path)
    assert folder == workspace_folder(tmp_path, geometry, images, tiny_model_path)
    assert folder.parent == tmp_path and folder.name.startswith("case-")
    assert folder != workspace_folder(tmp_path, geometry, images, None)
    shifted = geometry.affine.copy()
    shifted[0, 3] += 10.0
    moved = dataclasses.replace(geometry, affine=shifted)
    assert folder != workspace_folder(tmp_path, moved, images, tiny_model_path)
    # another patient on the very same grid must not see this one's strokes
    other = fingerprint({name: image[::-1] for name, image in case.images.items()})
    assert folder != workspace_folder(tmp_path, geometry, other, tiny_model_path)


def test_rounds_on_one_case_keep_the_prepared_case_and_cache(
    tmp_path, case, tiny_model_path, builds, monkeypatch
) -> None:
    from napari_metseg.correction import workspace as module

    prepared = []
    real_prepare = module.prepare_case
    monkeypatch.setattr(
        module, "prepare_case", lambda *a, **k: prepared.append(1) or real_prepare(*a, **k)
    )
    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    space.set_corrections(marks())
    space.finetune(case, FAST)
    space.finetune(case, FAST)
    assert len(builds) == 1 and len(prepared) == 1
    space.finetune(case, FAST, present=("bravo", "flair"))  # another presence: another cache
    assert builds[-1] == (True, False, False, True) and len(builds) == 2
    same_images = dataclasses.replace(case)  # another Case object (a new run): prepared anew
    space.finetune(same_images, FAST, present=("bravo", "flair"))
    assert len(builds) == 3 and len(prepared) == 3
    space.drop_inputs()
    space.finetune(same_images, FAST, present=("bravo", "flair"))
    assert len(builds) == 4


def test_a_round_uses_the_cache_a_run_kept_only_when_it_fits(
    tmp_path, case, tiny_model_path, builds
) -> None:
    from napari_metseg.correction.cache import segment_keeping_context

    space = Workspace(tmp_path / "ws", tiny_model_path, case.shape, case.name)
    space.set_corrections(marks())
    model = load_model(tiny_model_path)
    probability, kept = segment_keeping_context(case, model, None, "cpu")
    first = space.finetune(case, FAST, reference=probability, context=kept)
    assert builds == [] and first.cache is kept
    # the same round without the run's cache: the same model
    fresh = Workspace(tmp_path / "fresh", tiny_model_path, case.shape, case.name)
    fresh.set_corrections(marks())
    rebuilt = fresh.finetune(case, FAST, reference=probability)
    assert len(builds) == 1
    for name, tensor in rebuilt.model.state_dict().items():
        torch.testing.assert_close(first.model.state_dict()[name], tensor)

    _, switched_off = segment_keeping_context(case, model, ("bravo",), "cpu")
    space.finetune(case, FAST, context=switched_off)  # presence of the run != the round's
    assert builds[-1] == (True, True, True, True) and len(builds) == 2
