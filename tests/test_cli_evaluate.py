"""metseg evaluate: pairing by name, output files, printed table, user errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from napari_metseg.cli import main
from napari_metseg.cli.evaluate import find_pairs

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # RAS file, 2 mm slices


def save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)


def lesions(shape=(16, 16, 8)):
    """A truth with two lesions (file order x, y, z) and a probability that finds one."""
    truth = np.zeros(shape, np.uint8)
    truth[2:5, 2:5, 2:4] = 1
    truth[10:12, 10:12, 5] = 1
    probability = np.zeros(shape, np.float32)
    probability[2:5, 2:5, 2:4] = 0.9
    probability[12:15, 1:3, 6] = 0.4  # a false positive
    return truth, probability


@pytest.fixture
def folders(tmp_path):
    """Two cases in both layouts: case folders for ``a``, flat files for ``b``."""
    truth, probability = lesions()
    save(tmp_path / "pred" / "a" / "probability.nii.gz", probability)
    save(tmp_path / "pred" / "b_probability.nii.gz", probability)
    save(tmp_path / "pred" / "c_probability.nii.gz", probability)  # no truth
    save(tmp_path / "truth" / "a" / "a-seg.nii.gz", truth)
    save(tmp_path / "truth" / "a" / "a-t1c.nii.gz", probability)  # an image, not a mask
    save(tmp_path / "truth" / "b_seg.nii.gz", truth)
    save(tmp_path / "truth" / "b_flair.nii.gz", probability)
    return tmp_path


def test_pairs_cases_by_name_across_layouts(folders, caplog):
    pairs = find_pairs(folders / "pred", folders / "truth")
    assert [(name, p.name, t.name) for name, p, t in pairs] == [
        ("a", "probability.nii.gz", "a-seg.nii.gz"),
        ("b", "b_probability.nii.gz", "b_seg.nii.gz"),
    ]
    assert "case c has no truth mask" in caplog.text


def test_evaluate_writes_tables_summary_and_plots(folders, capsys):
    out = folders / "out"
    code = main(["evaluate", str(folders / "pred"), str(folders / "truth"), "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {
        "cases.csv",
        "candidates.csv",
        "lesions.csv",
        "summary.json",
        "pr_curve.png",
        "roc_curve.png",
        "sensitivity_by_size.png",
    }
    cases = pd.read_csv(out / "cases.csv")
    assert cases["name"].tolist() == ["a", "b"]
    assert cases["n_lesions"].tolist() == [2, 2]
    assert cases["n_candidates"].tolist() == [2, 2]
    # ranking: the lesion (0.9, TP), the false positive (0.4): AP = 1/2 * 1
    assert cases["average_precision"].tolist() == pytest.approx([0.5, 0.5])
    assert cases["false_positives"].tolist() == [0, 0]  # the FP is below the 0.5 cut
    candidates = pd.read_csv(out / "candidates.csv")
    assert list(candidates.columns[:2]) == ["case", "label"]
    assert candidates["is_tp"].tolist() == [True, False, True, False]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["n_lesions"] == 4
    assert summary["dataset"]["max_sensitivity"] == pytest.approx(0.5)
    assert summary["settings"]["threshold"] == 0.5
    assert (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "pooled over 2 cases: mAP 0.500" in printed


def test_threshold_option_reaches_the_voxel_scores(folders):
    out = folders / "low"
    main(["evaluate", str(folders / "pred"), str(folders / "truth"), "--out", str(out),
          "--threshold", "0.3"])  # fmt: skip
    cases = pd.read_csv(out / "cases.csv")
    assert cases["false_positives"].tolist() == [1, 1]
    # the 6-voxel false positive is 12 mm^3: it also passes the 10 mm^3 limit
    assert cases["false_positives_min_volume"].tolist() == [1, 1]


def test_user_errors_end_in_one_line_and_exit_code_2(tmp_path, capsys):
    truth, probability = lesions()
    save(tmp_path / "pred" / "a_probability.nii.gz", probability)
    save(tmp_path / "truth" / "a_seg.nii.gz", truth, affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out", str(tmp_path)]
    assert main(args) == 2
    assert "not on the same grid" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "truth"), str(tmp_path / "pred"), "--out", "x"]) == 2
    assert "no <case>/probability.nii.gz" in capsys.readouterr().err
    save(tmp_path / "pred" / "a_probability.nii.gz", probability * 255)
    save(tmp_path / "truth" / "a_seg.nii.gz", truth)
    assert main(args) == 2
    assert "values span [0, 229.5]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "p", "t", "--out", "o", "--threshold", "1.5"])
    with pytest.raises(SystemExit):
        main(["evaluate", "p", "t", "--out", "o", "--hit-distance", "-1"])


def test_truth_labels_select_which_values_are_lesion(tmp_path):
    truth, probability = lesions()
    truth[10:12, 10:12, 5] = 2  # the second lesion becomes "oedema"
    save(tmp_path / "pred" / "a_probability.nii.gz", probability)
    save(tmp_path / "truth" / "a_seg.nii.gz", truth)
    base = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out"]
    assert main([*base, str(tmp_path / "all")]) == 0
    assert main([*base, str(tmp_path / "one"), "--truth-labels", "1,3"]) == 0
    assert pd.read_csv(tmp_path / "all" / "cases.csv")["n_lesions"].tolist() == [2]
    assert pd.read_csv(tmp_path / "one" / "cases.csv")["n_lesions"].tolist() == [1]
    with pytest.raises(SystemExit):
        main([*base, "x", "--truth-labels", "one"])
