"""The sealed policy directory (DESIGN.md 1.4): seal, unseal, and the tamper check.

Sealing makes the policy directory read-only: every directory and file is
owned by root (by the caller when not root), directories are mode 0555 and
files 0444, and `chattr +i` is set where the filesystem supports it.  A
manifest in the state directory (`Locations.policy_manifest`, mode 0600)
records the SHA-256 of every regular file, the directories, the owner, which
entries got the immutable flag, and a `generation` that grows with every
seal and unseal.  It is HMAC-SHA256'd with the audit key, which an agent can
never read, so an agent cannot forge it.

`check_sealed` compares the directory with the manifest.  It is cheap (a
stat, one ioctl and a hash per file) because the watcher runs it on a timer:
`chattr -i` raises no inotify event (DESIGN.md 3).  A check that fails
because this process is out of fds or memory says nothing about the
directory: its state is "unavailable" (refused as tampered, but the watcher
keeps what it knew and checks again; an agent that used up the supervisor's
fds once made it cry tamper).

Ordering against a running watcher.  `unseal` writes its "unsealed" manifest
before it touches the directory, and `seal` first writes an "unsealed"
manifest, then locks the directory, then writes the "sealed" one, so a
watcher never sees a legitimate change under a sealed manifest.  A check that
raced with such a write re-reads the manifest and checks again.

The tamper marker (`state_dir/policy.tampered`).  The watcher writes it when
it detects tampering.  It stays in force until a person seals again (a
sealed manifest newer than the marker), even if someone restores the files
or the immutable flag, so `agentsup run` keeps refusing new agents just as
the running ones stay stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import stat
import struct
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple, Protocol, TypeVar

from ..hashing import compare_digest, sha256
from ..paths import Locations
from .audit import (
    AuditKeyError,
    MacKey,
    canonical_json,
    format_ts,
    load_key,
    load_or_create_key,
)
from .statefiles import write_atomically

# Checking a seal (every `agentsup run`) needs neither the policy loader nor
# TOTP: sealing and unsealing import them.

MANIFEST_VERSION = 1
SEALED_DIR_MODE = 0o555
SEALED_FILE_MODE = 0o444
UNSEALED_DIR_MODE = 0o755
UNSEALED_FILE_MODE = 0o644
TAMPER_MARKER_NAME = "policy.tampered"
_LOCK_NAME = "policy.lock"
POLICY_SUFFIXES = (".yaml", ".yml")
# A check that raced with a seal/unseal re-reads the manifest this many times.
_RACE_RETRIES = 3

_T = TypeVar("_T")
ManifestState = Literal["sealed", "unsealed"]
StatusState = Literal["ok", "unsealed", "never_sealed", "tampered", "unavailable"]
# Errors of this process, not of the directory: out of fds or memory.
_SHORT_OF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})


class SealError(Exception):
    """Seal or unseal cannot go ahead; the message says why."""


class TamperDetected(Exception):
    """The manifest (or the marker) shows the policy directory cannot be trusted."""


def _shortage(exc: BaseException) -> int:
    """EMFILE, ENFILE or ENOMEM when `exc`, or an error it was raised from or
    while handling, is one of them (a MemoryError is ENOMEM); else 0."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return errno.ENOMEM
        if isinstance(current, OSError) and current.errno in _SHORT_OF:
            return current.errno
        current = current.__cause__ or current.__context__
    return 0


def short_of_resources(exc: BaseException) -> bool:
    """Whether `exc` is this process out of fds or memory, not the files: an
    EMFILE or ENFILE counts only while we cannot open anything either (a FUSE
    server under the directory can answer any errno).  Nothing ran between
    the failure and this probe, so the supervisor held as many fds then."""
    shortage = _shortage(exc)
    if shortage != errno.EMFILE and shortage != errno.ENFILE:
        return shortage == errno.ENOMEM
    try:
        fd = os.open("/", os.O_PATH | os.O_CLOEXEC)
    except OSError as probe:
        return probe.errno in (errno.EMFILE, errno.ENFILE)
    os.close(fd)
    return False


