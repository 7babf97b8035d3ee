"""Unix datagrams go where they were decided to go, and ordinary uses still work.

A sendto, sendmsg or sendmmsg on a unix datagram socket is decided on the
address the supervisor copied, and the broker sends that copy (with the
payload and the fds passed) on a duplicate of the agent's socket.  Handed
back to the kernel, the call would read the address again: a second thread
rewriting it in between (an allowed path made a host socket's path, a NULL
msg_name made one) reached any host datagram socket the agent can see.

Here the test process plays the host: it serves allowed.sock (which a small
policy allows) and denied.sock (which strict's local-socket refuses, EPERM
with no signal) in the workspace, and counts what reaches each.
"""

from __future__ import annotations

import array
import ctypes
import errno
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_ops import MSGHDR_STRUCTS, OPS_MAIN, OPS_PRELUDE
from conftest import Sandbox, agent_reports, run_ops_agent
from host_sockets import DatagramServer, datagram_server

from agentsup.supervision import broker as _broker
from agentsup.supervision import mediator as _mediator

# Each argument is one operation (`name=arg,arg`); each prints one JSON line
# ({"op": ..., "result": "ok" or the errno's name, ...}).
AGENT = (
    OPS_PRELUDE
    + MSGHDR_STRUCTS
    + r'''
import array, ctypes, errno, json, os, socket, struct, sys, threading, time

libc = ctypes.CDLL(None, use_errno=True)
MSG_DONTWAIT = socket.MSG_DONTWAIT


libc.sendto.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                        ctypes.c_void_p, ctypes.c_uint32]
libc.sendmsg.argtypes = [ctypes.c_int, ctypes.POINTER(msghdr), ctypes.c_int]
libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]


def outcome(rc):
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def sockaddr(path):
    """A whole struct sockaddr_un (110 bytes): one length for every path."""
    return struct.pack("<H", socket.AF_UNIX) + path.encode().ljust(108, b"\0")


def tally(results):
    counts = {}
    for result in results:
        counts[result] = counts.get(result, 0) + 1
    return counts


def flipping(buf, states):
    """A thread writing each of `states` (bytes) into `buf` in turn, until stopped."""
    running = [True]

    def flip():
        while running[0]:
            for state in states:
                ctypes.memmove(buf, state, len(state))

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()

    def stop():
        running[0] = False
        thread.join()

    return stop


def sendto_race(allowed, denied, tries):
    """sendto() to `allowed` while a thread rewrites the address to `denied`."""
    good, bad = sockaddr(allowed), sockaddr(denied)
    buf = ctypes.create_string_buffer(good, len(good))
    payload = b"sendto-race"
    results = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        stop = flipping(buf, (bad, good))
        try:
            for _ in range(int(tries)):
                rc = libc.sendto(sock.fileno(), payload, len(payload), 0,
                                 ctypes.addressof(buf), len(good))
                results.append(outcome(rc))
        finally:
            stop()
    return {"results": tally(results)}


def sendmsg_race(allowed, denied, tries, null):
    """sendmsg() with msg_name `allowed` (or NULL, on a socket connected to
    it) while a thread rewrites it to `denied`."""
    good, bad = sockaddr(allowed), sockaddr(denied)
    target = ctypes.create_string_buffer(bad, len(bad))
    payload = ctypes.create_string_buffer(b"sendmsg-race")
    io = iovec(ctypes.cast(payload, ctypes.c_void_p), len(payload.raw) - 1)
    header = msghdr()
    header.iov = ctypes.pointer(io)
    header.iovlen = 1
    field = msghdr.name.offset
    length = msghdr.namelen.offset
    address = ctypes.addressof(header)
    if null == "null":
        # msg_name and msg_namelen flip together: NULL/0 and denied/110.
        states = (
            struct.pack("<QI", ctypes.addressof(target), len(bad)),
            struct.pack("<QI", 0, 0),
        )
    else:
        name = ctypes.create_string_buffer(good, len(good))
        header.name = ctypes.addressof(name)
        header.namelen = len(good)
        address = ctypes.addressof(name)
        field, length, states = 0, 0, (bad, good)
    window = (ctypes.c_char * (12 if null == "null" else len(good))).from_address(address + field)
    results = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if null == "null":
            sock.connect(allowed)
        stop = flipping(window, states)
        try:
            for _ in range(int(tries)):
                results.append(outcome(libc.sendmsg(sock.fileno(), ctypes.byref(header), 0)))
        finally:
            stop()
    return {"results": tally(results)}


def send_all(allowed):
    """sendto, sendmsg with a name, send and sendmsg on a connected socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sent = [sock.sendto(b"by-sendto", allowed)]
        sent.append(sock.sendmsg([b"by-", b"sendmsg"], [], 0, allowed))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(allowed)
        sent += [sock.send(b"by-send"), sock.sendmsg([b"by-connected-sendmsg"])]
    return {"sent": sent}


def denied_send(denied):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"never", denied)
    return {}


def mmsg(allowed, count):
    """sendmmsg of `count` messages to `allowed`, each named."""
    count = int(count)
    address = ctypes.create_string_buffer(sockaddr(allowed), 110)
    payloads = [ctypes.create_string_buffer(b"mmsg-%d" % i) for i in range(count)]
    ios = [iovec(ctypes.cast(p, ctypes.c_void_p), len(p.raw) - 1) for p in payloads]
    messages = (mmsghdr * count)()
    for i in range(count):
        messages[i].hdr.name = ctypes.addressof(address)
        messages[i].hdr.namelen = 110
        messages[i].hdr.iov = ctypes.pointer(ios[i])
        messages[i].hdr.iovlen = 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sent = libc.sendmmsg(sock.fileno(), messages, count, 0)
    return {"sent": sent, "errno": outcome(sent)}


def own_receiver(path):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    return receiver


def rights(path):
    """An fd passed with SCM_RIGHTS works on the other side: a pipe's write
    end, then a file opened for reading."""
    with own_receiver(path) as receiver, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        read_end, write_end = os.pipe()
        data = os.path.join(os.path.dirname(path), "passed.txt")
        with open(data, "w") as out:
            out.write("file-through-fd")
        readable = os.open(data, os.O_RDONLY)
        fds = array.array("i", [write_end, readable])
        sent = sock.sendmsg([b"fds"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, path)
        os.close(write_end)
        os.close(readable)
        message, ancillary, _flags, _addr = receiver.recvmsg(16, socket.CMSG_SPACE(8))
        got = array.array("i")
        for level, kind, body in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got.frombytes(body[: len(body) - len(body) % 4])
        os.write(got[0], b"pipe-through-fd")
        os.close(got[0])
        through_pipe = os.read(read_end, 64).decode()
        through_file = os.read(got[1], 64).decode()
        os.close(got[1])
        os.close(read_end)
    os.unlink(path)
    return {"sent": sent, "message": message.decode(), "passed": len(got),
            "pipe": through_pipe, "file": through_file}


def credentials(path):
    """SCM_CREDENTIALS is refused (the broker cannot claim the agent's pid)."""
    with own_receiver(path), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        ucred = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
        try:
            sock.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, ucred)], 0, path)
            result = "ok"
        except OSError as exc:
            result = failure(exc)
    os.unlink(path)
    return {"sent": result}


def full(path, blocking):
    """A receiver whose queue is full until a reader takes one datagram
    0.5 s later: a blocking send waits for it, a non-blocking one does not."""
    with own_receiver(path) as receiver, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        queued = 0
        while True:
            try:
                sock.sendto(b"fill", MSG_DONTWAIT, path)
            except BlockingIOError:
                break
            queued += 1
        sock.setblocking(blocking == "blocking")

        def reader():
            time.sleep(0.5)
            receiver.recv(16)

        thread = threading.Thread(target=reader)
        thread.start()
        started = time.monotonic()
        try:
            sock.sendto(b"last", path)
            result = "ok"
        except OSError as exc:
            result = failure(exc)
        waited = time.monotonic() - started
        thread.join()
    os.unlink(path)
    return {"queued": queued, "sent": result, "waited": waited}


def own_mmsg(path, count):
    """A blocking sendmmsg to an own receiver read by a thread meanwhile
    (its queue holds fewer): each message arrives, in order."""
    with own_receiver(path) as receiver:
        receiver.settimeout(5)
        received = []

        def reader():
            try:
                while len(received) < int(count):
                    received.append(receiver.recv(16).decode())
            except OSError:
                pass

        thread = threading.Thread(target=reader)
        thread.start()
        done = mmsg(path, count)
        thread.join()
        done["received"] = received
    os.unlink(path)
    return done


OPS = {
    "sendto_race": sendto_race, "sendmsg_race": sendmsg_race, "send_all": send_all,
    "denied_send": denied_send, "mmsg": mmsg, "rights": rights, "credentials": credentials,
    "full": full, "own_mmsg": own_mmsg,
}
'''
    + OPS_MAIN
)

