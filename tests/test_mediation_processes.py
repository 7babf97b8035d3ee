"""Other processes are out of the agent's reach, with or without a PID namespace of its own.

With its own PID namespace the agent cannot even name another process.  On
a kernel that refuses one (`--allow-degraded pid`), the calls that take a
pid (prlimit64, setpriority, sched_*, ioprio_set, kcmp, migrate_pages,
pidfd_getfd, ...) are mediated: only the agent's own tree may be named.
fanotify is refused for every policy; the watchdog outlives a poll that
fails.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AGENTS, Sandbox, agent_reports

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

ATTACK = "attack.py"
ALWAYS = "agentsup-always-refused"

# Starts `agentsup run` on a kernel that, as far as it can tell, has no PID
# namespaces: unshare(CLONE_NEWPID) fails with EPERM.
WITHOUT_PID_NAMESPACE = """
import errno, os, sys, pyseccomp
flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
flt.add_rule(pyseccomp.ERRNO(errno.EPERM), "unshare",
             pyseccomp.Arg(0, pyseccomp.MASKED_EQ, 0x20000000, 0x20000000))
flt.load()
os.execv(sys.executable, [sys.executable, "-m", "agentsup", *sys.argv[1:]])
"""


@pytest.fixture
def attacker(sandbox: Sandbox) -> Sandbox:
    shutil.copy(AGENTS / ATTACK, sandbox.workspace / ATTACK)
    return sandbox


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the same user outside the agent's tree."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _run_without_pid_namespace(
    sandbox: Sandbox, *program: str, policy: str = "strict"
) -> subprocess.CompletedProcess[str]:
    command = sandbox.command(*program, policy=policy, extra=["--allow-degraded", "pid"])
    assert command[1:3] == ["-m", "agentsup"]
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PID_NAMESPACE, *command[3:]],
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _state(pid: int) -> tuple[object, ...]:
    return (
        os.getpriority(os.PRIO_PROCESS, pid),
        os.sched_getscheduler(pid),
        os.sched_getaffinity(pid),
        resource.prlimit(pid, resource.RLIMIT_NOFILE),
        resource.prlimit(pid, resource.RLIMIT_CPU),
    )


def test_without_a_pid_namespace_other_processes_cannot_be_reached(
    attacker: Sandbox, victim: subprocess.Popen[bytes]
) -> None:
    pid = str(victim.pid)
    before = _state(victim.pid)
    ops = {
        "renice": [pid],
        "prlimit": [pid],
        "prlimit_cpu": [pid],
        "sched_idle": [pid],
        "sched_setattr": [pid],
        "affinity": [pid],
        "ioprio": [pid],
        "kcmp": [pid],
        "migrate_pages": [pid],
        "pidfd_getfd": [pid, "1"],
        "renice_user": ["0"],
    }
    chained: list[str] = []
    for op, args in ops.items():
        chained += [*(["then"] if chained else []), op, *args]
    result = _run_without_pid_namespace(attacker, "python3", ATTACK, *chained, "then", "own_tree")
    assert "running without pid namespace" in result.stderr, result.stderr
    reports = {str(r["op"]): r for r in agent_reports(result.stdout)}
    for op in ops:
        assert reports[op]["result"] == "EPERM", (op, reports.get(op), result.stderr[-2000:])
    # Its own tree is still its own to manage.
    assert reports["own_tree"]["result"] == "ok", reports["own_tree"]
    assert _state(victim.pid) == before
    refused = {
        (r["syscall"], r["target"])
        for r in attacker.audit_records()
        if r.get("rule") == "agentsup-outside-tree"
    }
    for syscall in ("prlimit64", "setpriority", "sched_setscheduler", "sched_setattr"):
        assert (syscall, pid) in refused, (syscall, refused)
    for syscall in ("sched_setaffinity", "ioprio_set", "kcmp", "migrate_pages"):
        assert (syscall, pid) in refused, (syscall, refused)
    assert ("setpriority", "user:0") in refused
    # Taking an fd out of another process is ptrace's power: refused for every agent.
    always = [r["target"] for r in attacker.audit_records() if r.get("rule") == ALWAYS]
    assert always == ["pidfd_getfd"], always


def test_without_a_pid_namespace_the_supervisor_and_watchdog_keep_their_limits(
    attacker: Sandbox,
) -> None:
    """What killed a supervisor once: its RLIMIT_CPU, and the watchdog's, set to one second."""
    pids_file = attacker.workspace / "pids"
    command = attacker.command(
        "python3", ATTACK, "prlimit_from", str(pids_file), extra=["--allow-degraded", "pid"]
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_PID_NAMESPACE, *command[3:]],
        env=attacker.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    supervisor = proc.pid  # the launcher execs agentsup in place
    watchdog = _watchdog_of(supervisor)
    pids_file.write_text(f"{supervisor} {watchdog}\n")
    out, err = proc.communicate(timeout=60)
    reports = {str(r["op"]): r for r in agent_reports(out)}
    assert reports["prlimit_from"]["data"] == {
        str(supervisor): "EPERM",
        str(watchdog): "EPERM",
    }, err[-2000:]
    assert proc.returncode == 0, err[-2000:]


def _watchdog_of(supervisor: int) -> int:
    """The supervisor's child that runs the watchdog module."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"agentsup.supervision.watchdog" in cmdline:
                return int(child)
        time.sleep(0.05)
    raise AssertionError("no watchdog started")


def test_with_its_own_pid_namespace_the_agent_manages_its_own_tree(attacker: Sandbox) -> None:
    result = attacker.run("python3", ATTACK, "own_tree")
    (report,) = agent_reports(result.stdout)
    assert report["result"] == "ok", (report, result.stderr)


def test_fanotify_is_refused_and_recorded_for_every_policy(attacker: Sandbox) -> None:
    result = attacker.run(
        "python3", ATTACK, "fanotify", "then", "fanotify_mark", policy="permissive"
    )
    reports = {str(r["op"]): r for r in agent_reports(result.stdout)}
    assert reports["fanotify"]["result"] == "EPERM", result.stderr
    assert reports["fanotify_mark"]["result"] == "EPERM", result.stderr
    refused = {
        r["target"]: r["severity"] for r in attacker.audit_records() if r.get("rule") == ALWAYS
    }
    assert refused == {"fanotify_init": "critical", "fanotify_mark": "critical"}


def _watchdog(tmp_path: Path, supervisor: int) -> subprocess.Popen[str]:
    group = tmp_path / "group"
    group.mkdir()
    (group / "cgroup.procs").write_text("")
    module = "agentsup.supervision.watchdog"
    return subprocess.Popen(
        [sys.executable, "-m", module, "--pid", str(supervisor), "--group", str(group)],
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_watchdog_survives_a_poll_that_fails(tmp_path: Path) -> None:
    """An agent once set the watchdog's RLIMIT_NOFILE to nothing; poll failed and it left."""
    supervisor = subprocess.Popen(["sleep", "60"])
    watchdog = _watchdog(tmp_path, supervisor.pid)
    try:
        time.sleep(1.0)  # it is waiting on the supervisor's pidfd
        resource.prlimit(watchdog.pid, resource.RLIMIT_NOFILE, (0, 0))
        time.sleep(1.5)  # several polls fail meanwhile
        assert watchdog.poll() is None, watchdog.stderr.read() if watchdog.stderr else ""
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
        _out, err = watchdog.communicate(timeout=20)
        assert watchdog.returncode == 0, err
    finally:
        supervisor.kill()
        watchdog.kill()
        watchdog.wait()
