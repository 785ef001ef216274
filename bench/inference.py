"""Whole-case time next to network time, stage by stage, and cohort throughput.

Usage: ``python -m bench.inference [--device cpu|cuda] [--threads N] [--repeat 3]
[--cohort 3] [--backbones bundled resnet50] [--no-cli]`` from the repository root.

On the sample case of ``metseg demo`` (written to the cache on first use) it prints:

1. per model (the bundled model; ResNet-50 / output stride 8 with random
   weights, the method's network; batch norms folded, as ``metseg segment``
   runs them), the best of ``--repeat`` seconds of every
   stage: read (four ``.nii.gz``), preprocess, network, restore, components
   (lesion table), write (probability, mask, table), the whole ``Segmenter``
   call (preprocess + network + restore) over the network time, the case in
   memory end to end (preprocess to components) and, on CUDA, the network's
   achieved TFLOP/s;
2. the time of one ResNet-50 slice (batch 1), the unit of the CLI target;
3. ``metseg segment`` on the sample case as a fresh process (imports and
   model load included), in ResNet-50-slice times;
4. ``metseg segment`` on a cohort folder of ``--cohort`` copies of the case
   (one process) against one single-case call, and the in-process cohort
   throughput (cases/min, I/O included, the loader overlapping the network).

Random weights mark nearly every voxel >= 0.10 (one component filling the
case: the worst map post-processing meets, as from a bad model or a low
threshold). ``resnet50-sparse`` is the same network with its classifier bias
shifted so that about :data:`SPARSE_FRACTION` of the case's voxels reach
0.10, the output of a working model; every row states its foreground
fraction (``fg %``) and lesion count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.machine import describe, matmul_gflops
from bench.preprocess import best_of
from napari_metseg.case import Case
from napari_metseg.cli.demo import sample_folder
from napari_metseg.cohort import segment_cohort
from napari_metseg.engine import Segmenter
from napari_metseg.io import read_case
from napari_metseg.model import ModelConfig, build_model, load_model
from napari_metseg.pipeline import write_results
from napari_metseg.preprocess import stack_25d
from napari_metseg.thresholds import CANDIDATE_THRESHOLD

STAGES = ("read", "preprocess", "network", "restore", "components", "write")
#: Fraction of the case's voxels at or above 0.10 that ``resnet50-sparse`` aims at.
SPARSE_FRACTION = 0.003
SPARSE = "-sparse"


def make_model(name: str, preprocess):
    if name == "bundled":
        return load_model(None)
    backbone = name.removesuffix(SPARSE)
    return build_model(ModelConfig(backbone=backbone, output_stride=8, preprocess=preprocess))


def sparsify(segmenter: Segmenter, case: Case) -> None:
    """Rescale the classifier so about :data:`SPARSE_FRACTION` of the voxels reach 0.10.

    A random-weight network's lesion-logit margin is almost flat (its
    probabilities span about 0.515-0.517); the margin is linear in the last
    convolution's weights and bias, so scaling both spreads it to a few
    logits and shifting the lesion bias moves the cut. Calibrated in float32
    on the middle slices of ``case``, so the map has the size of a working
    model's (components, restore and writing then see realistic work).
    """
    model = segmenter.model
    classify = [m for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    prepared = segmenter.prepare(case)
    n_slices = prepared.volumes.shape[1]
    chunk = np.arange(max(0, n_slices // 2 - 8), min(n_slices, n_slices // 2 + 8))
    x = stack_25d(prepared.volumes, chunk, prepared.config.context)
    with torch.inference_mode():
        logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        margin = (logits[:, 1] - logits[:, 0]).flatten()
        margin = margin[:: max(1, margin.numel() // 1_000_000)]
        low, high = torch.quantile(margin, torch.tensor([0.5, 1 - SPARSE_FRACTION]).to(margin))
        if float(high - low) <= 0:
            raise ValueError("the network's output is constant; it cannot be made sparse")
        scale = 4.0 / float(high - low)
        shift = scale * float(high) - float(np.log(CANDIDATE_THRESHOLD / (1 - CANDIDATE_THRESHOLD)))
        classify.weight *= scale
        classify.bias *= scale
        classify.bias[1] -= shift


def stage_times(segmenter: Segmenter, folder: Path, repeat: int, out: Path) -> dict[str, float]:
    """Best seconds of every stage, plus whole-call and in-memory end-to-end times,
    the foreground percentage (voxels >= 0.10) and the lesion count of the last run."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        case = read_case(folder)
        read = time.perf_counter() - start
        start = time.perf_counter()
        segmentation = segmenter(case)
        whole = time.perf_counter() - start
        written = write_results(case, segmentation, out, stages={"read": read})
        runs.append({**written.info.stages, "whole": whole})
    best = {key: min(run[key] for run in runs) for key in runs[0]}
    fraction = float((segmentation.probability >= CANDIDATE_THRESHOLD).mean())
    return {**best, "fg": 100 * fraction, "lesions": len(written.table)}