# strict, and one socket of the workspace's (a name the agent's own receivers
# may take too): every other unix socket meets strict's local-socket.
ONE_SOCKET = """
name: one-dgram-socket
extends: [strict]
rules:
  - id: the-allowed-socket
    actions: [network_connect]
    target: "unix:{workspace}/allowed*.sock"
    decision: allow
    priority: 1
"""

RACES = 3000


@pytest.fixture
def servers(user_sandbox: Sandbox) -> Iterator[tuple[DatagramServer, DatagramServer]]:
    """The host's allowed.sock and denied.sock, in the workspace."""
    with (
        datagram_server(user_sandbox.workspace / "allowed.sock") as allowed,
        datagram_server(user_sandbox.workspace / "denied.sock") as denied,
    ):
        yield allowed, denied


def path(server: DatagramServer) -> str:
    assert isinstance(server.address, str)
    return server.address


def run_agent(
    sandbox: Sandbox, *ops: str, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    """The agent under ONE_SOCKET, which must end well."""
    policy = sandbox.policy("one-dgram-socket", ONE_SOCKET)
    result, reports = run_ops_agent(sandbox, AGENT, *ops, policy=policy, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, reports


def refused_targets(sandbox: Sandbox) -> set[object]:
    return {
        r.get("target")
        for r in sandbox.audit_records()
        if r.get("decision") == "deny" and r.get("action_type") == "network_connect"
    }


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.parametrize(
    "op",
    [
        "sendto_race={allowed},{denied},{tries}",
        "sendmsg_race={allowed},{denied},{tries},named",
        "sendmsg_race={allowed},{denied},{tries},null",
    ],
    ids=["sendto", "sendmsg-name", "sendmsg-null-name"],
)
def test_a_rewritten_address_never_reaches_the_denied_socket(
    user_sandbox: Sandbox, servers: tuple[DatagramServer, DatagramServer], op: str
) -> None:
    allowed, denied = servers
    spec = op.format(allowed=path(allowed), denied=path(denied), tries=RACES)
    _result, reports = run_agent(user_sandbox, spec, timeout=300)
    report = reports[spec.partition("=")[0]]
    assert report["result"] == "ok", report
    results = report["results"]
    assert isinstance(results, dict)
    assert sum(results.values()) == RACES
    # ENOENT: a name copied while the thread was halfway through rewriting it
    # (part of each), which names no socket: the kernel would say the same.
    assert set(results) <= {"ok", "EPERM", "ENOENT"}, results
    received = allowed.collected()
    leaked = denied.collected()
    assert leaked == [], f"{len(leaked)} of {RACES} reached the denied socket: {results}"
    # Every send said to have worked arrived where it was decided to go.
    assert len(received) == results.get("ok", 0) > 0, results


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_datagrams_to_an_allowed_socket_arrive(
    user_sandbox: Sandbox, servers: tuple[DatagramServer, DatagramServer]
) -> None:
    allowed, denied = servers
    _result, reports = run_agent(
        user_sandbox,
        f"send_all={path(allowed)}",
        f"denied_send={path(denied)}",
        f"mmsg={path(allowed)},3",
    )
    assert reports["send_all"] == {"op": "send_all", "result": "ok", "sent": [9, 10, 7, 20]}
    assert reports["denied_send"]["result"] == "EPERM"
    assert reports["mmsg"]["sent"] == 3, reports["mmsg"]
    assert allowed.collected() == [
        b"by-sendto",
        b"by-sendmsg",
        b"by-send",
        b"by-connected-sendmsg",
        b"mmsg-0",
        b"mmsg-1",
        b"mmsg-2",
    ]
    assert denied.collected() == []
    assert refused_targets(user_sandbox) == {f"unix:{path(denied)}"}


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_fds_pass_and_credentials_are_refused(user_sandbox: Sandbox) -> None:
    own = user_sandbox.workspace / "allowed-own.sock"
    _result, reports = run_agent(user_sandbox, f"rights={own}", f"credentials={own}")
    assert reports["rights"] == {
        "op": "rights",
        "result": "ok",
        "sent": 3,
        "message": "fds",
        "passed": 2,
        "pipe": "pipe-through-fd",
        "file": "file-through-fd",
    }
    assert reports["credentials"]["sent"] == "EPERM"


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_blocking_send_waits_for_room_in_a_full_receiver(user_sandbox: Sandbox) -> None:
    slow = user_sandbox.workspace / "allowed-slow.sock"
    result, _reports = run_agent(user_sandbox, f"full={slow},blocking", f"full={slow},nonblocking")
    blocking, nonblocking = (r for r in agent_reports(result.stdout) if r["op"] == "full")
    assert blocking["result"] == "ok" and blocking["sent"] == "ok", blocking
    assert isinstance(blocking["queued"], int) and blocking["queued"] > 0
    assert isinstance(blocking["waited"], float) and blocking["waited"] >= 0.3, blocking
    assert nonblocking["sent"] == "EAGAIN", nonblocking
    assert isinstance(nonblocking["waited"], float) and nonblocking["waited"] < 0.3, nonblocking


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.parametrize("count", [3, 200])
def test_sendmmsg_sends_each_message(user_sandbox: Sandbox, count: int) -> None:
    """200 are more than a receiver's queue holds (net.unix.max_dgram_qlen):
    the blocking call waits for the reader, as the kernel's would."""
    own = user_sandbox.workspace / "allowed-mmsg.sock"
    _result, reports = run_agent(user_sandbox, f"own_mmsg={own},{count}")
    report = reports["own_mmsg"]
    assert report["result"] == "ok", report
    assert report["sent"] == count, report
    assert report["received"] == [f"mmsg-{i}" for i in range(count)]


# -- the pure parts: control data, the broker's sends, the send timeout ------------


def cmsg(level: int, kind: int, body: bytes) -> bytes:
    """One control message as glibc lays it out: header, data, padding to 8."""
    data = struct.pack("<QiI", 16 + len(body), level, kind) + body
    return data + b"\0" * (-len(data) % 8)


def ints(*fds: int) -> bytes:
    return struct.pack(f"<{len(fds)}i", *fds)


def ucred(pid: int, uid: int, gid: int) -> bytes:
    return struct.pack("<iII", pid, uid, gid)


_SOL, _RIGHTS, _CREDS = socket.SOL_SOCKET, socket.SCM_RIGHTS, 2


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", _mediator.UnixControl()),
        (b"\0" * 15, _mediator.UnixControl()),  # shorter than a header: none
        (cmsg(_SOL, _RIGHTS, ints(3, 4)), _mediator.UnixControl(fds=(3, 4))),
        (cmsg(_SOL, _RIGHTS, b""), _mediator.UnixControl()),
        # One fd (20 bytes) is padded to 24: the next starts there.
        (
            cmsg(_SOL, _RIGHTS, ints(3)) + cmsg(_SOL, _RIGHTS, ints(5, 6)),
            _mediator.UnixControl(fds=(3, 5, 6)),
        ),
        (
            cmsg(_SOL, _CREDS, ucred(7, 8, 9)) + cmsg(_SOL, _RIGHTS, ints(3)) + b"\0" * 8,
            _mediator.UnixControl(fds=(3,), credentials=(7, 8, 9)),
        ),
    ],
    ids=["empty", "short-tail", "rights", "no-fds", "two-rights", "credentials"],
)
def test_control_data_is_read_as_the_kernel_reads_it(
    data: bytes, expected: _mediator.UnixControl
) -> None:
    assert _mediator.unix_control(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("<QiI", 15, _SOL, _RIGHTS) + b"\0" * 8,  # shorter than its header
        struct.pack("<QiI", 40, _SOL, _RIGHTS) + ints(3),  # past the end
        cmsg(_SOL, 77, ints(0)),  # no such SOL_SOCKET type
        cmsg(_SOL, 0x04, ints(0)),  # SCM_PIDFD: only ever received
        cmsg(_SOL, _CREDS, ucred(1, 2, 3) + b"\0" * 4),  # not a struct ucred
        cmsg(_SOL, _RIGHTS, ints(*[0] * 200)) + cmsg(_SOL, _RIGHTS, ints(*[0] * 54)),
        cmsg(socket.IPPROTO_IP, 1, ints(0)),  # ignored by the kernel, refused here
    ],
    ids=["short", "past-end", "unknown", "pidfd", "ucred-size", "too-many-fds", "ip-level"],
)
def test_control_data_the_kernel_refuses_is_refused(data: bytes) -> None:
    with pytest.raises(OSError) as failed:
        _mediator.unix_control(data)
    assert failed.value.errno == errno.EINVAL


