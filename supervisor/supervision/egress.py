"""The egress proxy: an agent's only way out when its policy allows any network.

The agent runs in a network namespace with only loopback.  Its init binds a
listening socket on 127.0.0.1:PORT inside that namespace and hands it to the
supervisor, which serves it from its event loop (`EgressProxy`) and connects
out from the host's namespace.  So the agent has no route, no DNS and no
direct TCP or UDP: every byte that leaves goes through here, by name.

Per request (HTTP parsing is h11's, sans-I/O):
- `CONNECT host:port` (HTTPS and anything tunnelled) is judged as the
  `network_request` `CONNECT host:port` and the `network_connect`
  `host:port`; both must go ahead.  The first bytes in the tunnel must be a
  TLS ClientHello whose SNI is `host` (or no SNI for an IP literal); a
  mismatch or non-TLS is a violation handled per the policy's on_violation.
- An absolute-form plain HTTP request is judged as `METHOD URL` and
  `host:port`, the method in upper case and the URL in its one form
  (`hooks._mapping.url_parts`: case, default port, dot-segments, escapes, an
  IPv4 address in any inet_aton spelling as its dotted quad), and forwarded
  as judged: that method and path, a Host naming that host,
  `Connection: close`; the answer is relayed.
- Names are resolved by `resolver.Resolver` (a helper process).  Addresses
  that are not global (loopback, link-local and metadata, private, reserved,
  multicast) are refused unless a rule of the policy names `IP:PORT`.
  An IPv6 zone (`[fe80::1%25eth0]`) is refused whatever the address: it
  names an interface of the supervisor's host, which is not the agent's to
  choose.  A CONNECT port is 1 to 65535.
Every request and tunnel ends with an audit record of layer `proxy`.  No
request ends the proxy, the supervisor or another agent: an error serving
one connection (`ERROR_RULE`) is recorded, that connection alone is answered
502 or hung up on, and the proxy serves the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import h11

from .. import hooks
from ..events import (
    ActionType,
    Decision,
    Event,
    Layer,
    Response,
    Severity,
    Verdict,
    ViolationMode,
    response_for,
)
from ..hooks import _mapping as mapping
from ..policy import CompiledPolicy
from ..policy.model import connects_to_an_ip_literal
from ..visible import cut_text
from .loop import EventLoop
from .resolver import Resolver

DEFAULT_PORT = 3128
PROXY_HOST = "127.0.0.1"
SNI_RULE = "agentsup-egress-sni"
INTERNAL_RULE = "agentsup-egress-internal"
UNREACHABLE_RULE = "agentsup-egress-unreachable"
ERROR_RULE = "agentsup-egress-error"
RECORDED_URL = 2048
_RECV = 65536
_HIGH_WATER = 256 * 1024  # stop reading one side while the other lags this much
_MAX_HELLO = 64 * 1024
_MAX_CONNECTIONS = 256
_CONNECT_TIMEOUT = 15.0
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
# Headers that frameworks read as the request's method (Rails, Express's
# method-override, Google APIs): a rule about DELETE must see them.
_METHOD_OVERRIDES = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
_HOST_RE = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
# Path spellings whose meaning depends on the server, which a rule on the one
# form cannot see: an escaped / or \ (nginx decodes %2F before it resolves
# "..", others do not), a \ (a / to some servers) and `;` (servlet
# containers drop ";params" from each segment: /..;/admin is /../admin).
_AMBIGUOUS_PATH = re.compile(r"%2F|%5C|\\|;")
# Readable by every agent: the judge and the floor let agents read agentsup's hooks.
NODE_PRELOAD = os.path.join(
    os.path.dirname(os.path.abspath(hooks.__file__ or "")), "node", "egress.cjs"
)


# -- where the agent finds it ---------------------------------------------------------


def proxy_environment(port: int, node_options: str = "") -> dict[str, str]:
    """What the common clients read to find the proxy.

    curl, git (libcurl), Python's urllib/requests/httpx, pip and npm all take
    the lower- or upper-case http(s)_proxy; npm and pip also have their own.
    node's fetch reads none of them before node 24 (and there only under
    NODE_USE_ENV_PROXY): NODE_OPTIONS preloads agentsup's dispatcher, after
    whatever options the user's `node_options` already has.
    """
    url = f"http://{PROXY_HOST}:{port}"
    local = "localhost,127.0.0.1,::1"
    env = {
        "http_proxy": url,
        "https_proxy": url,
        "HTTP_PROXY": url,
        "HTTPS_PROXY": url,
        "no_proxy": local,
        "NO_PROXY": local,
        "npm_config_proxy": url,
        "npm_config_https_proxy": url,
        "PIP_PROXY": url,
        "NODE_USE_ENV_PROXY": "1",  # newer nodes' fetch honours the variables above
        "NODE_OPTIONS": " ".join(
            filter(None, (node_options.strip(), f"--require {_node_quoted(NODE_PRELOAD)}"))
        ),
    }
    return env


def _node_quoted(path: str) -> str:
    """`path` as one NODE_OPTIONS word: node splits on spaces and reads "..." with \\ escapes."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def network_mode(policy: CompiledPolicy) -> str:
    """`none`: loopback only; `proxy`: loopback and the egress proxy; `direct`: host network.

    A policy's `network: proxy|direct` says which, when anything may connect.
    Without it, `direct` keeps the earlier behaviour for policies whose
    connect rules name IP literals (`127.0.0.1:8080`): those connects are
    judged per syscall by address and go straight out.  Every other policy
    that allows any network goes through the proxy, by name.
    """
    if policy.floor_roots((ActionType.NETWORK_CONNECT,)) == ():
        return "none"
    if policy.policy.network is not None:
        return policy.policy.network
    for rule in policy.rules:
        if (
            rule.applies
            and connects_to_an_ip_literal(rule.rule)
            and response_for(rule.decision).proceeds
        ):
            return "direct"
    return "proxy"


