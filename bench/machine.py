"""Which machine a benchmark ran on, in words its numbers can be compared by.

The same 2-core budget has meant CPUs a factor of two apart from one session
to the next (a fast correction step took 34 ms on one, 73 ms on another), so
every benchmark names the CPU model, and the ones that time PyTorch also print
the float32 matrix-product rate they reached, a yardstick for the machine's speed.
"""

from __future__ import annotations

import os
import platform
import time


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; the platform's word elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """``"AMD EPYC (x86_64), 2 CPUs, load average 0.3"``."""
    return (
        f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def matmul_gflops(size: int = 1024, seconds: float = 0.5) -> float:
    """float32 GFLOP/s of PyTorch's matrix product at ``size`` on the current threads."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / elapsed / 1e9
