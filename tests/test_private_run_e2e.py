"""The agent's /run is its own: a tmpfs over the host's, with only what it needs bound back.

The host's /run holds its daemons' unix sockets: Docker's, the D-Bus system
bus, systemd's and journald's (/dev/log), nscd, a user's session bus and
gpg-agent under /run/user.  Mediation refuses connects to them, but a
unix sendmsg is CONTINUEd after its check, and a thread can rewrite its
msg_name meanwhile (NULL at the check, a host path when the kernel reads
it).  So the kernel floor keeps them out of reach too: in its mount
namespace the agent gets a tmpfs on /run, and only these come back:

- the paths the launch keeps (the workspace and home where they live under
  /run, the hook socket alone of agentsup's runtime directory);
- the files /etc's symlinks lead to there (/etc/resolv.conf of
  systemd-resolved), read-only, and the links on the way;
- /run/lock, fresh and writable; the symlinks at its top that lead out.

Here the test process plays the host: it serves sockets under /run and
checks that none of them was reached, whatever the agent tried.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_ops import OPS_MAIN, OPS_PRELUDE
from conftest import SHARED_NETWORK, Sandbox, agent_reports, run_ops_agent, sandbox_at
from host_sockets import DatagramServer, StreamServer, datagram_server, stream_server

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

# The agent: each argument is one operation `name=arg,arg`, and each prints one
# JSON line ({"op": ..., "result": "ok" or the errno's name, ...}).
AGENT = (
    OPS_PRELUDE
    + r'''
import ctypes, errno, fcntl, json, mmap, os, socket, sqlite3, struct, sys


def stat(path):
    os.stat(path)
    return {}


def listdir(path):
    return {"entries": sorted(os.listdir(path))}


def read(path):
    with open(path) as file:
        text = file.read()
    return {"text": text, "real": os.path.realpath(path)}


def read_only(path):
    return {"read_only": bool(os.statvfs(path).f_flag & os.ST_RDONLY)}


def write(path):
    with open(path, "w") as file:
        file.write("written by the agent\n")
    with open(path) as file:
        return {"back": file.read()}


def lock(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"%d\n" % os.getpid())
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return {}


def connect(path):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
    return {}


def sendto(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"injected", path)
    return {}


def sql():
    """A statement only the audit hook sees (strict: warn, recorded)."""
    sqlite3.connect(":memory:").execute("CREATE TABLE seen_by_the_hook (x)")
    return {}


def sockaddr(path, size):
    return struct.pack("<H", socket.AF_UNIX) + path.encode().ljust(size, b"\0")


def flip(host, tries, own=""):
    """sendmsg() on a datagram socket while another process keeps rewriting
    what the kernel will read: msg_name between NULL and `host` (no `own`),
    or the address msg_name points at between `own` and `host`.  Counts each
    outcome.  The rewriter is a forked child on shared memory: no GIL slows it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sendmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.sendmsg.restype = ctypes.c_ssize_t
    shared = mmap.mmap(-1, 4096)  # MAP_SHARED: the child's writes are ours
    memory = (ctypes.c_char * 4096).from_buffer(shared)
    base = ctypes.addressof(memory)
    header, name, payload, iov, stop = base, base + 64, base + 256, base + 320, base + 1024
    size = max(len(host), len(own)) + 1
    bad, good = sockaddr(host, size), sockaddr(own, size)
    ctypes.memmove(name, good if own else bad, len(bad))
    ctypes.memmove(payload, b"injected", 8)
    ctypes.memmove(iov, struct.pack("<QQ", payload, 8), 16)
    with_name = struct.pack("<QI4x", name, len(bad))
    without = struct.pack("<QI4x", 0, 0)
    rest = struct.pack("<QQQQi4x", iov, 1, 0, 0, 0)
    ctypes.memmove(header, (with_name if own else without) + rest, 56)
    if own:
        first, second, where, length = bad, good, name, len(bad)
    else:
        first, second, where, length = with_name, without, header, 16
    receiver = None
    if own:
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(own)
        receiver.setblocking(False)
    child = os.fork()
    if child == 0:
        flag = ctypes.c_char.from_address(stop)
        while flag.value == b"\0":
            ctypes.memmove(where, first, length)
            ctypes.memmove(where, second, length)
        os._exit(0)
    outcomes = {}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for _ in range(int(tries)):
                sent = libc.sendmsg(sock.fileno(), header, 0)
                key = "sent" if sent >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
                outcomes[key] = outcomes.get(key, 0) + 1
                if receiver is not None:
                    try:
                        while True:
                            receiver.recv(64)
                    except BlockingIOError:
                        pass
    finally:
        ctypes.memmove(stop, b"\1", 1)
        os.waitpid(child, 0)
        if receiver is not None:
            receiver.close()
    return {"outcomes": outcomes}


