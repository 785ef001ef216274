"""The training run of ``scripts/device_train.sh`` (a file: spawned workers re-import it).

Usage: ``python scripts/device_train.py SMOKE LIMIT RUN_DIR``; SMOKE 1 is a
tiny CPU run, LIMIT the seconds of training loop (the clock starts at the
first step, after the phantoms are prepared), settings from the environment
as the shell script describes. At the limit the run stops after writing a
checkpoint; ``RUN_DIR/best`` holds the best validated model.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from napari_metseg.errors import Cancelled
from napari_metseg.training.config import TrainConfig
from napari_metseg.training.loop import train


def settings(smoke: bool, run: str) -> TrainConfig:
    env = os.environ.get
    cases = int(env("CASES", "48"))
    return TrainConfig(
        synthetic_train=2 if smoke else cases,
        synthetic_val=1 if smoke else max(2, cases // 8),
        synthetic_seed=int(env("SEED", "20000")),
        cache_dir=env("CACHE") or None,
        phantom_randomise=True,
        size_aware_sampling=True,
        workers=os.cpu_count() or 1,
        size=32 if smoke else 256,
        backbone="light",
        output_stride=int(env("STRIDE", "16")),
        decoder=env("DECODER", "plus"),
        head_channels=int(env("HEAD", "128")),
        init=env("INIT") or None,
        lr=float(env("LR", "1e-3")),
        iterations=6 if smoke else int(env("ITERATIONS", "6000")),
        batch_size=2 if smoke else int(env("BATCH", "32")),
        val_interval=3 if smoke else int(env("VAL_INTERVAL", "500")),
        val_each_off=env("VAL_EACH_OFF", "1") == "1",
        hard_negatives=float(env("HARD_NEGATIVES", "0")),
        log_interval=1 if smoke else 50,
        device="cpu" if smoke else "cuda",
        out_dir=run,
    )


def main() -> None:
    smoke, limit, run = sys.argv[1] == "1", float(sys.argv[2]), sys.argv[3]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = settings(smoke, run)
    print("config:", config)
    cancel = threading.Event()
    begun = time.perf_counter()
    # TOTAL caps the whole run (phantoms included), so slow preparation shortens training
    # instead of running past the machine's command limit.
    total = float(os.environ.get("TOTAL", "inf"))
    timers: list[threading.Timer] = []

    def progress(done: int, total_steps: int, message: str) -> None:
        if not timers and total_steps == config.iterations and done >= 1:
            elapsed = time.perf_counter() - begun
            seconds = max(30.0, min(limit, total - elapsed))
            print(f"training loop started after {elapsed:.0f} s; training for {seconds:.0f} s")
            timers.append(threading.Timer(seconds, cancel.set))
            timers[0].start()
        if done % 50 == 0:
            print(
                f"iteration {done}/{total_steps}: {message} ({time.perf_counter() - begun:.0f} s)"
            )

    try:
        result = train(config, progress=progress, cancel=cancel)
        print(
            f"finished {result.iterations} iterations; best mAP {result.best_score:.3f} "
            f"at iteration {result.best_iteration}"
        )
    except Cancelled:
        print(f"time limit of {limit:.0f} s reached: stopped after the last checkpoint")
    finally:
        for timer in timers:
            timer.cancel()


if __name__ == "__main__":
    main()
