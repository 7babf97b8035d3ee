"""The broker's native hot path (`_fastpath.c`), when it was built, and its plumbing.

With the native path the broker receives every notification of the agent's
listener: it answers the file syscalls and execs the supervisor's judge
plainly allows (its allow cache, mirrored into the broker, or the broker's
copy of the judge), checks the first syscall after each exec, and forwards
the rest here, each with a pidfd of the calling thread (the broker sees the
agent's PID namespace numbers; the supervisor needs its own), and some
notices of what it did (NOTICE_*).

`AGENTSUP_FASTPATH=0` switches it off: the supervisor then receives on the
listener itself, as it does where the extension could not be built.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import socket
import struct
from types import ModuleType

from .seccomp import Notification, respond_error

native: ModuleType | None
try:
    from . import _fastpath as native  # type: ignore[attr-defined, no-redef]
except ImportError:  # no C compiler at install time: the Python path serves
    native = None

ENV_SWITCH = "AGENTSUP_FASTPATH"
_PIDFD_THREAD = os.O_EXCL  # pidfd_open: a pidfd of a thread, not a process (Linux 6.9)
_NOTIF = struct.Struct("<QIIiIQ6Q")
_PATH_BYTES = 4096
_CMSG_SPACE = socket.CMSG_SPACE(struct.calcsize("i"))

# What open() understands (the kernel's VALID_OPEN_FLAGS): open and openat
# drop the rest, openat2 refuses them.  O_LARGEFILE is 0 in Python's os.
VALID_OPEN_FLAGS = (
    os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND
    | os.O_NONBLOCK | os.O_DSYNC | os.O_ASYNC | os.O_DIRECT | 0o100000 | os.O_DIRECTORY
    | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC | os.O_PATH | os.O_TMPFILE | os.O_SYNC
)  # fmt: skip
# Flags that make an open a write (file_write is asked).
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

# Flags the broker sets on a notification it forwards (the kernel sets none).
# Word, not a syscall to answer, which `receive` gives as a Notification with
# a pseudo syscall number: the first syscall after an exec found the image
# the supervisor allowed (EXEC_CHECKED); the native path let an exec through
# (EXEC_DONE: what was kept of the old image is stale).  A syscall to answer:
# the first after an exec the native path let through, whose image is not
# the one allowed, to be judged as an exec (`Notification.notice`).
NOTICE_EXEC_CHECKED = 1 << 31
NOTICE_EXEC_DONE = 1 << 30
NOTICE_EXEC_JUDGE = 1 << 29
# A read the kernel let through to the read lane's fanotify group, which the
# broker did not allow itself: `Notification.id` names its event (a number
# and its fd; the answer goes back by it), `path` its path in the agent's view, `args` the
# file's (st_dev, st_ino, st_mode, st_nlink) and, for a file the broker's
# reader could not open (the kernel refused the open already), the errno.
NOTICE_FAN_READ = 1 << 28
EXEC_CHECKED = -1
EXEC_DONE = -2
FAN_READ = -3

# The actions the native cache keeps, as its bits.
ALLOW_READ = 1
ALLOW_WRITE = 2
ALLOW_DELETE = 4
ALLOW_MOVE = 8
ALLOW_SPAWN = 16
ALLOW_SHELL = 32
ALLOW_CHMOD = 64


@functools.cache
def _threads_have_pidfds() -> bool:
    try:
        fd = os.pidfd_open(os.getpid(), _PIDFD_THREAD)
    except OSError:
        return False
    os.close(fd)
    return True


def status() -> tuple[bool, str]:
    """Whether runs use the native path, and why (for doctor and the audit start record)."""
    if native is None:
        return False, "python (the native extension was not built: no C compiler at install)"
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False, f"python ({ENV_SWITCH}=0)"
    if not _threads_have_pidfds():
        return False, "python (the kernel has no thread pidfds, Linux 6.9+)"
    return True, "native (plainly allowed opens are answered in the broker)"


def enabled() -> bool:
    return status()[0]


_PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11  # _IOWR(0xFF, 11, pidfd_info v0)
_PIDFD_INFO = struct.Struct("<QQI")  # mask, cgroupid, pid (the rest is not asked for)
_PIDFD_INFO_PID = 1


def pid_of(pidfd: int) -> int:
    """The pid (or tid) behind a pidfd, as our PID namespace numbers it.

    PIDFD_GET_INFO (Linux 6.13) needs no file of its own; older kernels
    have it in the pidfd's fdinfo (`Pid:`, -1 once it exited).
    """
    info = bytearray(64)
    _PIDFD_INFO.pack_into(info, 0, _PIDFD_INFO_PID, 0, 0)
    try:
        fcntl.ioctl(pidfd, _PIDFD_GET_INFO, info, True)
    except OSError as exc:
        if exc.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
            return -1  # ESRCH: it is gone
    else:
        mask, _cgroup, pid = _PIDFD_INFO.unpack_from(info)
        if mask & _PIDFD_INFO_PID:
            return int(pid)
    with open(f"/proc/self/fdinfo/{pidfd}", "rb") as fdinfo:
        for line in fdinfo:
            if line.startswith(b"Pid:"):
                return int(line.split()[1])
    raise ValueError("no Pid: in the pidfd's fdinfo")


class Forwarded:
    """The supervisor's end of the broker's forward socket.

    Every notification forwarded is owed an answer, even when the supervisor
    is out of file descriptors and the kernel drops the pidfd that came
    with it: one descriptor is kept in reserve and freed just before each
    receive, so the pidfd always has a place.
    """

    def __init__(self, sock: socket.socket, listener: int) -> None:
        self.sock = sock
        self.listener = listener
        self._reserve = self._take_reserve()

    def _take_reserve(self) -> int:
        try:
            return os.dup(self.sock.fileno())
        except OSError:
            return -1

    def close(self) -> None:
        """Give back the reserve (the socket is its owner's to close)."""
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1

    def receive(self) -> Notification | None:
        """One notification the broker forwarded, with our number for its thread.

        None when there was nothing to read, or when the thread is already
        gone (the kernel dropped its notification).  EOF raises EOFError:
        the broker exited.
        """
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
        try:
            data, ancillary, flags, _addr = self.sock.recvmsg(
                _NOTIF.size + _PATH_BYTES, _CMSG_SPACE
            )
        except (BlockingIOError, InterruptedError):
            return None
        finally:
            if self._reserve < 0:
                self._reserve = self._take_reserve()
        fds = [
            fd
            for level, kind, payload in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for fd in struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
        ]
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError("the broker closed its forward socket")
        try:
            tid = pid_of(fds[0]) if len(fds) == 1 else 0
        finally:
            for fd in fds:
                os.close(fd)
            if self._reserve < 0:
                self._reserve = self._take_reserve()
        if len(data) < _NOTIF.size:
            return None  # never sent by the broker; no id to answer
        nid, _pid, notice, nr, arch, _ip, a0, a1, a2, a3, a4, a5 = _NOTIF.unpack_from(data)
        if notice & NOTICE_FAN_READ:
            args = (a0, a1, a2, a3, a4, a5)
            path = data[_NOTIF.size :]
            return Notification(nid, tid, FAN_READ, arch, args, notice, path)
        if len(data) != _NOTIF.size:
            return None
        if notice & (NOTICE_EXEC_CHECKED | NOTICE_EXEC_DONE):
            # Word, not a syscall: nothing is answered (the broker answers it).
            word = EXEC_CHECKED if notice & NOTICE_EXEC_CHECKED else EXEC_DONE
            return None if tid <= 0 else Notification(nid, tid, word, arch, (0,) * 6)
        if tid == 0 or flags & socket.MSG_CTRUNC:
            # No pidfd (out of descriptors after all): the syscall fails, never hangs.
            with contextlib.suppress(OSError):
                respond_error(self.listener, nid, errno.EMFILE)
            return None
        if tid < 0:
            return None
        return Notification(nid, tid, nr, arch, (a0, a1, a2, a3, a4, a5), notice)
