"""The optional desktop-notification hook: tell a person an agent is waiting.

Set `AGENTSUP_NOTIFY` to a command (split like a shell would, no shell
involved), e.g. `notify-send agentsup`.  When an agent starts waiting for a
person, the command runs with one more argument, a one-line message, and
with AGENTSUP_NOTIFY_{AGENT,REQUEST,ACTION,TARGET,RULE,KIND} in its
environment.  It never blocks the supervisor: it is started and left alone,
reaped by the supervisor's SIGCHLD handling, and killed if still running
after `NOTIFY_TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
from collections.abc import Callable

from ..visible import visible

NOTIFY_ENV = "AGENTSUP_NOTIFY"
NOTIFY_TIMEOUT = 10.0


def notify_command() -> list[str] | None:
    command = os.environ.get(NOTIFY_ENV, "").strip()
    return shlex.split(command) if command else None


def send(
    command: list[str],
    message: str,
    details: dict[str, str],
    call_later: Callable[[float, Callable[[], None]], object],
) -> bool:
    # The agent's text made `visible`: a NUL in a target (red team 36) cannot
    # be an argument or a variable, and a person reads the rest.
    message = visible(message)
    env = dict(os.environ)
    env.update({f"AGENTSUP_NOTIFY_{key.upper()}": visible(value) for key, value in details.items()})
    try:
        # Imported here: most runs never notify, and `agentsup run` starts
        # without it.  Out of fds, the import fails as the Popen would.
        import subprocess

        proc = subprocess.Popen(
            [*command, message],
            cwd="/",  # not the supervisor's: often the agent's workspace (red team 38)
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except (OSError, ImportError, ValueError):
        return False
    pid = proc.pid
    # The supervisor reaps it; Popen must not try to (and must not warn).
    proc.returncode = 0

    def stop_if_hung() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    call_later(NOTIFY_TIMEOUT, stop_if_hung)
    return True
