"""The control socket server, driven by a real socket and a small poll loop."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pyotp
import pytest

from agentsup.control.channel import (
    CONNECTION_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_REQUEST_BYTES,
    ControlError,
    ControlServer,
    SupervisorUnreachable,
    remove_if_stale,
    request,
    supervisor_sockets,
)
from agentsup.integrity.totp import MAX_FAILURES, TotpVerifier, init_secret
from agentsup.paths import Locations, default_locations

NOBODY = 65534


class FakeAPI:
    """Records every call; agent "a1" is stopped awaiting approval, "a2" is running."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, str]] = []
        self.audits: list[dict[str, object]] = []
        self.fail_next: str | None = None

    def agents(self) -> list[dict[str, object]]:
        return [
            {"id": "a1", "pid": 101, "policy": "strict", "state": "stopped: awaiting approval",
             "uptime_s": 12.5, "pending": 1, "workspace": "/w"},
            {"id": "a2", "pid": 102, "policy": "strict", "state": "running",
             "uptime_s": 3.0, "pending": 0, "workspace": "/w"},
        ]  # fmt: skip

    def pending(self) -> list[dict[str, object]]:
        return [
            {"request_id": "r1", "agent": "a1", "action_type": "file_write",
             "target": "/etc/passwd", "rule": "ask", "message": "needs ok", "age_s": 4.0,
             "kind": "approval"},
        ]  # fmt: skip

    def _act(self, op: str, agent_id: str, uid: int, reason: str) -> str:
        if self.fail_next:
            message, self.fail_next = self.fail_next, None
            raise ControlError(message)
        self.calls.append((op, agent_id, uid, reason))
        return f"{op} {agent_id} done"

    def resume(self, agent_id: str, *, uid: int, reason: str) -> str:
        return self._act("resume", agent_id, uid, reason)

    def deny(self, agent_id: str, *, uid: int, reason: str) -> str:
        return self._act("deny", agent_id, uid, reason)

    def stop(self, agent_id: str, *, uid: int, reason: str) -> str:
        return self._act("stop", agent_id, uid, reason)

    def kill(self, agent_id: str, *, uid: int, reason: str) -> str:
        return self._act("kill", agent_id, uid, reason)

    def audit(self, record: Mapping[str, object]) -> None:
        self.audits.append(dict(record))


