"""The training loop on tiny synthetic sets: learning, validation, cancel + resume, DDP.

Everything runs on 32 x 32 slices of 4 mm phantoms with the light backbone so
that each test takes seconds on two CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from napari_metseg.cli import main
from napari_metseg.errors import Cancelled, ReadError, SequenceError

model = pytest.importorskip("napari_metseg.model")
if not hasattr(model, "build_model"):
    pytest.skip("napari_metseg.model does not provide build_model yet", allow_module_level=True)

from napari_metseg.training import steps  # noqa: E402
from napari_metseg.training.config import TrainConfig  # noqa: E402
from napari_metseg.training.loop import train  # noqa: E402
from napari_metseg.training.run import mixed_precision  # noqa: E402
from napari_metseg.training.steps import validation_sets  # noqa: E402

TINY = {
    "synthetic_train": 2,
    "synthetic_seed": 11,
    "phantom_spacing": 4.0,
    "size": 32,
    "backbone": "light",
    "batch_size": 4,
    "lr": 2e-3,
    "lr_schedule": "constant",
    "device": "cpu",
}


def tiny(tmp_path: Path, **changes) -> TrainConfig:
    settings = TINY | {"out_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")}
    return TrainConfig().with_overrides(settings | changes)


def test_a_few_iterations_reduce_the_loss(tmp_path):
    result = train(tiny(tmp_path, iterations=40, log_interval=10, val_interval=40))
    log = pd.read_csv(result.out_dir / "log.csv")
    assert log["iteration"].tolist() == [10, 20, 30, 40]
    assert log["loss"].iloc[-1] < 0.7 * log["loss"].iloc[0]
    assert result.final_model.exists() and result.best_model is None
    shares = log.filter(like="saliency_").drop(columns="saliency_total").iloc[-1]
    assert shares.sum() == pytest.approx(2.0)  # per-sequence and per-offset shares each sum to 1


def test_a_run_can_start_from_a_model_file_of_the_same_architecture(tmp_path):
    first = train(tiny(tmp_path / "a", iterations=30, log_interval=10, val_interval=30))
    trained = pd.read_csv(first.out_dir / "log.csv")["loss"]
    settings = {"iterations": 5, "log_interval": 5, "val_interval": 5}
    fresh = train(tiny(tmp_path / "b", **settings))
    carried = train(tiny(tmp_path / "c", init=str(first.final_model), **settings))
    fresh_loss = pd.read_csv(fresh.out_dir / "log.csv")["loss"].iloc[0]
    carried_loss = pd.read_csv(carried.out_dir / "log.csv")["loss"].iloc[0]
    assert carried_loss < 0.7 * fresh_loss
    assert carried_loss < 1.5 * trained.iloc[-1]
    recorded = model.load_model(carried.final_model).metadata["training"]
    assert recorded["config"]["init"] == str(first.final_model)
    assert recorded["started_from"]["training"]["config"]["iterations"] == 30
    with pytest.raises(ReadError, match="head_channels=256 in the model"):
        train(tiny(tmp_path / "d", init=str(first.final_model), head_channels=64, **settings))


def test_mixed_precision_on_a_cpu_is_bfloat16_where_its_kernels_are_native(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert mixed_precision(True, cpu) is None  # emulated bf16 is slower than float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert mixed_precision(True, cpu) == torch.bfloat16
    assert mixed_precision(False, cpu) is None
    assert mixed_precision(True, torch.device("cuda")) == torch.float16
    result = train(tiny(tmp_path, iterations=40, log_interval=10, val_interval=40))
    log = pd.read_csv(result.out_dir / "log.csv")
    assert log["loss"].iloc[-1] < 0.7 * log["loss"].iloc[0]
    weights = model.load_model(result.final_model).state_dict().values()
    assert {t.dtype for t in weights if t.is_floating_point()} == {torch.float32}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_precision_on_cuda_learns_and_saves_a_cpu_loadable_model(tmp_path):
    result = train(tiny(tmp_path, iterations=40, log_interval=10, val_interval=20, device="cuda",
                        synthetic_val=1))  # fmt: skip
    log = pd.read_csv(result.out_dir / "log.csv")
    assert log["loss"].iloc[-1] < 0.7 * log["loss"].iloc[0]
    network = model.load_model(result.best_model, "cpu")
    assert next(network.parameters()).device.type == "cpu"


def _validated(tmp_path: Path, **changes):
    """A 4-step run validated twice without ``bravo``, and its ``validation.csv``."""
    result = train(
        tiny(
            tmp_path,
            iterations=4,
            val_interval=2,
            log_interval=2,
            synthetic_val=1,
            val_sequences=("cube_pre", "cube_post", "flair"),
            **changes,
        )
    )
    return result, pd.read_csv(result.out_dir / "validation.csv")


def test_validation_keeps_the_best_model_and_writes_logs(tmp_path):
    result, validation = _validated(tmp_path)
    assert validation["iteration"].tolist() == [2, 4]
    assert validation["best"].iloc[0]
    assert result.best_model is not None and result.best_model.exists()
    assert result.best_score == pytest.approx(validation["average_precision"].max())
    assert (result.out_dir / "training.png").stat().st_size > 1000
    saved = json.loads((result.out_dir / "config.json").read_text())
    assert saved["val_sequences"] == ["cube_pre", "cube_post", "flair"]


def test_validation_sets_switch_each_validation_sequence_off_in_turn():
    config = TrainConfig(val_sequences=("cube_pre", "flair"), val_each_off=True)
    sets = {label: present.tolist() for label, present in validation_sets(config).items()}
    assert sets == {
        "all": [False, True, False, True],
        "without cube_pre": [False, False, False, True],
        "without flair": [False, True, False, False],
    }
    assert list(validation_sets(TrainConfig(val_sequences=("flair",), val_each_off=True))) == [
        "all"
    ]  # switching the only one off would leave nothing


def test_a_validation_set_no_case_holds_is_a_read_error_naming_it(monkeypatch):
    def no_case(*args):
        raise SequenceError("none of the cases holds those sequences")

    monkeypatch.setattr(steps, "evaluate_network", no_case)
    config = TrainConfig(val_each_off=True)
    run = SimpleNamespace(network=None, context=SimpleNamespace(device="cpu"), config=config)
    with pytest.raises(ReadError, match=r"set 'all' \(bravo, cube_pre, cube_post, flair\)"):
        steps.validate(run, [], validation_sets(config))


def test_validation_with_each_sequence_off_keeps_the_best_mean_map(tmp_path):
    result, validation = _validated(tmp_path, val_each_off=True)
    each = [f"average_precision_without_{name}" for name in ("cube_pre", "cube_post", "flair")]
    assert set(each) <= set(validation.columns)
    means = validation[["average_precision", *each]].fillna(0.0).mean(axis=1)
    assert validation["score"].to_numpy() == pytest.approx(means.to_numpy())
    assert result.best_score == pytest.approx(validation["score"].max())
    best = model.load_model(result.best_model, "cpu").metadata["training"]["validation"]
    assert best["score"] == pytest.approx(validation["score"].max())


def test_hard_negatives_are_found_at_the_start_and_after_each_validation(tmp_path, caplog):
    caplog.set_level("INFO", logger="napari_metseg.training.loop")
    train(tiny(tmp_path, iterations=4, val_interval=2, log_interval=2, hard_negatives=10.0))
    found = [r.getMessage() for r in caplog.records if "show a false positive" in r.getMessage()]
    assert [message.split(":")[0] for message in found] == ["iteration 0", "iteration 2"]
    with pytest.raises(ValueError, match="hard_negatives must be >= 0"):
        TrainConfig(hard_negatives=-1.0)


def test_cancel_then_resume_continues_from_the_checkpoint(tmp_path):
    cancel = threading.Event()

    def progress(done: int, total: int, message: str) -> None:
        if message.startswith("loss") and done == 3:
            cancel.set()

    config = tiny(tmp_path, iterations=6, val_interval=100, log_interval=1)
    with pytest.raises(Cancelled):
        train(config, progress=progress, cancel=cancel)
    out = Path(config.out_dir)
    assert pd.read_csv(out / "log.csv")["iteration"].tolist() == [1, 2, 3]
    with pytest.raises(ReadError, match="'lr'"):
        train(config.with_overrides({"resume": True, "lr": 0.5}))
    result = train(config.with_overrides({"resume": True}))
    assert result.iterations == 6
    assert pd.read_csv(out / "log.csv")["iteration"].tolist() == [1, 2, 3, 4, 5, 6]


def test_cli_builds_the_config_from_file_flags_and_set(tmp_path, capsys):
    settings = TINY | {"iterations": 2, "val_interval": 2, "log_interval": 1}
    (tmp_path / "cfg.json").write_text(json.dumps(settings))
    out = tmp_path / "cli-run"
    code = main(
        [
            "train",
            "--config",
            str(tmp_path / "cfg.json"),
            "--out",
            str(out),
            "--dropout",
            "false",
            "--set",
            "alpha=5",
            "--no-progress",
        ]
    )
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["sequence_dropout"] is False and saved["alpha"] == 5.0
    assert saved["size"] == 32
    assert main(["train", "--set", "colour=red"]) == 2
    assert "colour=red" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with Gloo on POSIX only")
def test_two_gloo_processes_keep_identical_replicas(tmp_path):
    metseg = shutil.which("metseg", path=str(Path(sys.executable).parent))
    assert metseg is not None, "the metseg console script is not installed next to python"
    out = tmp_path / "ddp"
    settings = TINY | {"iterations": 3, "val_interval": 3, "log_interval": 1}
    (tmp_path / "cfg.json").write_text(json.dumps(settings))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "--no-python",
        metseg,
        "train",
        "--config",
        str(tmp_path / "cfg.json"),
        "--out",
        str(out),
        "--set",
        f"cache_dir={tmp_path / 'cache'}",
        "--no-progress",
    ]
    environment = os.environ | {"OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 3
    first, second = summary["replica_digests"]
    assert first == second
