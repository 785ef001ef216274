"""Distributed data-parallel set-up for runs under ``torchrun``.

``torchrun --nproc_per_node N metseg train ...`` starts N processes with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
in the environment. Each process trains a replica on its own stream of slices;
:class:`torch.nn.parallel.DistributedDataParallel` averages the gradients, so
the replicas' weights stay identical. NCCL joins GPUs, Gloo joins CPU
processes. Without those variables everything here is a no-op for one process.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from napari_metseg.devices import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on the process that writes logs, checkpoints and model files."""
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1).

    Each GPU process takes the GPU of its ``LOCAL_RANK``; the backend is NCCL
    on GPUs and Gloo on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device)
    if target.type == "cuda":
        target = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("rank %d of %d joined the %s process group", rank, world_size, backend)
    return DistributedContext(rank, local_rank, world_size, target)


def cleanup_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()


def mean_across(context: DistributedContext, value: float) -> float:
    """The mean of a scalar over all processes (the value itself for one)."""
    if not context.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / context.world_size


def gather_strings(context: DistributedContext, text: str) -> list[str]:
    """Every process's ``text``, in rank order."""
    if not context.distributed:
        return [text]
    gathered: list[str | None] = [None] * context.world_size
    dist.all_gather_object(gathered, text)
    return [str(item) for item in gathered]


def broadcast_flag(context: DistributedContext, flag: bool) -> bool:
    """Rank 0's ``flag`` on every process (e.g. "stop now", so all stop together)."""
    if not context.distributed:
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=context.device)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def broadcast_buffers(context: DistributedContext, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP syncs buffers at the start of each forward pass, so after the last
    step each replica holds the statistics of its own last batch; this makes
    the replicas whole copies of rank 0 again.
    """
    if context.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers, to check that replicas agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
