"""Turn trapped syscalls into events, and carry out the answer.

Each notification goes through one fixed sequence: receive, decode, decide,
re-validate, respond (STYLE.md example 6).

TOCTOU: a path in the agent's memory can be rewritten by another thread
after we read it.  So a path decision is never enforced by CONTINUE alone.
The file syscalls are done for the agent by its broker (`broker.py`), which
holds exactly the agent's rights, on the object that was decided about:

* open/openat/openat2/creat: the broker resolves the path (a read is opened
  at once), the policy decides on the real path of what it pinned, and the
  broker reopens that very object and injects it (ADDFD + SEND);
* unlink, rmdir, mkdir, rename, link, symlink, truncate, chmod, chown,
  extended attributes, times and inode flags: the broker pins the parent
  directory (or the object, or takes a copy of the agent's fd), the policy
  decides on its real path, and the broker acts on the pinned fd;
* connect, bind, listen, and IP and unix datagrams: on a copy of the
  agent's socket, with the address that was copied and decided on (and for
  unix datagrams, the fds passed, taken from the agent); netlink bind,
  connect, sendto and sendmsg too, judged by the socket's protocol.

execve cannot be done on the agent's behalf: it is decided and then
CONTINUEd, with Landlock (exec roots) as the floor under it; the README's
threat model says what remains.  Calls about other processes are let
through only for the agent's own tree.

Whatever an agent passes, serving one notification never ends the loop: a
bad pointer is EFAULT, anything unforeseen fails that syscall with EIO and
is audited (`Mediator._serve_one`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import select
import signal
import socket
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..events import DEFAULT_RULE_ID, ActionType, Decision, Event, Layer, Response
from ..kernel import fastpath as _fastpath
from ..kernel import proc as _proc
from ..kernel import seccomp as _seccomp
from ..policy.engine import MoveEscape
from . import broker, placement
from .broker import BrokerClient, Pinned
from .protected import ProtectedInodes, WalkFailed
from .syscalls import ALWAYS_REFUSED, MEDIATED

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4

# One definition, shared with the broker's native path.
_WRITE_FLAGS = _fastpath.WRITE_FLAGS
_VALID_OPEN_FLAGS = _fastpath.VALID_OPEN_FLAGS


# (fd, on_ready, on_timeout, timeout_seconds): the loop calls exactly one of them.
WaitWritable = Callable[[int, Callable[[], None], Callable[[], None], float], None]
# The loop's timer: call this in so many seconds.
CallLater = Callable[[float, Callable[[], None]], object]

# The largest payload a sendto is copied for (a UDP datagram's limit).
_MAX_DATAGRAM = 65536
_SOCKADDR_UN_SIZE = 110  # sizeof(struct sockaddr_un)
_SOCKADDR_NL_SIZE = 12  # sizeof(struct sockaddr_nl)
_SOCKADDR_STORAGE = 128  # the longest sockaddr the kernel copies
# The largest netlink message copied for a send (the send buffer bounds it first).
_MAX_NETLINK_MESSAGE = 4 << 20
# Seconds between connects to a unix listener whose backlog is full.
_BACKLOG_WAIT_MIN = 0.001
_BACKLOG_WAIT_MAX = 0.05
_MAX_MMSG = 64  # messages of one sendmmsg sent for the agent (the rest: a short count)
_UIO_MAXIOV = 1024  # the most messages the kernel takes from one sendmmsg
# Unix datagrams, which the broker sends: at most this many payload bytes for
# one syscall (a larger datagram is EMSGSIZE, as past a default send buffer;
# a sendmmsg past it gets a short count), this much control data (the kernel's
# optmem limit: ENOBUFS past it), and this many socket files pinned at once.
_MAX_UNIX_PAYLOAD = 4 << 20
_MAX_CONTROL = 128 << 10
_MAX_UNIX_PINS = 64
# What blocked sends (a full receiver) may hold in the supervisor, all agent
# calls together: past it a blocking send is EAGAIN at once, never unbounded.
_MAX_PARKED_BYTES = 64 << 20
# Parked sends of one agent at once, and the fds they hold (our duplicate of
# the socket, one of each distinct fd passed, the socket files pinned).  An
# empty datagram costs no payload bytes, so fds are counted too: one agent
# gets a share, every agent of this process (a daemon serves many from one
# loop) at most _MAX_PARKED_FDS together, and never more than a quarter of
# our RLIMIT_NOFILE (often 1024): the audit log, policy watch, hooks and
# cgroup sweeps must always find fds.
_MAX_PARKED_SENDS = 64
_MAX_PARKED_FDS_PER_AGENT = 256
_MAX_PARKED_FDS = 1024


@dataclass(slots=True)
class _ParkedFds:
    """The fds parked sends hold, every mediator of this process together."""

    held: int = 0


_ALL_PARKED = _ParkedFds()


_MSG_FASTOPEN = 0x20000000
_SETID = stat.S_ISUID | stat.S_ISGID
# What the kernel answers a syscall whose name has no last component to make,
# remove or move (`_no_name`): an empty name, a last "." or "..", or "/"
# itself.  By syscall, in that order; none of them has any effect.  (A link
# of such a name is a link of a directory: `_link_of_a_directory`.)
_UNLINK_NO_NAME = (errno.ENOENT, errno.EISDIR, errno.EISDIR, errno.EISDIR)
_RMDIR_NO_NAME = (errno.ENOENT, errno.EINVAL, errno.ENOTEMPTY, errno.EBUSY)
_MAKE_NO_NAME = (errno.ENOENT, errno.EEXIST, errno.EEXIST, errno.EEXIST)  # and a link's new name
_CREATE_NO_NAME = (errno.ENOENT, errno.EISDIR, errno.EISDIR, errno.EISDIR)  # open(O_CREAT)
_MOVE_NO_NAME = (errno.ENOENT, errno.EBUSY, errno.EBUSY, errno.EBUSY)
_NOREPLACE_NO_NAME = _MAKE_NO_NAME  # a rename's new name with RENAME_NOREPLACE
_RENAME_FLAGS = RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT
_NODE_KINDS = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
# struct msghdr on x86_64: name, namelen, iov, iovlen, control, controllen, flags.
_MSGHDR = struct.Struct("<QI4xQQQQi4x")
# struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type; then the data,
# and the next one at the next multiple of 8.
_CMSGHDR = struct.Struct("<QiI")
_SCM_CREDENTIALS = 2
_UCRED = struct.Struct("<iII")  # struct ucred: pid, uid, gid

# execve's limits: one argument (MAX_ARG_STRLEN), and all of them together
# (the kernel allows a quarter of the stack limit; 4 MiB is a 16 MiB stack).
_MAX_ARG_STRLEN = 131072
_MAX_ARGV_BYTES = 4 << 20
# An exec's arguments are read in one piece when they start within this many
# bytes of each other (and the last is shorter than _ARGV_LAST).
_ARGV_SPAN = 16384
_ARGV_LAST = 256

# A blocking connect the supervisor finishes for the agent gives up after this
# long, about what the kernel's SYN retries take by default.
CONNECT_TIMEOUT = 130.0
# A blocking unix datagram to a full receiver is sent again and again while
# the agent waits in its call, for at most this long (or its SO_SNDTIMEO),
# then answered EAGAIN; the kernel would wait as long as the receiver does.
SEND_TIMEOUT = 130.0


# The f* variants act on the agent's own fd, which travels with the request.
_FD_OPS = {
    broker.CHMOD: broker.FD_CHMOD,
    broker.CHOWN: broker.FD_CHOWN,
    broker.XATTR: broker.FD_XATTR,
    broker.UTIMES: broker.FD_UTIMES,
}

# Extended attributes (<linux/limits.h>, <linux/xattr.h>).
_XATTR_NAME_MAX = 255
_XATTR_SIZE_MAX = 65536
_XATTR_CREATE = 1
_XATTR_REPLACE = 2
_XATTR_ARGS = struct.Struct("<QII")  # struct xattr_args: value, size, flags

# How many bytes of argument each notified ioctl reads.
_IOCTL_ARGUMENT = {
    _seccomp.FS_IOC_SETFLAGS: 4,  # an int, whatever the request's size field says
    _seccomp.FS_IOC32_SETFLAGS: 4,
    _seccomp.FS_IOC_FSSETXATTR: 28,  # struct fsxattr
    # The generation: the kernel reads an int, whatever the request says.
    _seccomp.FS_IOC_SETVERSION: 4,
    _seccomp.FS_IOC32_SETVERSION: 4,
    _seccomp.EXT4_IOC_SETVERSION: 4,
    _seccomp.EXT4_IOC32_SETVERSION: 4,
}

# What changes a file's content or metadata, shared by all its names (and
# the open flags that do: `broker.CHANGES_FILE`).
_CHANGES = frozenset({ActionType.FILE_WRITE, ActionType.FILE_CHMOD})


def _other_names(node: Resolved) -> bool:
    """Whether `node` is a file (a symlink too: its times are shared) with
    other names (hard links), which may lie where the agent may not write:
    nothing of it is changed (`Judge.refuse_hard_linked`)."""
    return not stat.S_ISDIR(node.pinned.mode) and node.pinned.nlink > 1


# Bounds on what is kept per agent process (see Mediator.__init__).
_PIDFD_CACHE = 64
_PER_PROCESS_CACHE = 4096
_READS_REMEMBERED = 1024  # names of plainly allowed reads, for `Mediator._expected_read`


class _Tree(Protocol):
    @property
    def root_pid(self) -> int: ...  # the trampoline: placed with the tree, never by the agent


class Judge(Protocol):
    """The judge's side: evaluate an event, record it, apply signals."""

    allow_cache: set[tuple[ActionType, str]]
    main_pid: int  # the agent's first process: its session holds the relay pty

    @property
    def tree(self) -> _Tree | None: ...

    def judge(self, event: Event, tid: int) -> Response: ...

    def judge_event(
        self, event: Event, tid: int, on_settle: Callable[[bool], None] | None = None
    ) -> tuple[Decision, Response]: ...

    def refuse_always(self, syscall: str, tid: int) -> None: ...

    def refuse_outside(self, syscall: str, tid: int, target: str) -> None: ...

    def refuse_outside_view(
        self, syscall: str, tid: int, target: str, layer: Layer = ...
    ) -> None: ...

    def refuse_not_opened(self, syscall: str, tid: int, target: str) -> None: ...

    def refuse_exec_unchecked(self, syscall: str, tid: int, target: str) -> None: ...

    def refuse_hard_linked(self, syscall: str, tid: int, target: str) -> None: ...

    def mediation_failed(self, syscall: str, tid: int, error: str) -> None: ...

    def refuses_writes(self, target: str) -> bool: ...

    def refuse_unreadable_program(self, syscall: str, tid: int, target: str) -> None: ...

    def interpreter_refused(
        self, syscall: str, tid: int, program: str, interpreter: str
    ) -> None: ...

    def broker_gone(self, syscall: str, tid: int, error: str) -> None: ...

    def in_tree(self, pid: int) -> bool: ...

    def group_in_tree(self, pgid: int) -> bool: ...

    def carried_check(
        self, old: str, new: str, tree: Callable[[], Iterable[str]] | None
    ) -> MoveEscape | None: ...


