"""A supervisor no agent can break: bad arguments, signal storms, thousands of threads.

Each test runs a real agent that attacks the supervisor's own machinery, and
checks that every syscall was answered, the supervisor lived on, and what it
decided still happened (a secret read kills the agent).
"""

from __future__ import annotations

import os
import resource
import select
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import test_unprivileged as unprivileged
from conftest import AGENTS, Sandbox, agent_reports

# The fixture that runs a copy of agentsup as `nobody`, shared with that module.
nobody_home = unprivileged.unprivileged_home

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

ATTACK = "attack.py"

FUZZ_POLICY = """
name: fuzz
default: deny
on_violation: block
rules:
  - id: workspace
    actions: [file_read, file_write, file_delete, file_move, file_chmod]
    target: "{workspace}/**"
    decision: allow
  - id: system-read
    actions: [file_read]
    pattern: '^/(?:usr|lib|lib64|etc|proc|dev|bin|sys)(?:/|\\Z)'
    decision: allow
  - id: its-python
    actions: [file_read]
    target: "{python}/**"
    decision: allow
  - id: the-fuzzer
    actions: [shell_execute]
    pattern: '^python3 attack\\.py '
    decision: allow
  - id: its-interpreter
    actions: [process_spawn]
    target: "**"
    decision: allow
"""


@pytest.fixture
def attacker(sandbox: Sandbox) -> Sandbox:
    shutil.copy(AGENTS / ATTACK, sandbox.workspace / ATTACK)
    return sandbox


def _reports(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    return {str(r["op"]): r for r in agent_reports(result.stdout)}


def test_a_pointer_past_user_space_is_efault_and_the_supervisor_lives(attacker: Sandbox) -> None:
    result = attacker.run("python3", ATTACK, "bad_pointer", "then", "hostname")
    reports = _reports(result)
    assert reports["bad_pointer"]["data"] == ["EFAULT"] * 4, result.stderr
    assert "hostname" in reports  # the agent went on, so the supervisor answered it
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_the_notification_fuzzer_leaves_the_supervisor_alive(attacker: Sandbox) -> None:
    """Thousands of notified syscalls with random arguments: each is answered."""
    policy = attacker.policy("fuzz", FUZZ_POLICY)
    calls = 0
    for seed in ("1", "2"):
        fuzz_dir = attacker.workspace / f"fuzz-{seed}"  # a fresh one: the last may be mode 000
        fuzz_dir.mkdir()
        result = attacker.run(
            "python3",
            ATTACK,
            *("fuzz", "3000", "9", seed, str(fuzz_dir)),
            "then",
            "hostname",
            policy=policy,
            timeout=60,
        )
        reports = _reports(result)
        assert "fuzz" in reports, result.stdout[-2000:] + result.stderr[-3000:]
        assert "hostname" in reports, result.stderr[-3000:]
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        data = reports["fuzz"]["data"]
        assert isinstance(data, dict)
        calls += int(data["calls"])
    assert calls >= 2000, calls
    verify = attacker.agentsup("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_denied_path_that_is_not_utf8_is_recorded_and_kills(attacker: Sandbox) -> None:
    """Its record once could not be written, and the kill that follows it never came."""
    secret = os.fsdecode(bytes(attacker.key.parent) + b"/id_\xff")
    Path(secret).write_text("a key with an odd name\n")  # an absent file is ENOENT, no rule
    result = attacker.run("python3", "-c", f"open({secret.encode(errors='surrogateescape')!r})")
    assert result.returncode == 137, result.stderr[-2000:]
    (record,) = [
        r
        for r in attacker.audit_records()
        if r.get("rule") == "secret-ssh" and r["kind"] == "decision"
    ]
    assert record["target"] == str(attacker.key.parent) + "/id_\\xff"


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv")
def test_an_ordinary_users_supervisor_survives_bad_arguments(nobody_home: Path) -> None:
    """Once, a pointer past 2**63 ended agentsup and left a normal user's agent running."""
    root = nobody_home
    workspace = root / "workspace"
    shutil.copy(AGENTS / ATTACK, workspace / ATTACK)
    (workspace / "fuzz").mkdir()
    policies = root / "home" / "policies"
    policies.mkdir(exist_ok=True)
    # Found first under the default name: the fuzzer's own policy, for this user.
    (policies / "strict.yaml").write_text(FUZZ_POLICY.replace("name: fuzz", "name: strict"))
    for path in (workspace / ATTACK, workspace / "fuzz", policies, policies / "strict.yaml"):
        os.chown(path, unprivileged.NOBODY, unprivileged.NOBODY)
    result = unprivileged.run_as_nobody(
        root,
        *("python3", ATTACK, "bad_pointer", "then", "fuzz", "1500", "8", "3"),
        *(str(workspace / "fuzz"), "then", "hostname"),
    )
    reports = _reports(result)
    assert reports["bad_pointer"]["data"] == ["EFAULT"] * 4, result.stderr[-2000:]
    fuzzed = reports["fuzz"]["data"]
    assert isinstance(fuzzed, dict) and fuzzed["calls"] >= 500, fuzzed
    assert "hostname" in reports, result.stderr[-2000:]
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]


def _flood(pid: int, stop: threading.Event, sent: list[int]) -> None:
    """SIGCHLD, SIGWINCH and SIGURG at the supervisor, as fast as they go."""
    signals = (signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG)
    while not stop.is_set():
        for sig in signals:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            sent[0] += 1


def test_a_signal_storm_at_the_supervisor_breaks_no_open(attacker: Sandbox) -> None:
    """Every open answered during the storm is a real fd with the file's data."""
    data = attacker.workspace / "data.txt"
    data.write_text("the data\n")
    proc = subprocess.Popen(
        attacker.command("python3", ATTACK, "open_many", str(data), "3000"),
        env=attacker.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop, sent = threading.Event(), [0]
    flooder = threading.Thread(target=_flood, args=(proc.pid, stop, sent))
    time.sleep(0.3)  # the supervisor has set up its handlers
    flooder.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        flooder.join()
    reports = {str(r["op"]): r for r in agent_reports(out)}
    assert reports.get("open_many", {}).get("result") == "ok", (reports, err[-2000:])
    assert proc.returncode == 0, err[-2000:]
    assert sent[0] > 1000, sent


def _low_fd_limit() -> None:
    # The supervisor's own limit: 20,000 threads must fit under it many times over.
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))


