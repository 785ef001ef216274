"""How many slices the batched steps process at once, per device."""

from __future__ import annotations

import torch

#: Pixels per chunk on the CPU: the float64 temporaries of a chunk stay in cache.
CPU_CHUNK_PIXELS = 2**20
#: Pixels per chunk on a GPU: enough work per kernel launch, bounded memory.
GPU_CHUNK_PIXELS = 2**24


def slice_chunks(count: int, pixels: int, device: torch.device) -> list[slice]:
    """Consecutive slices of ``range(count)`` of about a chunk's pixels each."""
    budget = CPU_CHUNK_PIXELS if device.type == "cpu" else GPU_CHUNK_PIXELS
    step = max(1, budget // max(pixels, 1))
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]