class Harness:
    """A ControlServer served by a poll loop in a thread, like the supervisor's epoll loop."""

    def __init__(self, runtime_dir: Path, locs: Locations, owner_uid: int = 0) -> None:
        self.api = FakeAPI()
        self.server = ControlServer(runtime_dir, self.api, TotpVerifier(locs), owner_uid=owner_uid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            poller = select.poll()
            for fd in self.server.fds():
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(20):
                self.server.on_ready(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def locs(locations: Path) -> Locations:
    return default_locations()


@pytest.fixture
def secret(locs: Locations) -> str:
    init_secret(locs)
    return locs.totp_secret.read_text().strip()


@pytest.fixture
def harness(locs: Locations) -> Iterator[Harness]:
    h = Harness(locs.runtime_dir, locs)
    yield h
    h.close()


def test_socket_named_by_pid_mode_0600_and_unlinked_on_close(locs: Locations) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    h = Harness(locs.runtime_dir, locs)
    assert h.server.path == locs.runtime_dir / f"sup-{os.getpid()}.sock"
    assert stat.S_IMODE(h.server.path.stat().st_mode) == 0o600
    assert request(h.server.path, {"op": "ps"})
    h.close()
    assert not h.server.path.exists()
    assert set(os.listdir("/proc/self/fd")) == fds_before


def test_ps_and_pending(harness: Harness) -> None:
    agents = request(harness.server.path, {"op": "ps"})
    assert isinstance(agents, list)
    assert [a["id"] for a in agents] == ["a1", "a2"]
    pending = request(harness.server.path, {"op": "pending"})
    assert isinstance(pending, list)
    assert pending[0]["request_id"] == "r1"
    assert harness.api.calls == []


def test_resume_with_valid_code_calls_api_once_and_audits(harness: Harness, secret: str) -> None:
    code = pyotp.TOTP(secret).now()
    result = request(
        harness.server.path, {"op": "resume", "agent": "a1", "code": code, "reason": "ok"}
    )
    assert result == "resume a1 done"
    assert harness.api.calls == [("resume", "a1", 0, "ok")]
    [record] = harness.api.audits
    assert record["kind"] == "approval"
    assert record["outcome"] == "ok"
    assert record["uid"] == 0
    assert record["reason"] == "ok"
    # The same code again is a replay.
    with pytest.raises(ControlError, match="already used"):
        request(harness.server.path, {"op": "resume", "agent": "a1", "code": code})
    assert len(harness.api.calls) == 1


def test_wrong_code_refused_and_audited(harness: Harness, secret: str) -> None:
    good = pyotp.TOTP(secret).now()
    bad = "000000" if good != "000000" else "111111"
    with pytest.raises(ControlError, match="wrong TOTP code"):
        request(harness.server.path, {"op": "resume", "agent": "a1", "code": bad})
    assert harness.api.calls == []
    [record] = harness.api.audits
    assert record["kind"] == "approval"
    assert str(record["outcome"]).startswith("refused: wrong TOTP code")


def test_lockout_is_audited(harness: Harness, secret: str) -> None:
    good = pyotp.TOTP(secret).now()
    bad = "000000" if good != "000000" else "111111"
    for _ in range(MAX_FAILURES):
        with pytest.raises(ControlError):
            request(harness.server.path, {"op": "resume", "agent": "a1", "code": bad})
    assert [a["outcome"] for a in harness.api.audits].count("lockout") == 1
    with pytest.raises(ControlError, match="locked out"):
        request(harness.server.path, {"op": "resume", "agent": "a1", "code": good})
    assert harness.api.calls == []


def test_resume_refusals_that_do_not_burn_a_code(harness: Harness, secret: str) -> None:
    code = pyotp.TOTP(secret).now()
    with pytest.raises(ControlError, match=r"no agent 'zz' here \(see agentsup ps\)"):
        request(harness.server.path, {"op": "resume", "agent": "zz", "code": code})
    with pytest.raises(ControlError, match="is running; there is nothing to resume"):
        request(harness.server.path, {"op": "resume", "agent": "a2", "code": code})
    with pytest.raises(ControlError, match="needs a TOTP code"):
        request(harness.server.path, {"op": "resume", "agent": "a1"})
    assert harness.api.calls == []
    request(harness.server.path, {"op": "resume", "agent": "a1", "code": code})
    assert harness.api.calls == [("resume", "a1", 0, "")]


@pytest.mark.parametrize("op", ["deny", "stop", "kill"])
def test_safe_ops_need_no_code_and_are_audited(harness: Harness, op: str) -> None:
    assert request(harness.server.path, {"op": op, "agent": "a2", "reason": "r"}) == (
        f"{op} a2 done"
    )
    assert harness.api.calls == [(op, "a2", 0, "r")]
    assert harness.api.audits[0]["kind"] == "approval"
    assert harness.api.audits[0]["outcome"] == "ok"


def test_api_refusal_is_passed_on_and_audited(harness: Harness) -> None:
    harness.api.fail_next = "nothing pending for 'a2'"
    with pytest.raises(ControlError, match="nothing pending for 'a2'"):
        request(harness.server.path, {"op": "deny", "agent": "a2"})
    assert harness.api.audits[0]["outcome"] == "refused: nothing pending for 'a2'"


def raw_exchange(path: Path, data: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        reply: dict[str, object] = json.loads(sock.makefile("rb").readline())
        return reply


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json\n", "not JSON"),
        (b"[1]\n", "expected a JSON object"),
        (b'{"v": 2, "op": "ps"}\n', "unsupported protocol version 2"),
        (b'{"v": 1, "op": "reboot"}\n', "unknown op 'reboot'"),
        (b'{"v": 1, "op": "kill"}\n', "kill needs an agent id"),
        (b'{"v": 1, "op": "kill", "agent": 7}\n', "'agent' must be a string"),
        # Red team 25: these printed a traceback on the supervisor's stderr.
        (b"1" * 4400 + b"\n", "a number too long"),
        (b"[" * 60000 + b"\n", "nesting too deep"),
    ],
)
def test_malformed_requests(harness: Harness, data: bytes, error: str) -> None:
    reply = raw_exchange(harness.server.path, data)
    assert reply["v"] == 1
    assert reply["ok"] is False
    assert error in str(reply["error"])
    assert harness.api.calls == []


def test_request_split_over_several_writes(harness: Harness) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(harness.server.path))
        sock.sendall(b'{"v": 1, ')
        sock.sendall(b'"op": "ps"}\n')
        reply = json.loads(sock.makefile("rb").readline())
    assert reply["ok"] is True


def test_client_that_hangs_up_does_not_break_the_server(harness: Harness) -> None:
    for _ in range(5):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(harness.server.path))
            sock.sendall(b'{"v": 1, "op"')
    assert request(harness.server.path, {"op": "ps"})


@pytest.fixture
def shared_runtime_dir() -> Iterator[Path]:
    # tmp_path sits under a 0700 directory; nobody must be able to reach the socket.
    top = Path(tempfile.mkdtemp(prefix="agentsup-ctl-"))
    top.chmod(0o711)
    yield top / "run"
    shutil.rmtree(top)