def test_twenty_thousand_threads_later_a_secret_read_still_kills(attacker: Sandbox) -> None:
    data = attacker.workspace / "data.txt"
    data.write_text("x")
    proc = subprocess.run(
        attacker.command(
            "python3",
            ATTACK,
            *("threads_then", "20000", str(data)),
            *("then", "read_then_survive", str(attacker.key)),
        ),
        env=attacker.env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_low_fd_limit,
    )
    reports = _reports(proc)
    assert reports.get("threads", {}).get("data") == 20000, proc.stderr[-2000:]
    assert "SURVIVED" not in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == 137, proc.stderr[-2000:]
    kills = [r for r in attacker.audit_records() if r.get("kind") == "signal"]
    assert kills and kills[-1]["signal"] == "SIGKILL"


def test_a_kill_the_supervisor_cannot_confirm_escalates_and_is_recorded(
    attacker: Sandbox,
) -> None:
    """Out of fds when a secret is read: the kill goes out through fds opened at start."""
    go = attacker.workspace / "go"
    proc = subprocess.Popen(
        attacker.command(
            "python3",
            ATTACK,
            *("wait_for", str(go), "then", "read_then_survive", str(attacker.key)),
        ),
        env=attacker.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert '"waiting"' in proc.stdout.readline()
    # Not one more fd for the supervisor: reading the group's members fails.
    in_use = len(os.listdir(f"/proc/{proc.pid}/fd"))
    resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (in_use, in_use))
    go.write_text("")
    out, err = proc.communicate(timeout=60)
    assert "SURVIVED" not in out, err[-2000:]
    assert proc.returncode == 137, err[-2000:]
    kills = [r for r in attacker.audit_records() if r.get("signal") == "SIGKILL"]
    assert kills[0]["rule"] == "secret-ssh", kills
    assert kills[0]["confirmed"] is False and "cgroup.kill" in kills[0]["escalated"], kills


def test_an_unforeseen_error_fails_that_syscall_with_eio_and_is_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The contract of `_serve_one`, for a bug no agent has found yet."""
    import errno
    import socket

    from agentsup.kernel import seccomp
    from agentsup.supervision import mediator as mediation
    from agentsup.supervision.broker import BrokerClient

    answered: list[tuple[int, int]] = []
    recorded: list[tuple[str, str]] = []
    notification = seccomp.Notification(7, os.getpid(), 2, 0, (0, 0, 0, 0, 0, 0))  # open
    monkeypatch.setattr(seccomp, "receive", lambda _listener: notification)
    monkeypatch.setattr(seccomp, "respond_error", lambda _l, nid, err: answered.append((nid, err)))

    class Judge:
        allow_cache: set[object] = set()

        def mediation_failed(self, syscall: str, _tid: int, error: str) -> None:
            recorded.append((syscall, error))

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        hands = BrokerClient(ours)
        mediator = mediation.Mediator(-1, Judge(), lambda tid: tid, hands)  # type: ignore[arg-type]

        def broken(_n: object, _name: str) -> None:
            raise KeyError("a bug")

        mediator._handlers[2] = broken
        assert mediator.on_ready(select.EPOLLIN) is True  # the loop goes on
    assert answered == [(7, errno.EIO)]
    assert recorded == [("open", "KeyError: 'a bug'")]


STOPPER = """
name: stopper
extends: [strict]
rules:
  - id: stop-here
    actions: [file_write]
    target: "{workspace}/forbidden.txt"
    decision: deny
    priority: 1
    on_violation: sigstop
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_stopped_tree_keeps_its_broker_running(attacker: Sandbox) -> None:
    """Stopped in an ADDFD, the broker would hand the agent's open() a 0."""
    from agentsup.kernel.proc import process_state

    policy = attacker.policy("stopper", STOPPER)
    forbidden = str(attacker.workspace / "forbidden.txt")
    proc = subprocess.Popen(
        attacker.command("python3", "try_syscall.py", "write", forbidden, policy=policy),
        env=attacker.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        broker = agent = 0
        while time.monotonic() < deadline:
            inits = [
                child
                for trampoline in _children(proc.pid)
                for child in _children(trampoline)
                if Path(f"/proc/{child}/comm").read_text().strip() == "agentsup-init"
            ]
            if inits and _children(inits[0]):
                broker, agent = inits[0], _children(inits[0])[0]
                if process_state(agent) == "T":
                    break
            time.sleep(0.05)
        assert process_state(agent) == "T"  # the agent is stopped by the violation
        assert process_state(broker) in ("S", "R"), process_state(broker)
    finally:
        proc.kill()
        proc.wait()
