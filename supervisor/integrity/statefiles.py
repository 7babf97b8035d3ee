"""Small durable-file helpers shared by the state-directory writers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomically(path: Path, data: str, mode: int) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, fsynced.

    The file is written beside its target, fsynced, renamed over it, and the
    directory is fsynced so the rename itself survives a crash.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data.encode())
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
