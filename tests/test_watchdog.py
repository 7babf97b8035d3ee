"""The watchdog kills the agent tree when the supervisor dies, and only then."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentsup.kernel.cgroup import AgentCgroup
from agentsup.supervision.watchdog import _parse_args, spawn_watchdog

VICTIMS = Path(__file__).parent / "victims"


@pytest.fixture
def cgroup() -> Iterator[AgentCgroup]:
    group = AgentCgroup.create(f"wd-{os.getpid()}-{time.monotonic_ns()}")
    try:
        yield group
    finally:
        group.kill()
        group.wait_empty(5)
        group.remove()


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _start_tree(group: AgentCgroup) -> tuple[subprocess.Popen[str], set[int]]:
    proc = subprocess.Popen(
        [sys.executable, str(VICTIMS / "cg_tree.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    group.add(proc.pid)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    tree = {int(p) for p in proc.stdout.readline().split()}
    assert group.pids() == tree
    return proc, tree


def _close(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait_watching(watchdog_pid: int, timeout: float = 5.0) -> None:
    """Wait until the watchdog holds its pidfd on the supervisor."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fd_dir = Path(f"/proc/{watchdog_pid}/fd")
        try:
            targets = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
        except FileNotFoundError:
            targets = []
        if "anon_inode:[pidfd]" in targets:
            return
        time.sleep(0.01)
    raise AssertionError("the watchdog never opened a pidfd")


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_supervisor_death_kills_tree_and_removes_groups(cgroup: AgentCgroup) -> None:
    supervisor = _sleeper()
    agent, tree = _start_tree(cgroup)
    watchdog = spawn_watchdog(supervisor.pid, cgroup)
    try:
        _wait_watching(watchdog.pid)
        assert watchdog.pid not in cgroup.pids()
        assert all(_alive(pid) for pid in tree)

        supervisor.kill()
        supervisor.wait()
        deadline = time.monotonic() + 2
        while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(_alive(pid) for pid in tree)
        assert watchdog.wait(2) == 0
        assert not any(os.path.exists(path) for path in cgroup.paths)
    finally:
        supervisor.kill()
        supervisor.wait()
        watchdog.kill()
        watchdog.wait()
        _close(agent)


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_supervisor_already_gone_acts_at_once(cgroup: AgentCgroup) -> None:
    supervisor = _sleeper()
    supervisor.kill()
    supervisor.wait()
    agent, tree = _start_tree(cgroup)
    watchdog = spawn_watchdog(supervisor.pid, cgroup)
    try:
        assert watchdog.wait(3) == 0
        assert not any(_alive(pid) for pid in tree)
        assert not any(os.path.exists(path) for path in cgroup.paths)
    finally:
        watchdog.kill()
        watchdog.wait()
        _close(agent)


def _run_watchdog(supervisor_pid: int, group: AgentCgroup) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "agentsup.supervision.watchdog", "--pid", str(supervisor_pid)]
    for path in group.paths:
        command += ["--group", path]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_sigterm_exits_quietly_and_leaves_agent_alone(cgroup: AgentCgroup) -> None:
    supervisor = _sleeper()
    agent, tree = _start_tree(cgroup)
    watchdog = _run_watchdog(supervisor.pid, cgroup)
    try:
        _wait_watching(watchdog.pid)
        watchdog.terminate()
        _, stderr = watchdog.communicate(timeout=5)
        assert (watchdog.returncode, stderr) == (0, "")
        assert all(_alive(pid) for pid in tree)
    finally:
        supervisor.kill()
        supervisor.wait()
        _close(agent)


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_exits_when_supervisor_removed_the_groups(cgroup: AgentCgroup) -> None:
    supervisor = _sleeper()
    watchdog = _run_watchdog(supervisor.pid, cgroup)
    try:
        _wait_watching(watchdog.pid)
        cgroup.remove()
        _, stderr = watchdog.communicate(timeout=5)
        assert (watchdog.returncode, stderr) == (0, "")
        assert supervisor.poll() is None
    finally:
        supervisor.kill()
        supervisor.wait()
        watchdog.kill()
        watchdog.wait()


@pytest.mark.parametrize(
    "argv",
    [[], ["--pid", "12"], ["--group", "/x"], ["--pid", "x", "--group", "/x"], ["--bogus", "1"]],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit, match="usage"):
        _parse_args(argv)


def test_arguments() -> None:
    assert _parse_args(["--pid", "7", "--group", "/a", "--group", "/b"]) == (7, ["/a", "/b"])
