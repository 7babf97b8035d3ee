"""Raw seccomp user notification: the filter, the listener ioctls.

This is one of the few modules that speaks to the kernel in raw structs.
Everything above it works on `Notification` tuples and plain ints.

pyseccomp (libseccomp) builds the BPF filter in the supervisor, which
exports the program (`filter_program`, cached in the state directory); the
agent's process loads it with a raw `seccomp(2)` (`install_program`), so
the forked child neither imports pyseccomp nor builds anything.  pyseccomp
has no ADDFD, ID_VALID or CONTINUE helpers, so the listener side is raw
`fcntl.ioctl` on packed structs (DESIGN.md §3).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..policy.cachefiles import BadEntry, cache_dir, digest, read_entry, write_entry
from . import privileges

# <linux/seccomp.h>: SECCOMP_IOWR(0, struct seccomp_notif) etc., magic '!'.
_NOTIF_SIZE = 80  # u64 id, u32 pid, u32 flags, struct seccomp_data (64 bytes)
_RESP_SIZE = 24  # u64 id, s64 val, s32 error, u32 flags
_ADDFD_SIZE = 24  # u64 id, u32 flags, u32 srcfd, u32 newfd, u32 newfd_flags


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


_IOC_WRITE, _IOC_READ = 1, 2
IOCTL_NOTIF_RECV = _ioc(_IOC_READ | _IOC_WRITE, 0, _NOTIF_SIZE)
IOCTL_NOTIF_SEND = _ioc(_IOC_READ | _IOC_WRITE, 1, _RESP_SIZE)
IOCTL_NOTIF_ID_VALID = _ioc(_IOC_WRITE, 2, 8)
IOCTL_NOTIF_ADDFD = _ioc(_IOC_WRITE, 3, _ADDFD_SIZE)

USER_NOTIF_FLAG_CONTINUE = 1
ADDFD_FLAG_SETFD = 1
ADDFD_FLAG_SEND = 2

_NOTIF = struct.Struct("<QIIiIQ6Q")
_RESP = struct.Struct("<QqiI")
_ADDFD = struct.Struct("<QIIII")
_ID = struct.Struct("<Q")
_ZERO_NOTIF = bytes(_NOTIF_SIZE)


class Notification(NamedTuple):
    """One trapped syscall: `pid` is the thread id of the caller."""

    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, int, int, int, int, int]
    notice: int = 0  # the broker's flags on a notification it forwarded (fastpath.NOTICE_*)
    path: bytes = b""  # a read the read lane forwarded (NOTICE_FAN_READ): its path


def receive(listener: int) -> Notification | None:
    """Receive one notification; None when it vanished (the task died) meanwhile."""
    buf = bytearray(_ZERO_NOTIF)  # the kernel insists on a zeroed struct
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_RECV, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    nid, pid, _flags, nr, arch, _ip, a0, a1, a2, a3, a4, a5 = _NOTIF.unpack(buf)
    return Notification(nid, pid, nr, arch, (a0, a1, a2, a3, a4, a5))


def _send(listener: int, payload: bytes) -> bool:
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_SEND, payload)
    except OSError as exc:
        # ENOENT: the task died or was interrupted by a signal; the
        # notification is gone and nothing is owed to it.
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def respond_continue(listener: int, notif_id: int) -> bool:
    """Let the kernel run the syscall as the agent asked."""
    return _send(listener, _RESP.pack(notif_id, 0, 0, USER_NOTIF_FLAG_CONTINUE))


def respond_error(listener: int, notif_id: int, err: int) -> bool:
    """Fail the syscall with errno `err`."""
    return _send(listener, _RESP.pack(notif_id, -1, -err, 0))


def respond_value(listener: int, notif_id: int, value: int) -> bool:
    """Complete the syscall with return value `value` (the supervisor did the work)."""
    return _send(listener, _RESP.pack(notif_id, value, 0, 0))


def inject_fd_and_respond(listener: int, notif_id: int, srcfd: int, cloexec: bool) -> bool:
    """Install `srcfd` in the agent and return its number as the syscall result.

    SEND makes the install and the response one atomic step, so the agent can
    never see the fd without the response or the other way round.
    """
    newfd_flags = 0o2000000 if cloexec else 0  # O_CLOEXEC
    try:
        fcntl.ioctl(
            listener,
            IOCTL_NOTIF_ADDFD,
            _ADDFD.pack(notif_id, ADDFD_FLAG_SEND, srcfd, 0, newfd_flags),
        )
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        if exc.errno == errno.EMFILE:
            return respond_error(listener, notif_id, errno.EMFILE)
        raise
    return True


def id_valid(listener: int, notif_id: int) -> bool:
    """True while the notification is still pending (the task is alive and waiting)."""
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_ID_VALID, _ID.pack(notif_id))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


# ---------------------------------------------------------------------------
# Building and loading the filter (runs in the trampoline, before exec).

CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)


# Terminal ioctls that act on someone else's input, refused in BPF for every
# policy: TIOCSTI pushes bytes into a terminal's input queue (a command typed
# into the user's shell once the agent exits, CVE-2017-5226); TIOCLINUX
# subcode 3 pastes the console selection, 2 sets it.
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
REFUSED_IOCTLS = (TIOCSTI, TIOCLINUX)

# A file lease, refused in BPF too: an owner may take one on a file it may
# only read, and the kernel then holds every host process that opens the
# file for writing until the lease is given up, up to lease-break-time (45
# s), with no record (red team 33).  File servers use leases, not developer
# tools.
F_SETLEASE = 1024


# File attribute ioctls, decided like chmod: FS_IOC_SETFLAGS (`chattr`, and
# its 32-bit twin), FS_IOC_FSSETXATTR (the XFS-style flags and project id)
# and the inode's generation number (FS_IOC_SETVERSION and ext4's own
# request: an owner may set it on a file it may only read, red team 33).
FS_IOC_SETFLAGS = 0x40086602
FS_IOC32_SETFLAGS = 0x40046602
FS_IOC_FSSETXATTR = 0x401C5820
FS_IOC_SETVERSION = 0x40087602
FS_IOC32_SETVERSION = 0x40047602
EXT4_IOC_SETVERSION = 0x40086604
EXT4_IOC32_SETVERSION = 0x40046604
NOTIFIED_IOCTLS = (
    FS_IOC_SETFLAGS,
    FS_IOC32_SETFLAGS,
    FS_IOC_FSSETXATTR,
    FS_IOC_SETVERSION,
    FS_IOC32_SETVERSION,
    EXT4_IOC_SETVERSION,
    EXT4_IOC32_SETVERSION,
)

# Address families and socket types that reach past IP and unix sockets.
AF_NETLINK = 16
AF_PACKET = 17
SOCK_RAW = 3
SOCK_PACKET = 10
_SOCK_TYPE_MASK = 0xF  # the rest of `type` is SOCK_NONBLOCK | SOCK_CLOEXEC

ARCH_SET_FS = 0x1002

PRIO_PGRP = 1
PRIO_USER = 2
IOPRIO_WHO_PGRP = 2
IOPRIO_WHO_USER = 3

_INT = 0xFFFFFFFF  # the kernel reads these arguments as 32-bit ints: compare only those bits
_ADDRESS = (1 << 64) - 1


class Condition(NamedTuple):
    """`(argument & mask) == value`, or with `differs` the whole register != value.

    An inequality compares all 64 bits: garbage in the upper half notifies
    too, which only costs a round trip (the kernel would see the lower half).
    """

    argument: int
    value: int
    mask: int = _INT
    differs: bool = False


def _nonzero(index: int) -> tuple[tuple[Condition, ...], ...]:
    return ((Condition(index, 0, differs=True),),)


# Syscalls notified only when their arguments say so, so the common case
# (a process about itself, an ordinary socket, an ordinary ioctl) stays in
# BPF.  Each entry is a list of rows; any row notifies when all its
# conditions hold.
NOTIFY_WHEN: dict[str, tuple[tuple[Condition, ...], ...]] = {
    # Only a sendto that names a destination address is a connect.
    "sendto": _nonzero(4),
    "socket": (
        (Condition(0, AF_NETLINK),),
        (Condition(0, AF_PACKET),),
        (Condition(1, SOCK_RAW, _SOCK_TYPE_MASK),),
        (Condition(1, SOCK_PACKET, _SOCK_TYPE_MASK),),
    ),
    "ioctl": tuple((Condition(1, request),) for request in NOTIFIED_IOCTLS),
    # A pid of 0 is the caller itself: nothing to decide.
    **{
        name: _nonzero(0)
        for name in (
            "prlimit64",
            "sched_setscheduler",
            "sched_setparam",
            "sched_setattr",
            "sched_setaffinity",
            "migrate_pages",
            "move_pages",
        )
    },
    # (which, who): a `who` of 0 is the caller, except for a whole user.
    "setpriority": (*_nonzero(1), (Condition(0, PRIO_USER),)),
    "ioprio_set": (*_nonzero(1), (Condition(0, IOPRIO_WHO_USER),)),
    # The first syscall of a new image's start-up, for its exec check: glibc's
    # loader and static start-up ask brk(NULL) first; Go's and musl's set their
    # thread pointer first.  Both come once or twice per process.
    "brk": ((Condition(0, 0, _ADDRESS),),),
    "arch_prctl": ((Condition(0, ARCH_SET_FS),),),
}

# With the read lane (fanotify asks about reads: kernel/fanotify.py), open and
# openat are notified only for what more than reads: a write, a create, a
# truncate, an append, an O_PATH or an O_TMPFILE.  The rest reach the kernel,
# which asks the broker before the file opens.  Every row is one flag, as a
# masked equality.
_TMPFILE_BIT = 0o20000000  # O_TMPFILE without O_DIRECTORY
_MORE_THAN_READ = (
    os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND, os.O_PATH, _TMPFILE_BIT
)  # fmt: skip
OPEN_FLAGS_ARGUMENT = {"open": 1, "openat": 2}


def _more_than_read(index: int) -> tuple[tuple[Condition, ...], ...]:
    return tuple((Condition(index, bit, bit),) for bit in _MORE_THAN_READ)


# Syscalls newer than some libseccomp releases, with their numbers (alike on
# every architecture since Linux 5.1), used when libseccomp cannot name them:
# the filter covers them all the same.
NEWER_SYSCALLS = {
    "landlock_create_ruleset": 444,
    "landlock_add_rule": 445,
    "landlock_restrict_self": 446,
    "fchmodat2": 452,
    "setxattrat": 463,
    "getxattrat": 464,
    "listxattrat": 465,
    "removexattrat": 466,
    "open_tree_attr": 467,
    "file_getattr": 468,
    "file_setattr": 469,
}


def _number(name: str) -> int:
    """The native number of syscall `name`, or -1 when neither libseccomp nor we know it."""
    import pyseccomp

    nr = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
    return nr if nr >= 0 else NEWER_SYSCALLS.get(name, -1)


def _arg(pyseccomp: Any, condition: Condition) -> Any:
    if condition.differs:
        return pyseccomp.Arg(condition.argument, pyseccomp.NE, condition.value)
    return pyseccomp.Arg(condition.argument, pyseccomp.MASKED_EQ, condition.mask, condition.value)


def build_filter(notify: Iterable[str], enosys: Iterable[str], kernel_reads: bool = False) -> Any:
    """The filter as a `pyseccomp.SyscallFilter`, not loaded (tests export it).

    `notify` syscalls go to the supervisor (some only for the arguments in
    `NOTIFY_WHEN`); `enosys` ones fail with ENOSYS (clone3, whose flags live
    in memory BPF cannot read, so glibc falls back to clone, whose namespace
    flags it can).  A syscall of a foreign architecture (32-bit int 0x80,
    x32) kills the process: the table below only knows native numbers.
    With `kernel_reads`, an open or openat for reading only is let through:
    the read lane's fanotify group asks about it.
    """
    import pyseccomp

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    for name in notify:
        nr = _number(name)
        if nr < 0:
            continue  # this ABI has no such syscall
        if kernel_reads and name in OPEN_FLAGS_ARGUMENT:
            for row in _more_than_read(OPEN_FLAGS_ARGUMENT[name]):
                flt.add_rule(pyseccomp.NOTIFY, nr, *(_arg(pyseccomp, c) for c in row))
        elif name == "clone":
            for flag in CLONE_NAMESPACE_FLAGS:
                flt.add_rule(
                    pyseccomp.NOTIFY, nr, pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag)
                )
        elif name in NOTIFY_WHEN:
            for row in NOTIFY_WHEN[name]:
                flt.add_rule(pyseccomp.NOTIFY, nr, *(_arg(pyseccomp, c) for c in row))
        else:
            flt.add_rule(pyseccomp.NOTIFY, nr)
    for name in enosys:
        nr = _number(name)
        if nr >= 0:
            flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), nr)
    # The kernel takes a request or command as an unsigned int: mask to 32
    # bits, so garbage in the upper half of the register cannot slip past.
    for request in REFUSED_IOCTLS:
        flt.add_rule(
            pyseccomp.ERRNO(errno.EPERM),
            "ioctl",
            pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, request),
        )
    flt.add_rule(
        pyseccomp.ERRNO(errno.EPERM),
        "fcntl",
        pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, F_SETLEASE),
    )
    return flt


# -- the program, built once in the supervisor, loaded raw in the agent ----------------

_FORMAT = 1
_BPF_INSTRUCTION = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
_BPF_MAXINSNS = 4096
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# Syscall numbers learnt with the programs (from libseccomp or the cache), for
# `syscall_numbers` without importing pyseccomp.
_known_numbers: dict[str, int] = {}


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass(frozen=True)
class FilterProgram:
    """`build_filter(notify, enosys)` as libseccomp generates it, ready for `install_program`.

    `bpf` is the array of `struct sock_filter`; `seccomp_nr` is the number of
    seccomp(2) on this ABI; `numbers` the native number of each syscall named
    (-1 for those this ABI does not have).
    """

    bpf: bytes
    seccomp_nr: int
    numbers: Mapping[str, int]


def filter_program(
    notify: Iterable[str],
    enosys: Iterable[str],
    state_dir: Path | None = None,
    kernel_reads: bool = False,
) -> FilterProgram:
    """The program of `build_filter(notify, enosys, kernel_reads)`; kept in `state_dir`'s cache.

    The key is this module's code, the syscall lists and the kernel (release
    and machine): the program is a function of them and of libseccomp, whose
    part (the syscall numbers) is fixed for an ABI.  A missing or bad entry
    is built again with pyseccomp.
    """
    notify, enosys = list(notify), list(enosys)
    name = ""
    directory = None
    if state_dir is not None:
        kernel = os.uname()
        key = digest(
            Path(__file__).read_bytes(),
            json.dumps([notify, enosys, kernel_reads]),
            kernel.machine,
            kernel.release,
            kernel.version,
        )
        name = "seccomp-" + key[:40]
        directory = cache_dir(state_dir)
    if directory is not None:
        try:
            program = _program_from(read_entry(directory / name))
            _known_numbers.update(program.numbers)
            return program
        except BadEntry:
            pass
    program = _build_program(notify, enosys, kernel_reads)
    _known_numbers.update(program.numbers)
    if state_dir is not None and (directory := cache_dir(state_dir, create=True)) is not None:
        document = {
            "format": _FORMAT,
            "bpf": program.bpf.hex(),
            "seccomp_nr": program.seccomp_nr,
            "numbers": dict(program.numbers),
        }
        write_entry(directory, name, document)
    return program


def _build_program(notify: list[str], enosys: list[str], kernel_reads: bool) -> FilterProgram:
    numbers = {name: _number(name) for name in dict.fromkeys(notify + enosys)}
    flt = build_filter(notify, enosys, kernel_reads)
    fd = os.memfd_create("agentsup-seccomp", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as out:  # export_bpf writes to out.fileno()
            flt.export_bpf(out)
        size = os.lseek(fd, 0, os.SEEK_END)
        bpf = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    return _checked(FilterProgram(bpf, _number("seccomp"), numbers))


def _checked(program: FilterProgram) -> FilterProgram:
    count, rest = divmod(len(program.bpf), _BPF_INSTRUCTION)
    if rest or not 0 < count <= _BPF_MAXINSNS or program.seccomp_nr < 0:
        raise BadEntry(f"not a seccomp program ({len(program.bpf)} bytes)")
    return program


def _program_from(document: Any) -> FilterProgram:
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise BadEntry("another format")
    bpf, seccomp_nr, numbers = (
        document.get("bpf"),
        document.get("seccomp_nr"),
        document.get("numbers"),
    )
    if not isinstance(bpf, str) or type(seccomp_nr) is not int or not isinstance(numbers, dict):
        raise BadEntry("a malformed program")
    if not all(isinstance(k, str) and type(v) is int and v >= -1 for k, v in numbers.items()):
        raise BadEntry("malformed syscall numbers")
    try:
        code = bytes.fromhex(bpf)
    except ValueError:
        raise BadEntry("a malformed program") from None
    return _checked(FilterProgram(code, seccomp_nr, numbers))


def install_program(program: FilterProgram) -> int:
    """Load `program` on the calling thread, as libseccomp's load would; return the listener.

    no_new_privs first (libseccomp's default), then
    seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog).
    No import and no build: this runs in the forked child before the exec.
    """
    privileges.prctl(privileges.PR_SET_NO_NEW_PRIVS, 1)
    code = ctypes.create_string_buffer(program.bpf, len(program.bpf))
    fprog = _SockFprog(len(program.bpf) // _BPF_INSTRUCTION, ctypes.addressof(code))
    fd = _syscall(
        ctypes.c_long(program.seccomp_nr),
        ctypes.c_ulong(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_ulong(_SECCOMP_FILTER_FLAG_NEW_LISTENER),
        ctypes.byref(fprog),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp(SECCOMP_SET_MODE_FILTER): {os.strerror(err)}")
    return int(fd)


def load_filter(notify: Iterable[str], enosys: Iterable[str]) -> int:
    """Install `build_filter(notify, enosys)` on the calling thread; return the listener fd."""
    return install_program(filter_program(notify, enosys))


def syscall_numbers(names: Iterable[str]) -> dict[int, str]:
    """Native syscall number -> name, for the names this kernel ABI has."""
    table: dict[int, str] = {}
    for name in names:
        nr = _known_numbers[name] if name in _known_numbers else _number(name)
        if nr >= 0:
            table[nr] = name
    return table