def _kernel_sendmsg(control: bytes) -> int:
    """0 if the kernel takes `control` on a unix datagram, else its errno."""

    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class Msghdr(ctypes.Structure):
        _fields_ = [
            ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
            ("iov", ctypes.POINTER(Iovec)), ("iovlen", ctypes.c_size_t),
            ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
            ("flags", ctypes.c_int),
        ]  # fmt: skip

    libc = ctypes.CDLL(None, use_errno=True)
    payload = ctypes.create_string_buffer(b"x")
    buffer = ctypes.create_string_buffer(control, max(len(control), 1))
    io = Iovec(ctypes.cast(payload, ctypes.c_void_p), 1)
    header = Msghdr(None, 0, ctypes.pointer(io), 1, ctypes.addressof(buffer), len(control), 0)
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, peer:
        rc = libc.sendmsg(ours.fileno(), ctypes.byref(header), socket.MSG_DONTWAIT)
        if rc < 0:
            return ctypes.get_errno()
        # Whatever came along is closed with the receiver.
        peer.recvmsg(1, socket.CMSG_SPACE(4 * 253))
    return 0


def test_the_kernel_agrees_on_what_it_refuses() -> None:
    """The parser's EINVAL cases are the kernel's too (the IP level aside,
    which the kernel ignores and the supervisor refuses), and what it reads
    the kernel takes."""
    sink = os.open(os.devnull, os.O_RDONLY)
    try:
        taken = [
            cmsg(_SOL, _RIGHTS, ints(sink, sink)),
            cmsg(_SOL, _RIGHTS, ints(sink)) + cmsg(_SOL, _RIGHTS, ints(sink)),
            cmsg(_SOL, _CREDS, ucred(os.getpid(), os.getuid(), os.getgid())),
        ]
        refused = [
            struct.pack("<QiI", 15, _SOL, _RIGHTS) + b"\0" * 8,
            struct.pack("<QiI", 40, _SOL, _RIGHTS) + ints(sink),
            cmsg(_SOL, 77, ints(0)),
            cmsg(_SOL, _CREDS, ucred(os.getpid(), os.getuid(), os.getgid()) + b"\0" * 4),
            cmsg(_SOL, _RIGHTS, ints(*[sink] * 200)) + cmsg(_SOL, _RIGHTS, ints(*[sink] * 54)),
        ]
        for control in taken:
            _mediator.unix_control(control)
            assert _kernel_sendmsg(control) == 0
        for control in refused:
            with pytest.raises(OSError):
                _mediator.unix_control(control)
            assert _kernel_sendmsg(control) == errno.EINVAL
    finally:
        os.close(sink)


