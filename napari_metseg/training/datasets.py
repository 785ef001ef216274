"""Training data: cases -> cached, pre-processed volumes -> 2.5D slice batches.

A case is named by a *spec*: a path that :func:`napari_metseg.io.read_case`
reads (any layout it supports), ``phantom:SEED`` for a synthetic case made
on the fly by :func:`napari_metseg.phantom.make_phantom`, or
``phantom-random:SEED`` for one whose voxel size, contrasts, noise and lesion
look are drawn from the seed too (:mod:`napari_metseg.phantom.randomise`). Split files are JSON
objects ``{"train": [...], "val": [...], "test": [...]}`` of specs; relative
paths are relative to the split file.

Each case is pre-processed once (normalise, resize, CLAHE:
:func:`napari_metseg.preprocess.prepare_case`) and kept in memory as float16,
and optionally in an ``.npz`` cache on disk, so no epoch re-runs CLAHE. Its
truth is censored (:mod:`napari_metseg.training.censoring`) on the native grid
and resized to the network's slice size.

Training slices are drawn from these cases by :mod:`napari_metseg.training.sampling`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np

from napari_metseg.atomic import write_npz
from napari_metseg.case import Case, Geometry
from napari_metseg.errors import ReadError
from napari_metseg.preprocess import PreparedCase, PreprocessConfig, prepare_case, resize_slices
from napari_metseg.progress import ProgressCallback, check_cancel, no_progress
from napari_metseg.training.censoring import CensorRecord, censor_lesions

logger = logging.getLogger(__name__)

#: Prefix of a synthetic case spec: ``phantom:SEED``.
PHANTOM_PREFIX = "phantom:"
#: Prefix of a randomised synthetic case spec: ``phantom-random:SEED``.
RANDOM_PHANTOM_PREFIX = "phantom-random:"
#: Names a split file may hold.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Bump when the cached arrays change meaning, so stale cache files are not used.
CACHE_VERSION = 1


@dataclass
class TrainingCase:
    """One pre-processed case with its truth, as training and validation use it.

    ``prepared``: the engine's :class:`PreparedCase`, its volumes kept as
    float16 ``(n_seq, n_slices, size, size)`` to halve the memory of a
    training set. ``truth``: uint8 native-grid ``(slices, rows, cols)``
    lesion mask (after censoring), for validation metrics. ``mask``: bool
    ``(n_slices, size, size)``, ``truth`` resized to the network grid.
    ``geometry``: the case's reference grid (spacing for the metrics).
    """

    name: str
    prepared: PreparedCase
    truth: np.ndarray
    mask: np.ndarray
    geometry: Geometry

    @property
    def volumes(self) -> np.ndarray:
        return self.prepared.volumes

    @property
    def present(self) -> np.ndarray:
        return self.prepared.present

    @property
    def tissue(self) -> np.ndarray:
        return self.prepared.tissue

    @property
    def lesion_slices(self) -> np.ndarray:
        """Bool ``(n_slices,)``: slices holding lesion voxels on the network grid."""
        return self.mask.any(axis=(1, 2))


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split file: ``{"train": [...], "val": [...], "test": [...]}`` of case specs.

    Relative paths become absolute (relative to the file's folder); ``phantom:``
    specs are kept. Missing splits are empty lists. Raises :class:`ReadError`
    for unreadable JSON or unknown keys.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ReadError(f"cannot read split file {path}: {error}") from error
    if not isinstance(content, dict):
        raise ReadError(f"split file {path} must hold a JSON object, got {type(content).__name__}")
    unknown = sorted(set(content) - set(SPLITS))
    if unknown:
        raise ReadError(f"split file {path} has unknown keys {unknown}; expected {list(SPLITS)}")
    split = {}
    for key in SPLITS:
        entries = content.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ReadError(f"split {key!r} of {path} must be a list of strings, got {entries!r}")
        split[key] = [_absolute(entry, path.parent) for entry in entries]
    return split


def _absolute(spec: str, base: Path) -> str:
    if _phantom_prefix(spec) is not None:
        return spec
    return str((base / spec).resolve()) if not Path(spec).is_absolute() else spec


def _phantom_prefix(spec: str) -> str | None:
    return next((p for p in (PHANTOM_PREFIX, RANDOM_PHANTOM_PREFIX) if spec.startswith(p)), None)


def phantom_specs(first_seed: int, count: int, randomised: bool = False) -> list[str]:
    """Specs of ``count`` synthetic cases with consecutive seeds from ``first_seed``."""
    prefix = RANDOM_PHANTOM_PREFIX if randomised else PHANTOM_PREFIX
    return [f"{prefix}{seed}" for seed in range(first_seed, first_seed + count)]


def load_case(
    spec: str,
    mapping: dict[str, str] | None = None,
    phantom_spacing: float = 2.0,
    phantom_min_diameter: float | None = None,
) -> Case:
    """The case named by ``spec``: ``phantom:SEED``, ``phantom-random:SEED`` or a path.

    ``phantom_min_diameter`` (mm) raises the generator's smallest lesion
    diameter (None: its default), for training sets with fewer sub-voxel
    lesions. A randomised phantom draws its own spacing (``phantom_spacing``
    is ignored).
    """
    prefix = _phantom_prefix(spec)
    if prefix is not None:
        from napari_metseg.phantom import PhantomConfig, make_phantom, randomised

        try:
            seed = int(spec[len(prefix) :])
        except ValueError as error:
            raise ReadError(
                f"bad synthetic case spec {spec!r}: the seed must be an integer"
            ) from error
        config = PhantomConfig()
        if phantom_min_diameter is not None:
            largest = max(config.diameter_range_mm[1], phantom_min_diameter)
            config = PhantomConfig(diameter_range_mm=(phantom_min_diameter, largest))
        if prefix == RANDOM_PHANTOM_PREFIX:
            phantom_spacing, config = randomised(seed, config)
        return make_phantom(seed, spacing=phantom_spacing, config=config)
    from napari_metseg.io import read_case

    case = read_case(spec, mapping=mapping)
    if case.truth is None:
        raise ReadError(f"case {spec} has no truth mask; training needs one")
    return case


def _cache_key(
    spec: str,
    sequences: Sequence[str],
    config: PreprocessConfig,
    phantom_spacing: float,
    phantom_min_diameter: float | None,
) -> str:
    stamp = ""
    if not spec.startswith(PHANTOM_PREFIX):
        path = Path(spec)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        stamp = ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    text = json.dumps(
        [
            CACHE_VERSION,
            spec,
            stamp,
            list(sequences),
            asdict(config),
            phantom_spacing,
            phantom_min_diameter,
        ]
    )
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class _Prepared(NamedTuple):
    """A case before censoring: what a worker process hands back."""

    name: str
    prepared: PreparedCase
    truth: np.ndarray
    geometry: Geometry


def _prepare(
    spec: str,
    sequences: Sequence[str],
    config: PreprocessConfig,
    mapping: dict[str, str] | None,
    phantom_spacing: float,
    phantom_min_diameter: float | None,
    cache_dir: Path | None,
) -> _Prepared:
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(spec, sequences, config, phantom_spacing, phantom_min_diameter)
        cache_file = cache_dir / f"{key}.npz"
        if cache_file.exists():
            with np.load(cache_file) as data:
                geometry = Geometry(
                    tuple(int(s) for s in data["shape"]),
                    data["affine"],
                    tuple(int(s) for s in data["source_shape"]),
                    data["source_affine"],
                )
                logger.debug("case %s from cache %s", spec, cache_file)
                prepared = PreparedCase(
                    data["volumes"],
                    tuple(sequences),
                    data["present"],
                    geometry.shape,
                    data["tissue"],
                    config,
                )
                return _Prepared(str(data["name"]), prepared, data["truth"], geometry)
    case = load_case(spec, mapping, phantom_spacing, phantom_min_diameter)
    prepared = prepare_case(case, sequences, config=config)
    prepared = replace(prepared, volumes=prepared.volumes.astype(np.float16))
    truth = (np.asarray(case.truth) > 0).astype(np.uint8)
    result = _Prepared(case.name, prepared, truth, case.geometry)
    if cache_file is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_npz(
            cache_file,
            name=np.array(result.name),
            volumes=prepared.volumes,
            present=prepared.present,
            tissue=prepared.tissue,
            truth=result.truth,
            shape=np.array(case.geometry.shape),
            affine=case.geometry.affine,
            source_shape=np.array(case.geometry.source_shape),
            source_affine=case.geometry.source_affine,
        )
    return result


def _one_thread() -> None:
    """Each worker prepares one case on one core: with torch's default of a thread per core
    in every worker, N workers on N cores would run N * N threads."""
    import torch

    torch.set_num_threads(1)


def prepare_cases(
    specs: Sequence[str],
    sequences: Sequence[str],
    config: PreprocessConfig,
    censor_rate: float = 0.0,
    censor_mode: str = "stochastic",
    censor_seed: int = 0,
    mapping: dict[str, str] | None = None,
    phantom_spacing: float = 2.0,
    phantom_min_diameter: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback = no_progress,
    cancel: threading.Event | None = None,
    workers: int = 1,
) -> tuple[list[TrainingCase], CensorRecord]:
    """Load, pre-process and censor the cases ``specs`` (one split).

    ``workers`` > 1 prepares that many cases at once in separate processes:
    a 1 mm phantom takes about 15 s of one core, so a 60-case set is minutes
    in one process and seconds on a 16-core GPU host. Censoring
    (``censor_rate`` > 0) runs over the native truth masks of all the cases
    together (size mode ranks lesions across cases by mm^3). Returns the
    cases in ``specs`` order and the censoring record.
    """
    cache = Path(cache_dir) if cache_dir is not None else None
    arguments = [
        (spec, sequences, config, mapping, phantom_spacing, phantom_min_diameter, cache)
        for spec in specs
    ]
    prepared: list[_Prepared] = []
    if workers > 1 and len(specs) > 1:
        pool = ProcessPoolExecutor(
            min(workers, len(specs)), mp_context=get_context("spawn"), initializer=_one_thread
        )
        try:
            futures = {pool.submit(_prepare, *args): index for index, args in enumerate(arguments)}
            by_index: dict[int, _Prepared] = {}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                check_cancel(cancel)
                for future in finished:
                    by_index[futures[future]] = future.result()
                    progress(len(by_index), len(specs), f"prepared {specs[futures[future]]}")
            prepared = [by_index[index] for index in range(len(specs))]
        finally:
            # an error or a cancel returns at once; cases already running finish unseen
            pool.shutdown(wait=False, cancel_futures=True)
    else:
        for index, args in enumerate(arguments):
            check_cancel(cancel)
            progress(index, len(specs), f"preparing {args[0]}")
            prepared.append(_prepare(*args))
    progress(len(specs), len(specs), "cases prepared")
    truths, record = censor_lesions(
        [item.truth for item in prepared],
        censor_rate,
        censor_mode,
        censor_seed,
        voxel_volumes=[item.geometry.voxel_volume for item in prepared],
    )
    cases = []
    for item, truth in zip(prepared, truths, strict=True):
        mask = resize_slices(truth.astype(np.float32), config.size, config.size) > 0.5
        cases.append(TrainingCase(item.name, item.prepared, truth, mask, item.geometry))
    return cases, record
