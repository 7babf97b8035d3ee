"""An agent that changes its umask in every way it is shared, and creates after each change.

    umasks.py WORKSPACE sequence    # one thread, a thread, a child: both paths agree
    umasks.py WORKSPACE shared-fs   # a process made with clone(CLONE_FS) changes it
    umasks.py WORKSPACE in-flight   # another thread's umask waits for a stopped supervisor

One JSON line per create: the case and the mode the new file got.  A create
must get exactly the mode the kernel would give it, with the umask in force
when the create happens: a kept umask that outlived a change gives the old one.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time

_CLONE_FS = 0x200
_SIGCHLD = 17
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}


def create(ws: str, name: str, mode: int = 0o666) -> str:
    fd = os.open(os.path.join(ws, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        return oct(os.fstat(fd).st_mode & 0o7777)
    finally:
        os.close(fd)


def report(case: str, mode: str) -> None:
    print(json.dumps({"case": case, "mode": mode}), flush=True)


def sequence(ws: str) -> None:
    os.umask(0o022)
    report("first", create(ws, "first"))
    report("again", create(ws, "again"))  # the same umask, maybe kept
    os.umask(0o077)
    report("after umask", create(ws, "after-umask"))

    # A thread shares the umask: its change is the main thread's too.
    thread = threading.Thread(target=os.umask, args=(0o027,))
    thread.start()
    thread.join()
    report("after a thread's umask", create(ws, "after-thread"))

    def change_and_create() -> None:
        os.umask(0o002)
        report("in the thread", create(ws, "in-thread"))

    thread = threading.Thread(target=change_and_create)
    thread.start()
    thread.join()
    report("after the thread's create", create(ws, "after-thread-create"))

    # A child has its own copy: its change is not the parent's.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.umask(0o007)
        os.write(write_end, create(ws, "in-child").encode())
        os._exit(0)
    os.close(write_end)
    report("in the child", os.read(read_end, 64).decode())
    os.waitpid(pid, 0)
    report("parent after the child", create(ws, "parent-after-child"))


def shared_fs(ws: str) -> None:
    """A process that shares the umask (fs_struct) without being a thread."""
    os.umask(0o022)
    report("first", create(ws, "first"))
    number = _SYS_CLONE[os.uname().machine]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    read_end, write_end = os.pipe()
    # No CLONE_VM and no new stack: a fork that shares the fs_struct.
    pid = libc.syscall(number, _CLONE_FS | _SIGCHLD, 0, 0, 0, 0)
    if pid == 0:
        os.umask(0o070)
        os.write(write_end, b"x")
        os._exit(0)
    assert pid > 0, ctypes.get_errno()
    os.close(write_end)
    os.read(read_end, 1)
    os.waitpid(pid, 0)
    report("after the sibling's umask", create(ws, "after-sibling"))


def in_flight(ws: str) -> None:
    """A umask that has not happened yet, while another thread creates."""
    os.umask(0o022)
    report("first", create(ws, "first"))
    print("ready", flush=True)
    sys.stdin.readline()  # the supervisor is stopped now: the umask below waits for it
    # Through ctypes, which lets go of the GIL: os.umask would hold it while it waits.
    umask = ctypes.CDLL(None, use_errno=True).umask
    thread = threading.Thread(target=umask, args=(0o077,))
    thread.start()
    time.sleep(0.3)
    report("while it waits", create(ws, "while-waiting"))
    print("created", flush=True)
    thread.join()  # the supervisor was let go: the umask happened
    report("once it happened", create(ws, "once-happened"))


if __name__ == "__main__":
    {"sequence": sequence, "shared-fs": shared_fs, "in-flight": in_flight}[sys.argv[2]](sys.argv[1])
