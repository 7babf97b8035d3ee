"""Victim: wait for "go" on stdin, then grow a small process tree and sleep.

The tree: two plain sleeping children, and a grandchild that escaped with
setsid plus a double fork (re-parented away from us).  Prints every pid of
the tree (itself first) as one line, then sleeps until killed.
"""

from __future__ import annotations

import os
import sys
import time


def sleeper() -> None:
    time.sleep(300)
    os._exit(0)


def main() -> int:
    sys.stdin.readline()
    pids = [os.getpid()]
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            sleeper()
        pids.append(pid)
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(write_end, f"{os.getpid()}\n".encode())
            sleeper()
        os._exit(0)
    os.waitpid(middle, 0)
    escaped = int(os.read(read_end, 64).decode())
    pids.append(escaped)
    print(" ".join(map(str, pids)), flush=True)
    time.sleep(300)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
