"""HookServer driven by hand in one thread: validation, holds, buffering, fuzz."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsup.events import ActionType, Response
from agentsup.hooks import _protocol as protocol
from agentsup.supervision.hookserver import HookReply, HookRequest, HookServer

ALLOW = HookReply(True, "r-allow", "", Response.ALLOW)


class Harness:
    def __init__(self, path: Path) -> None:
        self.requests: list[HookRequest] = []
        self.tampers: list[tuple[int, str]] = []
        self.reply: HookReply | None = ALLOW
        self.server = HookServer(
            path, self._decide, lambda pid, why: self.tampers.append((pid, why))
        )
        self.path = path
        self.clients: list[socket.socket] = []

    def _decide(self, request: HookRequest) -> HookReply | None:
        self.requests.append(request)
        return self.reply

    def pump(self) -> None:
        """Give every fd a turn, as a level-triggered loop would."""
        for _ in range(3):
            for fd in self.server.fds():
                self.server.on_ready(fd)

    def client(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.clients.append(sock)
        sock.connect(str(self.path))
        self.pump()
        return sock


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    item = Harness(tmp_path / "hook.sock")
    yield item
    item.server.close()
    for sock in item.clients:
        sock.close()


def request(**fields: Any) -> bytes:
    message = {"v": 1, "id": 7, "op": "check", "action": "env_read", "target": "HOME", "detail": {}}
    message.update(fields)
    return protocol.frame(json.dumps(message).encode())


def read_reply(sock: socket.socket) -> dict[str, Any]:
    sock.settimeout(5)
    (length,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
    reply = json.loads(sock.recv(length, socket.MSG_WAITALL))
    assert isinstance(reply, dict)
    return reply


def test_check_is_answered_with_peer_pid(harness: Harness) -> None:
    sock = harness.client()
    sock.sendall(request())
    harness.pump()
    assert read_reply(sock) == {
        "v": 1,
        "id": 7,
        "verdict": "allow",
        "rule": "r-allow",
        "message": "",
        "response": "allow",
    }
    (seen,) = harness.requests
    assert (seen.pid, seen.op, seen.action, seen.target) == (
        os.getpid(),
        "check",
        ActionType.ENV_READ,
        "HOME",
    )
    assert seen.event("a1").layer.value == "hook"


def test_note_gets_no_reply_and_held_check_is_answered_later(harness: Harness) -> None:
    sock = harness.client()
    harness.reply = None
    sock.sendall(request(op="note", action="file_read", target="/etc/hosts", id=1))
    sock.sendall(request(id=2, action="network_request", target="GET https://x/"))
    harness.pump()
    assert [r.op for r in harness.requests] == ["note", "check"]
    (held,) = harness.server.held()
    assert held.target == "GET https://x/"
    assert harness.server.reply_later(held.token, HookReply(False, "ask", "no", Response.BLOCK))
    assert read_reply(sock)["verdict"] == "deny"
    assert not harness.server.reply_later(held.token, ALLOW)  # answered once only


def test_held_check_of_a_gone_process(harness: Harness) -> None:
    sock = harness.client()
    harness.reply = None
    sock.sendall(request())
    harness.pump()
    (held,) = harness.server.held()
    sock.close()
    harness.pump()
    assert harness.server.held() == []
    assert not harness.server.reply_later(held.token, ALLOW)


# A lone surrogate: json.loads makes one of a `\ud800` escape, and no UTF-8
# writer (the audit log) takes it.  A red team sent one in a note's detail and
# in a check's target, and the supervisor died with UnicodeEncodeError (exit
# 125, the agent killed, no exit record).  Now the frame is refused as any
# other bad frame: that connection is closed and the tamper reported.
IN_TARGET = "target is not UTF-8 text (a lone surrogate)"
IN_DETAIL = "detail holds text that is not UTF-8 (a lone surrogate)"
SURROGATE_FRAMES = [
    (request(target="GET http://\ud800/", action="network_request"), IN_TARGET),
    (request(op="note", action="file_read", detail={"k": "\udfff"}), IN_DETAIL),
    (request(detail={"\udfff": 1}), IN_DETAIL),
    (request(detail={"k": ["ok", "\ud800x"]}), IN_DETAIL),
    (
        protocol.frame(b'{"v":1,"id":3,"op":"tamper","target":"\\udc80","detail":{}}'),
        IN_TARGET,
    ),
]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (protocol.HEADER.pack(protocol.MAX_FRAME + 1), "exceeds"),
        (protocol.frame(b"\xff\xfe"), "not a JSON request"),
        (protocol.frame(b"[1, 2]"), "not a JSON object"),
        (protocol.frame(b'{"v":1,"v":1}'), "not a JSON request"),
        (protocol.frame(b"[" * 60000), "not a JSON request"),
        (request(op="run"), "unknown op"),
        (request(action="file_read"), "not valid for check"),
        (request(op="note", action="env_read"), "not valid for note"),
        (request(action="launch_missiles"), "not valid for check"),
        (request(target=["HOME"]), "target is not a string"),
        (request(id=-1), "request id"),
        (request(id=True), "request id"),
        (request(v=2), "version"),
        (request(detail={"a": {"b": 1}}), "detail"),
        (request(extra=1), "wrong fields"),
        (
            protocol.frame(b'{"v":1,"id":1,"op":"check","action":"env_read","target":"x"}'),
            "wrong fields",
        ),
        (protocol.frame(b'{"v":1,"id":NaN,"op":"check"}'), "not a JSON request"),
        *SURROGATE_FRAMES,
    ],
)
def test_malformed_request_closes_connection_and_reports(
    harness: Harness, payload: bytes, reason: str
) -> None:
    sock = harness.client()
    sock.sendall(payload)
    harness.pump()
    assert harness.requests == []
    ((pid, why),) = harness.tampers
    assert pid == os.getpid() and reason in why
    assert harness.server.fds() == harness.server.fds()[:1]  # only the listener is left
    sock.settimeout(5)
    assert sock.recv(1) == b""  # the hook reads EOF and fails closed


def test_tamper_report_from_the_hook_keeps_the_connection(harness: Harness) -> None:
    sock = harness.client()
    sock.sendall(protocol.frame(b'{"v":1,"id":3,"op":"tamper","target":"sys.audit","detail":{}}'))
    sock.sendall(request())
    harness.pump()
    assert harness.tampers == [(os.getpid(), "hook reported: sys.audit")]
    assert read_reply(sock)["id"] == 7


def test_replies_are_buffered_when_the_client_does_not_read(harness: Harness) -> None:
    sock = harness.client()
    count = 4000
    sock.setblocking(False)
    batch = b"".join(request(id=i, target="H" * 40) for i in range(count))
    sent = 0
    while sent < len(batch):
        with contextlib.suppress(BlockingIOError):
            sent += sock.send(batch[sent:])
        harness.pump()
    (fd,) = harness.server.fds()[1:]
    assert harness.server.want_write(fd)  # the socket buffer is full; replies wait
    sock.setblocking(True)
    ids = []
    while len(ids) < count:
        harness.pump()  # the loop flushes when the socket drains
        ids.append(read_reply(sock)["id"])
    assert ids == list(range(count))
    assert not harness.server.want_write(fd)


def test_fuzz_random_bytes_never_crash_the_server(harness: Harness) -> None:
    rng = random.Random(1234)
    valid = request()
    for round_number in range(300):
        sock = harness.client()
        pieces = [rng.randbytes(rng.randint(0, 64))]
        if round_number % 3 == 0:
            # Frames that parse as far as JSON, with mutated bytes inside.
            body = bytearray(valid[4:])
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            pieces = [protocol.frame(bytes(body))]
        elif round_number % 3 == 1:
            pieces.insert(0, protocol.HEADER.pack(rng.randint(0, 80)))
        for piece in pieces:
            sock.sendall(piece)
        harness.pump()
        sock.close()
        harness.pump()
    assert harness.server.fds() == harness.server.fds()[:1]
    assert len(harness.tampers) > 100
    sock = harness.client()  # still serving
    sock.sendall(request())
    harness.pump()
    assert read_reply(sock)["verdict"] == "allow"


def test_close_removes_the_socket(tmp_path: Path) -> None:
    server = HookServer(tmp_path / "s.sock", lambda r: ALLOW)
    assert (tmp_path / "s.sock").exists()
    server.close()
    assert not (tmp_path / "s.sock").exists()
    assert server.fds() == []


def test_reply_from_decision() -> None:
    from agentsup.events import Decision, Severity, Verdict, ViolationMode

    decision = Decision(
        Verdict.DENY, "no-post", Severity.HIGH, "no posts", ViolationMode.SIGWARN, ""
    )
    assert HookReply.from_decision(decision, Response.WARN) == HookReply(
        True, "no-post", "no posts", Response.WARN
    )
    killed = Decision(Verdict.DENY, "no-post", Severity.HIGH, "", ViolationMode.SIGKILL, "glob")
    reply = HookReply.from_decision(killed, Response.KILL)
    assert reply == HookReply(False, "no-post", "glob", Response.KILL)
    # --shadow: the judge let a refused action go, and so does the reply.
    assert HookReply.from_decision(killed, Response.ALLOW).allowed
    held = Decision(Verdict.REQUIRE_APPROVAL, "ask", Severity.LOW, "", ViolationMode.BLOCK, "")
    assert HookReply.from_decision(held, Response.ALLOW).allowed


@pytest.mark.parametrize(
    "message",
    [
        {"target": "GET http://\ud800/"},
        {"target": "x\udfff"},
        {"detail": {"k": "\udfff"}},
        {"detail": {"\ud800": "v"}},
        {"detail": {"k": [1, "\udc80"]}},
    ],
)
def test_validate_request_refuses_text_that_is_not_utf8(message: dict[str, Any]) -> None:
    full = {"v": 1, "id": 1, "op": "check", "action": "env_read", "target": "HOME", "detail": {}}
    with pytest.raises(protocol.ProtocolError, match="surrogate"):
        protocol.validate_request({**full, **message})


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), [1.0, float("inf")]])
def test_validate_request_refuses_numbers_json_cannot_hold(value: object) -> None:
    """Red team 24: a detail value of 1e999 was written to the log as
    `Infinity`, which no strict JSON reader takes."""
    message = {"v": 1, "id": 1, "op": "note", "action": "file_read", "target": "x"}
    with pytest.raises(protocol.ProtocolError):
        protocol.validate_request({**message, "detail": {"k": value}})


def test_validate_request_takes_any_utf8_text() -> None:
    """Only lone surrogates are refused: other characters, astral ones included, pass."""
    detail = {"bücher": "😀", "list": ["ü", 1, None], "escaped": "\\udfff"}
    message = {"v": 1, "id": 1, "op": "note", "action": "file_read", "target": "/tmp/ü😀"}
    decoded = json.loads(json.dumps({**message, "detail": detail}))  # pairs, as \ud83d\ude00
    assert protocol.validate_request(decoded) == ("note", "file_read", "/tmp/ü😀", detail, 1)


def test_an_error_in_decide_closes_that_connection_only(tmp_path: Path) -> None:
    """`decide` raising once ended the supervisor (HookServer re-raised it into the loop).

    Now that one connection is closed (its hook fails closed), the error is
    reported through `on_error`, and every other connection is served.
    """
    errors: list[tuple[int, str]] = []
    calls = 0

    def decide(request: HookRequest) -> HookReply:
        nonlocal calls
        calls += 1
        if request.target == "boom":
            raise UnicodeEncodeError("utf-8", "\udfff", 0, 1, "surrogates not allowed")
        return ALLOW

    server = HookServer(tmp_path / "hook.sock", decide, on_error=lambda *e: errors.append(e))
    bad, good = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
    try:
        for sock in (bad, good):
            sock.connect(str(tmp_path / "hook.sock"))

        def pump() -> None:
            for _ in range(3):
                for fd in server.fds():
                    server.on_ready(fd)

        pump()
        bad.sendall(request(target="boom"))
        pump()
        ((pid, text),) = errors
        assert pid == os.getpid() and "UnicodeEncodeError" in text and "env_read" in text
        bad.settimeout(5)
        assert bad.recv(1) == b""  # the hook reads EOF and fails closed
        good.sendall(request())
        pump()
        assert read_reply(good)["verdict"] == "allow"
        assert calls == 2
    finally:
        server.close()
        bad.close()
        good.close()
