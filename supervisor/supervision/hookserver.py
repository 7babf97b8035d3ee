"""The supervisor's end of the Python hook channel (hooks/_protocol.py).

Non-blocking and thread-free: the supervisor's loop owns the fds.  Register
`fds()` for reading (and `want_write(fd)` ones for writing), call
`on_ready(fd)` when one is ready, and re-read `fds()` afterwards because
connections come and go.

Every hooked process opens its own connection; its pid comes from
SO_PEERCRED, never from the message.  A check is answered by `decide`, or
later through `reply_later` when `decide` returns None (require_approval).
Anything that does not follow the protocol closes the connection and is
reported through `on_tamper`; the hook in the agent then fails closed.  A
request that `decide` raises on closes its connection too, reported through
`on_error`: no request ends the server, whatever it holds.

A process that never connects (a Python started with -I, a program that is
no Python at all) is nothing to the server: only what arrives is judged.

When `cacheable(request, reply)` says so, an allow carries the server's cache
generation and the hook answers the same (action, target) itself from then
on; `invalidate()` (on a policy reload) pushes a flush to every connection.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..control.endpoint import listen_unix
from ..events import ActionType, Decision, Event, Layer, Response
from ..hooks import _protocol as protocol
from ..kernel.proc import within_fd_share

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_RECV_SIZE = 64 * 1024
_MAX_READS_PER_READY = 16  # then yield to the loop; level-triggered epoll calls again
# Connections one hook server holds at once (one per Python process of the
# agent, more or less), and never more than a quarter of the fds the
# supervisor may open: an agent that opens thousands and keeps them would
# leave the supervisor none for its policy checks and other agents.  Past
# it the listener is not read: a new Python waits in the kernel's backlog
# (then in connect) until one of the others ends, as at any busy server.
_MAX_CONNECTIONS = 256
_MAX_PENDING_OUTPUT = 1024 * 1024


class HookRequest(NamedTuple):
    """One check or note from a hooked process."""

    token: int  # unique per server; pass it to reply_later
    pid: int  # of the connected process (SO_PEERCRED)
    op: str  # protocol.OP_CHECK or protocol.OP_NOTE
    action: ActionType
    target: str
    detail: dict[str, Any]
    request_id: int = 0

    @property
    def needs_reply(self) -> bool:
        return self.op == protocol.OP_CHECK

    def event(self, agent_id: str = "") -> Event:
        return Event(
            action=self.action,
            target=self.target,
            agent_id=agent_id,
            pid=self.pid,
            layer=Layer.HOOK,
        )


class HookReply(NamedTuple):
    """The answer to a check: does the action go ahead in the agent?"""

    allowed: bool
    rule: str
    message: str
    response: Response

    @classmethod
    def from_decision(cls, decision: Decision, response: Response) -> HookReply:
        """The reply for a decision and what the judge did about it: its own
        response (`--shadow` lets a refused action go), or a person's answer
        to a held one (ALLOW or BLOCK)."""
        return cls(
            response.proceeds, decision.rule_id, decision.message or decision.reason, response
        )

    def to_message(self, request_id: int) -> dict[str, Any]:
        return {
            "v": protocol.VERSION,
            "id": request_id,
            "verdict": "allow" if self.allowed else "deny",
            "rule": self.rule,
            "message": self.message,
            "response": self.response.value,
        }


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def decode_request(payload: bytes) -> tuple[str, str, str, dict[str, Any], int]:
    """Parse and validate one frame's payload; ProtocolError when it is not a request."""
    try:
        text = payload.decode("utf-8")
        message = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        raise protocol.ProtocolError(f"not a JSON request: {str(exc)[:80]}") from None
    return protocol.validate_request(message)


def encode_reply(reply: HookReply, request_id: int, cache: int | None = None) -> bytes:
    message = reply.to_message(request_id)
    if cache is not None:
        message[protocol.CACHE_KEY] = cache
    payload = json.dumps(message, separators=(",", ":")).encode("ascii")
    if len(payload) > protocol.MAX_FRAME:
        message["message"] = reply.message[:1024]
        payload = json.dumps(message, separators=(",", ":")).encode("ascii")
    return protocol.frame(payload)


@dataclass(repr=False, eq=False, slots=True)
class _Connection:
    """One connection of an agent's audit hook: requests in, replies out."""

    sock: socket.socket
    pid: int
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    held: set[int] = field(default_factory=set)  # tokens awaiting reply_later


