"""Raw Landlock syscalls (x86_64).  The only module that talks to Landlock.

`apply_floor` runs in the trampoline child just before it execs the agent:
no threads, no heavy imports.  `sockets_only_beneath` confines one thread
of the broker for one bind.  The plan itself comes from the pure
`agentsup.policy.floor.plan_floor`.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import stat
from collections.abc import Sequence

from ..policy.floor import (
    FILE_RIGHTS,
    FS_IOCTL_DEV,
    FS_MAKE_SOCK,
    FS_READ_FILE,
    FS_TRUNCATE,
    FS_WRITE_FILE,
    FloorPlan,
)

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_RULE_NET_PORT = 2
_PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class LandlockError(OSError):
    """Installing the Landlock floor failed; the agent must not start."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # packed in the uapi header: u64 + s32, 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def landlock_abi() -> int:
    """The running kernel's Landlock ABI version, 0 when unsupported or disabled."""
    try:
        abi = _syscall(
            ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
        )
    except (OSError, ctypes.ArgumentError):
        return 0
    return int(abi) if abi > 0 else 0


def _ruleset_size(abi: int) -> int:
    # Older kernels reject a struct larger than the one they know.
    if abi < 4:
        return 8
    if abi < 6:
        return 16
    return ctypes.sizeof(_RulesetAttr)


def _fail(what: str) -> LandlockError:
    err = ctypes.get_errno()
    return LandlockError(err, f"{what}: {os.strerror(err)}")


def _add_rule(ruleset_fd: int, rule_type: int, attr: ctypes.Structure, what: str) -> None:
    rc = _syscall(
        ctypes.c_long(_SYS_LANDLOCK_ADD_RULE),
        ctypes.c_int(ruleset_fd),
        ctypes.c_int(rule_type),
        ctypes.byref(attr),
        ctypes.c_uint32(0),
    )
    if rc < 0:
        raise _fail(f"landlock_add_rule({what})")


def _add_path_rules(ruleset_fd: int, plan: FloorPlan) -> None:
    for path, allowed in plan.fs_rules:
        try:
            # O_NOFOLLOW: a symlink inside a granted directory must not widen the floor.
            path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        except OSError as exc:
            message = f"cannot open {path} for a Landlock rule: {exc.strerror}"
            raise LandlockError(exc.errno, message) from exc
        try:
            mode = os.fstat(path_fd).st_mode
            if stat.S_ISLNK(mode):
                continue
            if not stat.S_ISDIR(mode):
                allowed &= FILE_RIGHTS
            if allowed:
                attr = _PathBeneathAttr(allowed_access=allowed, parent_fd=path_fd)
                _add_rule(ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, attr, path)
        finally:
            os.close(path_fd)


def _add_held_rules(ruleset_fd: int, plan: FloorPlan, held: Sequence[int]) -> None:
    """Each file or terminal in `held` (fds the agent is handed at launch: its
    standard streams, its pty) may be opened again for what the fd allows.

    Such a file may lie outside every root (`run > /var/log/build.log`), and
    it is reached by its own path, not the agent's: a reopen through
    /proc/self/fd/1 (`echo x > /dev/stdout`) walks the host's mounts, not the
    agent's.  The fd already gives the agent that access (and ftruncate), so
    the rule grants nothing new.
    """
    for fd in held:
        try:
            mode = os.fstat(fd).st_mode
            access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
            continue  # a pipe or socket is reopened with no path to check
        allowed = FS_READ_FILE if access in (os.O_RDONLY, os.O_RDWR) else 0
        if access in (os.O_WRONLY, os.O_RDWR):
            allowed |= FS_WRITE_FILE | FS_TRUNCATE | (FS_IOCTL_DEV if stat.S_ISCHR(mode) else 0)
        allowed &= plan.handled_fs
        if allowed:
            attr = _PathBeneathAttr(allowed_access=allowed, parent_fd=fd)
            _add_rule(ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, attr, f"the agent's fd {fd}")


