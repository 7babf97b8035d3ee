"""Which walls this host gives an agent, and what each missing one costs.

`agentsup doctor` prints these facts; `run --json-status` and the audit start
record carry them too (`host_layers`).  Every probe that changes the calling
process for good (unshare, a seccomp filter) runs in a throw-away child, and
the answers are kept for the life of the process: a daemon probes once.

A layer is *needed* when a default `run` by this user (policy `strict`, so
no network) refuses to start without it; `degrade` names the
`--allow-degraded` value that lets it run anyway, or is None when nothing
does.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..kernel import fanotify, fastpath, namespaces, privileges, seccomp
from ..kernel.cgroup import AgentCgroup, CgroupUnavailable
from ..kernel.landlock import landlock_abi

# How long one probe child may take before it is killed and the layer
# reported as unknown (a hung probe must not hang `run`).
PROBE_TIMEOUT_S = 10.0
_PR_GET_DUMPABLE = 3

COSTS = {
    "seccomp_notify": "no seccomp user notification (Linux 5.5+): no syscall can be "
    "mediated, so run refuses to start",
    "seccomp_addfd": "no SECCOMP_IOCTL_NOTIF_ADDFD with SEND (Linux 5.14+): the supervisor "
    "cannot hand the agent the file it checked, so run refuses to start",
    "seccomp_continue": "no SECCOMP_USER_NOTIF_FLAG_CONTINUE (Linux 5.5+): an allowed "
    "syscall cannot be let through, so run refuses to start",
    "landlock": "no Landlock: no kernel floor under the policy; a bug in the mediator or "
    "the policy hands the agent everything its user may touch",
    "user_namespace": "no user namespace: as a normal user no other namespace can be made, "
    "and capabilities cannot be dropped from the bounding set",
    "mount_namespace": "no mount namespace: the agent shares the host's /tmp, /var/tmp and "
    "/run, its /proc is the host's, and /dev, /sys, /proc/sys, the cgroup trees and any "
    "procfs, mqueue or kernel interface the host mounted are as the host has them: a root "
    "agent can write them where the policy allows",
    "pid_namespace": "no PID namespace: the agent sees every process on the host in /proc; "
    "/proc/PID/environ of processes of the same user are readable, and it can signal them",
    "uts_namespace": "no UTS namespace: the agent shares the host's hostname, and a write "
    "it gets through renames the host",
    "ipc_namespace": "no IPC namespace: the agent reaches the host's System V shared memory, "
    "semaphores and message queues of its user",
    "net_namespace": "no network namespace: under a policy with no network, only the "
    "mediator and Landlock's TCP rules stand between the agent and the host's network; "
    "UDP, raw, packet and netlink sockets are not walled off",
    "cgroup": "no writable cgroup: limits fall back to per-process rlimits (RLIMIT_NPROC "
    "counts all of the user's processes) and the tree is followed as a subreaper, so a "
    "process that escapes it is neither limited nor killed with the agent",
    "capabilities": "capabilities cannot be dropped: the agent keeps what its user holds, "
    "so run refuses to start",
    "pty": "no pty: an agent run from a terminal gets no terminal of its own; programs "
    "that need one (editors, password prompts) fail, injection stays refused",
    "native_path": "the Python supervisor answers every mediated open: the same decisions, "
    "more overhead per open (README, Performance)",
    "read_lane": "every read is trapped by seccomp and answered by the broker: the same "
    "decisions, more overhead per open (README, Performance)",
}

# What each Landlock ABI adds, for saying what an older one lacks.
_LANDLOCK_ADDS = {
    2: "moves and links across directories (2)",
    3: "truncate (3)",
    4: "TCP bind and connect rules (4)",
    5: "device ioctl rules (5)",
    6: "signal and abstract-socket scoping (6)",
}


@dataclass(frozen=True)
class Layer:
    """One enforcement layer, as `doctor` and the start record report it."""

    name: str
    available: bool
    needed: bool
    degrade: str | None
    detail: str
    cost: str  # what is lost without it; '' when it is available

    def as_dict(self) -> dict[str, object]:
        found = asdict(self)
        del found["name"]
        return found


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return _errno_text(exc.errno)
    return f"{type(exc).__name__}: {exc}"


def in_child(
    work: Callable[[], Mapping[str, object]], timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """Run `work` in a forked child and return its answer, through JSON (or {"error": ...}).

    For probes that change the calling process for good; the tests use it too.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            # The parent's loop reads signals from a pipe; ours are not its.
            signal.set_wakeup_fd(-1)
            os.close(read_end)
            try:
                result = work()
            except BaseException as exc:
                result = {"error": _why(exc)}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([read_end], [], [], left)[0]:
                continue
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
        else:
            os.kill(pid, signal.SIGKILL)
            return {"error": f"the probe took longer than {timeout:g} s"}
    finally:
        os.close(read_end)
        # The supervisor's own SIGCHLD reaping may not take it first: the loop
        # is not running while this waits.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    try:
        answer: dict[str, Any] = json.loads(data)
    except ValueError:
        return {"error": "the probe died without an answer"}
    return answer