# -- TLS ClientHello ------------------------------------------------------------------


class NotTLS(ValueError):
    pass


def client_hello_sni(data: bytes) -> str | None:
    """The SNI host name of a TLS ClientHello at the start of `data`.

    None while more bytes are needed; "" when the hello has no SNI; NotTLS
    when the bytes are not a ClientHello.  Bounded: a hello may span records,
    but not more than 64 KiB.
    """
    handshake = bytearray()
    offset = 0
    while True:
        if len(data) < offset + 5:
            if len(data) >= _MAX_HELLO:
                raise NotTLS("ClientHello too long")
            return None
        if data[offset] != 0x16 or data[offset + 1] != 0x03:
            raise NotTLS("not a TLS handshake record")
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        if length == 0 or length > 16384 + 2048:
            raise NotTLS("bad TLS record length")
        if len(data) < offset + 5 + length:
            if offset + 5 + length > _MAX_HELLO:
                raise NotTLS("ClientHello too long")
            return None
        handshake += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != 0x01:
                raise NotTLS("first handshake message is not a ClientHello")
            body_length = int.from_bytes(handshake[1:4], "big")
            if body_length + 4 > _MAX_HELLO:
                raise NotTLS("ClientHello too long")  # refused now, not buffered up to it
            if len(handshake) >= 4 + body_length:
                return _sni_from_hello(bytes(handshake[4 : 4 + body_length]))


def _sni_from_hello(body: bytes) -> str:
    def need(pos: int, count: int) -> None:
        if pos + count > len(body):
            raise NotTLS("truncated ClientHello")

    pos = 2 + 32  # client_version, random
    need(pos, 1)
    pos += 1 + body[pos]  # session_id
    need(pos, 2)
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
    need(pos, 1)
    pos += 1 + body[pos]  # compression_methods
    if pos == len(body):
        return ""  # no extensions at all
    need(pos, 2)
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 2
    if end > len(body):
        raise NotTLS("truncated extensions")
    while pos + 4 <= end:
        kind = int.from_bytes(body[pos : pos + 2], "big")
        size = int.from_bytes(body[pos + 2 : pos + 4], "big")
        pos += 4
        if pos + size > end:
            raise NotTLS("truncated extension")
        if kind == 0:  # server_name
            ext = body[pos : pos + size]
            if len(ext) < 2:
                raise NotTLS("bad server_name extension")
            at, stop = 2, min(2 + int.from_bytes(ext[0:2], "big"), len(ext))
            while at + 3 <= stop:
                name_type = ext[at]
                name_len = int.from_bytes(ext[at + 1 : at + 3], "big")
                name = ext[at + 3 : at + 3 + name_len]
                if name_type == 0:
                    try:
                        return name.decode("ascii").lower().rstrip(".")
                    except UnicodeDecodeError as exc:
                        raise NotTLS("server name is not ASCII") from exc
                at += 3 + name_len
            raise NotTLS("server_name extension without a host name")
        pos += size
    return ""


# -- addresses ----------------------------------------------------------------------


def address_target(addr: str, port: int) -> str:
    """`IP:PORT` as network_connect targets write it (IPv6 in brackets, IPv4-mapped folded)."""
    addr = mapping.ip_literal(addr) or addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def is_internal(addr: str) -> bool:
    """Loopback, link-local (metadata), private, reserved, multicast: anything not global."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


# A name no rule about addresses can mean: a rule matching it is about any host.
_ANY_HOST = "agentsup-any-host.invalid"


def names_address(policy: CompiledPolicy, addr: str, port: int) -> bool:
    """Whether the rule deciding `network_connect IP:PORT` names that address and lets it go.

    Not the default, and not a catch-all: a rule that also matches a made-up
    host name (`*:443`, `.*`, `**`) allows hosts in general, and a policy that
    opens every host must still not reach loopback, the metadata service or
    the private network behind the supervisor.
    """
    target = address_target(addr, port)
    decision = policy.evaluate(Event(ActionType.NETWORK_CONNECT, target, layer=Layer.PROXY))
    if decision.is_default or not response_for(decision).proceeds:
        return False
    probe = f"{_ANY_HOST}:{port}"
    for rule in policy.rules:
        if rule.id == decision.rule_id:
            return rule.miss_reason(probe) is not None
    return False  # fail closed: a decision from no rule of the policy names nothing


def _ip_literal(host: str) -> bool:
    """An IP address, without a zone: `fe80::1%eth0` is none (`_on_request` refuses it)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return "%" not in host


def _port(text: str) -> int | None:
    """A CONNECT port, 1 to 65535 in ASCII digits; None for anything else."""
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


# -- who connected ------------------------------------------------------------------

