"""sendmmsg on a unix socket: every message the kernel would take is judged first.

The kernel takes up to UIO_MAXIOV (1024) messages of one call.  Judging only
the first 64 once let a 65th message, addressed to a host socket, through
with no record.  (The broker now sends unix datagrams itself too: a name
refused anywhere in the call refuses all of it.)
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from agent_ops import MSGHDR_STRUCTS
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

AGENT = (
    MSGHDR_STRUCTS
    + r"""
import ctypes, os, socket, struct, sys

target = sys.argv[1].encode()
count = int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

payload = ctypes.create_string_buffer(b"injected")
io = iovec(ctypes.cast(payload, ctypes.c_void_p), 8)
address = ctypes.create_string_buffer(struct.pack("<H", socket.AF_UNIX) + target + b"\0")
messages = (mmsghdr * count)()
for i in range(count):
    messages[i].hdr.iov = ctypes.pointer(io)
    messages[i].hdr.iovlen = 1
last = messages[count - 1].hdr
last.name = ctypes.cast(address, ctypes.c_void_p)
last.namelen = len(address.raw)
sent = libc.sendmmsg(ours.fileno(), messages, count, 0)
print("sent", sent, "errno", ctypes.get_errno())
"""
)


@pytest.mark.parametrize("count", [2, 65, 1024])
def test_no_message_of_a_sendmmsg_reaches_a_host_socket(sandbox: Sandbox, count: int) -> None:
    """The host's datagram socket (in a home the private /tmp binds back in,
    so in the agent's view) is named only by the last message."""
    host = sandbox.home / "host-dgram.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(host))
    server.setblocking(False)
    agent = sandbox.workspace / "mmsg.py"
    agent.write_text(AGENT)
    try:
        result = sandbox.run("python3", str(agent), str(host), str(count))
        try:
            received: bytes | None = server.recv(64)
        except BlockingIOError:
            received = None
    finally:
        server.close()
        Path(host).unlink()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[:2] == ["sent", "-1"], result.stdout
    assert received is None
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "local-socket"]
    assert refused and refused[0]["target"] == f"unix:{host}"
