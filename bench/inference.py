"""Whole-case inference latency per backbone and device, stage by stage.

Usage: ``python -m bench.inference [--slices 160] [--size 256] [--backbones ...]``
from the repository root. The case is the benchmark phantom of
``bench/preprocess.py`` (256 x 256 x 160, four sequences). Prints, per backbone
and device: pre-processing, network and post-processing seconds, slices/s,
peak memory, and on a GPU the achieved TFLOP/s (FLOPs counted with
``torch.utils.flop_counter``) against the card's peak. Weights are random:
latency does not depend on them.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.preprocess import benchmark_case
from napari_metseg.engine import predict_prepared, resolve_device
from napari_metseg.lesions import lesion_table
from napari_metseg.model import BACKBONES, ModelConfig, build_model
from napari_metseg.preprocess import PreprocessConfig, prepare_case, restore_slices, stack_25d

#: Dense bf16 tensor-core peaks (TFLOP/s) of cards we may meet, by name fragment.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


def flops_per_slice(model: torch.nn.Module, prepared, device: torch.device) -> float:
    x = torch.from_numpy(stack_25d(prepared.volumes, [prepared.volumes.shape[1] // 2], 2))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x.to(device))
    return float(counter.get_total_flops())


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=160)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda if present"
    )
    args = parser.parse_args()
    devices = args.devices or (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    case = benchmark_case(args.slices, args.size, args.size)
    config = PreprocessConfig(size=args.size)
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name()}")
    print(f"case: {case.shape} four sequences, slices resized to {args.size} x {args.size}")
    header = (
        f"{'backbone':<20}{'device':<8}{'prep s':>8}{'net s':>8}{'post s':>8}"
        f"{'case s':>8}{'slices/s':>10}{'peak GB':>9}{'TFLOP/s':>9}{'% peak':>8}"
    )
    print(header)
    print("-" * len(header))
    for backbone in args.backbones:
        for name in devices:
            device = resolve_device(name)
            model = build_model(ModelConfig(backbone=backbone, preprocess=config)).eval()
            start = time.perf_counter()
            prepared = prepare_case(case, config=config)
            prep = time.perf_counter() - start
            predict_prepared(prepared, model, device)  # warm-up (cuDNN autotune, allocator)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            stack = predict_prepared(prepared, model, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            net = time.perf_counter() - start
            start = time.perf_counter()
            probability = restore_slices(stack, prepared.native_shape)
            lesion_table(probability, case.geometry)
            post = time.perf_counter() - start
            n_slices = int(prepared.tissue.sum())
            tflops = flops_per_slice(model, prepared, device) * n_slices / net / 1e12
            peak = next(
                (
                    v
                    for k, v in PEAK_TFLOPS.items()
                    if device.type == "cuda" and k in torch.cuda.get_device_name()
                ),
                None,
            )
            share = f"{100 * tflops / peak:7.1f}%" if peak else "       -"
            print(
                f"{backbone:<20}{device.type:<8}{prep:8.2f}{net:8.2f}{post:8.2f}"
                f"{prep + net + post:8.2f}{n_slices / net:10.1f}{peak_memory_gb(device):9.2f}"
                f"{tflops:9.2f}{share}"
            )


if __name__ == "__main__":
    main()
