"""The ``maaskit`` command line."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _doctor(_args) -> int:
    from .doctor import report

    rows = report()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maaskit", description="Models as a service, from the forward pass to the endpoint.")
    parser.add_argument("--version", action="version", version=f"maaskit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="report versions, devices, the widgets extension and the dataset cache")
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