class AuditSink(Protocol):
    def append(self, record: Mapping[str, object]) -> object: ...


def tamper_marker_path(locations: Locations) -> Path:
    return locations.state_dir / TAMPER_MARKER_NAME


# --------------------------------------------------------------- the manifest


class Manifest(NamedTuple):
    """What a seal (or unseal) recorded.  `sealed_at`/`sealed_by_uid` name the last
    seal *or unseal*; `immutable` lists the entries that got `chattr +i`."""

    state: ManifestState
    directory: str
    files: dict[str, str]
    dirs: tuple[str, ...]
    immutable: tuple[str, ...]
    owner_uid: int
    generation: int
    sealed_at: str
    sealed_by_uid: int
    mac: str = ""

    def body(self) -> dict[str, object]:
        """Everything the mac covers."""
        return {
            "version": MANIFEST_VERSION,
            "state": self.state,
            "directory": self.directory,
            "files": dict(sorted(self.files.items())),
            "dirs": sorted(self.dirs),
            "immutable": sorted(self.immutable),
            "owner_uid": self.owner_uid,
            "generation": self.generation,
            "sealed_at": self.sealed_at,
            "sealed_by_uid": self.sealed_by_uid,
        }

    def compute_mac(self, key: bytes) -> str:
        return MacKey(key).hexdigest(canonical_json(self.body()))  # HMAC-SHA256

    def signed(self, key: bytes) -> Manifest:
        return self._replace(mac=self.compute_mac(key))

    def to_json(self) -> str:
        return json.dumps({**self.body(), "mac": self.mac}, sort_keys=True, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, key: bytes) -> Manifest:
        """Parse and authenticate; raises TamperDetected on anything wrong."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise TamperDetected(f"manifest is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise TamperDetected("manifest is not a JSON object")
        try:
            manifest = cls(
                state=_one_of(raw["state"], ("sealed", "unsealed")),
                directory=_typed(raw["directory"], str),
                files={
                    _typed(k, str): _typed(v, str) for k, v in _typed(raw["files"], dict).items()
                },
                dirs=tuple(_typed(d, str) for d in _typed(raw["dirs"], list)),
                immutable=tuple(_typed(p, str) for p in _typed(raw["immutable"], list)),
                owner_uid=_typed(raw["owner_uid"], int),
                generation=_typed(raw["generation"], int),
                sealed_at=_typed(raw["sealed_at"], str),
                sealed_by_uid=_typed(raw["sealed_by_uid"], int),
                mac=_typed(raw["mac"], str),
            )
            if raw.get("version") != MANIFEST_VERSION:
                raise ValueError(f"unknown manifest version {raw.get('version')!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise TamperDetected(f"manifest is malformed: {exc}") from None
        if not compare_digest(manifest.compute_mac(key), manifest.mac):
            raise TamperDetected("manifest mac is bad: edited, or not made with this audit key")
        return manifest


def _typed(value: object, kind: type[_T]) -> _T:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}, found {value!r}")
    return value


def _one_of(value: object, allowed: tuple[ManifestState, ...]) -> ManifestState:
    for option in allowed:
        if value == option:
            return option
    raise ValueError(f"state must be one of {', '.join(allowed)}, found {value!r}")


def read_manifest(locations: Locations) -> Manifest | None:
    """The manifest, authenticated; None when the directory was never sealed.

    Raises TamperDetected when it exists but is unreadable, malformed, has a
    bad mac, or the audit key needed to check it is gone.
    """
    path = locations.policy_manifest
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TamperDetected(f"cannot read the manifest {path}: {exc}") from None
    try:
        key = load_key(locations.audit_key)
    except AuditKeyError as exc:  # without the key, trust nothing
        raise TamperDetected(f"cannot check the manifest {path}: {exc}") from None
    return Manifest.from_json(text, key)


# ------------------------------------------------------ scanning the directory


class Entry(NamedTuple):
    """One directory entry as found on disk (`sha256` only for regular files)."""

    kind: Literal["file", "dir", "symlink", "other"]
    mode: int
    uid: int
    immutable: bool | None  # None: the filesystem cannot tell
    sha256: str | None = None


class Snapshot(NamedTuple):
    """The policy directory right now, by relative name ("." is the directory)."""

    directory: str
    entries: dict[str, Entry]
    missing: bool = False

    @property
    def files(self) -> dict[str, str]:
        return {
            name: entry.sha256
            for name, entry in self.entries.items()
            if entry.kind == "file" and entry.sha256 is not None
        }


def scan_directory(path: Path) -> Snapshot:
    """Stat, flag and hash everything under `path`, following no symlinks."""
    directory = os.path.realpath(path)
    entries: dict[str, Entry] = {}
    try:
        entries["."] = _scan_dir_entry(directory)
    except FileNotFoundError:
        return Snapshot(directory, {}, missing=True)
    pending = ["."]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(directory, relative)) as listing:
            children = sorted(listing, key=lambda item: item.name)
        for child in children:
            name = child.name if relative == "." else f"{relative}/{child.name}"
            info = child.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                entries[name] = Entry("symlink", stat.S_IMODE(info.st_mode), info.st_uid, None)
            elif stat.S_ISDIR(info.st_mode):
                entries[name] = _scan_dir_entry(child.path)
                pending.append(name)
            elif stat.S_ISREG(info.st_mode):
                entries[name] = _scan_file_entry(child.path)
            else:
                entries[name] = Entry("other", stat.S_IMODE(info.st_mode), info.st_uid, None)
    return Snapshot(directory, entries)


def _scan_dir_entry(path: str) -> Entry:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        return Entry("dir", stat.S_IMODE(info.st_mode), info.st_uid, _is_immutable(fd))
    finally:
        os.close(fd)


def _scan_file_entry(path: str) -> Entry:
    # O_NONBLOCK: a fifo swapped in after the lstat must not hang the loop.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Entry("other", stat.S_IMODE(info.st_mode), info.st_uid, None)
        digest = sha256()
        while chunk := os.read(fd, 1 << 16):
            digest.update(chunk)
        return Entry(
            "file", stat.S_IMODE(info.st_mode), info.st_uid, _is_immutable(fd), digest.hexdigest()
        )
    finally:
        os.close(fd)


def hash_directory(path: Path) -> dict[str, str]:
    """Relative name -> SHA-256 hex of every regular file; raises SealError on a
    symlink or a special file (a sealed directory holds only files and dirs)."""
    snapshot = scan_directory(path)
    if snapshot.missing:
        raise SealError(f"the policy directory {path} does not exist")
    for name, entry in snapshot.entries.items():
        if entry.kind == "symlink":
            raise SealError(f"{_shown(snapshot.directory, name)}: symlinks are not allowed")
        if entry.kind == "other":
            raise SealError(f"{_shown(snapshot.directory, name)}: not a regular file or directory")
    return snapshot.files


def _shown(directory: str, name: str) -> str:
    return directory if name == "." else f"{directory}/{name}"


# --------------------------------------------------------- comparing (pure)


def compare(manifest: Manifest, snapshot: Snapshot) -> list[str]:
    """Why `snapshot` is not what the sealed `manifest` describes; [] when it is."""
    where = manifest.directory
    if snapshot.directory != manifest.directory:
        return [f"manifest is for {manifest.directory}, not {snapshot.directory}"]
    if snapshot.missing:
        return [f"{where}: policy directory removed"]
    reasons: list[str] = []
    expected_dirs = set(manifest.dirs)
    immutable = set(manifest.immutable)
    for name, entry in sorted(snapshot.entries.items()):
        shown = _shown(where, name)
        if entry.kind == "symlink":
            reasons.append(f"{shown}: symlink added")
            continue
        if entry.kind == "other":
            reasons.append(f"{shown}: special file added")
            continue
        if entry.kind == "dir" and name not in expected_dirs:
            reasons.append(f"{shown}: directory added")
            continue
        if entry.kind == "file" and name not in manifest.files:
            reasons.append(f"{shown}: file added")
            continue
        if entry.kind == "file" and entry.sha256 != manifest.files[name]:
            reasons.append(f"{shown}: modified (SHA-256 differs from the sealed manifest)")
        want_mode = SEALED_DIR_MODE if entry.kind == "dir" else SEALED_FILE_MODE
        if entry.mode != want_mode:
            reasons.append(f"{shown}: mode {entry.mode:04o}, sealed as {want_mode:04o}")
        if entry.uid != manifest.owner_uid:
            reasons.append(f"{shown}: owner uid {entry.uid}, sealed as {manifest.owner_uid}")
        if name in immutable and entry.immutable is not True:
            reasons.append(f"{shown}: immutable flag removed (chattr -i)")
    for name in sorted(manifest.files.keys() - snapshot.entries.keys()):
        reasons.append(f"{_shown(where, name)}: file removed")
    for name in sorted(expected_dirs - snapshot.entries.keys()):
        reasons.append(f"{_shown(where, name)}: directory removed")
    for name, entry in snapshot.entries.items():
        if entry.kind == "dir" and name in manifest.files:
            reasons.append(f"{_shown(where, name)}: file replaced by a directory")
        if entry.kind == "file" and name in expected_dirs:
            reasons.append(f"{_shown(where, name)}: directory replaced by a file")
    return reasons


# ----------------------------------------------------------------- the status


class SealStatus(NamedTuple):
    """The outcome of `check_sealed`.

    `manifest` is the authenticated manifest, when there is one; `files` the
    directory's current hashes (empty when it could not be read).
    """

    state: StatusState
    reasons: list[str]
    manifest: Manifest | None = None
    files: Mapping[str, str] = MappingProxyType({})
    directory: str = ""

    @property
    def tampered(self) -> bool:
        """Not to be trusted: tampered, or not checked (fail closed)."""
        return self.state in ("tampered", "unavailable")

    def describe(self) -> str:
        """One paragraph for `verify`, and for `run` when it refuses to start."""
        if self.state == "ok":
            assert self.manifest is not None
            return (
                f"{self.directory}: sealed and intact ({len(self.files)} "
                f"file{'' if len(self.files) == 1 else 's'}, "
                f"sealed {self.manifest.sealed_at} by uid {self.manifest.sealed_by_uid})"
            )
        if self.state == "unsealed":
            return f"{self.directory}: unsealed for editing (not protected); seal it when done"
        if self.state == "never_sealed":
            return f"{self.directory}: never sealed (not protected)"
        if self.state == "unavailable":
            return (
                f"{self.directory}: the sealed policy directory cannot be checked now: "
                + "; ".join(self.reasons)
                + "; try again"
            )
        return (
            f"{self.directory}: policy directory tampered: "
            + "; ".join(self.reasons)
            + "; re-seal with 'agentsup policy seal --code TOTP'"
        )


def _read_marker(locations: Locations) -> tuple[int, list[str]] | None:
    """The tamper marker's generation and reasons; raises TamperDetected if unreadable."""
    path = tamper_marker_path(locations)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return int(raw["generation"]), [str(reason) for reason in raw["reasons"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TamperDetected(f"tamper marker {path} is unreadable: {exc}") from None


def write_tamper_marker(locations: Locations, generation: int, reasons: list[str]) -> None:
    """Record a tamper episode durably, so new runs stay refused until a seal."""
    data = json.dumps(
        {"generation": generation, "reasons": reasons, "detected_at": format_ts(time.time())}
    )
    _write_atomic(tamper_marker_path(locations), data + "\n", 0o600)


def _unavailable(directory: str, exc: BaseException) -> SealStatus:
    why = f"out of fds or memory ({os.strerror(_shortage(exc) or errno.ENOMEM)})"
    return SealStatus("unavailable", [why], directory=directory)


def check_sealed(locations: Locations) -> SealStatus:
    """Compare the policy directory with its manifest.  Never raises for tampering;
    a state it cannot read is reported as tampered (fail closed), unless this
    process could not read it for want of fds or memory: "unavailable"."""
    directory = os.path.realpath(locations.policy_dir)
    try:
        return _check_sealed(locations, directory)
    except MemoryError as exc:
        return _unavailable(directory, exc)


def _check_sealed(locations: Locations, directory: str) -> SealStatus:
    status = SealStatus("tampered", ["the manifest kept changing while it was checked"])
    for _ in range(_RACE_RETRIES):
        try:
            manifest = read_manifest(locations)
            marker = _read_marker(locations)
        except TamperDetected as exc:
            if short_of_resources(exc):
                return _unavailable(directory, exc)
            return SealStatus("tampered", [str(exc)], directory=directory)
        try:
            snapshot = scan_directory(locations.policy_dir)
        except OSError as exc:
            if short_of_resources(exc):
                return _unavailable(directory, exc)
            reason = f"cannot read the policy directory: {exc}"
            return SealStatus("tampered", [reason], manifest, {}, directory)
        files = snapshot.files
        # Only a seal newer than the marker ends a tamper episode.
        if marker is not None and (
            manifest is None or manifest.state == "unsealed" or marker[0] >= manifest.generation
        ):
            return SealStatus("tampered", marker[1], manifest, files, directory)
        if manifest is None:
            return SealStatus("never_sealed", [], None, files, directory)
        if manifest.state == "unsealed":
            return SealStatus("unsealed", [], manifest, files, directory)
        reasons = compare(manifest, snapshot)
        if not reasons:
            return SealStatus("ok", [], manifest, files, directory)
        status = SealStatus("tampered", reasons, manifest, files, directory)
        # A seal or unseal may have replaced the manifest while we scanned: look again.
        try:
            if read_manifest(locations) == manifest:
                return status
        except TamperDetected as exc:
            if short_of_resources(exc):
                return _unavailable(directory, exc)
            return SealStatus("tampered", [str(exc)], directory=directory)
    return status


# ------------------------------------------------ chattr +i (FS_IOC_*FLAGS)

FS_IMMUTABLE_FL = 0x10
_IOC_WRITE, _IOC_READ = 1, 2  # the generic encoding (x86, arm, riscv)


def _ioc(direction: int, number: int) -> int:
    return (direction << 30) | (ctypes.sizeof(ctypes.c_long) << 16) | (ord("f") << 8) | number


FS_IOC_GETFLAGS = _ioc(_IOC_READ, 1)
FS_IOC_SETFLAGS = _ioc(_IOC_WRITE, 2)
# The filesystem (or, without CAP_LINUX_IMMUTABLE, the caller) cannot do it.
_NO_FLAGS = frozenset({errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS})


def _get_flags(fd: int) -> int | None:
    try:
        # The kernel reads and writes an int, whatever the ioctl's declared size.
        result = fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0))
    except OSError as exc:
        if exc.errno in _NO_FLAGS:
            return None
        raise
    flags: int = struct.unpack("i", result)[0]
    return flags


