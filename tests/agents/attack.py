"""An attacker agent: tries one way out of the sandbox and reports what happened.

    python attack.py OP [ARGS...]

Prints one JSON line `{"op": OP, "result": "ok" | "ERRNO_NAME", "data": ...}`
and exits 0, unless the supervisor kills it first.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import resource
import socket
import struct
import sys
import termios
import threading
from collections.abc import Callable

libc = ctypes.CDLL(None, use_errno=True)


def report(op: str, result: str, data: object = None) -> None:
    print(json.dumps({"op": op, "result": result, "data": data}), flush=True)


def errname(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def attempt(op: str, call: Callable[[], object]) -> None:
    """Report "ok" when `call` works, else its errno's name."""
    try:
        call()
        report(op, "ok")
    except OSError as exc:
        report(op, errname(exc))


def libc_result(rc: int) -> str:
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def op_sethostname(name: str) -> None:
    raw = name.encode()
    report("sethostname", libc_result(libc.sethostname(raw, len(raw))))


def op_netlink_mtu(mtu: str) -> None:
    """RTM_NEWLINK on lo (index 1) with IFLA_MTU, sent without an address."""
    attr = struct.pack("<HHI", 8, 4, int(mtu))  # rtattr IFLA_MTU
    body = struct.pack("<BxHiII", 0, 0, 1, 0, 0) + attr  # ifinfomsg
    header = struct.pack("<IHHII", 16 + len(body), 16, 0x5, 1, 0)  # NLM_F_REQUEST|NLM_F_ACK
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        sock.send(header + body)
        reply = sock.recv(4096)
        code = struct.unpack_from("<i", reply, 16)[0]  # nlmsgerr.error
        report("netlink_mtu", "ok" if code == 0 else errno.errorcode.get(-code, str(code)))
    except OSError as exc:
        report("netlink_mtu", errname(exc))


def op_packet() -> None:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        report("packet", "ok")
    except OSError as exc:
        report("packet", errname(exc))


def op_renice(pid: str) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, int(pid), 19)
        report("renice", "ok")
    except OSError as exc:
        report("renice", errname(exc))


def op_prlimit(pid: str) -> None:
    try:
        resource.prlimit(int(pid), resource.RLIMIT_NOFILE, (3, 3))
        report("prlimit", "ok")
    except OSError as exc:
        report("prlimit", errname(exc))


def op_sched_idle(pid: str) -> None:
    try:
        os.sched_setscheduler(int(pid), os.SCHED_IDLE, os.sched_param(0))
        report("sched_idle", "ok")
    except OSError as exc:
        report("sched_idle", errname(exc))


def op_fanotify() -> None:
    report("fanotify", libc_result(libc.fanotify_init(0, os.O_RDONLY)))


