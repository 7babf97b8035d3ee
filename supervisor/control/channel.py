"""The control socket: how a person reaches a running supervisor (DESIGN.md 1.4).

Every supervisor serves `sup-<pid>.sock` in the runtime directory.  The
protocol is versioned JSON, one newline-terminated request per connection:

    {"v": 1, "op": "ps"|"pending"|"resume"|"deny"|"stop"|"kill",
     "agent": ID, "code": "123456", "reason": "..."}
    -> {"v": 1, "ok": true, "result": ...} | {"v": 1, "ok": false, "error": "..."}

Only root and the supervisor's owner may connect (SO_PEERCRED, checked at
accept; a refused peer is audited as `tamper`).  A supervisor that already
serves `MAX_CONNECTIONS` clients answers a new one `{"ok": false, "busy":
true}` at once; a connection that has not sent its whole request within
`CONNECTION_TIMEOUT_S` is dropped, whether or not anything else happens
(given the loop's `call_later`, the server wakes itself up for that).  `resume` needs a TOTP code;
deny, stop and kill do not, because they only make things safer.  Every
resume, deny, stop and kill, and every refused code, is audited as
`approval`.

`ControlServer` never blocks and never raises, so the supervisor's single
epoll loop can drive it: poll `fds()` for input and call `on_ready(fd)`.
Request handling (`handle_request`) is pure apart from the API it calls.
The client half (`request`, `supervisor_sockets`) serves the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from ..integrity.totp import CODE_DIGITS, TotpRefused, TotpVerifier, normalize_code
from ..kernel.cgroup import pid_alive
from ..logger import Logger
from .endpoint import SOCKET_PREFIX, SOCKET_SUFFIX, bind_control_socket, close_listener
from .endpoint import RuntimeDirError as RuntimeDirError  # raised by ControlServer
from .endpoint import socket_path as socket_path

log = Logger(__name__)

PROTOCOL_VERSION = 1
OPS = ("ps", "pending", "resume", "deny", "stop", "kill")
ACTION_OPS = ("resume", "deny", "stop", "kill")
MAX_REQUEST_BYTES = 64 * 1024
MAX_CONNECTIONS = 32
CONNECTION_TIMEOUT_S = 5.0  # an idle or half-written request is dropped after this
_STOPPED_PREFIX = "stopped"


class SupervisorAPI(Protocol):
    """What the supervisor offers the control socket (implemented by the lead's loop)."""

    def agents(self) -> list[dict[str, object]]:
        """Each: id, pid, policy, state, uptime_s, pending, workspace.

        state is "running", "stopped: awaiting approval", "stopped: violation",
        "stopped: by operator" or "exited".
        """
        ...

    def pending(self) -> list[dict[str, object]]:
        """Each: request_id, agent, action_type, target, rule, message, age_s, kind.

        kind is "approval" (a require_approval hold) or "violation" (sigstop).
        """
        ...

    def resume(self, agent_id: str, *, uid: int, reason: str) -> str: ...

    def deny(self, agent_id: str, *, uid: int, reason: str) -> str: ...

    def stop(self, agent_id: str, *, uid: int, reason: str) -> str: ...

    def kill(self, agent_id: str, *, uid: int, reason: str) -> str: ...

    def audit(self, record: Mapping[str, object]) -> None: ...


class ControlError(Exception):
    """A refusal whose message is shown to the operator as it is."""


class Peer(NamedTuple):
    """Who is on the other end of a connection (SO_PEERCRED)."""

    pid: int
    uid: int
    gid: int


# --- pure request handling ------------------------------------------------------


def error_reply(message: str) -> dict[str, object]:
    return {"v": PROTOCOL_VERSION, "ok": False, "error": message}


def busy_reply() -> dict[str, object]:
    return {
        "v": PROTOCOL_VERSION,
        "ok": False,
        "busy": True,
        "error": f"busy: already serving {MAX_CONNECTIONS} control connections; try again",
    }


def ok_reply(result: object) -> dict[str, object]:
    return {"v": PROTOCOL_VERSION, "ok": True, "result": result}


def parse_request(line: bytes) -> dict[str, object]:
    """Decode and validate one request; raises ControlError on a malformed one."""
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError("malformed request: not JSON") from None
    except (ValueError, RecursionError):  # an int of over 4,300 digits; [[[[... too deep
        raise ControlError("malformed request: a number too long or nesting too deep") from None
    if not isinstance(request, dict):
        raise ControlError("malformed request: expected a JSON object")
    if request.get("v") != PROTOCOL_VERSION:
        raise ControlError(
            f"unsupported protocol version {request.get('v')!r} "
            f"(this supervisor speaks v{PROTOCOL_VERSION}; use the same agentsup version)"
        )
    op = request.get("op")
    if op not in OPS:
        raise ControlError(f"unknown op {op!r} (expected one of {', '.join(OPS)})")
    for key in ("agent", "code", "reason"):
        if key in request and not isinstance(request[key], str):
            raise ControlError(f"malformed request: {key!r} must be a string")
    if op in ACTION_OPS and not request.get("agent"):
        raise ControlError(f"{op} needs an agent id")
    return request


def handle_request(
    request: Mapping[str, object], peer: Peer, api: SupervisorAPI, totp: TotpVerifier
) -> dict[str, object]:
    """Answer one validated request from an accepted peer.  Raises nothing but bugs."""
    op = str(request["op"])
    if op == "ps":
        return ok_reply(api.agents())
    if op == "pending":
        return ok_reply(api.pending())
    agent_id = str(request["agent"])
    reason = str(request.get("reason") or "")
    audit_base: dict[str, object] = {
        "kind": "approval",
        "agent": agent_id,
        "op": op,
        "uid": peer.uid,
        "peer_pid": peer.pid,
        "reason": reason,
        "layer": "supervisor",
    }
    try:
        agent = _find_agent(api, agent_id)
        if op == "resume":
            _check_resumable(agent)
            _verify_code(request, peer, totp, audit_base, api)
        message = _ACTIONS[op](api, agent_id, uid=peer.uid, reason=reason)
    except ControlError as exc:
        api.audit({**audit_base, "outcome": f"refused: {exc}"})
        return error_reply(str(exc))
    api.audit({**audit_base, "outcome": "ok", "result": message})
    return ok_reply(message)


def _find_agent(api: SupervisorAPI, agent_id: str) -> Mapping[str, object]:
    for agent in api.agents():
        if agent.get("id") == agent_id:
            return agent
    raise ControlError(f"no agent {agent_id!r} here (see agentsup ps)")


def _check_resumable(agent: Mapping[str, object]) -> None:
    # Checked before the code so that a pointless resume does not burn a code.
    state = str(agent.get("state", ""))
    if not state.startswith(_STOPPED_PREFIX):
        raise ControlError(f"agent {agent.get('id')!r} is {state}; there is nothing to resume")


def _verify_code(
    request: Mapping[str, object],
    peer: Peer,
    totp: TotpVerifier,
    audit_base: Mapping[str, object],
    api: SupervisorAPI,
) -> None:
    code = str(request.get("code") or "")
    if not code:
        raise ControlError("resume needs a TOTP code: agentsup resume AGENT_ID --code 123456")
    if normalize_code(code) is None:
        # Not a code at all (a typo, a pasted word): refused without using up an attempt.
        raise ControlError(f"a TOTP code is {CODE_DIGITS} digits; no attempt was used")
    try:
        totp.verify(code, uid=peer.uid)
    except TotpRefused as exc:
        if exc.lockout_started:
            api.audit({**audit_base, "outcome": "lockout", "severity": "high"})
        raise ControlError(exc.reason) from None


def _resume(api: SupervisorAPI, agent_id: str, *, uid: int, reason: str) -> str:
    return api.resume(agent_id, uid=uid, reason=reason)


def _deny(api: SupervisorAPI, agent_id: str, *, uid: int, reason: str) -> str:
    return api.deny(agent_id, uid=uid, reason=reason)


def _stop(api: SupervisorAPI, agent_id: str, *, uid: int, reason: str) -> str:
    return api.stop(agent_id, uid=uid, reason=reason)


def _kill(api: SupervisorAPI, agent_id: str, *, uid: int, reason: str) -> str:
    return api.kill(agent_id, uid=uid, reason=reason)


_ACTIONS: dict[str, Callable[..., str]] = {
    "resume": _resume,
    "deny": _deny,
    "stop": _stop,
    "kill": _kill,
}


def encode_reply(reply: Mapping[str, object]) -> bytes:
    return json.dumps(reply, default=str).encode() + b"\n"


# --- the server -----------------------------------------------------------------


def peer_credentials(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(pid=pid, uid=uid, gid=gid)


@dataclass(repr=False, eq=False, slots=True)
class _Connection:
    """One client of the control socket: its request coming in, its answer going out."""

    sock: socket.socket
    peer: Peer
    opened_at: float
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    request_read: bool = False  # the whole request line is in (or we stopped reading)
    replied: bool = False


class ControlServer:
    """The listening socket and its connections, driven by the supervisor's loop.

    Poll every fd in `fds()` for input (re-read it after each `on_ready`,
    the set changes as clients come and go) and call `on_ready(fd)`.
    """

    def __init__(
        self,
        runtime_dir: Path,
        api: SupervisorAPI,
        totp: TotpVerifier,
        *,
        owner_uid: int,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
        listener: socket.socket | None = None,
    ) -> None:
        """Serve `listener` (from `endpoint.bind_control_socket`), or bind one now.

        Raises RuntimeDirError when the runtime directory cannot hold it.
        """
        self._api = api
        self._totp = totp
        self._owner_uid = owner_uid
        self._clock = clock
        self._connections: dict[int, _Connection] = {}
        # With a timer, idle connections expire even when nothing else happens:
        # the timer writes to a pipe among our fds, so the loop calls on_ready.
        self._call_later = call_later
        self._expiry_armed = False
        self._wake_r = self._wake_w = -1
        self.path = socket_path(runtime_dir, os.getpid())
        if listener is None:
            listener = bind_control_socket(runtime_dir, owner_uid)
        self._listener = listener
        if call_later is not None:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fds(self) -> list[int]:
        wake = [self._wake_r] if self._wake_r >= 0 else []
        return [self._listener.fileno(), *self._connections, *wake]

    def on_ready(self, fd: int) -> None:
        try:
            if fd == self._listener.fileno():
                self._accept_all()
            elif fd in self._connections:
                self._service(self._connections[fd])
            elif fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
            self._expire_idle()
            self._arm_expiry()
        except Exception:
            # The supervisor loop must survive anything a client does.
            log.exception("control socket: unexpected error on fd %d", fd)

    def close(self) -> None:
        for conn in list(self._connections.values()):
            self._drop(conn)
        close_listener(self._listener, self.path)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _arm_expiry(self) -> None:
        if self._call_later is None or self._expiry_armed or not self._connections:
            return
        oldest = min(conn.opened_at for conn in self._connections.values())
        delay = max(oldest + CONNECTION_TIMEOUT_S - self._clock(), 0.0) + 0.01
        self._expiry_armed = True
        self._call_later(delay, self._wake)

    def _wake(self) -> None:
        self._expiry_armed = False
        if self._wake_w >= 0:
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"!")

    def _accept_all(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("control socket: cannot accept: %s", exc)
                    return
                raise
            if len(self._connections) >= MAX_CONNECTIONS:
                # Told "busy" and closed, without an audit record, so a flood costs
                # nothing; what it may have sent already is discarded first (closing
                # on unread data would reset the connection before it reads "busy").
                log.warning("control socket: too many connections, turning a new one away")
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    sock.send(encode_reply(busy_reply()))
                    sock.recv(MAX_REQUEST_BYTES)
                sock.close()
                continue
            try:
                sock.setblocking(False)
                self._admit(sock)
            except BaseException:
                self._connections.pop(sock.fileno(), None)
                sock.close()
                raise

    def _admit(self, sock: socket.socket) -> None:
        peer = peer_credentials(sock)
        conn = _Connection(sock=sock, peer=peer, opened_at=self._clock())
        if peer.uid not in (0, self._owner_uid):
            self._api.audit(
                {
                    "kind": "tamper",
                    "uid": peer.uid,
                    "peer_pid": peer.pid,
                    "layer": "supervisor",
                    "severity": "high",
                    "reason": "control socket connection from a uid that is not allowed",
                    "outcome": "refused",
                }
            )
            self._reply(
                conn,
                error_reply(
                    f"permission denied: uid {peer.uid} may not control this supervisor "
                    f"(only root and uid {self._owner_uid})"
                ),
            )
            return
        self._connections[sock.fileno()] = conn
        self._service(conn)  # the request is often already there

    def _service(self, conn: _Connection) -> None:
        if conn.outbox:
            self._flush(conn)
            return
        try:
            chunk = conn.sock.recv(MAX_REQUEST_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not chunk:
            self._drop(conn)  # the client hung up
            return
        if conn.replied:
            # Answered before the request was read (refused peer, busy): discard
            # it, and close once it is complete.
            if b"\n" in chunk:
                self._drop(conn)
            return
        conn.inbox += chunk
        line, newline, _ = conn.inbox.partition(b"\n")
        if not newline:
            if len(conn.inbox) > MAX_REQUEST_BYTES:
                conn.request_read = True
                self._reply(conn, error_reply("request too large"))
            return
        conn.request_read = True
        try:
            request = parse_request(bytes(line))
            reply = handle_request(request, conn.peer, self._api, self._totp)
        except ControlError as exc:
            reply = error_reply(str(exc))
        except Exception as exc:
            log.exception("control socket: request failed")
            reply = error_reply(f"internal error in the supervisor: {exc.__class__.__name__}")
        self._reply(conn, reply)

    def _reply(self, conn: _Connection, reply: Mapping[str, object]) -> None:
        conn.replied = True
        conn.outbox += encode_reply(reply)
        self._connections[conn.sock.fileno()] = conn
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return  # the rest goes out on a later on_ready, or the connection times out
        except OSError:
            self._drop(conn)
            return
        del conn.outbox[:sent]
        if conn.outbox:
            return
        if conn.request_read:
            self._drop(conn)
            return
        # Closing now would make the client's pending write fail with EPIPE before
        # it reads the answer: half-close and wait for its request line instead.
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)

    def _drop(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _expire_idle(self) -> None:
        now = self._clock()
        for conn in list(self._connections.values()):
            if now - conn.opened_at > CONNECTION_TIMEOUT_S:
                self._drop(conn)


# --- the client -----------------------------------------------------------------


class SupervisorUnreachable(Exception):
    """A socket that did not answer (the supervisor is gone or hung).

    `refused` is True when nobody listens on the socket at all (ECONNREFUSED,
    or it is gone): whatever process has that pid now, the socket is stale.
    """

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class SupervisorBusy(SupervisorUnreachable):
    """The supervisor is alive but serves as many control connections as it takes."""


def socket_pid(path: Path) -> int | None:
    """The supervisor pid in a `sup-<pid>.sock` name, or None for another name."""
    name = path.name
    if not (name.startswith(SOCKET_PREFIX) and name.endswith(SOCKET_SUFFIX)):
        return None
    digits = name[len(SOCKET_PREFIX) : -len(SOCKET_SUFFIX)]
    return int(digits) if digits.isdigit() else None


def supervisor_sockets(runtime_dir: Path) -> list[Path]:
    """Every `sup-<pid>.sock` in the runtime directory, by pid."""
    try:
        entries = list(runtime_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(pid, p) for p in entries if (pid := socket_pid(p)) is not None]
    return [p for _, p in sorted(found)]


def request(path: Path, payload: Mapping[str, object], *, timeout: float = 10.0) -> object:
    """Send one request and return its `result`.

    Raises ControlError with the supervisor's message when it refused, and
    SupervisorUnreachable when nobody answers on `path`.
    """
    body = json.dumps({"v": PROTOCOL_VERSION, **payload}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            server = peer_credentials(sock)
            if server.uid not in (0, os.geteuid()):
                # A socket planted in the runtime directory would hear TOTP codes.
                raise ControlError(
                    f"{path} is served by uid {server.uid}, neither root nor you: "
                    "it is no supervisor of yours, and is sent nothing"
                )
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # A supervisor that refuses us may answer and close before reading.
                sock.sendall(body)
            data = _read_line(sock)
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise SupervisorUnreachable(f"{path}: {exc.strerror}", refused=True) from exc
        except BlockingIOError as exc:
            raise SupervisorBusy(f"{path}: its connection queue is full") from exc
        except PermissionError as exc:
            raise ControlError(
                f"{path}: permission denied (only root and the uid that started "
                "the supervisor may control it)"
            ) from exc
        except TimeoutError as exc:
            raise SupervisorUnreachable(f"{path}: no answer within {timeout:g} s") from exc
        except OSError as exc:
            raise SupervisorUnreachable(f"{path}: {exc.strerror or exc}") from exc
    if not data:
        raise SupervisorUnreachable(f"{path}: closed the connection without an answer")
    try:
        reply = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SupervisorUnreachable(f"{path}: answered something that is not JSON") from None
    if not isinstance(reply, dict) or reply.get("v") != PROTOCOL_VERSION:
        raise SupervisorUnreachable(f"{path}: answered in an unknown protocol version")
    if reply.get("busy"):
        raise SupervisorBusy(f"{path}: {reply.get('error', 'busy')}")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused without a reason")))
    return reply.get("result")


def _read_line(sock: socket.socket) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break  # what came before the reset is still the answer
        if not chunk:
            break
        data += chunk
    return bytes(data)


def remove_if_stale(path: Path, *, refused: bool = False) -> bool:
    """Unlink a socket nobody listens on (`refused`) or whose supervisor process is dead.

    True when it was removed.
    """
    pid = socket_pid(path)
    if pid is None or (pid_alive(pid) and not refused):
        return False
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return True