@pytest.fixture
def datagram_broker() -> Iterator[_broker.Broker]:
    """A broker object with no supervisor: only its sending is used."""
    channel, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with channel, other:
        serving = _broker.Broker(channel, -1)
        yield serving
        for fd in serving.pinned.values():
            os.close(fd)


def _receiver(path: Path | bytes) -> socket.socket:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path) if isinstance(path, Path) else path)
    receiver.setblocking(False)
    return receiver


def test_the_broker_sends_to_the_pinned_socket_an_abstract_name_and_the_peer(
    datagram_broker: _broker.Broker, tmp_path: Path
) -> None:
    named = _receiver(tmp_path / "named.sock")
    abstract_name = b"\0agentsup-datagram-test-%d" % os.getpid()
    abstract = _receiver(abstract_name)
    pinned = os.open(tmp_path / "named.sock", os.O_PATH | os.O_CLOEXEC)
    datagram_broker.pinned[pinned] = pinned
    os.rename(tmp_path / "named.sock", tmp_path / "moved.sock")  # the pinned file is what counts
    read_end, write_end = os.pipe()
    with named, abstract, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        peer = _receiver(tmp_path / "peer.sock")
        sock.connect(str(tmp_path / "peer.sock"))
        messages: list[_broker.UnixDatagram] = [
            (b"to-pinned", pinned, 1),
            (b"to-abstract", abstract_name, 0),
            (b"to-peer", None, 0),
        ]
        counts, err = datagram_broker._datagrams(sock.fileno(), messages, 0, [write_end])
        os.close(write_end)
        assert (counts, err) == ([9, 11, 7], 0)
        message, ancillary, _flags, _address = named.recvmsg(16, socket.CMSG_SPACE(4))
        assert message == b"to-pinned"
        (passed,) = array.array("i", ancillary[0][2])
        os.write(passed, b"through")
        os.close(passed)
        assert os.read(read_end, 16) == b"through"
        assert abstract.recv(16) == b"to-abstract"
        assert peer.recv(16) == b"to-peer"
        peer.close()
    os.close(read_end)


