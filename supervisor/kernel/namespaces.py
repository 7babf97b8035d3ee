"""Namespaces and mounts for the agent: unshare, uid maps, /proc, a private /tmp and /run.

Each function does one kernel step and raises `NamespaceError` with one line
naming the step and the errno, so that the caller can refuse to run (exit
125) or, when the operator allowed it, run degraded with a warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import socket
import stat
import struct
import termios
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..policy.engine import OwnSockets

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_unshare = _libc.unshare
_unshare.restype = ctypes.c_int
_unshare.argtypes = [ctypes.c_int]
_mount = _libc.mount
_mount.restype = ctypes.c_int
_mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# The namespaces an agent can get, in the order they are made (user first:
# it grants the capabilities the others need to a normal user).
FLAGS = {
    "user": CLONE_NEWUSER,
    "mount": CLONE_NEWNS,
    "pid": CLONE_NEWPID,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "net": CLONE_NEWNET,
}

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_SYS_MOUNT_SETATTR = 442
_SYS_OPEN_TREE = 428
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_RECURSIVE_TREE = 0x8000
_FSOPEN_CLOEXEC = 0x1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 0x1
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NOEXEC = 0x8
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_MOUNT_ATTR_NODEV = 0x4
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

# With no capabilities, uid 0 still owns root's 0644 files: /proc/sys and
# /sys attributes (sysctls, cgroup.procs) would stay writable to a root
# agent.  Inside its mount namespace they are read-only.
READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/sys")
PRIVATE_TMP = ("/tmp", "/var/tmp")
# The host's runtime directory holds its daemons' sockets (Docker, the D-Bus
# system bus, systemd's, journald's /dev/log, nscd, a user's session bus and
# gpg-agent under /run/user): the agent gets a tmpfs of its own there too.
# /var/run only where it is a directory of its own, not a symlink to /run.
PRIVATE_RUN = ("/run", "/var/run")
# Fresh and writable by everyone (sticky, as on the host): lock files, flock.
# /var/lock gets a tmpfs of its own only where it is no symlink into /run.
RUN_LOCK = ("/run/lock", "/var/lock")
_ETC = "/etc"
_MAX_HOPS = 40  # as the kernel's symlink limit
_TIOCGPTPEER = 0x5441  # Linux 4.13: the slave of a pty master, with no path lookup
_TIOCSPTLCK = 0x40045431


class NamespaceError(Exception):
    """A namespace step failed; `str()` is one line naming it and the errno."""

    def __init__(self, step: str, err: int) -> None:
        self.step = step
        self.errno = err or errno.EPERM
        super().__init__(f"{step}: {os.strerror(self.errno)}")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def unshare(name: str) -> None:
    if _unshare(FLAGS[name]) != 0:
        raise NamespaceError(f"{name} namespace", ctypes.get_errno())


def _write(step: str, path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())  # one write: the kernel refuses partial maps
        finally:
            os.close(fd)
    except OSError as exc:
        raise NamespaceError(step, exc.errno or errno.EPERM) from exc


def enter_user_namespace(uid: int, gid: int) -> None:
    """A user namespace with the caller mapped to itself (not to root): files keep owners."""
    unshare("user")
    _write("user namespace setgroups", "/proc/self/setgroups", "deny")
    _write("user namespace uid map", "/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("user namespace gid map", "/proc/self/gid_map", f"{gid} {gid} 1\n")


def mount(
    step: str,
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int,
    data: str | None = None,
) -> None:
    rc = _mount(
        None if source is None else os.fsencode(source),
        os.fsencode(target),
        None if fstype is None else fstype.encode(),
        flags,
        None if data is None else data.encode(),
    )
    if rc != 0:
        raise NamespaceError(step, ctypes.get_errno())


def make_mounts_private() -> None:
    """Nothing mounted from here on propagates back to the host."""
    mount("private mount propagation", None, "/", None, MS_REC | MS_PRIVATE)


def mount_proc(hide_others: bool = False) -> None:
    """A procfs for the caller's PID namespace: /proc shows only the agent's tree.

    `hide_others`: a process the reader may not ptrace is not shown at all
    (`hidepid=ptraceable`, whatever the reader's group): the agent's init,
    its broker, which the read lane (procfs read unjudged) keeps out of sight."""
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    data = "hidepid=ptraceable" if hide_others else None
    mount("/proc for the PID namespace", "proc", "/proc", "proc", flags, data)


_MNT_DETACH = 2


def unescape_mountinfo(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash are octal escapes there."""
    return re.sub(r"\\([0-7]{3})", lambda found: chr(int(found.group(1), 8)), field)


class Mount(NamedTuple):
    """One line of /proc/self/mountinfo."""

    id: int
    parent: int
    device: int  # st_dev of what is mounted
    point: str
    fstype: str


def parse_mountinfo(mountinfo: str) -> list[Mount]:
    """Pure: the mounts of a mountinfo text (lines it cannot read are skipped)."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 5:
            continue
        dash = fields.index("-")
        major, _, minor = fields[2].partition(":")
        if dash + 1 >= len(fields) or not (
            fields[0].isdigit() and fields[1].isdigit() and major.isdigit() and minor.isdigit()
        ):
            continue
        found.append(
            Mount(
                int(fields[0]),
                int(fields[1]),
                os.makedev(int(major), int(minor)),
                unescape_mountinfo(fields[4]),
                fields[dash + 1],
            )
        )
    return found


def visible(mounts: Sequence[Mount]) -> list[Mount]:
    """Pure: the mounts a path reaches: none mounted over on the same point."""
    covered = {(mount.parent, mount.point) for mount in mounts}
    return [mount for mount in mounts if (mount.id, mount.point) not in covered]


def procfs_mounts(mountinfo: str) -> list[tuple[str, int]]:
    """Pure: each procfs mount of a mountinfo text, as (mount point, st_dev)."""
    return [(m.point, m.device) for m in parse_mountinfo(mountinfo) if m.fstype == "proc"]


def other_procfs(mountinfo: str) -> list[str]:
    """Pure: where a path reaches the host's own view of the kernel: a procfs
    other than /proc itself, or any mqueue (deepest first)."""
    points = {
        m.point
        for m in visible(parse_mountinfo(mountinfo))
        if (m.fstype == "proc" and m.point != "/proc") or m.fstype == "mqueue"
    }
    return sorted(points, key=lambda point: (-point.count("/"), point))


class KernelTrees(NamedTuple):
    """Where the kernel's own trees are mounted here, and what is mounted on them."""

    # st_dev of every procfs, kernel interface and device filesystem: no
    # file of anyone's is beneath them (and procfs holds a view of the whole
    # host under `PID/root`).
    devices: frozenset[int]
    # Every other mount point: files of someone's, maybe mounted on one of those.
    others: tuple[str, ...]


def kernel_trees() -> KernelTrees:
    kinds = KERNEL_FILESYSTEMS | DEVICE_FILESYSTEMS | {"proc", "mqueue", "devpts"}
    try:
        mounts = parse_mountinfo(_mountinfo())
    except OSError:
        return KernelTrees(frozenset(), ())
    return KernelTrees(
        frozenset(mount.device for mount in mounts if mount.fstype in kinds),
        tuple(mount.point for mount in mounts if mount.fstype not in kinds),
    )


def other_procfs_devices() -> frozenset[int]:
    """The st_dev of every procfs here but /proc's (none once `hide_other_procfs` ran)."""
    try:
        found = procfs_mounts(_mountinfo())
        own = os.stat("/proc").st_dev
    except OSError:
        return frozenset()
    return frozenset(device for _point, device in found if device != own)


def _mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mounts:
        return mounts.read()


_HIDING_ROUNDS = 64  # procfs stacked on procfs: each round uncovers the next


def hide_other_procfs() -> None:
    """Detach every procfs a path reaches but the agent's own /proc, and every mqueue.

    A procfs mounted elsewhere (a build chroot's, a monitoring container's
    /host/proc) resolves `self` for whoever reads it: for the broker, which
    does the agent's file work, that is the broker's own environment and
    memory (red teams 18 and 19).  An mqueue is its mounter's IPC namespace's:
    the host's queues, whose messages a read takes (red team 20); the agent's
    own goes on /dev/mqueue afterwards (`mount_own_mqueue`).

    Only what a path reaches is detached (a procfs under a tmpfs stays
    covered, the tmpfs stays), again until none is left: one stacked on
    another is uncovered by the first detach.
    Mount propagation is private by now, and the agent cannot mount.
    """
    unreachable: set[str] = set()
    for _round in range(_HIDING_ROUNDS):
        points = [point for point in other_procfs(_mountinfo()) if point not in unreachable]
        if not points:
            return
        for point in points:
            if _libc.umount2(point.encode("utf-8", "surrogateescape"), _MNT_DETACH) != 0:
                err = ctypes.get_errno()
                if err not in (errno.EINVAL, errno.ENOENT):
                    raise NamespaceError(f"hide the procfs at {point}", err)
                # No mount there by that path: one under a mount that covers
                # a directory above it (a workspace's procfs under the host's
                # /tmp, which the private /tmp covers), which no path reaches.
                if _reaches_procfs(point):
                    raise NamespaceError(f"hide the procfs at {point}", err)
                unreachable.add(point)
    raise NamespaceError("hide the other procfs", errno.ELOOP)


def _reaches_procfs(path: str) -> bool:
    """Whether `path` leads into a procfs other than /proc's own."""
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False
    return device in other_procfs_devices()


# The kernel's own interfaces: a root agent that could write one would change
# the host (a binfmt_misc handler runs its program outside any sandbox, a
# write to cgroup.procs leaves agentsup's cgroup, tracefs reads the kernel).
# Wherever one is mounted, the agent gets it read-only, as /sys itself.
KERNEL_FILESYSTEMS = frozenset(
    {
        "sysfs", "cgroup", "cgroup2", "tracefs", "debugfs", "securityfs", "binfmt_misc",
        "bpf", "configfs", "efivarfs", "pstore", "fusectl", "nsfs", "hugetlbfs", "nfsd",
        "rpc_pipefs", "selinuxfs", "smackfs",
    }
)  # fmt: skip
# The host's devices, /dev among them: read-only by itself (what the launch
# mounted beneath /dev, its own ptys, /dev/shm and mqueue, stays writable).
# A device node is a special file: written through a read-only mount all the
# same (`> /dev/null`), while the entries stay the host's (red team 20
# replaced /dev/log with a socket of its own, and had the host's syslog).
DEVICE_FILESYSTEMS = frozenset({"devtmpfs"})


def kernel_filesystems_read_only() -> None:
    """Every mount of a kernel interface a path reaches, read-only (with what is
    beneath it), and /dev and every devtmpfs (by itself)."""
    for mount_ in visible(parse_mountinfo(_mountinfo())):
        # /dev by its place too: a container's is a tmpfs (red team 21).
        devices = mount_.fstype in DEVICE_FILESYSTEMS or mount_.point == "/dev"
        if mount_.fstype in KERNEL_FILESYSTEMS or devices:
            try:
                _set_read_only(mount_.point, recursive=mount_.fstype in KERNEL_FILESYSTEMS)
            except NamespaceError as exc:
                if exc.errno not in (errno.ENOENT, errno.EINVAL):  # gone, or not a mount now
                    raise


def under(path: str, roots: Sequence[str]) -> bool:
    """Whether `path` is one of `roots` or beneath one (paths without a trailing slash)."""
    return any(path == root or path.startswith(root + "/") for root in roots)


def _pin(paths: Sequence[str], roots: Sequence[str], what: str) -> list[tuple[str, int]]:
    """An O_PATH fd of each path under `roots`, opened before a tmpfs covers it."""
    pinned: list[tuple[str, int]] = []
    try:
        for path in paths:
            if under(path, roots):
                try:
                    pinned.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
                except OSError as exc:
                    raise NamespaceError(f"keep {path} in the {what}", exc.errno or 1) from exc
    except BaseException:
        for _path, fd in pinned:
            os.close(fd)
        raise
    return pinned


def _bind_back(path: str, fd: int, what: str, *, read_only: bool = False) -> None:
    """Bind the object pinned by `fd` at `path`, making the place for it first."""
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Already there when a directory kept before holds it (the hook
        # socket in a kept home); opening a socket would fail with ENXIO.
        if not os.path.lexists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    mount(f"keep {path} in the {what}", f"/proc/self/fd/{fd}", path, None, MS_BIND)
    if read_only:
        _set_read_only(path, recursive=False)


def bind_read_only(paths: Sequence[str], writable: Sequence[str] = ()) -> None:
    """Each of `paths` that exists bound onto itself, read-only: whatever the
    policy lets the agent write around it (a workspace holding a .venv, a
    private /tmp holding a kept one), the kernel keeps it as it is.  Not one
    that holds a `writable` path (a workspace under /usr, where Python is):
    the bind would cover it."""
    for path in paths:
        if any(under(place, [path]) for place in writable):
            continue
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # not there: nothing to keep as it is
        try:
            _bind_back(path, fd, "agent's view, read-only", read_only=True)
        finally:
            os.close(fd)


def mount_private_tmp(keep: Sequence[str], size: str = "50%") -> None:
    """A fresh tmpfs on /tmp and /var/tmp, with the `keep` paths bound back in.

    The workspace or the hook socket may live under /tmp; they are pinned by
    fd before the tmpfs covers them and bound back at the same place (a kept
    Python is then made read-only by `bind_read_only`).
    """
    pinned = _pin(keep, PRIVATE_TMP, "private /tmp")
    try:
        for tmp in PRIVATE_TMP:
            if os.path.isdir(tmp):
                mount(
                    f"private {tmp}",
                    "tmpfs",
                    tmp,
                    "tmpfs",
                    MS_NOSUID | MS_NODEV,
                    f"mode=1777,size={size}",
                )
        for path, fd in pinned:
            _bind_back(path, fd, "private /tmp")
    finally:
        for _path, fd in pinned:
            os.close(fd)


def make_own_directories(paths: Sequence[str], owner: tuple[int, int] | None = None) -> None:
    """Each of `paths`, in a tmpfs of the agent's own (its private /tmp,
    /var/tmp or /run), made with the directories on the way that are missing:
    an inherited TMPDIR, there on the host and not in the fresh tmpfs.

    The last one is the agent's alone, mode 0700 (as pam_tmpdir makes
    /tmp/user/UID); those on the way 0755; what is there already stays as it
    is.  Nothing is made through a symlink (the private /run has some,
    leading out of it).  `owner`: the (uid, gid) they are given (the agent's
    --user; otherwise they are the caller's already).
    """
    for path in paths:
        missing: list[str] = []
        here = path
        while not os.path.lexists(here):
            missing.append(here)
            here = os.path.dirname(here)
        if not missing or os.path.realpath(here) != here:
            continue
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o700)
                os.chmod(directory, 0o700 if directory == path else 0o755)  # whatever the umask
                if owner is not None:
                    os.chown(directory, *owner)
            except OSError as exc:
                raise NamespaceError(
                    f"make {path} in the agent's own tmpfs", exc.errno or 1
                ) from exc


def private_run_dirs() -> list[str]:
    """The runtime directories a private /run covers: /run, and /var/run where it
    is a directory of its own (not the usual symlink to /run)."""
    return [run for run in PRIVATE_RUN if os.path.isdir(run) and not os.path.islink(run)]


def _chain(start: str, limit: int = _MAX_HOPS) -> tuple[list[tuple[str, str]], str] | None:
    """The symlinks `start` goes through, each as (where it is, its text), and
    the real path it ends at; None when it ends nowhere (dangling, a loop)."""
    hops: list[tuple[str, str]] = []
    here = start
    for _ in range(limit):
        try:
            text = os.readlink(here)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a symlink: the end
                return hops, os.path.realpath(here)
            return None
        hops.append((here, text))
        parent = os.path.realpath(os.path.dirname(here))
        here = os.path.normpath(os.path.join(parent, text))
    return None


def etc_files_in_run(run_dirs: Sequence[str], etc: str = _ETC) -> list[tuple[str, str]]:
    """What /etc's symlinks into the runtime directory need there, for the
    agent's private /run: (path, symlink text) for each link on the way, and
    (path, "") for the regular file it ends at.

    /etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf (systemd-resolved),
    /run/resolvconf/resolv.conf, /run/NetworkManager/resolv.conf: a symlink in
    /etc or one directory down.  Only regular files: a directory there may
    hold a daemon's socket.
    """
    found: dict[str, str] = {}
    # The link's own text says whether it goes into /run (../run/..., /var/run/...):
    # only those are followed (a link farm such as /etc/alternatives goes elsewhere).
    spelled = (*run_dirs, *PRIVATE_RUN)

    def consider(path: str) -> None:
        try:
            text = os.readlink(path)
        except OSError:
            return
        if not under(os.path.normpath(os.path.join(os.path.dirname(path), text)), spelled):
            return
        chain = _chain(path)
        if chain is None:
            return
        hops, real = chain
        if not under(real, run_dirs):
            return
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):
                return
        except OSError:
            return
        for where, link in hops:
            if under(where, run_dirs):
                found.setdefault(where, link)
        found[real] = ""

    try:
        with os.scandir(etc) as entries:
            listed = list(entries)
    except OSError:
        return []
    for entry in listed:
        if entry.is_symlink():
            consider(entry.path)
        elif entry.is_dir(follow_symlinks=False):
            try:
                with os.scandir(entry.path) as inner:
                    links = [item.path for item in inner if item.is_symlink()]
            except OSError:
                continue
            for link in links:
                consider(link)
    return sorted(found.items())


