"""Without a cgroup, the agent's tree is still found, shown and killed whole.

A normal user without cgroup delegation gets no cgroup: the supervisor then
follows the tree below the trampoline with psutil (the agent's init is PID 1
of its namespace, or a subreaper, so orphans re-parent inside the tree).  The
test runs the supervisor as `nobody`, starts a double-forked daemon in the
agent, reads `ps --json` meanwhile, then has the agent read a secret: the
kill must take the daemon along, and `ps` must have listed it with its use.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from test_unprivileged import (
    AS_NOBODY,
    SYSTEM_PYTHON,
    nobody_env,
    pytestmark,
    unprivileged_home,
)

__all__ = ["pytestmark", "unprivileged_home"]  # the module's marks and fixture, reused

# A daemon nobody else runs: sleep with an odd duration, found by its command line.
DAEMON_SECONDS = "4321.987"


def _daemons() -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.info["cmdline"] == ["sleep", DAEMON_SECONDS]:
            found.append(process.pid)
    return found


def _agentsup(root: Path, *args: str) -> str:
    """`agentsup ARGS` as nobody, beside its run; its stdout."""
    result = subprocess.run(
        [*AS_NOBODY, SYSTEM_PYTHON, "-m", "agentsup", *args],
        env=nobody_env(root),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _ps_json(root: Path) -> list[dict[str, object]]:
    agents = json.loads(_agentsup(root, "ps", "--json"))
    assert isinstance(agents, list)
    return agents


def test_without_a_cgroup_the_whole_tree_is_shown_and_killed(unprivileged_home: Path) -> None:
    root = unprivileged_home
    workspace = root / "workspace"
    key = root / "home" / ".ssh" / "id_rsa"
    go = workspace / "go"
    # The subshell forks the daemon and exits at once: the daemon is re-parented
    # to the agent's init, in a session of its own.
    script = (
        f"(setsid sleep {DAEMON_SECONDS} </dev/null >/dev/null 2>&1 &); "
        "head -c 4000000 /dev/zero | tail -c 1 >/dev/null; "  # some CPU and I/O to show
        f"while [ ! -e {go} ]; do sleep 0.05; done; cat {key}"
    )
    assert not _daemons(), "a daemon from an earlier run is still there"
    agent = subprocess.Popen(
        [
            *AS_NOBODY,
            SYSTEM_PYTHON,
            "-m",
            "agentsup",
            "run",
            "--id",
            "treetest",
            "--workspace",
            str(workspace),
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
        env=nobody_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listed: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not _daemons():
            assert agent.poll() is None, agent.communicate()
            assert time.monotonic() < deadline, "the daemon never started"
            time.sleep(0.05)
        daemon = _daemons()[0]
        assert psutil.Process(daemon).ppid() != 0
        deadline = time.monotonic() + 15
        while True:  # the daemon's parent has exited once it is re-parented
            agents = [a for a in _ps_json(root) if a.get("id") == "treetest"]
            assert len(agents) == 1, agents
            pids = agents[0].get("pids")
            assert isinstance(pids, list)
            if daemon in pids or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        listed = [int(pid) for pid in pids]
        assert daemon in listed, f"ps did not list the daemon {daemon}: {agents[0]}"
        usage = agents[0].get("usage")
        assert isinstance(usage, dict), agents[0]
        # trampoline, init, the shell, the loop's sleep or the daemon...: all counted
        assert isinstance(usage["processes"], int) and usage["processes"] >= 4, usage
        assert isinstance(usage["rss_bytes"], int) and usage["rss_bytes"] > 0, usage
        assert isinstance(usage["cpu_seconds"], float | int), usage
        top = _agentsup(root, "top", "--json", "--iterations", "2", "--interval", "0.2")
        last = json.loads(top.splitlines()[-1])  # the last of the screens (JSON Lines)
        [shown] = [a for a in last["agents"] if a.get("id") == "treetest"]
        assert daemon in shown["pids"] and shown["usage"]["processes"] >= 4, shown
        go.touch()
        _out, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    assert agent.returncode == 137, err
    assert "rule 'secret-ssh' denied file_read" in err
    deadline = time.monotonic() + 5
    while _daemons() and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = [pid for pid in listed if psutil.pid_exists(pid)]
    leftover = _daemons()
    for pid in leftover:  # do not leave it to the next test
        os.kill(pid, 9)
    assert not leftover, "the double-forked daemon survived the kill"
    assert not survivors, f"processes of the agent survived: {survivors}"


@pytest.fixture(autouse=True)
def _no_stray_daemon() -> None:
    for pid in _daemons():
        os.kill(pid, 9)
