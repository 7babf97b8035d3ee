"""An agent's own unix sockets work under `strict`; the host's stay out of reach.

Ordinary tools talk between their own processes over a unix socket:
multiprocessing.Manager and Listener/Client, a dev server on a socket in the
workspace, abstract sockets.  strict allows the sockets only the agent can
have made (the own-sockets-* rules):

- a path in its workspace;
- a path in its private /tmp or /var/tmp, a tmpfs of its own, when its mount
  namespace is sure (`{private_tmp}`);
- an abstract name, when no abstract socket of the host's is within reach:
  the agent has a network namespace of its own (they live in one), or
  Landlock scopes abstract sockets to its own domain, ABI 6
  (`{private_abstract}`).

Every other unix socket is the host's, and local-socket refuses it quietly
(EPERM, no signal): one a host process serves where the agent can see it, a
symlink to one, one in a home the private /tmp binds back in.  Here the test
process plays the host: it serves sockets outside the agent, and checks
afterwards that none of them was reached.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_ops import OPS_MAIN, OPS_PRELUDE
from conftest import SHARED_NETWORK, Sandbox, run_ops_agent
from host_sockets import StreamServer, stream_server

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

# The agent: each argument is one operation, and each operation prints one
# JSON line ({"op": ..., "result": "ok" or the errno's name, ...}).  An
# address starting with "@" is an abstract name.
AGENT = (
    OPS_PRELUDE
    + r'''
import ctypes, errno, json, os, socket, struct, sys, threading, time
from multiprocessing.connection import Client, Listener


def address(text):
    return "\0" + text[1:] if text.startswith("@") else text


def manager():
    import multiprocessing

    with multiprocessing.Manager() as shared:
        table = shared.dict()
        table["answer"] = 42
        return {"value": dict(table)}


def pair(text):
    with Listener(address(text), "AF_UNIX") as listener:
        served = []

        def serve():
            with listener.accept() as conn:
                served.append(conn.recv())
                conn.send("pong")

        thread = threading.Thread(target=serve)
        thread.start()
        with Client(listener.address, "AF_UNIX") as client:
            client.send("ping")
            reply = client.recv()
        thread.join()
        bound = listener.address
    if isinstance(bound, bytes):
        bound = "@" + bound[1:].decode()
    return {"bound": bound, "served": served, "reply": reply}


def connect(text):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(address(text))
    return {}


def crowd(text, count):
    """`count` blocking connects at once to a listener with a backlog of 1."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(address(text))
    server.listen(1)
    answers = []

    def client():
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(address(text))
                answers.append("ok")
            except OSError as exc:
                answers.append(failure(exc))

    threads = [threading.Thread(target=client) for _ in range(int(count))]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # every client has tried by now: the backlog is full
    server.settimeout(10)
    accepted = 0
    while accepted < int(count):
        try:
            server.accept()[0].close()
        except OSError:
            break
        accepted += 1
    for thread in threads:
        thread.join()
    return {"answers": sorted(answers), "accepted": accepted}


def sockaddr(text, size):
    return struct.pack("<H", socket.AF_UNIX) + address(text).encode().ljust(size, b"\0")


def flipped(call, own, other, tries, after=lambda: None):
    """How often `call(fd, address, length)` succeeded with the address `own`,
    while a thread kept rewriting it to `other` and back."""
    size = max(len(own), len(other)) + 1
    good, bad = sockaddr(own, size), sockaddr(other, size)
    buf = ctypes.create_string_buffer(good, len(good))
    call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    running = [True]

    def flip():
        while running[0]:
            ctypes.memmove(buf, bad, len(bad))
            ctypes.memmove(buf, good, len(good))

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    succeeded = 0
    try:
        for _ in range(int(tries)):
            with socket.socket(socket.AF_UNIX) as sock:
                if call(sock.fileno(), ctypes.addressof(buf), len(good)) == 0:
                    succeeded += 1
            after()
    finally:
        running[0] = False
        flipper.join()
    return succeeded


