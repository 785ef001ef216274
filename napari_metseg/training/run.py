"""One training run's state and its checkpoint: what a resume restores.

:class:`TrainingRun` holds the network (and its DDP wrapper), the optimiser,
the mixed-precision scaler, the loss, the cumulative saliency and the best
validation score; ``checkpoint.pt`` stores all of it, and a resume refuses a
checkpoint trained with other settings (except :data:`RESUMABLE_CHANGES`).
Used by :mod:`napari_metseg.training.loop` and its steps.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_metseg.errors import ReadError
from napari_metseg.losses import make_loss
from napari_metseg.model import MetsegNet, ModelConfig, build_model, load_model, save_model
from napari_metseg.preprocess import PreprocessConfig
from napari_metseg.saliency import CumulativeSaliency
from napari_metseg.training.config import TrainConfig
from napari_metseg.training.distributed import DistributedContext

logger = logging.getLogger(__name__)

#: Settings a resumed run may change: how long and how often, where, and on what.
RESUMABLE_CHANGES = frozenset(
    {"iterations", "val_interval", "log_interval", "resume", "device", "out_dir", "workers"}
)


def model_config(config: TrainConfig) -> ModelConfig:
    """The model description a training configuration implies."""
    return ModelConfig(
        sequences=tuple(config.sequences),
        integration=config.integration,
        sharing=config.sharing,
        backbone=config.backbone,
        output_stride=config.output_stride,
        decoder=config.decoder,
        head_channels=config.head_channels,
        preprocess=PreprocessConfig(size=config.size, context=config.context),
    )


def mixed_precision(amp: bool, device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in when training on ``device``; None: float32.

    float16 (with the gradient scaler) on CUDA; bfloat16 on a CPU with native
    bf16 kernels (AVX-512 BF16 or AMX): a ``metseg train`` step of the bundled
    architecture (16 slices of 256 px, channels-last, 2 cores) took 0.9 s
    instead of 1.3 s. A CPU without them would emulate bf16 slower than
    float32, and MPS stays float32.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    ):
        return torch.bfloat16
    return None


class TrainingRun:
    """The mutable state of one run: network (DDP-wrapped as ``model``), optimiser, scores."""

    def __init__(self, config: TrainConfig, context: DistributedContext) -> None:
        self.config = config
        self.context = context
        self.out = Path(config.out_dir)
        self.model_config = model_config(config)
        torch.manual_seed(config.seed)
        #: Metadata of the model file the run started from (its lineage), if any.
        self.started_from: dict[str, Any] | None = None
        if config.init:
            self.network = self._start_from(config.init)
        else:
            self.network = build_model(self.model_config)
        # Channels-last: a float32 step of the bundled architecture on 2 CPU cores
        # took 1.3 s instead of 2.2 s; cuDNN's tensor cores prefer it too.
        self.network.to(context.device, memory_format=torch.channels_last)
        self.model: nn.Module = self.network
        if context.distributed:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.network, device_ids=device_ids)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.amp_dtype = mixed_precision(config.amp, context.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss = make_loss(config.loss, config.alpha, config.beta)
        self.saliency = CumulativeSaliency(tuple(config.sequences), config.context)
        self.iteration = 0
        self.best_score = -math.inf
        self.best_iteration = -1
        self.validations: list[dict[str, Any]] = []

    def _start_from(self, path: str) -> MetsegNet:
        """The network of the model file ``path``; another architecture is refused.

        Only weights come over: the optimiser, schedule and scores start
        afresh, as for fine-tuning (a resume restores its checkpoint over them).
        """
        start = load_model(path)
        if start.config != self.model_config:
            ours, theirs = self.model_config.to_dict(), start.config.to_dict()
            changed = sorted(key for key in ours if ours[key] != theirs.get(key))
            wanted = ", ".join(f"{key}={theirs.get(key)!r}" for key in changed)
            raise ReadError(
                f"cannot start from {path}: its architecture differs from these settings "
                f"({wanted} in the model)"
            )
        # The lineage goes under ``started_from`` only: left on the network,
        # save_model would pass the parent's command and path off as this run's.
        self.started_from, start.metadata = start.metadata, {}
        return start

    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {
            "iteration": self.iteration,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_score": self.best_score,
            "best_iteration": self.best_iteration,
            "saliency": self.saliency.state(),
            "validations": self.validations,
            "config": self.config.to_json(),
        }
        partial = self.checkpoint_path().with_suffix(".tmp")
        torch.save(state, partial)
        partial.replace(self.checkpoint_path())

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path()
        state = torch.load(path, map_location=self.context.device, weights_only=False)
        saved, wanted = state["config"], self.config.to_json()
        changed = sorted(
            key
            for key in set(saved) | set(wanted)
            if key not in RESUMABLE_CHANGES and saved.get(key) != wanted.get(key)
        )
        if changed:
            raise ReadError(
                f"cannot resume from {path}: it was trained with other settings ({changed}); "
                "use another out_dir or delete the checkpoint"
            )
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.best_score = float(state["best_score"])
        self.best_iteration = int(state["best_iteration"])
        self.saliency.load_state(state["saliency"])
        self.validations = list(state["validations"])
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    def save_model(self, path: Path, metadata: dict[str, Any]) -> None:
        """A model file of the current weights; ``metadata`` joins the settings under ``training``.

        A run started from another model records that model's metadata as
        ``started_from``, so the file names every case its weights have seen.
        """
        training = {"config": self.config.to_json(), **metadata}
        if self.started_from is not None:
            training["started_from"] = self.started_from
        save_model(self.network, path, {"training": training})
