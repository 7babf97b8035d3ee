"""The `agentsup` command line.

Each command group lives in `agentsup.cli.<group>` and adds itself
with `register(subparsers)`; the handler it sets with `set_defaults(func=...)`
returns the exit code, or raises `output.CommandError`.  Usage errors print
one line and exit 2, except for `run`, whose every failure before the agent
starts is exit 125 (DESIGN.md 1.4).  Under `--json`, errors are one JSON
object on stdout (see output.py).  No input ends in a traceback: an
unexpected exception is one line too (`AGENTSUP_DEBUG=1` shows the
traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .. import __version__


class _InspectOnFirstUse(types.ModuleType):
    """Stands in for `inspect` until something reads a name from it.

    `dataclasses` imports inspect (and with it ast, dis and tokenize: about
    8 ms, a tenth of `agentsup run`'s start-up) for one use: a signature for
    a class with no docstring, and every dataclass of ours has one.  The first
    name read imports the real module, which takes the stand-in's place.  In
    the supervisor's command line only: the agent's hook never runs this.
    (importlib's LazyLoader does not do: `import inspect` reads `__spec__`.)
    """

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get("inspect") is self:
            del sys.modules["inspect"]
        real = importlib.import_module("inspect")
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


sys.modules.setdefault("inspect", _InspectOnFirstUse("inspect"))

from .output import (  # noqa: E402
    CommandError,
    json_flag_given,
    report_error,
    terminal_columns,
    wants_json,
)

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_RUN_SETUP = 125

COMMAND_MODULES = (
    "run",
    "control",
    "logs",
    "totp",
    "policy",
    "audit",
    "doctor",
    "daemon",
    "demo",
    "completion",
)


class _Formatter(argparse.HelpFormatter):
    """argparse's own, given the width: unasked, it imports shutil (with bz2 and lzma,
    ~2 ms of every `agentsup run`) for it, at the first add_argument."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, width or (terminal_columns() or 80) - 2
        )


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and a chosen exit code."""

    usage_exit_code = EXIT_USAGE
    json_errors = False  # set by main() when --json was given

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        # An option is what it is spelled: `run --json` is not `--json-status`
        # (new user 18), and a new option never changes what an old prefix meant.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        text = f"{self.prog}: error: {message} (see '{self.prog} --help')"
        if UsageParser.json_errors:
            report_error(True, text, self.usage_exit_code)
        else:
            sys.stderr.write(text + "\n")
        raise SystemExit(self.usage_exit_code)


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help_line: str = ""
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every parser under `parser` (itself first) with its command path and help line."""
    yield path, parser, help_line
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield from subcommands(sub, (*path, name), helps.get(name, ""))


def named_command(words: Sequence[str]) -> str | None:
    """The command group `words` start with, when it is one of ours.

    Only then: a top-level option first (`-h run`) wants the whole parser.
    """
    if words and words[0] in COMMAND_MODULES:
        return words[0]
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `only`, just that command group under the top level.

    Each group's module is imported to register it, and some import much of
    the package: `run` builds only its own, so it starts without the rest.
    """
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
    for name in COMMAND_MODULES if only is None else (only,):
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{name}":
                raise
            continue
        module.register(subparsers)
    # Every subcommand's --help says what it does, if only in its one-line help.
    for _path, sub, help_line in subcommands(parser):
        if not sub.description and help_line:
            sub.description = help_line[0].upper() + help_line[1:] + "."
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    UsageParser.json_errors = json_flag_given(words)
    command = named_command(words)
    if command == "run":
        # The imports and the set-up before the agent runs make many objects
        # and little garbage: collecting would cost ~3 ms of the start-up.
        # run_agent turns the collector on again once the agent runs.
        gc.disable()
    parser = build_parser(command)
    if command == "run":
        # An option `run` does not know is reported by this parser, not run's:
        # still a `run` that could not start (DESIGN.md 1.4: 125).
        parser.usage_exit_code = EXIT_RUN_SETUP  # type: ignore[attr-defined]
    args = parser.parse_args(words)
    code = _dispatch(args)
    if argv is None and args.command == "run":
        _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """End `agentsup run` without tearing the interpreter down (~15 ms).

    Only as the program itself (`main()` reading sys.argv), once the run is
    over: the supervisor has closed its audit log, sockets and agents, so
    what finalization would add is the module teardown and a last
    collection.  The atexit handlers still run and the standard streams are
    flushed; with another thread alive the interpreter ends as usual.
    """
    import atexit

    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code & 0xFF)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        code: int = args.func(args)
    except CommandError as exc:
        return report_error(wants_json(args), str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our output went away (`agentsup audit show | head`).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # the last resort: one line, never a traceback
        if os.environ.get("AGENTSUP_DEBUG"):
            raise
        code = EXIT_RUN_SETUP if args.command == "run" else EXIT_FAILED
        return report_error(
            wants_json(args),
            f"internal error: {exc.__class__.__name__}: {exc} "
            "(AGENTSUP_DEBUG=1 shows the traceback)",
            code,
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