def race(own, host, tries):
    """connect() to our own abstract listener while a thread keeps rewriting
    the address to a host socket's path, and back."""
    listener = socket.socket(socket.AF_UNIX)
    # The abstract name is every byte of the length given, padding included.
    listener.bind(sockaddr(own, max(len(own), len(host)) + 1)[2:])
    listener.listen(128)

    def accept():
        while True:
            listener.accept()[0].close()

    threading.Thread(target=accept, daemon=True).start()
    libc = ctypes.CDLL(None, use_errno=True)
    return {"connected": flipped(libc.connect, own, host, tries)}


def bind_race(own, other, tries):
    """bind() to `own` while a thread keeps rewriting the address to `other`."""

    def unlink_own():
        try:
            os.unlink(own)
        except OSError:
            pass

    libc = ctypes.CDLL(None, use_errno=True)
    return {"bound": flipped(libc.bind, own, other, tries, after=unlink_own)}


OPS = {
    "manager": manager, "pair": pair, "connect": connect, "crowd": crowd, "race": race,
    "bind_race": bind_race,
}
'''
    + OPS_MAIN
)


def run_agent(
    sandbox: Sandbox, *ops: str, policy: str = "strict", extra: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    return run_ops_agent(sandbox, AGENT, *ops, policy=policy, extra=extra)


def start_record(sandbox: Sandbox) -> dict[str, object]:
    return next(r for r in sandbox.audit_records() if r.get("event") == "start")


def socket_denials(sandbox: Sandbox) -> list[tuple[object, object]]:
    """(rule, target) of every refused network_connect."""
    return [
        (r.get("rule"), r.get("target"))
        for r in sandbox.audit_records()
        if r.get("decision") == "deny" and r.get("action_type") == "network_connect"
    ]


def assert_host_socket_refused(
    sandbox: Sandbox, reports: dict[str, dict[str, object]], server: StreamServer
) -> None:
    """The agent's connect to the host's `server` was refused by local-socket
    (recorded under the socket's real path), and never reached it."""
    assert reports["connect"]["result"] == "EPERM"
    assert socket_denials(sandbox) == [("local-socket", f"unix:{server.address}")]
    assert server.reached == 0


@pytest.fixture
def host_dir(user_sandbox: Sandbox) -> Path:
    """A directory of the host's which the agent sees as it is: not under /tmp
    or /run (a tmpfs of its own there, where only what the launch keeps is
    bound back), but in its home, which the launch keeps."""
    where = user_sandbox.home / "host"
    where.mkdir()
    return where


@pytest.fixture
def host_socket(host_dir: Path) -> Iterator[StreamServer]:
    """A socket the host serves where the agent can see it (not under /tmp or /run)."""
    with stream_server(str(host_dir / "host.sock")) as server:
        yield server


# -- the agent's own sockets work ---------------------------------------------------


def test_multiprocessing_manager_works(user_sandbox: Sandbox) -> None:
    """A Manager serves on a socket in a fresh directory under /tmp: its own."""
    result, reports = run_agent(user_sandbox, "manager")
    assert result.returncode == 0, result.stderr
    assert reports["manager"] == {"op": "manager", "result": "ok", "value": {"answer": 42}}
    assert socket_denials(user_sandbox) == []


@pytest.mark.parametrize("address", ["/tmp/pair.sock", "/var/tmp/pair.sock"])
def test_a_listener_and_client_pair_works(user_sandbox: Sandbox, address: str) -> None:
    """In the private /tmp and /var/tmp: and the listener is bound to the very
    name it gave (getsockname())."""
    if not os.path.isdir("/var/tmp") and address.startswith("/var/tmp"):
        pytest.skip("this host has no /var/tmp")
    result, reports = run_agent(user_sandbox, f"pair={address}")
    assert result.returncode == 0, result.stderr
    assert reports["pair"] == {
        "op": "pair",
        "result": "ok",
        "bound": address,
        "served": ["ping"],
        "reply": "pong",
    }
    assert socket_denials(user_sandbox) == []


def test_an_abstract_socket_pair_works_in_its_own_network_namespace(
    user_sandbox: Sandbox,
) -> None:
    result, reports = run_agent(user_sandbox, "pair=@agentsup-own-pair")
    assert result.returncode == 0, result.stderr
    assert reports["pair"]["result"] == "ok", reports
    assert reports["pair"]["bound"] == "@agentsup-own-pair"
    assert "net" in start_record(user_sandbox)["layers"]["namespaces"]  # type: ignore[index]


@pytest.mark.requires_landlock_scope
def test_sharing_the_hosts_network_abstract_names_are_refused(user_sandbox: Sandbox) -> None:
    """Landlock's scope keeps the agent's connects in, but a host process
    could still connect to a name the agent bound and take it for a host
    service's: with the host's network namespace, no abstract name is its own."""
    policy = user_sandbox.policy("shared", SHARED_NETWORK)
    result, reports = run_agent(user_sandbox, "pair=@agentsup-own-pair", policy=policy)
    assert result.returncode == 0, result.stderr
    assert reports["pair"]["result"] == "EPERM", reports
    assert socket_denials(user_sandbox) == [("local-socket", "unix:@agentsup-own-pair")]
    start = start_record(user_sandbox)
    assert "net" not in start["layers"]["namespaces"]  # type: ignore[index]
    assert start["own_sockets"]["private_abstract"] is False  # type: ignore[index]


@pytest.mark.parametrize("address", ["{workspace}/dev.sock", "dev.sock"])
def test_a_socket_in_the_workspace_is_refused(user_sandbox: Sandbox, address: str) -> None:
    """A host process may serve a socket in the workspace, and a hard link or a
    rename gives one any name there: no workspace socket is surely the agent's."""
    address = address.replace("{workspace}", str(user_sandbox.workspace))
    result, reports = run_agent(user_sandbox, f"pair={address}")
    assert result.returncode == 0, result.stderr
    assert reports["pair"]["result"] == "EPERM", reports
    assert socket_denials(user_sandbox) == [
        ("local-socket", f"unix:{user_sandbox.workspace}/dev.sock")
    ]


def test_a_host_socket_linked_out_of_a_hidden_directory_is_still_refused(
    user_sandbox: Sandbox,
) -> None:
    """git's fsmonitor socket in .git, hard-linked to a plain name: the host's still."""
    git = user_sandbox.workspace / ".git"
    git.mkdir()
    with stream_server(str(git / "fsmonitor--daemon.ipc")) as server:
        os.link(server.address, user_sandbox.workspace / "plain.sock")
        result, reports = run_agent(user_sandbox, f"connect={user_sandbox.workspace}/plain.sock")
        assert result.returncode == 0, result.stderr
        assert reports["connect"]["result"] == "EPERM"
        assert server.reached == 0


def test_a_blocking_connect_waits_for_room_in_a_full_backlog(user_sandbox: Sandbox) -> None:
    """Eight clients at once, a backlog of one: each waits its turn, as outside
    agentsup (the broker's connect never blocks, the supervisor tries again)."""
    result, reports = run_agent(user_sandbox, "crowd=/tmp/crowd.sock,8")
    assert result.returncode == 0, result.stderr
    assert reports["crowd"]["answers"] == ["ok"] * 8, reports
    assert reports["crowd"]["accepted"] == 8


def test_the_start_record_says_which_sockets_are_the_agents(user_sandbox: Sandbox) -> None:
    result, _ = run_agent(user_sandbox)
    assert result.returncode == 0, result.stderr
    own = start_record(user_sandbox)["own_sockets"]
    tmp = [d for d in ("/tmp", "/var/tmp") if os.path.isdir(d)]
    assert own == {"private_tmp": tmp, "private_abstract": True}


# -- the host's sockets stay out of reach ---------------------------------------------


def test_a_host_socket_the_agent_can_see_is_refused(
    user_sandbox: Sandbox, host_socket: StreamServer
) -> None:
    result, reports = run_agent(user_sandbox, f"connect={host_socket.address}")
    assert result.returncode == 0, result.stderr
    assert_host_socket_refused(user_sandbox, reports, host_socket)


def test_a_symlink_in_the_workspace_to_a_host_socket_is_that_socket(
    user_sandbox: Sandbox, host_socket: StreamServer
) -> None:
    (user_sandbox.workspace / "dev.sock").symlink_to(str(host_socket.address))
    result, reports = run_agent(user_sandbox, f"connect={user_sandbox.workspace}/dev.sock")
    assert result.returncode == 0, result.stderr
    assert_host_socket_refused(user_sandbox, reports, host_socket)


def test_a_socket_in_a_hidden_directory_of_the_workspace_is_refused(
    user_sandbox: Sandbox,
) -> None:
    """Host tools keep their sockets in hidden directories: git's fsmonitor
    daemon in a project's .git, gpg-agent in ~/.gnupg when the workspace is
    the home.  Those stay the host's."""
    git = user_sandbox.workspace / ".git"
    git.mkdir()
    with stream_server(str(git / "fsmonitor--daemon.ipc")) as server:
        result, reports = run_agent(user_sandbox, f"connect={server.address}")
        assert result.returncode == 0, result.stderr
        assert_host_socket_refused(user_sandbox, reports, server)


def test_a_host_socket_in_a_home_the_private_tmp_binds_in_is_refused(sandbox: Sandbox) -> None:
    """This sandbox's home is under the host's /tmp: the private /tmp binds it
    back in, and what it holds is the host's (a gpg-agent's socket, say)."""
    assert str(sandbox.home).startswith("/tmp/")
    with stream_server(str(sandbox.home / "agent.sock")) as server:
        result, reports = run_agent(sandbox, f"connect={server.address}")
        assert result.returncode == 0, result.stderr
        assert_host_socket_refused(sandbox, reports, server)


def test_a_host_socket_in_the_hosts_tmp_is_not_the_one_the_agent_names(
    user_sandbox: Sandbox,
) -> None:
    """The same name in the agent's /tmp is its own tmpfs: nothing is there."""
    with stream_server(f"/tmp/agentsup-host-{os.getpid()}.sock") as server:
        result, reports = run_agent(user_sandbox, f"connect={server.address}")
        assert result.returncode == 0, result.stderr
        assert reports["connect"]["result"] == "ENOENT"
        assert server.reached == 0


def test_a_socket_path_with_nothing_there_is_enoent_with_no_record(
    user_sandbox: Sandbox, host_dir: Path
) -> None:
    """As the kernel says, with no rule asked: glibc tries nscd's socket at
    every user lookup, where no nscd runs, and each was a refusal on record."""
    missing = host_dir / "nothing-here.sock"
    result, reports = run_agent(user_sandbox, f"connect={missing}")
    assert result.returncode == 0, result.stderr
    assert reports["connect"]["result"] == "ENOENT"
    assert socket_denials(user_sandbox) == []


def test_an_abstract_socket_of_the_host_is_out_of_reach(user_sandbox: Sandbox) -> None:
    name = f"agentsup-host-{os.getpid()}"
    with stream_server(b"\0" + name.encode()) as server:
        result, reports = run_agent(user_sandbox, f"connect=@{name}")
        assert result.returncode == 0, result.stderr
        assert reports["connect"]["result"] == "ECONNREFUSED"  # none in its own namespace
        assert server.reached == 0


@pytest.mark.requires_landlock_scope
def test_sharing_the_hosts_network_the_scope_keeps_its_abstract_sockets_out(
    user_sandbox: Sandbox,
) -> None:
    name = f"agentsup-host-{os.getpid()}"
    policy = user_sandbox.policy("shared", SHARED_NETWORK)
    with stream_server(b"\0" + name.encode()) as server:
        result, reports = run_agent(user_sandbox, f"connect=@{name}", policy=policy)
        assert result.returncode == 0, result.stderr
        assert reports["connect"]["result"] == "EPERM"  # Landlock: another domain's socket
        assert server.reached == 0


def test_a_connect_goes_to_the_abstract_name_decided_not_a_path_swapped_in(
    user_sandbox: Sandbox, host_socket: StreamServer
) -> None:
    """The broker connects with the address it copied: a thread rewriting it
    to a host socket's path after the check reaches nothing of the host's."""
    result, reports = run_agent(user_sandbox, f"race=@agentsup-own-race,{host_socket.address},2000")
    assert result.returncode == 0, result.stderr
    assert reports["race"]["result"] == "ok", reports
    assert isinstance(reports["race"]["connected"], int) and reports["race"]["connected"] > 0
    assert host_socket.reached == 0, reports


def test_a_bind_makes_the_socket_the_decision_was_about(user_sandbox: Sandbox) -> None:
    """The broker binds with the path it copied: a thread rewriting it to a
    name the policy refuses (where git's fsmonitor daemon would listen) after
    the check makes nothing there."""
    git = user_sandbox.workspace / ".git"
    git.mkdir()
    squatted = git / "fsmonitor--daemon.ipc"
    result, reports = run_agent(user_sandbox, f"bind_race=/tmp/own.sock,{squatted},2000")
    assert result.returncode == 0, result.stderr
    assert reports["bind_race"]["result"] == "ok", reports
    assert isinstance(reports["bind_race"]["bound"], int) and reports["bind_race"]["bound"] > 0
    assert not squatted.exists(), reports


def test_without_a_sure_private_tmp_its_sockets_are_refused(user_sandbox: Sandbox) -> None:
    """`--allow-degraded mount` may leave the agent the host's /tmp: then no
    socket there is surely its own, and local-socket refuses them all."""
    result, reports = run_agent(
        user_sandbox, "pair=/tmp/pair.sock", extra=("--allow-degraded", "mount")
    )
    assert result.returncode == 0, result.stderr
    assert reports["pair"]["result"] == "EPERM"
    assert socket_denials(user_sandbox) == [("local-socket", "unix:/tmp/pair.sock")]
    assert start_record(user_sandbox)["own_sockets"] == {
        "private_tmp": [],
        "private_abstract": True,
    }


BIND_WHERE_WRITES_ARE_REFUSED = """
name: sockets-in-the-workspace
extends: [strict]
rules:
  - id: workspace-sockets
    actions: [network_connect]
    target: "unix:{workspace}/**"
    decision: allow
    priority: 1
  - id: frozen
    actions: [file_write]
    target: "{workspace}/frozen/**"
    decision: deny
    on_violation: block
    priority: 1
"""

BINDER = """
import errno, os, socket, sys
for name in sys.argv[1:]:
    try:
        socket.socket(socket.AF_UNIX).bind(name)
        print(name, "ok")
    except OSError as exc:
        print(name, errno.errorcode[exc.errno])
"""


def test_a_bind_is_a_write_of_the_name_it_makes(sandbox: Sandbox) -> None:
    """A bind to a path makes a new entry there (a socket file), as mknod
    would: where the policy refuses writing that name, the bind is refused
    too, however the network rules let unix sockets through (a socket planted
    at ~/.gnupg/S.gpg-agent under permissive answered the host's gpg).

    Correct outcome: frozen/sock refused (EACCES, rule frozen) and not made;
    ok/sock made."""
    ws = sandbox.workspace
    (ws / "frozen").mkdir()
    (ws / "ok").mkdir()
    policy = sandbox.policy("sockets", BIND_WHERE_WRITES_ARE_REFUSED)
    result = sandbox.run(
        "python3", "-c", BINDER, f"{ws}/ok/sock", f"{ws}/frozen/sock", policy=policy
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == [f"{ws}/ok/sock ok", f"{ws}/frozen/sock EACCES"]
    assert (ws / "ok" / "sock").is_socket()
    assert not (ws / "frozen" / "sock").exists()
    assert ("file_write", "frozen") in sandbox.denials()
