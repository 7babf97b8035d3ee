"""An agent that holds a new image before its first instruction, then tries to
make agentsup forget the image's exec check.

    python exec_hold.py MODE TRIES COUNT

Each try forks a child that execs `/bin/echo allowed` with a huge environment,
which the kernel takes a while to copy.  The argument lives in a shared page:
once the exec was allowed, the parent writes "forbidden" there, and stops the
child (SIGSTOP), whose new image then stops before its first instruction, its
check still to come.  Meanwhile:

    none    nothing (the control)
    stale   COUNT execs of a program that exits making no syscall agentsup sees:
            each leaves a check behind (red team 30: the 4097th pushed out the
            held image's, which then ran unchecked).  Every exec here has a
            long argument more, so that the supervisor decides it, not the broker
    reuse   the exec is a thread's; COUNT threads each make a trapped call, one
            of them with the exec'ing thread's old id once the host's ids wrap
            (red team 30: that call read as "that thread's exec failed")

then SIGCONT.  And with no stop:

    hidden  the child makes itself non-dumpable first (its /proc/PID/syscall is
            then no one's to read but root's): under the read lane, the reads
            the kernel raises inside execve were taken for the new image's
            first, and its check spent on the old image (red team 31)

Prints one JSON line: how each try ended ("held:-9" is a held
image killed at its check; "forbidden" lines on stdout are images that ran).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import resource
import signal
import struct
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.execve.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
libc.syscall.restype = ctypes.c_long
SYS_TGKILL = 234
PR_SET_DUMPABLE = 4
HERE = os.path.dirname(os.path.abspath(__file__))
EXIT_ONLY = os.path.join(HERE, "exit-only")


def write_exit_only(path: str) -> None:
    """A static x86-64 ELF whose one instruction sequence is exit(0)."""
    code = bytes.fromhex("b83c00000031ff0f05")  # mov eax, 60; xor edi, edi; syscall
    base, header, entry_size = 0x400000, 64, 56
    size = header + entry_size + len(code)
    elf = struct.pack(
        "<4s5B7sHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0, bytes(7),  # 64-bit, little-endian, version 1
        2, 62, 1, base + header + entry_size, header, 0, 0, header, entry_size, 1, 0, 0, 0,
    )  # fmt: skip
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    with open(path, "wb") as out:
        out.write(elf + segment + code)
    os.chmod(path, 0o755)


def child(report: int, argument: int, by_thread: bool, padded: bool, hidden: bool) -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (64 << 20, resource.RLIM_INFINITY))
    if hidden:
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    program = ctypes.create_string_buffer(b"/bin/echo")
    padding = ctypes.create_string_buffer(b"x" * 5000)
    words = [ctypes.addressof(program), argument] + ([ctypes.addressof(padding)] if padded else [])
    argv = (ctypes.c_void_p * (len(words) + 1))(*words, None)
    count = 400_000  # about 0.1 s of copying in the kernel
    strings = ctypes.create_string_buffer(b"a\0" * count)
    start = ctypes.addressof(strings)
    envp = (ctypes.c_void_p * (count + 1))(*range(start, start + 2 * count, 2))

    def execute() -> None:
        os.write(report, struct.pack("<i", threading.get_native_id()))
        libc.execve(ctypes.addressof(program), argv, envp)
        os._exit(100 + ctypes.get_errno())

    if by_thread:
        threading.Thread(target=execute, daemon=True).start()
        while True:
            time.sleep(100)
    execute()


def run_exit_only() -> None:
    pid = os.fork()
    if pid == 0:
        path = ctypes.create_string_buffer(EXIT_ONLY.encode())
        padding = ctypes.create_string_buffer(b"x" * 5000)
        argv = (ctypes.c_void_p * 3)(ctypes.addressof(path), ctypes.addressof(padding), None)
        libc.execve(ctypes.addressof(path), argv, (ctypes.c_void_p * 1)(None))
        os._exit(99)
    os.waitpid(pid, 0)


def call_from_new_threads(count: int) -> None:
    def trapped_call() -> None:
        libc.umask(0o022)

    for _ in range(count):
        thread = threading.Thread(target=trapped_call)
        thread.start()
        thread.join()


def main(mode: str, tries: str, count: str) -> None:
    if mode == "stale":
        write_exit_only(EXIT_ONLY)
    shared = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    argument = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    outcomes: dict[str, int] = {}
    for _ in range(int(tries)):
        shared[:10] = b"allowed\0\0\0"
        sys.stdout.flush()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            child(write_end, argument, mode == "reuse", mode == "stale", mode == "hidden")
        os.close(write_end)
        (tid,) = struct.unpack("<i", os.read(read_end, 4))
        os.close(read_end)
        time.sleep(0.03)  # the exec is decided by now, and the kernel still copies
        shared[:10] = b"forbidden\0"
        if mode != "hidden":
            libc.syscall(SYS_TGKILL, pid, tid, signal.SIGSTOP)
        _, status = os.waitpid(pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            key = f"ended:{os.waitstatus_to_exitcode(status)}"
        else:
            held = os.readlink(f"/proc/{pid}/exe") == "/usr/bin/echo"
            if mode == "stale":
                for _ in range(int(count)):
                    run_exit_only()
            elif mode == "reuse":
                call_from_new_threads(int(count))
            os.kill(pid, signal.SIGCONT)
            _, status = os.waitpid(pid, 0)
            key = f"{'held' if held else 'stopped'}:{os.waitstatus_to_exitcode(status)}"
        outcomes[key] = outcomes.get(key, 0) + 1
    print(json.dumps({"op": "exec_hold", "result": "ok", "data": outcomes}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
