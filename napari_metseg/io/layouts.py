"""Find the sequences of a case in a folder or a list of files, and read them.

Layouts recognised (see :func:`scan_case`):

- one file per sequence named after it (``<case>_bravo.nii.gz``,
  ``*mprage*``, ``*t1c*``, ``*flair*`` ... and ``*seg*`` for the truth), which
  covers BraTS-METS (``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``) and
  sub-folders holding one DICOM series each;
- nnU-Net raw: ``CASE_0000.nii.gz`` ... with ``dataset.json`` naming the
  channels, labels from ``labelsTr/CASE.nii.gz``;
- BrainMetShare: sub-folders ``0``-``3`` and ``seg`` of PNG slices;
- a folder holding several DICOM series (named by SeriesDescription).

A user mapping overrides guessing; every decision is written to the notes
that ``metseg info`` prints.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_metseg.case import SEQUENCES
from napari_metseg.errors import SequenceError
from napari_metseg.io.formats import read_volume
from napari_metseg.io.naming import (
    EXTRA_SEQUENCES,
    TRUTH,
    load_mapping,
)
from napari_metseg.io.plans import PathOrPaths, Plan, Source, has_png, plan_inputs
from napari_metseg.io.volume import Volume, read_png_stack


@dataclass
class CaseSources:
    """The volumes of a case as read, before resampling: what ``metseg info`` shows."""

    name: str
    layout: str
    volumes: dict[str, Volume]
    truth: Volume | None = None
    notes: list[str] = field(default_factory=list)


def scan_case(
    path_or_paths: PathOrPaths,
    mapping: Mapping[str, str] | str | os.PathLike | None = None,
    series: str | None = None,
) -> CaseSources:
    """Decide which input plays which sequence and read each one (no resampling).

    ``mapping`` ({sequence: file name or glob}, or a JSON file of one) always
    wins over guessing. ``series`` picks the DICOM series of a series folder.
    Unrecognised files of a folder are ignored with a note; unrecognised files
    given explicitly are an error.
    """
    chosen = load_mapping(mapping)
    plan = plan_inputs(path_or_paths)
    assigned = _assign(plan, chosen)
    volumes: dict[str, Volume] = {}
    truth = None
    for role in (*SEQUENCES, *EXTRA_SEQUENCES, TRUTH):
        if role not in assigned:
            continue
        source, how = assigned[role]
        volume = (
            read_png_stack(source.path)
            if source.kind == "png"
            else read_volume(source.path, series=source.series or series)
        )
        plan.notes.append(f"{role}: {source.describe()} ({how})")
        if role == TRUTH and source.kind == "png":
            binary = (volume.data > 0).astype(np.float32)
            volume = Volume(binary, volume.geometry, volume.path, volume.metadata)
            plan.notes.append("truth: PNG mask binarised (non-zero -> 1)")
        if "note" in volume.metadata:
            plan.notes.append(f"{role}: {volume.metadata['note']}")
        if role in EXTRA_SEQUENCES:
            plan.notes.append(f"{role}: kept in the case, not used by the model")
        if role == TRUTH:
            truth = volume
        else:
            volumes[role] = volume
    if not volumes:
        found = ", ".join(s.describe() for s in plan.sources) or "nothing"
        raise SequenceError(
            f"{plan.base}: no MR sequence recognised (found: {found}); name the files with a "
            f"mapping, e.g. {{'bravo': 'my_t1_post.nii.gz'}}"
        )
    return CaseSources(plan.name, plan.layout, volumes, truth, plan.notes)


def _assign(plan: Plan, mapping: dict[str, str]) -> dict[str, tuple[Source, str]]:
    """Role -> (source, how): mapping entries first, then unambiguous guesses."""
    assigned: dict[str, tuple[Source, str]] = {}
    used: set[Source] = set()
    for role, pattern in mapping.items():
        source = _match(plan, role, pattern)
        assigned[role] = (source, f"mapping {pattern!r}")
        used.add(source)
    by_role: dict[str, list[Source]] = {}
    for source in plan.sources:
        if source in used:
            continue
        if source not in plan.roles:
            if plan.explicit:
                raise SequenceError(
                    f"{source.path}: no sequence recognised in the name; give a mapping "
                    f"such as {{'bravo': '{source.path.name}'}}"
                )
            continue
        role = plan.roles[source][0]
        if role in assigned:
            plan.notes.append(
                f"ignored {source.describe()}: looks like {role}, but the mapping names "
                f"{assigned[role][0].describe()}"
            )
            continue
        by_role.setdefault(role, []).append(source)
    for role, sources in by_role.items():
        if len(sources) > 1:
            raise SequenceError(
                f"{plan.base}: several inputs look like {role}: "
                f"{', '.join(s.describe() for s in sources)}; choose one with a mapping"
            )
        assigned[role] = (sources[0], plan.roles[sources[0]][1])
    return assigned


def _match(plan: Plan, role: str, pattern: str) -> Source:
    """The source a mapping entry names: a file/folder name, glob, series, or a path."""
    lowered = pattern.lower()
    hits = [
        s
        for s in plan.sources
        if fnmatch.fnmatch(s.path.name.lower(), lowered)
        or fnmatch.fnmatch(s.label.lower(), lowered)
        or (s.series is not None and s.series == pattern)
    ]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise SequenceError(
            f"mapping {role}={pattern!r} matches several inputs: "
            f"{', '.join(s.describe() for s in hits)}"
        )
    candidate = Path(pattern) if Path(pattern).is_absolute() else plan.base / pattern
    if candidate.exists():
        source = Source(candidate, candidate.name, kind="png" if has_png(candidate) else "volume")
        plan.sources.append(source)
        return source
    found = ", ".join(s.describe() for s in plan.sources) or "nothing"
    raise SequenceError(
        f"mapping {role}={pattern!r} matches no input in {plan.base} (found: {found})"
    )
