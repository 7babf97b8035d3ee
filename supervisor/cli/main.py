"""The `agentsup` command line.

Each command group lives in `agentsup.cli.<group>` and adds itself
with `register(subparsers)`; the handler it sets with `set_defaults(func=...)`
returns the exit code.  Usage errors print one line and exit 2, except for
`run`, whose every failure before the agent starts is exit 125 (DESIGN.md 1.4).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__

EXIT_USAGE = 2

COMMAND_MODULES = ("run", "control", "totp", "policy", "audit", "daemon", "demo")


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and a chosen exit code."""

    usage_exit_code = EXIT_USAGE

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(self.usage_exit_code)


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="agentsup",
        description=(
            "An OS-level supervisor for AI agents: every file, shell, network, environment "
            "and database action of the agent's process tree is checked against a YAML "
            "policy at the kernel boundary, and violations get real signals."
        ),
    )
    parser.add_argument("--version", action="version", version=f"agentsup {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=UsageParser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    return code


if __name__ == "__main__":
    raise SystemExit(main())