def _is_immutable(fd: int) -> bool | None:
    flags = _get_flags(fd)
    return None if flags is None else bool(flags & FS_IMMUTABLE_FL)


def _set_immutable_fd(fd: int, immutable: bool) -> bool:
    flags = _get_flags(fd)
    if flags is None:
        return False
    wanted = flags | FS_IMMUTABLE_FL if immutable else flags & ~FS_IMMUTABLE_FL
    if wanted != flags:
        try:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", wanted))
        except OSError as exc:
            # EPERM: no CAP_LINUX_IMMUTABLE (not root, or a container without it).
            if exc.errno in _NO_FLAGS or exc.errno == errno.EPERM:
                return False
            raise
    return True


def set_immutable(path: Path, immutable: bool) -> bool:
    """Set or clear `chattr +i` on `path` (never following a symlink); False when
    the filesystem or the caller's capabilities do not allow it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return _set_immutable_fd(fd, immutable)
    finally:
        os.close(fd)


# ------------------------------------------------------------ seal and unseal


def _walk(directory: Path) -> Iterator[tuple[str, Path, str]]:
    """(relative name, path, kind) for the directory itself and everything under it;
    kind is "dir", "file" or "other" (symlinks and special files), from lstat."""
    yield ".", directory, "dir"
    pending = [directory]
    while pending:
        current = pending.pop()
        with os.scandir(current) as listing:
            children = sorted(listing, key=lambda item: item.name)
        for child in children:
            path = Path(child.path)
            relative = path.relative_to(directory).as_posix()
            if child.is_dir(follow_symlinks=False):
                pending.append(path)
                yield relative, path, "dir"
            elif child.is_file(follow_symlinks=False):
                yield relative, path, "file"
            else:
                yield relative, path, "other"


def validate_policies(directory: Path) -> int:
    """Load every policy file under `directory`; raises PolicyError at the first bad one."""
    from ..policy.loader import load_policy_file
    from ..policy.sources import owners_unchecked

    count = 0
    with owners_unchecked():  # seal makes them root's own next
        for _, path, kind in _walk(directory):
            if kind == "file" and path.suffix in POLICY_SUFFIXES:
                load_policy_file(path, directory)
                count += 1
    return count


def _next_generation(locations: Locations) -> int:
    """Greater than the current manifest's, and than any earlier one's (time based)."""
    previous = 0
    with contextlib.suppress(TamperDetected):
        manifest = read_manifest(locations)
        if manifest is not None:
            previous = manifest.generation
    return max(previous + 1, time.time_ns())


def _write_atomic(path: Path, data: str, mode: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path, data, mode)


def _write_manifest(
    locations: Locations,
    key: bytes,
    state: ManifestState,
    uid: int,
    files: dict[str, str],
    dirs: tuple[str, ...],
    immutable: tuple[str, ...],
) -> Manifest:
    manifest = Manifest(
        state=state,
        directory=os.path.realpath(locations.policy_dir),
        files=files,
        dirs=dirs,
        immutable=immutable,
        owner_uid=os.geteuid(),
        generation=_next_generation(locations),
        sealed_at=format_ts(time.time()),
        sealed_by_uid=uid,
    ).signed(key)
    _write_atomic(locations.policy_manifest, manifest.to_json(), 0o600)
    return manifest


def _dirs(directory: Path) -> tuple[str, ...]:
    return tuple(name for name, _, kind in _walk(directory) if kind == "dir")


def _apply_mode(path: Path, is_dir: bool, *, sealed: bool) -> bool:
    """Owner, mode and +i of one entry, through one O_NOFOLLOW fd (so a symlink
    swapped in cannot redirect the chmod); True when +i was set."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode) != is_dir:
            raise SealError(f"{path} changed type while being sealed or unsealed")
        _set_immutable_fd(fd, False)  # chmod and chown fail on an immutable inode
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        if sealed:
            os.fchmod(fd, SEALED_DIR_MODE if is_dir else SEALED_FILE_MODE)
            return _set_immutable_fd(fd, True)
        os.fchmod(fd, UNSEALED_DIR_MODE if is_dir else UNSEALED_FILE_MODE)
        return False
    finally:
        os.close(fd)


