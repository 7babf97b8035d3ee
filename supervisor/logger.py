"""A logger that imports `logging` when something is logged.

The control server and TOTP log only when something goes wrong or a person
acts, and `logging` brings traceback, textwrap, string and threading: ~5 ms
that `agentsup run` would spend before its agent starts.  An import opens
files, so a supervisor out of fds could not import it on an error path:
then the message is written to stderr as one line instead (no fd needed),
and a call never raises either way.  Shared vocabulary like `events`:
imports nothing of the package.
"""

from __future__ import annotations

import contextlib
import os

_INFO, _WARNING, _ERROR = 20, 30, 40  # logging's levels


class Logger:
    """`logging.getLogger(name)`, for info, warning and exception."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def info(self, message: str, *args: object) -> None:
        self._log(_INFO, message, args, exc_info=False)

    def warning(self, message: str, *args: object) -> None:
        self._log(_WARNING, message, args, exc_info=False)

    def exception(self, message: str, *args: object) -> None:
        self._log(_ERROR, message, args, exc_info=True)

    def _log(self, level: int, message: str, args: tuple[object, ...], exc_info: bool) -> None:
        try:
            import logging

            logging.getLogger(self.name).log(level, message, *args, exc_info=exc_info)
        except Exception:
            with contextlib.suppress(Exception):
                text = message % args if args else message
                os.write(2, f"agentsup: {self.name}: {text}\n".encode(errors="replace"))
