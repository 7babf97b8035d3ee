"""Netlink under agentsup is what the kernel makes of it.

A netlink socket is judged by its protocol (`network_connect`
`netlink:route`), at its creation and at its bind, connect and sends: its
sockaddr names a port id, never what is reached.  In a network namespace of
its own (strict) no rule is asked: the agent sees only its loopback, as
`ip addr` and `socket.if_nameindex()` show.  Sharing the host's network, the
socket needs a rule allowing `netlink:route`, and with one its bind,
connect and sends go on (done by the broker, on the very socket judged).
"""

from __future__ import annotations

import subprocess

import pytest
from agent_ops import MSGHDR_STRUCTS, OPS_MAIN, OPS_PRELUDE
from conftest import SHARED_NETWORK, Sandbox, run_ops_agent

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

AGENT = (
    OPS_PRELUDE
    + MSGHDR_STRUCTS
    + r'''
import os, socket, struct

RTM_GETLINK, RTM_NEWLINK, NLMSG_DONE, NLMSG_ERROR = 18, 16, 3, 2
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
libc = ctypes.CDLL(None, use_errno=True)


def ifnames():
    return {"names": sorted(name for _index, name in socket.if_nameindex())}


def request(seq):
    # nlmsghdr + struct ifinfomsg (16 bytes, all zero: every family)
    return struct.pack("<IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + bytes(16)


def links(sock):
    """The RTM_NEWLINK messages of one dump, until NLMSG_DONE."""
    count = 0
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("<IH", data, offset)
            if kind == NLMSG_DONE:
                return count
            if kind == NLMSG_ERROR:
                raise OSError(-struct.unpack_from("<i", data, offset + 16)[0], "netlink error")
            count += kind == RTM_NEWLINK
            offset += (length + 3) & ~3


def sendmsg_raw(sock, payload):
    """sendmsg(2) with msg_name a struct sockaddr_nl {AF_NETLINK, 0, 0, 0}."""
    name = ctypes.create_string_buffer(struct.pack("<HHII", socket.AF_NETLINK, 0, 0, 0), 12)
    data = ctypes.create_string_buffer(payload, len(payload))
    vec = iovec(ctypes.cast(data, ctypes.c_void_p), len(payload))
    header = msghdr(ctypes.cast(name, ctypes.c_void_p), 12, ctypes.pointer(vec), 1, None, 0, 0)
    libc.sendmsg.argtypes = [ctypes.c_int, ctypes.POINTER(msghdr), ctypes.c_int]
    if libc.sendmsg(sock.fileno(), ctypes.byref(header), 0) < 0:
        raise OSError(ctypes.get_errno(), "sendmsg")


def dump(how):
    """A route dump of the links: bound, then sent by sendto, sendmsg or after connect."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        port = sock.getsockname()[0]
        if how == "sendto":
            sock.sendto(request(1), (0, 0))
        elif how == "sendmsg":
            sendmsg_raw(sock, request(1))
        else:
            sock.connect((0, 0))
            sock.send(request(1))
        return {"links": links(sock), "port": port != 0}


def bad_bind():
    """A bind whose sockaddr is too short: the kernel's EINVAL."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        address = ctypes.create_string_buffer(struct.pack("<HH", socket.AF_NETLINK, 0), 4)
        libc.bind.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        if libc.bind(sock.fileno(), address, 4) < 0:
            raise OSError(ctypes.get_errno(), "bind")
    return {}


OPS = {"ifnames": ifnames, "dump": dump, "bad_bind": bad_bind}
'''
    + OPS_MAIN
)

ROUTE_ALLOWED = (
    SHARED_NETWORK.replace("strict-shared-network", "shared-netlink")
    + """
  - id: netlink-route
    actions: [network_connect]
    target: "netlink:route"
    decision: allow
    priority: 1
"""
)

OPS = ("ifnames", "dump=sendto", "dump=sendmsg", "dump=connect", "bad_bind")


