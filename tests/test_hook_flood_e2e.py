"""An agent that floods the hook socket with connections cannot take the supervisor's fds.

Every Python process of the agent talks to the supervisor over the hook
socket, one connection each.  Red team 15 opened about a thousand and kept
them: the supervisor held all 1,024 of its fds, its policy watcher could not
check the sealed directory, and in a daemon another agent's syscalls failed
with EMFILE.  Now one hook server holds at most 256 connections (a quarter
of the supervisor's fds at the most); past that it reads no more from its
listener, and a new Python waits in the kernel's backlog for one to end
(closing the newcomers instead failed a burst of 300 Python processes).
"""

from __future__ import annotations

import pytest
from agent_ops import OPS_MAIN, OPS_PRELUDE
from conftest import Sandbox, run_ops_agent_counting_fds

from agentsup.supervision import hookserver

AGENT = (
    OPS_PRELUDE
    + r'''
import os, socket, time


def flood(count):
    """`count` connects to the hook socket, kept open, without waiting: how
    many found the queue full, and whether any was closed on it."""
    path = os.environ["AGENTSUP_HOOK_SOCKET"]
    held, full, closed = [], 0, 0
    for _ in range(int(count)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(path)
        except BlockingIOError:
            full += 1  # the listener's backlog is full: a blocking connect would wait
            sock.close()
            continue
        held.append(sock)
    time.sleep(1)  # the supervisor has seen them all by now
    for sock in held:
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass  # held open, accepted or queued
    return {"full": full, "closed": closed}


def burst(count):
    """`count` Python processes at once, each reading a variable (a hook check)."""
    import subprocess, sys
    code = "import os; os.environ.get('HOME'); import time; time.sleep(0.5)"
    children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(int(count))]
    return {"failed": sum(child.wait() != 0 for child in children)}


OPS = {"flood": flood, "burst": burst}
'''
    + OPS_MAIN
)

FLOOD = 600
LIMIT = hookserver._MAX_CONNECTIONS


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_flood_of_hook_connections_waits_and_holds_few_fds(user_sandbox: Sandbox) -> None:
    result, reports, most = run_ops_agent_counting_fds(user_sandbox, AGENT, f"flood={FLOOD}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = reports["flood"]
    assert report["result"] == "ok", report
    assert report["closed"] == 0, report  # none is turned away: they wait
    assert report["full"] > 0, report  # past the held ones and the backlog
    assert most < 64 + LIMIT + 16, most
    assert "tamper" not in result.stderr


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_burst_of_python_processes_all_get_their_answers(user_sandbox: Sandbox) -> None:
    result, reports, _most = run_ops_agent_counting_fds(user_sandbox, AGENT, "burst=300")
    assert result.returncode == 0, result.stderr[-3000:]
    assert reports["burst"] == {"op": "burst", "result": "ok", "failed": 0}, reports
