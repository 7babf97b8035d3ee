"""How commands print: a line of text, or JSON under `--json`, for results and errors alike.

A command that prints a result takes `--json` (`add_json_flag`) and prints
through `emit`.  A failure is a `CommandError`: `main` prints it as one
`agentsup: ...` line on stderr, or, under `--json`, as one JSON object on
stdout, `{"ok": false, "error": "...", "exit_code": N}`, so a script that
reads stdout always gets JSON.

Text for a person goes to a terminal, which obeys control characters: what
the agent controls (targets, command lines, messages) is printed through
`visible`, so it shows as `\x1b` and the like, never acts.  JSON needs none
of that (the encoder escapes it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ..visible import visible_lines

EXIT_FAILED = 1


class CommandError(Exception):
    """A failure shown to the operator as one line; `exit_code` is how the command exits."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def plural(count: int, word: str) -> str:
    """`1 record`, `2 records`."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def terminal_columns() -> int | None:
    """The terminal's width as shutil.get_terminal_size() gives it ($COLUMNS,
    else the width of stdout's terminal); None for neither (output to a pipe)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else None


def add_json_flag(
    parser: argparse.ArgumentParser, what: str = "print JSON instead of text"
) -> None:
    parser.add_argument("--json", action="store_true", help=what)


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def json_text(document: object) -> str:
    return json.dumps(document, indent=2, default=str, ensure_ascii=False)


def emit(args: argparse.Namespace, document: object, text: str) -> None:
    """Print `text` (its lines made `visible`), or `document` as JSON under --json."""
    print(json_text(document) if wants_json(args) else visible_lines(text), flush=True)


def error_document(message: str, exit_code: int) -> dict[str, object]:
    return {"ok": False, "error": message, "exit_code": exit_code}


def report_error(as_json: bool, message: str, exit_code: int) -> int:
    """Print one failure the way the command was asked to print; returns `exit_code`."""
    if as_json:
        print(json.dumps(error_document(message, exit_code), ensure_ascii=False), flush=True)
    else:
        sys.stderr.write(f"agentsup: {visible_lines(message)}\n")
        sys.stderr.flush()
    return exit_code


def json_flag_given(argv: Sequence[str]) -> bool:
    """Whether `--json` is among agentsup's own options (not a supervised program's)."""
    if list(argv[:1]) == ["run"]:
        return False  # `run` prints no result; its arguments may be the program's
    for word in argv:
        if word == "--":
            return False
        if word == "--json":
            return True
    return False
