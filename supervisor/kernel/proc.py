"""Reading another process: its memory, fds, cwd and umask, through /proc.

Raw syscalls (pidfd_getfd, openat2, renameat2, sched_getaffinity,
process_vm_writev) live here too, so the rest of the supervisor stays free
of ctypes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import struct
from collections import OrderedDict

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# x86_64 numbers; the filter itself refuses foreign architectures.
_SYS_PIDFD_GETFD = 438
_SYS_OPENAT2 = 437
_SYS_RENAMEAT2 = 316
_SYS_FCHMODAT2 = 452

_PATH_MAX = 4096
_FIRST_READ = 256


# The end of the address space pread can name: an offset is a signed off_t.
_ADDRESS_END = 1 << 63
# Cached memory fds per reader: a thread that exited never says so, so the
# cache is bounded (least recently used goes first) instead of growing with
# every thread the agent ever started.
MEMORY_FD_CACHE = 128


_NO_FD = -1  # MemoryReader._fd when the supervisor is out of descriptors


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def _pread(fd: int, tid: int, size: int, addr: int) -> bytes:
    """`size` bytes at `addr` of `tid`'s memory, through `fd`, or with
    process_vm_readv (no descriptor needed) when there is none."""
    if fd != _NO_FD:
        return os.pread(fd, size, addr)
    buffer = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), size)
    remote = _Iovec(addr, size)
    got = _libc.process_vm_readv(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buffer.raw[:got]


class MemoryReader:
    """Reads strings and structs from agent threads via cached /proc/TID/mem fds.

    A cached fd keeps pointing at the memory it was opened on; after an exec
    (or a recycled tid) reads from it come back empty, so any short or failed
    read drops it, reopens once and retries.  At most `MEMORY_FD_CACHE` fds
    are kept.  An address the kernel could never hand out (past 2**63, which
    pread cannot even name) is EFAULT, as the kernel would answer.
    """

    def __init__(self, capacity: int = MEMORY_FD_CACHE) -> None:
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._capacity = capacity

    def _fd(self, tid: int) -> int:
        fd = self._fds.get(tid)
        if fd is not None:
            self._fds.move_to_end(tid)
            return fd
        try:
            fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                return _NO_FD  # out of descriptors: read without one (a refusal still kills)
            raise OSError(errno.EFAULT, f"cannot open the memory of {tid}: {exc}") from exc
        self._fds[tid] = fd
        if len(self._fds) > self._capacity:
            _old, stale = self._fds.popitem(last=False)
            os.close(stale)
        return fd

    def __len__(self) -> int:
        return len(self._fds)

    def forget(self, tid: int) -> None:
        fd = self._fds.pop(tid, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def read(self, tid: int, addr: int, size: int) -> bytes:
        """Exactly `size` bytes at `addr`, or OSError(EFAULT)."""
        if addr < 0 or addr + size > _ADDRESS_END:
            raise OSError(errno.EFAULT, "address outside user space")
        for attempt in (0, 1):
            try:
                data = _pread(self._fd(tid), tid, size, addr)
            except OSError as exc:
                if exc.errno not in (errno.EIO, errno.ESRCH, errno.EFAULT) or attempt:
                    self.forget(tid)
                    raise OSError(errno.EFAULT, "cannot read agent memory") from exc
                data = b""
            if len(data) == size:
                return data
            self.forget(tid)
        raise OSError(errno.EFAULT, "cannot read agent memory")

    def read_cstring(self, tid: int, addr: int, limit: int = _PATH_MAX) -> bytes:
        """The NUL-terminated string at `addr` (without the NUL)."""
        if addr <= 0 or addr >= _ADDRESS_END:
            raise OSError(errno.EFAULT, "NULL or impossible pointer")
        for attempt in (0, 1):
            fd = self._fd(tid)
            data = b""
            size = _FIRST_READ
            while True:
                size = min(size, _ADDRESS_END - addr - len(data))
                try:
                    chunk = _pread(fd, tid, size, addr + len(data)) if size > 0 else b""
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                end = chunk.find(b"\0")
                if end >= 0:
                    return data + chunk[:end]
                data += chunk
                if len(data) >= limit:
                    raise OSError(errno.ENAMETOOLONG, "string too long")
                size = limit - len(data)
            if attempt == 0 and not data:
                self.forget(tid)
                continue
            break
        raise OSError(errno.EFAULT, "cannot read agent memory")

    def read_pointer_array(self, tid: int, addr: int, limit: int = 1 << 18) -> list[int]:
        """A NULL-terminated array of pointers (argv, envp).

        Read in pages, but an array that ends right before unmapped memory
        is still read: only the words up to the first unreadable byte count.
        """
        pointers: list[int] = []
        while len(pointers) < limit:
            at = addr + 8 * len(pointers)
            if at < 0 or at + 8 > _ADDRESS_END:
                raise OSError(errno.EFAULT, "address outside user space")
            want = min(4096 - at % 4096, 8 * (limit - len(pointers))) if at % 8 == 0 else 8
            raw = self.read(tid, at, max(want - want % 8, 8))
            for (ptr,) in struct.iter_unpack("<Q", raw):
                if ptr == 0:
                    return pointers
                pointers.append(ptr)
        raise OSError(errno.E2BIG, "argument list too long")


_PROC_CHUNK = 65536


def within_fd_share(wanted: int) -> int:
    """`wanted` fds, but at most a quarter of what this process may open (often
    1,024): what one kind of holding may take, so that the rest (the audit
    log, the policy watch, cgroup sweeps) always finds fds."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft // 4))


