"""Where a supervisor's sockets live, and binding them.

Kept light (no import beyond the standard library's socket layer): `agentsup
run` binds its control socket first, so an unusable runtime directory is the
first thing it reports, and its agent's hook socket before the fork; it
serves them (`channel.ControlServer`, `hookserver.HookServer`) only while
the agent's trampoline sets up.  Connections made in between wait in the
listen backlog.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

SOCKET_PREFIX = "sup-"
SOCKET_SUFFIX = ".sock"
_BACKLOG = 16


class RuntimeDirError(OSError):
    """The runtime directory cannot hold this supervisor's control socket."""

    def __init__(self, runtime_dir: Path, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(
            cause.errno,
            f"runtime directory {runtime_dir} is unusable: {reason} "
            "(fix it, or point AGENTSUP_RUNTIME_DIR at a writable directory)",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def socket_path(runtime_dir: Path, pid: int) -> Path:
    return runtime_dir / f"{SOCKET_PREFIX}{pid}{SOCKET_SUFFIX}"


def bind_control_socket(runtime_dir: Path, owner_uid: int) -> socket.socket:
    """This process's listening control socket (non-blocking), or RuntimeDirError.

    The socket is 0600 (its owner's, when root runs for another user) and
    the directory 0755: `ps` must list it, and each server checks SO_PEERCRED.
    """
    path = socket_path(runtime_dir, os.getpid())
    try:
        runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by an earlier process with our pid
    except OSError as exc:
        raise RuntimeDirError(runtime_dir, exc) from exc
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        if os.geteuid() == 0 and owner_uid != 0:
            os.chown(path, owner_uid, -1)
        listener.listen(_BACKLOG)
        listener.setblocking(False)
    except BaseException as exc:
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(exc, OSError):
            raise RuntimeDirError(runtime_dir, exc) from exc
        raise
    return listener


def listen_unix(path: Path, backlog: int = 64) -> socket.socket:
    """A non-blocking listening socket bound at `path`, where a stale socket may lie.

    Only a socket is removed first: any other file there makes the bind fail.
    """
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(os.fspath(path))
        listener.listen(backlog)
        listener.setblocking(False)
    except BaseException:
        listener.close()
        raise
    return listener


def close_listener(listener: socket.socket, path: Path) -> None:
    """Close a listening socket made here, and remove its name `path`."""
    if listener.fileno() >= 0:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
