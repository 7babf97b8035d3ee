"""Small durable-file helpers shared by the state-directory writers."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from ..kernel import proc

_AT_FDCWD = -100


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


def open_output_directory(path: str) -> int:
    """The directory of the output file `path`, opened (O_PATH) with no symlink
    anywhere on the way: an agent that may write a directory on it could have
    made it a symlink to one it may not write (red team 34).  Raises OSError."""
    parent = os.path.dirname(os.path.abspath(path))
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    through_link = OSError(errno.ELOOP, f"{parent} is reached through a symlink (not followed)")
    try:
        return proc.openat2(_AT_FDCWD, os.fsencode(parent), flags, 0, proc.RESOLVE_NO_SYMLINKS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise through_link from None
        if exc.errno != errno.ENOSYS:
            raise
    if os.path.realpath(parent) != parent:  # no openat2 (Linux before 5.6)
        raise through_link
    return os.open(parent, flags | os.O_NOFOLLOW)


def write_output(directory: int, name: str, data: str) -> None:
    """Write `data` to the file `name` in `directory` (an fd): an operator's
    output, in a place an agent may have written to.  A symlink at `name`
    is not followed (ELOOP), and only a new file or a regular one with no
    other name is written: agentsup writes as root, and must not write
    through a name the agent chose where it could not write itself (red
    team 33: a status file turned into a symlink to the audit log).
    Raises OSError; what was there is left as it was."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o644, dir_fd=directory)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "a symlink is at that name (not followed)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OSError(errno.EINVAL, "not a regular file with one name")
        os.ftruncate(fd, 0)
        view = memoryview(data.encode())
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
