"""Attacks on the broker's native path, each run with the native path on and off.

The broker is the agent's init and, with the native path, decides plainly
allowed opens on its own copy of the policy.  So it must never block for
good (its death or hang is the agent's), and it must never go on deciding
once the supervisor has given up on it:

- a FIFO made under a name the broker is creating does not block it: the
  create only ever creates (the native path forwards a name that appeared;
  the Python path opens it as an existing FIFO: a writer waits for a reader
  in a helper, not in the broker);
- a broker stalled past the supervisor's reply timeout (an open waiting out
  the agent's own file lease) is hung up on; it no longer hears of reloads,
  so its native path ends rather than go on allowing what the reloaded
  policy refuses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, fastpath_env, supervisor_stopped

from agentsup.supervision.broker import REPLY_TIMEOUT

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

FIFO_RACE = textwrap.dedent(
    """
    import ctypes, os, signal, sys, threading
    libc = ctypes.CDLL(None, use_errno=True)
    name = os.path.join(sys.argv[1], "f")
    done = False
    signal.signal(signal.SIGALRM, lambda *_: None)
    signal.siginterrupt(signal.SIGALRM, True)
    def make_fifos():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # the alarm is the creates'
        while not done:
            try:
                os.mkfifo(name)
            except OSError:
                pass
    maker = threading.Thread(target=make_fifos)
    maker.start()
    for _ in range(500):
        # A FIFO with no reader: the open waits, as it waits bare, until the
        # alarm interrupts it (EINTR; libc's open, which does not retry).
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        fd = libc.open(name.encode(), os.O_WRONLY | os.O_CREAT, 0o644)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(name)
        except OSError:
            pass
    done = True
    maker.join()
    print("finished", flush=True)
    """
)


@both_paths
def test_a_fifo_made_under_a_name_being_created_never_blocks_the_broker(
    sandbox: Sandbox, native: bool
) -> None:
    """One thread creates and removes a file, another makes a FIFO under its name.

    A create that found the name missing and then opened the FIFO for
    writing in the broker would wait for a reader, and no reader can ever
    open it: every open is the broker's, which is waiting.  The agent would
    hang for good.  Opened as the kernel opens it, the writer waits (in a
    helper of the broker's) until its alarm interrupts it, as it would bare.
    """
    script = sandbox.workspace / "fifo_race.py"
    script.write_text(FIFO_RACE)
    result = sandbox.run(
        "python3", str(script), str(sandbox.workspace), timeout=60, env=fastpath_env(native)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "finished\n"


STALL = textwrap.dedent(
    """
    import errno, os, sys, threading, time
    ws = sys.argv[1]
    readable = f"{ws}/readable.txt"
    def read():
        try:
            return open(readable).read().strip()
        except OSError as exc:
            return errno.errorcode[exc.errno]
    print("before:", read(), flush=True)
    done = False
    go_busy = threading.Event()
    def busy():  # keeps the supervisor asking the broker (symlink is forwarded)
        go_busy.wait()
        while not done:
            try:
                os.symlink("target", f"{ws}/busy")
            except OSError:
                pass
    # Every thread is started first: a new thread's first malloc reads /sys, forwarded.
    workers = [threading.Thread(target=busy) for _ in range(8)]
    for thread in workers:
        thread.start()
    print("ready", flush=True)
    sys.stdin.readline()  # the supervisor is stopped now: what it is sent waits
    go_busy.set()
    time.sleep(0.3)
    print("busy", flush=True)
    sys.stdin.readline()  # the broker was stopped past the supervisor's reply timeout
    done = True
    for worker in workers:
        worker.join()
    print("after the stall:", read(), flush=True)
    print("reload", flush=True)
    sys.stdin.readline()
    print("after the reload:", read(), flush=True)
    """
)


def _broker_of(supervisor: int) -> int:
    """The agent's broker (`agentsup-init`), below the supervisor's trampoline."""
    pending = [supervisor]
    while pending:
        pid = pending.pop()
        with open(f"/proc/{pid}/comm") as comm:
            if comm.read().strip() == "agentsup-init":
                return pid
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            pending += [int(child) for child in children.read().split()]
    raise AssertionError("no broker below the supervisor")


RELOADED = """
name: stalled
extends: [strict]
rules:
  - id: now-refused
    actions: [file_read]
    target: "{workspace}/readable.txt"
    decision: deny
    priority: 1
    on_violation: block
"""


@both_paths
def test_a_broker_that_stalled_past_the_reply_timeout_decides_nothing_more(
    sandbox: Sandbox, native: bool
) -> None:
    """The broker stops answering (here SIGSTOPped from the host: the agent
    once did it with a lease on its own file, which the filter now refuses),
    the supervisor's request times out and it gives up on the broker.  The
    broker back, a policy reload must still reach every decision (the Python
    path fails everything with EIO from then on; the native path ends the
    agent).

    The supervisor is stopped while the broker is, so that it has requests
    for the broker queued (forwarded symlinks) whatever the timing."""
    ws = sandbox.workspace
    (ws / "readable.txt").write_text("readable\n")
    script = ws / "stall.py"
    script.write_text(STALL)
    policy = sandbox.policy("stalled", "name: stalled\nextends: [strict]\n")
    lines = []
    with subprocess.Popen(
        sandbox.command("python3", str(script), str(ws), policy=policy),
        env={**sandbox.env, **fastpath_env(native)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            assert proc.stdout.readline() == "before: readable\n"
            assert proc.stdout.readline() == "ready\n"
            broker = _broker_of(proc.pid)
            with supervisor_stopped(proc):
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert proc.stdout.readline() == "busy\n"
                os.kill(broker, signal.SIGSTOP)
            try:
                time.sleep(REPLY_TIMEOUT + 2)  # the supervisor asks; no answer comes
            finally:
                os.kill(broker, signal.SIGCONT)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            for line in proc.stdout:
                lines.append(line)
                if line == "reload\n":
                    Path(policy).write_text(RELOADED)
                    time.sleep(3)  # the policy directory is watched: an unsealed edit reloads
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
            _out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert not any(line.endswith(": readable\n") for line in lines), lines
    # One line says why, and one record: the broker stopped answering.
    assert err.count("stopped answering") == 1, err
    records = [r for r in sandbox.audit_records() if "stopped answering" in str(r.get("message"))]
    assert len(records) == 1 and records[0]["rule"] == "agentsup-mediation-error"
    if native:
        assert proc.returncode == 137  # its broker ended it
        assert lines == []
    else:
        assert lines == [
            "after the stall: EIO\n",
            "reload\n",
            "after the reload: EIO\n",
        ]
