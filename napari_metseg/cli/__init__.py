"""The ``metseg`` command: one thin sub-command module per task over the core.

Each sub-command module exposes ``register(subparsers)``, which adds its parser
and sets ``func`` to a callable taking the parsed arguments. Only the module
of the sub-command named on the command line is imported (all of them for
``--help``), so ``metseg segment`` does not pay for training's imports. User errors
(:class:`~napari_metseg.errors.MetsegError`) end as one line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from napari_metseg.errors import Cancelled, MetsegError

#: Sub-command modules under ``napari_metseg.cli``, in the order ``--help`` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "info",
    "phantom",
    "segment",
    "evaluate",
    "train",
    "finetune",
    "demo",
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``metseg`` parser; with ``argv``, only the sub-command it names is registered."""
    parser = argparse.ArgumentParser(
        prog="metseg",
        description="Brain metastasis segmentation on multi-sequence MRI (napari-metseg).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    named = [word for word in argv or () if not word.startswith("-")][:1]
    chosen = named if named and named[0] in SUBCOMMANDS else SUBCOMMANDS
    for name in chosen:
        importlib.import_module(f"napari_metseg.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except Cancelled:
        print("metseg: cancelled", file=sys.stderr)
        return 130
    except MetsegError as error:
        print(f"metseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