def _set_modes(directory: Path, *, sealed: bool) -> tuple[str, ...]:
    """Owner root (when root), modes and +i for every file and directory; returns the
    entries that got +i.  Symlinks and special files are left alone (never followed)."""
    locked = [
        relative
        for relative, path, kind in _walk(directory)
        if kind != "other" and _apply_mode(path, kind == "dir", sealed=sealed)
    ]
    return tuple(sorted(locked))


def _audit(audit: AuditSink | None, locations: Locations, record: dict[str, object]) -> None:
    base: dict[str, object] = {
        "kind": "policy",
        "layer": "supervisor",
        "target": os.path.realpath(locations.policy_dir),
    }
    base.update(record)
    if audit is not None:
        audit.append(base)
        return
    from .audit import AuditLog

    with AuditLog.open(locations) as own:
        own.append(base)


@contextlib.contextmanager
def _exclusive(locations: Locations) -> Iterator[None]:
    """One seal or unseal at a time on this machine (two people, two valid codes)."""
    locations.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(locations.state_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _verify_code(
    locations: Locations, code: str, uid: int, event: str, audit: AuditSink | None
) -> None:
    from .totp import TotpRefused, TotpVerifier

    try:
        TotpVerifier(locations).verify(code, uid=uid)
    except TotpRefused as exc:
        _audit(
            audit,
            locations,
            {
                "event": event,
                "outcome": "refused",
                "uid": uid,
                "severity": "medium",
                "reason": exc.reason,
            },
        )
        raise


def seal(locations: Locations, code: str, uid: int, *, audit: AuditSink | None = None) -> Manifest:
    """Seal the policy directory with a person's TOTP code.

    Raises TotpRefused (wrong or reused code), PolicyError (a policy file does
    not load; nothing is changed), SealError (symlinks, special files, a
    missing directory, or a change while sealing) and OSError.  Audits a
    `policy` record; `audit` defaults to the log in `locations`.
    """
    with _exclusive(locations):
        return _seal_locked(locations, code, uid, audit)


def _seal_locked(locations: Locations, code: str, uid: int, audit: AuditSink | None) -> Manifest:
    directory = Path(locations.policy_dir)
    before = hash_directory(directory)  # refuses symlinks and special files up front
    validate_policies(directory)
    key = load_or_create_key(locations.audit_key)
    _verify_code(locations, code, uid, "seal", audit)
    # "unsealed" first: a watcher must not mistake our own chattr/chmod for tampering.
    _write_manifest(locations, key, "unsealed", uid, before, _dirs(directory), ())
    immutable = _set_modes(directory, sealed=True)
    after = hash_directory(directory)
    dirs = _dirs(directory)
    if after != before:
        _set_modes(directory, sealed=False)
        raise SealError(f"{directory} changed while it was being sealed; run seal again")
    manifest = _write_manifest(locations, key, "sealed", uid, after, dirs, immutable)
    with contextlib.suppress(FileNotFoundError):
        tamper_marker_path(locations).unlink()
    _audit(
        audit,
        locations,
        {
            "event": "seal",
            "outcome": "sealed",
            "uid": uid,
            "severity": "low",
            "files": sorted(after),
            "immutable": bool(immutable),
            "generation": manifest.generation,
        },
    )
    return manifest


def unseal(
    locations: Locations, code: str, uid: int, *, audit: AuditSink | None = None
) -> Manifest:
    """Make the directory editable again (0755/0644, no +i) with a person's TOTP code.

    Raises SealError when it is not sealed (no code is used up), TotpRefused
    and OSError.  Audits a `policy` record.
    """
    with _exclusive(locations):
        return _unseal_locked(locations, code, uid, audit)


def _unseal_locked(locations: Locations, code: str, uid: int, audit: AuditSink | None) -> Manifest:
    directory = Path(locations.policy_dir)
    try:
        current = read_manifest(locations)
    except TamperDetected:
        pass  # unreadable: a person with a code may still take the directory back
    else:
        if current is None or current.state != "sealed":
            state = "never sealed" if current is None else "already unsealed"
            raise SealError(f"{directory} is not sealed ({state})")
    key = load_or_create_key(locations.audit_key)
    _verify_code(locations, code, uid, "unseal", audit)
    snapshot = scan_directory(directory)
    if snapshot.missing:
        raise SealError(f"the policy directory {directory} does not exist")
    # The manifest first: a watcher must not mistake the chmod below for tampering.
    manifest = _write_manifest(
        locations, key, "unsealed", uid, snapshot.files, _dirs(directory), ()
    )
    _set_modes(directory, sealed=False)
    _audit(
        audit,
        locations,
        {
            "event": "unseal",
            "outcome": "unsealed",
            "uid": uid,
            "severity": "medium",
            "generation": manifest.generation,
        },
    )
    return manifest


__all__ = [
    "FS_IMMUTABLE_FL",
    "AuditSink",
    "Entry",
    "Manifest",
    "SealError",
    "SealStatus",
    "Snapshot",
    "TamperDetected",
    "check_sealed",
    "compare",
    "hash_directory",
    "read_manifest",
    "scan_directory",
    "seal",
    "set_immutable",
    "short_of_resources",
    "tamper_marker_path",
    "unseal",
    "validate_policies",
    "write_tamper_marker",
]
