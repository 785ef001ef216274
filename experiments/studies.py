"""The reproduction's networks and their shared budget: what ``reproduce`` trains.

:class:`Settings` is the budget every network shares (named presets in
:data:`PRESETS`); :data:`RUNS` are the seven networks of the three studies
(METHOD.md), and :func:`train_config` turns one into a :class:`TrainConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_metseg.training.config import TrainConfig
from napari_metseg.training.datasets import phantom_specs

#: The sequences of the network trained without ``bravo``.
WITHOUT_BRAVO = ("cube_pre", "cube_post", "flair")


@dataclass(frozen=True)
class Settings:
    """The budget every network of a reproduction shares.

    Phantoms: ``train_cases`` / ``val_cases`` / ``test_cases`` with seeds
    from ``first_seed`` on, at ``phantom_spacing`` mm, lesions at least
    ``phantom_min_diameter`` mm across (None: the generator's default).
    Training (see :class:`TrainConfig`): ``size``-pixel slices,
    ``backbone`` at ``output_stride``, ``iterations``
    of ``batch_size``, ``lr``, validation every
    ``val_interval``, lesion weight ``alpha`` (METHOD.md: 3), ``seed``,
    ``device``.
    """

    train_cases: int = 12
    val_cases: int = 3
    test_cases: int = 5
    first_seed: int = 1000
    phantom_spacing: float = 1.5
    phantom_min_diameter: float | None = 5.0
    size: int = 128
    backbone: str = "light"
    output_stride: int | None = 8
    iterations: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    val_interval: int = 300
    alpha: float = 3.0
    seed: int = 0
    device: str = "auto"

    @property
    def test_specs(self) -> list[str]:
        return phantom_specs(self.first_seed + self.train_cases + self.val_cases, self.test_cases)


#: Named budgets: ``cpu`` takes about 75 minutes of a 2-core machine; ``gpu`` the
#: method's 256-pixel slices on 1 mm phantoms, sized to train all seven networks
#: at once on one GPU with ``--jobs 7`` (add ``--set backbone=resnet50 --set
#: iterations=20000`` for the method's backbone and length); ``smoke`` checks the
#: harness.
PRESETS: dict[str, Settings] = {
    "cpu": Settings(),
    "gpu": Settings(
        train_cases=24,
        val_cases=4,
        test_cases=8,
        phantom_spacing=1.0,
        phantom_min_diameter=3.0,
        size=256,
        output_stride=16,
        iterations=4000,
        batch_size=16,
        val_interval=1000,
    ),
    "smoke": Settings(
        train_cases=2,
        val_cases=1,
        test_cases=1,
        phantom_spacing=4.0,
        phantom_min_diameter=None,
        size=32,
        iterations=2,
        batch_size=2,
        val_interval=2,
    ),
}


@dataclass(frozen=True)
class Run:
    """One network of the reproduction: a name, a label and its settings beyond the budget."""

    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _censored(mode: str, loss: str, beta: float) -> dict[str, Any]:
    return {"censor_rate": 0.5, "censor_mode": mode, "loss": loss, "beta": beta}


RUNS: tuple[Run, ...] = (
    Run("dropout", "4 sequences, dropout"),
    Run("no_dropout", "4 sequences, no dropout", {"sequence_dropout": False}),
    Run(
        "without_bravo",
        "3 sequences (no bravo), no dropout",
        {"sequences": WITHOUT_BRAVO, "sequence_dropout": False},
    ),
    Run("stochastic_ce", "50% censored at random, weighted CE", _censored("stochastic", "weighted_ce", 1.0)),
    Run(
        "stochastic_lopsided",
        "50% censored at random, lopsided bootstrap",
        _censored("stochastic", "lopsided_bootstrap", 0.1),
    ),
    Run("size_ce", "50% censored by size, weighted CE", _censored("size", "weighted_ce", 1.0)),
    Run(
        "size_lopsided",
        "50% censored by size, lopsided bootstrap",
        _censored("size", "lopsided_bootstrap", 0.1),
    ),
)  # fmt: skip


def train_config(settings: Settings, run: Run, runs_dir: Path) -> TrainConfig:
    """The :class:`TrainConfig` of ``run`` under ``settings`` (resumable, cached phantoms)."""
    base = TrainConfig(
        synthetic_train=settings.train_cases,
        synthetic_val=settings.val_cases,
        synthetic_seed=settings.first_seed,
        phantom_spacing=settings.phantom_spacing,
        phantom_min_diameter=settings.phantom_min_diameter,
        cache_dir=str(runs_dir / "cache"),
        size=settings.size,
        backbone=settings.backbone,
        output_stride=settings.output_stride,
        iterations=settings.iterations,
        batch_size=settings.batch_size,
        lr=settings.lr,
        val_interval=settings.val_interval,
        alpha=settings.alpha,
        seed=settings.seed,
        device=settings.device,
        out_dir=str(runs_dir / run.name),
        resume=True,
        log_interval=max(1, min(50, settings.iterations)),
    )
    return base.with_overrides(run.overrides)
