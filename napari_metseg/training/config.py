"""The training configuration: one frozen dataclass, JSON in and out, CLI overrides.

``metseg train --config run.json --set lr=1e-4 --set val_sequences=cube_pre,cube_post``
reads the file, then applies ``key=value`` overrides parsed by each field's
type. The run writes the resolved configuration next to its logs, so every
model file can be traced to the exact settings that made it.
"""

from __future__ import annotations

import json
import os
import types
import typing
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from napari_metseg.case import SEQUENCES
from napari_metseg.devices import DEVICES
from napari_metseg.errors import ReadError
from napari_metseg.losses import LOSSES
from napari_metseg.training.censoring import CENSOR_MODES

#: Learning-rate schedules: constant, or DeepLab's polynomial decay ``(1 - t / T) ** 0.9``.
LR_SCHEDULES: tuple[str, ...] = ("poly", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (defaults follow METHOD.md).

    Data: ``train`` / ``val`` case specs (paths any reader layout supports, or
    ``phantom:SEED``), ``split`` (JSON file adding its ``train`` / ``val``
    lists), ``synthetic_train`` / ``synthetic_val`` phantom cases with seeds
    from ``synthetic_seed`` on (validation seeds follow the training ones) at
    ``phantom_spacing`` mm, with lesions at least ``phantom_min_diameter`` mm
    across (None: the generator's default); ``phantom_randomise``: each
    phantom (training and validation) draws its voxel size, contrasts, noise,
    bias, vessels, FLAIR thickness and lesion look from its seed
    (:mod:`napari_metseg.phantom.randomise`; ``phantom_spacing`` then unused);
    ``mapping`` (file or ``role=pattern`` text for the
    readers); ``cache_dir`` for pre-processed ``.npz`` files, prepared by
    ``workers`` processes at once.

    Input: ``sequences`` in channel order, slices resized to ``size`` pixels,
    ``context`` neighbours per side. Model: ``integration``, ``sharing``,
    ``backbone``, ``output_stride`` (None: the backbone's default; see
    :class:`napari_metseg.model.ModelConfig`), ``decoder`` (``none``: the
    method's DeepLabv3; ``plus``: DeepLabv3+), ``head_channels`` (their
    width; the method's 256), and
    ``tied_weight``, the weight of the L2 penalty tying ``l2_tied`` branches.
    ``init``: a model file (folder, ``.safetensors`` or ``default``) whose
    weights the run starts from instead of random ones, so a researcher can
    adapt the bundled model to their own scans, or a CPU run can carry on
    where a GPU one stopped; its architecture must be the one these settings
    describe.

    Training: ``sequence_dropout`` with probability ``dropout_rate`` per
    sequence; ``loss`` with ``alpha`` (positive weight) and ``beta`` (trust in
    background labels); ``censor_rate`` / ``censor_mode`` applied to the training and
    validation truth; lesion slices ``oversample`` times as likely, and with
    ``size_aware_sampling`` more so the smaller their smallest lesion
    (:mod:`napari_metseg.training.sampling`); ``hard_negatives`` > 0: plain slices where the
    network draws a false positive, found again at the start and after every validation, are
    that many times as likely as the other plain slices (:mod:`napari_metseg.training.mining`;
    0: off); ``flip`` left-right augmentation; AdamW
    with ``lr`` and ``weight_decay`` under ``lr_schedule``; ``iterations`` steps of
    ``batch_size`` slices per process; validation every ``val_interval`` iterations with
    only ``val_sequences`` present (empty: all), and with ``val_each_off`` also with each of
    them switched off in turn, the best checkpoint then being the one with the best mean mAP
    over those sets (:mod:`napari_metseg.training.steps`); ``seed``; ``device``; ``amp`` (mixed
    precision: float16 on CUDA, bfloat16 on a CPU with native bf16 kernels,
    :func:`~napari_metseg.training.run.mixed_precision`); ``out_dir`` for logs and
    checkpoints; ``resume`` from its checkpoint; ``log_interval`` iterations per CSV
    row.
    """

    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    split: str | None = None
    synthetic_train: int = 0
    synthetic_val: int = 0
    synthetic_seed: int = 1000
    phantom_spacing: float = 2.0
    phantom_min_diameter: float | None = None
    phantom_randomise: bool = False
    mapping: str | None = None
    cache_dir: str | None = None
    workers: int = 1
    sequences: tuple[str, ...] = SEQUENCES
    size: int = 256
    context: int = 2
    integration: str = "input"
    sharing: str = "shared"
    backbone: str = "resnet50"
    output_stride: int | None = None
    decoder: str = "none"
    head_channels: int = 256
    tied_weight: float = 1e-4
    init: str | None = None
    sequence_dropout: bool = True
    dropout_rate: float = 0.25
    loss: str = "weighted_ce"
    alpha: float = 3.0
    beta: float = 1.0
    censor_rate: float = 0.0
    censor_mode: str = "stochastic"
    oversample: float = 10.0
    size_aware_sampling: bool = False
    hard_negatives: float = 0.0
    flip: bool = True
    lr: float = 3e-4
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"
    iterations: int = 10000
    batch_size: int = 8
    val_interval: int = 1000
    val_sequences: tuple[str, ...] = ()
    val_each_off: bool = False
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    out_dir: str = "metseg-train"
    resume: bool = False
    log_interval: int = 50

    def __post_init__(self) -> None:
        positive = ("workers", "size", "iterations", "batch_size", "val_interval", "log_interval")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("synthetic_train", "synthetic_val", "context", "hard_negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {list(LOSSES)}")
        if self.censor_mode not in CENSOR_MODES:
            raise ValueError(
                f"unknown censor_mode {self.censor_mode!r}; choose one of {list(CENSOR_MODES)}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"unknown lr_schedule {self.lr_schedule!r}; choose one of {list(LR_SCHEDULES)}"
            )
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {list(DEVICES)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}")
        if not 0.0 <= self.censor_rate <= 1.0:
            raise ValueError(f"censor_rate must lie in [0, 1], got {self.censor_rate}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.sequences or len(set(self.sequences)) != len(self.sequences):
            raise ValueError(f"sequences must be distinct names, got {list(self.sequences)}")
        unknown = sorted(set(self.val_sequences) - set(self.sequences))
        if unknown:
            raise ValueError(
                f"val_sequences {unknown} are not model sequences {list(self.sequences)}"
            )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> TrainConfig:
        """Build from a dict such as :meth:`to_json` gives; unknown keys are errors."""
        known = {item.name: item for item in fields(cls)}
        unknown = sorted(set(content) - set(known))
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        values = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in content.items()
        }
        return cls(**values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a JSON configuration file (raises :class:`ReadError` naming it)."""
        path = Path(path)
        try:
            content = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ReadError(f"cannot read training configuration {path}: {error}") from error
        if not isinstance(content, dict):
            raise ReadError(f"training configuration {path} must hold a JSON object")
        return cls.from_json(content)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def with_overrides(self, assignments: list[str] | dict[str, Any]) -> TrainConfig:
        """A copy with ``key=value`` strings (typed by the field) or a dict applied.

        Tuples take comma-separated values (``val_sequences=cube_pre,flair``;
        an empty value gives ``()``), booleans ``true/false/1/0/yes/no``, and
        ``none`` clears an optional field.
        """
        if isinstance(assignments, dict):
            return replace(self, **assignments) if assignments else self
        hints = typing.get_type_hints(TrainConfig)
        changes: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, text = assignment.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in hints:
                raise ValueError(
                    f"bad override {assignment!r}: use key=value with key one of {sorted(hints)}"
                )
            changes[key] = parse_value(text.strip(), hints[key], key)
        return replace(self, **changes)


def parse_value(text: str, hint: Any, key: str) -> Any:
    """``text`` as a value of the type ``hint`` (optional, tuple, bool or a plain type)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in options and text.lower() in ("none", "null", ""):
        return None
    kind = next(option for option in options if option is not type(None))
    if typing.get_origin(kind) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{key} takes true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError as error:
        raise ValueError(f"{key} takes a {kind.__name__}, got {text!r}") from error