def test_the_broker_never_waits_for_a_full_receiver(
    datagram_broker: _broker.Broker, tmp_path: Path
) -> None:
    """A full queue is EAGAIN at once, with what was sent before it: the
    supervisor sends the rest again later, for a socket that blocks."""
    with (
        _receiver(tmp_path / "full.sock") as receiver,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        pinned = os.open(tmp_path / "full.sock", os.O_PATH | os.O_CLOEXEC)
        datagram_broker.pinned[pinned] = pinned
        messages: list[_broker.UnixDatagram] = [(b"fill", pinned, 0)] * 4096
        counts, err = datagram_broker._datagrams(sock.fileno(), messages, 0, [])
        assert err == errno.EAGAIN and 0 < len(counts) < 4096
        receiver.recv(16)
        assert datagram_broker._datagrams(sock.fileno(), messages[:1], 0, []) == ([4], 0)


def test_the_broker_refuses_a_handle_it_does_not_hold(datagram_broker: _broker.Broker) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        assert datagram_broker._datagrams(sock.fileno(), [(b"x", 12345, 0)], 0, []) == (
            [],
            errno.EBADF,
        )


@pytest.mark.parametrize(
    "messages",
    [
        [(b"x", None)],
        [(b"x", None, -1)],
        [("x", None, 0)],
        [(b"x", 1.5, 0)],
        "not a tuple",
    ],
)
def test_a_malformed_unix_send_is_not_taken(messages: object) -> None:
    request = tuple(messages) if isinstance(messages, list) else messages
    assert _broker._unix_datagrams(request) is None


def test_a_blocking_send_waits_as_long_as_its_send_timeout() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        assert _mediator._send_timeout(sock.fileno()) == _mediator.SEND_TIMEOUT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", 2, 500000))
        assert _mediator._send_timeout(sock.fileno()) == 2.5
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("@ll", 10**6, 0))
        assert _mediator._send_timeout(sock.fileno()) == _mediator.SEND_TIMEOUT
