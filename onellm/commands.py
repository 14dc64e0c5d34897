"""How a part of the stack defines a sub-command once and gets both ``onellm NAME ...`` and ``python -m ...``.

A command module has ``add_arguments(parser)`` and ``run(args) -> exit code``; :func:`mount` puts it on the
``onellm`` parser, :func:`standalone` runs it as its own program.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def _parser_options(description: str | None, epilog: str | None) -> dict[str, Any]:
    return {"description": description, "epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_overrides_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: dotted stage keys, parsed by the training config."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def mount(
    subparsers: Any,
    name: str,
    help: str,
    add_arguments: AddArguments,
    run: Run,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """``onellm NAME``: a sub-parser with the command's arguments; ``args.func`` is ``run``."""
    parser = subparsers.add_parser(name, help=help, **_parser_options(description, epilog))
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def standalone(
    prog: str,
    add_arguments: AddArguments,
    run: Run,
    argv: Sequence[str] | None = None,
    description: str | None = None,
    epilog: str | None = None,
) -> int:
    """Parse ``argv`` (default: the command line) with the command's arguments and run it."""
    parser = argparse.ArgumentParser(prog=prog, **_parser_options(description, epilog))
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["add_overrides_argument", "mount", "standalone"]
