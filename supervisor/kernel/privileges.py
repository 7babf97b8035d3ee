"""Capabilities, securebits, no_new_privs and credentials of the calling process.

The agent keeps nothing: `drop_privileges` empties the effective, permitted,
inheritable, ambient and bounding sets, locks securebits so that uid 0
regains nothing on exec, and sets no_new_privs.  It then checks that all of
it stuck, and raises `PrivilegeError` (one line, with the errno) otherwise.
Raw capget/capset: the glibc wrappers act on every thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
from dataclasses import dataclass

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_SYS_CAPGET = 125
_SYS_CAPSET = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_SETPCAP = 8

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_IS_SET = 1
_PR_CAP_AMBIENT_CLEAR_ALL = 4

# <linux/securebits.h>: uid 0 is not special on exec and setuid does not
# touch capabilities, and neither can be turned back on.
SECUREBITS = (
    (1 << 0)  # NOROOT
    | (1 << 1)  # NOROOT_LOCKED
    | (1 << 2)  # NO_SETUID_FIXUP
    | (1 << 3)  # NO_SETUID_FIXUP_LOCKED
    | (1 << 5)  # KEEP_CAPS_LOCKED
    | (1 << 6)  # NO_CAP_AMBIENT_RAISE
    | (1 << 7)  # NO_CAP_AMBIENT_RAISE_LOCKED
)


class PrivilegeError(Exception):
    """A step of dropping privileges failed; `str()` is one line with the errno."""

    def __init__(self, step: str, err: int) -> None:
        self.errno = err or errno.EPERM
        super().__init__(f"{step}: {os.strerror(self.errno)}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc = _prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
    return int(rc)


def cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        cap = 0
        while _prctl(PR_CAPBSET_READ, cap + 1, 0, 0, 0) >= 0:
            cap += 1
        return cap


def capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread, as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.syscall(_SYS_CAPGET, ctypes.byref(header), data) != 0:
        raise PrivilegeError("capget", ctypes.get_errno())
    return (
        data[0].effective | (data[1].effective << 32),
        data[0].permitted | (data[1].permitted << 32),
        data[0].inheritable | (data[1].inheritable << 32),
    )


def bounding_set() -> int:
    mask = 0
    for cap in range(cap_last_cap() + 1):
        if _prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            mask |= 1 << cap
    return mask


@dataclass(frozen=True)
class UserSpec:
    """Who the agent runs as.  Looked up in the supervisor: no NSS after fork."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def lookup_user(name: str) -> UserSpec:
    """KeyError when there is no such user."""
    entry = pwd.getpwnam(name)
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return UserSpec(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def drop_privileges(user: UserSpec | None) -> list[str]:
    """Leave the calling process with no capability it could use or regain.

    Order: securebits (needs CAP_SETPCAP), the user switch (capabilities kept
    thanks to NO_SETUID_FIXUP), the bounding set (CAP_SETPCAP), ambient,
    capset(0), no_new_privs, then a check of all of it.  Without CAP_SETPCAP
    (a normal user without a user namespace) securebits and the bounding set
    cannot change; nothing is held and no_new_privs blocks every gain on
    exec, so that is returned as a note rather than refused.
    """
    notes: list[str] = []
    permitted = capabilities()[1]
    can_setpcap = bool(permitted & (1 << CAP_SETPCAP))
    if can_setpcap:
        if _prctl(PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) != 0:
            raise PrivilegeError("securebits", ctypes.get_errno())
    else:
        notes.append("securebits and bounding set unchanged (no CAP_SETPCAP); nothing is held")
    if user is not None:
        try:
            os.setgroups(list(user.groups))
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
        except OSError as exc:
            raise PrivilegeError(f"switch to user {user.name}", exc.errno or 1) from exc
    if can_setpcap:
        for cap in range(cap_last_cap() + 1):
            if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                err = ctypes.get_errno()
                if err != errno.EINVAL:  # a number this kernel does not know
                    raise PrivilegeError(f"drop capability {cap} from the bounding set", err)
    if _prctl(PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        raise PrivilegeError("clear ambient capabilities", ctypes.get_errno())
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    if _libc.syscall(_SYS_CAPSET, ctypes.byref(header), (_CapData * 2)()) != 0:
        raise PrivilegeError("capset", ctypes.get_errno())
    if _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError("no_new_privs", ctypes.get_errno())
    # Fail closed if anything is left.
    if capabilities() != (0, 0, 0):
        raise PrivilegeError("capabilities still held after capset", errno.EPERM)
    if can_setpcap and bounding_set():
        raise PrivilegeError("bounding set not empty", errno.EPERM)
    if _prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1:
        raise PrivilegeError("no_new_privs did not stick", errno.EPERM)
    return notes


def set_dumpable(dumpable: bool) -> None:
    """A non-dumpable process's /proc files and memory stay out of same-uid reach."""
    prctl(PR_SET_DUMPABLE, int(dumpable))


def die_with_parent(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_name(name: bytes) -> None:
    buffer = ctypes.create_string_buffer(name[:15])
    prctl(PR_SET_NAME, ctypes.addressof(buffer))


def become_subreaper() -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1)