def connect_as_nobody(go: int, result: int) -> None:  # pragma: no cover - runs in a child
    """In a forked child: wait for the socket path on `go`, connect as nobody, report."""
    try:
        path = os.read(go, 4096).decode()
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        reply = raw_exchange(Path(path), b'{"v": 1, "op": "kill", "agent": "a2"}\n')
        os.write(result, json.dumps({**reply, "uid": os.getuid()}).encode())
    except BaseException as exc:
        os.write(result, json.dumps({"child_error": repr(exc)}).encode())
    finally:
        os._exit(0)


@pytest.mark.requires_root
def test_peer_with_another_uid_is_refused_and_audited(
    locs: Locations, shared_runtime_dir: Path
) -> None:
    go_read, go_write = os.pipe()
    result_read, result_write = os.pipe()
    # Fork before the server thread starts: forking a threaded process is unsafe.
    child = os.fork()
    if child == 0:  # pragma: no cover
        connect_as_nobody(go_read, result_write)
    os.close(go_read)
    os.close(result_write)
    h = Harness(shared_runtime_dir, locs, owner_uid=0)
    try:
        h.server.path.chmod(0o666)  # let the connect through, so SO_PEERCRED decides
        os.write(go_write, str(h.server.path).encode())
        os.close(go_write)
        with os.fdopen(result_read, "rb") as pipe:
            reply = json.loads(pipe.read() or b"{}")
        os.waitpid(child, 0)
        assert "child_error" not in reply, reply["child_error"]
        assert reply["uid"] == NOBODY
        assert reply["ok"] is False
        assert f"uid {NOBODY} may not control this supervisor" in reply["error"]
        assert h.api.calls == []
        [record] = h.api.audits
        assert record["kind"] == "tamper"
        assert record["uid"] == NOBODY
    finally:
        h.close()


def test_owner_uid_is_accepted(locs: Locations) -> None:
    h = Harness(locs.runtime_dir, locs, owner_uid=os.getuid())
    try:
        assert request(h.server.path, {"op": "ps"})
    finally:
        h.close()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_socket_of_dead_supervisor_is_removed(locs: Locations) -> None:
    locs.runtime_dir.mkdir(parents=True)
    stale = locs.runtime_dir / f"sup-{dead_pid()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # bound, never listening: connect gets ECONNREFUSED
    (locs.runtime_dir / "unrelated.sock").touch()
    assert supervisor_sockets(locs.runtime_dir) == [stale]
    with pytest.raises(SupervisorUnreachable):
        request(stale, {"op": "ps"})
    assert remove_if_stale(stale)
    assert not stale.exists()


def test_socket_of_live_pid_is_kept(locs: Locations) -> None:
    locs.runtime_dir.mkdir(parents=True)
    alive = locs.runtime_dir / f"sup-{os.getpid()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(alive))
    assert not remove_if_stale(alive)
    assert alive.exists()


def test_api_bug_becomes_an_error_reply(harness: Harness) -> None:
    def broken() -> list[dict[str, object]]:
        raise RuntimeError("bug")

    harness.api.pending = broken  # type: ignore[method-assign]
    with pytest.raises(ControlError, match="internal error in the supervisor: RuntimeError"):
        request(harness.server.path, {"op": "pending"})
    assert request(harness.server.path, {"op": "ps"})


def test_oversized_request_refused(harness: Harness) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(harness.server.path))
        sock.sendall(b"x" * (MAX_REQUEST_BYTES + 1))
        reply = json.loads(sock.makefile("rb").readline())
    assert reply == {"v": 1, "ok": False, "error": "request too large"}


def test_idle_connection_dropped_after_timeout(locs: Locations) -> None:
    clock = {"now": 100.0}
    server = ControlServer(
        locs.runtime_dir, FakeAPI(), TotpVerifier(locs), owner_uid=0, clock=lambda: clock["now"]
    )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(server.path))
            server.on_ready(server.fds()[0])
            assert len(server.fds()) == 2
            clock["now"] += CONNECTION_TIMEOUT_S + 1
            server.on_ready(server.fds()[0])  # nothing to accept; expiry still runs
            assert len(server.fds()) == 1
            sock.settimeout(5)
            assert sock.recv(10) == b""  # the server hung up
    finally:
        server.close()


def test_connection_flood_is_bounded(harness: Harness) -> None:
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(MAX_CONNECTIONS + 5)]
    try:
        for sock in idle:
            sock.connect(str(harness.server.path))
        deadline = time.monotonic() + 5
        while len(harness.server.fds()) < MAX_CONNECTIONS + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert len(harness.server.fds()) == MAX_CONNECTIONS + 1
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while len(harness.server.fds()) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert request(harness.server.path, {"op": "ps"})