class HookServer:
    """Serves one per-run AF_UNIX listening socket for the agent's hooks."""

    def __init__(
        self,
        path: Path,
        decide: Callable[[HookRequest], HookReply | None],
        on_tamper: Callable[[int, str], None] | None = None,
        *,
        backlog: int = 64,
        cacheable: Callable[[HookRequest, HookReply], bool] | None = None,
        listener: socket.socket | None = None,
        on_error: Callable[[int, str], None] | None = None,
    ) -> None:
        """Serve `listener` (`endpoint.listen_unix(path, ...)`), or bind one at `path` now.

        `on_error(pid, text)` hears of a request `decide` (or `cacheable`)
        raised on: that connection is closed, its hook fails closed, and
        the server goes on serving every other one.
        """
        self.path = Path(path)
        self._decide = decide
        # Nothing is cacheable unless the supervisor says which answers are:
        # only it knows whether an allow is recorded, rate limited or held.
        self._cacheable = cacheable
        self.generation = 0
        self._on_tamper = on_tamper or (lambda pid, reason: None)
        self._on_error = on_error or (lambda pid, error: None)
        self._tokens = itertools.count(1)
        self._connections: dict[int, _Connection] = {}
        self._limit = within_fd_share(_MAX_CONNECTIONS)
        self._held: dict[int, tuple[_Connection, HookRequest]] = {}
        if listener is None:
            listener = listen_unix(self.path, backlog)  # a stale socket goes first
        self._listener: socket.socket | None = listener

    def __repr__(self) -> str:
        state = "closed" if self._listener is None else f"{len(self._connections)} connections"
        return f"<HookServer {self.path} {state}, {len(self._held)} held>"

    # --- what the loop watches -------------------------------------------
    def fds(self) -> list[int]:
        """The listening socket and every open connection."""
        if self._listener is None:
            return []
        if len(self._connections) >= self._limit:
            return list(self._connections)  # full: the backlog holds the rest
        return [self._listener.fileno(), *self._connections]

    def want_write(self, fd: int) -> bool:
        """True while replies for this connection wait for the socket to drain."""
        conn = self._connections.get(fd)
        return conn is not None and bool(conn.outbox)

    def held(self) -> list[HookRequest]:
        """Checks waiting for reply_later, oldest first."""
        return [request for _conn, request in self._held.values()]

    # --- events ------------------------------------------------------------
    def on_ready(self, fd: int) -> None:
        """Accept, read and answer, or flush replies; never blocks."""
        if self._listener is not None and fd == self._listener.fileno():
            self._accept()
            return
        conn = self._connections.get(fd)
        if conn is None:
            return
        if conn.outbox and not self._flush(conn):
            return
        self._read(conn)

    def reply_later(self, token: int, reply: HookReply) -> bool:
        """Answer a held check.  False when its process has gone away."""
        entry = self._held.pop(token, None)
        if entry is None:
            return False
        conn, request = entry
        conn.held.discard(token)
        if self._connections.get(conn.sock.fileno()) is not conn:
            return False  # the process hung up while its check was held
        self._send(conn, encode_reply(reply, request.request_id))
        return True

    def invalidate(self) -> None:
        """The policy changed: every hook drops its cached answers before its next check."""
        self.generation += 1
        flush = protocol.frame(
            json.dumps({"v": protocol.VERSION, protocol.FLUSH_KEY: self.generation}).encode()
        )
        for conn in list(self._connections.values()):
            self._send(conn, flush)

    def close(self) -> None:
        for conn in list(self._connections.values()):
            self._close(conn)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    # --- internals ---------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None
        while len(self._connections) < self._limit:
            try:
                sock, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE; the client sees a refused connect and fails closed
            sock.setblocking(False)
            try:
                pid, _uid, _gid = _PEERCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                )
            except OSError:
                sock.close()
                continue
            self._connections[sock.fileno()] = _Connection(sock, pid)

    def _read(self, conn: _Connection) -> None:
        for _ in range(_MAX_READS_PER_READY):
            try:
                data = conn.sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            if not data:
                self._close(conn)
                return
            conn.inbox += data
            try:
                frames = protocol.split_frames(conn.inbox)
            except protocol.ProtocolError as exc:
                self._tamper(conn, str(exc))
                return
            for payload in frames:
                if not self._handle(conn, payload):
                    return

    def _handle(self, conn: _Connection, payload: bytes) -> bool:
        """Handle one frame; False when the connection was closed."""
        try:
            op, action, target, detail, request_id = decode_request(payload)
        except protocol.ProtocolError as exc:
            self._tamper(conn, str(exc))
            return False
        if op == protocol.OP_TAMPER:
            self._on_tamper(conn.pid, f"hook reported: {target[:200]}")
            return True
        request = HookRequest(
            token=next(self._tokens),
            pid=conn.pid,
            op=op,
            action=ActionType(action),
            target=target,
            detail=detail,
            request_id=request_id,
        )
        try:
            reply = self._decide(request)
            if not request.needs_reply:
                return True
            if reply is None:
                self._held[request.token] = (conn, request)
                conn.held.add(request.token)
                return True
            cache = None
            if (
                self._cacheable is not None
                and reply.allowed
                and reply.response is Response.ALLOW
                and self._cacheable(request, reply)
            ):
                cache = self.generation
            answer = encode_reply(reply, request_id, cache)
        except Exception as exc:
            # One process's request must not end the supervisor (and, under
            # the daemon, every other agent): without an answer the agent's
            # hook fails closed when we hang up, and the error is recorded.
            pid = conn.pid
            self._close(conn)
            self._on_error(pid, f"{request.op} {action}: {type(exc).__name__}: {exc}"[:500])
            return False
        except BaseException:
            self._close(conn)
            raise
        return self._send(conn, answer)

    def _send(self, conn: _Connection, data: bytes) -> bool:
        conn.outbox += data
        if len(conn.outbox) > _MAX_PENDING_OUTPUT:
            self._tamper(conn, "the hook does not read its replies")
            return False
        return self._flush(conn)

    def _flush(self, conn: _Connection) -> bool:
        """Write what the socket takes now; False when the connection closed."""
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._close(conn)
                return False
            del conn.outbox[:sent]
        return True

    def _tamper(self, conn: _Connection, reason: str) -> None:
        pid = conn.pid
        self._close(conn)
        self._on_tamper(pid, reason)

    def _close(self, conn: _Connection) -> None:
        for token in conn.held:
            self._held.pop(token, None)
        conn.held.clear()
        self._connections.pop(conn.sock.fileno(), None)
        conn.sock.close()
