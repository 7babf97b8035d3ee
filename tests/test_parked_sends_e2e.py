"""Blocking unix datagrams parked for a full receiver hold little in the supervisor.

A blocking send to a full receiver is parked in the supervisor (retried on
its timer) with our duplicate of the agent's socket and of each fd it
passes.  Red team 14 parked 90 empty datagrams passing one fd 251 times
each: 252 duplicates apiece drove the supervisor to EMFILE, and the policy
watcher, unable to open the manifest, cried "tampered".  Now one fd passed
many times is one duplicate, and what parked sends hold is capped (their
number, and the fds they hold): past a cap a blocking send is EAGAIN at once.
"""

from __future__ import annotations

import subprocess

import pytest
from agent_ops import OPS_MAIN, OPS_PRELUDE
from conftest import Sandbox, run_ops_agent_counting_fds

from agentsup.kernel.proc import MEMORY_FD_CACHE
from agentsup.supervision import mediator as _mediator

AGENT = (
    OPS_PRELUDE
    + r'''
import array, os, socket, threading, time


def park(threads, distinct, hold):
    """`threads` blocking sendmsg of an empty datagram to a full receiver,
    each passing 251 times one fd (`distinct` 0) or `distinct` different
    fds; `hold` s later the receiver is read until every send is answered."""
    threads, distinct, hold = int(threads), int(distinct), float(hold)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    while True:
        try:
            a.send(b"x", socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    null = os.open("/dev/null", os.O_RDONLY)
    own = [os.dup(null) for _ in range(distinct)]
    fds = array.array("i", own if distinct else [null] * 251)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
    results = []

    def send():
        started = time.monotonic()
        try:
            a.sendmsg([b""], rights)
            result = "ok"
        except OSError as exc:
            result = failure(exc)
        results.append((result, time.monotonic() - started))

    workers = [threading.Thread(target=send, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(hold)
    early = sum(1 for result, _ in results if result == "EAGAIN")
    b.setblocking(False)
    deadline = time.monotonic() + 60
    while any(worker.is_alive() for worker in workers) and time.monotonic() < deadline:
        try:
            b.recv(16)
        except BlockingIOError:
            time.sleep(0.01)
    tally = {}
    for result, _ in results:
        tally[result] = tally.get(result, 0) + 1
    slowest_refusal = max((t for result, t in results if result == "EAGAIN"), default=0.0)
    for fd in (null, *own):
        os.close(fd)
    return {"tally": tally, "eagain_before_reading": early, "slowest_refusal": slowest_refusal,
            "unanswered": sum(worker.is_alive() for worker in workers)}


OPS = {"park": park}
'''
    + OPS_MAIN
)

THREADS = 100  # more than may park at once
PER_AGENT_FDS = _mediator._MAX_PARKED_FDS_PER_AGENT
# What the supervisor holds anyway: its own few dozen fds, and up to
# MEMORY_FD_CACHE /proc/<tid>/mem of the agent's threads (one each here).
BASE_FDS = 64 + MEMORY_FD_CACHE


def run_counting_fds(
    sandbox: Sandbox, *ops: str, timeout: float = 150
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]], int]:
    return run_ops_agent_counting_fds(sandbox, AGENT, *ops, timeout=timeout)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_parked_sends_passing_one_fd_many_times_stay_bounded(user_sandbox: Sandbox) -> None:
    result, reports, most = run_counting_fds(user_sandbox, f"park={THREADS},0,3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tamper" not in result.stderr, result.stderr[-3000:]
    report = reports["park"]
    assert report["result"] == "ok", report
    assert report["unanswered"] == 0, report
    tally = report["tally"]
    assert isinstance(tally, dict)
    # At most _MAX_PARKED_SENDS wait; the rest were refused at once.
    assert tally.get("ok", 0) <= _mediator._MAX_PARKED_SENDS, tally
    assert tally.get("EAGAIN", 0) >= THREADS - _mediator._MAX_PARKED_SENDS, tally
    assert set(tally) <= {"ok", "EAGAIN"}, tally
    assert report["eagain_before_reading"] == tally.get("EAGAIN", 0), report
    slowest = report["slowest_refusal"]
    assert isinstance(slowest, float) and slowest < 1.5, report
    # Two fds a parked send (the socket, the one fd passed), not 252.
    assert most < BASE_FDS + 2 * _mediator._MAX_PARKED_SENDS, most


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_parked_sends_passing_many_fds_meet_the_fd_cap(user_sandbox: Sandbox) -> None:
    # Each send passes 200 different fds: one parks, the next would hold
    # more than an agent's share of fds and is EAGAIN at once.
    result, reports, most = run_counting_fds(user_sandbox, "park=6,200,2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tamper" not in result.stderr, result.stderr[-3000:]
    report = reports["park"]
    assert report["result"] == "ok" and report["unanswered"] == 0, report
    parked = PER_AGENT_FDS // 201
    assert report["tally"] == {"ok": parked, "EAGAIN": 6 - parked}, report
    assert report["eagain_before_reading"] == 6 - parked, report
    assert most < BASE_FDS + PER_AGENT_FDS, most