OPS = {
    "stat": stat, "listdir": listdir, "read": read, "read_only": read_only, "write": write,
    "lock": lock, "connect": connect, "sendto": sendto, "sql": sql, "flip": flip,
}
'''
    + OPS_MAIN
)

# strict, on the host's network (`network: direct`, one address to reach):
# the policy for which DNS configuration matters.
DIRECT = (
    SHARED_NETWORK.replace("strict-shared-network", "strict-direct")
    + """\
  - id: dns-config
    actions: [file_read]
    target: "{dns}/**"
    decision: allow
    priority: 1
"""
)

# permissive (which may list agentsup's runtime directory), recording a
# statement only the agent's audit hook sees.
SEEN_BY_THE_HOOK = """
name: seen
extends: [permissive]
rules:
  - id: seen
    actions: [database_execute]
    target: "**"
    decision: warn
    priority: 1
"""

# strict, with the agent's own /run/lock for its lock files.
RUN_LOCK = """
name: strict-run-lock
extends: [strict]
rules:
  - id: run-lock
    actions: [file_read, file_write, file_delete]
    target: /run/lock/**
    decision: allow
    priority: 1
"""


def run_agent(
    sandbox: Sandbox,
    *ops: str,
    policy: str = "strict",
    extra: tuple[str, ...] = (),
    wrap: tuple[str, ...] = (),
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    return run_ops_agent(sandbox, AGENT, *ops, policy=policy, extra=extra, wrap=wrap, timeout=180)


def start_record(sandbox: Sandbox) -> dict[str, object]:
    return next(r for r in sandbox.audit_records() if r.get("event") == "start")


def host_run() -> Path:
    """Where this user can put something of the host's under /run: /run
    itself as root, else its XDG_RUNTIME_DIR (/run/user/UID)."""
    if os.access("/run", os.W_OK):
        return Path("/run")
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/run/") and os.access(runtime, os.W_OK):
        return Path(runtime)
    pytest.skip("nowhere under /run this user can write")


@pytest.fixture
def run_sandbox() -> Iterator[Sandbox]:
    """A workspace, home and agentsup locations under the host's /run, which
    the private /run binds back (the workspace and home, and the hook socket
    alone of agentsup's runtime directory)."""
    if not os.access("/run", os.W_OK):
        pytest.skip("/run is not writable here")
    root = Path(tempfile.mkdtemp(prefix="agentsup-test-", dir="/run"))
    own = Path(tempfile.mkdtemp(prefix="agentsup-test-", dir="/run"))
    with sandbox_at(root, own) as sandbox:
        yield sandbox


@pytest.fixture
def stream_socket() -> Iterator[StreamServer]:
    with stream_server(host_run() / f"agentsup-test-{os.getpid()}.sock") as server:
        yield server


@pytest.fixture
def datagram_socket() -> Iterator[DatagramServer]:
    with datagram_server(host_run() / f"agentsup-test-{os.getpid()}.dgram") as server:
        yield server


# -- the host's sockets under /run are not there --------------------------------------


@pytest.mark.parametrize("policy", ["strict", "permissive"])
def test_the_hosts_sockets_under_run_are_not_there(
    run_sandbox: Sandbox,
    stream_socket: StreamServer,
    datagram_socket: DatagramServer,
    policy: str,
) -> None:
    """Not refused by a rule (permissive has none for them): not there at all.
    Under strict the mediator may answer first (local-socket's EPERM, or
    ENOENT for a path with nothing there); nothing reaches them either way."""
    stream, datagram = str(stream_socket.address), str(datagram_socket.address)
    result, _ = run_agent(
        run_sandbox,
        f"stat={stream}",
        f"connect={stream}",
        f"stat={datagram}",
        f"sendto={datagram}",
        policy=policy,
    )
    assert result.returncode == 0, result.stderr
    answers = [(r["op"], r["result"]) for r in agent_reports(result.stdout)]
    refused = {"EPERM", "ENOENT"} if policy == "strict" else {"ENOENT"}
    assert [op for op, _ in answers] == ["stat", "connect", "stat", "sendto"], answers
    assert answers[0][1] == answers[2][1] == "ENOENT", answers
    assert {answers[1][1], answers[3][1]} <= refused, answers
    assert stream_socket.reached == 0
    assert datagram_socket.received == []


def test_a_symlink_in_the_workspace_to_a_host_socket_under_run_leads_nowhere(
    run_sandbox: Sandbox, stream_socket: StreamServer
) -> None:
    link = run_sandbox.workspace / "docker.sock"
    link.symlink_to(stream_socket.address)
    result, reports = run_agent(run_sandbox, f"connect={link}", policy="permissive")
    assert result.returncode == 0, result.stderr
    assert reports["connect"]["result"] == "ENOENT", reports
    assert stream_socket.reached == 0


@pytest.mark.parametrize("own", ["", "/tmp/own.dgram"], ids=["msg_name-null", "msg_name-own"])
def test_a_sendmsg_rewritten_after_its_check_reaches_no_host_socket(
    run_sandbox: Sandbox, datagram_socket: DatagramServer, own: str
) -> None:
    """A unix sendmsg is CONTINUEd after the check of its msg_name (NULL: no
    address to judge; or the agent's own socket), and the agent rewrites it
    (from a second process, on shared memory) to a host socket's path before
    the kernel reads it.  The kernel then looks that path up in the agent's
    view, where it is not (ENOENT: strict refuses a host path it sees with
    EPERM).  With the host's /run in view, datagrams got through here."""
    result, reports = run_agent(
        run_sandbox, f"flip={datagram_socket.address},3000,{own}", policy="strict"
    )
    assert result.returncode == 0, result.stderr
    assert reports["flip"]["result"] == "ok", reports
    outcomes = reports["flip"]["outcomes"]
    assert isinstance(outcomes, dict)
    # The race was won (the kernel read the host's path) and met nothing there.
    assert outcomes.get("ENOENT", 0) > 0, outcomes
    if not own:
        assert "sent" not in outcomes, outcomes  # nothing else to send to
    assert datagram_socket.received == [], outcomes


# -- what the agent needs is there ---------------------------------------------------


def test_the_hook_still_talks_to_the_supervisor(run_sandbox: Sandbox) -> None:
    """The hook socket alone is bound back: the agent's audit hook reaches the
    supervisor, and no other file of agentsup's runtime directory is there
    (every supervisor's control socket lives beside it)."""
    runtime = run_sandbox.runtime_dir
    policy = run_sandbox.policy("seen", SEEN_BY_THE_HOOK)
    result, reports = run_agent(run_sandbox, "sql", f"listdir={runtime}", policy=policy)
    assert result.returncode == 0, result.stderr
    assert reports["sql"]["result"] == "ok", reports
    hooked = [
        r
        for r in run_sandbox.audit_records()
        if r.get("layer") == "hook" and r.get("rule") == "seen"
    ]
    assert [r["target"] for r in hooked] == ["CREATE TABLE seen_by_the_hook (x)"]
    entries = reports["listdir"]["entries"]
    assert isinstance(entries, list) and len(entries) == 1, reports
    assert entries[0].startswith("hook-") and entries[0].endswith(".sock"), entries


def test_the_hook_works_under_strict(run_sandbox: Sandbox) -> None:
    result, reports = run_agent(run_sandbox, "sql")
    assert result.returncode == 0, result.stderr
    assert reports["sql"]["result"] == "ok", reports
    hooked = [
        r
        for r in run_sandbox.audit_records()
        if r.get("layer") == "hook" and r.get("rule") == "database-delete-execute"
    ]
    assert [r["target"] for r in hooked] == ["CREATE TABLE seen_by_the_hook (x)"], hooked


@pytest.mark.parametrize("policy", ["permissive", "run-lock"])
def test_run_lock_is_fresh_and_writable(run_sandbox: Sandbox, policy: str) -> None:
    """Lock files and flock work in /run/lock (and through /var/lock); the
    host's lock files are not there, and the agent's never reach the host."""
    if policy == "run-lock":
        policy = run_sandbox.policy("run-lock", RUN_LOCK)
    planted = None
    if os.path.isdir("/run/lock") and os.access("/run/lock", os.W_OK):
        planted = Path(f"/run/lock/agentsup-test-{os.getpid()}.lock")
        planted.write_text("the host's\n")
    mine = f"agentsup-own-{os.getpid()}.lock"
    ops = [f"lock=/run/lock/{mine}", "listdir=/run/lock"]
    if os.path.islink("/var/lock") and os.path.realpath("/var/lock") == "/run/lock":
        ops.append(f"lock=/var/lock/{mine}.2")
    try:
        result, reports = run_agent(run_sandbox, *ops, policy=policy)
        assert result.returncode == 0, result.stderr
        locked = [r["result"] for r in agent_reports(result.stdout) if r["op"] == "lock"]
        assert locked == ["ok"] * (len(ops) - 1), result.stdout
        entries = reports["listdir"]["entries"]
        assert entries == [mine], entries  # nothing of the host's
        assert not Path(f"/run/lock/{mine}").exists()
        assert not Path(f"/run/lock/{mine}.2").exists()
        if planted is not None:
            assert planted.read_text() == "the host's\n"
    finally:
        if planted is not None:
            planted.unlink(missing_ok=True)
        for leaked in (mine, f"{mine}.2"):  # there only if the agent had the host's /run/lock
            Path(f"/run/lock/{leaked}").unlink(missing_ok=True)


def test_what_the_agent_writes_in_run_stays_in_its_run(run_sandbox: Sandbox) -> None:
    """Files it makes in /run (and /var/run) are in its tmpfs: gone after the
    run, never in the host's.  The workspace under /run is the host's."""
    name = f"agentsup-test-{os.getpid()}-written"
    workspace_file = run_sandbox.workspace / "kept.txt"
    ops = [f"write=/run/{name}", f"write=/var/run/{name}.var", f"write={workspace_file}"]
    try:
        result, reports = run_agent(run_sandbox, *ops, policy="permissive")
        assert result.returncode == 0, result.stderr
        written = [r for r in agent_reports(result.stdout) if r["op"] == "write"]
        assert [r["result"] for r in written] == ["ok"] * 3, written
        assert not Path(f"/run/{name}").exists()
        assert not Path(f"/run/{name}.var").exists()
        assert workspace_file.read_text() == "written by the agent\n"
        # The next run starts with a fresh /run: the first one's file is gone.
        result, reports = run_agent(run_sandbox, f"stat=/run/{name}", policy="permissive")
        assert reports["stat"]["result"] == "ENOENT", reports
    finally:
        Path(f"/run/{name}").unlink(missing_ok=True)
        Path(f"/run/{name}.var").unlink(missing_ok=True)


def test_the_start_record_says_the_run_is_private(run_sandbox: Sandbox) -> None:
    result, _ = run_agent(run_sandbox)
    assert result.returncode == 0, result.stderr
    layers = start_record(run_sandbox)["layers"]
    assert isinstance(layers, dict)
    assert layers["private_run"] == ["/run"] + (
        ["/var/run"] if os.path.isdir("/var/run") and not os.path.islink("/var/run") else []
    )
    assert "mount" in layers["namespaces"]


def test_allowed_to_degrade_the_run_is_as_private_as_the_tmp(
    run_sandbox: Sandbox, stream_socket: StreamServer
) -> None:
    """`--allow-degraded mount` where the kernel still makes the namespace:
    /run is private as /tmp is (neither counts as sure for the policy's
    own-socket rules), and the start record says what the agent got."""
    result, reports = run_agent(
        run_sandbox, f"stat={stream_socket.address}", extra=("--allow-degraded", "mount")
    )
    assert result.returncode == 0, result.stderr
    assert reports["stat"]["result"] == "ENOENT", reports
    start = start_record(run_sandbox)
    assert start["layers"]["private_run"]  # type: ignore[index]
    assert start["own_sockets"]["private_tmp"] == []  # type: ignore[index]
    assert stream_socket.reached == 0


def _overlay_etc(upper: Path, work: Path) -> tuple[str, ...]:
    """A command prefix: the rest runs in a mount namespace of its own where
    /etc is the host's with `upper` laid over it (overlayfs)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    script = 'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc'
    script += ' && shift 2 && exec "$@"'
    wrap = ("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh")
    wrap += (str(upper), str(work))
    probe = subprocess.run([*wrap, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no overlayfs over /etc here: {probe.stderr.strip()}")
    return wrap


@pytest.mark.requires_root
def test_dns_configuration_in_run_is_bound_back_read_only(
    run_sandbox: Sandbox, tmp_path: Path
) -> None:
    """/etc/resolv.conf as systemd-resolved or resolvconf make it: a symlink
    into /run, here through a second link.  The agent reads it (network:
    direct), read-only; nothing else of that directory is there, its
    varlink socket (io.systemd.Resolve) least of all."""
    dns = Path(tempfile.mkdtemp(prefix="agentsup-test-dns-", dir="/run"))
    try:
        (dns / "resolve").mkdir()
        stub = dns / "resolve" / "stub-resolv.conf"
        stub.write_text("nameserver 192.0.2.53\noptions edns0\n")
        (dns / "resolvconf").mkdir()
        (dns / "resolvconf" / "resolv.conf").symlink_to("../resolve/stub-resolv.conf")
        (dns / "resolve" / "unlinked.conf").write_text("not linked from /etc\n")
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir()
        work.mkdir()
        (upper / "resolv.conf").symlink_to(dns / "resolvconf" / "resolv.conf")
        wrap = _overlay_etc(upper, work)
        policy = run_sandbox.policy("direct", DIRECT.replace("{dns}", str(dns)))
        with stream_server(dns / "resolve" / "io.systemd.Resolve") as resolved:
            result, reports = run_agent(
                run_sandbox,
                "read=/etc/resolv.conf",
                "read_only=/etc/resolv.conf",
                f"listdir={dns / 'resolve'}",
                f"stat={resolved.address}",
                f"connect={resolved.address}",
                f"stat={dns / 'resolve' / 'unlinked.conf'}",
                policy=policy,
                wrap=wrap,
            )
            assert resolved.reached == 0
        assert result.returncode == 0, result.stderr
        assert reports["read"]["result"] == "ok", reports
        assert reports["read"]["text"] == stub.read_text()
        assert reports["read"]["real"] == str(stub)
        assert reports["read_only"]["read_only"] is True, reports
        assert reports["listdir"]["entries"] == ["stub-resolv.conf"], reports
        stats = [r["result"] for r in agent_reports(result.stdout) if r["op"] == "stat"]
        assert stats == ["ENOENT", "ENOENT"], result.stdout
        assert reports["connect"]["result"] in ("EPERM", "ENOENT"), reports  # strict's answer
        assert start_record(run_sandbox)["layers"]["egress"] == "direct"  # type: ignore[index]
    finally:
        shutil.rmtree(dns, ignore_errors=True)