def _identity(node: Resolved) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what a name held when it was looked at; None if nothing."""
    return None if node.error else (node.pinned.dev, node.pinned.ino)


def _never_through_magic(pinned: Pinned) -> Pinned:
    """A lookup the broker could not walk as the agent's fails as the kernel's ELOOP."""
    if pinned.error == broker.THROUGH_MAGIC_LINK:
        pinned.error = errno.ELOOP
    return pinned


@dataclass(frozen=True, slots=True)
class UnixControl:
    """What the control data of a sendmsg on a unix socket asks for."""

    fds: tuple[int, ...] = ()  # SCM_RIGHTS: the sender's fd numbers, in order
    credentials: tuple[int, int, int] | None = None  # SCM_CREDENTIALS: (pid, uid, gid)


def unix_control(data: bytes) -> UnixControl:
    """The control messages of a unix sendmsg, walked as the kernel's
    __scm_send walks them (a tail shorter than a header is not one).

    OSError(EINVAL) for what the kernel refuses (a header whose length is
    short or runs past the end, more than SCM_MAX_FD fds, a ucred of the
    wrong size, an unknown SOL_SOCKET type), and for any other level: the
    kernel ignores those on a unix socket, and nothing unknown goes along.
    """
    fds: list[int] = []
    credentials: tuple[int, int, int] | None = None
    at = 0
    while at + _CMSGHDR.size <= len(data):
        length, level, kind = _CMSGHDR.unpack_from(data, at)
        if length < _CMSGHDR.size or length > len(data) - at or level != socket.SOL_SOCKET:
            raise OSError(errno.EINVAL, "control data the kernel would refuse")
        body = data[at + _CMSGHDR.size : at + length]
        if kind == socket.SCM_RIGHTS:
            count = len(body) // 4
            if len(fds) + count > broker.SCM_MAX_FD:
                raise OSError(errno.EINVAL, "more fds than SCM_MAX_FD")
            fds.extend(struct.unpack_from(f"<{count}i", body))
        elif kind == _SCM_CREDENTIALS and len(body) == _UCRED.size:
            pid, uid, gid = _UCRED.unpack(body)
            credentials = (pid, uid, gid)
        else:
            raise OSError(errno.EINVAL, "control data the kernel would refuse")
        at += (length + 7) & ~7
    return UnixControl(tuple(fds), credentials)


@dataclass(slots=True)
class _UnixSend:
    """The unix datagrams the broker sends for one agent call, until it is answered."""

    notif: _seccomp.Notification
    sock: int  # our duplicate of the agent's socket
    flags: int
    counted: bool  # sendmmsg: answered with how many messages went, not bytes
    messages: list[broker.UnixDatagram] = field(default_factory=list)
    # Our duplicates of the fds passed, in order: one per distinct fd number
    # of the agent's (`dups`), repeated as often as it is passed.
    passed: list[int] = field(default_factory=list)
    dups: dict[int, int] = field(default_factory=dict)
    nodes: list[Resolved] = field(default_factory=list)  # socket files pinned
    # Each distinct sockaddr copied -> where the broker sends it (`_unix_address`).
    addresses: dict[bytes, int | bytes] = field(default_factory=dict)
    size: int = 0  # payload bytes
    sent: list[int] = field(default_factory=list)  # bytes of each message sent so far
    started: float = -1.0  # when it first met a full receiver
    limit: float = SEND_TIMEOUT
    held_fds: int = 0  # counted against the caps while parked
    closed: bool = False


class _Answered(Exception):
    """The syscall was answered already (a refusal): nothing is sent."""


class MoveNotJudged(RuntimeError):
    """A move whose names could not be judged: it fails (closed, EIO, recorded)."""


@dataclass(slots=True)
class Resolved:
    """A path the agent named, pinned in the broker (or not, if it does not exist)."""

    target: str  # the real path, as the agent sees it (the lexical one on failure)
    pinned: Pinned = field(default_factory=Pinned)  # the object, or the parent for `name`
    name: bytes = b""  # last component, when `pinned` is the parent
    error: int = 0  # errno of the resolution, 0 if it worked
    fd: int = -1  # an fd of the agent's own, taken with pidfd_getfd (fchmod and friends)

    @property
    def handle(self) -> int:
        return self.pinned.handle

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# How `Mediator.resolve_names` resolves a name: the directory holding its last
# component (pinned), the object it names (pinned, a final symlink followed), or
# only a look at the object itself (not followed, not pinned: its inode).
AS_PARENT = 0
AS_OBJECT = 1
AS_INODE = 2


# The agent's standard streams and fd directory: they mean the agent's own
# fds, which /proc/self in the broker would not.
_AGENT_FD_LINKS = (
    (b"/dev/stdin", b"/proc/self/fd/0"),
    (b"/dev/stdout", b"/proc/self/fd/1"),
    (b"/dev/stderr", b"/proc/self/fd/2"),
    (b"/dev/fd", b"/proc/self/fd"),
)
_STD_FDS = {b"/dev/stdin": 0, b"/dev/stdout": 1, b"/dev/stderr": 2}
_OWN_FD_NAME = re.compile(rb"/dev/std(?:in|out|err)|(?:/dev/fd|/proc/(?:self|thread-self)/fd)/\d+")
# Every path `_agent_alias` may rewrite starts with one of these.
_AGENT_ALIAS_PREFIXES = (b"/dev/std", b"/dev/fd", b"/proc/self", b"/proc/thread-self")


# What an image is told apart by (see `_image`): /proc/PID/stat's start_code,
# end_code and start_stack (fields 26-28 of proc(5)), start_data up to env_end
# (45-51), as indices once the fields after the ")" are split.
_LAYOUT_FIELDS = (23, 24, 25, 42, 43, 44, 45, 46, 47, 48)
_ADDR_NO_RANDOMIZE = 0x0040000


@dataclass(frozen=True, slots=True)
class _Image:
    """One process image, told apart from the next by what the kernel keeps.

    An exec that fails leaves the image that called it running; one that
    works makes a new mm.  The running argv (/proc/PID/cmdline) cannot tell
    the two apart: it is read from the process's memory, which it may
    overwrite with any command line it likes (setproctitle).  Instead:

    - the executable's inode: the kernel's mm->exe_file.  Changing it
      (PR_SET_MM_EXE_FILE, PR_SET_MM_MAP's exe_fd) takes CAP_SYS_RESOURCE or
      CAP_SYS_ADMIN/CAP_CHECKPOINT_RESTORE in the agent's user namespace, and
      an agent has no capability and may not make a user namespace.  So a
      new image of another file never passes for the caller.
    - the layout the exec chose (/proc/PID/stat's code, data, brk, stack and
      argv/env addresses, and the kernel's copy of the auxiliary vector):
      fresh and random at each exec, which tells two images of one file
      apart.  PR_SET_MM_MAP lets an image rewrite its own without any
      capability, but the caller cannot know what the exec will pick, and a
      new image can copy the caller's only by running code of its own before
      its first trapped syscall: a file of the agent's making then, which
      the inode check says is the caller's own, allowed to run; its command
      line is no barrier to code the agent wrote.  Only random if the exec
      randomizes (ASLR on, and not switched off by the caller's
      personality(ADDR_NO_RANDOMIZE)): else an exec of the same file with
      arguments of the same sizes lays out the same, and "same image" is
      never taken for granted (`_randomized`).
    """

    exe: tuple[int, int]  # (st_dev, st_ino) of the executable
    layout: tuple[bytes, ...]  # the stat fields above, and the auxiliary vector


def _image(pid: int) -> _Image | None:
    """The image `pid` runs; None if it cannot be read in full (gone, or not ours to see)."""
    try:
        exe = os.stat(f"/proc/{pid}/exe")
        fields = _proc.read_proc(f"/proc/{pid}/stat").rpartition(b")")[2].split()
        auxv = _proc.read_proc(f"/proc/{pid}/auxv")
    except OSError:
        return None
    layout = tuple(fields[i] for i in _LAYOUT_FIELDS if i < len(fields))
    # Zeros where the reader may not see the mm (or there is none): unknown.
    if len(layout) < len(_LAYOUT_FIELDS) or not any(v != b"0" for v in layout) or not auxv:
        return None
    return _Image((exe.st_dev, exe.st_ino), (*layout, auxv))


def _randomized(tid: int) -> bool:
    """Whether an exec by thread `tid` now lays the new image out at random."""
    try:
        if int(_proc.read_proc("/proc/sys/kernel/randomize_va_space") or b"0") == 0:
            return False
        return not int(_proc.read_proc(f"/proc/{tid}/personality"), 16) & _ADDR_NO_RANDOMIZE
    except (OSError, ValueError):
        return False


@dataclass(slots=True)
class _AllowedExec:
    """What an allowed exec was decided on, to hold the new image to."""

    argv: list[str]
    file: tuple[int, int]  # (st_dev, st_ino) of the file decided on; (0, 0) if none
    # The image that called exec, to know it again if the exec failed; None
    # when it could not be read, or an exec would not make it unmistakable.
    before: _Image | None
    # A #! script's name as the kernel puts it in the new argv, after the
    # interpreter (and its argument) and before argv[1:]; None if no script.
    script: str | None
    # The thread that called exec, when not the process's leader: until its
    # exec is done, the leader's calls are still the old image's.
    thread: int = 0

    def matches(self, running: list[str]) -> bool:
        if self.script is not None:
            tail = [self.script, *self.argv[1:]]
            return len(running) > len(tail) and running[-len(tail) :] == tail
        if not self.argv:
            return running in ([], [""])  # (Linux gives an empty argv one empty string)
        return running == self.argv


# What the first syscall after an exec the broker let through is held to,
# when the image is not the one it allowed: nothing (no argv has a NUL), so
# the image running is judged as an exec of its own.
_ANY_OTHER_EXEC = _AllowedExec(["\0"], (0, 0), None, script=None)


def _script_name(raw: bytes, dirfd: int) -> str:
    """The name the kernel gives a script run by exec(`dirfd`, `raw`) in its new argv."""
    if dirfd == AT_FDCWD or raw.startswith(b"/"):
        return os.fsdecode(raw)
    return f"/dev/fd/{dirfd}" + (f"/{os.fsdecode(raw)}" if raw else "")


def _in_exec(tgid: int, tid: int) -> bool:
    """Whether thread `tid` may still be inside an exec: blocked in execve or
    execveat, or running (where /proc cannot say which call it is in)."""
    try:
        call = _proc.read_proc(f"/proc/{tgid}/task/{tid}/syscall").split(maxsplit=1)[:1]
    except OSError:
        return False  # gone
    return call in ([b"running"], [b"59"], [b"322"])


def _thread_lives(tgid: int, tid: int) -> bool:
    """Whether `tid` is still a thread of process `tgid` (after a successful exec by
    it, it is not: it took the leader's id)."""
    return os.path.exists(f"/proc/{tgid}/task/{tid}")


def _cmdline(pid: int) -> list[str] | None:
    """argv of the image running as `pid`, as its memory holds it now."""
    try:
        data = _proc.read_proc(f"/proc/{pid}/cmdline", until_eof=True)
    except OSError:
        return None
    return [os.fsdecode(arg) for arg in data.split(b"\0")[:-1]]


# How many #! interpreters deep an exec is followed: past the kernel's own
# limit (5 since Linux 5.8, BINPRM_MAX_RECURSION 4 before), which fails it.
_INTERPRETER_LEVELS = 8

# Placeholders while names are resolved together (never seen outside).
_NOT_ASKED = Pinned(error=errno.EIO)
_PENDING = Resolved("")


def _parent_and_name(raw: bytes) -> tuple[bytes, bytes, int]:
    """(the directory that would hold `raw`'s last component, that component
    with its trailing slashes (`broker.split_name`), 0), or an errno for a name
    no syscall takes: empty (ENOENT), "/" (EBUSY), a last "." or ".." (EINVAL)."""
    which = _no_name(raw)
    if which >= 0:
        return b"", b"", (errno.ENOENT, errno.EINVAL, errno.EINVAL, errno.EBUSY)[which]
    parent, name = broker.split_name(raw)
    return parent, name, 0


def _no_name(raw: bytes) -> int:
    """-1 for a name whose last component is a name; else which of the names
    that have none it is: 0 empty, 1 a last ".", 2 a last "..", 3 "/" itself."""
    stripped = raw.rstrip(b"/")
    if not stripped:
        return 3 if raw else 0
    last = stripped.rpartition(b"/")[2]
    return len(last) if last in (b".", b"..") else -1


def _names_own_fd(raw: bytes) -> bool:
    """/dev/stdin, /dev/fd/N, /proc/self/fd/N and the like: an fd the agent holds.

    The whole name, not a prefix: /proc/self/fd/D/1234/fd/5 (D a directory
    the agent holds, /proc) names another process's fd."""
    return _OWN_FD_NAME.fullmatch(raw) is not None


def _session_and_terminal(tid: int) -> tuple[int, int]:
    """The session and controlling terminal (a device number; 0: none) of `tid`."""
    with open(f"/proc/{tid}/stat", "rb") as stat_file:
        fields = stat_file.read().rpartition(b")")[2].split()
    return int(fields[3]), int(fields[4])  # fields 6 and 7 of proc(5)


def _own_fd_number(raw: bytes) -> int:
    """The fd a name `_names_own_fd` accepts stands for."""
    number = _STD_FDS.get(raw)
    return int(raw.rpartition(b"/")[2]) if number is None else number


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class Mediator:
    """Decodes and answers the notifications of one agent's listener."""

    def __init__(
        self,
        listener: int,
        judge: Judge,
        tgid_of: Callable[[int], int],
        hands: BrokerClient,
        agent_id: str = "",
        wait_writable: WaitWritable | None = None,
        forward: socket.socket | None = None,
        call_later: CallLater | None = None,
    ) -> None:
        self.listener = listener
        self._broker_gone_recorded = False  # said once, when the broker stops answering
        # With the native path, notifications arrive from the broker instead.
        self.forwarded = _fastpath.Forwarded(forward, listener) if forward is not None else None
        # The agent's broker does every file operation, with the agent's rights.
        self.broker = hands
        self.agent_id = agent_id
        self.judge = judge
        self._allow_cache = judge.allow_cache
        self.served = 0  # notifications so far (CPU placement watches the rate)
        self.notices = 0  # of them, the broker's notices: nothing waited for an answer
        self._execs: OrderedDict[int, _AllowedExec] = OrderedDict()
        # A thread that called exec -> its process: a call of its own means
        # that exec failed (after a successful one, the thread is gone).
        self._exec_threads: dict[int, int] = {}
        # How to wait, inside the loop, for a connect we started on the agent's behalf.
        self._wait_writable = wait_writable
        # How to try a unix connect again later (a full backlog), and since when
        # each agent call (a notification id) has been waiting so.
        self._call_later = call_later
        self._backlog_waits: dict[int, float] = {}
        # Unix datagrams waiting for room in a full receiver (`_send_later`),
        # by notification id, and the payload bytes and fds they hold.
        self._parked_sends: dict[int, _UnixSend] = {}
        self._parked_bytes = 0
        self._parked_fds = 0
        self.memory = _proc.MemoryReader()
        self._tgid_of = tgid_of
        # Per-process state, bounded: the mediator is never told when an agent
        # process or thread exits (only its own children are reaped here).
        self._umasks: dict[int, int] = {}
        # Threads whose umask() may not have happened yet: until each makes
        # another trapped call, no umask read is kept (it may be the old one).
        self._umasks_in_flight: set[int] = set()
        self._pidfds: OrderedDict[int, int] = OrderedDict()
        # (dirfd, name) -> (real path, st_dev, st_ino, linked, target) of a read
        # allowed from the cache: the broker hands the same file over at once.
        self._reads: dict[tuple[int, bytes], tuple[str, int, int, bool, str]] = {}
        # The agent's own PID and network namespaces, compared with ours once.
        self._own_namespace: dict[str, bool] = {}
        # (st_dev, st_ino) -> path, for files a hard link must not reach.
        self.protected_inodes: ProtectedInodes | None = None
        self._protected_told = False  # the broker's native path has the walk's answer
        # Resolved once: number -> name, and number -> handler.
        self._names = _seccomp.syscall_numbers(MEDIATED + ALWAYS_REFUSED)
        refused = set(ALWAYS_REFUSED)
        self._handlers: dict[int, Callable[[_seccomp.Notification, str], None]] = {
            nr: self._on_refused if name in refused else getattr(self, f"_on_{name}")
            for nr, name in self._names.items()
        }

    def close(self) -> None:
        self.memory.close()
        if self.protected_inodes is not None:
            self.protected_inodes.close()
        if self.forwarded is not None:
            self.forwarded.close()
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        for job in list(self._parked_sends.values()):
            self._close_unix_send(job)

    # -- the loop's entry point ------------------------------------------------

    def on_ready(self, events: int) -> bool:
        """Serve one notification.  False once no agent task is left on the filter."""
        if not events & select.EPOLLIN:
            return False  # EPOLLHUP alone: every task under the filter is gone
        try:
            self._serve_one()
        except EOFError:
            return False  # the broker is gone, and with it the agent's namespace
        return True

    def _serve_one(self) -> None:
        self.served += 1
        try:
            if self.forwarded is not None:
                notif = self.forwarded.receive()
            else:
                notif = _seccomp.receive(self.listener)
        except OSError:
            return  # nothing received, nothing owed; the loop asks again
        if notif is None:
            return
        name = self._names.get(notif.nr, str(notif.nr))
        if self._umasks_in_flight:
            self._umasks_in_flight.discard(notif.pid)  # its umask() returned
        if notif.nr == _fastpath.EXEC_CHECKED:
            self.notices += 1
            self._drop_exec(notif.pid)  # the broker found the image allowed
            return
        if notif.nr == _fastpath.EXEC_DONE:
            self.notices += 1
            # The broker let an exec through, only ever a leader's: the pid is
            # the process's, with no /proc lookup to know it.
            self._image_changed(notif.pid, notif.pid)
            return
        if notif.nr == _fastpath.FAN_READ:
            self._fan_read(notif)
            return
        if self._exec_threads and notif.pid in self._exec_threads:
            # A call of the thread that called exec: that exec failed.  Unless
            # that thread is gone and its id another's (its exec went
            # through): its number alone says nothing (red team 30).
            pending = self._execs.get(tgid := self._exec_threads.pop(notif.pid))
            if pending is not None and pending.thread == notif.pid:
                if _thread_lives(tgid, notif.pid):
                    self._drop_exec(tgid)
                else:
                    pending.thread = 0
        if notif.notice & _fastpath.NOTICE_EXEC_JUDGE:
            # After an exec the broker let through, an image not the one allowed.
            self._execs[notif.pid] = _ANY_OTHER_EXEC
        try:
            if notif.pid in self._execs and not self._exec_as_decided(notif):
                return
            handler = self._handlers.get(notif.nr)
            if handler is None:  # not ours to judge; never happens with our filter
                _seccomp.respond_error(self.listener, notif.id, errno.ENOSYS)
                return
            handler(notif, name)
        except broker.BrokerGone as exc:
            # Fail closed: nothing more can be done with the agent's rights.
            self._answer_error(notif, errno.EIO)
            if not self._broker_gone_recorded:
                self._broker_gone_recorded = True
                with contextlib.suppress(Exception):
                    self.judge.broker_gone(name, notif.pid, str(exc))
        except OSError as exc:
            # Could not read the agent's arguments (bad pointer, task gone):
            # fail the syscall the way the kernel would.
            self._answer_error(notif, exc.errno or errno.EFAULT)
        except Exception as exc:  # one notification must never end the loop
            # A bug or an argument nobody foresaw: fail closed, and say so.
            self._answer_error(notif, errno.EIO)
            with contextlib.suppress(Exception):
                self.judge.mediation_failed(name, notif.pid, f"{type(exc).__name__}: {exc}")

    def _answer_error(self, notif: _seccomp.Notification, err: int) -> None:
        """Fail one syscall; an answer that cannot be given (already answered) is no error."""
        with contextlib.suppress(OSError):
            _seccomp.respond_error(self.listener, notif.id, err if 0 < err < 4096 else errno.EIO)

    # -- helpers -----------------------------------------------------------------

    def _decide(
        self, notif: _seccomp.Notification, syscall: str, action: ActionType, target: str
    ) -> Response:
        if (action, target) in self._allow_cache:
            return Response.ALLOW
        event = Event(action, target, self.agent_id, notif.pid, Layer.SECCOMP, syscall)
        return self.judge.judge(event, notif.pid)

    def _decide_all(
        self, notif: _seccomp.Notification, syscall: str, checks: list[tuple[ActionType, str]]
    ) -> Response:
        """Every check must let the action proceed; the first that does not decides."""
        return self._decide_all_by(notif, syscall, checks)[0]

    def _decide_all_by(
        self, notif: _seccomp.Notification, syscall: str, checks: list[tuple[ActionType, str]]
    ) -> tuple[Response, str]:
        """`_decide_all`, and the rule of the check that decided ("" for a cached allow)."""
        response, rule = Response.ALLOW, ""
        for action, target in checks:
            if (action, target) in self._allow_cache:
                response, rule = Response.ALLOW, ""
                continue
            event = Event(action, target, self.agent_id, notif.pid, Layer.SECCOMP, syscall)
            decision, response = self.judge.judge_event(event, notif.pid)
            rule = decision.rule_id
            if not response.proceeds:
                break
        return response, rule

    def _refuse(self, notif: _seccomp.Notification, response: Response, err: int) -> None:
        if response is Response.HOLD:
            # The judge stopped the tree: the kernel drops this notification and
            # reissues the syscall after SIGCONT, when a person's grant answers it.
            return
        # KILL and STOP were carried out by the judge; the syscall fails either way.
        self._fail(notif, err)

    def _fail(self, notif: _seccomp.Notification, err: int) -> None:
        _seccomp.respond_error(self.listener, notif.id, err)

    def _lexical(self, tid: int, dirfd: int, raw: bytes) -> str:
        """Best-effort absolute path when the kernel could not resolve it.

        Never made up: a base directory that cannot be named (gone, or deeper
        than PATH_MAX and not climbable) fails the syscall with that errno
        (`_serve_one` answers an OSError so), with no target judged.
        """
        if raw.startswith(b"/"):
            base = b""
        else:
            link = f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
            try:
                base = os.fsencode(os.readlink(link)) + b"/"
            except OSError as exc:
                if exc.errno == errno.ENOENT and dirfd != AT_FDCWD:
                    raise OSError(errno.EBADF, "no such fd") from exc  # as the kernel
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                # Deeper than PATH_MAX: climbed to a name (the supervisor's
                # own rights: this only spells the target of an error).
                anchor = self._open_anchor(link)
                try:
                    base = os.fsencode(_proc.long_path(anchor)) + b"/"
                finally:
                    os.close(anchor)
        return os.path.normpath(os.fsdecode(base + raw)).replace("//", "/", 1)

    def _anchor(
        self, tid: int, dirfd: int, raw: bytes, resolve_flags: int
    ) -> tuple[str | None, bytes]:
        """Where the broker starts: our /proc link to open (None: its root), and the rest.

        The agent's cwd and dirfds are opened here, in its /proc entry, and
        passed along.  /proc/self and /dev/std* mean the agent, not the
        broker: they become the agent's /proc/PID as its own PID namespace
        numbers it.
        """
        if raw[:1] == b"/":
            # One prefix test first: almost no path is one of these.
            if raw.startswith(_AGENT_ALIAS_PREFIXES):
                raw = self._agent_alias(tid, raw)
            if not resolve_flags:
                return None, raw
        return (f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"), raw

    def _agent_alias(self, tid: int, raw: bytes) -> bytes:
        """/dev/std*, /dev/fd, /proc/self and /proc/thread-self as the agent's own /proc."""
        for alias, real in _AGENT_FD_LINKS:
            if raw == alias or raw.startswith(alias + b"/"):
                raw = real + raw[len(alias) :]
                break
        if raw == b"/proc/self" or raw.startswith(b"/proc/self/"):
            raw = b"/proc/%d" % _proc.namespace_pid(self._tgid_of(tid)) + raw[10:]
        elif raw == b"/proc/thread-self" or raw.startswith(b"/proc/thread-self/"):
            tgid = _proc.namespace_pid(self._tgid_of(tid))
            raw = b"/proc/%d/task/%d" % (tgid, _proc.namespace_pid(tid)) + raw[17:]
        return raw

    def _agent_self(self, tid: int) -> broker.AgentSelf:
        """/proc/self and /proc/thread-self for thread `tid`, as its broker numbers them."""
        pid = _proc.namespace_pid(self._tgid_of(tid))
        return b"%d" % pid, b"%d/task/%d" % (pid, _proc.namespace_pid(tid))

    @staticmethod
    def _open_anchor(path: str) -> int:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)

    def _pin(
        self,
        tid: int,
        dirfd: int,
        raw: bytes,
        kind: int,
        *,
        flags: int = 0,
        follow: bool = True,
        resolve_flags: int = 0,
        want_script: bool = False,
        keep: bool = True,
        expected: broker.Expected | None = None,
    ) -> Pinned:
        try:
            link, rest = self._anchor(tid, dirfd, raw, resolve_flags)
            # A name in /proc is walked as the agent's at once (`Broker._open_at`).
            agent = self._agent_self(tid) if rest.startswith(b"/proc/") else None
            anchor = -1 if link is None else self._open_anchor(link)
        except OSError as exc:
            return Pinned(error=exc.errno or errno.ENOENT)
        try:
            lookup = functools.partial(
                self.broker.resolve,
                anchor,
                rest,
                kind,
                flags=flags,
                resolve_flags=resolve_flags,
                follow=follow,
                want_script=want_script,
                keep=keep,
                expected=expected,
            )
            pinned = lookup(agent=agent)
            if pinned.error == broker.THROUGH_MAGIC_LINK:
                pinned = lookup(agent=self._agent_self(tid))
            own_fd = kind != broker.CREATED and _names_own_fd(raw)  # (a name to make is none)
            if pinned.error == errno.EACCES and not resolve_flags and own_fd:
                pinned = self._pin_own_fd(tid, raw, kind, flags, keep, expected) or pinned
            return _never_through_magic(pinned)
        finally:
            if anchor >= 0:  # an absolute path has none (the broker's root)
                os.close(anchor)

    def _own_file(
        self,
        notif: _seccomp.Notification,
        syscall: str,
        raw: bytes,
        node: Resolved,
        reads: bool,
        writes: bool,
    ) -> bool | None:
        """For a name that is exactly one of the agent's fds (/dev/stdout) and
        leads to a file: True when that fd holds the very file, open for every
        access asked, which then asks no rule (`_holds`); None when it asks
        more and the file is not at its path in the agent's view: refused
        here.  A log `run` writes under the host's /tmp has a name that means
        the agent's private /tmp there; rules judge names, and no name of the
        agent's leads to this file.  False otherwise: the rules judge it."""
        if node.error or not node.target.startswith("/") or not _names_own_fd(raw):
            return False
        tid = notif.pid
        if self._holds(tid, raw, node.pinned, reads, writes):
            return True
        there = self._pin(tid, AT_FDCWD, os.fsencode(node.target), broker.OBJECT, keep=False)
        if not there.error and (there.dev, there.ino) == (node.pinned.dev, node.pinned.ino):
            return False
        self.release(node)
        self.judge.refuse_outside_view(syscall, tid, node.target)
        self._fail(notif, errno.EACCES)
        return None

    def _holds(self, tid: int, raw: bytes, pinned: Pinned, reads: bool, writes: bool) -> bool:
        """Whether the agent's fd that `raw` names (/dev/stdout, /proc/self/fd/N)
        is the very file pinned, open for every access asked (reads, writes).

        The fd is taken from the agent (pidfd_getfd) after the pin: a dup2 over
        it meanwhile leaves another file in it, which then does not match."""
        try:
            held = self._agent_fd(tid, _own_fd_number(raw))
        except (OSError, ValueError):
            return False
        try:
            info = os.fstat(held)
            status = fcntl.fcntl(held, fcntl.F_GETFL)
        except OSError:
            return False
        finally:
            os.close(held)
        # An O_PATH fd reads nothing (its access bits say O_RDONLY), and the
        # kernel, not the broker, looked its name up after the decision.
        if status & os.O_PATH or pinned.handle < 0:
            return False
        if (info.st_dev, info.st_ino) != (pinned.dev, pinned.ino):
            return False
        access = status & os.O_ACCMODE
        if reads and access not in (os.O_RDONLY, os.O_RDWR):
            return False
        return not writes or access in (os.O_WRONLY, os.O_RDWR)

    def _pin_own_fd(
        self,
        tid: int,
        raw: bytes,
        kind: int,
        flags: int,
        keep: bool,
        expected: broker.Expected | None,
    ) -> Pinned | None:
        """An fd of the agent's own, named exactly (/proc/self/fd/N, /dev/stdout),
        where its broker was refused: a non-dumpable agent's /proc entry is
        closed to another process, never to the agent itself.  The supervisor
        takes a duplicate of that very fd (pidfd_getfd, from the agent's own
        process: no tid to be reused), and the broker opens what it names
        anew, with the agent's rights.  None when the fd is not there."""
        try:
            held = self._agent_fd(tid, _own_fd_number(raw))
        except OSError:
            return None
        try:
            return self.broker.resolve(
                held, broker.ANCHOR_ITSELF, kind, flags=flags, keep=keep, expected=expected
            )
        finally:
            os.close(held)

    def _pin_all(self, tid: int, names: list[tuple[int, bytes, int, bool, bool]]) -> list[Pinned]:
        """Several names of one syscall, (dirfd, path, kind, follow, keep) each, in one exchange.

        An anchor (the agent's cwd or a dirfd) named twice is opened once, so
        both names start from the same directory.
        """
        found = [_NOT_ASKED] * len(names)
        anchors: list[int] = []
        opened: dict[str, int] = {}  # /proc link -> its index in `anchors`
        lookups: list[broker.Lookup] = []
        sent: list[int] = []
        try:
            for i, (dirfd, path, kind, follow, keep) in enumerate(names):
                try:
                    link, rest = self._anchor(tid, dirfd, path, 0)
                    index = -1 if link is None else opened.get(link, -1)
                    if link is not None and index < 0:
                        anchors.append(self._open_anchor(link))
                        index = opened[link] = len(anchors) - 1
                    agent = self._agent_self(tid) if rest.startswith(b"/proc/") else None
                except OSError as exc:
                    found[i] = Pinned(error=exc.errno or errno.ENOENT)
                    continue
                lookups.append((index, rest, kind, 0, 0, follow, False, keep, None, agent))
                sent.append(i)
            if lookups:
                answers = self.broker.resolve_all(lookups, anchors)
                again = [
                    j
                    for j, pinned in enumerate(answers)
                    if pinned.error == broker.THROUGH_MAGIC_LINK
                ]
                if again:
                    agent = self._agent_self(tid)
                    retried = [(*lookups[j][:-1], agent) for j in again]
                    for j, pinned in zip(
                        again, self.broker.resolve_all(retried, anchors), strict=True
                    ):
                        answers[j] = pinned
                for i, pinned in zip(sent, answers, strict=True):
                    found[i] = _never_through_magic(pinned)
        finally:
            for fd in anchors:
                os.close(fd)
        return found

    def resolve_names(self, tid: int, wanted: list[tuple[int, bytes, int]]) -> list[Resolved]:
        """The names one syscall gives, (dirfd, raw, AS_*) each, resolved in one exchange.

        Each is what `resolve_parent` (AS_PARENT) or `resolve` (AS_OBJECT; AS_INODE:
        not followed, not pinned) would answer.  If one cannot be judged
        (`_checked` raised), none stays pinned.
        """
        nodes: list[Resolved] = []
        names: list[tuple[int, bytes, int, bool, bool]] = []
        for dirfd, raw, how in wanted:
            if how == AS_PARENT:
                parent, _name, err = _parent_and_name(raw)
                if err:
                    nodes.append(self._unresolved_parent(tid, dirfd, raw, err))
                    continue
                names.append((dirfd, parent, broker.PARENT, True, True))
            elif not raw:
                nodes.append(Resolved("", error=errno.ENOENT))  # nothing a rule could judge
                continue
            else:
                names.append((dirfd, raw, broker.OBJECT, how == AS_OBJECT, how == AS_OBJECT))
            nodes.append(_PENDING)
        answers = iter(self._pin_all(tid, names))
        try:
            for i, (dirfd, raw, how) in enumerate(wanted):
                if nodes[i] is not _PENDING:
                    continue
                pinned = next(answers)
                if how == AS_PARENT:
                    nodes[i] = self._parent_node(tid, dirfd, raw, pinned)
                else:
                    nodes[i] = self._object_node(tid, dirfd, raw, pinned)
        except BaseException:
            self.release(*(node for node in nodes if node is not _PENDING))
            for pinned in answers:
                self.broker.drop(pinned)
            raise
        return nodes

    def resolve(
        self,
        tid: int,
        dirfd: int,
        raw: bytes,
        *,
        follow: bool = True,
        resolve_flags: int = 0,
        want_script: bool = False,
        keep: bool = True,
    ) -> Resolved:
        """Pin the object `raw` names (following a final symlink if `follow`).

        With `keep` False it is only looked at (its stat and real path), not pinned.
        An empty name is ENOENT with no target: it names nothing a rule could
        judge (not the working directory), and the kernel refuses it at once.
        """
        if not raw:
            return Resolved("", error=errno.ENOENT)
        pinned = self._pin(
            tid,
            dirfd,
            raw,
            broker.OBJECT,
            follow=follow,
            resolve_flags=resolve_flags,
            want_script=want_script,
            keep=keep,
        )
        return self._object_node(tid, dirfd, raw, pinned)

    def _object_node(self, tid: int, dirfd: int, raw: bytes, pinned: Pinned) -> Resolved:
        if pinned.error:
            return Resolved(self._lexical(tid, dirfd, raw), error=pinned.error)
        return self._checked(Resolved(pinned.path, pinned))

    def _checked(self, node: Resolved) -> Resolved:
        """Hard links and device nodes get the scrutiny their path alone does not show."""
        pinned = node.pinned
        mode = pinned.mode
        if pinned.nlink > 1 and stat.S_ISREG(mode):
            protected = self._protected_name(node)
            if protected is not None:
                node.target = protected
        elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and not node.target.startswith("/dev/"):
            # A device node outside /dev is a door to the raw device, whatever
            # the path looks like: refuse it.
            self.release(node)
            node.error = errno.EACCES
        return node

    def _protected_name(self, node: Resolved) -> str | None:
        """The protected file `node` is another name of, if any.

        Fails closed: with no answer from the walk (`WalkFailed`) the node is
        unpinned and the syscall fails with EIO, on record.
        """
        try:
            return self._protected_inode(node.pinned.dev, node.pinned.ino)
        except WalkFailed:
            self.release(node)
            raise

    def walk_anew(self, walk: ProtectedInodes) -> None:
        """The policy changed: the protected inodes are those of `walk`, a walk
        for the new rules (the broker forgot the old ones with its decisions)."""
        old, self.protected_inodes = self.protected_inodes, walk
        self._protected_told = False
        if old is not None:
            old.close()

    def _protected_inode(self, dev: int, ino: int) -> str | None:
        """The protected file (dev, ino) is, if any (WalkFailed without an answer)."""
        if self.protected_inodes is None:
            return None
        protected = self.protected_inodes.get((dev, ino))
        if not self._protected_told and self.forwarded is not None:
            # The walk answered: the native path can judge the other
            # multiply-linked files (shared libraries, git's commands) itself,
            # and the read lane leave them unasked.
            self._protected_told = True
            self.broker.protect(self.protected_inodes.inodes())
        return protected

    def release(self, *nodes: Resolved) -> None:
        """Unpin what no operation consumed (a refusal, an error)."""
        for node in nodes:
            self.broker.drop(node.pinned)
            node.close()

    def resolve_parent(
        self, tid: int, dirfd: int, raw: bytes, *, resolve_flags: int = 0, created: bool = False
    ) -> Resolved:
        """Pin the directory that would hold `raw`'s last component.

        `created`: where open(O_CREAT) without O_EXCL or O_NOFOLLOW makes its
        file, a symlink leading nowhere followed to where it leads
        (`broker.CREATED`): that place is the target judged, and the name
        made there `name`.
        """
        parent, _name, err = _parent_and_name(raw)
        if err:
            return self._unresolved_parent(tid, dirfd, raw, err)
        looked_up, kind = (raw, broker.CREATED) if created else (parent, broker.PARENT)
        pinned = self._pin(tid, dirfd, looked_up, kind, resolve_flags=resolve_flags)
        return self._parent_node(tid, dirfd, raw, pinned)

    def _unresolved_parent(self, tid: int, dirfd: int, raw: bytes, err: int) -> Resolved:
        """A name no syscall takes: "/" itself (EBUSY), one ending in . or ..
        (EINVAL), or an empty one (ENOENT, with no target: nothing to judge)."""
        if err == errno.ENOENT:
            return Resolved("", error=err)
        return Resolved("/" if err == errno.EBUSY else self._lexical(tid, dirfd, raw), error=err)

    def _parent_node(self, tid: int, dirfd: int, raw: bytes, pinned: Pinned) -> Resolved:
        """The pinned directory, with the name to act on in it (as spelled:
        trailing slashes kept for the kernel) and the target the rules judge
        (its real path and the name without them)."""
        if pinned.error:
            return Resolved(self._lexical(tid, dirfd, raw), error=pinned.error)
        name = pinned.name or broker.split_name(raw)[1]
        target = pinned.path.rstrip("/") + "/" + os.fsdecode(name.rstrip(b"/"))
        return Resolved(target, pinned, name=name)

    def _umask(self, tid: int) -> int:
        tgid = self._tgid_of(tid)
        mask = self._umasks.get(tgid)
        if mask is None:
            mask = _proc.process_umask(tid)
            if not self._umasks_in_flight:
                if len(self._umasks) >= _PER_PROCESS_CACHE:
                    self._umasks.clear()
                self._umasks[tgid] = mask
        return mask

    def _pidfd(self, tid: int) -> int:
        tgid = self._tgid_of(tid)
        fd = self._pidfds.get(tgid)
        if fd is not None:
            self._pidfds.move_to_end(tgid)
            return fd
        fd = self._pidfds[tgid] = os.pidfd_open(tgid)
        if len(self._pidfds) > _PIDFD_CACHE:
            _gone, stale = self._pidfds.popitem(last=False)
            os.close(stale)
        return fd

    def _agent_fd(self, tid: int, agent_fd: int) -> int:
        """A duplicate of fd `agent_fd` of the agent process `tid` belongs to.

        A cached pidfd may be of a process that exited (and whose pid came
        back as another one of the agent's): ESRCH drops it and tries afresh.
        """
        try:
            return _proc.pidfd_getfd(self._pidfd(tid), agent_fd)
        except ProcessLookupError:
            self.forget_process(self._tgid_of(tid))
            return _proc.pidfd_getfd(self._pidfd(tid), agent_fd)

    def forget_process(self, tgid: int) -> None:
        self._umasks.pop(tgid, None)
        self._drop_exec(tgid)
        fd = self._pidfds.pop(tgid, None)
        if fd is not None:
            os.close(fd)
        self.memory.forget(tgid)

    # -- open family -------------------------------------------------------------

    def _open(
        self,
        notif: _seccomp.Notification,
        syscall: str,
        dirfd: int,
        path_ptr: int,
        flags: int,
        mode: int,
        resolve_flags: int = 0,
    ) -> None:
        tid = notif.pid
        raw = self.memory.read_cstring(tid, path_ptr)
        if not raw:
            self._fail(notif, errno.ENOENT)  # the kernel's, at once: no rule is asked
            return
        writes = bool(flags & _WRITE_FLAGS) or (flags & os.O_TMPFILE) == os.O_TMPFILE
        reads = (flags & os.O_ACCMODE) != os.O_WRONLY
        cloexec = bool(flags & os.O_CLOEXEC)
        follow = not flags & os.O_NOFOLLOW
        if not (writes or flags & os.O_PATH) and raw:
            # The common read: the broker opens it right away (regular files and
            # directories only) and the policy decides on what it got.
            setfl = -1 if flags & os.O_NONBLOCK else flags
            pinned = self._pin(
                tid,
                dirfd,
                raw,
                broker.OPEN,
                flags=flags & ~os.O_CLOEXEC,
                follow=follow,
                resolve_flags=resolve_flags,
                expected=self._expected_read(notif, dirfd, raw, resolve_flags, cloexec, setfl),
            )
            if pinned.injected:
                return  # the very file read (and allowed) before: the broker handed it over
            opened = stat.S_ISREG(pinned.mode) or stat.S_ISDIR(pinned.mode)
            held_file: bool | None = False
            if pinned.error:
                node = Resolved(self._lexical(tid, dirfd, raw), error=pinned.error)
            else:
                node = self._checked(Resolved(pinned.path, pinned))
                held_file = self._own_file(notif, syscall, raw, node, reads, writes)
                if held_file is None:
                    return
                if (
                    opened
                    and node.target[:1] == "/"
                    and (ActionType.FILE_READ, node.target) in self._allow_cache
                ):
                    # The one check a read needs, already answered: inject it.
                    if not resolve_flags:
                        self._remember_read(dirfd, raw, pinned, node.target)
                    self.broker.act(broker.INJECT, notif.id, pinned.handle, cloexec, setfl)
                    return
        else:
            node = self.resolve(tid, dirfd, raw, follow=follow, resolve_flags=resolve_flags)
            opened = False
            held_file = self._own_file(notif, syscall, raw, node, reads, writes)
            if held_file is None:
                return
        # O_CREAT with a trailing slash is EISDIR, whatever the name holds: the
        # create is made with the slash, and the kernel says so.
        creating = flags & os.O_CREAT and (
            node.error == errno.ENOENT or (node.error == errno.ENOTDIR and raw.endswith(b"/"))
        )
        if creating:
            if self._no_name_answered(notif, dirfd, raw, _CREATE_NO_NAME):
                return
            # Without O_EXCL and O_NOFOLLOW the kernel follows a symlink that
            # leads nowhere and makes the file where it leads: judged there.
            follows = follow and not flags & os.O_EXCL
            node = self.resolve_parent(
                tid, dirfd, raw, resolve_flags=resolve_flags, created=follows
            )
        elif node.error == errno.ENOENT:
            # Nothing there: what the kernel would say, with no rule asked and no
            # signal (tools probe for optional files: ~/.curlrc, ~/.netrc).
            self._fail(notif, errno.ENOENT)
            return
        # A pipe or socket the agent already holds is its own: no path rule applies.
        # So is a file it holds, named as its fd (`echo x > /dev/stderr`), opened
        # again for no more than that fd allows: its log outside every root.
        own_object = held_file or (
            not node.error
            and not node.target.startswith("/")
            and (_names_own_fd(raw) or node.pinned.held)
        )
        checks = []
        if (reads or not writes) and not own_object:
            checks.append((ActionType.FILE_READ, node.target))
        if writes and not own_object:
            checks.append((ActionType.FILE_WRITE, node.target))
        response = self._decide_all(notif, syscall, checks)
        if not response.proceeds:
            self.release(node)
            self._refuse(notif, response, errno.EACCES)
        elif node.error:
            self.release(node)
            self._fail(notif, node.error)
        elif flags & broker.CHANGES_FILE and not creating and not own_object and _other_names(node):
            self.release(node)
            self.judge.refuse_hard_linked(syscall, tid, node.target)
            self._fail(notif, errno.EACCES)
        elif creating:
            umask = self._umask(tid)
            self.broker.act(
                broker.CREATE,
                notif.id,
                node.handle,
                node.name,
                flags & ~os.O_NOFOLLOW,
                mode & 0o7777 & ~umask & ~_SETID,
                cloexec,
            )
        elif opened:
            setfl = -1 if flags & os.O_NONBLOCK else flags
            self.broker.act(broker.INJECT, notif.id, node.handle, cloexec, setfl)
        elif flags & os.O_PATH:
            # ADDFD cannot pass an O_PATH file (EBADF).  An O_PATH fd gives no
            # data; every use of it (a reopen through /proc/self/fd, fchmod, an
            # *at call) is decided on the real path again, so the kernel may open it.
            self.release(node)
            _seccomp.respond_continue(self.listener, notif.id)
        elif node.target == "/dev/tty" and stat.S_ISCHR(node.pinned.mode):
            self.release(node)
            self._controlling_terminal(notif, flags & ~(os.O_NOFOLLOW | os.O_CLOEXEC), cloexec)
        else:
            own_flags = flags & ~(os.O_NOFOLLOW | os.O_CLOEXEC)
            self.broker.act(broker.REOPEN, notif.id, node.handle, own_flags, cloexec)

    # -- reads the kernel asked about (the read lane) ----------------------------

    def _fan_read(self, notif: _seccomp.Notification) -> None:
        """A read the kernel let through to the read lane, which the broker did
        not allow itself: judged as `_open` judges a read, and answered by the
        fd of its event.  No answer can leave the agent waiting: any failure
        here refuses it."""
        tid, (dev, ino, mode, nlink, error, _) = notif.pid, notif.args
        allowed = answered = False
        try:
            if tid <= 0:
                return  # its opener is gone (or unnumbered): refused
            if error:
                self._fan_refused_by_kernel(tid, error)
                return
            # No exec is checked here: the kernel raises reads inside execve
            # for the image calling it, and a process may hide that it is in
            # execve (red team 31).  Its first trapped syscall is the check.
            target = os.fsdecode(notif.path)
            if not target.startswith("/"):
                return  # a file with no name in the agent's view
            if not nlink or target.endswith(" (deleted)"):
                # Reopened after its last name went (through /proc/self/fd, or
                # unlinked while the open waited): no rule can judge it by a
                # name it no longer has (red team 28).
                self.judge.refuse_outside_view("open", tid, target, Layer.FANOTIFY)
                return
            if stat.S_ISREG(mode) and nlink > 1 and self.protected_inodes is not None:
                # Another name of a protected file is judged as that file.
                target = self._protected_inode(dev, ino) or target
            elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and not target.startswith("/dev/"):
                return  # never: every mount but /dev is nodev
            if (ActionType.FILE_READ, target) in self._allow_cache:
                allowed = True
                return
            event = Event(ActionType.FILE_READ, target, self.agent_id, tid, Layer.FANOTIFY, "open")

            def settled(approved: bool) -> None:
                self._fan_answer(notif.id, approved)

            _decision, response = self.judge.judge_event(event, tid, on_settle=settled)
            # Held for a person: `settled` answers it, the opener waiting in the kernel.
            answered = response is Response.HOLD
            allowed = response.proceeds
        except Exception as exc:  # one read must never end the loop, or wait for good
            with contextlib.suppress(Exception):
                self.judge.mediation_failed("open", tid, f"{type(exc).__name__}: {exc}")
            allowed = False
        finally:
            if not answered:
                self._fan_answer(notif.id, allowed)

    def _fan_answer(self, asked: int, allow: bool) -> None:
        """Answer the read forwarded as `asked` (its event's number and fd);
        none is owed for the record of a file the reader could not open."""
        if asked >> 32 and not asked & 0x80000000:
            with contextlib.suppress(broker.BrokerGone):
                self.broker.act(broker.FAN_ANSWER, asked, allow)

    def _fan_refused_by_kernel(self, tid: int, error: int) -> None:
        """A file the broker's reader may not open (`Judge.refuse_not_opened`):
        the kernel has refused the agent's open already (EPERM), before any
        driver ran.  Judged under the name the opener gave, for the record and
        the rule's signal; what the rule says cannot let it go ahead."""
        name = self._opening_name(tid)
        event = Event(ActionType.FILE_READ, name, self.agent_id, tid, Layer.FANOTIFY, "open")
        if self.judge.judge(event, tid).proceeds:
            self.judge.refuse_not_opened("open", tid, name)

    def _opening_name(self, tid: int) -> str:
        """The path thread `tid` is opening (its open or openat, as /proc says), or a
        placeholder when it cannot be read."""
        try:
            fields = _proc.read_proc(f"/proc/{tid}/syscall").split()
            nr, args = int(fields[0]), [int(field, 16) for field in fields[1:7]]
            if self._names.get(nr) == "open":
                return self._lexical(tid, AT_FDCWD, self.memory.read_cstring(tid, args[0]))
            if self._names.get(nr) == "openat":
                dirfd = _signed32(args[0])
                return self._lexical(tid, dirfd, self.memory.read_cstring(tid, args[1]))
        except (OSError, ValueError, IndexError):
            pass
        return "(a file the read lane's reader could not open)"

    def _controlling_terminal(
        self, notif: _seccomp.Notification, flags: int, cloexec: bool
    ) -> None:
        """/dev/tty, allowed: the caller's controlling terminal, which the kernel
        would find from the caller and the broker cannot (it has none).  The
        agent's relay pty when the caller is in the agent's first session, else
        a pty of the agent's own devpts; ENXIO for a process with none."""
        try:
            session, tty = _session_and_terminal(notif.pid)
        except (OSError, ValueError):
            self._fail(notif, errno.ESRCH)
            return
        if not tty:
            self._fail(notif, errno.ENXIO)
            return
        relay = session == self.judge.main_pid
        self.broker.act(broker.TERMINAL, notif.id, flags, cloexec, tty, relay)

    def _expected_read(
        self,
        notif: _seccomp.Notification,
        dirfd: int,
        raw: bytes,
        resolve_flags: int,
        cloexec: bool,
        setfl: int,
    ) -> broker.Expected | None:
        """The file this name opened for reading last time, if that read is still allowed.

        Decided on (real path, inode, linked more than once) the broker will
        check against what it opens: the decision `_open` would take on the
        same (`_checked` maps the same inode to the same target), so the
        broker may hand it over without asking again.  Anything else it
        finds goes the usual way.
        """
        seen = self._reads.get((dirfd, raw)) if not resolve_flags else None
        if seen is None:
            return None
        path, dev, ino, linked, target = seen
        if (ActionType.FILE_READ, target) not in self._allow_cache:
            return None
        return (path, dev, ino, linked, notif.id, cloexec, setfl)

    def _remember_read(self, dirfd: int, raw: bytes, pinned: Pinned, target: str) -> None:
        if len(self._reads) >= _READS_REMEMBERED:
            self._reads.clear()
        self._reads[(dirfd, raw)] = (pinned.path, pinned.dev, pinned.ino, pinned.nlink > 1, target)

    def _on_open(self, n: _seccomp.Notification, name: str) -> None:
        self._open(n, name, AT_FDCWD, n.args[0], n.args[1] & _VALID_OPEN_FLAGS, n.args[2])

    def _on_creat(self, n: _seccomp.Notification, name: str) -> None:
        self._open(n, name, AT_FDCWD, n.args[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, n.args[1])

    def _on_openat(self, n: _seccomp.Notification, name: str) -> None:
        flags = n.args[2] & _VALID_OPEN_FLAGS
        self._open(n, name, _signed32(n.args[0]), n.args[1], flags, n.args[3])

    def _on_openat2(self, n: _seccomp.Notification, name: str) -> None:
        size = n.args[3]
        if size < 24:
            _seccomp.respond_error(self.listener, n.id, errno.EINVAL)
            return
        flags, mode, resolve = struct.unpack("<QQQ", self.memory.read(n.pid, n.args[2], 24))
        creates = flags & os.O_CREAT or (flags & os.O_TMPFILE) == os.O_TMPFILE
        if flags & ~_VALID_OPEN_FLAGS or mode & ~0o7777 or (mode and not creates):
            _seccomp.respond_error(self.listener, n.id, errno.EINVAL)  # as openat2 itself
            return
        # RESOLVE_* flags narrow what the kernel may follow: resolve with them,
        # from the agent's own dirfd, so the answer is the one it asked for.
        self._open(n, name, _signed32(n.args[0]), n.args[1], flags, mode, resolve)

    # -- exec ---------------------------------------------------------------------

    def _exec(
        self,
        n: _seccomp.Notification,
        syscall: str,
        dirfd: int,
        path_ptr: int,
        argv_ptr: int,
        flags: int,
    ) -> None:
        tid = n.pid
        tgid = self._tgid_of(tid)
        pending = self._execs.get(tgid)
        if pending is not None and (caller := pending.thread or tgid) != tid:
            # Another thread's exec in this process: one process has one check.
            if _in_exec(tgid, caller):
                # Not done: its check holds.  (Two threads exec'ing at once is a
                # race the kernel lets one win; this one waits its turn.)
                self._fail(n, errno.EAGAIN)
                return
            if pending.thread and _thread_lives(tgid, pending.thread):
                self._drop_exec(tgid)  # that thread is elsewhere: its exec failed
            elif not self._exec_as_decided(n._replace(pid=tgid)):
                return  # what runs was not what that exec allowed: killed
        raw = self.memory.read_cstring(tid, path_ptr)
        script_name = _script_name(raw, dirfd)
        if not raw and flags & AT_EMPTY_PATH:
            raw = b"/proc/self/fd/%d" % dirfd
            dirfd = AT_FDCWD
        argv = self._argv(tid, argv_ptr)
        # Only looked at (nothing stays pinned): the kernel itself runs the exec.
        node = self.resolve(
            tid, dirfd, raw, follow=not flags & AT_SYMLINK_NOFOLLOW, want_script=True, keep=False
        )
        command = (ActionType.SHELL_EXECUTE, " ".join(argv))
        if node.error == errno.ENOENT:
            # Nothing there to run: a shell or execvp trying each PATH entry in
            # turn.  The command line is judged (an attempt is an attempt);
            # there is no file to spawn, so the kernel's ENOENT is the answer,
            # with no process_spawn check and no exec to watch for.
            response = self._decide(n, syscall, *command)
            if response.proceeds:
                self._fail(n, errno.ENOENT)
            else:
                self._refuse(n, response, errno.EACCES)
            return
        checks = [command, (ActionType.PROCESS_SPAWN, node.target)]
        if node.pinned.script:
            checks.append((ActionType.FILE_READ, node.target))
        response = self._decide_all(n, syscall, checks)
        if not response.proceeds:
            self._refuse(n, response, errno.EACCES)
            return
        if not self._interpreters_judged(n, syscall, node):
            return
        full = len(self._execs) >= _PER_PROCESS_CACHE and tgid not in self._execs
        if full and not self._room_for_an_exec():
            # Never a check dropped to make room: that image would run unchecked.
            self.judge.refuse_exec_unchecked(syscall, tid, command[1])
            self._fail(n, errno.EAGAIN)
            return
        tgid = self._exec_done(tid)
        # An exec cannot be done on the agent's behalf, so a racing thread
        # could swap argv after this check.  Remember what was allowed and
        # hold the new image to it at its first trapped syscall.
        before = _image(tgid) if _randomized(tid) else None
        file = (node.pinned.dev, node.pinned.ino) if not node.error else (0, 0)
        script = script_name if len(checks) > 2 else None
        thread = tid if tid != tgid else 0
        self._execs[tgid] = _AllowedExec(argv, file, before, script, thread)
        if thread:
            self._exec_threads[thread] = tgid
        if self.forwarded is not None and file != (0, 0) and argv and len(checks) == 2:
            # The native path checks the first syscall against the same (a
            # script's command line is the interpreter's: that stays here).
            self.broker.expect_exec(n.id, file, argv)
        _seccomp.respond_continue(self.listener, n.id)

    def _interpreters_judged(self, n: _seccomp.Notification, syscall: str, node: Resolved) -> bool:
        """Whether the files the kernel opens after the program itself may be
        run too; when not, the exec was answered (EACCES, on record).

        The kernel maps an ELF's interpreter (PT_INTERP) into the new process
        as it maps the program, and runs a #! script's interpreter (and that
        one's, BINPRM_MAX_RECURSION deep): each can then read itself.  So each
        is judged as process_spawn and file_read of its real path, resolved
        as the kernel's open_exec does: from the agent's cwd when relative
        (whatever dirfd execveat was given).  A file the policy never lets the
        agent write was not crafted by it: what it names next is the
        system's, and needs no check (most execs: /usr/bin's).  A file at no
        path (a memfd, a file removed) was written by no syscall judged by
        that name: it is checked.  An ELF interpreter is loaded as it is: its
        own PT_INTERP is not followed.
        """
        tid = n.pid
        for _level in range(_INTERPRETER_LEVELS):
            at_its_path = node.target.startswith("/") and not node.target.endswith(" (deleted)")
            if at_its_path and self.judge.refuses_writes(node.target):
                return True
            if node.error:
                # What would run cannot be looked at (the kernel says the same).
                self._fail(n, node.error)
                return False
            if node.pinned.unread:
                # Executable, unreadable (mode 0333): nobody can tell what it
                # names next, so it does not run.
                self.judge.refuse_unreadable_program(syscall, tid, node.target)
                self._fail(n, errno.EACCES)
                return False
            script = node.pinned.script
            interpreter = None
            for name in node.pinned.interpreters:
                # No magic link on the way (ELOOP): a /proc/PID/fd/N in the
                # name is one dup2 away from another file once judged, with
                # no syscall of ours in between (red team 16).
                interpreter = self.resolve(
                    tid,
                    AT_FDCWD,
                    name,
                    resolve_flags=_proc.RESOLVE_NO_MAGICLINKS,
                    want_script=script,
                    keep=False,
                )
                if interpreter.error:
                    self._fail(n, interpreter.error)  # the kernel's own answer, before it runs
                    return False
                target = interpreter.target
                checks = [(ActionType.PROCESS_SPAWN, target), (ActionType.FILE_READ, target)]
                response, rule = self._decide_all_by(n, syscall, checks)
                if not response.proceeds:
                    if response is Response.BLOCK and rule != DEFAULT_RULE_ID:
                        # Quiet, it could be tried again until the race is won:
                        # a file a rule names is an attack (the default's
                        # refusals are a toolchain the policy does not know).
                        # The kill goes out before the exec is answered.
                        self.judge.interpreter_refused(syscall, tid, node.target, target)
                    self._refuse(n, response, errno.EACCES)
                    return False
            if not script or interpreter is None:
                return True
            node = interpreter  # a script's interpreter is exec'd in turn
        self._fail(n, errno.ELOOP)  # deeper than the kernel goes
        return False

    def _exec_done(self, tid: int) -> int:
        """Thread `tid` execs: the process image changes, and its memory is read
        afresh from now on (its umask and pidfd stay cached: an exec keeps
        both).  Its process id."""
        tgid = self._tgid_of(tid)
        self._image_changed(tgid, tid)
        return tgid

    def _image_changed(self, tgid: int, tid: int) -> None:
        self.memory.forget(tgid)
        self.memory.forget(tid)
        self._drop_exec(tgid)

    def _room_for_an_exec(self) -> bool:
        """Whether another exec can be held to its check once the checks of
        processes gone are forgotten (images that exited before any trapped
        call).  A process id reused since keeps its check: nothing tells it
        from the process checked, and a check too many kills, never lets by."""
        for tgid in list(self._execs):
            if not os.path.exists(f"/proc/{tgid}"):
                self._drop_exec(tgid)
        return len(self._execs) < _PER_PROCESS_CACHE

    def _drop_exec(self, tgid: int) -> None:
        """Forget the exec `tgid` was allowed (it was checked, failed or replaced)."""
        stale = self._execs.pop(tgid, None)
        if stale is not None and stale.thread:
            self._exec_threads.pop(stale.thread, None)

    def _argv(self, tid: int, argv_ptr: int) -> list[str]:
        """The argument strings of an exec.

        A shell or a libc lays them out one after another: then one read of
        the span they cover takes them all.  Spread further apart (or one
        running past that span), each is read on its own.
        """
        pointers = self.memory.read_pointer_array(tid, argv_ptr) if argv_ptr else []
        span, start = b"", min(pointers, default=0)
        if pointers and max(pointers) - start <= _ARGV_SPAN:
            try:
                span = self.memory.read(tid, start, max(pointers) - start + _ARGV_LAST)
            except OSError:
                span = b""  # (the last string's page may be the last one mapped)
        argv: list[str] = []
        total = 0
        for pointer in pointers:
            end = span.find(b"\0", pointer - start) if span else -1
            if end >= 0:
                arg = span[pointer - start : end]
            else:
                arg = self.memory.read_cstring(tid, pointer, _MAX_ARG_STRLEN)
            # The kernel would refuse more than this too; without the cap, one
            # 128 KiB string named many times over is gigabytes to read.
            total += len(arg) + 1
            if total > _MAX_ARGV_BYTES:
                raise OSError(errno.E2BIG, "argument list too long")
            argv.append(os.fsdecode(arg))
        return argv

    def _exec_as_decided(self, notif: _seccomp.Notification) -> bool:
        """First syscall after an allowed exec: is the running image the one decided on?

        The image that called exec, unchanged, means the exec failed: nothing
        ran.  Otherwise what runs is held to the file and the argv allowed;
        a different file or argv (swapped in a race) is judged as its own
        exec.  False when the policy refuses it: that process is killed (an
        exec cannot be undone) and the syscall fails.
        """
        allowed = self._execs[notif.pid]
        if allowed.thread and _thread_lives(notif.pid, allowed.thread):
            return True  # the old image still runs: a thread's exec not done (or failed)
        self._drop_exec(notif.pid)
        running = _cmdline(notif.pid)
        if running is None:
            return True  # gone
        try:
            exe = os.stat(f"/proc/{notif.pid}/exe")
            file = (exe.st_dev, exe.st_ino)
        except OSError:
            file = (0, 0)
        if file == allowed.file != (0, 0) and allowed.matches(running):
            return True  # as decided
        image = _image(notif.pid)
        if image is not None and image == allowed.before:
            return True  # the exec failed: the very image that called it runs on
        checks: list[tuple[ActionType, str]] = []
        if file != allowed.file or file == (0, 0):
            path = self._running_file(notif.pid)
            if path is None:
                self._kill_swapped(notif, None)
                with contextlib.suppress(Exception):
                    self.judge.mediation_failed("execve", notif.pid, "no file to name after exec")
                _seccomp.respond_error(self.listener, notif.id, errno.EPERM)
                return False
            checks.append((ActionType.PROCESS_SPAWN, path))
        if not allowed.matches(running):
            checks.append((ActionType.SHELL_EXECUTE, " ".join(running)))
        response = self._decide_all(notif, "execve", checks)
        if response.proceeds:
            return True  # raced (or failed), into something allowed anyway
        self._kill_swapped(notif, response)
        _seccomp.respond_error(self.listener, notif.id, errno.EPERM)
        return False

    def _running_file(self, pid: int) -> str | None:
        """The real path of the file `pid` runs, as the agent sees it."""
        node = self.resolve(pid, AT_FDCWD, b"/proc/self/exe", keep=False)
        if not node.error:
            return node.target
        try:
            return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return None

    def _kill_swapped(self, notif: _seccomp.Notification, response: Response | None) -> None:
        if response is not Response.KILL:  # KILL took the whole tree already
            with contextlib.suppress(ProcessLookupError):
                os.kill(notif.pid, signal.SIGKILL)

    def _on_execve(self, n: _seccomp.Notification, name: str) -> None:
        self._exec(n, name, AT_FDCWD, n.args[0], n.args[1], 0)

    def _on_execveat(self, n: _seccomp.Notification, name: str) -> None:
        self._exec(n, name, _signed32(n.args[0]), n.args[1], n.args[2], n.args[4])

    # -- delete, create, move ------------------------------------------------------
    # The broker does the work on what was pinned, and answers the syscall.

    def _no_name_answered(
        self, n: _seccomp.Notification, dirfd: int, raw: bytes, errors: tuple[int, int, int, int]
    ) -> bool:
        """Whether `raw` has no last component to act on (`_no_name`: empty, a
        last "." or "..", "/" itself), and the syscall was answered as the
        kernel answers it: the errno `errors` gives for that kind of name,
        after the directory a "." or ".." is in is looked up (its errno
        first: `rmdir("nodir/..")` is ENOENT).  No rule is asked: no such
        syscall has any effect, and the lexical path such a name spells (the
        workspace's parent, "/") is not what it acts on."""
        which = _no_name(raw)
        if which < 0:
            return False
        err = errors[which]
        if which in (1, 2):
            head = raw.rstrip(b"/")[:-which] or b"."
            looked = self._pin(n.pid, dirfd, head, broker.PARENT, keep=False)
            err = looked.error or err
        self._fail(n, err)
        return True

    def _parent_op(
        self,
        n: _seccomp.Notification,
        syscall: str,
        action: ActionType,
        dirfd: int,
        path_ptr: int,
        no_name: tuple[int, int, int, int],
        op: int,
        *args: object,
    ) -> None:
        """`op` on the last component of the path at `path_ptr`, in its pinned
        directory, by the name as spelled (a trailing slash kept: `rm f/` is
        the kernel's ENOTDIR), if the policy lets `action` on its real path."""
        raw = self.memory.read_cstring(n.pid, path_ptr)
        if self._no_name_answered(n, dirfd, raw, no_name):
            return
        node = self.resolve_parent(n.pid, dirfd, raw)
        self._act(n, syscall, action, node, op, node.name, *args)

    def _unlink(
        self, n: _seccomp.Notification, syscall: str, dirfd: int, ptr: int, flags: int
    ) -> None:
        if flags & ~AT_REMOVEDIR:
            self._fail(n, errno.EINVAL)  # the kernel's first check: nothing is removed
            return
        rmdir = bool(flags & AT_REMOVEDIR)
        no_name = _RMDIR_NO_NAME if rmdir else _UNLINK_NO_NAME
        self._parent_op(
            n, syscall, ActionType.FILE_DELETE, dirfd, ptr, no_name, broker.UNLINK, rmdir
        )

    def _on_unlink(self, n: _seccomp.Notification, name: str) -> None:
        self._unlink(n, name, AT_FDCWD, n.args[0], 0)

    def _on_rmdir(self, n: _seccomp.Notification, name: str) -> None:
        self._unlink(n, name, AT_FDCWD, n.args[0], AT_REMOVEDIR)

    def _on_unlinkat(self, n: _seccomp.Notification, name: str) -> None:
        self._unlink(n, name, _signed32(n.args[0]), n.args[1], n.args[2])

    def _mkdir(
        self, n: _seccomp.Notification, syscall: str, dirfd: int, ptr: int, mode: int
    ) -> None:
        mode = mode & 0o7777 & ~self._umask(n.pid) & ~stat.S_ISUID
        parent = self._parent_of_new(n, dirfd, ptr)
        if parent is not None:
            self._act(n, syscall, ActionType.FILE_WRITE, parent, broker.MKDIR, parent.name, mode)

    def _parent_of_new(self, n: _seccomp.Notification, dirfd: int, ptr: int) -> Resolved | None:
        """The pinned parent of a name to be made; None, answered EEXIST, when
        something is there already (`mkdir -p`): as the kernel says, before any
        rule; None too, answered, for a name with no last component to make."""
        raw = self.memory.read_cstring(n.pid, ptr)
        if self._no_name_answered(n, dirfd, raw, _MAKE_NO_NAME):
            return None
        # What is there (only looked at) and the parent, in one exchange.
        wanted = [(dirfd, raw, AS_INODE), (dirfd, raw, AS_PARENT)]
        existing, parent = self.resolve_names(n.pid, wanted)
        if existing.error:
            return parent
        self.release(parent)
        self._fail(n, errno.EEXIST)
        return None

    def _mknod(
        self, n: _seccomp.Notification, syscall: str, dirfd: int, ptr: int, mode: int, dev: int
    ) -> None:
        """A file, FIFO or socket made by name is a create: file_write of the new
        name (a device node takes CAP_MKNOD, which neither agent nor broker has)."""
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in _NODE_KINDS:
            self._fail(n, errno.EPERM if kind == stat.S_IFDIR else errno.EINVAL)  # as the kernel
            return
        # The kernel reads dev as 32 bits, and only for a device.
        dev = dev & 0xFFFFFFFF if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        perms = mode & 0o7777 & ~self._umask(n.pid) & ~_SETID
        parent = self._parent_of_new(n, dirfd, ptr)
        if parent is not None:
            made = kind | perms
            self._act(
                n, syscall, ActionType.FILE_WRITE, parent, broker.MKNOD, parent.name, made, dev
            )

    def _on_mknod(self, n: _seccomp.Notification, name: str) -> None:
        self._mknod(n, name, AT_FDCWD, n.args[0], n.args[1] & 0xFFFFFFFF, n.args[2])

    def _on_mknodat(self, n: _seccomp.Notification, name: str) -> None:
        self._mknod(n, name, _signed32(n.args[0]), n.args[1], n.args[2] & 0xFFFFFFFF, n.args[3])

    def _on_mkdir(self, n: _seccomp.Notification, name: str) -> None:
        self._mkdir(n, name, AT_FDCWD, n.args[0], n.args[1])

    def _on_mkdirat(self, n: _seccomp.Notification, name: str) -> None:
        self._mkdir(n, name, _signed32(n.args[0]), n.args[1], n.args[2])

    def _symlink(
        self, n: _seccomp.Notification, syscall: str, target_ptr: int, dirfd: int, ptr: int
    ) -> None:
        content = self.memory.read_cstring(n.pid, target_ptr)
        if not content:
            self._fail(n, errno.ENOENT)  # the kernel's, before the new name is looked at
            return
        self._parent_op(
            n, syscall, ActionType.FILE_WRITE, dirfd, ptr, _MAKE_NO_NAME, broker.SYMLINK, content
        )

    def _on_symlink(self, n: _seccomp.Notification, name: str) -> None:
        self._symlink(n, name, n.args[0], AT_FDCWD, n.args[1])

    def _on_symlinkat(self, n: _seccomp.Notification, name: str) -> None:
        self._symlink(n, name, n.args[0], _signed32(n.args[1]), n.args[2])

    def _two_paths(
        self,
        n: _seccomp.Notification,
        syscall: str,
        olddirfd: int,
        old_ptr: int,
        newdirfd: int,
        new_ptr: int,
        *,
        linking: bool,
        flags: int,
    ) -> None:
        tid = n.pid
        # The kernel's first check, before either name: flags it does not know,
        # and an exchange that would also keep or white out the new name.
        known = AT_SYMLINK_FOLLOW | AT_EMPTY_PATH if linking else _RENAME_FLAGS
        exchange = not linking and flags & RENAME_EXCHANGE
        if flags & ~known or (exchange and flags & (RENAME_NOREPLACE | RENAME_WHITEOUT)):
            self._fail(n, errno.EINVAL)
            return
        old_raw = self.memory.read_cstring(tid, old_ptr)
        new_raw = self.memory.read_cstring(tid, new_ptr)
        follow = linking and bool(flags & AT_SYMLINK_FOLLOW)
        if linking and flags & AT_EMPTY_PATH and not old_raw:
            # The fd itself is linked: judged as what it is, as its
            # /proc/self/fd/N with AT_SYMLINK_FOLLOW is (the working directory
            # for AT_FDCWD, which is no file to link: EPERM).
            if olddirfd != AT_FDCWD and olddirfd < 0:
                self._fail(n, errno.EBADF)
                return
            old_raw = b"." if olddirfd == AT_FDCWD else b"/proc/self/fd/%d" % olddirfd
            olddirfd, follow = AT_FDCWD, True
        if self._no_names_answered(n, olddirfd, old_raw, newdirfd, new_raw, linking, flags):
            return
        # Both names (and for a link, the inode) in one exchange with the broker.
        if follow:
            source, dest = self.resolve_names(
                tid, [(olddirfd, old_raw, AS_OBJECT), (newdirfd, new_raw, AS_PARENT)]
            )
        elif linking:
            source, inode, dest = self.resolve_names(
                tid,
                [
                    (olddirfd, old_raw, AS_PARENT),
                    (olddirfd, old_raw, AS_INODE),
                    (newdirfd, new_raw, AS_PARENT),
                ],
            )
            if not source.error:
                # A hard link to a protected file must be judged as that file.
                try:
                    protected = self._protected_name(inode)
                except WalkFailed:
                    self.release(source, dest)
                    raise
                if protected is not None:
                    source.target = protected
        else:
            # What each name holds is only looked at: a file with other names
            # moves out with them still on it; a file at the new name goes.
            # (The entry itself, its trailing slash aside: with one, the kernel's
            # rename moves a directory or fails, and never follows a symlink.)
            source, source_file, dest, dest_file = self.resolve_names(
                tid,
                [
                    (olddirfd, old_raw, AS_PARENT),
                    (olddirfd, old_raw.rstrip(b"/"), AS_INODE),
                    (newdirfd, new_raw, AS_PARENT),
                    (newdirfd, new_raw.rstrip(b"/"), AS_INODE),
                ],
            )
        if linking:
            # A new name is the same file under rules of its own: making one is
            # judged as everything that name would let the agent do to the file
            # (read it, write it, change its mode) at the old name.
            checks = [
                (ActionType.FILE_READ, source.target),
                (ActionType.FILE_WRITE, source.target),
                (ActionType.FILE_CHMOD, source.target),
                (ActionType.FILE_WRITE, dest.target),
            ]
        else:
            try:
                checks = self._moved_file_checks(source, source_file)
                if flags & RENAME_EXCHANGE:
                    checks += self._moved_file_checks(dest, dest_file)
            except WalkFailed:
                self.release(source, dest)
                raise
            # Under its new name a file may be read where its old name is
            # refused (`key.pem` moved to `key.txt`): a move is a read too.
            checks[:0] = [
                (ActionType.FILE_MOVE, source.target),
                (ActionType.FILE_READ, source.target),
                (ActionType.FILE_WRITE, dest.target),
            ]
            if flags & RENAME_EXCHANGE:
                checks += [
                    (ActionType.FILE_MOVE, dest.target),
                    (ActionType.FILE_READ, dest.target),
                    (ActionType.FILE_WRITE, source.target),
                ]
            elif not dest_file.error and not flags & RENAME_NOREPLACE:
                # A rename over a file deletes it, and its name gets another file's mode.
                checks += [
                    (ActionType.FILE_DELETE, dest.target),
                    (ActionType.FILE_CHMOD, dest.target),
                ]
            if flags & RENAME_WHITEOUT:
                # The old name gets a new entry (a 0/0 character device).
                checks.append((ActionType.FILE_WRITE, source.target))
        response = self._decide_all(n, syscall, checks)
        if response.proceeds and not linking:
            moves = [(source, source_file, dest)]
            if flags & RENAME_EXCHANGE:
                moves.append((dest, dest_file, source))
            try:
                response = self._decide_carried(n, syscall, moves)
            except Exception:
                self.release(source, dest)
                raise
        if not response.proceeds:
            self.release(source, dest)
            self._refuse(n, response, errno.EACCES)
            return
        for node in (source, dest):
            if node.error:
                self.release(source, dest)
                self._fail(n, node.error)
                return
        if linking:
            self.broker.act(
                broker.LINK, n.id, source.handle, source.name, dest.handle, dest.name, follow
            )
        else:
            # The very objects judged: a name swapped since (by a racing thread,
            # on the native path) is not moved.
            judged = [
                _identity(source_file),
                _identity(dest_file) if flags & RENAME_EXCHANGE else None,
            ]
            self.broker.act(
                broker.RENAME,
                n.id,
                source.handle,
                source.name,
                dest.handle,
                dest.name,
                flags,
                *judged,
            )

    def _no_names_answered(
        self,
        n: _seccomp.Notification,
        olddirfd: int,
        old_raw: bytes,
        newdirfd: int,
        new_raw: bytes,
        linking: bool,
        flags: int,
    ) -> bool:
        """A rename or link with a name that has no last component to act on
        (`_no_name_answered`), answered as the kernel answers it, with no rule
        asked: an empty one first (ENOENT), then the old name, then the new."""
        if not old_raw or not new_raw:
            self._fail(n, errno.ENOENT)
            return True
        if linking:
            if _no_name(old_raw) >= 0:
                return self._link_of_a_directory(n, olddirfd, old_raw, newdirfd, new_raw)
            return self._no_name_answered(n, newdirfd, new_raw, _MAKE_NO_NAME)
        to = _NOREPLACE_NO_NAME if flags & RENAME_NOREPLACE else _MOVE_NO_NAME
        if self._no_name_answered(n, olddirfd, old_raw, _MOVE_NO_NAME):
            return True
        return self._no_name_answered(n, newdirfd, new_raw, to)

    def _link_of_a_directory(
        self, n: _seccomp.Notification, olddirfd: int, old_raw: bytes, newdirfd: int, new_raw: bytes
    ) -> bool:
        """link(".", new) and the like: a directory, which has no hard links.
        The kernel looks both names up first: the old one's errno, then the new
        one's (a new name that is there is EEXIST), else EPERM."""
        old = self._pin(n.pid, olddirfd, old_raw, broker.OBJECT, keep=False)
        if old.error:
            self._fail(n, old.error)
            return True
        if self._no_name_answered(n, newdirfd, new_raw, _MAKE_NO_NAME):
            return True
        there, parent = self.resolve_names(
            n.pid, [(newdirfd, new_raw, AS_INODE), (newdirfd, new_raw, AS_PARENT)]
        )
        self.release(parent)
        if not there.error:
            err = errno.EEXIST
        else:  # (a new name with a trailing slash is never made: ENOENT)
            err = errno.ENOENT if new_raw.endswith(b"/") else errno.EPERM
        self._fail(n, parent.error or err)
        return True

    def _on_rename(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths(n, name, AT_FDCWD, n.args[0], AT_FDCWD, n.args[1], linking=False, flags=0)

    def _decide_carried(
        self,
        n: _seccomp.Notification,
        syscall: str,
        moves: list[tuple[Resolved, Resolved, Resolved]],
    ) -> Response:
        """Each (name, what it holds, new name) of a move gives what it holds,
        and everything beneath, the new name: the judge's `carried_check`
        says what that must pass too.  A directory is listed by the broker,
        with the agent's rights; a name whose object cannot be looked at, or
        a tree that cannot be listed whole, is not moved."""
        escapes: list[MoveEscape] = []
        for name, held, to in moves:
            if name.error or to.error:
                continue  # the move fails with that error
            if held.error == errno.ENOENT:
                raise OSError(errno.ENOENT, "nothing to move")  # as the kernel says
            if held.error:
                raise MoveNotJudged(
                    f"moving {name.target}: what it names could not be looked at "
                    f"({os.strerror(held.error)}); it was not moved"
                )
            tree = None
            if stat.S_ISDIR(held.pinned.mode):
                tree = functools.partial(self._tree_of, name)
            escape = self.judge.carried_check(name.target, to.target, tree)
            if escape is not None:
                escapes.append(escape)
        if not escapes:
            return Response.ALLOW
        # A refusal first (an exchange's other side too); one approval is one name.
        escape = min(escapes, key=lambda e: e.holds)
        holds = sum(e.holds for e in escapes)
        if holds > 1 and escape.holds:
            raise MoveNotJudged(
                f"moving {moves[0][0].target} would carry {holds} names that each need a "
                f"person's approval (the first: {escape.action} {escape.target}); "
                "it was not moved: move them one at a time"
            )
        return self._decide(n, syscall, escape.action, escape.target)

    def _tree_of(self, directory: Resolved) -> list[str]:
        try:
            return self.broker.list_tree(directory.handle, directory.name)
        except broker.BrokerGone:
            raise
        except OSError as exc:
            raise MoveNotJudged(
                f"moving {directory.target} would carry a tree that could not be listed "
                f"whole ({exc.strerror or exc}); it was not moved"
            ) from None

    def _moved_file_checks(self, name: Resolved, file: Resolved) -> list[tuple[ActionType, str]]:
        """A regular file with other names keeps them when one name moves: it
        is judged as it would be through a link (its writes and mode changes
        reach the names left behind), under its protected name if it has one."""
        if file.error or not stat.S_ISREG(file.pinned.mode) or file.pinned.nlink < 2:
            return []
        protected = self._protected_name(file)
        if protected is not None:
            name.target = protected
        return [(ActionType.FILE_WRITE, name.target), (ActionType.FILE_CHMOD, name.target)]

    def _two_paths_at(
        self, n: _seccomp.Notification, name: str, *, linking: bool, flags: int
    ) -> None:
        """renameat/renameat2/linkat: (olddirfd, old, newdirfd, new[, flags])."""
        a = n.args
        self._two_paths(
            n, name, _signed32(a[0]), a[1], _signed32(a[2]), a[3], linking=linking, flags=flags
        )

    def _on_renameat(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths_at(n, name, linking=False, flags=0)

    def _on_renameat2(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths_at(n, name, linking=False, flags=n.args[4] & 0xFFFFFFFF)

    def _on_link(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths(n, name, AT_FDCWD, n.args[0], AT_FDCWD, n.args[1], linking=True, flags=0)

    def _on_linkat(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths_at(n, name, linking=True, flags=n.args[4] & 0xFFFFFFFF)

    # -- change an existing object ---------------------------------------------------

    def _object_op(
        self,
        n: _seccomp.Notification,
        syscall: str,
        action: ActionType,
        node: Resolved,
        op: int,
        *args: object,
    ) -> None:
        """`op` on the pinned object, or on the agent's own fd for the f* calls."""
        if node.error and not node.target.startswith("/"):
            # A bad fd names nothing a rule could: the kernel's own answer.
            self.release(node)
            self._fail(n, node.error)
            return
        if node.fd >= 0 and not node.error and not self._in_view(n.pid, node):
            # A file handed in (stdin from the host's /tmp) whose path names
            # something else for the agent: no rule can judge it (red team 27
            # chmod-ed a host key under /tmp, judged as the agent's own /tmp).
            self.release(node)
            self.judge.refuse_outside_view(syscall, n.pid, node.target)
            self._fail(n, errno.EACCES)
            return
        self._act(n, syscall, action, node, op, *args)

    def _in_view(self, tid: int, node: Resolved) -> bool:
        """Whether a regular file's fd is the file at its path in the agent's view."""
        if (
            not stat.S_ISREG(node.pinned.mode)
            or not node.pinned.nlink
            or not node.target.startswith("/")
        ):
            return True  # a pipe, a socket, a removed file: in no one's view by a name
        there = self._pin(tid, AT_FDCWD, os.fsencode(node.target), broker.OBJECT, keep=False)
        return not there.error and (there.dev, there.ino) == (node.pinned.dev, node.pinned.ino)

    def _act(
        self,
        n: _seccomp.Notification,
        syscall: str,
        action: ActionType,
        node: Resolved,
        op: int,
        *args: object,
    ) -> None:
        """`op` (with `args`) on what `node` pinned, if the policy lets `action` on its target."""
        if node.error and not node.target:
            self._fail(n, node.error)  # an empty name: nothing a rule could judge
            return
        response = self._decide(n, syscall, action, node.target)
        if not response.proceeds:
            self.release(node)
            self._refuse(n, response, errno.EACCES)
        elif node.error:
            self.release(node)
            self._fail(n, node.error)
        elif action in _CHANGES and _other_names(node):
            self.release(node)
            self.judge.refuse_hard_linked(syscall, n.pid, node.target)
            self._fail(n, errno.EACCES)
        elif node.fd >= 0:
            try:
                self.broker.act(_FD_OPS.get(op, op), n.id, *args, fds=(node.fd,))
            finally:
                node.close()
        else:
            self.broker.act(op, n.id, node.handle, *args)

    def _path_object(
        self, n: _seccomp.Notification, dirfd: int, ptr: int, follow: bool = True
    ) -> Resolved:
        return self.resolve(n.pid, dirfd, self.memory.read_cstring(n.pid, ptr), follow=follow)

    def _fd_object(self, n: _seccomp.Notification, agent_fd: int) -> Resolved:
        """Take a copy of the agent's fd, so a dup2 behind our back changes nothing."""
        try:
            fd = self._agent_fd(n.pid, agent_fd)
        except OSError as exc:
            return Resolved(f"fd:{agent_fd}", error=exc.errno or errno.EBADF)
        try:
            st = os.fstat(fd)
            # A directory deeper than PATH_MAX is named by climbing; a file
            # that deep stays ENAMETOOLONG, judged by no made-up path.
            path = _proc.long_path(fd) if stat.S_ISDIR(st.st_mode) else _proc.fd_path(fd)
        except OSError as exc:
            os.close(fd)
            return Resolved(f"fd:{agent_fd}", error=exc.errno or errno.EBADF)
        pinned = Pinned(path=path, mode=st.st_mode, dev=st.st_dev, ino=st.st_ino)
        pinned.nlink = st.st_nlink
        return self._checked(Resolved(path, pinned, fd=fd))

    def _on_truncate(self, n: _seccomp.Notification, name: str) -> None:
        length = n.args[1]
        if length >= 1 << 63:  # a negative off_t
            _seccomp.respond_error(self.listener, n.id, errno.EINVAL)
            return
        node = self._path_object(n, AT_FDCWD, n.args[0])
        self._object_op(n, name, ActionType.FILE_WRITE, node, broker.TRUNCATE, length)

    def _chmod(self, n: _seccomp.Notification, syscall: str, node: Resolved, mode: int) -> None:
        # A setuid or setgid file the agent made would run with its owner's
        # rights for everyone else: the bits are dropped (a directory keeps
        # setgid, which only passes its group on).
        keep = ~stat.S_ISUID if stat.S_ISDIR(node.pinned.mode) else ~_SETID
        mode = mode & 0o7777 & keep
        self._object_op(n, syscall, ActionType.FILE_CHMOD, node, broker.CHMOD, mode)

    def _on_chmod(self, n: _seccomp.Notification, name: str) -> None:
        self._chmod(n, name, self._path_object(n, AT_FDCWD, n.args[0]), n.args[1])

    def _on_fchmod(self, n: _seccomp.Notification, name: str) -> None:
        self._chmod(n, name, self._fd_object(n, _signed32(n.args[0])), n.args[1])

    def _on_fchmodat(self, n: _seccomp.Notification, name: str) -> None:
        self._chmod(n, name, self._path_object(n, _signed32(n.args[0]), n.args[1]), n.args[2])

    def _on_fchmodat2(self, n: _seccomp.Notification, name: str) -> None:
        # (AT_EMPTY_PATH names the fd only when the path is empty: `_at_object`.)
        node = self._at_object(n, _signed32(n.args[0]), n.args[1], n.args[3] & 0xFFFFFFFF)
        self._chmod(n, name, node, n.args[2])

    def _chown(
        self, n: _seccomp.Notification, syscall: str, node: Resolved, uid: int, gid: int
    ) -> None:
        # uid_t and gid_t are unsigned 32-bit; all ones means "leave it".
        uid, gid = (-1 if i & 0xFFFFFFFF == 0xFFFFFFFF else i & 0xFFFFFFFF for i in (uid, gid))
        self._object_op(n, syscall, ActionType.FILE_CHMOD, node, broker.CHOWN, uid, gid)

    def _on_chown(self, n: _seccomp.Notification, name: str) -> None:
        self._chown(n, name, self._path_object(n, AT_FDCWD, n.args[0]), n.args[1], n.args[2])

    def _on_lchown(self, n: _seccomp.Notification, name: str) -> None:
        node = self._path_object(n, AT_FDCWD, n.args[0], follow=False)
        self._chown(n, name, node, n.args[1], n.args[2])

    def _on_fchown(self, n: _seccomp.Notification, name: str) -> None:
        self._chown(n, name, self._fd_object(n, _signed32(n.args[0])), n.args[1], n.args[2])

    def _on_fchownat(self, n: _seccomp.Notification, name: str) -> None:
        node = self._at_object(n, _signed32(n.args[0]), n.args[1], n.args[4] & 0xFFFFFFFF)
        self._chown(n, name, node, n.args[2], n.args[3])

    # -- metadata: extended attributes, times, inode flags -------------------------
    # Decided on the real path like chmod (attributes, flags) or a write
    # (times), and done by the broker on the pinned object or on a copy of
    # the agent's fd: a uid-0 agent without capabilities still owns root's
    # files, so its own rights are no limit here.  The arguments are read
    # before the path is pinned, in the kernel's order, so a bad one leaves
    # nothing pinned.

    def _at_object(
        self, n: _seccomp.Notification, dirfd: int, path_ptr: int, at_flags: int
    ) -> Resolved:
        """The object of an `*at` call: the path from `dirfd`, or `dirfd` with AT_EMPTY_PATH."""
        raw = b""
        if path_ptr or not at_flags & AT_EMPTY_PATH:
            raw = self.memory.read_cstring(n.pid, path_ptr)
        if not raw and at_flags & AT_EMPTY_PATH:
            if dirfd == AT_FDCWD:
                raw = b"."  # the working directory itself
            else:
                return self._fd_object(n, dirfd)
        return self.resolve(n.pid, dirfd, raw, follow=not at_flags & AT_SYMLINK_NOFOLLOW)

    def _xattr_name(self, tid: int, ptr: int) -> bytes:
        try:
            name = self.memory.read_cstring(tid, ptr, _XATTR_NAME_MAX + 1)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise OSError(errno.ERANGE, "attribute name too long") from exc
            raise
        if not name:
            raise OSError(errno.ERANGE, "empty attribute name")
        return name

    def _xattr_value(self, tid: int, ptr: int, size: int, flags: int) -> bytes:
        if flags & ~(_XATTR_CREATE | _XATTR_REPLACE):
            raise OSError(errno.EINVAL, "unknown setxattr flags")
        if size > _XATTR_SIZE_MAX:
            raise OSError(errno.E2BIG, "attribute value too large")
        return self.memory.read(tid, ptr, size) if size else b""

    def _xattr(
        self,
        n: _seccomp.Notification,
        syscall: str,
        node: Resolved,
        name: bytes,
        value: bytes | None,
        flags: int = 0,
    ) -> None:
        """Set (or with `value` None remove) attribute `name`: decided as file_chmod."""
        if node.fd < 0 and not node.error and stat.S_ISLNK(node.pinned.mode):
            # The l* calls on a symlink itself: user.* attributes cannot live
            # there and the others need capabilities the agent does not have.
            response = self._decide(n, syscall, ActionType.FILE_CHMOD, node.target)
            self.release(node)
            self._refuse(n, response, errno.EACCES if not response.proceeds else errno.EPERM)
            return
        self._object_op(n, syscall, ActionType.FILE_CHMOD, node, broker.XATTR, name, value, flags)

    def _setxattr(self, n: _seccomp.Notification, syscall: str, follow: bool) -> None:
        a = n.args
        name = self._xattr_name(n.pid, a[1])
        value = self._xattr_value(n.pid, a[2], a[3], a[4] & 0xFFFFFFFF)
        node = self._path_object(n, AT_FDCWD, a[0], follow=follow)
        self._xattr(n, syscall, node, name, value, a[4] & 0xFFFFFFFF)

    def _on_setxattr(self, n: _seccomp.Notification, name: str) -> None:
        self._setxattr(n, name, follow=True)

    def _on_lsetxattr(self, n: _seccomp.Notification, name: str) -> None:
        self._setxattr(n, name, follow=False)

    def _on_fsetxattr(self, n: _seccomp.Notification, name: str) -> None:
        a = n.args
        attribute = self._xattr_name(n.pid, a[1])
        value = self._xattr_value(n.pid, a[2], a[3], a[4] & 0xFFFFFFFF)
        node = self._fd_object(n, _signed32(a[0]))
        self._xattr(n, name, node, attribute, value, a[4] & 0xFFFFFFFF)

    def _on_setxattrat(self, n: _seccomp.Notification, name: str) -> None:
        """setxattrat(dirfd, path, at_flags, name, &struct xattr_args, size)."""
        a = n.args
        at_flags = a[2] & 0xFFFFFFFF
        if at_flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH) or a[5] < _XATTR_ARGS.size:
            raise OSError(errno.EINVAL, "bad setxattrat arguments")
        if a[5] > 4096:
            raise OSError(errno.E2BIG, "xattr_args too large")
        value_ptr, size, flags = _XATTR_ARGS.unpack(self.memory.read(n.pid, a[4], _XATTR_ARGS.size))
        attribute = self._xattr_name(n.pid, a[3])
        value = self._xattr_value(n.pid, value_ptr, size, flags)
        node = self._at_object(n, _signed32(a[0]), a[1], at_flags)
        self._xattr(n, name, node, attribute, value, flags)

    def _on_removexattr(self, n: _seccomp.Notification, name: str) -> None:
        attribute = self._xattr_name(n.pid, n.args[1])
        self._xattr(n, name, self._path_object(n, AT_FDCWD, n.args[0]), attribute, None)

    def _on_lremovexattr(self, n: _seccomp.Notification, name: str) -> None:
        attribute = self._xattr_name(n.pid, n.args[1])
        node = self._path_object(n, AT_FDCWD, n.args[0], follow=False)
        self._xattr(n, name, node, attribute, None)

    def _on_fremovexattr(self, n: _seccomp.Notification, name: str) -> None:
        attribute = self._xattr_name(n.pid, n.args[1])
        self._xattr(n, name, self._fd_object(n, _signed32(n.args[0])), attribute, None)

    def _on_removexattrat(self, n: _seccomp.Notification, name: str) -> None:
        a = n.args
        at_flags = a[2] & 0xFFFFFFFF
        if at_flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
            raise OSError(errno.EINVAL, "bad removexattrat flags")
        attribute = self._xattr_name(n.pid, a[3])
        self._xattr(n, name, self._at_object(n, _signed32(a[0]), a[1], at_flags), attribute, None)

    def _times(self, tid: int, ptr: int, layout: str) -> tuple[_proc.Instant, _proc.Instant] | None:
        """The two times a call names (None: now), checked as the kernel checks them.

        `layout`: "timespec" (utimensat), "timeval" (utimes, futimesat) or
        "utimbuf" (utime).
        """
        if ptr == 0:
            return None
        if layout == "utimbuf":
            access, modify = struct.unpack("<qq", self.memory.read(tid, ptr, 16))
            return (access, 0), (modify, 0)
        a_sec, a_sub, m_sec, m_sub = struct.unpack("<qqqq", self.memory.read(tid, ptr, 32))
        if layout == "timeval":
            if not (0 <= a_sub < 1_000_000 and 0 <= m_sub < 1_000_000):
                raise OSError(errno.EINVAL, "microseconds out of range")
            return (a_sec, a_sub * 1000), (m_sec, m_sub * 1000)
        for sub in (a_sub, m_sub):
            if not (0 <= sub < 1_000_000_000 or sub in (_proc.UTIME_NOW, _proc.UTIME_OMIT)):
                raise OSError(errno.EINVAL, "nanoseconds out of range")
        return (a_sec, a_sub), (m_sec, m_sub)

    def _set_times(
        self,
        n: _seccomp.Notification,
        syscall: str,
        times: tuple[_proc.Instant, _proc.Instant] | None,
        node_of: Callable[[], Resolved],
    ) -> None:
        """Change an object's times: decided as a write to it."""
        if times is not None and times[0][1] == times[1][1] == _proc.UTIME_OMIT:
            _seccomp.respond_value(self.listener, n.id, 0)  # nothing to change: no lookup either
            return
        self._object_op(n, syscall, ActionType.FILE_WRITE, node_of(), broker.UTIMES, times)

    def _on_utime(self, n: _seccomp.Notification, name: str) -> None:
        times = self._times(n.pid, n.args[1], "utimbuf")
        self._set_times(n, name, times, lambda: self._path_object(n, AT_FDCWD, n.args[0]))

    def _on_utimes(self, n: _seccomp.Notification, name: str) -> None:
        times = self._times(n.pid, n.args[1], "timeval")
        self._set_times(n, name, times, lambda: self._path_object(n, AT_FDCWD, n.args[0]))

    def _on_futimesat(self, n: _seccomp.Notification, name: str) -> None:
        dirfd, path_ptr = _signed32(n.args[0]), n.args[1]
        times = self._times(n.pid, n.args[2], "timeval")
        if path_ptr == 0 and dirfd != AT_FDCWD:
            self._set_times(n, name, times, lambda: self._fd_object(n, dirfd))
        else:
            self._set_times(n, name, times, lambda: self._path_object(n, dirfd, path_ptr))

    def _on_utimensat(self, n: _seccomp.Notification, name: str) -> None:
        dirfd, path_ptr, flags = _signed32(n.args[0]), n.args[1], n.args[3] & 0xFFFFFFFF
        if flags & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH):
            raise OSError(errno.EINVAL, "unknown utimensat flags")
        times = self._times(n.pid, n.args[2], "timespec")
        if path_ptr == 0 and dirfd != AT_FDCWD:  # futimens()
            if flags:
                raise OSError(errno.EINVAL, "flags with a NULL path")
            self._set_times(n, name, times, lambda: self._fd_object(n, dirfd))
            return
        self._set_times(n, name, times, lambda: self._at_object(n, dirfd, path_ptr, flags))

    def _on_ioctl(self, n: _seccomp.Notification, name: str) -> None:
        """The inode-flag and generation ioctls (chattr): decided as file_chmod on the fd's file."""
        request = n.args[1] & 0xFFFFFFFF
        size = _IOCTL_ARGUMENT.get(request)
        if size is None:  # not one the filter sends here
            _seccomp.respond_continue(self.listener, n.id)
            return
        argument = self.memory.read(n.pid, n.args[2], size)
        node = self._fd_object(n, _signed32(n.args[0]))
        self._object_op(n, name, ActionType.FILE_CHMOD, node, broker.FD_IOCTL, request, argument)

    # -- other processes ------------------------------------------------------------------
    # With its own PID namespace the agent can only name its own processes.
    # Without one (a kernel that refused it), each pid must belong to its
    # tree, or the call fails with EPERM and a critical record: the agent
    # once lowered its supervisor's RLIMIT_CPU this way.  A pid can only be
    # recycled between the check and the call if its process was reaped and
    # the pid space wrapped meanwhile.

    def _own_namespace_of(self, tid: int, kind: str) -> bool:
        own = self._own_namespace.get(kind)
        if own is None:
            theirs = _proc.namespace_id(tid, kind)
            ours = _proc.namespace_id(os.getpid(), kind)
            if theirs is None or ours is None:
                return False  # cannot tell (the thread is gone): check as if shared
            own = self._own_namespace[kind] = theirs != ours
        return own

    def _reach(
        self,
        n: _seccomp.Notification,
        syscall: str,
        pids: tuple[int, ...] = (),
        group: int = 0,
        user: int | None = None,
    ) -> None:
        """Let a call about other processes through only if they are the agent's own."""
        if self._own_namespace_of(n.pid, "pid"):
            # Its own PID namespace holds only its tree, and its broker, PID 1
            # (and process group 1): an rlimit or priority set on that one
            # would starve every syscall the agent makes (red team 11).
            if 1 in pids or group == 1:
                self.judge.refuse_outside(syscall, n.pid, "1")
                self._fail(n, errno.EPERM)
                return
            _seccomp.respond_continue(self.listener, n.id)
            return
        outside = next((str(pid) for pid in pids if pid > 0 and not self.judge.in_tree(pid)), "")
        if group > 0 and not self.judge.group_in_tree(group):
            outside = f"pgrp:{group}"
        if user is not None:
            outside = f"user:{user & 0xFFFFFFFF}"  # every process of a uid: never only the agent's
        if outside:
            self.judge.refuse_outside(syscall, n.pid, outside)
            self._fail(n, errno.EPERM)
            return
        _seccomp.respond_continue(self.listener, n.id)

    def _first_pid(self, n: _seccomp.Notification, name: str) -> None:
        self._reach(n, name, (_signed32(n.args[0]),))

    _on_prlimit64 = _first_pid
    _on_sched_setscheduler = _first_pid
    _on_sched_setparam = _first_pid
    _on_sched_setattr = _first_pid
    _on_sched_setaffinity = _first_pid
    _on_migrate_pages = _first_pid
    _on_move_pages = _first_pid

    # -- the start of an image -----------------------------------------------------------
    # brk(NULL) and arch_prctl(ARCH_SET_FS) are trapped only as the first call a
    # new image makes: its exec was checked above, before the handler, and
    # there is nothing else to decide.

    def _on_brk(self, n: _seccomp.Notification, name: str) -> None:
        _seccomp.respond_continue(self.listener, n.id)

    _on_arch_prctl = _on_brk

    # -- the CPUs the agent may use ------------------------------------------------------
    # What the broker's native path answers (_fastpath.c, "the CPUs the agent
    # may use"), for the calls it forwards and for the Python path.

    def _on_sched_getaffinity(self, n: _seccomp.Notification, name: str) -> None:
        """About the caller itself, while CPU placement keeps the agent's tree on
        fewer CPUs than agentsup started with: those, as it would have them bare.
        Anything else (another thread, a thread that chose its own CPUs, a call
        the kernel refuses, a mask that cannot be written) is the kernel's."""
        mask = self._started_mask(n)
        if mask is not None and _seccomp.id_valid(self.listener, n.id):
            try:
                written = _proc.write_memory(n.pid, n.args[2], mask)
            except OSError:
                written = -1
            if written == len(mask):
                _seccomp.respond_value(self.listener, n.id, len(mask))
                return
        _seccomp.respond_continue(self.listener, n.id)

    def _started_mask(self, n: _seccomp.Notification) -> bytes | None:
        """The mask to answer `n` with, or None for the kernel's own answer."""
        tree = self.judge.tree
        pid = _signed32(n.args[0])
        if tree is None or (pid != 0 and pid != _proc.namespace_pid(n.pid)):
            return None
        try:
            placed = _proc.cpu_mask(tree.root_pid)
            started = placement.cpu_mask(placement.all_cpus(), len(placed))
            if placed == started:
                return None  # not placed on fewer CPUs
            # With the agent's own length: checked (EINVAL) and cut as for the agent.
            theirs = _proc.cpu_mask(n.pid, n.args[1])
        except OSError:
            return None
        if not theirs or theirs != placed[: len(theirs)]:
            return None  # CPUs of its own choosing
        return started[: len(theirs)]

    def _on_kcmp(self, n: _seccomp.Notification, name: str) -> None:
        self._reach(n, name, (_signed32(n.args[0]), _signed32(n.args[1])))

    def _which_who(self, n: _seccomp.Notification, name: str, kinds: tuple[int, int, int]) -> None:
        """setpriority/ioprio_set: `which` says whether `who` is a pid, a group or a uid."""
        which, who = n.args[0] & 0xFFFFFFFF, _signed32(n.args[1])
        process, group, user = kinds
        if which == process:
            self._reach(n, name, (who,))
        elif which == group:
            self._reach(n, name, group=who)
        elif which == user:
            self._reach(n, name, user=who)
        else:
            _seccomp.respond_continue(self.listener, n.id)  # EINVAL from the kernel

    def _on_setpriority(self, n: _seccomp.Notification, name: str) -> None:
        self._which_who(n, name, (0, _seccomp.PRIO_PGRP, _seccomp.PRIO_USER))

    def _on_ioprio_set(self, n: _seccomp.Notification, name: str) -> None:
        self._which_who(n, name, (1, _seccomp.IOPRIO_WHO_PGRP, _seccomp.IOPRIO_WHO_USER))

    def _on_process_madvise(self, n: _seccomp.Notification, name: str) -> None:
        """process_madvise(pidfd, ...): the pidfd's process must be the agent's own.

        A pidfd can come from outside even with a PID namespace (passed over
        a socket), so it is always checked, on a copy of it.  It is then
        CONTINUEd: done by the broker, the call would be the broker's, which
        may reach more (itself, or any descendant under Yama).  A thread
        swapping the fd meanwhile gains advice on another process's memory,
        and only where the kernel's own ptrace check (Landlock's domain)
        lets it.
        """
        pidfd = self._agent_socket(n)  # a copy of the fd, whatever it is
        if pidfd < 0:
            return
        try:
            pid = _proc.pidfd_target(os.getpid(), pidfd)
        finally:
            os.close(pidfd)
        if pid is not None and pid > 0 and not self.judge.in_tree(pid):
            self.judge.refuse_outside(name, n.pid, str(pid))
            self._fail(n, errno.EPERM)
            return
        _seccomp.respond_continue(self.listener, n.id)  # not a live pidfd: the kernel says so

    # -- network and memory ---------------------------------------------------------
    # The supervisor decides on the address it copied once; the broker makes the
    # call with that very copy, on a duplicate of the agent's socket, with the
    # agent's rights (its Landlock TCP rules, no CAP_NET_BIND_SERVICE).

    def _decided_address(
        self, n: _seccomp.Notification, syscall: str, ptr: int, length: int, *, binds: bool = False
    ) -> tuple[bytes, Resolved | None] | None:
        """The sockaddr the agent named, copied once, if the policy lets it through.

        None when the syscall is already answered: no address (CONTINUE, there
        is nothing to decide) or refused.  For a unix socket path, the socket
        file is pinned too: the connect goes to what was decided on.  For a
        bind (`binds`), the directory it would be made in is pinned, and the
        target is that directory's real path and the new name.
        """
        if ptr == 0 or length < 2:
            _seccomp.respond_continue(self.listener, n.id)
            return None
        data = self.memory.read(n.pid, ptr, min(length, 128))
        node = self._unix_node(n.pid, data, binds=binds)
        if node is not None and not binds and node.error == errno.ENOENT:
            # Nothing there: what the kernel would say, no rule asked (glibc
            # tries nscd's socket at every user lookup, where none runs).
            self.release(node)
            self._fail(n, errno.ENOENT)
            return None
        target = describe_sockaddr(
            data, lambda _raw: node.target if node else "", reaching=not binds
        )
        response = self._decide(n, syscall, ActionType.NETWORK_CONNECT, target)
        if not response.proceeds:
            if node is not None:
                self.release(node)
            self._refuse(n, response, errno.EPERM)
            return None
        if binds and node is not None and not node.error:
            # A bind makes a new entry at that name, as mknod would: a write.
            response = self._decide(n, syscall, ActionType.FILE_WRITE, node.target)
            if not response.proceeds:
                self.release(node)
                self._refuse(n, response, errno.EACCES)
                return None
        return data, node

    def _unix_node(self, tid: int, data: bytes, *, binds: bool = False) -> Resolved | None:
        """The socket file a unix sockaddr names, pinned (for a bind: the directory
        it would be made in, and its name); None for other addresses."""
        if len(data) < 3 or struct.unpack_from("<H", data)[0] != socket.AF_UNIX:
            return None
        path = data[2:].split(b"\0", 1)[0]
        if data[2] == 0 or not path:
            return None  # abstract: no file to pin
        if binds:
            return self.resolve_parent(tid, AT_FDCWD, path)
        return self.resolve(tid, AT_FDCWD, path)

    def _judge_sockaddr(self, n: _seccomp.Notification, syscall: str, data: bytes) -> Response:
        node = self._unix_node(n.pid, data)
        if node is not None:
            self.release(node)
        target = describe_sockaddr(data, lambda _raw: node.target if node else "", reaching=True)
        return self._decide(n, syscall, ActionType.NETWORK_CONNECT, target)

    def _agent_socket(self, n: _seccomp.Notification) -> int:
        """A duplicate of the socket in the syscall's first argument; -1 if answered."""
        try:
            return self._agent_fd(n.pid, _signed32(n.args[0]))
        except OSError as exc:
            _seccomp.respond_error(self.listener, n.id, exc.errno or errno.EBADF)
            return -1

    def _on_connect(self, n: _seccomp.Notification, name: str) -> None:
        self._socket_call(n, name, connect=True)

    def _on_bind(self, n: _seccomp.Notification, name: str) -> None:
        self._socket_call(n, name, connect=False)

    def _socket_call(self, n: _seccomp.Notification, syscall: str, *, connect: bool) -> None:
        """connect/bind: decide on the address we copied, and use that very copy.

        The broker makes the call, on a duplicate of the agent's socket: with
        the IP address copied, to the socket file pinned (connect), with the
        path copied, from the agent's cwd and with its umask (bind), or with
        the abstract name copied.  A thread rewriting the address meanwhile
        changes nothing.
        """
        fd, family, _kind = self._socket_kind(n)
        if fd < 0:
            return
        if family == socket.AF_NETLINK:
            self._netlink_address_call(n, syscall, fd, connect=connect)
            return
        os.close(fd)
        if not connect and self._bind_loopback_any_port(n):
            return
        length = n.args[2] & 0xFFFFFFFF
        decided = self._decided_address(n, syscall, n.args[1], length, binds=not connect)
        if decided is None:
            return
        data, node = decided
        address: object = ip_address_tuple(data)
        if node is not None and (node.error or length > _SOCKADDR_UN_SIZE):
            self.release(node)
            self._fail(n, node.error or errno.EINVAL)  # EINVAL: longer than a sockaddr_un
            return
        if address is None and node is None:
            address = abstract_address(data[:length])
            if address is None:
                _seccomp.respond_continue(self.listener, n.id)  # netlink, an autobind, ...
                return
            if length > _SOCKADDR_UN_SIZE:
                self._fail(n, errno.EINVAL)  # as the kernel
                return
        fd = self._agent_socket(n)
        if fd < 0:
            if node is not None:
                self.release(node)
            return
        if connect:
            self._connect(n, fd, address, node)
            return
        try:
            if node is not None:  # decided on: its real directory (pinned) and name
                self._bind_unix(n, fd, data[2:length].split(b"\0", 1)[0], node)
            else:
                self.broker.act(broker.BIND, n.id, address, fds=(fd,))
        finally:
            os.close(fd)

    # -- netlink: the socket's protocol is the target, never its sockaddr

    def _netlink_judged(self, n: _seccomp.Notification, syscall: str, fd: int) -> bool:
        """Whether a call on netlink socket `fd` (a duplicate) may go on; False if answered.

        As at its creation (`_on_socket`): in the agent's own network
        namespace no rule is asked (it reaches that namespace only, and the
        kernel's checks apply); outside it the target is `netlink:PROTOCOL`,
        so one rule covers the socket and its bind, connect and sends.  The
        sockaddr is no target: its nl_pid is a port id, not what is reached.
        """
        if self._own_namespace_of(n.pid, "net"):
            return True
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0, os.dup(fd)) as sock:
                protocol = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        except OSError as exc:
            self._fail(n, exc.errno or errno.ENOTSOCK)
            return False
        target = socket_target(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        response = self._decide(n, syscall, ActionType.NETWORK_CONNECT, target or "netlink:")
        if not response.proceeds:
            self._refuse(n, response, errno.EPERM)
            return False
        return True

    def _netlink_sockaddr(
        self, n: _seccomp.Notification, ptr: int, length: int, *, disconnects: bool = False
    ) -> tuple[int, ...] | int:
        """The (nl_pid, nl_groups) a netlink bind/connect/send names, read once;
        () for a connect to AF_UNSPEC (`disconnects`: the kernel then forgets
        the peer); or the errno the kernel answers (EINVAL: too short, or
        another family)."""
        if length < 0 or length > _SOCKADDR_STORAGE:
            return errno.EINVAL
        data = self.memory.read(n.pid, ptr, length) if length else b""
        family = struct.unpack_from("<H", data)[0] if length >= 2 else -1
        if disconnects and family == socket.AF_UNSPEC:
            return ()
        if family != socket.AF_NETLINK or length < _SOCKADDR_NL_SIZE:
            return errno.EINVAL
        port, groups = struct.unpack_from("<II", data, 4)
        return (port, groups)

    def _netlink_address_call(
        self, n: _seccomp.Notification, syscall: str, fd: int, *, connect: bool
    ) -> None:
        """bind/connect on a netlink socket (`fd`, a duplicate this closes):
        judged by its protocol, then made by the broker with the sockaddr
        copied, on the very socket looked at (a dup2 meanwhile changes nothing)."""
        try:
            if not self._netlink_judged(n, syscall, fd):
                return
            address = self._netlink_sockaddr(
                n, n.args[1], _signed32(n.args[2]), disconnects=connect
            )
            if isinstance(address, int):
                self._fail(n, address)
                return
            if connect:
                ours, fd = fd, -1
                self._connect(n, ours, address, None)  # it closes the fd, whatever happens
                return
            self.broker.act(broker.BIND, n.id, address, fds=(fd,))
        finally:
            if fd >= 0:
                os.close(fd)

    def _netlink_send(
        self,
        n: _seccomp.Notification,
        syscall: str,
        fd: int,
        name: tuple[int, int],
        payload: Callable[[int], bytes | None],
        flags: int,
    ) -> None:
        """sendto/sendmsg on a netlink socket (`fd`, a duplicate; the caller
        closes it): judged by its protocol, then sent by the broker with the
        address (`name`: pointer and length) and payload copied.

        A message longer than the socket's send buffer is EMSGSIZE, as the
        kernel says; one with ancillary data is not taken here (the caller).
        """
        if not self._netlink_judged(n, syscall, fd):
            return
        address: tuple[int, ...] | None = None
        if name[0] and name[1]:
            decoded = self._netlink_sockaddr(n, name[0], name[1])
            if isinstance(decoded, int):
                self._fail(n, decoded)
                return
            address = decoded
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0, os.dup(fd)) as sock:
            limit = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        data = payload(min(limit, _MAX_NETLINK_MESSAGE))
        if data is None:
            self._fail(n, errno.EMSGSIZE)
            return
        self.broker.act(broker.SENDTO, n.id, data, flags, address, fds=(fd,))

    def _connect(
        self, n: _seccomp.Notification, fd: int, address: object, node: Resolved | None
    ) -> None:
        """The broker connects `fd` (a duplicate of the agent's socket, ours to
        close) to `address`, or to the socket file `node` pinned; answered now,
        or waited for in the loop (`_connected`).

        A full backlog of a unix listener is EAGAIN to the broker's connect,
        which never blocks; a blocking one of the agent's waits for room, as
        the kernel would make it wait (`_try_again`)."""
        try:
            handle = node.handle if node is not None else -1
            err = self.broker.connect(fd, None if node is not None else address, handle)
        except BaseException:
            os.close(fd)
            raise
        if node is not None and err != errno.EAGAIN:
            node.pinned.handle = -1  # the broker took it (on EAGAIN it keeps it pinned)
        unix = node is not None or isinstance(address, bytes)
        if err == errno.EAGAIN and unix and self._try_again(n, fd, address, node):
            return
        self._backlog_waits.pop(n.id, None)
        if node is not None:
            self.release(node)
        if err != errno.EINPROGRESS:
            os.close(fd)
        self._connected(n, fd, err)

    def _try_again(
        self, n: _seccomp.Notification, fd: int, address: object, node: Resolved | None
    ) -> bool:
        """For a blocking socket: connect again a little later (1 ms, doubling up
        to 50 ms), while the agent still waits in its call, for at most
        CONNECT_TIMEOUT in all.  False when it does not wait (non-blocking)."""
        started = self._backlog_waits.get(n.id)
        now = time.monotonic()
        if (
            self._call_later is None
            or fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
            or (started is not None and now - started > CONNECT_TIMEOUT)
        ):
            return False
        if started is None:
            started = self._backlog_waits[n.id] = now
        delay = min(_BACKLOG_WAIT_MAX, max(_BACKLOG_WAIT_MIN, now - started))

        def again() -> None:  # a timer's callback: it must not raise
            try:
                waiting = _seccomp.id_valid(self.listener, n.id)
            except OSError:
                waiting = False
            if not waiting:  # the agent's call ended meanwhile (a signal, its exit)
                self._backlog_waits.pop(n.id, None)
                if node is not None:
                    self.release(node)
                os.close(fd)
                return
            try:
                self._connect(n, fd, address, node)  # closes fd, whatever happens
            except Exception:
                self._backlog_waits.pop(n.id, None)
                self._answer_error(n, errno.EIO)  # the broker is gone: fail closed

        self._call_later(delay, again)
        return True

    def _bind_unix(self, n: _seccomp.Notification, fd: int, path: bytes, node: Resolved) -> None:
        """The broker binds socket `fd` in the directory `node` pinned (the one
        judged, whatever the agent's cwd or the path's directories are by now),
        to `path` as the agent gave it (that name is what getsockname() says),
        with its umask.  The agent's cwd goes along for a relative path with a
        slash: the broker binds that from it, refused unless it still leads
        into the pinned directory (`broker.Broker._bind_unix`)."""
        fds = [fd]
        try:
            umask = self._umask(n.pid)
            if b"/" in path and not path.startswith(b"/"):
                fds.append(self._open_anchor(f"/proc/{n.pid}/cwd"))
        except OSError as exc:
            self.release(node)
            self._fail(n, exc.errno or errno.ENOENT)
            return
        try:
            self.broker.act(
                broker.BIND_UNIX, n.id, node.handle, node.name, path, umask, fds=tuple(fds)
            )
            node.pinned.handle = -1  # the broker took it
        finally:
            for extra in fds[1:]:
                os.close(extra)

    def _bind_loopback_any_port(self, n: _seccomp.Notification) -> bool:
        """A bind to loopback port 0 reaches nobody (urllib3 probes IPv6 so): no rule.

        Done by the broker with the copied address; True when answered.
        """
        ptr, length = n.args[1], n.args[2] & 0xFFFFFFFF
        if ptr == 0 or length < 2:
            return False
        address = ip_address_tuple(self.memory.read(n.pid, ptr, min(length, 128)))
        if address is None or address[1] != 0:
            return False
        host = str(address[0])
        if not (host == "::1" or host.startswith("127.")):
            return False
        fd = self._agent_socket(n)
        if fd >= 0:
            try:
                self.broker.act(broker.BIND, n.id, address, fds=(fd,))
            finally:
                os.close(fd)
        return True

    def _connected(self, n: _seccomp.Notification, fd: int, err: int) -> None:
        """Answer a connect the broker started; a blocking one waits in the loop."""
        if err != errno.EINPROGRESS:
            if err:
                self._fail(n, err)
            else:
                _seccomp.respond_value(self.listener, n.id, 0)
            return
        blocking = not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        if not blocking or self._wait_writable is None:
            os.close(fd)
            self._fail(n, err)
            return

        # A blocking connect in progress: the agent keeps waiting in its
        # syscall while the loop waits for the handshake.
        def done() -> None:
            result = socket.socket(fileno=os.dup(fd)).getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            os.close(fd)
            if result:
                self._fail(n, result)
            else:
                _seccomp.respond_value(self.listener, n.id, 0)

        def timed_out() -> None:
            os.close(fd)
            self._fail(n, errno.ETIMEDOUT)

        self._wait_writable(fd, done, timed_out, CONNECT_TIMEOUT)

    def _on_listen(self, n: _seccomp.Notification, name: str) -> None:
        """listen on a socket never bound is a bind: to the wildcard address, any port.

        The kernel binds such a socket itself (0.0.0.0, or [::]) and it takes
        connections from everywhere; that is judged as a bind to 0.0.0.0:0
        (or [::]:0).  A bound socket was judged at its bind.  Either way the
        broker listens on the very socket that was looked at, so a thread
        swapping the fd number meanwhile changes nothing.
        """
        fd, family, _kind = self._socket_kind(n)
        if fd < 0:
            return
        try:
            if family not in (socket.AF_INET, socket.AF_INET6):
                _seccomp.respond_continue(self.listener, n.id)  # unix: decided at bind
                return
            with socket.socket(fileno=os.dup(fd)) as sock:
                port = sock.getsockname()[1]
            if port == 0:
                target = "0.0.0.0:0" if family == socket.AF_INET else "[::]:0"
                response = self._decide(n, name, ActionType.NETWORK_CONNECT, target)
                if not response.proceeds:
                    self._refuse(n, response, errno.EPERM)
                    return
            backlog = _signed32(n.args[1])
            # A negative backlog means "as many as allowed" to the kernel; to
            # Python's listen() it would mean 0.
            self.broker.act(broker.LISTEN, n.id, backlog if backlog >= 0 else 4096, fds=(fd,))
        finally:
            os.close(fd)

    def _on_socket(self, n: _seccomp.Notification, name: str) -> None:
        """Packet, raw and netlink sockets (only those reach here, from BPF).

        In a network namespace of its own they see only the agent's loopback,
        and the kernel's capability checks apply.  Outside one they see the
        host's network: a rule must allow them, as `network_connect` targets
        `packet:0xPROTO`, `raw:FAMILY:PROTO` or `netlink:PROTOCOL` (e.g.
        `netlink:route`, which glibc's getaddrinfo probes with AI_ADDRCONFIG).
        """
        family, kind, protocol = (a & 0xFFFFFFFF for a in n.args[:3])
        target = socket_target(family, kind & 0xF, protocol)
        if target is None or self._own_namespace_of(n.pid, "net"):
            _seccomp.respond_continue(self.listener, n.id)
            return
        response = self._decide(n, name, ActionType.NETWORK_CONNECT, target)
        if not response.proceeds:
            self._refuse(n, response, errno.EPERM)
            return
        _seccomp.respond_continue(self.listener, n.id)

    def _on_sendto(self, n: _seccomp.Notification, name: str) -> None:
        """A datagram to an address (BPF lets sendto without one through): sent
        by the broker with the copied address, on IP and unix datagram sockets.

        Like connect, the address the agent named is read once, decided on,
        and used; a thread rewriting it afterwards changes nothing.  The
        payload is copied too (for IP at most 64 KiB, a UDP datagram's limit;
        for unix, `_send_unix`).  On a unix stream socket the kernel refuses
        any address (EISCONN, or EOPNOTSUPP when not connected) and a
        seqpacket socket ignores it (sent to the peer; checked on Linux
        6.18): those go on to the kernel after the decision, whatever the
        address says by then.
        """
        fd, family, kind = self._socket_kind(n)
        if fd < 0:
            return
        if _unix_datagram_socket(family, kind):
            ptr, size = n.args[1], n.args[2]

            def payload(limit: int) -> bytes | None:
                if size > limit:
                    return None
                return self.memory.read(n.pid, ptr, size) if size else b""

            message = (n.args[4], _signed32(n.args[5]), payload, 0, 0)
            self._send_unix(n, name, fd, [message], _signed32(n.args[3]), counted=False)
            return
        try:
            self._sendto_elsewhere(n, name, fd, family, kind)
        finally:
            os.close(fd)

    def _sendto_elsewhere(
        self, n: _seccomp.Notification, name: str, fd: int, family: int, kind: int
    ) -> None:
        """sendto on a socket that is no unix datagram socket (`fd`: a duplicate)."""
        if family == socket.AF_NETLINK:
            self._sendto_netlink(n, name, fd)
            return
        ip_datagrams = family in (socket.AF_INET, socket.AF_INET6) and kind != socket.SOCK_STREAM
        decided = self._decided_address(n, name, n.args[4], n.args[5] & 0xFFFFFFFF)
        if decided is None:
            return
        data, node = decided
        if node is not None:
            self.release(node)
        address = ip_address_tuple(data)
        length = n.args[2]
        if address is not None and length > _MAX_DATAGRAM and n.args[3] & _MSG_FASTOPEN:
            # A continued TCP Fast Open would connect to whatever the address
            # says by then; past a datagram's size only TCP could take it.
            self._fail(n, errno.EOPNOTSUPP)
            return
        if address is None and ip_datagrams:
            # Continued, the kernel would read the address again, and a thread
            # may have made it an IP one by then (or AF_UNSPEC, which UDP
            # takes as AF_INET): what the kernel says to the family copied.
            self._fail(n, errno.EAFNOSUPPORT if family == socket.AF_INET else errno.EINVAL)
            return
        if address is None or length > _MAX_DATAGRAM:
            # Too long for UDP (EMSGSIZE before the address is looked at), or
            # not an IP address on a socket that ignores or refuses it (a
            # stream, a unix seqpacket, netlink): the kernel may have it.
            _seccomp.respond_continue(self.listener, n.id)
            return
        payload = self.memory.read(n.pid, n.args[1], length) if length else b""
        flags = _signed32(n.args[3])
        self.broker.act(broker.SENDTO, n.id, payload, flags, address, fds=(fd,))

    def _sendto_netlink(self, n: _seccomp.Notification, name: str, fd: int) -> None:
        """sendto on a netlink socket (`fd`: a duplicate): `_netlink_send`."""
        ptr, size = n.args[1], n.args[2]

        def payload(limit: int) -> bytes | None:
            if size > limit:
                return None
            return self.memory.read(n.pid, ptr, size) if size else b""

        # The kernel takes an address only with a length (0: none, as no pointer).
        named = (n.args[4], _signed32(n.args[5]))
        if named[1] > _SOCKADDR_STORAGE or named[1] < 0:
            self._fail(n, errno.EINVAL)  # as the kernel, copying it
            return
        self._netlink_send(n, name, fd, named, payload, _signed32(n.args[3]))

    def _socket_kind(self, n: _seccomp.Notification) -> tuple[int, int, int]:
        """(duplicate fd, family, type) of the agent's socket; fd -1 if answered
        (ENOTSOCK for an fd that is no socket)."""
        fd = self._agent_socket(n)
        if fd < 0:
            return -1, 0, 0
        try:
            # Family and type given: nothing is looked up before the socket is ours.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, os.dup(fd)) as sock:
                family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
                kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        except OSError as exc:
            os.close(fd)
            self._fail(n, exc.errno or errno.ENOTSOCK)
            return -1, 0, 0
        return fd, family, kind

    def _on_sendmsg(self, n: _seccomp.Notification, name: str) -> None:
        """sendmsg: on IP and unix datagram sockets, never CONTINUEd.

        msg_name (and msg_namelen, msg_control) live in memory a racing
        thread can rewrite after the check, and the kernel reads them again.
        So on those sockets the broker sends the payload and address that
        were copied and decided on (with no address: the socket's connected
        peer, decided at connect); on a unix socket with the fds passed too
        (`_send_unix`).  A connected stream socket ignores msg_name (TCP Fast
        Open aside, which is refused), so it goes on as it is; so do unix
        stream and seqpacket sockets: the kernel refuses any msg_name on a
        stream (EISCONN, or EOPNOTSUPP) and ignores it on a seqpacket (sent
        to the peer), as checked on Linux 6.18, and their fds go to the peer
        decided at connect.  Other families (netlink, packet) keep CONTINUE
        after the decision on the name.
        """
        (name_ptr, name_len, iov_ptr, iov_count, control_ptr, control_len, _flags) = _MSGHDR.unpack(
            self.memory.read(n.pid, n.args[1], _MSGHDR.size)
        )
        flags = _signed32(n.args[2])
        fd, family, kind = self._socket_kind(n)
        if fd < 0:
            return
        if _unix_datagram_socket(family, kind):

            def payload_of(limit: int) -> bytes | None:
                return self._gather(n.pid, iov_ptr, iov_count, limit)

            message = (name_ptr, _signed32(name_len), payload_of, control_ptr, control_len)
            self._send_unix(n, name, fd, [message], flags, counted=False)
            return
        try:
            if family == socket.AF_NETLINK:
                if control_len:
                    # SCM_CREDENTIALS must name the sender: the broker cannot
                    # speak for the agent, and the kernel would read the
                    # message again if let through.
                    self._fail(n, errno.EOPNOTSUPP)
                    return

                def netlink_payload(limit: int) -> bytes | None:
                    return self._gather(n.pid, iov_ptr, iov_count, limit)

                # msg_namelen past a sockaddr_storage is cut to it, as the kernel does.
                named = (name_ptr, min(_signed32(name_len), _SOCKADDR_STORAGE))
                self._netlink_send(n, name, fd, named, netlink_payload, flags)
                return
            if family not in (socket.AF_INET, socket.AF_INET6):
                if name_ptr and name_len >= 2:
                    data = self.memory.read(n.pid, name_ptr, min(name_len, 128))
                    response = self._judge_sockaddr(n, name, data)
                    if not response.proceeds:
                        self._refuse(n, response, errno.EPERM)
                        return
                _seccomp.respond_continue(self.listener, n.id)
                return
            if kind == socket.SOCK_STREAM:
                if flags & _MSG_FASTOPEN:
                    self._fail(n, errno.EOPNOTSUPP)
                else:
                    _seccomp.respond_continue(self.listener, n.id)
                return
            address: tuple[object, ...] | None = None
            if name_ptr and name_len >= 2:
                decided = self._decided_address(n, name, name_ptr, name_len)
                if decided is None:
                    return
                address = ip_address_tuple(decided[0])
            payload = self._gather(n.pid, iov_ptr, iov_count)
            if control_len or payload is None:
                self._fail(n, errno.EOPNOTSUPP if control_len else errno.EMSGSIZE)
                return
            self.broker.act(broker.SENDTO, n.id, payload, flags, address, fds=(fd,))
        finally:
            os.close(fd)

    def _gather(
        self, tid: int, iov_ptr: int, iov_count: int, limit: int = _MAX_DATAGRAM
    ) -> bytes | None:
        """The bytes an iovec array points at; None past `limit` bytes or 1024 pieces."""
        if iov_count == 0:
            return b""
        if iov_count > _UIO_MAXIOV:
            return None
        pieces: list[bytes] = []
        total = 0
        for base, length in struct.iter_unpack(
            "<QQ", self.memory.read(tid, iov_ptr, 16 * iov_count)
        ):
            total += length
            if total > limit:
                return None
            if length:
                pieces.append(self.memory.read(tid, base, length))
        return b"".join(pieces)

    def _on_sendmmsg(self, n: _seccomp.Notification, name: str) -> None:
        """sendmmsg: on IP and unix datagram sockets, the broker sends each decided copy.

        On unix datagram sockets, the messages one request takes
        (`_sendmmsg_unix`).  On other sockets the kernel sends them, so every
        message it would take is judged first: up to UIO_MAXIOV, where the
        kernel stops.
        """
        fd, family, kind = self._socket_kind(n)
        if fd < 0:
            return
        if _unix_datagram_socket(family, kind):
            self._sendmmsg_unix(n, name, fd)
            return
        try:
            if family == socket.AF_NETLINK:
                # Judged by its protocol, as sendto and sendmsg are; the kernel
                # sends them (README: decided, then continued).
                if self._netlink_judged(n, name, fd):
                    _seccomp.respond_continue(self.listener, n.id)
                return
            ip_datagrams = (
                family in (socket.AF_INET, socket.AF_INET6) and kind != socket.SOCK_STREAM
            )
            count = min(n.args[2] & 0xFFFFFFFF, _MAX_MMSG if ip_datagrams else _UIO_MAXIOV)
            messages: list[tuple[bytes, tuple[object, ...] | None]] = []
            for i in range(count):
                header = self._mmsghdr(n, i)
                name_ptr, name_len, iov_ptr, iov_count, _control, control_len, _flags = header
                address = None
                if name_ptr and name_len >= 2:
                    data = self.memory.read(n.pid, name_ptr, min(name_len, 128))
                    response = self._judge_sockaddr(n, name, data)
                    if not response.proceeds:
                        self._refuse(n, response, errno.EPERM)
                        return
                    address = ip_address_tuple(data)
                if ip_datagrams:
                    payload = self._gather(n.pid, iov_ptr, iov_count)
                    if control_len or payload is None:
                        self._fail(n, errno.EOPNOTSUPP if control_len else errno.EMSGSIZE)
                        return
                    messages.append((payload, address))
            if not ip_datagrams:
                _seccomp.respond_continue(self.listener, n.id)
                return
            flags = _signed32(n.args[3])
            self.broker.act(broker.SENDMMSG, n.id, messages, flags, fds=(fd,))
        finally:
            os.close(fd)

    def _mmsghdr(self, n: _seccomp.Notification, index: int) -> tuple[int, ...]:
        """The msghdr of message `index` of a sendmmsg (struct mmsghdr: a
        56-byte msghdr and an unsigned int, padded to 64)."""
        header: tuple[int, ...] = _MSGHDR.unpack(
            self.memory.read(n.pid, n.args[1] + 64 * index, _MSGHDR.size)
        )
        return header

    def _sendmmsg_unix(self, n: _seccomp.Notification, syscall: str, fd: int) -> None:
        """sendmmsg on a unix datagram socket (`fd`, a duplicate this closes):
        the messages up to UIO_MAXIOV, or up to the first the kernel could not
        read, go to `_send_unix`."""
        count = min(n.args[2] & 0xFFFFFFFF, _UIO_MAXIOV)
        if count == 0:
            os.close(fd)
            _seccomp.respond_value(self.listener, n.id, 0)  # as the kernel: nothing to send
            return
        messages: list[_UnixMessage] = []
        for i in range(count):
            try:
                header = self._mmsghdr(n, i)
            except OSError:
                if i == 0:
                    os.close(fd)
                    raise
                break  # the kernel stops there: the count so far
            name_ptr, name_len, iov_ptr, iov_count, control_ptr, control_len, _flags = header

            def payload(limit: int, iov: tuple[int, int] = (iov_ptr, iov_count)) -> bytes | None:
                return self._gather(n.pid, iov[0], iov[1], limit)

            messages.append((name_ptr, _signed32(name_len), payload, control_ptr, control_len))
        self._send_unix(n, syscall, fd, messages, _signed32(n.args[3]), counted=True)

    # -- unix datagrams, sent by the broker

    def _send_unix(
        self,
        n: _seccomp.Notification,
        syscall: str,
        fd: int,
        messages: list[_UnixMessage],
        flags: int,
        *,
        counted: bool,
    ) -> None:
        """Unix datagrams on the agent's socket (`fd`, a duplicate this closes):
        each name copied once and decided on, each payload and each fd passed
        copied, and all sent by the broker (`_unix_send`).  Never CONTINUEd:
        the kernel would read msghdr, name and control data again, after a
        racing thread rewrote them.

        A message the kernel would refuse ends the call there: its errno for
        the first one, the count so far after that.  The messages past what
        one request takes (`_take_unix_message`) are not sent (a short count,
        as a full buffer gives), but their names are judged: one refused
        refuses the call, as when the kernel sent them all.
        """
        job = _UnixSend(n, fd, flags, counted)
        try:
            taking = True
            for message in messages:
                if taking:
                    try:
                        taking = self._take_unix_message(n, syscall, job, message)
                    except broker.BrokerGone:
                        raise
                    except OSError:
                        if not job.messages:
                            raise
                        break  # the kernel stops at a failing message: the count so far
                    if taking:
                        continue
                name_ptr, name_len = message[0], message[1]
                if name_ptr and 2 < name_len <= _SOCKADDR_UN_SIZE:
                    data = self.memory.read(n.pid, name_ptr, name_len)
                    response = self._judge_sockaddr(n, syscall, data)
                    if not response.proceeds:
                        self._refuse(n, response, errno.EPERM)
                        raise _Answered
        except _Answered:
            self._close_unix_send(job)
            return
        except BaseException:
            self._close_unix_send(job)
            raise
        self._unix_send(job)

    def _take_unix_message(
        self, n: _seccomp.Notification, syscall: str, job: _UnixSend, message: _UnixMessage
    ) -> bool:
        """Add one message to `job`: its control data, payload, the fds it
        passes and its address, each copied once.  False when it would go
        past what one request takes (a message is taken already); OSError
        with the kernel's errno for a message it would refuse; _Answered when
        the policy refused its address.

        SCM_CREDENTIALS is refused (EPERM): the kernel lets a sender claim
        only its own pid (without CAP_SYS_ADMIN over its PID namespace), and
        the broker's is not the agent's.  (A receiver with SO_PASSCRED sees
        the broker's pid on every datagram the broker sends.)
        """
        name_ptr, name_len, payload_of, control_ptr, control_len = message
        control = UnixControl()
        if control_len:
            if control_len > _MAX_CONTROL:
                raise OSError(errno.ENOBUFS, "control data past the optmem limit")
            control = unix_control(self.memory.read(n.pid, control_ptr, control_len))
            if control.credentials is not None:
                raise OSError(errno.EPERM, "SCM_CREDENTIALS is not sent for the agent")
        if len(job.passed) + len(control.fds) > broker.MAX_PASSED_FDS:
            if job.messages:
                return False
            raise OSError(errno.EINVAL, "more fds than one request takes")
        if job.messages and len(job.nodes) >= _MAX_UNIX_PINS:
            return False
        payload = payload_of(_MAX_UNIX_PAYLOAD - job.size)
        if payload is None:
            if job.messages:
                return False
            raise OSError(errno.EMSGSIZE, "a datagram larger than is sent for the agent")
        passed: list[int] = []
        fresh: list[int] = []  # fd numbers first duplicated for this message
        try:
            for number in control.fds:
                fd = job.dups.get(number)
                if fd is None:  # one duplicate however often an fd is passed
                    fd = job.dups[number] = self._agent_fd(n.pid, number)
                    fresh.append(number)
                passed.append(fd)
            address = self._unix_address(n, syscall, job, name_ptr, name_len)
        except BaseException:
            for number in fresh:
                os.close(job.dups.pop(number))
            raise
        job.passed.extend(passed)
        job.messages.append((payload, address, len(passed)))
        job.size += len(payload)
        return True

    def _unix_address(
        self, n: _seccomp.Notification, syscall: str, job: _UnixSend, ptr: int, length: int
    ) -> int | bytes | None:
        """Where a message goes, from the sockaddr copied once: the handle of
        the socket file pinned (and decided on by its real path), an abstract
        name, or None for the connected peer (no name: a NULL pointer or a
        zero length).  OSError with the kernel's errno for a name it refuses.
        """
        if ptr == 0 or length == 0:
            return None
        if not 2 < length <= _SOCKADDR_UN_SIZE:
            raise OSError(errno.EINVAL, "not a unix socket address")  # as unix_validate_addr
        data = self.memory.read(n.pid, ptr, length)
        if struct.unpack_from("<H", data)[0] != socket.AF_UNIX:
            raise OSError(errno.EINVAL, "not a unix socket address")
        known = job.addresses.get(data)
        if known is not None:
            return known
        node = self._unix_node(n.pid, data)
        if node is not None:
            job.nodes.append(node)  # released with the job
            if node.error == errno.ENOENT:
                # Nothing there: the kernel's answer, with no rule asked (as connect).
                raise OSError(errno.ENOENT, "no socket there")
        target = describe_sockaddr(data, lambda _raw: node.target if node else "", reaching=True)
        response = self._decide(n, syscall, ActionType.NETWORK_CONNECT, target)
        if not response.proceeds:
            self._refuse(n, response, errno.EPERM)
            raise _Answered
        if node is not None and node.error:
            raise OSError(node.error, "the socket file cannot be reached")
        address = node.handle if node is not None else abstract_address(data)
        if address is None:
            raise OSError(errno.EINVAL, "not a unix socket address")
        job.addresses[data] = address
        return address

    def _unix_send(self, job: _UnixSend) -> None:
        """One attempt at the messages of `job` not sent yet; then the agent is
        answered, or, with a full receiver, it is tried again later."""
        try:
            first = len(job.sent)
            skipped = sum(count for _payload, _address, count in job.messages[:first])
            rest = job.messages[first:]
            passing = sum(count for _payload, _address, count in rest)
            counts, err = self.broker.unix_send(
                job.notif.id, job.sock, rest, job.flags, job.passed[skipped : skipped + passing]
            )
            job.sent.extend(counts)
            if err == errno.EAGAIN and len(job.sent) < len(job.messages) and self._send_later(job):
                return
        except BaseException:
            self._close_unix_send(job)
            raise
        self._close_unix_send(job)
        if job.sent:
            with contextlib.suppress(OSError):  # the agent's call ended meanwhile
                value = len(job.sent) if job.counted else job.sent[0]
                _seccomp.respond_value(self.listener, job.notif.id, value)
        else:
            self._answer_error(job.notif, err or errno.EIO)

    def _send_later(self, job: _UnixSend) -> bool:
        """For a socket that blocks: send again a little later (1 ms, growing
        to 50 ms), while the agent still waits in its call, as the kernel
        would make it wait for room in the receiver's queue.  At most for
        SEND_TIMEOUT (or the socket's SO_SNDTIMEO), and while such waits
        stay within their caps: _MAX_PARKED_SENDS, _MAX_PARKED_BYTES and the
        fds they hold (`_MAX_PARKED_FDS`, within our fd share).  False when it
        does not wait.

        Timers of the loop, as for a connect to a full backlog (`_try_again`):
        the broker never waits, so it serves on, and neither does the loop.
        """
        if (
            self._call_later is None
            or job.flags & socket.MSG_DONTWAIT
            or fcntl.fcntl(job.sock, fcntl.F_GETFL) & os.O_NONBLOCK
        ):
            return False
        now = time.monotonic()
        if job.started < 0:
            held = 1 + len(job.dups) + len(job.nodes)
            if (
                len(self._parked_sends) >= _MAX_PARKED_SENDS
                or self._parked_bytes + job.size > _MAX_PARKED_BYTES
                or self._parked_fds + held > _MAX_PARKED_FDS_PER_AGENT
                or _ALL_PARKED.held + held > _proc.within_fd_share(_MAX_PARKED_FDS)
            ):
                return False
            job.started = now
            job.limit = _send_timeout(job.sock)
            job.held_fds = held
            self._parked_sends[job.notif.id] = job
            self._parked_bytes += job.size
            self._parked_fds += held
            _ALL_PARKED.held += held
        elif now - job.started > job.limit:
            return False
        delay = min(_BACKLOG_WAIT_MAX, max(_BACKLOG_WAIT_MIN, now - job.started))

        def again() -> None:  # a timer's callback: it must not raise
            if job.closed:
                return  # the mediator closed meanwhile
            try:
                waiting = _seccomp.id_valid(self.listener, job.notif.id)
            except OSError:
                waiting = False
            if not waiting:  # the agent's call ended meanwhile (a signal, its exit)
                self._close_unix_send(job)
                return
            try:
                self._unix_send(job)  # closes the job once answered, whatever happens
            except Exception:
                self._answer_error(job.notif, errno.EIO)  # the broker is gone: fail closed

        self._call_later(delay, again)
        return True

    def _close_unix_send(self, job: _UnixSend) -> None:
        """Let go of what `job` holds: our duplicates, the socket files pinned."""
        if job.closed:
            return
        job.closed = True
        if self._parked_sends.pop(job.notif.id, None) is not None:
            self._parked_bytes -= job.size
            self._parked_fds -= job.held_fds
            _ALL_PARKED.held -= job.held_fds
        for fd in (job.sock, *job.dups.values()):
            os.close(fd)
        self.release(*job.nodes)

    def _on_process_vm_readv(self, n: _seccomp.Notification, name: str) -> None:
        response = self._decide(n, name, ActionType.MEMORY_ACCESS, str(_signed32(n.args[0])))
        if not response.proceeds:
            self._refuse(n, response, errno.EPERM)
            return
        _seccomp.respond_continue(self.listener, n.id)

    def _on_umask(self, n: _seccomp.Notification, name: str) -> None:
        # Only watched so that the cached umask for emulated creates stays right.
        # Every kept value goes (threads, and processes made with CLONE_FS,
        # share one umask: who does is not known here), and none is kept
        # until this call has returned.  A thread that exits before its next
        # trapped call leaves caching off; past a bound, the set is dropped
        # and caching stays off for good.
        self._umasks.clear()
        if len(self._umasks_in_flight) < _PER_PROCESS_CACHE:
            self._umasks_in_flight.add(n.pid)
        else:
            self._umasks_in_flight.add(-1)  # never a tid: never discarded
        _seccomp.respond_continue(self.listener, n.id)

    def _on_refused(self, n: _seccomp.Notification, name: str) -> None:
        self.judge.refuse_always(name, n.pid)
        _seccomp.respond_error(self.listener, n.id, errno.EPERM)


# One message of a unix sendto/sendmsg/sendmmsg, as the agent gave it:
# (msg_name, msg_namelen, its payload read up to a limit (None past it),
# msg_control, msg_controllen).
_UnixMessage = tuple[int, int, Callable[[int], "bytes | None"], int, int]


def _unix_datagram_socket(family: int, kind: int) -> bool:
    """A unix socket whose sends take a name: SOCK_DGRAM (and SOCK_RAW, which
    the kernel makes one)."""
    return family == socket.AF_UNIX and kind in (socket.SOCK_DGRAM, socket.SOCK_RAW)


def _send_timeout(fd: int) -> float:
    """How long a blocking send on socket `fd` waits: its SO_SNDTIMEO, at most SEND_TIMEOUT."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM, 0, os.dup(fd)) as sock:
        timeval = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)
    seconds, micros = struct.unpack("@ll", timeval)
    timeout = seconds + micros / 1e6
    return min(timeout, SEND_TIMEOUT) if timeout > 0 else SEND_TIMEOUT


def ip_address_tuple(data: bytes) -> tuple[object, ...] | None:
    """The Python address of an AF_INET/AF_INET6 sockaddr; None for other families."""
    if len(data) < 2:
        return None
    family = struct.unpack_from("<H", data)[0]
    if family == socket.AF_INET and len(data) >= 8:
        return (socket.inet_ntop(socket.AF_INET, data[4:8]), struct.unpack_from(">H", data, 2)[0])
    if family == socket.AF_INET6 and len(data) >= 28:
        port, flowinfo = struct.unpack_from(">HI", data, 2)
        scope_id = struct.unpack_from("<I", data, 24)[0]
        return (socket.inet_ntop(socket.AF_INET6, data[8:24]), port, flowinfo, scope_id)
    return None


_NETLINK_NAMES = {
    0: "route", 2: "usersock", 4: "sock_diag", 5: "nflog", 6: "xfrm", 7: "selinux",
    9: "audit", 10: "fib_lookup", 12: "netfilter", 15: "uevent", 16: "generic",
}  # fmt: skip
_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}


def abstract_address(data: bytes) -> bytes | None:
    """The address of an abstract unix sockaddr as Python's sockets take it
    (`b"\\0name"`, every byte of the length given, trailing NULs too); None
    for any other sockaddr, and for a unix one with no name (an autobind)."""
    if len(data) < 3 or struct.unpack_from("<H", data)[0] != socket.AF_UNIX or data[2] != 0:
        return None
    return data[2:]


def socket_target(family: int, kind: int, protocol: int) -> str | None:
    """The `network_connect` target for creating a packet, raw or netlink socket.

    None for anything else (a unix SOCK_RAW is a datagram socket).
    """
    if family == _seccomp.AF_NETLINK:
        return "netlink:" + _NETLINK_NAMES.get(protocol, str(protocol))
    if family == _seccomp.AF_PACKET:
        return f"packet:0x{socket.ntohs(protocol & 0xFFFF):04x}"
    if family == socket.AF_UNIX:
        return None
    if kind in (_seccomp.SOCK_RAW, _seccomp.SOCK_PACKET):
        return f"raw:{_FAMILY_NAMES.get(family, f'family{family}')}:{protocol}"
    return None


def describe_sockaddr(
    data: bytes, unix_path: Callable[[bytes], str], *, reaching: bool = False
) -> str:
    """The `network_connect` target for a raw sockaddr (DESIGN.md 1.2).

    Addresses are spelled as the hook and the egress proxy spell them
    (`ip_text`): an IPv4-mapped IPv6 address is its IPv4 address, since the
    kernel connects an AF_INET6 socket to ::ffff:a.b.c.d over IPv4.  For a
    connect or a datagram (`reaching`), the unspecified address is the local
    host it reaches (`reached_address`).
    """
    from ..hooks._mapping import ip_text, reached_address

    def address(packed: bytes) -> str:
        text = ip_text(packed)
        return reached_address(text) if reaching else text

    if len(data) < 2:
        return "invalid:"
    family = struct.unpack_from("<H", data)[0]
    if family == socket.AF_INET and len(data) >= 8:
        port = struct.unpack_from(">H", data, 2)[0]
        return f"{address(data[4:8])}:{port}"
    if family == socket.AF_INET6 and len(data) >= 24:
        port = struct.unpack_from(">H", data, 2)[0]
        text = address(data[8:24])
        return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"
    if family == socket.AF_UNIX:
        path = data[2:]
        if path.startswith(b"\0"):
            return "unix:@" + path[1:].rstrip(b"\0").decode("utf-8", "backslashreplace")
        path = path.split(b"\0", 1)[0]
        return "unix:" + (unix_path(path) if path else "")
    # A netlink sockaddr names a port, not what is reached: a netlink socket is
    # judged by its protocol (`socket_target`), and on any other socket this
    # family is the kernel's EINVAL, spelled so no netlink rule matches it.
    return f"family{family}:"