def read_proc(path: str, *, until_eof: bool = False) -> bytes:
    """All of a /proc file, in three syscalls where open() would make eight
    (fstat, a tty check, two seeks).  Raises OSError.

    A file of one record (status, stat, auxv, fdinfo) hands over all it has
    in one read; `until_eof` reads on to the end (cmdline, read from the
    process's memory, may come in parts)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _PROC_CHUNK)
        if (len(data) < _PROC_CHUNK and not until_eof) or not data:
            return data
        chunks = [data]
        while chunk := os.read(fd, _PROC_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def status_field(tid: int, name: bytes) -> bytes | None:
    """The value of field `name` (b"Tgid", b"Umask", ...) of /proc/TID/status."""
    try:
        data = read_proc(f"/proc/{tid}/status")
    except OSError:
        return None
    at = data.find(b"\n" + name + b":")
    if at < 0:
        return None
    end = data.find(b"\n", at + 1)
    return data[at + len(name) + 2 : end if end >= 0 else len(data)].strip()


def thread_group_id(tid: int) -> int:
    """The process (thread group) id of thread `tid`, or `tid` if it is gone."""
    value = status_field(tid, b"Tgid")
    try:
        return int(value) if value is not None else tid
    except ValueError:
        return tid


def namespace_pid(tid: int) -> int:
    """`tid` as the innermost PID namespace it lives in numbers it (`NSpid:`)."""
    value = status_field(tid, b"NSpid")
    try:
        return int(value.split()[-1]) if value else tid
    except ValueError:
        return tid


def process_umask(tid: int) -> int:
    value = status_field(tid, b"Umask")
    try:
        return int(value, 8) if value is not None else 0o022
    except ValueError:
        return 0o022


def _stat_field(pid: int, index: int) -> bytes | None:
    """Field `index` of /proc/PID/stat counted from the state (0), after the
    command name (which may hold spaces and parentheses); None if gone."""
    try:
        data = read_proc(f"/proc/{pid}/stat")
        return data[data.rindex(b")") + 2 :].split()[index]
    except (OSError, ValueError, IndexError):
        return None


def process_state(pid: int) -> str:
    """The one-letter state from /proc/PID/stat (R, S, D, T, Z, ...), '' if gone."""
    field = _stat_field(pid, 0)
    return field.decode() if field is not None else ""


def start_time(tid: int) -> int | None:
    """When thread `tid` started (clock ticks since boot): with its number, its
    identity (a number is used again).  None if gone."""
    field = _stat_field(tid, 19)
    try:
        return int(field) if field is not None else None
    except ValueError:
        return None


# sched_getaffinity's number: the answer it gives the agent is the syscall's
# own (the bytes written), which glibc's wrapper hides.
_SYS_SCHED_GETAFFINITY = {"x86_64": 204, "aarch64": 123}.get(os.uname().machine, -1)
# A mask buffer bigger than any kernel's cpumask_size() (NR_CPUS / 8 <= 1024).
_MASK_BYTES = 8192
_mask = ctypes.create_string_buffer(_MASK_BYTES)  # reused: one loop, one thread


def cpu_mask(tid: int, length: int = _MASK_BYTES) -> bytes:
    """sched_getaffinity(tid, length) as the kernel answers it: the bytes it
    writes, min(length, cpumask_size()).  OSError as the kernel fails it
    (EINVAL for a length too small for this machine's CPUs, ESRCH)."""
    if _SYS_SCHED_GETAFFINITY < 0:
        raise OSError(errno.ENOSYS, "sched_getaffinity: unknown on this architecture")
    got = _libc.syscall(
        ctypes.c_long(_SYS_SCHED_GETAFFINITY),
        ctypes.c_long(tid),
        ctypes.c_ulong(length & 0xFFFFFFFF),  # the kernel takes an unsigned int
        _mask,
    )
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return _mask.raw[: min(got, _MASK_BYTES)]


def write_memory(tid: int, addr: int, data: bytes) -> int:
    """Write `data` at `addr` of `tid`'s memory; the bytes written.

    process_vm_writev, as the kernel's own copy_to_user, writes only where
    the page may be written: a read-only or unmapped address fails (EFAULT),
    or is written in part (the count says how much)."""
    buffer = ctypes.create_string_buffer(data, len(data))
    local = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), len(data))
    remote = _Iovec(addr, len(data))
    written = _libc.process_vm_writev(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if written < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(written)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate fd `target_fd` of the process behind `pidfd` into this process."""
    fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, target_fd, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.set_inheritable(fd, False)
    return int(fd)


_OPEN_HOW = struct.Struct("<QQQ")
_open_how = ctypes.create_string_buffer(_OPEN_HOW.size)  # reused: one loop, one thread
_openat2 = _libc.syscall
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_CACHED = 0x20


def openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    _OPEN_HOW.pack_into(_open_how, 0, flags, mode, resolve)
    fd = _openat2(_SYS_OPENAT2, dirfd, path, _open_how, _OPEN_HOW.size)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    rc = _libc.syscall(_SYS_RENAMEAT2, olddirfd, old, newdirfd, new, flags)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# An O_PATH fd of this process's /proc/self/fd: a readlink relative to it
# walks one component instead of four.  A forked child drops it at once (it
# names the parent's fds) and opens its own when it needs one.
_own_fd_dir = -1


def _forget_own_fd_dir() -> None:
    global _own_fd_dir
    if _own_fd_dir >= 0:
        with contextlib.suppress(OSError):
            os.close(_own_fd_dir)
        _own_fd_dir = -1


os.register_at_fork(after_in_child=_forget_own_fd_dir)


def fd_path(fd: int) -> str:
    """What /proc/self/fd/FD points at: the real path for files."""
    global _own_fd_dir
    if _own_fd_dir < 0:
        _own_fd_dir = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return os.readlink(str(fd), dir_fd=_own_fd_dir)


# Ancestors `long_path` climbs at most (a path of PATH_MAX bytes more has fewer).
_MAX_CLIMB = 4096


def long_path(fd: int) -> str:
    """The real path of directory `fd`, also past PATH_MAX, where readlink of
    /proc/self/fd/N fails with ENAMETOOLONG.

    Climbs "..", from fd, until an ancestor's link can be read, and finds each
    directory passed by its name in its parent (by device and inode, as
    getcwd(3) does past its syscall's limit).  The path is true for the
    directory `fd` holds, as a readlink's is: whoever acts, acts on `fd`.
    ENAMETOOLONG (or the error of the climb, as the caller's rights meet it:
    a parent it cannot list) when it cannot be named.
    """
    try:
        return fd_path(fd)
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
    names: list[str] = []
    current = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        for _ in range(_MAX_CLIMB):
            here = os.fstat(current)
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = parent
            above = os.fstat(parent)
            if (above.st_dev, above.st_ino) == (here.st_dev, here.st_ino):
                break  # the root, and still no name: nothing to say
            names.append(_name_in(parent, here))
            try:
                base = fd_path(parent)
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                continue
            return base.rstrip("/") + "/" + "/".join(reversed(names))
    finally:
        os.close(current)
    raise OSError(errno.ENAMETOOLONG, "the path cannot be named")


def _name_in(directory: int, child: os.stat_result) -> str:
    """The name of directory `child` in `directory`: the entry whose stat is its
    (a mount point's entry holds another inode: its stat says what is mounted)."""
    wanted = (child.st_dev, child.st_ino)
    with os.scandir(directory) as entries:
        found = [
            (e.inode() != child.st_ino, e.name) for e in entries if e.is_dir(follow_symlinks=False)
        ]
    for _other_inode, name in sorted(found):  # the same inode first: almost always it
        with contextlib.suppress(OSError):
            st = os.stat(name, dir_fd=directory, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == wanted:
                return name
    raise OSError(errno.ENAMETOOLONG, "the path cannot be named")


def disconnect(fd: int) -> int:
    """connect(fd, AF_UNSPEC): a datagram or netlink socket forgets its peer; 0 or the errno."""
    unspecified = ctypes.create_string_buffer(2)  # sa_family AF_UNSPEC (0)
    if _libc.connect(fd, unspecified, 2) < 0:
        return ctypes.get_errno() or errno.EINVAL
    return 0


_SYS_UTIMENSAT = 280
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
_TIMESPECS = struct.Struct("<qqqq")

# One instant: seconds and nanoseconds (or UTIME_NOW / UTIME_OMIT as nanoseconds).
Instant = tuple[int, int]


def utimensat(
    dirfd: int, path: bytes | None, times: tuple[Instant, Instant] | None, flags: int
) -> None:
    """utimensat(2) as it is: `path` None acts on `dirfd` itself, `times` None means now."""
    buf = None if times is None else _TIMESPECS.pack(*times[0], *times[1])
    rc = _libc.syscall(_SYS_UTIMENSAT, dirfd, path, buf, flags)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def namespace_id(pid: int, kind: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of `pid`'s namespace of `kind` ("pid", "net"); None if gone."""
    try:
        st = os.stat(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pidfd_target(tid: int, fd: int) -> int | None:
    """The pid (as we number it) behind fd `fd` of thread `tid`, if that fd is a pidfd.

    None when the fd is not a pidfd or cannot be looked at (the kernel then
    refuses the call itself); -1 when its process has exited.
    """
    try:
        for line in read_proc(f"/proc/{tid}/fdinfo/{fd}").splitlines():
            if line.startswith(b"Pid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_group(pid: int) -> int:
    """The process group of `pid` (from /proc/PID/stat), 0 if it is gone."""
    field = _stat_field(pid, 2)
    try:
        return int(field) if field is not None else 0
    except ValueError:
        return 0