# -- seccomp -------------------------------------------------------------------------

_NEEDS_NOTIFY = {"addfd": "needs notification", "continue": "needs notification"}


def _seccomp_victim(channel: socket.socket) -> None:
    """Install a filter that traps umask, hand the listener over, and make three calls."""
    try:
        listener = seccomp.load_filter(["umask"], [])
    except BaseException as exc:
        channel.sendall(json.dumps({"notify": _why(exc)}).encode())
        return
    socket.send_fds(channel, [b"L"], [listener])
    os.close(listener)
    # Each call fails with ENOSYS when the supervisor side could not answer it.
    try:
        injected = os.umask(0o022)  # answered with ADDFD: the number of an fd it put here
        addfd = os.readlink(f"/proc/self/fd/{injected}") == "/dev/null"
    except OSError:
        addfd = False
    try:
        os.umask(0o027)  # both let through with CONTINUE: the second sees the first's mask
        continued = os.umask(0o022) == 0o027
    except OSError:
        continued = False
    channel.sendall(json.dumps({"addfd": addfd, "continue": continued}).encode())


def _next_notification(listener: int) -> seccomp.Notification | None:
    if not select.select([listener], [], [], PROBE_TIMEOUT_S / 2)[0]:
        return None
    return seccomp.receive(listener)


def _seccomp_work() -> dict[str, str]:
    """In a child: a grandchild is the victim, this process its supervisor."""
    ours, theirs = socket.socketpair()
    devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the grandchild
        try:
            ours.close()
            _seccomp_victim(theirs)
        finally:
            os._exit(0)
    theirs.close()
    found = {"notify": "", "addfd": "", "continue": ""}
    try:
        message, fds, _flags, _address = socket.recv_fds(ours, 4096, 1)
        if not fds:
            reason = json.loads(message or b"{}").get("notify", "no listener came back")
            return {"notify": reason, **_NEEDS_NOTIFY}
        listener = fds[0]
        responses: list[tuple[str, Callable[[int], bool]]] = [
            ("addfd", lambda nid: seccomp.inject_fd_and_respond(listener, nid, devnull, True)),
            ("continue", lambda nid: seccomp.respond_continue(listener, nid)),
            ("continue", lambda nid: seccomp.respond_continue(listener, nid)),
        ]
        for name, respond in responses:
            notification = _next_notification(listener)
            if notification is None:
                found[name] = found[name] or "no notification arrived"
                break
            try:
                respond(notification.id)
            except OSError as exc:  # EINVAL/ENOTTY: this kernel lacks the flag or ioctl
                found[name] = found[name] or _errno_text(exc.errno or errno.EINVAL)
                seccomp.respond_error(listener, notification.id, errno.ENOSYS)
        os.close(listener)
        ours.settimeout(PROBE_TIMEOUT_S / 2)
        seen = json.loads(ours.recv(4096) or b"{}")
        if not found["addfd"] and not seen.get("addfd"):
            found["addfd"] = "the injected fd did not arrive"
        if not found["continue"] and not seen.get("continue"):
            found["continue"] = "the syscall did not run after CONTINUE"
        return found
    finally:
        ours.close()
        os.waitpid(pid, 0)


@functools.cache
def _seccomp() -> dict[str, str]:
    """'notify', 'addfd', 'continue' -> '' when it works, else why not."""
    try:
        actions = Path("/proc/sys/kernel/seccomp/actions_avail").read_text().split()
    except OSError as exc:
        actions, reason = [], f"cannot read actions_avail: {_why(exc)}"
    else:
        reason = "the kernel offers no user_notif action"
    if "user_notif" not in actions:
        return {"notify": reason, **_NEEDS_NOTIFY}
    try:  # here, once: the trampoline forked later finds it loaded too
        import pyseccomp  # noqa: F401
    except ImportError as exc:
        return {"notify": f"pyseccomp: {exc}", **_NEEDS_NOTIFY}
    found = in_child(_seccomp_work)
    if "error" in found:
        return {key: found["error"] for key in ("notify", "addfd", "continue")}
    return found


# -- namespaces ------------------------------------------------------------------------


def _sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def _userns_hint() -> str:
    """Which host setting refuses user namespaces, when one visibly does."""
    # A process that changed its uid without an exec is not dumpable: its
    # /proc/self files are root's, and it cannot write its own uid map.
    if os.geteuid() != 0 and privileges.prctl(_PR_GET_DUMPABLE) == 0:
        return " (this process is not dumpable, so it cannot write its uid map)"
    for name, refusing in (
        ("kernel.unprivileged_userns_clone", "0"),
        ("user.max_user_namespaces", "0"),
        ("kernel.apparmor_restrict_unprivileged_userns", "1"),
    ):
        if _sysctl(name) == refusing:
            return f" ({name}={refusing})"
    return ""


def _enter(name: str) -> str:
    """Make one namespace in this (throw-away) process; '' or why not."""
    try:
        if name == "user":
            namespaces.enter_user_namespace(os.geteuid(), os.getegid())
        else:
            namespaces.unshare(name)
    except namespaces.NamespaceError as exc:
        why = _errno_text(exc.errno)
        return why if exc.step == f"{name} namespace" else f"{exc.step}: {why}"
    if name == "pid":  # only children enter it: the first one must be its PID 1
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the new namespace
            os._exit(0 if os.getpid() == 1 else 1)
        if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) != 0:
            return "a child is not PID 1 in it"
    return ""


