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

from experiments import reproduce  # noqa: E402


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
