"""Track an agent's process tree with cgroups, limit it, and signal all of it.

A cgroup holds every process the agent forks, including ones that called
setsid or were re-parented, so "signal the agent" really reaches the whole
tree.  Supported layouts, detected from /proc/self/mountinfo:

- pure cgroup v2: one group `<mount>/agentsup/<name>`; the pids and memory
  controllers are enabled in `<mount>/agentsup/cgroup.subtree_control`.
- hybrid: cgroup2 (often without controllers) for tracking and
  `cgroup.kill`, plus groups of the same name in the v1 `pids` and `memory`
  hierarchies for the limits.
- v1 only: the v1 `pids` hierarchy also does the tracking.

Kept light on imports: the watchdog imports this module.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

PARENT_GROUP = "agentsup"
_MOUNTINFO = "/proc/self/mountinfo"
# Where agent groups go in the v2 hierarchy: the mount's root, or the
# cgroup systemd delegated to the service (`delegate_to_service`).
_v2_base: str | None = None
_POLL_SECONDS = 0.01


class CgroupUnavailable(RuntimeError):
    """No usable cgroup for this agent; the message is a one-line reason."""


class CgroupMounts(NamedTuple):
    v2: str | None
    v1: Mapping[str, str]  # controller name -> mount point


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> CgroupMounts:
    """Find the cgroup2 mount and the v1 controller mounts in mountinfo text."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 5 or len(fields) < sep + 4:
            continue
        mount_point = _unescape(fields[4])
        fstype, super_options = fields[sep + 1], fields[sep + 3]
        if fstype == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fstype == "cgroup":
            for option in super_options.split(","):
                if option in ("pids", "memory") and option not in v1:
                    v1[option] = mount_point
    return CgroupMounts(v2=v2, v1=v1)


class Layout(NamedTuple):
    """Where each job is done: mount points, and whether limits are v2 files."""

    tracking: str
    pids: str | None
    pids_v2: bool
    memory: str | None
    memory_v2: bool


def choose_layout(mounts: CgroupMounts, v2_controllers: Iterable[str]) -> Layout:
    """Pick the hierarchies for tracking and limits.  Pure."""
    available = set(v2_controllers) if mounts.v2 else set()
    tracking = mounts.v2 or mounts.v1.get("pids")
    if tracking is None:
        raise CgroupUnavailable("no cgroup2 or cgroup v1 pids hierarchy is mounted")

    def pick(controller: str) -> tuple[str | None, bool]:
        if controller in available:
            return mounts.v2, True
        return mounts.v1.get(controller), False

    pids, pids_v2 = pick("pids")
    memory, memory_v2 = pick("memory")
    return Layout(tracking, pids, pids_v2, memory, memory_v2)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def members(groups: Sequence[str], *, strict: bool = False) -> set[int]:
    """Pids in the given group directories and any groups nested below them.

    `strict`: OSError when a group that is there cannot be listed (out of
    fds), which the walk would take for an empty one; a group gone is empty.
    """

    def unlisted(exc: OSError) -> None:
        if strict and not isinstance(exc, FileNotFoundError):
            raise exc

    pids: set[int] = set()
    for group in groups:
        for dirpath, _dirs, _files in os.walk(group, onerror=unlisted):
            try:
                pids.update(int(line) for line in _read(f"{dirpath}/cgroup.procs").split())
            except FileNotFoundError:
                continue
    return pids


def signal_groups(groups: Sequence[str], sig: int) -> set[int]:
    """Send `sig` to every process in `groups`; return the pids signalled.

    Reads and signals again until no new pid shows up, so children forked
    while the signals go out are caught too.  Each pid is pinned with a pidfd
    and confirmed still a member before it is signalled, so a recycled pid
    outside the group is never hit.
    """
    seen: set[int] = set()
    signalled: set[int] = set()
    while True:
        new = members(groups) - seen
        if not new:
            return signalled
        seen |= new
        pidfds: dict[int, int] = {}
        for pid in new:
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
        try:
            still_members = members(groups)
            for pid, pidfd in pidfds.items():
                if pid not in still_members:
                    continue
                try:
                    signal.pidfd_send_signal(pidfd, sig)
                    signalled.add(pid)
                except ProcessLookupError:
                    pass
        finally:
            for pidfd in pidfds.values():
                os.close(pidfd)


def kill_groups(groups: Sequence[str], timeout: float = 2.0) -> bool:
    """SIGKILL everything in `groups`; True once they are empty.

    Uses `cgroup.kill` (v2, Linux 5.14+) where present: the kernel then also
    catches forks in flight.  Otherwise repeats a SIGKILL sweep.
    """
    for group in groups:
        try:
            _write(f"{group}/cgroup.kill", "1")
        except OSError:
            continue  # v1 group, old kernel or already gone: the sweep below covers it
    deadline = time.monotonic() + timeout
    while True:
        signal_groups(groups, signal.SIGKILL)
        if not members(groups):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


