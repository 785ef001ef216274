"""``metseg info``: what a case folder holds and how its sequences were found."""

from __future__ import annotations

import argparse

from napari_metseg.io.layouts import scan_case
from napari_metseg.io.naming import parse_mapping_argument
from napari_metseg.io.reader import choose_reference
from napari_metseg.io.volume import Volume


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show the sequences of a case, their grids and how they were found",
        description=(
            "Find the sequences of a case (folder or files) and print, for each, the file, "
            "shape, spacing and orientation codes, the reference grid, the truth mask and "
            "the notes on how every file was matched."
        ),
    )
    parser.add_argument("case", nargs="+", help="case folder, or the files of one case")
    parser.add_argument(
        "--mapping",
        default=None,
        help="sequence mapping: a JSON file, inline JSON, or name=file,name=file (globs allowed)",
    )
    parser.add_argument(
        "--reference", default=None, help="sequence whose grid is the reference (default bravo)"
    )
    parser.add_argument("--series", default=None, help="DICOM series UID or description to read")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    mapping = parse_mapping_argument(args.mapping) if args.mapping else None
    case = args.case[0] if len(args.case) == 1 else args.case
    found = scan_case(case, mapping=mapping, series=args.series)
    reference = choose_reference(found, args.reference)
    grid = found.volumes[reference].geometry
    lines = [f"case {found.name!r} (layout: {found.layout})"]
    for name, volume in found.volumes.items():
        lines.extend(_describe(name, volume, marker=" [reference]" if name == reference else ""))
        if name != reference:
            lines.append(
                "    grid:     "
                + (
                    "same as the reference"
                    if volume.geometry.same_grid(grid)
                    else "resampled onto the reference"
                )
            )
    if found.truth is None:
        lines.append("truth: none")
    else:
        lines.extend(_describe("truth", found.truth, marker=""))
    lines.append(f"reference grid: {reference}")
    lines.append("notes:")
    lines.extend(f"  - {note}" for note in found.notes)
    print("\n".join(lines))


def _describe(name: str, volume: Volume, marker: str) -> list[str]:
    geometry = volume.geometry
    spacing = " x ".join(f"{s:.3g}" for s in geometry.spacing)
    return [
        f"{name}{marker}: {volume.path}",
        f"    shape:    {geometry.shape} (slice, row, col); file {geometry.source_shape}",
        f"    spacing:  {spacing} mm (slice, row, col)",
        f"    orientation: internal {''.join(geometry.axcodes)}, file {''.join(geometry.source_axcodes)}",
        f"    format:   {volume.metadata.get('format', '?')}, {volume.metadata.get('dtype', '?')}",
    ]
