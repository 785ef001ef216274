"""The reproduction harness end to end at its smoke budget (tiny phantoms, 2 iterations)."""

from __future__ import annotations

import json
import signal
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import report, reproduce  # noqa: E402


@pytest.mark.slow
def test_smoke_reproduction_writes_every_table_and_resumes(tmp_path, one_thread):
    doc, figure, runs = tmp_path / "experiments.md", tmp_path / "bars.png", tmp_path / "runs"
    argv = ["--preset", "smoke", "--jobs", "1", "--runs", str(runs), "--doc", str(doc)]
    assert reproduce.main([*argv, "--figure", str(figure)]) == 0
    text = doc.read_text()
    for heading in ("(a) Sequence dropout", "(b) Censor-one-out", "(c) Half of the training"):
        assert heading in text
    assert text.count("| `") >= 4 and figure.stat().st_size > 0
    results = json.loads((runs / "smoke" / "results.json").read_text())
    assert set(results) == {run.name for run in reproduce.RUNS}
    assert set(results["dropout"]) == {"none", "bravo", "cube_pre", "cube_post", "flair"}
    assert set(results["no_dropout"]) == {"none", "bravo"}
    censoring = json.loads((runs / "smoke" / "size_ce" / "censoring.json").read_text())
    assert censoring["train"]["n_removed"] > 0
    # a second call finds every network trained and only scores them again
    stamp = (runs / "smoke" / "dropout" / "summary.json").stat().st_mtime_ns
    assert reproduce.main([*argv, "--figure", str(figure)]) == 0
    assert (runs / "smoke" / "dropout" / "summary.json").stat().st_mtime_ns == stamp


def test_budget_overrides_are_typed_and_checked(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--set", "colour=red"])
    assert "unknown setting 'colour'" in capsys.readouterr().err
    config = reproduce.train_config(reproduce.PRESETS["smoke"], reproduce.RUNS[4], Path("runs"))
    assert config.loss == "lopsided_bootstrap" and config.beta == 0.1 and config.alpha == 3.0
    assert config.censor_rate == 0.5 and config.size == 32 and config.resume


def test_sigterm_ends_the_worker_processes_too():
    worker = get_context("spawn").Process(target=time.sleep, args=(60,))
    worker.start()
    with pytest.raises(SystemExit) as stopped:
        reproduce.stop_workers(signal.SIGTERM)
    worker.join(timeout=10)
    assert not worker.is_alive() and stopped.value.code == 128 + signal.SIGTERM


def _results(sensitivity: dict[str, float], lost_map: dict[str, float]) -> dict:
    """Scores as ``collect`` returns them: max sensitivity per ``run`` or ``run/off``, and
    the dropout network's mAP with each sequence off (``lost_map``)."""

    def scores(value: float, average_precision: float = 0.5) -> dict[str, float]:
        return {"max_sensitivity": value, "average_precision": average_precision}

    results: dict = {run.name: {} for run in reproduce.RUNS}
    for key, value in sensitivity.items():
        run, _, off = key.partition("/")
        results[run][off or "none"] = scores(value)
    for name, average_precision in lost_map.items():
        results["dropout"].setdefault(name, scores(0.5))["average_precision"] = average_precision
    return results


AGREEING = {
    "no_dropout": 0.9,
    "no_dropout/bravo": 0.1,
    "dropout": 0.8,
    "dropout/bravo": 0.7,
    "without_bravo": 0.75,
    "stochastic_ce": 0.2,
    "stochastic_lopsided": 0.72,
    "size_ce": 0.2,
    "size_lopsided": 0.7,
}
RANKED = {"bravo": 0.1, "cube_pre": 0.2, "cube_post": 0.4, "flair": 0.6}


def test_verdicts_follow_their_rules():
    rows = report.verdicts(_results(AGREEING, RANKED))
    assert [agrees for _, _, agrees in rows] == ["yes"] * 5
    assert (
        "0.90 -> 0.10" in rows[0][1] and "`bravo`, `cube_pre`, `cube_post`, `flair`" in rows[2][1]
    )
    assert "weighted CE 25%, lopsided bootstrap 90%" in rows[3][1]
    disagreeing = AGREEING | {
        "no_dropout/bravo": 0.6,  # no collapse: more than half kept
        "dropout/bravo": 0.5,  # below 80 % of the dedicated network
        "stochastic_lopsided": 0.3,  # helps, but by less than 20 points
        "size_lopsided": 0.1,  # worse than weighted CE
    }
    flipped = {"bravo": 0.1, "cube_pre": 0.6, "cube_post": 0.2, "flair": 0.4}  # flair not last
    rows = report.verdicts(_results(disagreeing, flipped))
    assert [agrees for _, _, agrees in rows] == ["no", "no", "no", "partly", "no"]
