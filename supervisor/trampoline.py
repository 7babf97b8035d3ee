"""The trampoline: the short-lived process that becomes the agent.

The supervisor starts it with `python -I -m agentsup.trampoline CFG STATUS GO`
(three inherited fds).  In order it:

1. reads its launch plan (JSON) from CFG;
2. dies with the supervisor (PR_SET_PDEATHSIG) and sets rlimits;
3. applies the Landlock floor;
4. installs the seccomp filter with a user-notification listener;
5. hands the listener to the supervisor: it writes the fd number to STATUS
   and the supervisor takes a copy with pidfd_getfd (no trapped syscall
   is needed, so nothing can deadlock before the supervisor listens);
6. waits for the supervisor's go byte on GO, closes its copy, and execs
   the agent with the scrubbed environment.  The execve is the first
   trapped syscall.

If the exec fails it writes `E<errno>` to STATUS and exits 127/126; STATUS is
close-on-exec, so a successful exec shows as EOF.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _fail(status_fd: int, stage: str, exc: BaseException) -> None:
    err = getattr(exc, "errno", None) or 1
    os.write(status_fd, f"F{err} {stage}: {exc}\n".encode())
    os._exit(125)


def main(argv: list[str]) -> None:
    cfg_fd, status_fd, go_fd = (int(a) for a in argv[1:4])
    for fd in (status_fd, go_fd):
        os.set_inheritable(fd, False)
    with os.fdopen(cfg_fd, "rb") as cfg_file:
        plan = json.loads(cfg_file.read())

    stage = "setup"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # If the supervisor dies, the agent's main process dies with it.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != plan["supervisor_pid"]:
            os._exit(125)  # the supervisor died before the line above took effect
        for name, value in plan.get("rlimits", {}).items():
            limit = getattr(resource, name)
            resource.setrlimit(limit, (value, value))
        if plan.get("cpus"):
            os.sched_setaffinity(0, plan["cpus"])
        os.chdir(plan["cwd"])

        stage = "landlock"
        if plan.get("landlock") is not None:
            from agentsup import _landlock, floor

            spec = plan["landlock"]
            _landlock.apply_floor(
                floor.FloorPlan(
                    abi=spec["abi"],
                    handled_fs=spec["handled_fs"],
                    handled_net=spec["handled_net"],
                    scoped=spec["scoped"],
                    fs_rules=tuple((path, mask) for path, mask in spec["fs_rules"]),
                    net_rules=tuple((port, mask) for port, mask in spec["net_rules"]),
                )
            )

        stage = "seccomp"
        from agentsup import _seccomp

        listener = _seccomp.load_filter(plan["notify"], plan["enosys"])
    except Exception as exc:
        _fail(status_fd, stage, exc)

    os.write(status_fd, f"L{listener}\n".encode())
    if os.read(go_fd, 1) != b"G":
        os._exit(125)
    os.close(listener)
    os.close(go_fd)
    try:
        os.execve(plan["executable"], plan["argv"], plan["env"])
    except OSError as exc:
        os.write(status_fd, f"E{exc.errno}\n".encode())
        os._exit(127 if exc.errno in (2, 20) else 126)  # ENOENT, ENOTDIR


if __name__ == "__main__":
    main(sys.argv)
