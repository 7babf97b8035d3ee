"""The trampoline: the forked child that becomes the agent.

The supervisor is single-threaded when it launches an agent, so it forks
directly (no second Python start-up, no preexec_fn in a threaded parent).
In order, the child:

1. dies with the supervisor (PR_SET_PDEATHSIG), resets signal dispositions
   and closes every fd but stdio and its two pipes;
2. sets rlimits and moves into the workspace;
3. applies the Landlock floor;
4. installs the seccomp filter with a user-notification listener;
5. hands the listener to the supervisor: it writes the fd number to STATUS
   and the supervisor takes a copy with pidfd_getfd, so no trapped syscall
   is needed before the supervisor listens;
6. waits for the supervisor's go byte, closes its copy, and execs the agent
   with the scrubbed environment.  That execve is the first trapped syscall.

Failures before the exec are written to STATUS as `F<errno> <stage>: <text>`
(the supervisor exits 125); a failed exec as `E<errno>`.  STATUS is
close-on-exec, so a successful exec shows as EOF.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from collections.abc import Mapping, Sequence
from typing import NoReturn

_PR_SET_PDEATHSIG = 1


def _fail(status_fd: int, stage: str, exc: BaseException) -> NoReturn:
    err = getattr(exc, "errno", None) or 1
    os.write(status_fd, f"F{err} {stage}: {exc}\n".encode())
    os._exit(125)


def become_agent(
    *,
    supervisor_pid: int,
    status_fd: int,
    go_fd: int,
    executable: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    notify: Sequence[str],
    enosys: Sequence[str],
    landlock: object | None,
    rlimits: Mapping[str, int],
) -> NoReturn:
    """Runs in the forked child; never returns."""
    stage = "setup"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != supervisor_pid:
            os._exit(125)  # the supervisor died before the line above took effect
        signal.set_wakeup_fd(-1)
        for signum in (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGHUP,
            signal.SIGCHLD,
            signal.SIGPIPE,
        ):
            signal.signal(signum, signal.SIG_DFL)
        low, high = sorted((status_fd, go_fd))
        # Every fd of the supervisor stays behind: stdio and the two pipes only.
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, 1 << 20)
        for name, value in rlimits.items():
            limit = getattr(resource, name)
            resource.setrlimit(limit, (value, value))
        os.chdir(cwd)

        stage = "landlock"
        if landlock is not None:
            from ..kernel import landlock as _landlock

            _landlock.apply_floor(landlock)  # type: ignore[arg-type]

        stage = "seccomp"
        from ..kernel import seccomp as _seccomp

        listener = _seccomp.load_filter(notify, enosys)
    except BaseException as exc:
        _fail(status_fd, stage, exc)

    os.write(status_fd, f"L{listener}\n".encode())
    if os.read(go_fd, 1) != b"G":
        os._exit(125)
    os.close(listener)
    os.close(go_fd)
    try:
        os.execve(executable, list(argv), dict(env))
    except OSError as exc:
        os.write(status_fd, f"E{exc.errno}\n".encode())
        os._exit(127 if exc.errno in (2, 20) else 126)  # ENOENT, ENOTDIR
    os._exit(126)
