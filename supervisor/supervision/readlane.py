"""The read lane: when the kernel itself may take the agent's plain reads.

With the lane on, the seccomp filter lets an open or openat for reading
only through (kernel/seccomp.py), and the kernel asks the agent's broker
before the file opens, through a fanotify group on every mount of the
agent's (kernel/fanotify.py, `_fastpath.c`): a read the policy plainly
allows costs no round trip to user space after the first, and every other
read is still judged, by the file actually opened.

It is on only where nothing is lost:
- the native path runs (it answers the group), the host gives fanotify
  permission events and Landlock (the reader's own layer), and the agent
  surely gets its own mount and PID namespaces (marks on the host's mounts
  would hold every host process's opens);
- procfs takes no permission events, so its reads go to the kernel alone:
  the policy must plainly allow reading every name procfs has (strict's
  `/proc/**`), or the lane stays off;
- nor does any file but a regular file or a directory (a device, a FIFO):
  the Landlock floor refuses reading every device node the policy does not
  plainly allow (`PolicyAnswers.unread_devices`), so a raw disk stays out of reach, with
  EACCES and no record;
- shadow mode records every read the policy would refuse: it keeps the lane off.

It is opt-in (`AGENTSUP_READ_LANE=1`): what the kernel asks nothing about
is judged by the floor alone, silently (a FIFO, a device, what the floor
refuses: no record and no signal), and a refused read fails with EPERM.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..kernel import fanotify, fastpath
from ..kernel import proc as _proc
from ..kernel.landlock import landlock_abi
from ..policy.cachefiles import BadEntry, cache_dir, digest, read_entry, write_entry

ENV_SWITCH = "AGENTSUP_READ_LANE"

# Process numbers a procfs name is checked with: PID 1 (the broker, which a
# rule may single out), a small one, and the largest there can be.
_SAMPLE_PIDS = ("1", "2", "4194304")
_DEEPEST = 6
_OWN_FD_NAMES = ("0", "1", "2")


def _walk(directory: str, depth: int) -> Iterator[str]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        yield entry.path
        if depth < _DEEPEST:
            try:
                deeper = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if deeper and entry.name not in ("fd", "fdinfo", "map_files", "task"):
                yield from _walk(entry.path, depth + 1)


def procfs_names(proc: str = "/proc") -> list[str]:
    """The names procfs has, a process's entries once for each sample pid."""
    names = [proc]
    for entry in os.scandir(proc):
        if entry.name.isdigit() or entry.name in ("self", "thread-self"):
            continue
        names.append(entry.path)
        if entry.is_dir(follow_symlinks=False):
            names.extend(_walk(entry.path, 1))
    own = os.path.realpath(f"{proc}/self")  # /proc/PID: our own entries stand for any process's
    beneath = [name[len(own) :] for name in _walk(own, 1)]
    beneath += [f"/{kind}/{fd}" for kind in ("fd", "fdinfo") for fd in _OWN_FD_NAMES]
    for pid in _SAMPLE_PIDS:
        for rest in ("", "/fd", "/fdinfo", "/map_files", "/task", f"/task/{pid}", *beneath):
            names.append(f"{proc}/{pid}{rest}")
        names.extend(f"{proc}/{pid}/task/{pid}{rest}" for rest in beneath)
    return names


def procfs_refusal(plainly_reads: Callable[[str], bool], names: Iterable[str]) -> str | None:
    """The first name whose read the policy does not plainly allow, if any."""
    for name in names:
        if not plainly_reads(name):
            return name
    return None


# The agent's own mounts under /dev: its ptys, its shared memory, its queues.
_OWN_DEVICE_DIRS = ("/dev/pts", "/dev/shm", "/dev/mqueue")


