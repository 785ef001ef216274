"""Whole-case inference latency per backbone and device, stage by stage.

Usage: ``python -m bench.inference [--slices 160] [--size 256] [--backbones ...]
[--model PATH] [--threads N] [--precision P]`` from the repository root. The case is the
benchmark phantom of ``bench/preprocess.py`` (256 x 256 x 160, four
sequences). For every backbone and output stride (ResNet-50 at 8, MobileNetV3
at 8 and 16) and device, prints pre-processing, network and post-processing
(restore to the case grid + lesion table) seconds, network slices/s, peak
memory, and on a GPU the achieved TFLOP/s (FLOPs counted with
``torch.utils.flop_counter``) against the card's dense bf16 peak.

Weights are random unless ``--model`` names a trained model: the network's
latency does not depend on them, but the lesion table does (a random network
marks many voxels >= 0.10, so its post-processing time is an upper bound).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.preprocess import benchmark_case
from napari_metseg.engine import PRECISIONS, Segmenter
from napari_metseg.lesions import lesion_table
from napari_metseg.model import BACKBONES, OUTPUT_STRIDES, ModelConfig, build_model, load_model
from napari_metseg.preprocess import PreprocessConfig, prepare_case, restore_slices, stack_25d

#: Dense bf16 tensor-core peaks (TFLOP/s) of cards we may meet, by name fragment.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "T4": 65.0}


def flops_per_slice(model: torch.nn.Module, prepared, device: torch.device) -> float:
    """Forward FLOPs of one 2.5D slice (a multiply-add counts 2)."""
    middle = [prepared.volumes.shape[1] // 2]
    x = torch.from_numpy(stack_25d(prepared.volumes, middle, prepared.config.context))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x.to(device))
    return float(counter.get_total_flops())


def peak_memory_gb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set (GB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=160)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--model", default=None, help="time this model file instead")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda if present"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    case = benchmark_case(args.slices, args.size, args.size)
    if args.model:
        models = [("file", lambda: load_model(args.model))]
    else:
        config = PreprocessConfig(size=args.size)
        models = [
            (
                f"{backbone}/os{stride}",
                lambda b=backbone, s=stride: build_model(
                    ModelConfig(backbone=b, output_stride=s, preprocess=config)
                ),
            )
            for backbone in args.backbones
            for stride in OUTPUT_STRIDES[backbone]
        ]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name()}")
    print(f"case: {case.shape} four sequences")
    header = (
        f"{'model':<26}{'device':<7}{'prec':>6}{'prep s':>8}{'net s':>8}{'post s':>8}"
        f"{'case s':>8}{'slices/s':>10}{'peak GB':>9}{'TFLOP/s':>9}{'% peak':>8}"
    )
    print(header)
    print("-" * len(header))
    for label, make in models:
        model = make().eval()
        for name in devices:
            segmenter = Segmenter(model, name, precision=args.precision)
            device = segmenter.device
            start = time.perf_counter()
            prepared = prepare_case(case, model.config.sequences, config=model.config.preprocess)
            prep = time.perf_counter() - start
            if device.type == "cuda":
                segmenter.predict_prepared(prepared)  # warm-up: cuDNN autotune, allocator
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            stack, info = segmenter.predict_prepared(prepared)
            if device.type == "cuda":
                torch.cuda.synchronize()
            net = time.perf_counter() - start
            start = time.perf_counter()
            probability = restore_slices(stack, prepared.native_shape)
            lesion_table(probability, case.geometry)
            post = time.perf_counter() - start
            run = info.slices - info.skipped
            tflops = flops_per_slice(model, prepared, device) * run / net / 1e12
            peak = peak_tflops(device)
            share = f"{100 * tflops / peak:7.1f}%" if peak else "       -"
            precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[info.precision]
            print(
                f"{label:<26}{device.type:<7}{precision:>6}{prep:8.2f}{net:8.2f}{post:8.2f}"
                f"{prep + net + post:8.2f}{run / net:10.1f}{peak_memory_gb(device):9.2f}"
                f"{tflops:9.3f}{share}"
            )


if __name__ == "__main__":
    main()
