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
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_metseg.case import SEQUENCES
from napari_metseg.errors import ReadError, SequenceError
from napari_metseg.io.naming import (
    EXTRA_SEQUENCES,
    TRUTH,
    guess_role,
    load_mapping,
    strip_common_prefix,
)
from napari_metseg.io.volume import VOLUME_SUFFIXES, Volume, read_png_stack, read_volume

logger = logging.getLogger(__name__)

#: BrainMetShare sub-folder -> role (channel order of the published data set).
BRAINMETSHARE: dict[str, tuple[str, str]] = {
    "0": ("bravo", "gradient-echo post-contrast"),
    "1": ("cube_pre", "spin-echo pre-contrast"),
    "2": ("cube_post", "spin-echo post-contrast"),
    "3": ("flair", "FLAIR"),
    "seg": (TRUTH, "segmentation"),
}
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$", re.IGNORECASE)
_IGNORED_QUIETLY = ("dataset.json",)

PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class Source:
    """A candidate input: a volume file, a DICOM folder (or one of its series), a PNG folder."""

    path: Path
    label: str
    kind: str = "volume"
    series: str | None = None

    def describe(self) -> str:
        return self.path.name if self.series is None else f"{self.path.name} series {self.label!r}"


@dataclass
class CaseSources:
    """The volumes of a case as read, before resampling: what ``metseg info`` shows."""

    name: str
    layout: str
    volumes: dict[str, Volume]
    truth: Volume | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    name: str
    layout: str
    base: Path
    sources: list[Source]
    roles: dict[Source, tuple[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    explicit: bool = False


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
    plan = _plan(path_or_paths)
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


def _plan(path_or_paths: PathOrPaths) -> _Plan:
    if isinstance(path_or_paths, str | os.PathLike):
        paths = [Path(path_or_paths)]
    else:
        paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise ReadError("no file or folder given")
    for path in paths:
        if not path.exists():
            raise ReadError(f"{path}: no such file or folder")
    if len(paths) == 1 and paths[0].is_dir() and not _is_dicom_folder(paths[0]):
        return _plan_folder(paths[0])
    if len(paths) == 1 and paths[0].is_dir():
        return _plan_series_folder(paths[0], _plan_empty(paths[0], "dicom-series"))
    return _plan_files(paths)


def _plan_empty(base: Path, layout: str, explicit: bool = False) -> _Plan:
    return _Plan(name=base.name, layout=layout, base=base, sources=[], explicit=explicit)


def _plan_folder(folder: Path) -> _Plan:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        raise ReadError(f"{folder}: empty folder")
    png_folders = [p for p in entries if p.is_dir() and p.name in BRAINMETSHARE and _has_png(p)]
    if png_folders:
        return _plan_brainmetshare(folder, png_folders, entries)
    files = [p for p in entries if p.is_file() and _is_volume_file(p)]
    dicom_folders = [p for p in entries if p.is_dir() and _is_dicom_folder(p)]
    if any(_NNUNET.match(p.name) for p in files) and _dataset_json(folder) is not None:
        return _plan_nnunet(folder, files, entries)
    plan = _plan_empty(folder, "files")
    if not files and not dicom_folders:
        return _plan_series_folder(folder, plan)
    plan.sources = [Source(p, _volume_stem(p)) for p in files + dicom_folders]
    _note_ignored(plan, entries, set(files + dicom_folders))
    _guess(plan)
    return plan


def _plan_files(paths: list[Path]) -> _Plan:
    base = paths[0].parent
    if all(_NNUNET.match(p.name) for p in paths) and _dataset_json(base) is not None:
        return _plan_nnunet(base, paths, [], explicit=True)
    plan = _plan_empty(base, "files", explicit=True)
    plan.sources = [Source(p, _volume_stem(p)) for p in paths]
    _guess(plan)
    return plan


def _plan_series_folder(folder: Path, plan: _Plan) -> _Plan:
    """A folder of DICOM files: every series is a candidate named by its description."""
    from napari_metseg.io.dicom import list_series

    found = list_series(folder)
    if not found:
        raise ReadError(
            f"{folder}: no volume files ({', '.join(VOLUME_SUFFIXES)}), DICOM series or "
            "BrainMetShare PNG folders found"
        )
    plan.layout = "dicom-series"
    plan.sources = [Source(folder, s.description or s.uid, series=s.uid) for s in found]
    if len(found) == 1:
        plan.roles[plan.sources[0]] = _guess_or_reference(plan.sources[0].label)
        return plan
    for source in plan.sources:
        guess = guess_role(source.label)
        if guess is not None:
            plan.roles[source] = (guess[0], f"series description matched {guess[1]!r}")
        else:
            plan.notes.append(
                f"ignored {source.describe()}: no sequence recognised in its description"
            )
    return plan


def _guess_or_reference(label: str) -> tuple[str, str]:
    guess = guess_role(label)
    if guess is None:
        return SEQUENCES[
            0
        ], f"the only series; description {label!r} not recognised, taken as bravo"
    return guess[0], f"series description matched {guess[1]!r}"


def _plan_brainmetshare(folder: Path, png_folders: list[Path], entries: list[Path]) -> _Plan:
    plan = _plan_empty(folder, "brainmetshare")
    for sub in png_folders:
        source = Source(sub, sub.name, kind="png")
        plan.sources.append(source)
        role, meaning = BRAINMETSHARE[sub.name]
        plan.roles[source] = (role, f"BrainMetShare folder {sub.name}: {meaning}")
    _note_ignored(plan, entries, set(png_folders))
    warning = (
        "BrainMetShare PNG slices carry no geometry: assumed axial, 1 mm isotropic, "
        "slice index increasing towards superior"
    )
    logger.warning("%s: %s", folder, warning)
    plan.notes.append(warning)
    return plan


def _plan_nnunet(
    base: Path, files: list[Path], entries: list[Path], explicit: bool = False
) -> _Plan:
    dataset = _dataset_json(base)
    channels = _channel_names(dataset)
    matched = [(p, _NNUNET.match(p.name)) for p in files]
    cases = sorted({m["case"] for _, m in matched if m})
    if len(cases) > 1:
        raise ReadError(
            f"{base}: holds {len(cases)} nnU-Net cases ({', '.join(cases[:5])}"
            f"{', ...' if len(cases) > 5 else ''}); pass the files of one case"
        )
    case = cases[0]
    plan = _plan_empty(base, "nnunet", explicit=explicit)
    plan.name = case
    plan.notes.append(f"nnU-Net raw layout, channels from {dataset}")
    for path, match in matched:
        if not match:
            continue
        index = str(int(match["channel"]))
        channel = channels.get(index)
        source = Source(path, channel or path.name)
        plan.sources.append(source)
        guess = guess_role(channel) if channel else None
        if guess is None or guess[0] == TRUTH:
            plan.notes.append(
                f"ignored {path.name}: channel {index} {channel!r} of dataset.json is no model sequence"
            )
            continue
        plan.roles[source] = (guess[0], f"nnU-Net channel {index} {channel!r} in dataset.json")
    labels = base.parent / re.sub("^images", "labels", base.name) / f"{case}.nii.gz"
    if base.name.startswith("images") and labels.is_file():
        source = Source(labels, labels.name)
        plan.sources.append(source)
        plan.roles[source] = (TRUTH, f"nnU-Net labels in {labels.parent.name}")
    _note_ignored(plan, entries, {p for p, m in matched if m})
    return plan


def _guess(plan: _Plan) -> None:
    """Guess roles from the names with the shared prefix (the case name) removed."""
    prefix, stems = strip_common_prefix([s.label for s in plan.sources])
    if prefix:
        plan.name = prefix
    for source, stem in zip(plan.sources, stems, strict=True):
        guess = guess_role(stem)
        if guess is not None:
            plan.roles[source] = (guess[0], f"name matched {guess[1]!r}")
        elif not plan.explicit:
            plan.notes.append(f"ignored {source.describe()}: no sequence recognised in its name")


def _assign(plan: _Plan, mapping: dict[str, str]) -> dict[str, tuple[Source, str]]:
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


def _match(plan: _Plan, role: str, pattern: str) -> Source:
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
        source = Source(candidate, candidate.name, kind="png" if _has_png(candidate) else "volume")
        plan.sources.append(source)
        return source
    found = ", ".join(s.describe() for s in plan.sources) or "nothing"
    raise SequenceError(
        f"mapping {role}={pattern!r} matches no input in {plan.base} (found: {found})"
    )


def _note_ignored(plan: _Plan, entries: list[Path], taken: set[Path]) -> None:
    for entry in entries:
        if entry not in taken and entry.name not in _IGNORED_QUIETLY:
            plan.notes.append(f"ignored {entry.name}: not an MR volume of a known layout")


def _dataset_json(folder: Path) -> Path | None:
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            return candidate
    return None


def _channel_names(path: Path) -> dict[str, str]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ReadError(f"{path}: not a readable dataset.json ({error})") from error
    channels = content.get("channel_names") or content.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise ReadError(f"{path}: no 'channel_names' (nnU-Net v2) or 'modality' (v1) entry")
    return {str(int(k)): str(v) for k, v in channels.items()}


def _is_volume_file(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _volume_stem(path: Path) -> str:
    lowered = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _has_png(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() == ".png" for p in folder.iterdir())


def _is_dicom_folder(folder: Path) -> bool:
    """A folder whose files include DICOM (``.dcm`` or the ``DICM`` preamble), looked at cheaply."""
    for index, entry in enumerate(sorted(folder.iterdir())):
        if index >= 20:
            break
        if not entry.is_file():
            continue
        if entry.suffix.lower() == ".dcm":
            return True
        try:
            with entry.open("rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False