def tflops(segmenter: Segmenter, folder: Path, network_seconds: float, slices: int) -> float:
    prepared = segmenter.prepare(read_case(folder))
    x = stack_25d(prepared.volumes, [prepared.volumes.shape[1] // 2], prepared.config.context)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        segmenter.model(x)
    return counter.get_total_flops() * slices / network_seconds / 1e12


def resnet_slice_seconds(device: torch.device, preprocess, repeat: int) -> float:
    model = make_model("resnet50", preprocess).to(device, memory_format=torch.channels_last)
    x = torch.rand(1, model.config.in_channels, preprocess.size, preprocess.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model.eval()(x)

        def one():
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return best_of(max(repeat, 3), one)[0]


def cli_seconds(args: list[str], threads: int | None) -> float:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from napari_metseg.cli import main; sys.exit(main())"]
        + [*args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"metseg {' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--cohort", type=int, default=3, help="cases in the cohort runs (0: no cohort runs)"
    )
    parser.add_argument(
        "--backbones", nargs="+", default=None, help="bundled, resnet50, resnet50-sparse, ..."
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the fresh-process timings")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbones = args.backbones or (
        ["bundled", "resnet50", "resnet50-sparse"] if device.type == "cuda" else ["bundled"]
    )
    folder = sample_folder()
    print(
        f"machine: {describe()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads ({matmul_gflops():.0f} GFLOP/s float32)"
        + (f", gpu {torch.cuda.get_device_name()}" if device.type == "cuda" else "")
    )
    print(f"sample case {folder.name}: {read_case(folder).shape}, device {device}")
    work = Path(tempfile.mkdtemp(prefix="metseg-bench-"))
    header = f"{'model':<16}" + "".join(f"{s:>11}" for s in STAGES)
    header += f"{'whole':>8}{'whole/net':>10}{'in-mem e2e':>11}{'TFLOP/s':>9}"
    header += f"{'fg %':>7}{'lesions':>8}"
    print(header)
    print("-" * len(header))
    bundled = None
    for name in backbones:
        model = make_model(name, load_model(None).config.preprocess).eval()
        segmenter = Segmenter(model, device, fold_batchnorm=True)  # as metseg segment runs it
        if name == "bundled":
            bundled = segmenter
        if name.endswith(SPARSE):
            sparsify(segmenter, read_case(folder))
        segmenter(read_case(folder))  # warm-up: cuDNN autotune, allocator, first-call costs
        times = stage_times(segmenter, folder, args.repeat, work / name)
        memory = times["preprocess"] + times["network"] + times["restore"] + times["components"]
        run = read_case(folder).shape[0]
        rate = tflops(segmenter, folder, times["network"], run) if device.type == "cuda" else None
        print(
            f"{name:<16}"
            + "".join(f"{times[s]:11.3f}" for s in STAGES)
            + f"{times['whole']:8.2f}{times['whole'] / times['network']:10.2f}{memory:11.2f}"
            + (f"{rate:9.1f}" if rate is not None else f"{'-':>9}")
            + f"{times['fg']:7.2f}{times['lesions']:8d}"
        )
    slice_time = resnet_slice_seconds(device, load_model(None).config.preprocess, args.repeat)
    print(f"ResNet-50 slice (batch 1) on {device.type}: {slice_time:.3f} s")
    cohort = work / "cohort"
    for index in range(args.cohort):
        (cohort / f"case{index}").mkdir(parents=True)
        for file in folder.iterdir():
            (cohort / f"case{index}" / file.name).symlink_to(file)
    if not args.no_cli:
        device_args = ["--device", device.type]
        single = min(
            cli_seconds(
                ["segment", str(folder), "--out", str(work / f"cli{i}")] + device_args, args.threads
            )
            for i in range(args.repeat)
        )
        print(
            f"metseg segment (sample case, fresh process): {single:.2f} s = "
            f"{single / slice_time:.1f} ResNet-50 slices"
        )
        if args.cohort:
            together = cli_seconds(
                ["segment", str(cohort), "--out", str(work / "cli_cohort")] + device_args,
                args.threads,
            )
            print(
                f"metseg segment (cohort of {args.cohort}, one process): {together:.2f} s = "
                f"{together / single:.2f} x one single-case call"
            )
    if bundled is not None and args.cohort:
        start = time.perf_counter()
        result = segment_cohort(cohort, bundled, work / "cohort_out", overwrite=True)
        seconds = time.perf_counter() - start
        done = int((result.summary["status"] == "done").sum())
        print(
            f"cohort in process (bundled model, I/O included): {done} cases in {seconds:.2f} s "
            f"= {60 * done / seconds:.1f} cases/min"
        )


if __name__ == "__main__":
    main()