def remove_groups(groups: Sequence[str], timeout: float = 0.5) -> None:
    """rmdir each group, nested groups first.  Gone already is fine; a group
    still busy after `timeout` (a process that would not die) is left."""
    deadline = time.monotonic() + timeout
    for group in groups:
        nested = [d for d, _subdirs, _files in os.walk(group, topdown=False)]
        for path in nested:
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                        break
                    time.sleep(_POLL_SECONDS)


def _mkdir_fresh(path: str) -> None:
    try:
        os.mkdir(path)
    except FileExistsError:
        # A stale group from a crashed run: reuse the name only if it is empty.
        try:
            os.rmdir(path)
        except OSError as exc:
            raise CgroupUnavailable(f"{path} already exists and is in use") from exc
        os.mkdir(path)


STALE_AFTER_S = 60.0  # a group this old with its supervisor gone is a leftover
_PID_MAX_LIMIT = 4 * 1024 * 1024  # <linux/threads.h>: no pid is larger


def _supervisor_pid(name: str) -> int | None:
    """The pid an agent group's name ends with (`<agent id>-<supervisor pid>`)."""
    _agent, dash, pid = name.rpartition("-")
    if not dash or not pid.isdecimal() or len(pid) > len(str(_PID_MAX_LIMIT)):
        return None
    return int(pid) if 0 < int(pid) <= _PID_MAX_LIMIT else None


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: someone else's process, so not known to be gone
    return True


def remove_stale_groups(
    parents: Iterable[str], *, older_than: float = STALE_AFTER_S, limit: int = 16
) -> int:
    """Remove the agent groups of supervisors that are gone; how many went.

    A supervisor killed before its watchdog started (or a host that lost
    power) leaves its groups behind, one set per run, for good.  A group is
    left when its supervisor (the pid its name ends with) lives, when it is
    younger than `older_than` seconds (a supervisor in another PID namespace
    that shares this hierarchy creates its group a moment before it moves
    its agent in), and when a process is still in it (rmdir fails EBUSY: a
    group with a process is never removed).  At most `limit` go per call, so
    a host with hundreds left over clears them over several runs, none of
    which waits long.  Never raises.
    """
    removed = 0
    now = time.time()
    for parent in parents:
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            if removed >= limit:
                return removed
            pid = _supervisor_pid(entry.name)
            if pid is None or pid_alive(pid):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_ctime < older_than:
                    continue
                nested = [d for d, _subdirs, _files in os.walk(entry.path, topdown=False)]
                for path in nested:
                    os.rmdir(path)
            except OSError:
                continue
            removed += 1
    return removed


