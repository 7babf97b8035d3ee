"""Inbound sockets and the socket families that reach past IP.

`listen()` on a socket never bound binds it to the wildcard address itself:
it is judged as a bind to 0.0.0.0:0.  Packet, raw and netlink sockets see
the host's network when the agent has no network namespace of its own (a
policy that connects straight to IP addresses): creating one is judged as a
`network_connect` to `packet:0xPROTO`, `raw:FAMILY:PROTO` or
`netlink:PROTOCOL`.  Inside its own network namespace they only see its
loopback, and are left to the kernel.
"""

from __future__ import annotations

import shutil
import socket

import pytest
from conftest import AGENTS, Sandbox, agent_reports

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

ATTACK = "attack.py"

# Connects go straight to IP addresses: no network namespace for this agent.
DIRECT = """
name: direct
extends: [strict]
rules:
  - id: loopback
    actions: [network_connect]
    target: "127.0.0.1:*"
    decision: allow
    priority: 5
  - id: route-netlink
    actions: [network_connect]
    target: "netlink:route"
    decision: allow
    priority: 5
  - id: no-raw-sockets
    actions: [network_connect]
    pattern: '^(?:packet|raw):'
    decision: deny
    on_violation: block
    priority: 5
"""

AF_NETLINK, AF_PACKET, SOCK_RAW = 16, 17, 3
NETLINK_GENERIC = 16
ETH_P_ALL = socket.htons(3)


@pytest.fixture
def attacker(sandbox: Sandbox) -> Sandbox:
    shutil.copy(AGENTS / ATTACK, sandbox.workspace / ATTACK)
    return sandbox


def _namespaces(sandbox: Sandbox) -> list[str]:
    start = [r for r in sandbox.audit_records() if r.get("event") == "start"][-1]
    layers = start["layers"]
    assert isinstance(layers, dict)
    return list(layers["namespaces"])


def test_listen_on_an_unbound_socket_is_a_bind_to_the_wildcard(attacker: Sandbox) -> None:
    policy = attacker.policy("direct", DIRECT)
    result = attacker.run(
        "python3", ATTACK, "listen_unbound", "then", "listen_bound", "127.0.0.1", policy=policy
    )
    assert "net" not in _namespaces(attacker)
    reports = {str(r["op"]): r for r in agent_reports(result.stdout)}
    # strict's loopback-probe rule refuses a bind to 0.0.0.0:0 quietly.
    assert reports["listen_unbound"]["result"] == "EPERM", (reports, result.stderr)
    bound = reports["listen_bound"]
    assert bound["result"] == "ok", bound
    assert isinstance(bound["data"], list) and bound["data"][0] == "127.0.0.1"
    (record,) = [r for r in attacker.audit_records() if r.get("syscall") == "listen"]
    assert (record["target"], record["action_type"]) == ("0.0.0.0:0", "network_connect")


def test_without_a_network_namespace_raw_sockets_need_a_rule(attacker: Sandbox) -> None:
    policy = attacker.policy("direct", DIRECT)
    calls = {
        f"socket:{AF_NETLINK}:{SOCK_RAW}": [str(AF_NETLINK), str(SOCK_RAW), "0"],
        f"socket:{AF_PACKET}:{SOCK_RAW}": [str(AF_PACKET), str(SOCK_RAW), str(ETH_P_ALL)],
        f"socket:{socket.AF_INET}:{SOCK_RAW}": [str(int(socket.AF_INET)), str(SOCK_RAW), "1"],
    }
    generic = ["then", "socket", str(AF_NETLINK), str(SOCK_RAW), str(NETLINK_GENERIC)]
    chained: list[str] = []
    for args in calls.values():
        chained += [*(["then"] if chained else []), "socket", *args]
    result = attacker.run("python3", ATTACK, *chained, *generic, policy=policy)
    assert "net" not in _namespaces(attacker)
    reports = [r["result"] for r in agent_reports(result.stdout)]
    # netlink route: a rule allows it.  Packet, raw: refused by a rule.  Other
    # netlink protocols: strict's netlink-socket rule.
    assert reports == ["ok", "EPERM", "EPERM", "EPERM"], (reports, result.stderr)
    decided = {
        r["target"]: r["rule"] for r in attacker.audit_records() if r.get("syscall") == "socket"
    }
    assert decided == {
        "packet:0x0003": "no-raw-sockets",
        "raw:inet:1": "no-raw-sockets",
        "netlink:generic": "netlink-socket",
    }, decided


def test_in_its_own_network_namespace_the_kernel_decides(attacker: Sandbox) -> None:
    args = [str(AF_NETLINK), str(SOCK_RAW), "0", "then", "socket", str(AF_PACKET)]
    result = attacker.run("python3", ATTACK, "socket", *args, str(SOCK_RAW), str(ETH_P_ALL))
    assert "net" in _namespaces(attacker)
    reports = [r["result"] for r in agent_reports(result.stdout)]
    # Its own loopback's netlink is harmless; a packet socket needs CAP_NET_RAW.
    assert reports == ["ok", "EPERM"], (reports, result.stderr)
    assert not [r for r in attacker.audit_records() if r.get("syscall") == "socket"]


def test_datagrams_larger_than_a_broker_packet_go_out_whole(attacker: Sandbox) -> None:
    """A copied 60 KB payload once ended the broker (and with it the agent)."""
    policy = attacker.policy("direct", DIRECT)
    result = attacker.run("python3", ATTACK, "big_datagrams", policy=policy)
    (report,) = agent_reports(result.stdout)
    assert report["data"] == [100, 20000, 60000, 60000], (report, result.stderr)
    assert result.returncode == 0, result.stderr
