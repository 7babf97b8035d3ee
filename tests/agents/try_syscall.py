"""A tiny victim agent: does one thing and reports what happened.

    python try_syscall.py OP [ARGS...]

Prints one JSON line `{"op": OP, "result": "ok" | "ERRNO_NAME" | ..., "data": ...}`
and exits 0, unless the supervisor kills it first.  Each operation is the
plainest way to make the syscall, so a denial shows as a distinct errno
(bubblewrap's try-syscall).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_OPENAT = 257
SYS_OPENAT2 = 437
SYS_IO_URING_SETUP = 425
SYS_PTRACE = 101
AT_FDCWD = -100


@contextlib.contextmanager
def flipping(buf: ctypes.Array[ctypes.c_char], innocent: bytes, forbidden: bytes) -> Iterator[None]:
    """While the block runs, a second thread keeps rewriting `buf`: forbidden, innocent, ..."""
    size = len(innocent)
    running = [True]  # a plain flag: the flipper must be as fast as it can be

    def flip() -> None:
        while running[0]:
            ctypes.memmove(buf, forbidden, size)
            ctypes.memmove(buf, innocent, size)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        yield
    finally:
        running[0] = False
        flipper.join()


def padded_pair(first: str, second: str) -> tuple[ctypes.Array[ctypes.c_char], bytes, bytes]:
    """A buffer holding `first`, and both strings NUL-padded to one length."""
    size = max(len(first), len(second)) + 1
    one, two = first.encode().ljust(size, b"\0"), second.encode().ljust(size, b"\0")
    return ctypes.create_string_buffer(one, size), one, two


def loopback_sockaddr(port: int) -> bytes:
    """struct sockaddr_in for 127.0.0.1:port."""
    return (
        struct.pack("<H", socket.AF_INET)
        + struct.pack(">H", port)
        + bytes([127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    )


def report(op: str, result: str, data: object = None) -> None:
    print(json.dumps({"op": op, "result": result, "data": data}), flush=True)


def errname(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def raw_result(rc: int) -> str:
    return "ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def op_read(path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read()
        report("read", "ok", data.decode(errors="replace"))
    except OSError as exc:
        report("read", errname(exc))


def op_write(path: str, text: str = "written by agent") -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
        report("write", "ok")
    except OSError as exc:
        report("write", errname(exc))


def op_append(path: str, text: str = "appended by agent\n") -> None:
    try:
        with open(path, "a") as f:
            f.write(text)
        report("append", "ok")
    except OSError as exc:
        report("append", errname(exc))


def op_unlink(path: str) -> None:
    try:
        os.unlink(path)
        report("unlink", "ok")
    except OSError as exc:
        report("unlink", errname(exc))


def op_rename(src: str, dst: str) -> None:
    try:
        os.rename(src, dst)
        report("rename", "ok")
    except OSError as exc:
        report("rename", errname(exc))


def op_mkdir(path: str) -> None:
    try:
        os.mkdir(path)
        report("mkdir", "ok", oct(os.stat(path).st_mode & 0o777))
    except OSError as exc:
        report("mkdir", errname(exc))


def op_symlink(target: str, link: str) -> None:
    try:
        os.symlink(target, link)
        report("symlink", "ok")
    except OSError as exc:
        report("symlink", errname(exc))


def op_link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
        report("link", "ok")
    except OSError as exc:
        report("link", errname(exc))


def op_chmod(path: str, mode: str) -> None:
    try:
        os.chmod(path, int(mode, 8))
        report("chmod", "ok")
    except OSError as exc:
        report("chmod", errname(exc))


def op_ctypes_openat(path: str) -> None:
    fd = libc.syscall(SYS_OPENAT, AT_FDCWD, path.encode(), os.O_RDONLY, 0)
    data = None
    if fd >= 0:
        data = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
    report("ctypes_openat", raw_result(fd), data)


def op_openat2(path: str) -> None:
    how = ctypes.create_string_buffer(struct.pack("<QQQ", os.O_RDONLY, 0, 0), 24)
    fd = libc.syscall(SYS_OPENAT2, AT_FDCWD, path.encode(), how, 24)
    data = None
    if fd >= 0:
        data = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
    report("openat2", raw_result(fd), data)


def op_openat2_beneath(directory: str, path: str) -> None:
    """openat2(dirfd, path, RESOLVE_BENEATH): the kernel refuses escapes with EXDEV."""
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    how = ctypes.create_string_buffer(struct.pack("<QQQ", os.O_RDONLY, 0, 0x08), 24)
    fd = libc.syscall(SYS_OPENAT2, dirfd, path.encode(), how, 24)
    data = None
    if fd >= 0:
        data = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
    os.close(dirfd)
    report("openat2_beneath", raw_result(fd), data)


def op_connect(host: str, port: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((host, int(port)))
        report("connect", "ok", s.recv(64).decode(errors="replace"))
    except OSError as exc:
        report("connect", errname(exc))
    finally:
        s.close()


def op_connect_blocking(host: str, port: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no timeout: a blocking connect
    try:
        s.connect((host, int(port)))
        report("connect_blocking", "ok", s.recv(64).decode(errors="replace"))
    except OSError as exc:
        report("connect_blocking", errname(exc))
    finally:
        s.close()


def op_connect_race(allowed_port: str, denied_port: str, tries: str) -> None:
    """connect() to an allowed port while a thread flips the sockaddr to a denied one."""
    libc.connect.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    good, bad = loopback_sockaddr(int(allowed_port)), loopback_sockaddr(int(denied_port))
    buf = ctypes.create_string_buffer(good, 16)
    connected = refused = 0
    with flipping(buf, good, bad):
        for _ in range(int(tries)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if libc.connect(s.fileno(), ctypes.addressof(buf), 16) == 0:
                connected += 1
            else:
                refused += 1
            s.close()
    report("connect_race", "ok", {"connected": connected, "refused": refused})


def op_sendto_race(allowed_port: str, denied_port: str, tries: str) -> None:
    """UDP sendto() and sendmsg() to an allowed port while a thread flips the address."""
    libc.sendto.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint32,
    ]
    libc.sendmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    good, bad = loopback_sockaddr(int(allowed_port)), loopback_sockaddr(int(denied_port))
    buf = ctypes.create_string_buffer(good, 16)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # The same datagram through sendmsg, whose msghdr points at the flipping address.
    payload = ctypes.create_string_buffer(b"ping", 4)
    iov = ctypes.create_string_buffer(struct.pack("<QQ", ctypes.addressof(payload), 4), 16)
    msghdr = ctypes.create_string_buffer(
        struct.pack("<QI4xQQQQi4x", ctypes.addressof(buf), 16, ctypes.addressof(iov), 1, 0, 0, 0),
        56,
    )
    sent = refused = 0
    with flipping(buf, good, bad):
        for i in range(int(tries)):
            if i % 2:
                rc = libc.sendmsg(s.fileno(), ctypes.addressof(msghdr), 0)
            else:
                rc = libc.sendto(s.fileno(), b"ping", 4, 0, ctypes.addressof(buf), 16)
            if rc == 4:
                sent += 1
            else:
                refused += 1
    s.close()
    report("sendto_race", "ok", {"sent": sent, "refused": refused})


def op_exec_race(tries: str) -> None:
    """execve(/bin/echo allowed) while a thread flips the argument to `forbidden`."""
    libc.execve.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
    outcomes: dict[str, int] = {}
    for _ in range(int(tries)):
        pid = os.fork()
        if pid == 0:
            word = ctypes.create_string_buffer(b"allowed", 16)
            argv = (ctypes.c_void_p * 3)(
                ctypes.cast(ctypes.c_char_p(b"/bin/echo"), ctypes.c_void_p).value,
                ctypes.addressof(word),
                None,
            )
            envp = (ctypes.c_void_p * 1)(None)
            with flipping(word, b"allowed\0\0\0", b"forbidden\0"):
                libc.execve(b"/bin/echo", argv, envp)
            os._exit(100 + ctypes.get_errno())
        _, status = os.waitpid(pid, 0)
        key = str(os.waitstatus_to_exitcode(status))
        outcomes[key] = outcomes.get(key, 0) + 1
    report("exec_race", "ok", outcomes)


def op_exec(*argv: str) -> None:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True)
        report("exec", f"rc={proc.returncode}", proc.stdout + proc.stderr)
    except OSError as exc:
        report("exec", errname(exc))


def op_system(command: str) -> None:
    rc = os.system(command)
    report("system", f"rc={os.waitstatus_to_exitcode(rc)}")


def op_env(*names: str) -> None:
    report("env", "ok", {name: os.environ.get(name) for name in names})


def op_io_uring() -> None:
    params = ctypes.create_string_buffer(120)
    rc = libc.syscall(SYS_IO_URING_SETUP, 4, params)
    report("io_uring_setup", raw_result(rc))


def op_ptrace() -> None:
    rc = libc.syscall(SYS_PTRACE, 16, os.getppid(), 0, 0)  # PTRACE_ATTACH
    report("ptrace", raw_result(rc))


def op_fds() -> None:
    report("fds", "ok", sorted(int(fd) for fd in os.listdir(f"/proc/{os.getpid()}/fd")))


def op_race(path_allowed: str, path_secret: str, tries: str) -> None:
    """Open an allowed path while a thread flips the buffer to a secret one."""
    buf, allowed, secret = padded_pair(path_allowed, path_secret)
    leaked = opened = 0
    with flipping(buf, allowed, secret):
        for _ in range(int(tries)):
            fd = libc.syscall(SYS_OPENAT, AT_FDCWD, buf, os.O_RDONLY, 0)
            if fd >= 0:
                opened += 1
                if b"PRIVATE KEY" in os.read(fd, 4096):
                    leaked += 1
                os.close(fd)
    report("race", "ok", {"opened": opened, "leaked": leaked})


def op_unlink_race(path_allowed: str, path_protected: str, tries: str) -> None:
    """unlink() an allowed file while a thread flips the path to a protected one."""
    buf, allowed, protected = padded_pair(path_allowed, path_protected)
    removed = 0
    with flipping(buf, allowed, protected):
        for _ in range(int(tries)):
            with open(path_allowed, "w"):
                pass
            if libc.unlink(buf) == 0:
                removed += 1
    report("unlink_race", "ok", {"removed": removed})


def op_heartbeat(path: str, interval: str = "0.05") -> None:
    """Rewrite `path` with a counter until something stops us."""
    count = 0
    while True:
        count += 1
        try:
            with open(path + ".tmp", "w") as f:
                f.write(str(count))
            os.replace(path + ".tmp", path)
        except OSError as exc:
            print(f"heartbeat failed: {errname(exc)}", flush=True)
        time.sleep(float(interval))


def op_sleep(seconds: str) -> None:
    time.sleep(float(seconds))
    report("sleep", "ok")


def op_tree_then(op: str, *args: str) -> None:
    """Start a child and a setsid'd grandchild that sleep, then run OP ourselves."""
    children = []
    children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    children.append(
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
        )
    )
    print(json.dumps({"tree": [os.getpid()] + [c.pid for c in children]}), flush=True)
    time.sleep(0.3)
    OPS[op](*args)
    time.sleep(60)


