"""Agent ids: what one may look like, and the claim that gives it to one supervisor.

An id names the agent in `ps`, in the control requests, in the audit log, in
its cgroup and in the daemon's log file name, so it is a short name without
`/` or spaces: a letter or digit, then up to 63 letters, digits, `.`, `_`,
`-`, `@` or `+`.

While a supervisor runs an agent it holds an exclusive `flock` on
`agent-<id>.lock` in the runtime directory (the file holds its pid).  A
second supervisor asked for the same id fails to take the lock and refuses
(`run` exits 125), so every id reaches exactly one agent.  A lock dies with
its process, so a crashed supervisor never leaves an id taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

AGENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_LOCK_PREFIX = "agent-"
_LOCK_SUFFIX = ".lock"


class BadAgentId(ValueError):
    """The message says what an id may look like."""


class AgentIdTaken(Exception):
    def __init__(self, agent_id: str, holder: int | None) -> None:
        who = f"supervisor pid {holder}" if holder else "another supervisor"
        super().__init__(
            f"agent id '{agent_id}' is already in use by {who} (see agentsup ps); "
            "give this agent another --id"
        )
        self.agent_id = agent_id
        self.holder = holder


def check_agent_id(agent_id: str) -> str:
    """`agent_id` itself, or BadAgentId saying why it cannot be one."""
    if not AGENT_ID_PATTERN.fullmatch(agent_id):
        raise BadAgentId(
            f"invalid agent id {agent_id!r}: use 1-64 letters, digits, '.', '_', '-', '@' "
            "or '+', starting with a letter or digit"
        )
    return agent_id


def lock_path(runtime_dir: Path, agent_id: str) -> Path:
    return runtime_dir / f"{_LOCK_PREFIX}{check_agent_id(agent_id)}{_LOCK_SUFFIX}"


class AgentIdClaim:
    """The held lock of one id; `release()` (or the process's end) gives it back."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd < 0:
            return
        # Unlinked while still locked: a claimer that opened the old file
        # notices it is gone and opens a new one (see claim_agent_id).
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = -1


def _holder(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None


def claim_agent_id(runtime_dir: Path, agent_id: str) -> AgentIdClaim:
    """Take `agent_id` for this process; AgentIdTaken when a live supervisor has it."""
    path = lock_path(runtime_dir, agent_id)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise AgentIdTaken(agent_id, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is None or (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
            os.close(fd)  # its last holder released it between our open and our lock
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return AgentIdClaim(path, fd)
