"""Which file plays which sequence: name-guessing rules and user mappings.

Guessing looks at a lower-cased name in a fixed order, so that longer, more
specific keys win over the short ones they contain: ``cube_pre`` before
``pre``, ``cube_post`` before ``post``, ``bravo`` (a post-contrast gradient
echo) before the generic ``post``. A user mapping always overrides guessing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from napari_metseg.case import SEQUENCES
from napari_metseg.errors import SequenceError

#: Name under which a reader files the ground-truth mask.
TRUTH = "truth"
#: Sequences kept in a case although the bundled model does not use them.
EXTRA_SEQUENCES: tuple[str, ...] = ("t2w",)
#: Every name a mapping may use.
MAPPING_NAMES: tuple[str, ...] = SEQUENCES + EXTRA_SEQUENCES + (TRUTH,)

#: (role, regular expression on the lower-cased name), first match wins.
RULES: tuple[tuple[str, str], ...] = (
    (TRUTH, r"seg|mask|label|truth"),
    ("cube_post", r"cube[_\-. ]?post"),
    ("cube_pre", r"cube[_\-. ]?pre"),
    ("flair", r"flair|t2f"),
    ("bravo", r"bravo|mprage|fspgr"),
    ("cube_post", r"t1ce|t1c|t1gd|post"),
    ("cube_pre", r"t1n|pre|^t1w?$"),
    ("t2w", r"t2w|^t2$"),
)


def guess_role(name: str) -> tuple[str, str] | None:
    """``(role, matched text)`` for a file, folder or channel name, or None.

    >>> guess_role("BraTS-MET-00001-000-t1c")
    ('cube_post', 't1c')
    >>> guess_role("phantom_7_cube_pre")
    ('cube_pre', 'cube_pre')
    """
    text = name.lower()
    for role, pattern in RULES:
        match = re.search(pattern, text)
        if match:
            return role, match.group(0)
    return None


def strip_common_prefix(names: list[str]) -> tuple[str, list[str]]:
    """Remove the prefix shared by all names, cut at its last ``_``, ``-``, ``.`` or space.

    The shared part is the case name (``BraTS-MET-00001-000-``, ``phantom_7_``)
    and must not steer guessing: a case called ``postop_3`` is not ``cube_post``.
    """
    prefix = os.path.commonprefix(names) if names else ""
    cut = max(prefix.rfind(sep) for sep in "_-. ") + 1
    prefix = prefix[:cut]
    return prefix.rstrip("_-. "), [name[len(prefix) :] for name in names]


def load_mapping(mapping: Mapping[str, str] | str | os.PathLike | None) -> dict[str, str]:
    """A validated ``{sequence: file name or glob}`` from a dict or a JSON file.

    Raises :class:`SequenceError` for a name that is not a sequence (listing
    the valid ones) and for an unreadable JSON file.
    """
    if mapping is None:
        return {}
    if isinstance(mapping, str | os.PathLike):
        path = Path(mapping)
        try:
            mapping = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SequenceError(f"{path}: not a readable JSON mapping ({error})") from error
        if not isinstance(mapping, dict):
            raise SequenceError(f"{path}: a mapping must be a JSON object {{sequence: file}}")
    result = {}
    for name, pattern in mapping.items():
        if name not in MAPPING_NAMES:
            raise SequenceError(
                f"unknown sequence {name!r} in the mapping; valid names: {', '.join(MAPPING_NAMES)}"
            )
        if not isinstance(pattern, str | os.PathLike) or not str(pattern):
            raise SequenceError(
                f"mapping for {name!r} must be a file name or glob, got {pattern!r}"
            )
        result[name] = str(pattern)
    return result


def parse_mapping_argument(text: str) -> dict[str, str] | str:
    """``--mapping`` value: a JSON file path, inline JSON, or ``name=file,name=file``."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError as error:
            raise SequenceError(f"--mapping: not valid JSON ({error})") from error
        return load_mapping(value)
    if "=" not in stripped:
        return stripped
    pairs = {}
    for item in filter(None, (part.strip() for part in stripped.split(","))):
        name, sep, pattern = item.partition("=")
        if not sep or not pattern.strip():
            raise SequenceError(f"--mapping: expected name=file, got {item!r}")
        pairs[name.strip()] = pattern.strip()
    return load_mapping(pairs)
