"""The ``aray`` command line."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="aray",
        description="aray: an asyncio-native distributed runtime with Ray Core's API.",
        epilog="In Python: import aray; aray.init(). Docs: the docs/ folder (mkdocs serve).")
    parser.add_argument("--version", action="version", version=f"aray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("_node", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "_node":
        from ._local import node_main

        node_main()
        return
    build_parser().print_help()
    sys.exit(0 if args.command is None else 2)
