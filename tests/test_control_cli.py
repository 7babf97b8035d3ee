"""`agentsup ps|pending|resume|deny|stop|kill|totp` end to end.

Each supervisor is a helper process that serves a real ControlServer around a
fake API and records the calls it gets in a file; the CLI runs as
`python -m agentsup`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyotp
import pytest

from agentsup.paths import Locations, default_locations

HELPER = r"""
import json, os, select, signal, sys
from pathlib import Path
from agentsup.control.channel import ControlError, ControlServer
from agentsup.paths import default_locations
from agentsup.integrity.totp import TotpVerifier

prefix, calls_path = sys.argv[1], Path(sys.argv[2])


class FakeAPI:
    def agents(self):
        return [
            {"id": f"{prefix}1", "pid": 4242, "policy": "strict",
             "state": "stopped: awaiting approval", "uptime_s": 125.0, "pending": 1,
             "workspace": "/w"},
            {"id": f"{prefix}2", "pid": 4243, "policy": "read_only", "state": "running",
             "uptime_s": 7.0, "pending": 0, "workspace": "/w"},
        ]

    def pending(self):
        return [{"request_id": f"{prefix}-r1", "agent": f"{prefix}1",
                 "action_type": "file_write", "target": "/etc/hosts", "rule": "ask-etc",
                 "message": "writes to /etc need a person", "age_s": 65.0,
                 "kind": "approval"}]

    def _act(self, op, agent_id, uid, reason):
        if agent_id.endswith("2") and op == "deny":
            raise ControlError(f"nothing pending for {agent_id!r}")
        with calls_path.open("a") as f:
            f.write(json.dumps([op, agent_id, uid, reason]) + "\n")
        return f"{op}: {agent_id} done"

    def resume(self, agent_id, *, uid, reason): return self._act("resume", agent_id, uid, reason)
    def deny(self, agent_id, *, uid, reason): return self._act("deny", agent_id, uid, reason)
    def stop(self, agent_id, *, uid, reason): return self._act("stop", agent_id, uid, reason)
    def kill(self, agent_id, *, uid, reason): return self._act("kill", agent_id, uid, reason)

    def audit(self, record):
        with calls_path.open("a") as f:
            f.write(json.dumps(["audit", record]) + "\n")


locations = default_locations()
server = ControlServer(locations.runtime_dir, FakeAPI(), TotpVerifier(locations),
                       owner_uid=os.getuid())
running = True
def stop(signum, frame):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
print(server.path, flush=True)
while running:
    poller = select.poll()
    for fd in server.fds():
        poller.register(fd, select.POLLIN)
    for fd, _ in poller.poll(50):
        server.on_ready(fd)
