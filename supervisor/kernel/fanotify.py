"""fanotify for the read lane: the group, the marks on the agent's mounts, the probe.

The only module that talks to fanotify.  The supervisor (CAP_SYS_ADMIN)
makes one group per agent with permission events (FAN_OPEN_PERM), marks
every mount of the agent's mount namespace through `/proc/PID/root` before
the agent runs, and hands the group to the agent's broker, whose native
path answers it (`_fastpath.c`, "reads the kernel asks about").  Never a
mark on a mount of the host's: every host process's opens there would wait
for the agent's broker.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Iterator
from typing import NamedTuple

from .namespaces import unescape_mountinfo

# linux/fanotify.h
FAN_CLOEXEC = 0x1
FAN_CLASS_CONTENT = 0x4
FAN_UNLIMITED_QUEUE = 0x10
FAN_UNLIMITED_MARKS = 0x20
FAN_REPORT_TID = 0x100
FAN_REPORT_FD_ERROR = 0x2000  # Linux 6.13: an event whose file cannot be opened still says who
FAN_MARK_ADD = 0x1
FAN_MARK_DONT_FOLLOW = 0x4
FAN_MARK_MOUNT = 0x10
FAN_OPEN_PERM = 0x10000
FAN_ONDIR = 0x40000000

GROUP_FLAGS = (
    FAN_CLOEXEC
    | FAN_CLASS_CONTENT
    | FAN_UNLIMITED_QUEUE
    | FAN_UNLIMITED_MARKS
    | FAN_REPORT_TID
    | FAN_REPORT_FD_ERROR
)
# The files the kernel opens in the reader: never blocking (a FIFO), never
# inherited.
EVENT_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
MOUNT_MASK = FAN_OPEN_PERM | FAN_ONDIR

_libc = ctypes.CDLL(None, use_errno=True)
_init = _libc.fanotify_init
_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
_init.restype = ctypes.c_int
_mark = _libc.fanotify_mark
_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
_mark.restype = ctypes.c_int


class MarkError(OSError):
    """A mount of the agent's could not be marked: its reads would go unasked."""


def open_group() -> int:
    """A new group for one agent's reads (close-on-exec)."""
    fd = int(_init(GROUP_FLAGS, EVENT_FILE_FLAGS))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fanotify_init: {os.strerror(err)}")
    return fd


@functools.cache
def status() -> tuple[bool, str]:
    """Whether this host can give the read lane its group, and why not."""
    try:
        os.close(open_group())
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return False, "fanotify permission events need root (CAP_SYS_ADMIN)"
        if exc.errno == errno.EINVAL:
            return False, "the kernel has no FAN_REPORT_FD_ERROR (Linux 6.13+)"
        return False, f"no fanotify ({exc.strerror})"
    return True, "fanotify permission events"


class Mount(NamedTuple):
    """One line of /proc/PID/mountinfo: what the marks need of it."""

    mount_id: int
    device: int
    point: str
    fstype: str


def parse_mountinfo(text: str) -> Iterator[Mount]:
    """The mounts of a mountinfo text, in its order."""
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major, minor = fields[2].split(":")
            yield Mount(
                int(fields[0]),
                os.makedev(int(major), int(minor)),
                unescape_mountinfo(fields[4]),
                fields[separator + 1],
            )
        except (ValueError, IndexError):
            raise ValueError(f"not a mountinfo line: {line!r}") from None


def mark_agent_mounts(group: int, pid: int) -> int:
    """Mark every mount the agent `pid` can reach by a path; how many.

    Each mount point is marked through /proc/PID/root, so the mark lands on
    what the agent's own lookup of that path reaches: every mount it can
    name (a mount covered by another is out of its reach, and of ours).
    procfs takes no permission events: it is left to the policy check that
    turned the lane on (`readlane.procfs_plain`).  Raises MarkError for any
    other mount that cannot be marked.
    """
    root = f"/proc/{pid}/root"
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as info:
        mounts = list(parse_mountinfo(info.read()))
    procfs = {mount.device for mount in mounts if mount.fstype == "proc"}
    marked = 0
    for point in dict.fromkeys(mount.point for mount in mounts if mount.fstype != "proc"):
        path = root + point if point != "/" else root + "/"
        encoded = os.fsencode(path)
        if _mark(group, FAN_MARK_ADD | FAN_MARK_MOUNT, MOUNT_MASK, -100, encoded) == 0:
            marked += 1
            continue
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            continue  # under a mount that covers it: no name of the agent's reaches it
        if err == errno.EINVAL:
            try:
                if os.stat(path).st_dev in procfs:
                    continue  # covered by a procfs (/proc over the host's binfmt_misc)
            except OSError:
                pass
        raise MarkError(err, f"cannot mark the agent's mount {point}: {os.strerror(err)}")
    return marked