def op_find_marker(head: str, tail: str) -> None:
    """Look for `head + tail` in every /proc/PID/environ, cmdline and maps the agent can open."""
    marker = head + tail
    found, opened = [], 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for name in ("environ", "cmdline", "maps"):
            try:
                with open(f"/proc/{entry}/{name}", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            opened += 1
            if marker.encode() in data:
                found.append(f"{entry}/{name}")
    report("find_marker", "found" if found else "not_found", {"hits": found, "opened": opened})


def op_proc_read(path: str, head: str, tail: str) -> None:
    marker = head + tail
    try:
        with open(path, "rb") as f:
            data = f.read()
        report("proc_read", "found" if marker.encode() in data else "ok")
    except OSError as exc:
        report("proc_read", errname(exc))


def op_tiocsti(text: str) -> None:
    try:
        for char in text:
            fcntl.ioctl(0, termios.TIOCSTI, char.encode())
        report("tiocsti", "ok")
    except OSError as exc:
        report("tiocsti", errname(exc))


def op_setxattr(path: str) -> None:
    try:
        os.setxattr(path, XATTR, b"1")
        report("setxattr", "ok")
    except OSError as exc:
        report("setxattr", errname(exc))


def op_utime(path: str) -> None:
    try:
        os.utime(path, (0, 0))
        report("utime", "ok")
    except OSError as exc:
        report("utime", errname(exc))


def op_chown(path: str, uid: str) -> None:
    try:
        os.chown(path, int(uid), -1)
        report("chown", "ok")
    except OSError as exc:
        report("chown", errname(exc))


def op_hostname() -> None:
    report("hostname", "ok", socket.gethostname())


# -- metadata: xattrs, times and inode flags ------------------------------------------

XATTR = "user.agentsup-test"
SYS_UTIME = 132
SYS_UTIMES = 235
SYS_FUTIMESAT = 261
SYS_SETXATTRAT = 463
SYS_REMOVEXATTRAT = 466
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_NODUMP_FL = 0x40
FS_IOC_SETVERSION = 0x40087602  # the inode's generation number (ext4)
EXT4_IOC_SETVERSION = 0x40086604
AT_FDCWD = -100


def _syscall(number: int, *args: object) -> str:
    """syscall(2) with every integer passed as a full register (a bare int would be 32 bits)."""
    libc.syscall.restype = ctypes.c_long
    wide = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return libc_result(libc.syscall(ctypes.c_long(number), *wide))


def op_lsetxattr(path: str) -> None:
    attempt("lsetxattr", lambda: os.setxattr(path, XATTR, b"1", follow_symlinks=False))


def on_fd(op: str, path: str, call: Callable[[int], object]) -> None:
    """Open `path` for reading (an fd the agent may hold), then `call` on it; report."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        report(op, errname(exc))
        return
    try:
        attempt(op, lambda: call(fd))
    finally:
        os.close(fd)


def op_fsetxattr(path: str) -> None:
    on_fd("fsetxattr", path, lambda fd: os.setxattr(fd, XATTR, b"1"))


def op_removexattr(path: str) -> None:
    attempt("removexattr", lambda: os.removexattr(path, XATTR))


def op_setxattrat(path: str) -> None:
    """setxattrat(AT_FDCWD, path, 0, name, &{value, size, flags}, sizeof)."""
    value = ctypes.create_string_buffer(b"1")
    args = struct.pack("<QII", ctypes.addressof(value), 1, 0)
    report(
        "setxattrat",
        _syscall(SYS_SETXATTRAT, AT_FDCWD, path.encode(), 0, XATTR.encode(), args, len(args)),
    )


def op_removexattrat(path: str) -> None:
    report(
        "removexattrat",
        _syscall(SYS_REMOVEXATTRAT, AT_FDCWD, path.encode(), 0, XATTR.encode()),
    )


def op_utimes(path: str) -> None:
    times = struct.pack("<qqqq", 1, 0, 1, 0)
    report("utimes", _syscall(SYS_UTIMES, path.encode(), times))


def op_futimesat(path: str) -> None:
    times = struct.pack("<qqqq", 2, 0, 2, 0)
    report("futimesat", _syscall(SYS_FUTIMESAT, AT_FDCWD, path.encode(), times))


def op_utime_old(path: str) -> None:
    report("utime_old", _syscall(SYS_UTIME, path.encode(), struct.pack("<qq", 3, 3)))


def op_touch(path: str) -> None:
    """utimensat with NULL times: now, as touch does."""
    try:
        os.utime(path)
        report("touch", "ok", os.stat(path).st_mtime)
    except OSError as exc:
        report("touch", errname(exc))


def op_futimens(path: str) -> None:
    on_fd("futimens", path, lambda fd: os.utime(fd, ns=(5_000_000_000, 5_000_000_000)))


def op_chattr(path: str) -> None:
    """FS_IOC_SETFLAGS (chattr +d) on an fd opened for reading."""

    def set_nodump(fd: int) -> None:
        flags = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags)
        value = struct.unpack_from("<i", flags)[0] | FS_NODUMP_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<q", value))

    on_fd("chattr", path, set_nodump)


def op_setversion(path: str) -> None:
    """FS_IOC_SETVERSION on an fd opened for reading: a new generation number."""
    on_fd(
        "setversion",
        path,
        lambda fd: fcntl.ioctl(fd, FS_IOC_SETVERSION, struct.pack("<q", 0x41414141)),
    )


def op_setversion_ext4(path: str) -> None:
    on_fd(
        "setversion_ext4",
        path,
        lambda fd: fcntl.ioctl(fd, EXT4_IOC_SETVERSION, struct.pack("<q", 0x42424242)),
    )


# -- other processes ------------------------------------------------------------------

SYS_IOPRIO_SET = 251
SYS_KCMP = 312
SYS_SCHED_SETATTR = 314
SYS_MIGRATE_PAGES = 256
SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438


def op_ioprio(pid: str) -> None:
    # IOPRIO_WHO_PROCESS, class idle (3) << 13
    report("ioprio", _syscall(SYS_IOPRIO_SET, 1, int(pid), 3 << 13))


def op_affinity(pid: str) -> None:
    attempt("affinity", lambda: os.sched_setaffinity(int(pid), {0}))


def op_sched_setattr(pid: str) -> None:
    # struct sched_attr v0 (48 bytes): size, policy SCHED_IDLE (5), flags, nice...
    attr = struct.pack("<IIQiIQQQ", 48, 5, 0, 0, 0, 0, 0, 0)
    report("sched_setattr", _syscall(SYS_SCHED_SETATTR, int(pid), attr, 0))


def op_kcmp(pid: str) -> None:
    report("kcmp", _syscall(SYS_KCMP, os.getpid(), int(pid), 0, 0, 0))  # KCMP_FILE


def op_migrate_pages(pid: str) -> None:
    mask = ctypes.c_ulong(1)
    report(
        "migrate_pages",
        _syscall(SYS_MIGRATE_PAGES, int(pid), 64, ctypes.byref(mask), ctypes.byref(mask)),
    )


def op_pidfd_getfd(pid: str, fd: str) -> None:
    pidfd = libc.syscall(SYS_PIDFD_OPEN, int(pid), 0)
    if pidfd < 0:
        report("pidfd_getfd", libc_result(pidfd))
        return
    report("pidfd_getfd", _syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0))
    os.close(pidfd)


def op_renice_user(uid: str) -> None:
    attempt("renice_user", lambda: os.setpriority(os.PRIO_USER, int(uid), 19))


def op_prlimit_cpu(pid: str) -> None:
    """What killed the supervisor: RLIMIT_CPU lowered to one second."""
    attempt("prlimit_cpu", lambda: resource.prlimit(int(pid), resource.RLIMIT_CPU, (1, 1)))


def op_prlimit_from(path: str) -> None:
    """Wait for pids in `path` (the test writes them once it knows), then lower their RLIMIT_CPU."""
    import time

    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(path) as f:
        pids = [int(word) for word in f.read().split()]
    results = {}
    for pid in pids:
        try:
            resource.prlimit(pid, resource.RLIMIT_CPU, (1, 1))
            results[str(pid)] = "ok"
        except OSError as exc:
            results[str(pid)] = errname(exc)
    report("prlimit_from", "ok", results)


def op_own_tree() -> None:
    """The same calls on itself and a child of its own: they work."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    results = {}
    for name, call in (
        ("renice", lambda pid: os.setpriority(os.PRIO_PROCESS, pid, 5)),
        ("prlimit", lambda pid: resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, 64))),
        ("affinity", lambda pid: os.sched_setaffinity(pid, {0})),
        ("sched", lambda pid: os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))),
    ):
        for pid in (os.getpid(), child.pid):
            try:
                call(pid)
                results[f"{name}:{pid == child.pid}"] = "ok"
            except OSError as exc:
                results[f"{name}:{pid == child.pid}"] = errname(exc)
    child.kill()
    child.wait()
    report("own_tree", "ok" if set(results.values()) == {"ok"} else "failed", results)


