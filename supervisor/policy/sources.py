"""Finding and reading policy files: regular files only, bounded in size.

`--policy` values (DESIGN.md 1.4): a value containing `/` or ending in
`.yaml` is a path; anything else is a name, looked up as `<name>.yaml` in the
policy directory, then among the built-in templates.  Names in `extends`
resolve the same way, and a relative path in `extends` is relative to the
extending file.  A policy in the policy directory may extend the built-in
template it shadows (`strict.yaml` with `extends: [strict]`).

Whatever the value (a device, a FIFO, a directory, a name too long for the
kernel, a NUL byte), the answer is a PolicySource, None (nothing there), or
one PolicyError line, at once: only regular files of at most
MAX_POLICY_BYTES are opened, and never in a way that can block.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .. import policies
from ..paths import untrusted
from .model import PolicyError

MAX_POLICY_BYTES = 1 << 20  # one policy file; the built-in templates are ~15 KB

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def is_path_reference(name_or_path: str) -> bool:
    """True when a `--policy` or `extends` value is a path rather than a name."""
    return "/" in name_or_path or name_or_path.endswith(".yaml")


def builtin_templates() -> dict[str, Path]:
    """The templates shipped in `agentsup.policies`, by name.

    Read from the package's directory (agentsup is installed as files, its
    kernel helper being a compiled extension), not through
    importlib.resources: that import and its own (tempfile, random) cost
    ~2 ms of every `agentsup run`.
    """
    found = {
        entry.name.removesuffix(".yaml"): entry
        for directory in policies.__path__
        for entry in Path(directory).iterdir()
        if entry.name.endswith(".yaml") and entry.is_file()
    }
    return dict(sorted(found.items()))


def builtin_names() -> tuple[str, ...]:
    """Names of the built-in templates, sorted."""
    return tuple(builtin_templates())


class PolicySource(NamedTuple):
    """The text of one policy file and where it came from.

    `key` identifies the file (its real path, or `<builtin>/NAME`) for
    cycle and diamond detection; `path` is how errors name it; `directory`
    anchors relative paths in its `extends` (None for built-ins).
    """

    key: str
    path: str
    directory: Path | None
    text: str


def _reason(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)  # ValueError: "embedded null byte"


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), "not a plain file")


def _check_regular(info: os.stat_result, shown: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise PolicyError(
            shown, 1, 1, f"not a regular file ({_kind(info.st_mode)}); a policy is a YAML file"
        )
    if info.st_size > MAX_POLICY_BYTES:
        limit = f"a policy has at most {MAX_POLICY_BYTES}"
        raise PolicyError(shown, 1, 1, f"too large: {info.st_size} bytes ({limit})")


def _read_bounded(fd: int, shown: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, MAX_POLICY_BYTES + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_POLICY_BYTES:  # it grew after the stat
            raise PolicyError(
                shown, 1, 1, f"too large: over {MAX_POLICY_BYTES} bytes (a policy has at most that)"
            )
    return b"".join(chunks)


def decode_utf8(data: bytes, shown: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError(shown, line, column, f"not UTF-8 text ({exc.reason})") from None


_owners_checked: contextvars.ContextVar[bool] = contextvars.ContextVar("owners", default=True)


@contextlib.contextmanager
def owners_unchecked() -> Iterator[None]:
    """Read policy files whoever owns them: for `seal`, which validates the
    files it is about to make root's own (its hashes before and after catch
    a change made meanwhile)."""
    token = _owners_checked.set(False)
    try:
        yield
    finally:
        _owners_checked.reset(token)


def read_policy_file(path: Path, shown: str) -> PolicySource:
    """Read the policy file at `path`; raises PolicyError (named `shown`) for anything else.

    The stat comes first, so a device or FIFO is never opened (opening some
    devices acts); the open cannot block, and what was opened is checked again.
    A file someone else could change (theirs, or in a directory they may
    write, on any step of the way) is refused as the locations are
    (`paths.untrusted`): a `--policy` path or an `extends` entry outside the
    sealed directory would otherwise let any local user rewrite the rules in
    effect (red team 25).
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:
        raise PolicyError(shown, 1, 1, f"cannot read policy file: {_reason(exc)}") from None
    # Outside the try: a PolicyError is a ValueError, and wrapping it again
    # printed `FILE:1:1: cannot read policy file: FILE:1:1: too large ...`.
    _check_regular(info, shown)
    reason = untrusted(path) if _owners_checked.get() else None
    if reason is not None:
        raise PolicyError(shown, 1, 1, f"cannot be trusted: {reason}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        raise PolicyError(shown, 1, 1, f"cannot read policy file: {_reason(exc)}") from None
    try:
        _check_regular(os.fstat(fd), shown)
        data = _read_bounded(fd, shown)
    except OSError as exc:
        raise PolicyError(shown, 1, 1, f"cannot read policy file: {_reason(exc)}") from None
    finally:
        os.close(fd)
    return PolicySource(os.path.realpath(path), shown, path.parent, decode_utf8(data, shown))


def builtin_source(name: str) -> PolicySource | None:
    """The built-in template `name`, or None."""
    entry = builtin_templates().get(name)
    if entry is None:
        return None
    return PolicySource(f"<builtin>/{name}", str(entry), None, entry.read_text(encoding="utf-8"))


def _present(path: Path) -> bool:
    """Whether anything is at `path`; PolicyError for a path the system refuses to look up."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, ELOOP, EACCES, a NUL byte
        raise PolicyError(str(path), 1, 1, f"cannot read policy file: {_reason(exc)}") from None
    return True


def find_policy(
    reference: str,
    policy_dir: Path,
    relative_to: Path | None = None,
    from_key: str | None = None,
) -> PolicySource | None:
    """Find a `--policy`/`extends` value: a path, or `<name>.yaml` in `policy_dir`, or a built-in.

    None when there is no such policy; PolicyError when the path cannot be
    used.  `relative_to` anchors relative paths (the extending file's
    directory).  `from_key` is the extending file: a file in the policy dir
    that extends its own name gets the built-in template it shadows.
    """
    if is_path_reference(reference):
        path = Path(reference)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        return read_policy_file(path, str(path)) if _present(path) else None
    candidate = policy_dir / f"{reference}.yaml"
    try:
        local = _present(candidate) and os.path.realpath(candidate) != from_key
    except PolicyError:
        local = False  # a name the system cannot look up is no local policy
    if local:
        return read_policy_file(candidate, str(candidate))
    return builtin_source(reference)
