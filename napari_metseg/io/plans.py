"""Recognise the layout of a case's inputs and guess what each one is, before reading any.

A :class:`Plan` lists the candidate :class:`Source` s (volume files, DICOM
series, PNG folders) and the role each seems to play, from names, nnU-Net's
``dataset.json``, BrainMetShare's folder numbers or DICOM series
descriptions; :mod:`napari_metseg.io.layouts` applies a user mapping to it and
reads the chosen volumes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from napari_metseg.case import SEQUENCES
from napari_metseg.errors import ReadError
from napari_metseg.io.formats import VOLUME_SUFFIXES
from napari_metseg.io.naming import (
    TRUTH,
    guess_role,
    strip_common_prefix,
)

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
class Plan:
    """What a folder or file list holds: candidate sources, the role each seems to play, notes."""

    name: str
    layout: str
    base: Path
    sources: list[Source]
    roles: dict[Source, tuple[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    explicit: bool = False


def plan_inputs(path_or_paths: PathOrPaths) -> Plan:
    """Recognise the layout of ``path_or_paths`` and guess each input's role (nothing read yet)."""
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


def _plan_empty(base: Path, layout: str, explicit: bool = False) -> Plan:
    return Plan(name=base.name, layout=layout, base=base, sources=[], explicit=explicit)


def _plan_folder(folder: Path) -> Plan:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        raise ReadError(f"{folder}: empty folder")
    png_folders = [p for p in entries if p.is_dir() and p.name in BRAINMETSHARE and has_png(p)]
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


def _plan_files(paths: list[Path]) -> Plan:
    base = paths[0].parent
    if all(_NNUNET.match(p.name) for p in paths) and _dataset_json(base) is not None:
        return _plan_nnunet(base, paths, [], explicit=True)
    plan = _plan_empty(base, "files", explicit=True)
    plan.sources = [Source(p, _volume_stem(p)) for p in paths]
    _guess(plan)
    return plan


def _plan_series_folder(folder: Path, plan: Plan) -> Plan:
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


def _plan_brainmetshare(folder: Path, png_folders: list[Path], entries: list[Path]) -> Plan:
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
) -> Plan:
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


def _guess(plan: Plan) -> None:
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


def _note_ignored(plan: Plan, entries: list[Path], taken: set[Path]) -> None:
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


def has_png(folder: Path) -> bool:
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
