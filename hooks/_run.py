"""Run a script as `__main__` the way `python SCRIPT` does, hook installed first.

Kept apart from bootstrap.py because `python -m` runs that module inside the
`__main__` namespace, which the agent's module replaces.
"""

from __future__ import annotations

import builtins
import os
import sys
from types import CodeType, TracebackType
from typing import NoReturn

from . import _hook

EXIT_HOOK_FAILED = 125  # agentsup failed before the agent started (DESIGN.md 1.4)


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"agentsup: {message}\n")
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if not args:
        _fail("usage: python -m agentsup.hooks.bootstrap -- SCRIPT [ARGS...]", 2)
    try:
        installed = _hook.install_from_env()
    except Exception as exc:
        _fail(f"cannot install the audit hook: {exc!r}", EXIT_HOOK_FAILED)
    if not installed:
        _fail(
            "AGENTSUP_HOOK_SOCKET is not set; refusing to run the agent unhooked", EXIT_HOOK_FAILED
        )
    run_script(args[0], args[1:])


def _agent_traceback(tb: TracebackType | None, code: CodeType) -> TracebackType | None:
    """The traceback from the agent's module frame on: no bootstrap frames."""
    while tb is not None and tb.tb_frame.f_code is not code:
        tb = tb.tb_next
    return tb


def run_script(script: str, args: list[str]) -> None:
    path = os.path.abspath(script)
    try:
        with open(path, "rb") as source_file:
            source = source_file.read()
    except OSError as exc:
        # The same words and status as `python SCRIPT`.
        sys.stderr.write(
            f"{sys.executable}: can't open file {path!r}: [Errno {exc.errno}] {exc.strerror}\n"
        )
        raise SystemExit(2) from None

    # Like the interpreter: __file__ absolute, sys.path[0] the real directory.
    sys.argv[:] = [script, *args]
    script_dir = os.path.dirname(os.path.realpath(path))
    if getattr(sys.flags, "safe_path", False):
        sys.path.insert(0, script_dir)
    else:
        sys.path[0] = script_dir

    loader_class = sys.modules["_frozen_importlib_external"].SourceFileLoader
    main_module = type(sys)("__main__")
    main_module.__dict__.update(
        __file__=path,
        __cached__=None,
        __loader__=loader_class("__main__", path),
        __spec__=None,
        __package__=None,
        __annotations__={},
        __builtins__=builtins,
    )
    sys.modules["__main__"] = main_module

    try:
        code = compile(source, path, "exec", dont_inherit=True)
    except SyntaxError as exc:
        sys.excepthook(type(exc), exc, None)
        raise SystemExit(1) from None
    try:
        exec(code, main_module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        tb = _agent_traceback(exc.__traceback__, code)
        exc.__traceback__ = tb
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        sys.excepthook(type(exc), exc, tb)
        if isinstance(exc, KeyboardInterrupt):
            _exit_by_sigint()
        raise SystemExit(1) from None


def _exit_by_sigint() -> NoReturn:
    """Die of SIGINT after the exit handlers, as the interpreter does."""
    import atexit
    import signal

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    raise SystemExit(128 + signal.SIGINT)
