"""The supervisor's side of starting an agent through the trampoline."""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from ..kernel.fastpath import pid_of
from ..kernel.proc import pidfd_getfd
from ..kernel.seccomp import FilterProgram
from ..policy.floor import FloorPlan
from . import trampoline
from .broker import BrokerClient
from .trampoline import Isolation


class LaunchError(Exception):
    """The agent could not be set up; `run` exits 125."""


@dataclass(repr=False, eq=False)  # a record: fewer generated methods to compile at import
class LaunchPlan:
    """What launch.start sets up: the agent's program and everything around it."""

    executable: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    seccomp: FilterProgram  # the agent's filter (kernel.seccomp.filter_program)
    landlock: FloorPlan | None = None
    rlimits: dict[str, int] = field(default_factory=dict)
    isolation: Isolation = field(default_factory=Isolation)
    terminal: int = -1  # the slave of the agent's pty, or -1: it keeps our stdio
    native: bool = False  # the broker's native path receives the notifications
    # What the broker asks on a miss of its allow cache (its copy of the judge, forked),
    # and what readies it (run in the broker while the supervisor takes the listener).
    native_decider: Callable[[bytes, int], int] | None = None
    native_prepare: Callable[[], None] | None = None
    # The read lane (readlane.py): the filter lets reads through, and the
    # agent's mounts are marked for fanotify before it runs.
    read_lane: bool = False
    # The `cgroup.procs` files of the agent's groups: the trampoline writes itself
    # into each before anything forks.
    cgroup_procs: tuple[str, ...] = ()


@dataclass(repr=False, eq=False)
class Launched:
    """What the supervisor holds of a started agent."""

    pid: int  # the trampoline: the supervisor's child, whose exit is the agent's
    pidfd: int
    agent_pid: int  # the agent's main process, as this supervisor sees it
    listener: int
    status_fd: int  # EOF when the exec succeeded, `E<errno>` when it failed
    go_fd: int
    broker: BrokerClient
    degraded: list[str] = field(default_factory=list)
    egress: socket.socket | None = None  # the proxy's listener in the agent's netns
    # With the native path: where the broker forwards what it does not answer,
    # and the page it counts the notifications it answered itself in.
    forward: socket.socket | None = None
    native_count: mmap.mmap | None = None
    # The master of the relay pty its init made in the agent's own devpts, or -1
    # (the supervisor's pty stays the relay's).
    pty_master: int = -1
    # The read lane's fanotify group, or -1.  Held until the agent is gone: a
    # group whose last fd closes lets every pending open go ahead.
    read_group: int = -1

    def answered_natively(self) -> int:
        return int.from_bytes(self.native_count[:8], "little") if self.native_count else 0

    def release(self) -> None:
        """Let the agent exec.  The supervisor must be answering by now."""
        os.write(self.go_fd, b"G")
        os.close(self.go_fd)
        self.go_fd = -1


def warm_cgroup_moves(group: str) -> None:
    """Get the kernel's wait for a move into a cgroup going now, in a throwaway process.

    The first move of a process into a cgroup waits for an RCU grace period
    (5-20 ms) before anything moves, and a move that comes while that wait
    is under way, or shortly after it, waits only for what is left of it.
    So once an agent's cgroup exists, an `/bin/echo 0` whose stdout is the
    group's cgroup.procs moves itself in (and exits); the trampoline's own
    move, milliseconds later, is then quick.  Best effort: without an echo,
    or if its move fails, nothing changes.  The supervisor reaps it.
    """
    with contextlib.suppress(OSError):
        os.posix_spawn(
            _ECHO,
            ["echo", "0"],
            {},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 1, f"{group}/cgroup.procs", os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )


_ECHO = "/bin/echo"


