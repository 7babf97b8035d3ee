"""A full disk under the audit log (issue 11): nothing crashes, nothing is lost
silently, and the chain still verifies.

The writer cuts a failed write back off the file and writes lines again after
a failed sync.  `BatchedAudit` holds the records it cannot write (bounded),
stops the agents whose records they are, retries on a timer, and when space
returns writes what it held between two lifecycle records and continues the
agents.  The end-to-end test fills a real tmpfs under a running agent.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox, host_pids

from agentsup.integrity.audit import AuditLog, load_key, read_head, verify_log
from agentsup.supervision.judge import AgentState
from agentsup.supervision.supervisor import BatchedAudit

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Disk:
    """Makes the audit module's writes and syncs fail while `full` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self.sync_fails = False
        self._write = os.write
        self._fdatasync = os.fdatasync
        monkeypatch.setattr("agentsup.integrity.audit.os.write", self.write)
        monkeypatch.setattr("agentsup.integrity.audit.os.fdatasync", self.fdatasync)

    def write(self, fd: int, data: Any) -> int:
        if self.full:
            # Like a real full disk: part of the data lands, then ENOSPC.
            if len(data) > 1:
                return self._write(fd, bytes(data[: len(data) // 2]))
            raise ENOSPC
        return self._write(fd, data)

    def fdatasync(self, fd: int) -> None:
        if self.sync_fails:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self._fdatasync(fd)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


class Files:
    def __init__(self, root: Path) -> None:
        self.log = root / "log" / "audit.jsonl"
        self.key = root / "state" / "audit.key"
        self.head = root / "state" / "audit.head"

    def open(self) -> AuditLog:
        return AuditLog(self.log, self.key, self.head)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_bytes().splitlines()]

    def verify_ok(self) -> bool:
        result = verify_log(self.log, load_key(self.key), read_head(self.head))
        return result.ok


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


# ------------------------------------------------------------------ the writer


def test_a_failed_write_leaves_no_torn_line(files: Files, disk: Disk) -> None:
    with files.open() as log:
        log.append({"kind": "policy", "n": 1})
        log.flush()
        before = files.log.read_bytes()
        disk.full = True
        with pytest.raises(OSError) as raised:
            log.append({"kind": "policy", "n": 2})
        assert raised.value.errno == errno.ENOSPC
        assert files.log.read_bytes() == before
        disk.full = False
        assert log.append({"kind": "policy", "n": 3})["seq"] == 2
    assert files.verify_ok()


def test_a_failed_sync_writes_the_lines_again(files: Files, disk: Disk) -> None:
    with files.open() as log:
        log.append({"kind": "policy", "n": 1})
        log.flush()
        synced = files.log.stat().st_size
        disk.sync_fails = True
        log.append_many({"kind": "policy", "n": n} for n in (2, 3, 4))  # written, not synced
        with pytest.raises(OSError):
            log.flush()
        expected = files.log.read_bytes()
        # The kernel may drop the pages it failed to write back: simulate it.
        with open(files.log, "r+b") as file:
            file.seek(synced)
            file.write(b"\0" * (len(expected) - synced))
        disk.sync_fails = False
        log.flush()
        assert files.log.read_bytes() == expected
        head = read_head(files.head)
        assert head is not None and head.seq == 4
    assert files.verify_ok()


def test_a_torn_log_opens_on_a_full_disk_and_restarts_once_it_can(files: Files, disk: Disk) -> None:
    with files.open() as log:
        log.append_many({"kind": "policy", "n": n} for n in range(3))
    files.log.write_bytes(files.log.read_bytes()[:-10])
    disk.full = True
    log = files.open()  # opening writes nothing
    with pytest.raises(OSError):
        log.append({"kind": "policy"})
    disk.full = False
    log.append({"kind": "policy"})
    log.close()
    result = verify_log(files.log, load_key(files.key), read_head(files.head))
    assert (result.first_bad_seq, result.breaks[0].resumed_at) == (3, 4)


# ------------------------------------------------------------ BatchedAudit


class FakeJudge:
    """The part of a Judge that BatchedAudit uses, auditing its signals as a Judge does."""

    def __init__(self, agent_id: str, audit: Callable[[], BatchedAudit]) -> None:
        self.agent_id = agent_id
        self.state = AgentState.RUNNING
        self.signals: list[str] = []
        self._audit = audit

    def signal_tree(self, sig: int, why: str, **_: object) -> None:
        name = signal.Signals(sig).name
        self.signals.append(name)
        self._audit().append(
            {"agent": self.agent_id, "kind": "signal", "signal": name, "reason": why}
        )


class Rig:
    def __init__(self, files: Files) -> None:
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.judges = {name: FakeJudge(name, lambda: self.audit) for name in ("analyst", "coder")}
        self.audit = BatchedAudit(files.open(), self.call_later, lambda: self.judges)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append((delay, callback))

    def fire_timers(self) -> None:
        due, self.timers = self.timers, []
        for _, callback in due:
            callback()

    def decision(self, agent: str, n: int = 0) -> None:
        self.audit.append({"agent": agent, "kind": "decision", "decision": "allow", "n": n})


@pytest.fixture
def rig(files: Files) -> Iterator[Rig]:
    rig = Rig(files)
    yield rig
    rig.audit.close()


def test_a_record_that_cannot_be_written_stops_its_agent(
    rig: Rig, disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.decision("analyst", 1)
    disk.full = True
    rig.decision("analyst", 2)  # no exception reaches the caller
    assert rig.judges["analyst"].signals == ["SIGSTOP"]
    assert rig.judges["coder"].signals == []
    rig.decision("analyst", 3)
    rig.decision("coder", 4)
    assert rig.judges["analyst"].signals == ["SIGSTOP"]
    assert rig.judges["coder"].signals == ["SIGSTOP"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert "cannot write the audit log" in err[0] and "No space left on device" in err[0]
    assert BatchedAudit.RETRY_SECONDS in [delay for delay, _ in rig.timers]


def test_the_agents_continue_when_space_returns(
    rig: Rig, files: Files, disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.decision("analyst", 1)
    disk.full = True
    rig.decision("analyst", 2)
    rig.decision("coder", 3)
    rig.fire_timers()  # still full: nothing written, tried again later
    assert len(rig.timers) == 1 and rig.judges["analyst"].signals == ["SIGSTOP"]
    assert rig.judges["analyst"].state is AgentState.STOPPED_AUDIT  # what `ps` shows
    disk.full = False
    rig.fire_timers()
    assert rig.judges["analyst"].state is rig.judges["coder"].state is AgentState.RUNNING
    assert rig.timers == [] or all(delay != BatchedAudit.RETRY_SECONDS for delay, _ in rig.timers)
    assert rig.judges["analyst"].signals == ["SIGSTOP", "SIGCONT"]
    assert rig.judges["coder"].signals == ["SIGSTOP", "SIGCONT"]
    rig.audit.after_batch()
    records = files.records()
    events = [(r["kind"], r.get("event") or r.get("signal") or r.get("n")) for r in records]
    assert events == [
        ("decision", 1),
        ("lifecycle", "audit_log_unwritable"),
        ("decision", 2),
        ("signal", "SIGSTOP"),
        ("decision", 3),
        ("signal", "SIGSTOP"),
        ("lifecycle", "audit_log_writable"),
        ("signal", "SIGCONT"),
        ("signal", "SIGCONT"),
    ]
    writable = records[6]
    assert (writable["held"], writable["dropped"]) == (5, 0)
    assert writable["since"] == records[1]["ts"]
    assert files.verify_ok()
    err = capsys.readouterr().err
    assert "writable again" in err and "5 records held in memory" in err


def test_an_agent_a_person_stopped_meanwhile_stays_stopped(rig: Rig, disk: Disk) -> None:
    disk.full = True
    rig.decision("analyst")
    rig.judges["analyst"].state = AgentState.STOPPED_OPERATOR
    disk.full = False
    rig.fire_timers()
    assert rig.judges["analyst"].signals == ["SIGSTOP"]


def test_an_agent_continued_by_someone_else_meanwhile_is_stopped_again(
    rig: Rig, disk: Disk
) -> None:
    """A re-sealed policy continues the agents it stopped; while the log is
    still unwritable, the next record stops that agent again."""
    disk.full = True
    rig.decision("analyst")
    rig.judges["analyst"].state = AgentState.RUNNING  # (and SIGCONT)
    rig.decision("analyst")
    assert rig.judges["analyst"].signals == ["SIGSTOP", "SIGSTOP"]
    assert rig.judges["analyst"].state is AgentState.STOPPED_AUDIT


def test_held_records_are_bounded_and_the_gap_is_marked(rig: Rig, files: Files, disk: Disk) -> None:
    rig.audit.max_held = 10
    disk.full = True
    for n in range(50):
        rig.audit.append({"kind": "policy", "n": n})  # no agent: nobody to stop
    disk.full = False
    rig.fire_timers()
    records = files.records()
    assert len(records) == 10 + 1
    gap = records[-1]
    assert gap["event"] == "audit_log_writable" and gap["severity"] == "high"
    assert (gap["held"], gap["dropped"]) == (10, 41)  # 50 records and the stall record
    assert files.verify_ok()


def test_a_failed_sync_stops_every_running_agent(
    rig: Rig, files: Files, disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.decision("analyst", 1)
    disk.sync_fails = True
    rig.audit.append({"agent": "coder", "kind": "decision", "decision": "deny"})
    rig.audit.after_batch()  # the deny must be durable now: the sync fails
    assert rig.judges["analyst"].signals == ["SIGSTOP"]
    assert rig.judges["coder"].signals == ["SIGSTOP"]
    assert "Input/output error" in capsys.readouterr().err
    disk.sync_fails = False
    rig.fire_timers()
    assert rig.judges["coder"].signals == ["SIGSTOP", "SIGCONT"]
    rig.audit.after_batch()
    assert files.verify_ok()
    head = read_head(files.head)
    assert head is not None and head.seq == files.records()[-1]["seq"]


def test_closing_while_full_says_what_is_lost(
    rig: Rig, disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    disk.full = True
    rig.audit.append({"kind": "policy"})
    rig.audit.close()
    err = capsys.readouterr().err
    assert "2 records could not be written to the audit log" in err
    disk.full = False


# ------------------------------------------------------------------- end to end

AGENT = """
import os, sys, time
workspace = sys.argv[1]
with open(os.path.join(workspace, "pid"), "w") as file:
    file.write(str(os.getpid()))
n = 0
while not os.path.exists(os.path.join(workspace, "done")):
    with open(os.path.join(workspace, "tick"), "w") as file:
        file.write(str(n))
    n += 1
    time.sleep(0.005)
print("finished after", n)
"""


def state_of(pid: int) -> str:
    # The field after the parenthesised command name.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_full_disk_stops_the_agent_until_space_returns(sandbox: Sandbox) -> None:
    logs = sandbox.audit_log.parent
    logs.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(logs)], check=True
    )
    run: subprocess.Popen[str] | None = None
    try:
        agent = sandbox.workspace / "agent.py"
        agent.write_text(AGENT)
        run = subprocess.Popen(
            sandbox.command("python3", str(agent), str(sandbox.workspace), policy="audit"),
            env=sandbox.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pid_file = sandbox.workspace / "pid"
        wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", "the agent to start")
        (listed,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
        # The agent numbers itself in its own PID namespace; this is the host's number.
        (pid,) = host_pids(int(listed["pid"]), [int(pid_file.read_text())])
        filler = fill(logs)
        wait_for(lambda: state_of(pid) == "T", "the agent to be stopped")
        time.sleep(0.5)  # stays stopped while the disk is full, supervisor alive
        assert state_of(pid) == "T" and run.poll() is None
        (listed,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
        assert listed["state"] == "stopped: audit log unwritable"
        resume = sandbox.agentsup("resume", str(listed["id"]), "--code", "000000")
        assert resume.returncode != 0 and state_of(pid) == "T"

        filler.unlink()
        wait_for(lambda: state_of(pid) != "T", "the agent to continue")
        (sandbox.workspace / "done").touch()
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert "finished after" in out
        assert "Traceback" not in err
        stopped = [line for line in err.splitlines() if "cannot write the audit log" in line]
        assert len(stopped) == 1 and "No space left on device" in stopped[0]
        assert any("writable again" in line for line in err.splitlines())

        verify = sandbox.agentsup("audit", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        records = sandbox.audit_records()
        events = [r.get("event") for r in records if r["kind"] == "lifecycle"]
        assert "audit_log_unwritable" in events and "audit_log_writable" in events
        signals = [r["signal"] for r in records if r["kind"] == "signal"]
        assert signals[:2] == ["SIGSTOP", "SIGCONT"]
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
        subprocess.run(["umount", "-l", str(logs)], check=False)
