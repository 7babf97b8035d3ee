"""The trampoline: the forked processes that become the agent, its broker and its init.

The supervisor is single-threaded when it launches an agent, so it forks
directly (no second Python start-up, no preexec_fn in a threaded parent).
Three processes stand between the supervisor and the agent's exec, each
with one job:

    supervisor
      └─ trampoline     rlimits; into the agent's cgroups; the user namespace
         │              (a normal user); unshare mount, PID, UTS, IPC and
         │              network; waits for the init
         └─ init        PID 1 of the new PID namespace: mounts (private /tmp
            │           and /run, /proc, read-only /sys), the user switch, every
            │           capability dropped, Landlock; then it is the broker
            │           (`broker.py`) and reaps the tree
            └─ agent    setsid, seccomp filter, waits for the go byte, execve

unshare(CLONE_NEWPID) moves only children into the new namespace, and /proc
must be mounted from inside it, hence the init.  The broker is the init: it
has the agent's credentials, namespaces and Landlock domain, but no seccomp
filter.  The trampoline stays as a plain waiter, so the supervisor keeps a
direct child whose exit means the whole namespace is gone; it exits with the
agent's status (a signal is raised again on itself).

Status pipe (every stage writes; close-on-exec, so EOF after the exec):
    D<text>          a namespace the operator let degrade is missing
    F<errno> <text>  fatal: nothing was exec'd, `run` exits 125
    L<fd>            the agent is ready; fd <fd> in it is its seccomp listener
    E<errno>         the agent's execve failed
Broker channel (SOCK_SEQPACKET): the init sends b"A" with a pidfd of the
agent (and, when the agent egresses through the proxy, the listening socket
it bound on loopback inside the agent's network namespace); the supervisor
answers b"L" with the listener (and, with the native path, the socket the
broker forwards the notifications it does not answer on), then drives the
broker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import resource
import select
import signal
import socket
import struct
import termios
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from ..kernel import landlock, namespaces, privileges, seccomp
from ..kernel.privileges import UserSpec
from ..policy.floor import FloorPlan
from .broker import run_broker

# Signals the trampoline must survive: they reach it with the terminal's
# process group (^C), and the init forwards none of them: the agent gets its
# own from the supervisor.
_WAITER_IGNORES = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTERM, signal.SIGHUP)
_WAIT_STATUS = struct.Struct("<i")
PLACING = "cgroup"  # the step of an `F` line that failed to enter the agent's cgroups


@dataclass(repr=False, eq=False)  # a record: fewer generated methods to compile at import
class Isolation:
    """What the agent gets besides the policy: namespaces, credentials, mounts."""

    namespaces: frozenset[str] = frozenset()  # of kernel.namespaces.FLAGS
    allow_degraded: frozenset[str] = frozenset()  # namespaces it may run without
    user: UserSpec | None = None  # run as this user (root only)
    keep: tuple[str, ...] = ()  # host paths under /tmp or /run to bind into the private ones
    keep_read_only: tuple[str, ...] = ()  # bound read-only wherever they are (its Python)
    private_run: tuple[str, ...] = ()  # the runtime directories that get a tmpfs (/run)
    own_dirs: tuple[str, ...] = ()  # made in those tmpfs, the agent's own (its TMPDIR)
    egress_port: int = 0  # bind the egress proxy's listener here in the agent's netns


@dataclass(repr=False, eq=False)
class Stage:
    """Everything the forked processes need; plain values only."""

    supervisor_pid: int
    status_fd: int
    go_fd: int
    channel_fd: int
    executable: str
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    seccomp: seccomp.FilterProgram  # built by the supervisor; the agent only loads it
    landlock: FloorPlan | None
    rlimits: Mapping[str, int]
    isolation: Isolation = field(default_factory=Isolation)
    terminal_fd: int = -1  # the slave of the agent's own pty
    # Shared with the supervisor: how many notifications the native path answered.
    native_count: mmap.mmap | None = None
    # The broker's copy of the judge, asked on a miss of its allow cache (see broker.py).
    native_decider: Callable[[bytes, int], int] | None = None
    # Readies that copy for its first misses (it builds what it needs when first asked).
    native_prepare: Callable[[], None] | None = None
    # The read lane is on (readlane.py): the broker gets a copy of the mount tree.
    read_lane: bool = False
    # The agent's cgroups (their `cgroup.procs` files): the trampoline moves itself
    # into each before it forks, so every process of the agent starts inside.
    cgroup_procs: Sequence[str] = ()


def _line(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (text.replace("\n", " ") + "\n").encode())


def _fail(status_fd: int, stage: str, exc: BaseException) -> NoReturn:
    err = getattr(exc, "errno", None) or 1
    _line(status_fd, f"F{err} {stage}: {exc}")
    os._exit(125)


def _close_all_but(keep: Iterable[int]) -> None:
    low = 3
    for fd in sorted({k for k in keep if k >= 3}):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _reset_signals() -> None:
    """Default dispositions and an empty mask: both survive execve."""
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def become_agent(stage: Stage) -> NoReturn:
    """The trampoline; runs in the forked child and never returns."""
    step = "setup"
    plan = stage.isolation
    entered: set[str] = set()
    try:
        privileges.die_with_parent(signal.SIGKILL)
        if os.getppid() != stage.supervisor_pid:
            os._exit(125)  # the supervisor died before the line above took effect
        _reset_signals()
        for sig in _WAITER_IGNORES:
            signal.signal(sig, signal.SIG_IGN)
        _close_all_but((stage.status_fd, stage.go_fd, stage.channel_fd, stage.terminal_fd))
        for name, value in stage.rlimits.items():
            limit = getattr(resource, name)
            resource.setrlimit(limit, (value, value))
        # Into the agent's cgroups before anything forks.  We move ourselves, so
        # the supervisor need not wait for the kernel's grace period of the
        # first move (see launch.start).
        step = PLACING
        for procs in stage.cgroup_procs:
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"%d" % os.getpid())
            finally:
                os.close(fd)
        step = "namespaces"
        for name in namespaces.FLAGS:
            if name not in plan.namespaces:
                continue
            try:
                if name == "user":
                    namespaces.enter_user_namespace(os.geteuid(), os.getegid())
                else:
                    namespaces.unshare(name)
                entered.add(name)
            except namespaces.NamespaceError as exc:
                if name not in plan.allow_degraded:
                    raise
                _line(stage.status_fd, f"D{exc}")
        wait_r, wait_w = os.pipe2(os.O_CLOEXEC)
    except BaseException as exc:
        _fail(stage.status_fd, step, exc)
    init = os.fork()
    if init == 0:
        try:
            os.close(wait_r)
            _init(stage, entered, wait_w)
        finally:
            os._exit(125)
    for fd in (stage.status_fd, stage.go_fd, stage.channel_fd, wait_w):
        os.close(fd)
    while True:
        try:
            _pid, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    try:
        data = os.read(wait_r, _WAIT_STATUS.size)
    except OSError:
        data = b""
    if len(data) == _WAIT_STATUS.size:
        status = _WAIT_STATUS.unpack(data)[0]  # the agent's own status
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):
            signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [number])
            os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _init(stage: Stage, entered: set[str], wait_fd: int) -> NoReturn:
    """PID 1 of the agent's namespace (or a subreaper without one), then its broker."""
    step = "init"
    plan = stage.isolation
    try:
        privileges.die_with_parent(signal.SIGKILL)
        privileges.set_name(b"agentsup-init")
        # No controlling terminal: the broker opens /dev/tty for the agent, and
        # the user's terminal (ours until now) must not be what that opens.
        os.setsid()
        own_view = -1
        if "mount" in entered:
            step = "mounts"
            namespaces.make_mounts_private()
            namespaces.mount_private_tmp(plan.keep)
            # The host's daemons' sockets out of sight: only what the agent
            # needs of the host's /run is bound back in.  Before the devices:
            # where /dev/shm is a symlink into /run, its tmpfs lands in ours.
            namespaces.mount_private_run(plan.keep, plan.private_run)
            # After what is kept: a directory on the way may be one's.
            owner = (plan.user.uid, plan.user.gid) if plan.user is not None else None
            namespaces.make_own_directories(plan.own_dirs, owner)
            writable = [path for path in plan.keep if path not in plan.keep_read_only]
            namespaces.bind_read_only(plan.keep_read_only, writable)
            namespaces.mount_private_devices()
            if "pid" in entered:
                namespaces.mount_proc(hide_others=stage.read_lane)
            # Before the read-only binds: /proc/sys is one (of our own procfs).
            namespaces.hide_other_procfs()
            if "ipc" in entered:
                namespaces.mount_own_mqueue()
            namespaces.kernel_filesystems_read_only()
            namespaces.make_read_only()
            namespaces.devices_only_in_dev()
            if stage.read_lane:
                own_view = namespaces.clone_tree()
        pty_master = -1
        if "mount" in entered and stage.terminal_fd >= 0:
            # The relay pty, remade in the agent's own devpts: there `tty` and
            # ttyname() find it.  The supervisor relays this master instead.
            try:
                pty_master, slave = namespaces.own_pty(stage.terminal_fd)
            except OSError as exc:
                note = f"a pty in its own devpts ({exc.strerror}): relaying the host's"
                _line(stage.status_fd, "D" + note)
            else:
                os.close(stage.terminal_fd)
                stage.terminal_fd = slave
        egress = None
        if "net" in entered:
            namespaces.loopback_up()
            if plan.egress_port:
                step = "egress"
                # Bound here, inside the agent's namespace: the supervisor serves it
                # from the host's, so it is the one way out.  Close-on-exec.
                egress = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                egress.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                egress.bind(("127.0.0.1", plan.egress_port))
                egress.listen(128)
        # Landlock first: its rules open paths, which the agent's own user
        # (--user) may not be able to open.  The domain stays on through the drop.
        step = "landlock"
        if stage.landlock is not None:
            # The agent's standard streams and pty: what it may reopen by fd name.
            streams = (0, 1, 2) if stage.terminal_fd < 0 else (0, 1, 2, stage.terminal_fd)
            # Only the queues of its own IPC namespace: the host's stay refused.
            queues = -1
            if "ipc" in entered:
                with contextlib.suppress(namespaces.NamespaceError):  # then refused, as before
                    queues = namespaces.own_mqueue_root()
            try:
                landlock.apply_floor(stage.landlock, streams, queues)
            finally:
                if queues >= 0:
                    os.close(queues)
        step = "privileges"
        for note in privileges.drop_privileges(plan.user):
            _line(stage.status_fd, f"D{note}")
        # A change of uid clears the parent-death signal: set it again, so the
        # init (and the agent's whole namespace) never outlives the trampoline.
        privileges.die_with_parent(signal.SIGKILL)
        if "pid" not in entered:
            privileges.become_subreaper()
        # Blocked before the fork, so nothing is lost; the agent unblocks.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    except BaseException as exc:
        _fail(stage.status_fd, step, exc)
    agent = os.fork()
    if agent == 0:
        try:
            _agent(stage, wait_fd)
        finally:
            os._exit(125)
    # The agent runs with our uid: it must not read our memory, fds or environ.
    privileges.set_dumpable(False)
    os.close(stage.go_fd)
    channel = socket.socket(fileno=stage.channel_fd)
    listener = forward = read_group = reader_ruleset = -1
    try:
        pidfd = os.pidfd_open(agent)
        # "A", then E (the egress listener) and P (the pty master) for the fds after the pidfd.
        handed, message = [pidfd], b"A"
        if egress is not None:
            handed, message = [*handed, egress.fileno()], message + b"E"
        if pty_master >= 0:
            handed, message = [*handed, pty_master], message + b"P"
        socket.send_fds(channel, [message], handed)
        os.close(pidfd)
        if pty_master >= 0:
            os.close(pty_master)
        if egress is not None:
            egress.close()
        if stage.native_decider is not None and stage.native_prepare is not None:
            # While the supervisor takes the listener: the agent's first opens
            # would wait for it otherwise.
            with contextlib.suppress(Exception):
                stage.native_prepare()
        if select.select([channel], [], [], 60)[0]:
            message, fds, _flags, _addr = socket.recv_fds(channel, 16, 4)
            if message == b"L" and fds:
                # The listener, then with the native path its forward socket,
                # then with the read lane its fanotify group and reader ruleset.
                listener = fds[0]
                forward = fds[1] if len(fds) > 1 else -1
                if len(fds) == 4:
                    read_group, reader_ruleset = fds[2], fds[3]
    except OSError:
        pass
    os.close(stage.status_fd)
    if listener < 0:
        os.kill(agent, signal.SIGKILL)
    os._exit(
        run_broker(
            channel,
            listener,
            agent,
            wait_fd,
            forward,
            stage.native_count,
            stage.native_decider,
            terminal=stage.terminal_fd,  # /dev/tty for the agent: see Broker._controlling_terminal
            read_lane=(read_group, reader_ruleset, own_view),
        )
    )


