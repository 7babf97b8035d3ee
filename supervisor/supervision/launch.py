"""The supervisor's side of starting an agent through the trampoline."""

from __future__ import annotations

import os
import select
from dataclasses import dataclass, field

from ..kernel.proc import pidfd_getfd
from ..policy.floor import FloorPlan
from . import trampoline


class LaunchError(Exception):
    """The agent could not be set up; `run` exits 125."""


@dataclass
class LaunchPlan:
    executable: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    notify: list[str]
    enosys: list[str]
    landlock: FloorPlan | None = None
    rlimits: dict[str, int] = field(default_factory=dict)


@dataclass
class Launched:
    pid: int
    pidfd: int
    listener: int
    status_fd: int  # EOF when the exec succeeded, `E<errno>` when it failed
    go_fd: int

    def release(self) -> None:
        """Let the trampoline exec the agent.  The supervisor must be answering by now."""
        os.write(self.go_fd, b"G")
        os.close(self.go_fd)
        self.go_fd = -1


def start(plan: LaunchPlan, timeout: float = 30.0) -> Launched:
    """Fork the trampoline and take over its seccomp listener.  It has not exec'd yet.

    The caller must be single-threaded: the child runs Python until its exec.
    """
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    supervisor_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(status_r)
        os.close(go_w)
        trampoline.become_agent(
            supervisor_pid=supervisor_pid,
            status_fd=status_w,
            go_fd=go_r,
            executable=plan.executable,
            argv=plan.argv,
            env=plan.env,
            cwd=plan.cwd,
            notify=plan.notify,
            enosys=plan.enosys,
            landlock=plan.landlock,
            rlimits=plan.rlimits,
        )
    os.close(status_w)
    os.close(go_r)
    pidfd = os.pidfd_open(pid)
    line = _read_line(status_r, timeout)
    if not line.startswith("L"):
        os.close(status_r)
        os.close(go_w)
        os.close(pidfd)
        os.waitpid(pid, 0)
        detail = line[1:].split(" ", 1)[-1].strip() if line else "trampoline exited"
        raise LaunchError(f"cannot sandbox the agent: {detail}")
    try:
        listener = pidfd_getfd(pidfd, int(line[1:]))
    except OSError as exc:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise LaunchError(f"cannot take the seccomp listener: {exc}") from exc
    return Launched(pid, pidfd, listener, status_r, go_w)


def _read_line(fd: int, timeout: float) -> str:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    data = b""
    while not data.endswith(b"\n"):
        if not poller.poll(int(timeout * 1000)):
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")