def _special_files(dev: str = "/dev") -> list[str]:
    """The device nodes and FIFOs under `dev`, but in the agent's own mounts there."""
    found: list[str] = []

    def walk(directory: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return
        for entry in entries:
            if entry.path in _OWN_DEVICE_DIRS:
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                walk(entry.path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                found.append(entry.path)

    walk(dev)
    return sorted(found)


def write_only_streams(
    plainly_reads: Callable[[str], bool], fds: Iterable[int] = (0, 1, 2)
) -> tuple[str, ...]:
    """The regular files among `fds` (what the agent inherits) open for
    writing only, whose reads the policy does not plainly allow: the floor
    must refuse reading them again through /proc/self/fd."""
    found = []
    for fd in fds:
        try:
            st = os.fstat(fd)
            writing_only = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        named = path.startswith("/") and not path.endswith(" (deleted)")
        if stat.S_ISREG(st.st_mode) and writing_only and named and not plainly_reads(path):
            found.append(path)
    return tuple(found)


_CODE_FILES = ("readlane.py", "judge.py")


class PolicyAnswers(NamedTuple):
    """What the policy says of the reads the kernel would take unasked."""

    procfs_refusal: str | None  # the first procfs name not plainly readable
    unread_devices: tuple[str, ...]  # device nodes and FIFOs not plainly readable


def policy_answers(
    plainly_reads: Callable[[str], bool], state_dir: Path | None = None, key: str | None = None
) -> PolicyAnswers:
    """`PolicyAnswers` for this policy, from the state directory's cache when
    it has them for `key` (the compiled policy's entry and what else the
    judge decides with), this boot and these device nodes: some 2,600
    decisions are not made again at each start."""
    devices = _special_files()
    name = directory = None
    if state_dir is not None and key is not None:
        try:
            boot = _proc.read_proc("/proc/sys/kernel/random/boot_id")
        except OSError:
            boot = b""
        # The judge's code decides too (its self-protection), and this module's.
        code = [(Path(__file__).parent / file).read_bytes() for file in _CODE_FILES]
        name = "readlane-" + digest(key, boot, json.dumps(devices), *code)[:40]
        directory = cache_dir(state_dir)
    if directory is not None and name is not None:
        with contextlib.suppress(BadEntry):
            document = read_entry(directory / name)
            kept = document if isinstance(document, dict) else {}
            refusal, unread = kept.get("procfs_refusal", 0), kept.get("unread_devices")
            if (refusal is None or isinstance(refusal, str)) and isinstance(unread, list):
                return PolicyAnswers(refusal, tuple(str(path) for path in unread))
    answers = PolicyAnswers(
        procfs_refusal(plainly_reads, procfs_names()),
        tuple(path for path in devices if not plainly_reads(path)),
    )
    if name is not None and state_dir is not None:
        directory = cache_dir(state_dir, create=True)
        if directory is not None:
            document = {
                "procfs_refusal": answers.procfs_refusal,
                "unread_devices": list(answers.unread_devices),
            }
            write_entry(directory, name, document)
    return answers


def status(
    answers: Callable[[], PolicyAnswers],
    namespaces: frozenset[str],
    allow_degraded: frozenset[str],
    shadow: bool = False,
) -> tuple[bool, str, tuple[str, ...]]:
    """Whether this run gets the read lane, why (not), and the device nodes
    the floor must then refuse reading (`answers` is asked only when the
    host and the run allow the lane)."""
    if os.environ.get(ENV_SWITCH) != "1":
        return False, f"off (opt in with {ENV_SWITCH}=1)", ()
    if shadow:
        return False, "off: shadow mode records every read the policy would refuse", ()
    native, why = fastpath.status()
    if not native:
        return False, f"off: the native path is off ({why})", ()
    if not {"mount", "pid"} <= namespaces - allow_degraded:
        return False, "off: the agent may run without its own mount and PID namespaces", ()
    if landlock_abi() < 1:
        return False, "off: no Landlock (the floor keeps devices out of reach)", ()
    ok, why = fanotify.status()
    if not ok:
        return False, f"off: {why}", ()
    said = answers()
    if said.procfs_refusal is not None:
        refused = said.procfs_refusal
        return (
            False,
            f"off: the policy does not plainly allow reading {refused} (procfs is read unasked)",
            (),
        )
    return (
        True,
        "on (plain reads are asked of the broker by the kernel: fanotify)",
        said.unread_devices,
    )
