"""Cache entries in the state directory: private, checksummed JSON files.

What start-up computes again and again (the effective policy, the seccomp
program) is kept in `<state dir>/cache` (mode 0700).  An entry is one file,
mode 0600: the SHA-256 of the rest, a newline, then JSON.  JSON, never
pickle: a bad entry cannot run code.  An entry that is missing, short,
corrupt, open to others, not a regular file or not ours reads as
`BadEntry`, and the caller computes the value again.  Writing is best
effort (a private temporary file, then a rename): a read-only state
directory costs only the time.  Each kind of entry keeps its MAX_ENTRIES
newest.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from ..hashing import sha256

CACHE_DIR_NAME = "cache"
MAX_ENTRY_BYTES = 4 << 20  # a policy of 1 MiB at most, and its lookups
MAX_ENTRIES = 64  # per kind: older ones (edited policies, other workspaces) are removed


class BadEntry(ValueError):
    """An entry that is not a well-formed one of ours: treated as missing."""


def digest(*parts: str | bytes) -> str:
    """SHA-256 of the parts, each one delimited, as hex."""
    hashed = sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        hashed.update(len(data).to_bytes(8, "little") + data)
    return hashed.hexdigest()


def _private_dir(path: Path) -> bool:
    """True for a directory of ours that nobody else may enter or write."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def cache_dir(state_dir: Path, create: bool = False) -> Path | None:
    """`<state_dir>/cache` when it is ours and private (made so with `create`), else None."""
    directory = state_dir / CACHE_DIR_NAME
    if create:
        with contextlib.suppress(OSError):
            os.mkdir(directory, 0o700)
    return directory if _private_dir(directory) else None


def read_entry(path: Path) -> Any:
    """The JSON data of the entry at `path`; BadEntry when it is missing or not trustworthy."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BadEntry(f"cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise BadEntry("not a regular file of ours")
        if info.st_mode & 0o077 or info.st_size > MAX_ENTRY_BYTES:
            raise BadEntry("open to others, or too large")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, MAX_ENTRY_BYTES + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ENTRY_BYTES:
                raise BadEntry("too large")
    except OSError as exc:
        raise BadEntry(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    checksum, _, body = b"".join(chunks).partition(b"\n")
    if sha256(body).hexdigest().encode() != checksum:
        raise BadEntry("checksum mismatch")
    try:
        return json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError too
        raise BadEntry(f"not JSON: {exc}") from None


def write_entry(directory: Path, name: str, document: Any) -> None:
    """Write the entry `name` (`<kind>-<key>`) atomically; errors are ignored."""
    body = json.dumps(document, separators=(",", ":")).encode()  # ASCII: \\u escapes
    if len(body) > MAX_ENTRY_BYTES - 65:
        return
    data = sha256(body).hexdigest().encode() + b"\n" + body
    temporary = directory / f".{name}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temporary, directory / name)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        return
    _prune(directory, name.partition("-")[0] + "-")


def _prune(directory: Path, prefix: str) -> None:
    """Keep the MAX_ENTRIES newest entries whose names start with `prefix`."""
    try:
        entries = [entry for entry in os.scandir(directory) if entry.name.startswith(prefix)]
        if len(entries) <= MAX_ENTRIES:
            return
        entries.sort(key=lambda entry: entry.stat(follow_symlinks=False).st_mtime_ns)
    except OSError:
        return
    for entry in entries[: len(entries) - MAX_ENTRIES]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