# -- sockets ----------------------------------------------------------------------------


def op_listen_unbound() -> None:
    """listen() on a socket never bound: the kernel binds it to 0.0.0.0 itself."""
    try:
        sock = socket.socket()
        sock.listen(1)
        report("listen_unbound", "ok", list(sock.getsockname()))
    except OSError as exc:
        report("listen_unbound", errname(exc))


def op_listen_bound(host: str) -> None:
    try:
        sock = socket.socket()
        sock.bind((host, 0))
        sock.listen(1)
        report("listen_bound", "ok", list(sock.getsockname()))
    except OSError as exc:
        report("listen_bound", errname(exc))


def op_socket(family: str, kind: str, proto: str = "0") -> None:
    try:
        sock = socket.socket(int(family), int(kind), int(proto))
        sock.close()
        report(f"socket:{family}:{kind}", "ok")
    except OSError as exc:
        report(f"socket:{family}:{kind}", errname(exc))


def op_big_datagrams() -> None:
    """UDP datagrams up to 60 KB through sendto and sendmsg, received whole on loopback."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sizes = []
    for size in (100, 20000, 60000):
        sender.sendto(b"x" * size, receiver.getsockname())
        sizes.append(len(receiver.recv(65536)))
    sender.sendmsg([b"y" * 30000, b"z" * 30000], [], 0, receiver.getsockname())
    sizes.append(len(receiver.recv(65536)))
    report("big_datagrams", "ok", sizes)


def op_fanotify_mark() -> None:
    # fanotify_mark(-1, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD, "/")
    report("fanotify_mark", _syscall(301, -1, 1, 0x20, AT_FDCWD, b"/"))


# -- the supervisor itself: load, threads, bad arguments ----------------------------------


def op_open_many(path: str, count: str) -> None:
    """Open and read `path` over and over: every fd must be a fresh, valid one with its data."""
    expected = open(path, "rb").read()  # noqa: SIM115 - closed by the exit
    bad: list[str] = []
    for _ in range(int(count)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            bad.append(errname(exc))
            continue
        if fd <= 2:
            bad.append(f"fd {fd}")  # an answered open that installed nothing
        elif os.pread(fd, len(expected) + 1, 0) != expected:
            bad.append(f"fd {fd}: wrong data")
        os.close(fd)
        if len(bad) > 20:
            break
    report("open_many", "ok" if not bad else "bad", bad)


def op_threads_then(count: str, path: str) -> None:
    """Start `count` short-lived threads that each open `path`, then read a secret (OP next)."""
    import threading

    def touch() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_RDONLY))

    started = 0
    while started < int(count):
        batch = [threading.Thread(target=touch) for _ in range(min(200, int(count) - started))]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()
        started += len(batch)
    report("threads", "ok", started)


def op_wait_for(path: str) -> None:
    """Say so on stdout, then wait (stat only: nothing mediated) until `path` exists."""
    import time

    report("waiting", "ok")
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def op_read_then_survive(path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read()
        report("read", "ok")
    except OSError as exc:
        report("read", errname(exc))
    print("SURVIVED", flush=True)


def op_bad_pointer() -> None:
    """open() with a pointer past 2**63: EFAULT, as the kernel says for any bad pointer."""
    libc.syscall.restype = ctypes.c_long
    results = [
        libc_result(libc.syscall(2, ctypes.c_ulong(pointer), 0, 0))
        for pointer in (1 << 63, (1 << 64) - 1, 0xFFFF800000000000, 1)
    ]
    report("bad_pointer", "ok" if set(results) == {"EFAULT"} else "odd", results)


def _fuzz_table() -> list[tuple[str, int, str]]:
    """(name, number, argument kinds) of the syscalls the supervisor is notified of.

    Kinds: p pointer, f flags, d dirfd/fd, n length/number, i pid, m mode.
    Calls that could hurt the fuzzer itself (exec, its own limits) are left out
    or get arguments that cannot.
    """
    return [
        ("open", 2, "pfm"),
        ("openat", 257, "dpfm"),
        ("openat2", 437, "dppn"),
        ("creat", 85, "pm"),
        ("unlink", 87, "p"),
        ("unlinkat", 263, "dpf"),
        ("rmdir", 84, "p"),
        ("rename", 82, "pp"),
        ("renameat", 264, "dpdp"),
        ("renameat2", 316, "dpdpf"),
        ("mkdir", 83, "pm"),
        ("mkdirat", 258, "dpm"),
        ("link", 86, "pp"),
        ("linkat", 265, "dpdpf"),
        ("symlink", 88, "pp"),
        ("symlinkat", 266, "pdp"),
        ("truncate", 76, "pn"),
        ("chmod", 90, "pm"),
        ("fchmod", 91, "dm"),
        ("fchmodat", 268, "dpm"),
        ("fchmodat2", 452, "dpmf"),
        ("chown", 92, "pnn"),
        ("lchown", 94, "pnn"),
        ("fchown", 93, "dnn"),
        ("fchownat", 260, "dpnnf"),
        ("connect", 42, "dpn"),
        ("bind", 49, "dpn"),
        ("listen", 50, "dn"),
        ("sendto", 44, "dpnfpn"),
        ("sendmsg", 46, "dpf"),
        ("sendmmsg", 307, "dpnf"),
        ("process_vm_readv", 310, "ipnpnf"),
        ("setxattr", 188, "pppnf"),
        ("lsetxattr", 189, "pppnf"),
        ("fsetxattr", 190, "dppnf"),
        ("removexattr", 197, "pp"),
        ("lremovexattr", 198, "pp"),
        ("fremovexattr", 199, "dp"),
        ("setxattrat", 463, "dpfppn"),
        ("removexattrat", 466, "dpfp"),
        ("utime", 132, "pp"),
        ("utimes", 235, "pp"),
        ("futimesat", 261, "dpp"),
        ("utimensat", 280, "dppf"),
        ("ioctl", 16, "dIp"),
        ("socket", 41, "FTn"),
        ("kcmp", 312, "iinnn"),
        ("sched_setaffinity", 203, "inp"),
        ("setpriority", 141, "Win"),
    ]


def op_fuzz(count: str, seconds: str, seed: str, directory: str) -> None:
    """Random pointers, lengths, flags and fds for the notified syscalls; all must return."""
    import random
    import time

    rng = random.Random(int(seed))
    libc.syscall.restype = ctypes.c_long
    libc.syscall.argtypes = [ctypes.c_long] + [ctypes.c_ulong] * 6
    os.chdir(directory)
    keep: list[object] = []

    def buffer(data: bytes) -> int:
        buf = ctypes.create_string_buffer(data, len(data) + 1)
        keep.append(buf)
        return ctypes.addressof(buf)

    names = [b"f", b"sub/f", b"missing/x", b"/etc/hostname", b"/dev/null", b"..", b"/"]
    names += [b"/proc/self/fd/0", b"/dev/stdin", b"", b"x" * 300, b"a/" * 2100, b"/tmp/z"]
    os.makedirs("sub", exist_ok=True)
    for name in ("f", "sub/f"):
        with open(name, "w") as f:
            f.write("x")
    strings = [buffer(name) for name in names]
    blobs = [buffer(bytes(rng.getrandbits(8) for _ in range(512))) for _ in range(8)]
    inet = buffer(struct.pack("<HH4s8x", socket.AF_INET, 9, bytes([127, 0, 0, 1])))
    pointers = [0, 1, 4095, 1 << 47, 1 << 63, (1 << 64) - 1, 0xFFFF800000000000, inet]
    pointers += [p + rng.choice((0, 1, 300, 4000)) for p in strings + blobs]
    sockets = [
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK),
        socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK),
    ]
    fds = [AT_FDCWD, -1, 0, 1, 2, 999, os.open(".", os.O_RDONLY), os.open("f", os.O_RDONLY)]
    fds += [s.fileno() for s in sockets] + [(1 << 32) | (AT_FDCWD & 0xFFFFFFFF)]

    def value(kind: str) -> int:
        if kind == "p":
            return rng.choice(pointers)
        if kind == "d":
            return rng.choice(fds) & (1 << 64) - 1
        if kind == "f":
            return rng.choice((0, rng.getrandbits(32), rng.getrandbits(64), 1 << 31, 0x100))
        if kind == "m":
            return rng.choice((0o644, 0o7777, rng.getrandbits(32), (1 << 64) - 1))
        if kind == "i":
            return rng.choice((0, 1, os.getpid(), 99999, (1 << 32) - 1, rng.getrandbits(64)))
        if kind == "I":
            return rng.choice((0x40086602, 0x40046602, 0x401C5820, (1 << 32) | 0x40086602))
        if kind == "F":
            return rng.choice((16, 17, 2, 10, 1, rng.getrandbits(16)))
        if kind == "T":
            return rng.choice((3, 10, 1, 2, 3 | 0x800, rng.getrandbits(32)))
        if kind == "W":
            return rng.choice((0, 1, 2))
        return rng.choice((0, 1, 16, 24, 128, 4096, 1 << 31, (1 << 64) - 1, rng.getrandbits(64)))

    table = _fuzz_table()
    deadline = time.monotonic() + float(seconds)
    done, errors = 0, {}
    while done < int(count) and time.monotonic() < deadline:
        name, number, kinds = rng.choice(table)
        args = [value(kind) for kind in kinds] + [0] * (6 - len(kinds))
        if name == "setpriority":
            args[2] = 0  # leave its own niceness alone
        rc = libc.syscall(number, *args)
        if rc >= 0 and name in ("open", "openat", "openat2", "creat", "socket") and rc > 2:
            os.close(rc)
        key = "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
        errors[key] = errors.get(key, 0) + 1
        done += 1
    report("fuzz", "ok", {"calls": done, "results": errors})


def _flip_pointer(
    field: ctypes.Array[ctypes.c_char], offset: int, one: int, two: int
) -> Callable[[], None]:
    """Start a thread rewriting the 8-byte pointer at `offset`; returns its stopper."""
    running = [True]

    def flip() -> None:
        while running[0]:
            struct.pack_into("<Q", field, offset, one)
            struct.pack_into("<Q", field, offset, two)

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()

    def stop() -> None:
        running[0] = False
        thread.join()

    return stop


def op_sendmsg_null_race(denied_port: str, tries: str) -> None:
    """sendmsg with msg_name NULL when checked, a denied address when the kernel reads it."""
    address = ctypes.create_string_buffer(
        struct.pack("<H", socket.AF_INET)
        + struct.pack(">H", int(denied_port))
        + bytes([127, 0, 0, 1])
        + bytes(8),
        16,
    )
    payload = ctypes.create_string_buffer(b"leak", 4)
    iov = ctypes.create_string_buffer(struct.pack("<QQ", ctypes.addressof(payload), 4), 16)
    msghdr = ctypes.create_string_buffer(
        struct.pack("<QI4xQQQQi4x", 0, 16, ctypes.addressof(iov), 1, 0, 0, 0), 56
    )
    libc.sendmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    stop = _flip_pointer(msghdr, 0, 0, ctypes.addressof(address))
    try:
        for _ in range(int(tries)):
            if libc.sendmsg(sock.fileno(), ctypes.addressof(msghdr), 0) == 4:
                sent += 1
    finally:
        stop()
    report("sendmsg_null_race", "ok", {"sent": sent})


def op_unix_connect_race(allowed: str, denied: str, tries: str) -> None:
    """connect() to the allowed unix socket while a thread flips the path to the denied one."""
    size = max(len(allowed), len(denied)) + 1
    good = struct.pack("<H", socket.AF_UNIX) + allowed.encode().ljust(size, b"\0")
    bad = struct.pack("<H", socket.AF_UNIX) + denied.encode().ljust(size, b"\0")
    buf = ctypes.create_string_buffer(good, len(good))
    libc.connect.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    running = [True]

    def flip() -> None:
        while running[0]:
            ctypes.memmove(buf, bad, len(bad))
            ctypes.memmove(buf, good, len(good))

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    connected = 0
    try:
        for _ in range(int(tries)):
            sock = socket.socket(socket.AF_UNIX)
            if libc.connect(sock.fileno(), ctypes.addressof(buf), len(good)) == 0:
                connected += 1
            sock.close()
    finally:
        running[0] = False
        thread.join()
    report("unix_connect_race", "ok", {"connected": connected})


OPS = {name[3:]: func for name, func in globals().items() if name.startswith("op_")}


def main() -> None:
    args = sys.argv[1:]
    while args:
        if "then" in args:
            cut = args.index("then")
            current, args = args[:cut], args[cut + 1 :]
        else:
            current, args = args, []
        OPS[current[0]](*current[1:])


if __name__ == "__main__":
    main()
