"""Extended attributes, times and inode flags are decided like chmod and writes.

A uid-0 agent with no capabilities still owns root's files, and the kernel
lets an owner set their `user.*` attributes, their times and flags such as
`nodump`.  So these calls are mediated: xattrs and FS_IOC_SETFLAGS as
`file_chmod`, times as `file_write`, on the real path, and the broker does
an allowed one with the agent's rights.  Outside the write roots nothing
changes; in the workspace `touch`, `cp -p` and friends keep working.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AGENTS, Sandbox, agent_reports

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

ATTACK = "attack.py"
XATTR = "user.agentsup-test"
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_GETVERSION = 0x80087601
FS_NODUMP_FL = 0x40

READER = """
name: reader
extends: [strict]
rules:
  - id: read-victim
    actions: [file_read]
    target: "{victim}/**"
    decision: allow
    priority: 5
"""


@pytest.fixture
def attacker(sandbox: Sandbox) -> Sandbox:
    shutil.copy(AGENTS / ATTACK, sandbox.workspace / ATTACK)
    return sandbox


@pytest.fixture
def victim() -> Iterator[Path]:
    """A root-owned file outside every write root and the agent's private /tmp and /run."""
    directory = Path(tempfile.mkdtemp(prefix="agentsup-victim-", dir="/var/lib"))
    path = directory / "victim.txt"
    path.write_text("root's own\n")
    os.setxattr(path, "user.planted", b"by the test")
    os.utime(path, (1_000_000, 1_000_000))
    try:
        yield path
    finally:
        shutil.rmtree(directory)


def _flags(path: Path, request: int = FS_IOC_GETFLAGS) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, request, buf)
        return int(struct.unpack_from("<i", buf)[0])
    finally:
        os.close(fd)


def _metadata(path: Path) -> tuple[object, ...]:
    st = os.stat(path)
    xattrs = {name: os.getxattr(path, name) for name in os.listxattr(path)}
    generation = _flags(path, FS_IOC_GETVERSION)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, xattrs, _flags(path), generation


def test_metadata_of_a_file_outside_the_write_roots_stays_as_it_was(
    attacker: Sandbox, victim: Path
) -> None:
    before = _metadata(victim)
    path = str(victim)
    by_path = ["setxattr", "lsetxattr", "removexattr", "setxattrat", "removexattrat"]
    by_path += ["utime", "utimes", "futimesat", "utime_old", "touch"]
    # Red team 33: the inode's generation number (FS_IOC_SETVERSION) too.
    by_fd = ["fsetxattr", "futimens", "chattr", "setversion", "setversion_ext4"]
    chained: list[str] = []
    for op in by_path + by_fd:
        chained += [*(["then"] if chained else []), op, path]
    # The agent may read the file (so it holds an fd to it), nothing more.
    policy = attacker.policy("reader", READER.replace("{victim}", str(victim.parent)))
    result = attacker.run("python3", ATTACK, *chained, policy=policy)
    reports = {str(r["op"]): r for r in agent_reports(result.stdout)}
    assert set(reports) == set(by_path + by_fd), result.stderr[-2000:]
    for op, report in reports.items():
        assert report["result"] == "EACCES", (op, report)
    assert _metadata(victim) == before
    decided = {
        (r["syscall"], r["action_type"])
        for r in attacker.audit_records()
        if r.get("kind") == "decision" and r.get("target") == path
    }
    for syscall in ("setxattr", "lsetxattr", "removexattr", "fsetxattr", "ioctl"):
        assert (syscall, "file_chmod") in decided, (syscall, decided)
    for syscall in ("utimensat", "utimes", "futimesat", "utime"):
        assert (syscall, "file_write") in decided, (syscall, decided)


def test_metadata_in_the_workspace_is_set_with_the_agents_rights(attacker: Sandbox) -> None:
    target = attacker.workspace / "mine.txt"
    target.write_text("mine\n")
    os.utime(target, (1_000_000, 1_000_000))
    link = attacker.workspace / "link"
    link.symlink_to(target)
    path = str(target)
    ops = ["setxattr", path, "then", "futimens", path, "then", "chattr", path]
    ops += ["then", "utimes", path, "then", "lsetxattr", str(link)]
    result = attacker.run("python3", ATTACK, *ops)
    reports = {str(r["op"]): r for r in agent_reports(result.stdout)}
    for op in ("setxattr", "futimens", "chattr", "utimes"):
        assert reports[op]["result"] == "ok", (op, reports[op], result.stderr[-2000:])
    # user.* attributes cannot live on a symlink: the kernel's own answer.
    assert reports["lsetxattr"]["result"] == "EPERM", reports["lsetxattr"]
    assert os.getxattr(target, "user.agentsup-test") == b"1"
    assert os.stat(target).st_mtime == 1  # utimes, the last one
    assert _flags(target) & FS_NODUMP_FL
    # A removal, touch (NULL times: now) and `cp -p` (utimensat and xattrs) work too.
    result = attacker.run("/bin/sh", "-c", f"touch {path} && cp -p {path} copy.txt && echo copied")
    assert result.stdout.strip() == "copied", result.stderr
    assert os.stat(target).st_mtime > 1_000_000
    assert os.stat(attacker.workspace / "copy.txt").st_mtime_ns == os.stat(target).st_mtime_ns
    result = attacker.run("python3", ATTACK, "removexattr", path)
    (report,) = agent_reports(result.stdout)
    assert report["result"] == "ok", result.stderr
    assert os.listxattr(target) == []
