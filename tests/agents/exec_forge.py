"""An agent that execs an allowed command and swaps it for a refused one in a race.

    python exec_forge.py argv TRIES [norandom]     /bin/echo allowed -> /bin/echo forbidden
    python exec_forge.py path TRIES [norandom]     /bin/echo -> /bin/touch (same argv)
    python exec_forge.py failing TRIES [norandom]  execs that fail: ENOENT, then EACCES
    python exec_forge.py forged TRIES              the same, the command line forged first
    python exec_forge.py preload TRIES             as argv, the new image's libc a memfd's copy
    python exec_forge.py static:PATH TRIES         as argv, PATH (a static echo) for /bin/echo

Each try forks a child.  In `argv` mode the child first writes the refused
command line over its own argv memory (what /proc/PID/cmdline shows), so a
new image running the refused command looks like the old one whose exec
failed.  (`norandom` switches address space randomization off first.)
In `preload` mode the new image loads its libc from a memfd (LD_PRELOAD of
/proc/self/fd/N, LC_ALL=C): it opens no file on a mount of the agent's
before it writes.  A `static:` image makes no syscall at all before it
writes.  Then a second thread keeps flipping the argument (or the path)
between the allowed and the refused one while the first execs.  Prints one
JSON line: how many children exited with which status.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import sys
import threading

libc = ctypes.CDLL(None, use_errno=True)
ADDR_NO_RANDOMIZE = 0x0040000
libc.execve.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]


def _address(data: bytes) -> tuple[ctypes.Array[ctypes.c_char], int]:
    buf = ctypes.create_string_buffer(data, len(data) + 1)
    return buf, ctypes.addressof(buf)


def _forge_own_cmdline(words: list[bytes]) -> list[bytes]:
    """Write `words` over this process's argv area; the argv that reads back the same."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    arg_start, arg_end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
    blob = b"\0".join(words) + b"\0"
    size = arg_end - arg_start
    assert len(blob) <= size, (blob, size)
    ctypes.memmove(arg_start, blob.ljust(size, b"\0"), size)
    # The NUL padding reads back as empty arguments: exec with as many.
    return words + [b""] * (size - len(blob))


def _flip(buf: ctypes.Array[ctypes.c_char], one: bytes, two: bytes, running: list[bool]) -> None:
    while running[0]:
        ctypes.memmove(buf, two, len(two))
        ctypes.memmove(buf, one, len(one))


def _failing(forge: bool) -> None:
    """Two execs that fail, then a syscall the supervisor sees: exit 0 if all went as usual."""
    if forge:
        _forge_own_cmdline([b"/bin/echo", b"forbidden"])
    argv = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.c_char_p(b"x"), ctypes.c_void_p).value, None)
    errors = []
    for path in (os.path.abspath("nonexistent").encode(), os.path.abspath(__file__).encode()):
        libc.execve(ctypes.c_char_p(path), argv, None)
        errors.append(ctypes.get_errno())
    os.close(os.open(__file__, os.O_RDONLY))
    if errors != [errno.ENOENT, errno.EACCES]:
        print("failed with", errors, flush=True)
        os._exit(1)
    os._exit(0)


def _libc_in_memfd() -> bytes:
    """LD_PRELOAD=/proc/self/fd/N, N a memfd holding a copy of this libc (inherited)."""
    with open("/proc/self/maps") as maps:
        libc_path = next(line.split()[-1] for line in maps if "/libc.so" in line)
    fd = os.memfd_create("libc", 0)
    with open(libc_path, "rb") as f:
        os.write(fd, f.read())
    return f"LD_PRELOAD=/proc/self/fd/{fd}".encode()


def _child(mode: str) -> None:
    if mode in ("failing", "forged"):
        _failing(mode == "forged")
    environment = [b"LC_ALL=C"]
    if mode == "preload":
        environment.append(_libc_in_memfd())
    if mode in ("argv", "preload") or mode.startswith("static:"):
        path = mode.partition(":")[2].encode() or b"/bin/echo"
        one, two = b"allowed\0\0\0", b"forbidden\0"
        words = _forge_own_cmdline([path, b"forbidden"])
        flipped, _ = _address(one)
        keep = [_address(word) for word in words]
        pointers = [a for _, a in keep]
        pointers[1] = ctypes.addressof(flipped)
        path_buf, _ = _address(path)
    else:
        one, two = b"/bin/echo\0", b"/bin/touch"
        path_buf, _ = _address(one)
        flipped = path_buf
        marker = os.path.join(os.getcwd(), "touched")
        keep = [_address(b"x"), _address(marker.encode())]
        pointers = [a for _, a in keep]
    argv = (ctypes.c_void_p * (len(pointers) + 1))(*pointers, None)
    kept = [_address(variable) for variable in environment]
    envp = (ctypes.c_void_p * (len(kept) + 1))(*(a for _, a in kept), None)
    running = [True]
    threading.Thread(target=_flip, args=(flipped, one, two, running), daemon=True).start()
    libc.execve(ctypes.addressof(path_buf), argv, envp)
    running[0] = False
    os._exit(100 + ctypes.get_errno())


def main(mode: str, tries: str, randomize: str = "") -> None:
    if randomize == "norandom":
        libc.personality(ADDR_NO_RANDOMIZE)  # for the children's execs
    outcomes: dict[str, int] = {}
    for _ in range(int(tries)):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(mode)
        _, status = os.waitpid(pid, 0)
        key = str(os.waitstatus_to_exitcode(status))
        outcomes[key] = outcomes.get(key, 0) + 1
    print(json.dumps({"op": "exec_forge", "result": "ok", "data": outcomes}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
