"""An attacker agent: tries one way out of the sandbox and reports what happened.

    python attack.py OP [ARGS...]

Prints one JSON line `{"op": OP, "result": "ok" | "ERRNO_NAME", "data": ...}`
and exits 0, unless the supervisor kills it first.
"""

from __future__ import annotations

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

libc = ctypes.CDLL(None, use_errno=True)


def report(op: str, result: str, data: object = None) -> None:
    print(json.dumps({"op": op, "result": result, "data": data}), flush=True)


def errname(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


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
        os.setxattr(path, "user.agentsup-test", b"1")
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
