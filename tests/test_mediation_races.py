"""A racing thread cannot send a datagram or a unix connect anywhere but where it was decided.

Both races were seen from an agent under `strict`: a `sendmsg` whose
`msg_name` was NULL when checked and set before the kernel read it again
sent UDP out, and a thread flipping a unix socket path reached a control
socket.  The supervisor now sends IP datagrams itself (through the broker)
with the copy it judged, and connects unix sockets to the socket file it
pinned.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AGENTS, Sandbox, agent_reports

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

ATTACK = "attack.py"

ONE_PORT = """
name: one-port
extends: [strict]
rules:
  - id: local-api
    actions: [network_connect]
    target: "127.0.0.1:{port}"
    decision: allow
    priority: 1
  - id: everything-else
    actions: [network_connect]
    target: "**"
    decision: deny
    priority: 2
    on_violation: block
"""

ONE_SOCKET = """
name: one-socket
extends: [strict]
rules:
  - id: the-allowed-socket
    actions: [network_connect]
    target: "unix:{workspace}/allowed.sock"
    decision: allow
    priority: 1
  - id: other-sockets
    actions: [network_connect]
    target: "unix:**"
    decision: deny
    priority: 2
    on_violation: block
"""


@pytest.fixture
def attacker(sandbox: Sandbox) -> Sandbox:
    shutil.copy(AGENTS / ATTACK, sandbox.workspace / ATTACK)
    return sandbox


def _drain(receiver: socket.socket) -> int:
    count = 0
    while True:
        try:
            receiver.recv(64)
        except BlockingIOError:
            return count
        count += 1


def test_a_name_set_after_the_check_never_takes_a_datagram_out(attacker: Sandbox) -> None:
    receivers = []
    for _ in range(2):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 2**20)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        receivers.append(receiver)
    allowed, denied = receivers
    policy = attacker.policy("one", ONE_PORT.replace("{port}", str(allowed.getsockname()[1])))
    result = attacker.run(
        "python3", ATTACK, "sendmsg_null_race", str(denied.getsockname()[1]), "3000",
        policy=policy, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (report,) = agent_reports(result.stdout)
    leaked = _drain(denied)
    allowed.close()
    denied.close()
    assert leaked == 0, report


@pytest.fixture
def unix_listeners(attacker: Sandbox) -> Iterator[dict[str, list[int]]]:
    """allowed.sock and denied.sock in the workspace, accepting (and counting) for ever."""
    accepted: dict[str, list[int]] = {"allowed": [], "denied": []}
    servers = []
    stop = threading.Event()
    for name in accepted:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(attacker.workspace / f"{name}.sock"))
        server.listen(128)
        server.settimeout(0.2)
        servers.append(server)

        def serve(server: socket.socket = server, name: str = name) -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except (TimeoutError, OSError):
                    continue
                accepted[name].append(1)
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
    yield accepted
    stop.set()
    for server in servers:
        server.close()


def test_a_unix_connect_goes_to_the_socket_file_that_was_decided(
    attacker: Sandbox, unix_listeners: dict[str, list[int]]
) -> None:
    workspace = Path(attacker.workspace)
    result = attacker.run(
        "python3", ATTACK, "unix_connect_race",
        str(workspace / "allowed.sock"), str(workspace / "denied.sock"), "2000",
        policy=attacker.policy("one-socket", ONE_SOCKET), timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (report,) = agent_reports(result.stdout)
    assert report["data"]["connected"] > 0
    assert len(unix_listeners["allowed"]) > 0
    assert unix_listeners["denied"] == [], report