_SOCK_DIAG_BY_FAMILY = 20
_NETLINK_SOCK_DIAG = 4
_NLMSG_ERROR = 2
_CLONE_NEWNET = 0x40000000


def _netlink_in(netns: str) -> socket.socket:
    """A sock_diag socket in the network namespace at `netns`.

    A socket stays in the namespace it was made in, so a short-lived thread
    enters it (setns moves only the calling thread) and makes the socket there.
    """
    if os.stat(netns).st_ino == os.stat("/proc/self/ns/net").st_ino:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    made: list[socket.socket | OSError] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG))
        except OSError as exc:
            made.append(exc)

    thread = threading.Thread(target=enter, name="agentsup-netns")
    thread.start()
    thread.join()
    if isinstance(made[0], OSError):
        raise made[0]
    return made[0]


def socket_inode(diag: socket.socket, local: tuple[str, int], remote: tuple[str, int]) -> int:
    """The inode of the IPv4 TCP socket `local` -> `remote`; 0 if there is none.

    One exact sock_diag lookup (no dump): /proc/net/tcp walks every socket of
    the host, milliseconds per read on a busy one.
    """
    sockid = struct.pack(
        ">HH16s16s", local[1], remote[1], socket.inet_aton(local[0]), socket.inet_aton(remote[0])
    ) + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    body = request + sockid
    header = struct.pack("=IHHII", 16 + len(body), _SOCK_DIAG_BY_FAMILY, 1, 1, 0)  # NLM_F_REQUEST
    diag.send(header + body)
    answer = diag.recv(8192)
    if len(answer) < 16 + 72 or struct.unpack_from("=H", answer, 4)[0] == _NLMSG_ERROR:
        return 0
    inode: int = struct.unpack_from("=I", answer, 16 + 68)[0]
    return inode


class SocketOwners:
    """Which process of the agent's tree holds the client end of a proxy connection.

    SO_PEERCRED is for unix sockets only.  So: the client socket's inode by
    sock_diag in the agent's namespace, then the tree process with an fd on
    it, newest first (the client is most often a fresh child).  0 when it
    cannot be told; the caller falls back to the agent's main pid.
    """

    # The lookup runs in the loop, over a tree whose processes and fds the
    # agent picks (red team 26 stalled every agent for 27 s with 100
    # processes of 19,000 fds each).  So each lookup reads at most
    # LOOKUP_FDS fds, and all lookups together at most FDS_PER_SECOND;
    # past either, the caller names the agent's main pid.
    LOOKUP_FDS = 1024
    FDS_PER_SECOND = 4096

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._diag: socket.socket | None = None
        self._failed = False
        self._clock = clock
        self._second = 0.0
        self._spent = 0

    def pid(
        self, peer: tuple[str, int], proxy: tuple[str, int], netns_pid: int, pids: Iterable[int]
    ) -> int:
        if self._failed:
            return 0
        try:
            if self._diag is None:
                self._diag = _netlink_in(f"/proc/{netns_pid}/ns/net")
                self._diag.settimeout(1.0)  # the kernel answers at once; never stall the loop
            inode = socket_inode(self._diag, peer, proxy)
        except OSError:
            self._failed = True  # no sock_diag here: the main pid, without asking again
            return 0
        if not inode:
            return 0
        link = f"socket:[{inode}]"
        now = self._clock()
        if now - self._second >= 1.0:
            self._second, self._spent = now, 0
        budget = min(self.LOOKUP_FDS, self.FDS_PER_SECOND - self._spent)
        read = 0
        try:
            for pid in sorted(pids, reverse=True):
                try:
                    fds = os.scandir(f"/proc/{pid}/fd")
                except OSError:
                    continue
                with fds:
                    for entry in fds:
                        read += 1
                        if read > budget:
                            return 0
                        with contextlib.suppress(OSError):
                            if os.readlink(entry.path) == link:
                                return pid
            return 0
        finally:
            self._spent += min(read, budget)

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None


# -- the proxy ----------------------------------------------------------------------


class TreeLike(Protocol):
    def pids(self) -> set[int]: ...


class JudgeLike(Protocol):
    agent_id: str
    policy: CompiledPolicy
    main_pid: int

    @property
    def tree(self) -> TreeLike | None: ...

    def judge_event(
        self, event: Event, tid: int, on_settle: Callable[[bool], None] | None = None
    ) -> tuple[Decision, Response]: ...

    def kill_for(self, event: Event, decision: Decision) -> None: ...


class AuditLike(Protocol):
    def append(self, record: Mapping[str, object]) -> Mapping[str, object]: ...


@dataclass(eq=False)
class _End:
    """One side of a proxied connection: its socket, what waits to be sent, its EOFs."""

    sock: socket.socket
    outbox: bytearray = field(default_factory=bytearray)
    eof: bool = False  # the peer sent EOF: nothing more to read
    shut: bool = False  # we sent EOF after the outbox drained
    mask: int = 0
    reading: bool = True

    @property
    def fd(self) -> int:
        return self.sock.fileno()