def op_forkbomb(limit: str) -> None:
    pids = []
    result = "ok"
    for _ in range(int(limit)):
        try:
            pid = os.fork()
        except OSError as exc:
            result = errname(exc)
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        pids.append(pid)
    report("forkbomb", result, len(pids))
    for pid in pids:
        os.kill(pid, 9)


OPS = {
    "read": op_read,
    "write": op_write,
    "append": op_append,
    "unlink": op_unlink,
    "rename": op_rename,
    "mkdir": op_mkdir,
    "symlink": op_symlink,
    "link": op_link,
    "chmod": op_chmod,
    "ctypes_openat": op_ctypes_openat,
    "openat2": op_openat2,
    "openat2_beneath": op_openat2_beneath,
    "connect": op_connect,
    "connect_blocking": op_connect_blocking,
    "connect_race": op_connect_race,
    "sendto_race": op_sendto_race,
    "exec": op_exec,
    "exec_race": op_exec_race,
    "system": op_system,
    "env": op_env,
    "io_uring": op_io_uring,
    "ptrace": op_ptrace,
    "fds": op_fds,
    "race": op_race,
    "heartbeat": op_heartbeat,
    "unlink_race": op_unlink_race,
    "sleep": op_sleep,
    "tree_then": op_tree_then,
    "forkbomb": op_forkbomb,
}


def main() -> None:
    args = sys.argv[1:]
    while args:
        # Several operations may be chained with "then": OP A then OP B.
        if "then" in args:
            cut = args.index("then")
            current, args = args[:cut], args[cut + 1 :]
        else:
            current, args = args, []
        OPS[current[0]](*current[1:])


if __name__ == "__main__":
    main()