def _links_out(run_dirs: Sequence[str]) -> list[tuple[str, str]]:
    """The symlinks at the top of the runtime directories that lead out of them
    (/run/shm -> /dev/shm; NixOS's /run/current-system): made again in the
    private /run.  They reach nothing the agent does not see already."""
    found = []
    for run in run_dirs:
        try:
            with os.scandir(run) as entries:
                links = [entry.path for entry in entries if entry.is_symlink()]
        except OSError:
            continue
        for link in links:
            try:
                text = os.readlink(link)
            except OSError:
                continue
            if not under(os.path.realpath(link), run_dirs):
                found.append((link, text))
    return found


def _fresh_directory(path: str, mode: int) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)  # whatever the umask


def mount_private_run(
    keep: Sequence[str], run_dirs: Sequence[str] | None = None, size: str = "20%"
) -> list[str]:
    """A fresh tmpfs on /run (and /var/run, where it is a directory of its own),
    with only what the agent needs of the host's bound back in.

    - the `keep` paths under it (the hook socket in agentsup's runtime
      directory, as the socket alone: the directory also holds every
      supervisor's control socket);
    - the files /etc's symlinks lead to there (/etc/resolv.conf from
      systemd-resolved), read-only, and the links on the way;
    - the symlinks at its top that lead out of it (/run/shm -> /dev/shm);
    - /run/lock (and /var/lock where it is a directory of its own) fresh and
      writable by everyone; /dev/shm's directory, where /dev/shm is a symlink
      into /run (the tmpfs `mount_private_devices` puts there lands in it).

    Everything is pinned or read before the tmpfs covers it.  Returns the
    directories covered.
    """
    dirs = private_run_dirs() if run_dirs is None else list(run_dirs)
    if not dirs:
        return []
    found = etc_files_in_run(dirs)
    links = _links_out(dirs) + [(path, text) for path, text in found if text]
    shm = os.path.realpath("/dev/shm")
    files: list[tuple[str, int]] = []
    for path, text in found:
        if not text:
            with contextlib.suppress(OSError):  # gone since: the agent goes without
                files.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
    try:
        pinned = _pin(keep, dirs, "private /run")
    except BaseException:
        for _path, fd in files:
            os.close(fd)
        raise
    # The files first: a kept directory may hold one, and what is kept is
    # then what the agent sees there.
    pinned = files + pinned
    try:
        for run in dirs:
            mount(
                f"private {run}",
                "tmpfs",
                run,
                "tmpfs",
                MS_NOSUID | MS_NODEV,
                f"mode=0755,size={size}",
            )
        for lock in RUN_LOCK:
            if under(lock, dirs):
                _fresh_directory(lock, 0o1777)
            elif os.path.isdir(lock) and not os.path.islink(lock):
                mount(f"private {lock}", "tmpfs", lock, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        if shm != "/dev/shm" and under(shm, dirs):
            _fresh_directory(shm, 0o1777)
        for path, text in links:
            if not os.path.lexists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.symlink(text, path)
        for index, (path, fd) in enumerate(pinned):
            _bind_back(path, fd, "private /run", read_only=index < len(files))
    finally:
        for _path, fd in pinned:
            os.close(fd)
    return dirs


def mount_private_devices() -> None:
    """The agent's own ptys and shared memory.

    A devpts instance of its own on /dev/pts (/dev/ptmx opens the instance
    mounted beside it): the agent can make ptys (script, pexpect, tmux) and
    cannot open the host's, another session's terminal among them.  A tmpfs
    on /dev/shm: POSIX semaphores and shared memory (multiprocessing) stay
    the agent's, and nothing is left behind in the host's.
    """
    if os.path.isdir("/dev/pts"):
        mount(
            "private /dev/pts",
            "devpts",
            "/dev/pts",
            "devpts",
            MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        )
    if os.path.isdir("/dev/shm"):
        mount("private /dev/shm", "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def mount_own_mqueue() -> None:
    """The agent's IPC namespace's message queues on /dev/mqueue, not the
    host's (whose messages a read there would take: red team 19)."""
    if os.path.isdir("/dev/mqueue"):
        mount(
            "private /dev/mqueue",
            "mqueue",
            "/dev/mqueue",
            "mqueue",
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
        )


def own_mqueue_root() -> int:
    """An fd of the root of the caller's IPC namespace's message queues: a
    detached mount of its mqueue filesystem, the very superblock mq_open
    uses, whether or not /dev/mqueue exists.  A Landlock rule on it lets the
    agent use the queues of its own namespace, which lie under no other rule
    (mq_open walks the kernel's internal mount).  The caller closes it."""
    fs = _libc.syscall(_SYS_FSOPEN, b"mqueue", _FSOPEN_CLOEXEC)
    if fs < 0:
        raise NamespaceError("the agent's message queues", ctypes.get_errno())
    try:
        if _libc.syscall(_SYS_FSCONFIG, fs, _FSCONFIG_CMD_CREATE, None, None, 0) != 0:
            raise NamespaceError("the agent's message queues", ctypes.get_errno())
        flags = _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV | _MOUNT_ATTR_NOEXEC
        root = int(_libc.syscall(_SYS_FSMOUNT, fs, _FSMOUNT_CLOEXEC, flags))
        if root < 0:
            raise NamespaceError("the agent's message queues", ctypes.get_errno())
        return root
    finally:
        os.close(fs)


def own_pty(like: int) -> tuple[int, int]:
    """(master, slave) of a new pty in the devpts mounted on /dev/pts, with
    the window size and modes of the terminal `like`: the agent's relay pty,
    made where the agent sees it, so that `tty` and ttyname() name it."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
        slave = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        try:
            termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(like))
            window = fcntl.ioctl(like, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, window)
        except OSError:
            os.close(slave)
            raise
    except OSError:
        os.close(master)
        raise
    return master, slave


def make_read_only(paths: Sequence[str] = READ_ONLY) -> None:
    """Bind each existing path onto itself, read-only with every submount."""
    for path in paths:
        if not os.path.lexists(path):
            continue
        mount(f"read-only {path}", path, path, None, MS_BIND | MS_REC)
        _set_read_only(path)


def _set_read_only(path: str, *, recursive: bool = True) -> None:
    """The mount at `path` (and with `recursive` every submount) read-only."""
    _set_mount_attributes(
        f"read-only {path}", path, _MountAttr(attr_set=_MOUNT_ATTR_RDONLY), recursive
    )


def _set_mount_attributes(step: str, path: str, attr: _MountAttr, recursive: bool = True) -> None:
    rc = _libc.syscall(
        _SYS_MOUNT_SETATTR,
        -100,
        os.fsencode(path),
        _AT_RECURSIVE if recursive else 0,
        ctypes.byref(attr),
        ctypes.sizeof(attr),
    )
    if rc != 0:
        raise NamespaceError(step, ctypes.get_errno())


def devices_only_in_dev() -> None:
    """Every mount but /dev and those beneath it `nodev`: a device node
    anywhere else (a copy of /dev in a build chroot, a node the host made in
    a workspace) cannot be opened at all, by the agent or by the broker that
    opens names for it before it decides (opening a device is an act of its
    own: a watchdog is armed, a tape rewinds)."""
    _set_mount_attributes("nodev everywhere", "/", _MountAttr(attr_set=_MOUNT_ATTR_NODEV))
    _set_mount_attributes("devices in /dev", "/dev", _MountAttr(attr_clr=_MOUNT_ATTR_NODEV))


def clone_tree() -> int:
    """A detached copy of this mount namespace's whole tree (its root, as an fd).

    The same files on the same filesystems, through mounts no one else has:
    the read lane's broker acts there (`_fastpath.c`, "the broker's own
    view"), where no fanotify mark makes the kernel ask it about its own
    opens.  Before privileges are dropped (it needs CAP_SYS_ADMIN here)."""
    fd = int(
        _libc.syscall(
            _SYS_OPEN_TREE, -100, b"/", _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE_TREE
        )
    )
    if fd < 0:
        raise NamespaceError("a copy of the mount tree for the broker", ctypes.get_errno())
    return fd


def loopback_up() -> None:
    """Bring `lo` up in a new network namespace (it starts down)."""
    request = struct.pack("16sH22x", b"lo", 0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            current = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)
            flags = struct.unpack_from("16sH", current)[1] | _IFF_UP
            fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags))
    except OSError as exc:
        raise NamespaceError("loopback up", exc.errno or errno.EPERM) from exc


def available() -> dict[str, str]:
    """Which namespaces this host lets the caller make: name -> '' or the reason not."""
    found: dict[str, str] = {}
    pid = os.fork()
    if pid == 0:  # probe in a throw-away child: unshare cannot be undone
        code = 0
        for bit, name in enumerate(FLAGS):
            try:
                if name == "user":
                    if os.geteuid() != 0:
                        enter_user_namespace(os.geteuid(), os.getegid())
                else:
                    unshare(name)
            except NamespaceError:
                code |= 1 << bit
        os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    for bit, name in enumerate(FLAGS):
        found[name] = "refused by the kernel" if code & (1 << bit) else ""
    return found


def own_sockets_here(may_lack: Collection[str] = (), *, own_network: bool = False) -> OwnSockets:
    """`own_socket_facts` for a launch on this host: the private /tmp directories
    it mounts (those there are).  The mount namespace is always asked for;
    the network one when `own_network`."""
    from ..policy.engine import own_socket_facts

    return own_socket_facts(
        {"mount", "net"} if own_network else {"mount"},
        may_lack,
        tmp_dirs=[tmp for tmp in PRIVATE_TMP if os.path.isdir(tmp)],
    )
