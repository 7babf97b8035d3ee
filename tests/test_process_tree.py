"""ProcessTree without a cgroup: the tree below the root, found with psutil and killed whole.

The shape is the supervisor's without a PID namespace: a root (the
trampoline), its child the init (a subreaper), the agent below it, and a
double-forked daemon of the agent's that was re-parented to the init.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from agentsup.supervision.judge import ProcessTree

TREE = textwrap.dedent(
    """
    import os, sys, time
    from agentsup.kernel import privileges

    def hold():
        while True:
            time.sleep(60)

    report = sys.stdout.fileno()
    if os.fork() == 0:  # the init
        privileges.become_subreaper()
        if os.fork() == 0:  # the agent: a daemon that double-forks away from it
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.write(report, b"%d\\n" % os.getpid())
                    hold()
                os._exit(0)
            os.wait()
            hold()
        hold()
    hold()
    """
)


def _start() -> tuple[subprocess.Popen[bytes], int]:
    root = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE)
    assert root.stdout is not None
    daemon = int(root.stdout.readline())
    deadline = time.monotonic() + 5
    init = psutil.Process(root.pid).children()[0].pid
    while psutil.Process(daemon).ppid() != init:  # re-parented once its parent is gone
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return root, daemon


def _cleanup(root: subprocess.Popen[bytes], *strays: int) -> None:
    """Kill the tree, and `strays`: what a test re-parented out of it (else it outlives the run)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(root.pid).children(recursive=True):
            child.kill()
    for pid in strays:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    root.kill()
    root.wait()
    assert root.stdout is not None
    root.stdout.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_tree_holds_a_re_parented_daemon_and_dies_whole() -> None:
    root, daemon = _start()
    try:
        tree = ProcessTree(None, root.pid)
        found = tree.pids()
        # root, init, agent, daemon
        assert root.pid in found and daemon in found and len(found) == 4, found
        assert tree.has(daemon) and not tree.has(os.getpid())
        everyone = set(found)
        assert tree.kill() == []
        assert not [pid for pid in everyone - {root.pid} if _alive(pid)]
        root.wait(5)
        assert root.returncode == -signal.SIGKILL
    finally:
        _cleanup(root)


def test_a_dead_init_would_let_the_daemon_out() -> None:
    """Why the init is killed last: once it is gone, the daemon is no longer below the root."""
    root, daemon = _start()
    everyone = {daemon}
    try:
        tree = ProcessTree(None, root.pid)
        init = psutil.Process(root.pid).children()[0].pid
        everyone |= tree.pids()
        os.kill(init, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while daemon in tree.pids():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _alive(daemon)  # out of reach: what a cgroup or a PID namespace prevents
    finally:
        # The agent and the daemon were re-parented out of the tree with the init.
        _cleanup(root, *(everyone - {root.pid}))