_NAME_PART = 2048  # well under PATH_MAX: what `_chdir` names at a time


def _chdir(path: str) -> None:
    """os.chdir, also into a directory deeper than PATH_MAX (the caller's, in
    the workspace, as a shell reaches it): from the root, part by part."""
    try:
        os.chdir(path)
        return
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    os.chdir("/")
    part = ""
    for name in filter(None, path.split("/")):
        if part and len(part) + 1 + len(name) > _NAME_PART:
            os.chdir(part)
            part = ""
        part = f"{part}/{name}" if part else name
    if part:
        os.chdir(part)


def _agent(stage: Stage, wait_fd: int) -> NoReturn:
    step = "agent"
    try:
        os.close(stage.channel_fd)
        os.close(wait_fd)
        _reset_signals()
        privileges.die_with_parent(signal.SIGKILL)
        os.setsid()  # no controlling terminal of the user's to push input into
        if stage.terminal_fd >= 0:
            step = "terminal"
            # Its own pty instead: the supervisor relays it to the user's terminal.
            fcntl.ioctl(stage.terminal_fd, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2) if os.isatty(2) else (0, 1):
                os.dup2(stage.terminal_fd, fd)
            os.close(stage.terminal_fd)
        _chdir(stage.cwd)
        step = "seccomp"
        listener = seccomp.install_program(stage.seccomp)
    except BaseException as exc:
        _fail(stage.status_fd, step, exc)
    _line(stage.status_fd, f"L{listener}")
    if os.read(stage.go_fd, 1) != b"G":
        os._exit(125)
    os.close(listener)
    os.close(stage.go_fd)
    try:
        os.execve(stage.executable, list(stage.argv), dict(stage.env))
    except OSError as exc:
        _line(stage.status_fd, f"E{exc.errno}")
        os._exit(127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126)
    os._exit(126)
