"""An agent that floods the hook socket with connections cannot take the supervisor's fds.

Every Python process of the agent talks to the supervisor over the hook
socket, one connection each.  Red team 15 opened about a thousand and kept
them: the supervisor held all 1,024 of its fds, its policy watcher could not
check the sealed directory, and in a daemon another agent's syscalls failed
with EMFILE.  Now one hook server holds at most 256 connections (a quarter
of the supervisor's fds at the most) and closes any more at once.
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
    """`count` connections to the hook socket, kept open; how many were closed at once."""
    path = os.environ["AGENTSUP_HOOK_SOCKET"]
    held, closed = [], 0
    for _ in range(int(count)):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        held.append(sock)
    time.sleep(1)  # the supervisor has seen them all by now
    for sock in held:
        sock.setblocking(False)
        try:
            closed += sock.recv(1) == b""
        except BlockingIOError:
            pass  # held open
    return {"closed": closed}


OPS = {"flood": flood}
'''
    + OPS_MAIN
)

FLOOD = 600
LIMIT = hookserver._MAX_CONNECTIONS


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_flood_of_hook_connections_is_turned_away(user_sandbox: Sandbox) -> None:
    result, reports, most = run_ops_agent_counting_fds(user_sandbox, AGENT, f"flood={FLOOD}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = reports["flood"]
    assert report["result"] == "ok", report
    # The agent's own Python holds one connection already.
    assert report["closed"] >= FLOOD + 1 - LIMIT, report
    assert most < 64 + LIMIT + 16, most
    assert "tamper" not in result.stderr