def start(
    plan: LaunchPlan, meanwhile: Callable[[], None] = lambda: None, timeout: float = 30.0
) -> Launched:
    """Fork the trampoline, call `meanwhile`, take the listener.

    The trampoline puts itself in the agent's cgroups (`plan.cgroup_procs`):
    the first move into a cgroup waits out an RCU grace period in the kernel
    (5-20 ms), and setting up the namespaces, the init and the agent takes a
    few more, so `meanwhile` is the supervisor's time to do what must be done
    before the agent runs but not before the fork.  If it raises, the
    trampoline is killed and the exception goes on.

    The agent has not exec'd yet.  The caller must be single-threaded: the
    children run Python until the exec.
    """
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    supervisor_pid = os.getpid()
    # A shared page (inherited across the fork) the broker counts its answers in.
    native_count = mmap.mmap(-1, mmap.PAGESIZE) if plan.native else None
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            ours.close()
            os.close(status_r)
            os.close(go_w)
            trampoline.become_agent(
                trampoline.Stage(
                    supervisor_pid=supervisor_pid,
                    status_fd=status_w,
                    go_fd=go_r,
                    channel_fd=theirs.detach(),
                    executable=plan.executable,
                    argv=plan.argv,
                    env=plan.env,
                    cwd=plan.cwd,
                    seccomp=plan.seccomp,
                    landlock=plan.landlock,
                    rlimits=plan.rlimits,
                    isolation=plan.isolation,
                    terminal_fd=plan.terminal,
                    native_count=native_count,
                    native_decider=plan.native_decider if plan.native else None,
                    native_prepare=plan.native_prepare,
                    read_lane=plan.read_lane,
                    cgroup_procs=plan.cgroup_procs,
                )
            )
        finally:
            os._exit(125)
    os.close(status_w)
    os.close(go_r)
    theirs.close()
    pidfd = os.pidfd_open(pid)
    agent_pidfd = -1

    def abandon() -> None:
        for fd in (status_r, go_w, pidfd, agent_pidfd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        ours.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    def fail(reason: str) -> LaunchError:
        abandon()
        return LaunchError(reason)

    try:
        meanwhile()
    except BaseException:
        abandon()
        raise
    degraded: list[str] = []
    ready = ""
    for line in _read_lines(status_r, timeout):
        if line.startswith("D"):
            degraded.append(line[1:])
        elif line.startswith("L"):
            ready = line
            break
        else:
            detail = line[1:].split(" ", 1)[-1].strip() if line.startswith("F") else line
            if detail.startswith(trampoline.PLACING + ": "):
                placing = detail.removeprefix(trampoline.PLACING + ": ")
                raise fail(f"cannot place the agent in its cgroup: {placing}")
            raise fail(f"cannot sandbox the agent: {detail}")
    if not ready:
        raise fail("cannot sandbox the agent: the trampoline exited")
    if not select.select([ours], [], [], timeout)[0]:
        raise fail("cannot sandbox the agent: its init did not answer")
    message, fds, _flags, _addr = socket.recv_fds(ours, 16, 3)
    # "A", then E (egress listener) and P (pty master) name the fds after the pidfd.
    if not message.startswith(b"A") or len(fds) != len(message):
        for fd in fds:
            os.close(fd)
        raise fail("cannot sandbox the agent: its init sent no pidfd")
    agent_pidfd, named = fds[0], dict(zip(message[1:].decode(), fds[1:], strict=True))
    egress = socket.socket(fileno=named["E"]) if "E" in named else None
    pty_master = named.get("P", -1)
    if egress is None and plan.isolation.egress_port:
        raise fail("cannot sandbox the agent: its init sent no egress listener")
    forward: socket.socket | None = None
    read_group = ruleset = -1
    try:
        agent_pid = pid_of(agent_pidfd)
        listener = pidfd_getfd(agent_pidfd, int(ready[1:]))
        handed = [listener]
        if plan.read_lane:
            read_group, ruleset = _read_lane(agent_pid)
        if plan.native:
            # The broker receives the notifications and forwards what it does not answer.
            forward, broker_end = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
            )
            forward.setblocking(False)
            handed.append(broker_end.fileno())
        if read_group >= 0:
            handed += [read_group, ruleset]
        try:
            socket.send_fds(ours, [b"L"], handed)
        finally:
            if forward is not None:
                broker_end.close()
            if ruleset >= 0:
                os.close(ruleset)
    except (OSError, ValueError) as exc:
        if forward is not None:
            forward.close()
        if read_group >= 0:
            os.close(read_group)
        raise fail(f"cannot take the seccomp listener: {exc}") from exc
    os.close(agent_pidfd)
    return Launched(
        pid,
        pidfd,
        agent_pid,
        listener,
        status_r,
        go_w,
        BrokerClient(ours),
        degraded,
        egress,
        forward,
        native_count if forward is not None else None,
        pty_master,
        read_group,
    )


def _read_lane(agent_pid: int) -> tuple[int, int]:
    """The agent's fanotify group, its mounts marked, and the Landlock ruleset
    of the broker's reader thread (see kernel/fanotify.py)."""
    from ..kernel import fanotify, landlock

    for kind in ("mnt", "pid"):
        # Never the host's mounts (every host open would wait for the broker),
        # and the broker must be the init that ends the agent's processes.
        if (
            os.stat(f"/proc/{agent_pid}/ns/{kind}").st_ino
            == os.stat(f"/proc/self/ns/{kind}").st_ino
        ):
            raise ValueError(f"the read lane needs the agent's own {kind} namespace")
    # The ruleset first: it lists the agent's root, which once marked waits
    # for the broker's reader (not running before it has the group).
    ruleset = landlock.reader_ruleset(f"/proc/{agent_pid}/root")
    try:
        group = fanotify.open_group()
    except BaseException:
        os.close(ruleset)
        raise
    try:
        fanotify.mark_agent_mounts(group, agent_pid)
    except BaseException:
        os.close(group)
        os.close(ruleset)
        raise
    return group, ruleset


def _read_lines(fd: int, timeout: float) -> list[str]:
    """Lines up to and including the first that is not a `D` note."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    lines: list[str] = []
    while True:
        while b"\n" in data:
            raw, data = data.split(b"\n", 1)
            line = raw.decode(errors="replace")
            lines.append(line)
            if not line.startswith("D"):
                return lines
        if not poller.poll(int(timeout * 1000)):
            return lines
        chunk = os.read(fd, 4096)
        if not chunk:
            return lines
        data += chunk
