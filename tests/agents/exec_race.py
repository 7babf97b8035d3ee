"""What the exec red-team agents share: raw execve through ctypes, and a way to
tell when another thread waits in execve for its decision.

Copied into the workspace beside the attacking script, which imports it
(its directory is first on sys.path).
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
libc.execve.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]


def cstrings(*words: bytes) -> tuple[list[Any], Any]:
    """The buffers (kept alive by the caller) and a NULL-terminated char *[] of them."""
    bufs = [ctypes.create_string_buffer(w) for w in words]
    return bufs, (ctypes.c_void_p * (len(bufs) + 1))(*[ctypes.addressof(b) for b in bufs], None)


def syscall_of(tid: int) -> int:
    return os.open(f"/proc/self/task/{tid}/syscall", os.O_RDONLY)


def wait_in_exec(fd: int, running: bool = False) -> None:
    """Until the thread of `fd` (`syscall_of`) waits in execve for its decision;
    with `running`, at most 50 ms (the native path decides a leader's exec at
    once: the thread then runs, copying its environment).  Exits 90 after 5 s."""
    start = time.monotonic()
    while not os.pread(fd, 64, 0).startswith(b"59 "):
        now = time.monotonic()
        if running and now > start + 0.05:
            return
        if now > start + 5:
            os._exit(90)
