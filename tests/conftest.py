"""Shared fixtures, and one probe of the kernel's features.

Tests that need a kernel feature are marked (`requires_root`,
`requires_seccomp_notify`, `requires_landlock`, `requires_cgroup`) and skip
with the reason when the feature is missing.  CI runs as root on a kernel
with all of them, so there the whole suite runs.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_CREATE_RULESET_VERSION = 1


def _landlock_abi() -> int:
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return int(abi) if abi > 0 else 0


def _has_seccomp_notify() -> bool:
    # /proc/sys/kernel/seccomp/actions_avail lists "user_notif" when the
    # kernel supports SECCOMP_RET_USER_NOTIF.
    try:
        actions = Path("/proc/sys/kernel/seccomp/actions_avail").read_text().split()
    except OSError:
        return False
    return "user_notif" in actions


def _has_cgroup2() -> bool:
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(root, "cgroup.procs")) and os.access(root, os.W_OK):
            if os.path.exists(os.path.join(root, "cgroup.controllers")):
                return True
    return False


FEATURES = {
    "requires_root": (os.geteuid() == 0, "needs root"),
    "requires_seccomp_notify": (_has_seccomp_notify(), "kernel lacks seccomp user notification"),
    "requires_landlock": (_landlock_abi() >= 1, "kernel lacks Landlock"),
    "requires_cgroup": (_has_cgroup2(), "no writable cgroup v2 hierarchy"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker, (available, reason) in FEATURES.items():
            if item.get_closest_marker(marker) and not available:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every agentsup location at a fresh temporary directory."""
    root = tmp_path / "agentsup"
    for var, sub in (
        ("AGENTSUP_POLICY_DIR", "policies"),
        ("AGENTSUP_AUDIT_LOG", "log/audit.jsonl"),
        ("AGENTSUP_STATE_DIR", "state"),
        ("AGENTSUP_RUNTIME_DIR", "run"),
    ):
        monkeypatch.setenv(var, str(root / sub))
    (root / "policies").mkdir(parents=True)
    yield root