@dataclass(eq=False)
class _Conn:
    """One agent connection through the proxy, from its request head to the relay."""

    client: _End
    started: float
    pid: int = 0  # the agent's process that connected (its main pid when unknown)
    h11conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.SERVER))
    upstream: _End | None = None
    phase: str = "head"  # head | judging | hello | connecting | relay | closed
    method: str = ""
    url: str = ""
    host: str = ""
    port: int = 0
    addr: str = ""
    path: str = ""  # plain HTTP: the judged path and query, which is what goes up
    tunnel: bool = False
    hello: bytes = b""
    sni: str | None = None
    decision: str = "deny"
    rule: str = ""
    response: str = ""
    reason: str = ""
    sent_up: int = 0
    sent_down: int = 0
    upstream_h11: h11.Connection | None = None
    request: h11.Request | None = None
    timer: object | None = None


class EgressProxy:
    """Serves one agent's proxy listener from the supervisor's loop."""

    def __init__(
        self,
        loop: EventLoop,
        listener: socket.socket,
        judge: JudgeLike,
        audit: AuditLike,
        resolver: Resolver | None = None,
    ) -> None:
        self.loop = loop
        self.listener = listener
        self.judge = judge
        self.audit = audit
        self.resolver = resolver or Resolver(loop)
        self._own_resolver = resolver is None
        self.conns: dict[int, _Conn] = {}  # by client fd
        self.owners = SocketOwners()
        listener.setblocking(False)
        loop.add_reader(listener.fileno(), self._on_accept)
        self.closed = False

    # -- accepting and reading the request head ------------------------------------

    def _on_accept(self, _events: int) -> None:
        for _ in range(64):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.conns) >= _MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(_End(sock), time.monotonic(), pid=self._pid_of(peer))
            self.conns[sock.fileno()] = conn
            try:
                self._watch(conn, conn.client)
            except Exception as exc:  # epoll refused the fd: this connection only
                self._failed(conn, f"{type(exc).__name__}: {exc}")

    def _pid_of(self, peer: object) -> int:
        main = self.judge.main_pid
        tree = self.judge.tree
        if tree is None or not main or not isinstance(peer, tuple):
            return main
        try:
            proxy = self.listener.getsockname()
            found = self.owners.pid((peer[0], peer[1]), (proxy[0], proxy[1]), main, tree.pids())
        except (OSError, ValueError, IndexError):
            found = 0
        return found or main

    def _watch(self, conn: _Conn, end: _End) -> None:
        """(Re)register `end` for what it needs now."""
        if conn.phase == "closed":
            return
        peer = conn.upstream if end is conn.client else conn.client
        mask = 0
        if conn.phase in ("head", "hello") and end is conn.client:
            mask = select.EPOLLIN
        elif conn.phase == "body" and end is conn.client:
            if peer is not None and len(peer.outbox) < _HIGH_WATER:
                mask = select.EPOLLIN
        elif (
            conn.phase == "relay"
            and end.reading
            and not end.eof
            and (peer is None or len(peer.outbox) < _HIGH_WATER)
        ):
            mask = select.EPOLLIN
        if end.outbox:
            mask |= select.EPOLLOUT
        if conn.phase == "connecting" and end is conn.upstream:
            mask = select.EPOLLOUT
        if mask == end.mask:
            return
        if end.mask:
            self.loop.remove_reader(end.fd)
        end.mask = mask
        if mask:
            self.loop.add_reader(end.fd, lambda events: self._ready(conn, end, events), mask)

    def _safely(self, conn: _Conn, step: Callable[[], None]) -> None:
        """Run one step of `conn` from the loop; an error ends that connection only.

        Every callback the loop, the resolver, a timer or a person's answer
        makes into the proxy comes through here: whatever the agent sent,
        nothing it causes reaches the loop and ends the supervisor.
        """
        try:
            step()
        except Exception as exc:
            self._failed(conn, f"{type(exc).__name__}: {exc}")

    def _failed(self, conn: _Conn, error: str) -> None:
        """Serving `conn` raised: record it, answer 502 (or hang up), and drop it."""
        why = f"proxy error: {error}"[:300]
        target = ""
        if conn.method:
            target = f"CONNECT {conn.url}" if conn.tunnel else f"{conn.method} {conn.url}"
        self.audit.append(
            {
                "agent": self.judge.agent_id,
                "pid": conn.pid,
                "kind": "decision",
                "action_type": str(ActionType.NETWORK_REQUEST),
                "target": target,
                "decision": "deny",
                "rule": ERROR_RULE,
                "severity": "high",
                "layer": "proxy",
                "response": "block",
                "event": "egress-error",
                "host": conn.host,
                "port": conn.port,
                "method": conn.method,
                "reason": why,
            }
        )
        conn.rule, conn.reason = ERROR_RULE, why
        if conn.phase == "closed":
            self._abandon(conn)
            return
        try:
            self._refuse(conn, 502, why, record=False)
        except Exception:
            self._abandon(conn)

    def _abandon(self, conn: _Conn) -> None:
        """Close both ends whatever state they are in; nothing more is written."""
        conn.phase = "closed"
        if conn.timer is not None:
            conn.timer.cancel()  # type: ignore[attr-defined]
        if self.conns.get(conn.client.fd) is conn:
            del self.conns[conn.client.fd]
        for end in (conn.client, conn.upstream):
            if end is not None:
                with contextlib.suppress(Exception):
                    self._drop(end)

    def _ready(self, conn: _Conn, end: _End, events: int) -> None:
        try:
            self._on_ready(conn, end, events)
        except Exception as exc:
            self._failed(conn, f"{type(exc).__name__}: {exc}")

    def _on_ready(self, conn: _Conn, end: _End, events: int) -> None:
        if conn.phase == "closed":
            return
        if conn.phase == "connecting" and end is conn.upstream:
            self._connected(conn)
            return
        if events & select.EPOLLOUT and end.outbox and not self._flush(conn, end):
            return
        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR) and end.mask & (
            select.EPOLLIN
        ):
            if conn.phase == "head":
                self._read_head(conn)
            elif conn.phase == "hello":
                self._read_hello(conn)
            elif conn.phase == "body":
                self._read_body(conn)
            elif conn.phase == "relay":
                self._pump(conn, end)
        if conn.phase != "closed":
            self._watch(conn, conn.client)
            if conn.upstream is not None:
                self._watch(conn, conn.upstream)

    def _recv(self, conn: _Conn, end: _End) -> bytes | None:
        """Bytes, b"" at EOF, None when nothing is there (or the connection died)."""
        try:
            return end.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._finish(conn)
            return None

    def _read_head(self, conn: _Conn) -> None:
        data = self._recv(conn, conn.client)
        if data is None:
            return
        if not data:
            self._finish(conn, record=False)
            return
        try:
            conn.h11conn.receive_data(data)
            event = conn.h11conn.next_event()
        except h11.RemoteProtocolError as exc:
            self._refuse(conn, 400, f"bad request: {exc}")
            return
        if event is h11.NEED_DATA:
            return
        if not isinstance(event, h11.Request):
            self._finish(conn, record=False)
            return
        self._on_request(conn, event)

    # -- judging ------------------------------------------------------------------------

    def _on_request(self, conn: _Conn, request: h11.Request) -> None:
        # h11 takes only a token for the method and visible ASCII for the target.
        # The method is judged (and forwarded) in upper case, as the hook judges
        # it: `delete` is DELETE to some servers (`mapping.http_method`).
        method = request.method.decode("ascii", "replace")
        try:
            conn.method = mapping.http_method(method)
        except ValueError as exc:
            self._refuse(conn, 400, str(exc))
            return
        target = request.target.decode("ascii", "replace")
        overrides: list[str] = []  # METHOD URL of a method header (none for a tunnel)
        if conn.method == "CONNECT" and method != "CONNECT":
            conn.url = target
            self._refuse(conn, 400, "CONNECT is written in upper case")  # h11 tunnels no other
            return
        if conn.method == "CONNECT":
            conn.tunnel = True
            host, sep, port_text = target.rpartition(":")
            # One spelling: [::ffff:a.b.c.d], 0x7f.1 and 2130706433 are addresses.
            host = mapping.host_text(host.strip("[]"))
            port = _port(port_text)
            if not sep or port is None or not host:
                conn.url = target
                self._refuse(conn, 400, "CONNECT needs host:port, the port 1 to 65535")
                return
            conn.host, conn.port = host, port
            conn.url = f"{_bracket(host)}:{conn.port}"
            request_target = f"CONNECT {conn.url}"
        else:
            try:
                scheme, host, port_or_none, path = mapping.url_parts(target)
            except ValueError as exc:
                self._refuse(conn, 400, f"bad URL: {exc}")
                return
            if scheme != "http" or port_or_none is None:
                self._refuse(conn, 400, "only absolute http:// URLs or CONNECT")
                return
            if _AMBIGUOUS_PATH.search(path.partition("?")[0]):
                self._refuse(conn, 400, "an escaped / or \\, a \\ or a ; in the path")
                return
            names = [name.lower() for name, _value in request.headers]
            if b"transfer-encoding" in names and b"content-length" in names:
                # Servers differ on which one frames the body: the rest of it
                # could be read as another request, never judged.
                self._refuse(conn, 400, "both Transfer-Encoding and Content-Length")
                return
            conn.host, conn.port, conn.path = host, port_or_none, path
            conn.url = f"http://{mapping.url_authority(scheme, host, conn.port)}{path}"
            request_target = f"{conn.method} {conn.url}"
            try:
                overrides = [
                    f"{mapping.http_method(value.decode('ascii', 'replace'))} {conn.url}"
                    for name, value in request.headers
                    if name.lower() in _METHOD_OVERRIDES
                ]
            except ValueError as exc:
                self._refuse(conn, 400, f"method override: {exc}")
                return
            conn.upstream_h11 = h11.Connection(h11.CLIENT)
            conn.request = request
        if ":" in conn.host and "%" in conn.host:
            # [fe80::1%25eth0]: the zone names an interface of the supervisor's
            # host.  Link-local addresses are internal anyway; which of the
            # host's links to reach them on is not the agent's to choose.
            self._refuse(conn, 400, "an IPv6 zone (%) names an interface of the host")
            return
        if not (_ip_literal(conn.host) or _HOST_RE.match(conn.host)):
            self._refuse(conn, 400, "bad host name")
            return
        conn.phase = "judging"
        self._watch(conn, conn.client)
        # The host first: a rule about the host decides before one about requests.
        events = [
            Event(
                ActionType.NETWORK_CONNECT,
                f"{_bracket(conn.host)}:{conn.port}",
                pid=conn.pid,
                layer=Layer.PROXY,
            ),
            Event(ActionType.NETWORK_REQUEST, request_target, pid=conn.pid, layer=Layer.PROXY),
        ]
        # A method a server takes from a header instead is judged too.
        events += [
            Event(ActionType.NETWORK_REQUEST, other, pid=conn.pid, layer=Layer.PROXY)
            for other in overrides
        ]
        self._judge_all(conn, events, [])

    def _judge_all(self, conn: _Conn, events: list[Event], decisions: list[Decision]) -> None:
        """Judge each event in turn; a held one continues when a person decides."""
        if conn.phase == "closed":
            return
        if not events:
            chosen = next((d for d in decisions if not d.is_default), decisions[0])
            conn.decision, conn.rule = "allow", chosen.rule_id
            self._resolve(conn)
            return
        event = events[0]

        def answered(approved: bool) -> None:
            if approved:
                self._judge_all(conn, events[1:], [*decisions, decision])
            else:
                conn.rule = decision.rule_id
                self._refuse(conn, 403, f"{event.action} {event.target}: refused by a person")

        def settled(approved: bool) -> None:
            self._safely(conn, lambda: answered(approved))

        decision, response = self.judge.judge_event(event, 0, on_settle=settled)
        conn.response = str(response)
        if response is Response.HOLD:
            return
        if response.proceeds:
            self._judge_all(conn, events[1:], [*decisions, decision])
            return
        conn.rule = decision.rule_id
        self._refuse(conn, 403, f"{event.action} {event.target}: {decision.message or 'denied'}")

    def _resolve(self, conn: _Conn) -> None:
        if _ip_literal(conn.host):
            self._resolved(conn, [conn.host], "")
        else:
            self.resolver.resolve(
                conn.host,
                conn.port,
                lambda a, e: self._safely(conn, lambda: self._resolved(conn, a, e)),
            )

    def _resolved(self, conn: _Conn, addrs: list[str], error: str) -> None:
        if conn.phase == "closed":
            return
        if not addrs:
            conn.rule = UNREACHABLE_RULE
            self._refuse(conn, 502, f"cannot resolve {conn.host}: {error}")
            return
        # One spelling per address: a name may resolve to ::ffff:a.b.c.d.
        addrs = [mapping.ip_literal(addr) or addr for addr in addrs]
        # An address from the operator's override table is trusted as /etc/hosts is.
        trusted = self.resolver.overrides.get(conn.host)
        for addr in addrs:
            if addr == trusted or not is_internal(addr) or self._named(addr, conn.port):
                conn.addr = addr
                break
        else:
            self._internal(conn, addrs[0])
            return
        if conn.tunnel:
            answer = h11.Response(status_code=200, headers=[], reason=b"Connection established")
            conn.client.outbox += conn.h11conn.send(answer) or b""
            trailing, _closed = conn.h11conn.trailing_data
            conn.hello = bytes(trailing)
            conn.phase = "hello"
            if not self._flush(conn, conn.client):
                return
            if conn.hello:
                self._check_hello(conn)
            if conn.phase == "hello":
                self._watch(conn, conn.client)
        else:
            self._connect(conn)

    def _named(self, addr: str, port: int) -> bool:
        """An internal address passes only when a rule that names it lets it go ahead."""
        return names_address(self.judge.policy, addr, port)

    def _internal(self, conn: _Conn, addr: str) -> None:
        conn.rule = INTERNAL_RULE
        conn.addr = addr
        self.audit.append(
            {
                "agent": self.judge.agent_id,
                "pid": conn.pid,
                "kind": "decision",
                "action_type": str(ActionType.NETWORK_CONNECT),
                "target": address_target(addr, conn.port),
                "decision": "deny",
                "rule": INTERNAL_RULE,
                "severity": "high",
                "layer": "proxy",
                "response": "block",
                "host": conn.host,
                "message": "loopback, link-local, private and metadata addresses need a rule "
                "naming them",
            }
        )
        self._refuse(conn, 403, f"{conn.host} is an internal address ({addr})")

    # -- the tunnel's first bytes ---------------------------------------------------------

    def _read_hello(self, conn: _Conn) -> None:
        data = self._recv(conn, conn.client)
        if data is None:
            return
        if not data:
            self._finish(conn)
            return
        conn.hello += data
        self._check_hello(conn)

    def _check_hello(self, conn: _Conn) -> None:
        try:
            sni = client_hello_sni(conn.hello)
        except NotTLS as exc:
            self._sni_violation(conn, None, str(exc))
            return
        if sni is None:
            return
        conn.sni = sni
        expected = "" if _ip_literal(conn.host) else conn.host
        # A client may name an address it was given as 2130706433 in the SNI.
        same_address = expected == "" and mapping.ip_literal(sni) == conn.host
        if sni != expected and not same_address:
            self._sni_violation(conn, sni, f"SNI {sni or '(none)'} is not {conn.host}")
            return
        self._connect(conn)

    def _sni_violation(self, conn: _Conn, sni: str | None, why: str) -> None:
        policy = self.judge.policy
        mode = policy.on_violation
        if mode in (ViolationMode.SIGWARN, ViolationMode.LOG_ONLY):
            mode = ViolationMode.BLOCK  # a tunnel to another host than judged never proceeds
        decision = Decision(
            verdict=Verdict.DENY,
            rule_id=SNI_RULE,
            severity=Severity.HIGH,
            message="the TLS server name must be the CONNECT host",
            on_violation=mode,
            reason=why,
        )
        event = Event(
            ActionType.NETWORK_REQUEST,
            f"CONNECT {_bracket(conn.host)}:{conn.port}",
            agent_id=self.judge.agent_id,
            pid=conn.pid,
            layer=Layer.PROXY,
        )
        response = response_for(decision)
        self.audit.append(
            {
                "agent": self.judge.agent_id,
                "pid": conn.pid,
                "kind": "decision",
                "action_type": str(event.action),
                "target": event.target,
                "decision": "deny",
                "rule": SNI_RULE,
                "severity": "high",
                "layer": "proxy",
                "response": str(response),
                "sni": sni,
                "reason": why,
            }
        )
        conn.rule, conn.response, conn.decision = SNI_RULE, str(response), "deny"
        conn.reason = why
        self._finish(conn)
        if response is Response.KILL:
            self.judge.kill_for(event, decision)
        elif response is Response.STOP:
            # The same hold as any other sigstop violation: a person resumes or kills.
            hold = getattr(self.judge, "_hold", None)
            if hold is not None:
                hold(event, 0, decision, kind="violation")

    # -- going out ---------------------------------------------------------------------------

    def _connect(self, conn: _Conn) -> None:
        family = socket.AF_INET6 if ":" in conn.addr else socket.AF_INET
        conn.phase = "connecting"
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS
            self._unreachable(conn, f"no socket: {exc}")
            return
        sock.setblocking(False)
        conn.upstream = _End(sock)
        self._watch(conn, conn.client)
        try:
            err = sock.connect_ex((conn.addr, conn.port))
        except (OSError, OverflowError, ValueError, TypeError) as exc:
            # connect_ex raises for what it cannot even try: a port past 65535
            # (OverflowError), an address getaddrinfo cannot read (gaierror).
            self._unreachable(conn, f"{type(exc).__name__}: {exc}")
            return
        if err not in (0, errno.EINPROGRESS):
            self._unreachable(conn, os_error(err))
            return
        conn.timer = self.loop.call_later(
            _CONNECT_TIMEOUT,
            lambda: self._safely(conn, lambda: self._unreachable(conn, "connect timed out")),
        )
        self._watch(conn, conn.upstream)

    def _connected(self, conn: _Conn) -> None:
        assert conn.upstream is not None
        if conn.timer is not None:
            conn.timer.cancel()  # type: ignore[attr-defined]
        err = conn.upstream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._unreachable(conn, os_error(err))
            return
        upstream = conn.upstream
        if conn.tunnel:
            conn.phase = "relay"
            upstream.outbox += conn.hello
            conn.sent_up += len(conn.hello)
        elif not self._forward_request(conn):
            return
        if self._flush(conn, upstream):
            self._watch(conn, conn.client)
            self._watch(conn, upstream)

    def _forward_request(self, conn: _Conn) -> bool:
        """Re-frame the request (origin-form, Connection: close) with h11.

        What goes up is what was judged: the judged method and path, and a Host naming
        the judged host.  The agent's own Host is dropped (RFC 9112 3.2.2: a
        proxy replaces it), or a server hosting several names would be asked
        for another one than the rules saw.
        """
        assert conn.upstream is not None and conn.upstream_h11 is not None
        request = conn.request
        assert request is not None
        host = mapping.url_authority("http", conn.host, conn.port)
        headers = [
            (n, v)
            for n, v in request.headers
            if n.lower() not in _HOP_BY_HOP and n.lower() != b"host"
        ]
        headers.insert(0, (b"host", host.encode("ascii")))
        headers.append((b"connection", b"close"))
        try:
            data = conn.upstream_h11.send(
                h11.Request(method=conn.method.encode("ascii"), target=conn.path, headers=headers)
            )
        except h11.ProtocolError as exc:
            self._refuse(conn, 400, f"cannot forward the request: {exc}")
            return False
        conn.upstream.outbox += data or b""
        conn.sent_up += len(data or b"")
        conn.phase = "body"
        return self._pump_body(conn)

    def _read_body(self, conn: _Conn) -> None:
        data = self._recv(conn, conn.client)
        if data is None:
            return
        if not data:
            self._finish(conn)
            return
        conn.h11conn.receive_data(data)
        if self._pump_body(conn) and conn.upstream is not None:
            self._flush(conn, conn.upstream)

    def _pump_body(self, conn: _Conn) -> bool:
        """Move what h11 has of the request body up; the relay starts at its end."""
        assert conn.upstream is not None and conn.upstream_h11 is not None
        try:
            while True:
                event = conn.h11conn.next_event()
                if event is h11.NEED_DATA:
                    return True
                if not isinstance(event, h11.Data | h11.EndOfMessage):
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
                data = conn.upstream_h11.send(event) or b""
                conn.upstream.outbox += data
                conn.sent_up += len(data)
                if isinstance(event, h11.EndOfMessage):
                    conn.phase = "relay"
                    # Only this one request goes up: later bytes are not relayed.
                    conn.client.reading = False
                    return True
        except h11.ProtocolError as exc:
            self._refuse(conn, 400, f"bad request body: {exc}")
            return False

    def _unreachable(self, conn: _Conn, why: str) -> None:
        if conn.phase == "closed":
            return
        conn.reason = why
        if conn.tunnel and conn.phase == "connecting":
            self._finish(conn)  # the 200 has gone out: all we can do is hang up
        else:
            self._refuse(conn, 502, f"cannot reach {conn.host}:{conn.port}: {why}")

    # -- relaying ----------------------------------------------------------------------------

    def _pump(self, conn: _Conn, end: _End) -> None:
        peer = conn.upstream if end is conn.client else conn.client
        assert peer is not None
        data = self._recv(conn, end)
        if data is None:
            return
        if not data:
            end.eof = True
            self._maybe_shut(conn, peer)
            return
        if end is conn.client and not end.reading:
            return  # after a plain HTTP request: nothing more goes up
        peer.outbox += data
        if end is conn.client:
            conn.sent_up += len(data)
        else:
            conn.sent_down += len(data)
        self._flush(conn, peer)

    def _flush(self, conn: _Conn, end: _End) -> bool:
        """Write what the socket takes now; False when the connection ended."""
        while end.outbox:
            try:
                sent = end.sock.send(end.outbox)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self._finish(conn)
                return False
            del end.outbox[:sent]
        if conn.phase == "relay":
            self._maybe_shut(conn, end)
        elif conn.phase == "refused":
            self._finish(conn, record=False)
            return False
        return conn.phase != "closed"

    def _maybe_shut(self, conn: _Conn, end: _End) -> None:
        """Pass an EOF on once `end`'s outbox is drained; close when both ways are done."""
        peer = conn.upstream if end is conn.client else conn.client
        assert peer is not None
        if peer.eof and not end.outbox and not end.shut:
            end.shut = True
            with contextlib.suppress(OSError):
                end.sock.shutdown(socket.SHUT_WR)
        client, upstream = conn.client, conn.upstream
        assert upstream is not None
        done = (client.shut and upstream.shut) if conn.tunnel else not client.outbox
        done = done and (conn.tunnel or upstream.eof)
        if done or (client.eof and not conn.tunnel):
            self._finish(conn)

    # -- endings ------------------------------------------------------------------------

    def _refuse(self, conn: _Conn, status: int, why: str, *, record: bool = True) -> None:
        """Answer with an error status and hang up (after the 200 of a tunnel: just hang up)."""
        conn.reason = why
        conn.decision = "deny"
        if record:
            self._record(conn)
        if conn.upstream is not None:
            self._drop(conn.upstream)
            conn.upstream = None
        body = (why + "\n").encode("utf-8", "replace")
        headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-agentsup", b"refused"),
        ]
        try:
            head = conn.h11conn.send(h11.Response(status_code=status, headers=headers)) or b""
        except h11.LocalProtocolError:
            # h11 cannot answer now (a bad request, or the tunnel is open): do it by hand.
            if conn.phase in ("hello", "relay"):
                conn.phase = "refused"
                self._finish(conn, record=False)
                return
            head = f"HTTP/1.1 {status} Refused\r\n".encode()
            head += b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
        conn.client.outbox = bytearray(head + body)
        conn.client.reading = False
        conn.phase = "refused"
        if self._flush(conn, conn.client):
            self._watch(conn, conn.client)

    def _drop(self, end: _End) -> None:
        if end.mask:
            self.loop.remove_reader(end.fd)
            end.mask = 0
        end.sock.close()

    def _finish(self, conn: _Conn, record: bool = True) -> None:
        if conn.phase == "closed":
            return
        if record and conn.phase != "refused":
            self._record(conn)
        conn.phase = "closed"
        if conn.timer is not None:
            conn.timer.cancel()  # type: ignore[attr-defined]
        self.conns.pop(conn.client.fd, None)
        self._drop(conn.client)
        if conn.upstream is not None:
            self._drop(conn.upstream)

    def _record(self, conn: _Conn) -> None:
        if not conn.method:
            return
        # The agent chooses the URL: recorded up to RECORDED_URL characters
        # (h11 takes 16 KB), as it counts in its share of the log.
        url = cut_text(conn.url, RECORDED_URL)
        target = f"CONNECT {url}" if conn.tunnel else f"{conn.method} {url}"
        record: dict[str, object] = {
            "agent": self.judge.agent_id,
            "pid": conn.pid,
            "kind": "decision",
            "action_type": str(ActionType.NETWORK_REQUEST),
            "target": target,
            "decision": conn.decision,
            "rule": conn.rule or "<default>",
            "severity": "low" if conn.decision == "allow" else "medium",
            "layer": "proxy",
            "response": conn.response or ("allow" if conn.decision == "allow" else "block"),
            "event": "egress",
            "host": conn.host,
            "port": conn.port,
            "method": conn.method,
            "bytes_up": conn.sent_up,
            "bytes_down": conn.sent_down,
            "duration_ms": round((time.monotonic() - conn.started) * 1000, 1),
        }
        if not conn.tunnel:
            record["url"] = url
        if conn.addr:
            record["addr"] = conn.addr
        if conn.sni is not None:
            record["sni"] = conn.sni
        if conn.reason:
            record["reason"] = conn.reason[:300]
        self.audit.append(record)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in list(self.conns.values()):
            self._finish(conn)
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()
        self.owners.close()
        if self._own_resolver:
            self.resolver.close()


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def os_error(err: int) -> str:
    return errno.errorcode.get(err, str(err)) + f" ({err})"
