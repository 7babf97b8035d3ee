"""Victim: wait for "go", then fork until fork fails (bounded), report, clean up.

Prints "<children forked> <errno of the failing fork, 0 if the bound was hit>".
Children wait on a pipe and exit when this process closes it.
"""

from __future__ import annotations

import os
import sys

BOUND = 200


def main() -> int:
    sys.stdin.readline()
    read_end, write_end = os.pipe()
    children: list[int] = []
    failure = 0
    while len(children) < BOUND:
        try:
            pid = os.fork()
        except OSError as exc:
            failure = exc.errno or -1
            break
        if pid == 0:
            os.close(write_end)
            os.read(read_end, 1)
            os._exit(0)
        children.append(pid)
    os.close(write_end)
    for pid in children:
        os.waitpid(pid, 0)
    print(len(children), failure, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