def apply_floor(plan: FloorPlan, held: Sequence[int] = (), queues: int = -1) -> None:
    """Restrict the calling process (and every later child) to `plan`, to
    reopening the files of the fds `held` as they are open (`_add_held_rules`),
    and, given the root of the agent's own message queues (`queues`,
    namespaces.own_mqueue_root), to reading and writing those.

    Sets no_new_privs, which Landlock requires without CAP_SYS_ADMIN and which
    the seccomp filter needs anyway.
    """
    if plan.abi < 1:
        raise LandlockError(0, "Landlock is not available on this kernel")
    ruleset_fd = _create_ruleset(
        _RulesetAttr(plan.handled_fs, plan.handled_net, plan.scoped), plan.abi
    )
    try:
        _add_path_rules(ruleset_fd, plan)
        _add_held_rules(ruleset_fd, plan, held)
        if queues >= 0 and (allowed := (FS_READ_FILE | FS_WRITE_FILE) & plan.handled_fs):
            root = _PathBeneathAttr(allowed_access=allowed, parent_fd=queues)
            _add_rule(ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, root, "the agent's message queues")
        for port, allowed in plan.net_rules:
            net_attr = _NetPortAttr(allowed_access=allowed, port=port)
            _add_rule(ruleset_fd, _LANDLOCK_RULE_NET_PORT, net_attr, f"tcp port {port}")
        _restrict_self(ruleset_fd)
    finally:
        os.close(ruleset_fd)


def sockets_only_beneath(directory: int) -> None:
    """Restrict the calling thread (landlock_restrict_self acts on the thread
    alone) to making unix sockets beneath the directory `directory`; every
    other right stays as it was.  The broker binds a name it must give the
    kernel whole from such a thread: wherever else the name leads by then,
    the bind fails with EACCES."""
    ruleset_fd = _create_ruleset(_RulesetAttr(FS_MAKE_SOCK, 0, 0), landlock_abi())
    try:
        beneath = _PathBeneathAttr(allowed_access=FS_MAKE_SOCK, parent_fd=directory)
        _add_rule(ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, beneath, "a bind's directory")
        _restrict_self(ruleset_fd)
    finally:
        os.close(ruleset_fd)


# The devices the read lane's reader may open: opening them does nothing.
HARMLESS_DEVICES = {
    "null": os.makedev(1, 3),
    "zero": os.makedev(1, 5),
    "full": os.makedev(1, 7),
    "random": os.makedev(1, 8),
    "urandom": os.makedev(1, 9),
}


def reader_ruleset(root: str) -> int:
    """A ruleset (its fd) for the read lane's reader thread: read any file
    beneath `root` (the agent's root, as /proc/PID/root) but no device other
    than the harmless ones.

    The kernel opens each file the agent opens in that thread, before any
    decision: a device's driver would run there (a watchdog armed, a tape
    rewound).  Granted: beneath every entry of the root but /dev and /proc,
    /dev/shm, and the harmless devices themselves (every mount but /dev is
    nodev, `namespaces.devices_only_in_dev`).  Any other device open is
    refused by the kernel before its driver runs, and so is a read of what
    is made at the top of the root later.
    """
    ruleset_fd = _create_ruleset(_RulesetAttr(FS_READ_FILE, 0, 0), landlock_abi())
    try:
        granted = [
            f"{root}/{name}" for name in sorted(os.listdir(root)) if name not in ("dev", "proc")
        ]
        granted += [f"{root}/dev/shm", *(f"{root}/dev/{name}" for name in HARMLESS_DEVICES)]
        for path in granted:
            try:
                path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                st = os.fstat(path_fd)
                name = path.rsplit("/", 1)[1]
                if stat.S_ISLNK(st.st_mode):
                    continue  # where it leads is granted by its own name
                harmless = (
                    path.startswith(f"{root}/dev/")
                    and stat.S_ISCHR(st.st_mode)
                    and HARMLESS_DEVICES.get(name) == st.st_rdev
                )
                if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and not harmless:
                    continue
                attr = _PathBeneathAttr(allowed_access=FS_READ_FILE, parent_fd=path_fd)
                _add_rule(ruleset_fd, _LANDLOCK_RULE_PATH_BENEATH, attr, path)
            finally:
                os.close(path_fd)
    except BaseException:
        os.close(ruleset_fd)
        raise
    return ruleset_fd


def _create_ruleset(attr: _RulesetAttr, abi: int) -> int:
    ruleset_fd = int(
        _syscall(
            ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
            ctypes.byref(attr),
            ctypes.c_size_t(_ruleset_size(abi)),
            ctypes.c_uint32(0),
        )
    )
    if ruleset_fd < 0:
        raise _fail("landlock_create_ruleset")
    return ruleset_fd


def _restrict_self(ruleset_fd: int) -> None:
    if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")
    rc = _syscall(
        ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF),
        ctypes.c_int(ruleset_fd),
        ctypes.c_uint32(0),
    )
    if rc < 0:
        raise _fail("landlock_restrict_self")
