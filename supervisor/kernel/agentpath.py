"""Resolving a name as the agent's own process would, from inside the broker.

The broker opens what the agent names, with the agent's rights, from the
agent's cwd, dirfd or root.  One part of a resolution the kernel does for
the caller, not for the agent: `/proc/self` and `/proc/thread-self` are the
broker's, and so are the magic links beneath them (`cwd`, `root`, `exe`,
`fd/N`).  A symlink the agent made to one of those (`log -> /dev/stdout`,
`here -> /proc/self/cwd`) would open the broker's file.

So the broker resolves with RESOLVE_NO_MAGICLINKS; when that fails with
ELOOP, `open_as_agent` walks the name here, a component at a time:
`/proc/self` and `/proc/thread-self` stand for the agent's own entries, a
magic link beneath an agent's entry is followed by the kernel (for the
broker's rights, which are the agent's), and the broker's own entry is
never entered.  Everything else is what the kernel does: symlinks followed
(at most MAX_SYMLINKS), `..` from the directory reached, mounts crossed.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_SYMLINKS = 40  # the kernel's own limit (ELOOP past it)
_DIRECTORY = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_LOOK = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def open_as_agent(
    anchor: int,
    raw: bytes,
    how: int,
    own_self: bytes,
    own_thread: bytes,
    *,
    broker: int | None = None,
) -> tuple[int, bool]:
    """An fd opened with `how` for what `raw` names to the agent, and whether
    it was reached through the agent's own `fd/N` (an object it holds).

    `anchor` is where a relative name starts (an fd; ignored for an
    absolute name, which starts at the root).  `own_self` and `own_thread`
    are what `self` and `thread-self` mean in /proc for the agent's thread,
    as the broker's PID namespace numbers it (b"12", b"12/task/13").
    `broker` is the PID whose /proc entry is never entered (this process's).
    Raises OSError as the kernel would.
    """
    proc = os.stat(b"/proc")
    proc_root = (proc.st_dev, proc.st_ino)
    mine = b"/proc/%d" % (os.getpid() if broker is None else broker)
    held = (b"/proc/" + own_self + b"/fd", b"/proc/" + own_thread + b"/fd")
    pending = _components(raw)
    directory = _names_a_directory(raw)
    current = os.open(b"/" if raw.startswith(b"/") else b".", _DIRECTORY, dir_fd=anchor)
    links = 0
    try:
        while pending:
            name = pending.pop()
            last = not pending
            if name == b"..":
                current = _step(current, os.open(b"..", _DIRECTORY, dir_fd=current))
                continue
            here = os.fstat(current)
            if (here.st_dev, here.st_ino) == proc_root and name in (b"self", b"thread-self"):
                pending.extend(_components(own_self if name == b"self" else own_thread))
                continue
            found = os.open(name, _LOOK, dir_fd=current)
            kind = os.fstat(found).st_mode
            # A name that must be a directory ("x/", "x/.") follows its last link.
            follow = not (last and how & os.O_NOFOLLOW and not directory)
            if not stat.S_ISLNK(kind) or not follow:
                os.close(found)
                if last:  # (O_NOFOLLOW: a symlink swapped in since is refused, not followed)
                    flags = how | os.O_NOFOLLOW | (os.O_DIRECTORY if directory else 0)
                    return os.open(name, flags, dir_fd=current), False
                if not stat.S_ISDIR(kind):
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                current = _step(current, os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=current))
                continue
            os.close(found)
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
            text = os.readlink(name, dir_fd=current)
            if here.st_dev == proc.st_dev and not _plain_link(text):
                # A magic link (an agent's cwd, root, exe or fd): the kernel follows it.
                where = os.readlink(b"/proc/self/fd/%d" % current)
                if where == mine or where.startswith(mine + b"/"):
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES))
                target = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=current)
                if last:
                    try:
                        if directory and not stat.S_ISDIR(os.fstat(target).st_mode):
                            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                        # (Followed on purpose: reopened through our own fd's link.)
                        reopen = how & ~os.O_NOFOLLOW
                        return os.open(b"/proc/self/fd/%d" % target, reopen), where in held
                    finally:
                        os.close(target)
                current = _step(current, target)
                continue
            if text.startswith(b"/"):
                current = _step(current, os.open(b"/", _DIRECTORY))
            pending.extend(_components(text))
            if last and _names_a_directory(text):
                directory = True
        # Only "/", ".", or a name ending in "..": the directory reached.
        return os.open(b".", how | os.O_DIRECTORY, dir_fd=current), False
    finally:
        os.close(current)


def _components(path: bytes) -> list[bytes]:
    """The components of `path`, last first (a stack), without empty and "." ones."""
    return [part for part in reversed(path.split(b"/")) if part and part != b"."]


def _names_a_directory(path: bytes) -> bool:
    """A name ending in "/" or "/." (or "."): what it reaches must be a directory."""
    return path.endswith((b"/", b"/.")) or path == b"."


def _plain_link(text: bytes) -> bool:
    """A symlink in /proc that is text (`mounts -> self/mounts`), not a magic link."""
    return not text.startswith(b"/") and b":" not in text


def _step(current: int, following: int) -> int:
    os.close(current)
    return following
