"""Stopping an agent the way process managers do: its signal first, SIGKILL after a grace.

`agentsup run` forwards SIGINT, SIGTERM and SIGHUP to the agent's whole tree
and the daemon sends SIGTERM to an agent whose definition went away.  An
agent that is still there `grace` seconds later is SIGKILLed.  An agent
stopped by SIGSTOP (held for approval, a violation, a person) could not act
on the signal before it is continued, so it is killed at once.

A terminal sends SIGINT (Ctrl-C) and SIGHUP (hang-up) to its whole
foreground process group, which includes the agent's main process: when
agentsup is that group, the signal is forwarded only to the agent's
processes outside it (ones that called setsid or setpgid), so no process gets
it twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

from .judge import AgentState, AuditSink, Judge

STOP_TIMEOUT_S = 10.0
# The states of an agent that cannot act on a signal before it is continued.
STOPPED_STATES = (
    AgentState.AWAITING_APPROVAL,
    AgentState.STOPPED_VIOLATION,
    AgentState.STOPPED_OPERATOR,
    AgentState.STOPPED_TAMPER,
    AgentState.STOPPED_AUDIT,
)
_FROM_TERMINAL = (signal.SIGINT, signal.SIGHUP)


def terminal_signalled_our_group() -> bool:
    """Whether our process group is the foreground group of our controlling terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False  # no controlling terminal: nobody signals our group for us
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def forward(judge: Judge, sig: int, why: str, audit: AuditSink) -> set[int]:
    """Send `sig` to every process of the agent's tree that has not had it; audited."""
    if judge.tree is None:
        return set()
    try:
        pids = judge.tree.pids()
    except OSError:
        pids = set()  # the tree is going away; the SIGKILL timer still runs
    if sig in _FROM_TERMINAL and terminal_signalled_our_group():
        own = os.getpgrp()
        pids = {pid for pid in pids if _pgid(pid) != own}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    audit.append(
        {
            "agent": judge.agent_id,
            "pid": judge.main_pid,
            "kind": "signal",
            "signal": signal.Signals(sig).name,
            "layer": "supervisor",
            "reason": why,
            "pids": sorted(pids),
        }
    )
    return pids


def stop_gracefully(
    judge: Judge,
    sig: int,
    why: str,
    *,
    audit: AuditSink,
    call_later: Callable[[float, Callable[[], None]], object],
    grace: float,
) -> None:
    """Forward `sig` now; SIGKILL the tree if the agent is still running after `grace` s."""
    if judge.state is AgentState.EXITED:
        return
    if judge.state in STOPPED_STATES or grace <= 0:
        judge.signal_tree(signal.SIGKILL, f"{why}; the agent could not act on it")
        return
    forward(judge, sig, why, audit)

    def overdue() -> None:
        if judge.state is not AgentState.EXITED:
            judge.signal_tree(signal.SIGKILL, f"{why}; still running after {grace:g} s")

    call_later(grace, overdue)