server.close()
"""


class Supervisor:
    def __init__(self, tmp: Path, prefix: str) -> None:
        script = tmp / "helper_supervisor.py"
        script.write_text(HELPER)
        self.calls_path = tmp / f"calls-{prefix}.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, str(script), prefix, str(self.calls_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.path = Path(self.proc.stdout.readline().strip())
        assert self.path.name == f"sup-{self.proc.pid}.sock"

    def calls(self, kind: str | None = None) -> list[list[object]]:
        if not self.calls_path.exists():
            return []
        rows = [json.loads(line) for line in self.calls_path.read_text().splitlines()]
        return [r for r in rows if kind is None or r[0] == kind]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def locs(locations: Path) -> Locations:
    return default_locations()


@pytest.fixture
def start_supervisor(tmp_path: Path, locs: Locations) -> Iterator[Callable[[str], Supervisor]]:
    started: list[Supervisor] = []

    def start(prefix: str) -> Supervisor:
        sup = Supervisor(tmp_path, prefix)
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.close()


def agentsup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentsup", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def totp_secret(locs: Locations) -> str:
    result = agentsup("totp", "init")
    assert result.returncode == 0, result.stderr
    return locs.totp_secret.read_text().strip()


def test_ps_without_supervisors(locs: Locations) -> None:
    result = agentsup("ps")
    assert result.returncode == 0
    assert result.stdout.strip() == "no supervised agents"
    result = agentsup("ps", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == []


def test_totp_init_prints_uri_and_refuses_overwrite(locs: Locations) -> None:
    result = agentsup("totp", "init")
    assert result.returncode == 0, result.stderr
    secret = locs.totp_secret.read_text().strip()
    uri, hint = result.stdout.splitlines()
    assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
    assert "authenticator app" in hint
    again = agentsup("totp", "init")
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert locs.totp_secret.read_text().strip() == secret
    forced = agentsup("totp", "init", "--force")
    assert forced.returncode == 0
    assert locs.totp_secret.read_text().strip() != secret


def test_ps_and_pending_across_supervisors(
    locs: Locations, start_supervisor: Callable[[str], Supervisor]
) -> None:
    start_supervisor("a")
    start_supervisor("b")
    result = agentsup("ps")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "ID", "PID", "POLICY", "STATE", "UPTIME", "PENDING",
        "PROCS", "CPU%", "MEM", "READ", "WRITE", "NET",
    ]  # fmt: skip
    assert sorted(row.split()[0] for row in rows) == ["a1", "a2", "b1", "b2"]
    a1 = next(row for row in rows if row.startswith("a1 "))
    assert "stopped: awaiting approval" in a1 and "2m05s" in a1
    listed = json.loads(agentsup("ps", "--json").stdout)
    assert {a["id"] for a in listed} == {"a1", "a2", "b1", "b2"}

    pending = agentsup("pending")
    assert pending.returncode == 0
    header, *rows = pending.stdout.splitlines()
    assert header.split() == ["REQUEST", "AGENT", "ACTION", "TARGET", "RULE", "MESSAGE", "AGE"]
    assert len(rows) == 2
    assert "writes to /etc need a person" in rows[0] and "1m05s" in rows[0]


def test_resume_with_code_reaches_the_right_supervisor_once(
    locs: Locations, start_supervisor: Callable[[str], Supervisor]
) -> None:
    secret = totp_secret(locs)
    a = start_supervisor("a")
    b = start_supervisor("b")
    code = pyotp.TOTP(secret).now()
    result = agentsup("resume", "b1", "--code", code, "--reason", "looked fine")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "resume: b1 done"
    assert b.calls("resume") == [["resume", "b1", os.getuid(), "looked fine"]]
    assert a.calls() == []
    [[_, audit]] = b.calls("audit")
    assert isinstance(audit, dict)
    assert audit["kind"] == "approval" and audit["outcome"] == "ok"

    replay = agentsup("resume", "b1", "--code", code)
    assert replay.returncode == 1
    assert "already used" in replay.stderr
    assert len(b.calls("resume")) == 1


def test_resume_refusals(locs: Locations, start_supervisor: Callable[[str], Supervisor]) -> None:
    secret = totp_secret(locs)
    sup = start_supervisor("a")
    good = pyotp.TOTP(secret).now()
    wrong = agentsup("resume", "a1", "--code", "000000" if good != "000000" else "111111")
    assert wrong.returncode == 1
    assert "resume refused: wrong TOTP code" in wrong.stderr
    unknown = agentsup("resume", "zz", "--code", good)
    assert unknown.returncode == 1
    assert "no agent 'zz' (see agentsup ps)" in unknown.stderr
    missing = agentsup("resume", "a1")
    assert missing.returncode == 2  # --code is required by the parser
    assert sup.calls("resume") == []
    assert "refused: wrong TOTP code" in str(sup.calls("audit"))


def agentsup_with_stdin(stdin: bytes, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agentsup", *args], input=stdin, capture_output=True, timeout=60
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def test_resume_code_dash_reads_the_code_from_stdin_out_of_sight_of_ps(
    locs: Locations, start_supervisor: Callable[[str], Supervisor]
) -> None:
    """`--code TOTP` puts the code in the command line, where `ps` shows it while
    resume runs; `--code -` reads it from one line of standard input (spaces
    and the newline stripped) and is otherwise the same: one use, then refused."""
    secret = totp_secret(locs)
    sup = start_supervisor("a")
    code = pyotp.TOTP(secret).now()
    result = agentsup_with_stdin(f"  {code}  \n".encode(), "resume", "a1", "--code", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "resume: a1 done"
    assert sup.calls("resume") == [["resume", "a1", os.getuid(), ""]]
    replay = agentsup_with_stdin(f"{code}\n".encode(), "resume", "a1", "--code", "-")
    assert replay.returncode == 1
    assert replay.stderr.count("\n") == 1 and "already used" in replay.stderr
    assert len(sup.calls("resume")) == 1


@pytest.mark.parametrize(
    ("stdin", "problem"),
    [
        (b"", "no TOTP code on standard input"),
        (b"  \n", "no TOTP code on standard input"),
        (b"12ab56\n", "not a TOTP code of 6 digits"),
        (b"1234567\n", "not a TOTP code of 6 digits"),
        (b"\xff\xfe\xfd\xfc\xfb\xfa\n", "not a TOTP code of 6 digits"),
        (b"1" * 100_000, "not a TOTP code of 6 digits"),
    ],
    ids=["nothing", "blank", "letters", "seven-digits", "not-utf8", "endless"],
)
def test_resume_code_dash_refuses_an_empty_or_malformed_line_without_an_attempt(
    locs: Locations, start_supervisor: Callable[[str], Supervisor], stdin: bytes, problem: str
) -> None:
    """As a malformed `--code TOTP`: one line, exit 2, and no attempt is used
    (the supervisor is never asked).  What was read is not echoed."""
    totp_secret(locs)
    sup = start_supervisor("a")
    result = agentsup_with_stdin(stdin, "resume", "a1", "--code", "-")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and problem in result.stderr, result.stderr
    assert "12ab56" not in result.stderr and "1234567" not in result.stderr
    assert sup.calls() == []


@pytest.mark.parametrize("op", ["deny", "stop", "kill"])
def test_deny_stop_kill_need_no_code(
    locs: Locations, start_supervisor: Callable[[str], Supervisor], op: str
) -> None:
    sup = start_supervisor("a")
    result = agentsup(op, "a1", "--reason", "not today")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{op}: a1 done")
    assert sup.calls(op) == [[op, "a1", os.getuid(), "not today"]]


def test_refusal_from_supervisor_exits_1(
    locs: Locations, start_supervisor: Callable[[str], Supervisor]
) -> None:
    start_supervisor("a")
    result = agentsup("deny", "a2")
    assert result.returncode == 1
    assert "deny refused: nothing pending for 'a2'" in result.stderr


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_ps_removes_stale_sockets(
    locs: Locations, start_supervisor: Callable[[str], Supervisor]
) -> None:
    sup = start_supervisor("a")
    stale = locs.runtime_dir / f"sup-{dead_pid()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))
    result = agentsup("ps")
    assert result.returncode == 0
    assert result.stderr == ""
    assert sorted(row.split()[0] for row in result.stdout.splitlines()[1:]) == ["a1", "a2"]
    assert not stale.exists()
    assert sup.path.exists()


def test_supervisor_socket_gone_after_exit(
    locs: Locations, start_supervisor: Callable[[str], Supervisor]
) -> None:
    sup = start_supervisor("a")
    sup.close()
    deadline = time.monotonic() + 5
    while sup.path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sup.path.exists()
    assert agentsup("ps").stdout.strip() == "no supervised agents"


def test_top_counts_a_stopped_agent_as_stopped(capsys: pytest.CaptureFixture[str]) -> None:
    """New user 17: `top` said `1 agent(s) running` of an agent stopped for a person."""
    import argparse

    from agentsup.cli.control import Survey, _show_top

    records: list[dict[str, object]] = [
        {"id": "a", "state": "running"},
        {"id": "b", "state": "stopped: awaiting approval"},
        {"id": "c", "state": "exited"},
    ]
    _show_top(argparse.Namespace(json=False, interval=2.0), Survey(records), interactive=False)
    header = capsys.readouterr().out.splitlines()[0]
    assert "1 agent(s) running, 1 stopped, 1 exited" in header, header