def run_agent(
    sandbox: Sandbox, *ops: str, policy: str = "strict"
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    return run_ops_agent(sandbox, AGENT, *ops, policy=policy)


def network_denials(sandbox: Sandbox) -> list[tuple[object, object, object]]:
    return [
        (r.get("rule"), r.get("target"), r.get("syscall"))
        for r in sandbox.audit_records()
        if r.get("decision") == "deny" and r.get("action_type") == "network_connect"
    ]


def namespaces(sandbox: Sandbox) -> object:
    start = next(r for r in sandbox.audit_records() if r.get("event") == "start")
    return start["layers"]["namespaces"]  # type: ignore[index]


def test_netlink_works_in_its_own_network_namespace(user_sandbox: Sandbox) -> None:
    """strict: interfaces and a route dump, bound, sent three ways, no rule asked."""
    result, reports = run_agent(user_sandbox, *OPS)
    assert result.returncode == 0, result.stderr
    assert "net" in namespaces(user_sandbox)  # type: ignore[operator]
    assert reports["ifnames"] == {"op": "ifnames", "result": "ok", "names": ["lo"]}
    assert reports["dump"]["result"] == "ok", reports
    # The three dumps print one report each under the same op name: the last.
    assert reports["dump"]["links"] == 1 and reports["dump"]["port"] is True
    assert reports["bad_bind"]["result"] == "EINVAL"
    assert network_denials(user_sandbox) == []


def test_each_way_of_sending_a_dump_works(user_sandbox: Sandbox) -> None:
    for how in ("sendto", "sendmsg", "connect"):
        result, reports = run_agent(user_sandbox, f"dump={how}")
        assert result.returncode == 0, result.stderr
        assert reports["dump"] == {"op": "dump", "result": "ok", "links": 1, "port": True}, how


def test_ip_addr_works_in_its_own_network_namespace(user_sandbox: Sandbox) -> None:
    result = subprocess.run(
        user_sandbox.command("ip", "addr"),
        env=user_sandbox.env,
        cwd=user_sandbox.workspace,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode == 127 or "No such file" in result.stderr:
        pytest.skip("no ip(8) here")
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1" in result.stdout
    assert network_denials(user_sandbox) == []


def test_on_the_hosts_network_netlink_needs_a_rule(user_sandbox: Sandbox) -> None:
    policy = user_sandbox.policy("shared", SHARED_NETWORK)
    result, reports = run_agent(user_sandbox, "ifnames", "dump=sendto", policy=policy)
    assert result.returncode == 0, result.stderr
    assert "net" not in namespaces(user_sandbox)  # type: ignore[operator]
    assert reports["ifnames"]["result"] == "EPERM", reports
    assert reports["dump"]["result"] == "EPERM", reports
    denials = network_denials(user_sandbox)
    assert denials and all(target == "netlink:route" for _rule, target, _call in denials)


def test_on_the_hosts_network_a_netlink_route_rule_covers_bind_connect_and_send(
    user_sandbox: Sandbox,
) -> None:
    policy = user_sandbox.policy("shared-netlink", ROUTE_ALLOWED)
    result, reports = run_agent(user_sandbox, *OPS, policy=policy)
    assert result.returncode == 0, result.stderr
    assert reports["ifnames"]["result"] == "ok", reports
    assert "lo" in reports["ifnames"]["names"]  # type: ignore[operator]
    assert reports["dump"]["result"] == "ok", reports
    assert int(reports["dump"]["links"]) >= 1  # type: ignore[call-overload]
    assert reports["bad_bind"]["result"] == "EINVAL"
    assert network_denials(user_sandbox) == []
    allowed = {
        (r.get("target"), r.get("syscall"))
        for r in user_sandbox.audit_records()
        if r.get("action_type") == "network_connect" and r.get("decision") == "allow"
    }
    # One target for the socket and what is done with it (as far as recorded).
    assert {target for target, _call in allowed} <= {"netlink:route"}