class AgentCgroup:
    """The cgroups of one agent.  `paths` lists every group directory."""

    def __init__(self, name: str, layout: Layout) -> None:
        self.name = name
        root = _v2_base if _v2_base and _is_v2(layout.tracking) else layout.tracking
        self.tracking = os.path.join(root, PARENT_GROUP, name)
        self._pids_dir = self._group_dir(layout.pids)
        self._memory_dir = self._group_dir(layout.memory)
        self._layout = layout
        dirs = [self.tracking, self._pids_dir, self._memory_dir]
        self.paths: tuple[str, ...] = tuple(dict.fromkeys(d for d in dirs if d))

    def _group_dir(self, mount: str | None) -> str | None:
        return os.path.join(mount, PARENT_GROUP, self.name) if mount else None

    def __repr__(self) -> str:
        return f"AgentCgroup({self.name!r}, paths={list(self.paths)})"

    @classmethod
    def create(cls, name: str, *, mounts: CgroupMounts | None = None) -> AgentCgroup:
        """Create the agent's groups, or raise CgroupUnavailable with the reason."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"bad cgroup name: {name!r}")
        if mounts is None:
            try:
                mounts = parse_mountinfo(_read(_MOUNTINFO))
            except OSError as exc:
                raise CgroupUnavailable(f"cannot read {_MOUNTINFO}: {exc.strerror}") from exc
        v2_controllers: list[str] = []
        if mounts.v2:
            try:
                v2_controllers = _read(f"{mounts.v2}/cgroup.controllers").split()
            except OSError:
                v2_controllers = []
        group = cls(name, choose_layout(mounts, v2_controllers))
        created: list[str] = []
        try:
            for path in group.paths:
                parent = os.path.dirname(path)
                os.makedirs(parent, exist_ok=True)
                group._enable_v2_controllers(parent)
                _mkdir_fresh(path)
                created.append(path)
        except OSError as exc:
            remove_groups(created)
            reason = exc.strerror or str(exc)
            raise CgroupUnavailable(
                f"cannot create cgroup {exc.filename or name}: {reason}"
            ) from exc
        except CgroupUnavailable:
            remove_groups(created)
            raise
        return group

    def _enable_v2_controllers(self, parent: str) -> None:
        """Let the v2 `agentsup` parent hand pids/memory down to agent groups."""
        layout = self._layout
        if parent != os.path.dirname(self.tracking):
            return
        wanted = [c for c, v2 in (("pids", layout.pids_v2), ("memory", layout.memory_v2)) if v2]
        if not wanted:
            return
        change = " ".join(f"+{c}" for c in wanted)
        for level in (os.path.dirname(parent), parent):
            enabled = _read(f"{level}/cgroup.subtree_control").split()
            if not set(wanted) <= set(enabled):
                _write(f"{level}/cgroup.subtree_control", change)

    def add(self, pid: int) -> None:
        """Move `pid` into every hierarchy; its later children follow."""
        for path in self.paths:
            _write(f"{path}/cgroup.procs", str(pid))

    def set_limits(self, max_processes: int | None, memory_mb: int | None) -> list[str]:
        """Apply the limits; return the ones that could NOT be enforced."""
        unenforced: list[str] = []
        if max_processes is not None:
            if self._pids_dir is None:
                unenforced.append(f"max_processes={max_processes}: no pids controller")
            else:
                unenforced += _try_write(
                    f"{self._pids_dir}/pids.max", str(max_processes), "max_processes"
                )
        if memory_mb is not None:
            if self._memory_dir is None:
                unenforced.append(f"memory_mb={memory_mb}: no memory controller")
            else:
                name = "memory.max" if self._layout.memory_v2 else "memory.limit_in_bytes"
                limit = str(memory_mb * 1024 * 1024)
                failed = _try_write(f"{self._memory_dir}/{name}", limit, "memory_mb")
                unenforced += failed
                memsw = f"{self._memory_dir}/memory.memsw.limit_in_bytes"
                if not failed and not self._layout.memory_v2 and os.path.exists(memsw):
                    # v1 lets a group swap past its limit unless memory+swap is capped too.
                    _try_write(memsw, limit, "memory_mb")
        return unenforced

    def times_at_process_limit(self) -> int:
        """How many forks or new threads `max_processes` refused (pids.events'
        `max`); 0 where there is no pids controller or no such count."""
        if self._pids_dir is None:
            return 0
        try:
            for line in _read(f"{self._pids_dir}/pids.events").splitlines():
                key, _, value = line.partition(" ")
                if key == "max" and value.strip().isdecimal():
                    return int(value)
        except OSError:
            pass
        return 0

    def pids(self, *, strict: bool = False) -> set[int]:
        return members([self.tracking], strict=strict)

    def signal_all(self, sig: int) -> set[int]:
        """Signal every process in the tree (see `signal_groups`)."""
        return signal_groups([self.tracking], sig)

    def kill(self) -> None:
        """SIGKILL the whole tree (cgroup.kill when present, else a SIGKILL loop)."""
        kill_groups([self.tracking])

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)
        return True

    def remove(self) -> None:
        """Remove every group (not the shared `agentsup` parent)."""
        remove_groups(self.paths)

    def remove_stale_siblings(self) -> int:
        """Remove the groups dead supervisors left beside ours (`remove_stale_groups`)."""
        return remove_stale_groups(os.path.dirname(path) for path in self.paths)


def _try_write(path: str, value: str, what: str) -> list[str]:
    try:
        _write(path, value)
    except OSError as exc:
        return [f"{what}={value}: cannot write {path}: {exc.strerror}"]
    return []


def _is_v2(path: str) -> bool:
    return os.path.exists(os.path.join(path, "cgroup.controllers"))


def service_cgroup(proc_self_cgroup: str) -> str | None:
    """The v2 path (`0::/system.slice/x.service`) of this process, or None.  Pure."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def delegate_to_service(mounts: CgroupMounts | None = None, pid: int | None = None) -> str | None:
    """Under systemd's `Delegate=yes`, keep agent groups inside the service's own cgroup.

    The supervisor moves itself into a `supervisor` leaf (a v2 group with
    children must hold no process) and agents go to `<service>/agentsup/`.
    Returns the base used, or None when there is nothing delegated to use.
    """
    global _v2_base
    try:
        if mounts is None:
            mounts = parse_mountinfo(_read(_MOUNTINFO))
        own = service_cgroup(_read("/proc/self/cgroup"))
    except OSError:
        return None
    if not mounts.v2 or not own or own == "/":
        return None
    base = os.path.join(mounts.v2, own.lstrip("/"))
    if os.path.basename(base) == "supervisor":  # restarted inside its leaf already
        base = os.path.dirname(base)
    leaf = os.path.join(base, "supervisor")
    try:
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(pid or os.getpid()))
    except OSError:
        return None  # not ours to write: keep the mount-level layout
    _v2_base = base
    return base
