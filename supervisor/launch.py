"""The supervisor's side of starting an agent through the trampoline."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from dataclasses import dataclass, field

from agentsup._proc import pidfd_getfd


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
    landlock: dict[str, object] | None = None
    rlimits: dict[str, int] = field(default_factory=dict)
    cpus: list[int] | None = None


@dataclass
class Launched:
    process: subprocess.Popen[bytes]
    pidfd: int
    listener: int
    status_fd: int  # EOF when the exec succeeded, `E<errno>` when it failed
    go_fd: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """Let the trampoline exec the agent.  The supervisor must be answering by now."""
        os.write(self.go_fd, b"G")
        os.close(self.go_fd)
        self.go_fd = -1


def start(plan: LaunchPlan, timeout: float = 30.0) -> Launched:
    """Start the trampoline and take over its seccomp listener.  It has not exec'd yet."""
    cfg_r, cfg_w = os.pipe()
    status_r, status_w = os.pipe()
    go_r, go_w = os.pipe()
    for fd in (cfg_w, status_r, go_w):
        os.set_inheritable(fd, False)
    payload = dict(plan.__dict__, supervisor_pid=os.getpid())
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-m",
                "agentsup.trampoline",
                str(cfg_r),
                str(status_w),
                str(go_r),
            ],
            pass_fds=(cfg_r, status_w, go_r),
            cwd="/",
        )
    except OSError as exc:
        for fd in (cfg_r, cfg_w, status_r, status_w, go_r, go_w):
            os.close(fd)
        raise LaunchError(f"cannot start the trampoline: {exc}") from exc
    for fd in (cfg_r, status_w, go_r):
        os.close(fd)
    with os.fdopen(cfg_w, "wb") as cfg:
        cfg.write(json.dumps(payload).encode())
    pidfd = os.pidfd_open(process.pid)
    line = _read_line(status_r, timeout)
    if not line.startswith("L"):
        os.close(status_r)
        os.close(go_w)
        os.close(pidfd)
        process.wait()
        detail = line[1:].split(" ", 1)[-1].strip() if line else "trampoline exited"
        raise LaunchError(f"cannot sandbox the agent: {detail}")
    try:
        listener = pidfd_getfd(pidfd, int(line[1:]))
    except OSError as exc:
        process.kill()
        process.wait()
        raise LaunchError(f"cannot take the seccomp listener: {exc}") from exc
    return Launched(process, pidfd, listener, status_r, go_w)


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