def _namespace_work() -> dict[str, str]:
    root = os.geteuid() == 0
    # As root a run makes no user namespace: probe the others without one.
    names = list(namespaces.FLAGS)
    order = [name for name in names if name != "user"] + ["user"] if root else names
    found: dict[str, str] = {}
    for name in order:
        if not root and name != "user" and found["user"]:
            found[name] = "needs a user namespace"
            continue
        found[name] = _enter(name)
    hint = _userns_hint()
    if hint and not root:
        found = {name: why + hint if why else why for name, why in found.items()}
    return found


@functools.cache
def _namespaces() -> dict[str, str]:
    """Namespace name -> '' when this user can make it, else why not."""
    found = in_child(_namespace_work)
    if "error" in found:
        return {name: found["error"] for name in namespaces.FLAGS}
    return found


# -- the rest ----------------------------------------------------------------------------


@functools.cache
def _cgroup() -> tuple[bool, str]:
    try:
        group = AgentCgroup.create(f"doctor-{os.getpid()}")
    except (CgroupUnavailable, OSError) as exc:
        return False, str(exc)
    try:
        gaps = group.set_limits(1 << 20, 1 << 20)  # far above anything: only the files count
    finally:
        group.remove()
    limits = "cannot enforce " + ", ".join(gaps) if gaps else "max_processes and memory_mb enforced"
    return True, f"groups under {os.path.dirname(group.tracking)}; {limits}"


def _capabilities(userns: bool) -> tuple[bool, str]:
    """Whether the launch can leave the agent no capability at all."""
    try:
        effective, permitted, _inheritable = privileges.capabilities()
    except privileges.PrivilegeError as exc:
        return False, str(exc)
    if effective & (1 << privileges.CAP_SETPCAP):
        return True, "CAP_SETPCAP held: every set, the bounding set too, can be emptied"
    if not permitted:
        bounding = "emptied in the user namespace" if userns else "kept: nothing to regain"
        return True, f"none held; no_new_privs keeps it so (bounding set {bounding})"
    return False, f"holds {permitted:#x} without CAP_SETPCAP: the bounding set cannot be emptied"


def _pty() -> tuple[bool, str]:
    try:
        master, slave = os.openpty()
    except OSError as exc:
        return False, f"openpty: {_why(exc)}"
    try:
        return True, f"openpty gives {os.ttyname(slave)}"
    finally:
        os.close(master)
        os.close(slave)


def _landlock() -> tuple[bool, str]:
    abi = landlock_abi()
    if abi < 1:
        return False, "landlock_create_ruleset: unsupported or disabled (lsm= on the kernel line)"
    lacking = [what for level, what in _LANDLOCK_ADDS.items() if level > abi]
    return True, f"ABI {abi}" + (f"; lacks {', '.join(lacking)}" if lacking else "")


# -- putting it together -------------------------------------------------------------------


def probe(*, refresh: bool = False) -> list[Layer]:
    """Every layer, in the order they stand between the agent and the host."""
    if refresh:
        for cached in (_seccomp, _namespaces, _cgroup):
            cached.cache_clear()
    root = os.geteuid() == 0
    layers: list[Layer] = []

    def add(name: str, ok: bool, detail: str, needed: bool, degrade: str | None) -> None:
        layers.append(Layer(name, ok, needed, degrade, detail, "" if ok else COSTS[name]))

    for part, why in _seccomp().items():
        add(f"seccomp_{part}", not why, why or "works", True, None)
    ok, detail = _landlock()
    add("landlock", ok, detail, True, "landlock")
    namespaces = _namespaces()
    for name, why in namespaces.items():
        needed = name != "user" or not root
        shown = why or ("can be made" if needed else "can be made (a run as root needs none)")
        add(f"{name}_namespace", not why, shown, needed, name)
    ok, detail = _cgroup()
    add("cgroup", ok, detail, root, "cgroup")  # a normal user's run goes on without one
    ok, detail = _capabilities(userns=not namespaces.get("user", "x"))
    add("capabilities", ok, detail, True, None)
    ok, detail = _pty()
    add("pty", ok, detail, False, None)
    native, detail = fastpath.status()
    add("native_path", native, detail, False, None)
    ok, detail = fanotify.status()
    if ok and not native:
        ok, detail = False, "needs the native path"
    add("read_lane", ok, detail, False, None)
    return sorted(layers, key=lambda layer: list(COSTS).index(layer.name))


def refusals(layers: list[Layer]) -> list[Layer]:
    """The layers without which a default run refuses to start."""
    return [layer for layer in layers if layer.needed and not layer.available]


def host_layers() -> dict[str, object]:
    """The facts for `run --json-status` and the audit start record: name -> fields.

    Cached per process: the first call forks the probes, later ones are free.
    """
    return {layer.name: layer.as_dict() for layer in probe()}
