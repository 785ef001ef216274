"""Cohort segmentation: same files as one case at a time, resume, bad cases, shares, layouts."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_metseg.cli import main
from napari_metseg.cohort import Share, segment_cohort
from napari_metseg.engine import Segmenter
from napari_metseg.io.cases import list_cases
from napari_metseg.model import load_model
from napari_metseg.phantom import write_phantom

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    for seed in (1, 2, 3):
        write_phantom(folder / f"case{seed}", seed=seed, n_lesions=2, spacing=6.0, name=f"c{seed}")
    return folder


def _segmenter(tiny_model_path) -> Segmenter:
    # as `metseg segment` builds it, so cohort and single-case outputs compare bit for bit
    return Segmenter(load_model(tiny_model_path), "cpu", fold_batchnorm=True)


def test_cohort_outputs_equal_single_case_outputs(cohort, tiny_model_path, tmp_path) -> None:
    result = segment_cohort(cohort, _segmenter(tiny_model_path), tmp_path / "all")
    assert result.summary["status"].tolist() == ["done"] * 3
    assert result.path == tmp_path / "all" / "summary.csv"
    assert list(pd.read_csv(result.path)["case"]) == ["case1", "case2", "case3"]
    for name in ("case1", "case3"):
        single = tmp_path / f"single_{name}"
        code = main(
            ["segment", str(cohort / name), "--model", str(tiny_model_path)]
            + ["--out", str(single), "--no-progress", "--device", "cpu"]
        )
        assert code == 0
        for file in ("probability.nii.gz", "mask.nii.gz"):
            together = nib.load(tmp_path / "all" / name / file)
            alone = nib.load(single / file)
            np.testing.assert_array_equal(np.asarray(together.dataobj), np.asarray(alone.dataobj))
            np.testing.assert_array_equal(together.affine, alone.affine)
        assert (tmp_path / "all" / name / "lesions.csv").read_text() == (
            single / "lesions.csv"
        ).read_text()
    record = json.loads((tmp_path / "all" / "case2" / "segmentation.json").read_text())
    assert set(record["stages"]) >= {"read", "preprocess", "network", "restore", "write"}


def test_cohort_resumes_and_reports_a_bad_case(cohort, tiny_model_path, tmp_path) -> None:
    folder = tmp_path / "cases"
    shutil.copytree(cohort, folder)
    (folder / "broken").mkdir()
    (folder / "broken" / "x_bravo.nii.gz").write_bytes(b"not a gzip file")
    out = tmp_path / "out"
    segmenter = _segmenter(tiny_model_path)
    first = segment_cohort(folder, segmenter, out).summary.set_index("case")
    assert first.loc["broken", "status"] == "failed" and "x_bravo" in first.loc["broken", "error"]
    assert (first.drop("broken")["status"] == "done").all()
    assert first.loc["case1", "sequences"] == "bravo;cube_pre;cube_post;flair"
    stamp = (out / "case2" / "mask.nii.gz").stat().st_mtime_ns
    again = segment_cohort(folder, segmenter, out).summary.set_index("case")
    assert (again.drop("broken")["status"] == "skipped").all()
    assert again.loc["case2", "lesions"] == first.loc["case2", "lesions"]
    assert (out / "case2" / "mask.nii.gz").stat().st_mtime_ns == stamp
    redo = segment_cohort(folder, segmenter, out, overwrite=True).summary
    assert (redo.set_index("case").drop("broken")["status"] == "done").all()


def test_ranks_share_the_cases(cohort, tiny_model_path, tmp_path) -> None:
    segmenter = _segmenter(tiny_model_path)
    first = segment_cohort(cohort, segmenter, tmp_path, share=Share(0, 2))
    second = segment_cohort(cohort, segmenter, tmp_path, share=Share(1, 2))
    assert first.summary["case"].tolist() == ["case1", "case3"]
    assert second.summary["case"].tolist() == ["case2"]
    assert first.path.name == "summary_rank0.csv" and second.path.name == "summary_rank1.csv"


def test_list_cases_recognises_layouts(cohort, tmp_path) -> None:
    assert [name for name, _ in list_cases(cohort)] == ["case1", "case2", "case3"]
    assert list_cases(cohort / "case2") == [("case2", cohort / "case2")]
    images = tmp_path / "Dataset001" / "imagesTs"
    images.mkdir(parents=True)
    (images.parent / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1c"}}))
    for name in ("b_0000.nii.gz", "a_0000.nii.gz", "a_0001.nii.gz"):
        (images / name).write_bytes(b"")
    cases = list_cases(images.parent)
    assert [name for name, _ in cases] == ["a", "b"]
    assert [p.name for p in cases[0][1]] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no case folders"):
        list_cases(tmp_path / "empty")


def test_cli_segments_a_cohort_folder(cohort, tiny_model_path, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["segment", str(cohort), "--model", str(tiny_model_path), "--out", str(out)]
    assert main(args + ["--no-progress", "--device", "cpu"]) == 0
    assert "3 segmented" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["case1", "case2", "case3", "summary.csv"]
    assert main(args + ["--no-progress", "--device", "cpu"]) == 0
    assert "3 done before" in capsys.readouterr().out
