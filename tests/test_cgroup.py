"""cgroup tracking and limits: pure parsing tests, then the real hierarchies."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agentsup.kernel.cgroup import (
    AgentCgroup,
    CgroupMounts,
    CgroupUnavailable,
    Layout,
    choose_layout,
    parse_mountinfo,
    remove_stale_groups,
)

VICTIMS = Path(__file__).parent / "victims"

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 21 0:23 / /sys/fs/cgroup rw,nosuid,nodev shared:9 - cgroup2 cgroup2 rw,nsdelegate
50 22 0:40 / /mnt/with\\040space rw - cgroup cgroup rw,pids
"""


def test_parse_hybrid_mountinfo() -> None:
    mounts = parse_mountinfo(HYBRID)
    assert mounts.v2 == "/sys/fs/cgroup/unified"
    assert dict(mounts.v1) == {"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}


def test_parse_pure_v2_and_escaped_mount_point() -> None:
    mounts = parse_mountinfo(PURE_V2)
    assert mounts.v2 == "/sys/fs/cgroup"
    assert dict(mounts.v1) == {"pids": "/mnt/with space"}


def test_layout_hybrid_without_v2_controllers() -> None:
    layout = choose_layout(parse_mountinfo(HYBRID), ["hugetlb"])
    assert layout == Layout(
        tracking="/sys/fs/cgroup/unified",
        pids="/sys/fs/cgroup/pids",
        pids_v2=False,
        memory="/sys/fs/cgroup/memory",
        memory_v2=False,
    )


def test_layout_pure_v2_prefers_v2_controllers() -> None:
    layout = choose_layout(CgroupMounts("/sys/fs/cgroup", {}), ["cpu", "memory", "pids"])
    assert layout == Layout("/sys/fs/cgroup", "/sys/fs/cgroup", True, "/sys/fs/cgroup", True)


def test_layout_v1_only_tracks_with_pids() -> None:
    layout = choose_layout(CgroupMounts(None, {"pids": "/p"}), [])
    assert (layout.tracking, layout.pids, layout.memory) == ("/p", "/p", None)


def test_layout_without_any_cgroup() -> None:
    with pytest.raises(CgroupUnavailable, match="no cgroup2"):
        choose_layout(CgroupMounts(None, {"memory": "/m"}), [])


def test_bad_name_rejected() -> None:
    with pytest.raises(ValueError, match="bad cgroup name"):
        AgentCgroup.create("a/b")


def test_pure_v2_file_protocol(tmp_path: Path) -> None:
    """Which files a pure v2 layout writes, shown on a plain directory tree.

    This machine is hybrid, so the real v2 controller path cannot run here.
    """
    root = tmp_path / "cg"
    (root / "agentsup").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory pids\n")
    (root / "cgroup.subtree_control").write_text("cpu\n")
    (root / "agentsup" / "cgroup.subtree_control").write_text("")
    group = AgentCgroup.create("a1", mounts=CgroupMounts(str(root), {}))
    assert group.paths == (str(root / "agentsup" / "a1"),)
    assert (root / "cgroup.subtree_control").read_text() == "+pids +memory"
    assert (root / "agentsup" / "cgroup.subtree_control").read_text() == "+pids +memory"
    assert group.set_limits(max_processes=16, memory_mb=64) == []
    assert (root / "agentsup" / "a1" / "pids.max").read_text() == "16"
    assert (root / "agentsup" / "a1" / "memory.max").read_text() == str(64 << 20)


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_groups_of_dead_supervisors_are_removed_and_no_others(tmp_path: Path) -> None:
    parent = tmp_path / "agentsup"
    dead, alive = _dead_pid(), os.getpid()
    names = {
        "gone": f"agent-7-{dead}",
        "nested": f"other-{dead}",
        "alive": f"agent-{alive}",
        "no pid": "agent",
        "file": f"cgroup.procs-{dead}",
    }
    for key, name in names.items():
        if key == "file":
            (parent / name).write_text("")
        else:
            (parent / name).mkdir(parents=True)
    (parent / names["nested"] / "inner").mkdir()
    # ctime cannot be set back: "too young" is a threshold in the future instead.
    assert remove_stale_groups([str(parent)], older_than=3600) == 0
    assert remove_stale_groups([str(parent), str(tmp_path / "missing")], older_than=-1) == 2
    left = {path.name for path in parent.iterdir()}
    assert left == {names["alive"], names["no pid"], names["file"]}


def test_stale_groups_go_a_few_at_a_time(tmp_path: Path) -> None:
    dead = _dead_pid()
    for number in range(5):
        (tmp_path / f"run{number}-{dead}").mkdir()
    assert remove_stale_groups([str(tmp_path)], older_than=-1, limit=3) == 3
    assert remove_stale_groups([str(tmp_path)], older_than=-1, limit=3) == 2
    assert list(tmp_path.iterdir()) == []


# --- the real hierarchies ---------------------------------------------------


@pytest.fixture
def cgroup() -> Iterator[AgentCgroup]:
    group = AgentCgroup.create(f"test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        yield group
    finally:
        group.kill()
        group.wait_empty(5)
        group.remove()
        for path in group.paths:
            assert not os.path.exists(path)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _start_in(group: AgentCgroup, victim: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(VICTIMS / victim)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    group.add(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return proc


def _finish(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_tree_tracking_stop_and_kill(cgroup: AgentCgroup) -> None:
    assert "AgentCgroup(" in repr(cgroup) and cgroup.tracking in repr(cgroup)
    proc = _start_in(cgroup, "cg_tree.py")
    try:
        assert proc.stdout is not None
        listed = [int(p) for p in proc.stdout.readline().split()]
        tree, escaped = set(listed), listed[-1]
        assert len(tree) == 4
        # re-parented: only the cgroup sees it
        assert escaped not in {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        assert cgroup.pids() == tree

        assert cgroup.signal_all(signal.SIGSTOP) == tree
        deadline = time.monotonic() + 2
        while any(_state(p) != "T" for p in tree) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {_state(p) for p in tree} == {"T"}

        cgroup.kill()
        assert cgroup.wait_empty(2)
        assert cgroup.pids() == set()
        proc.wait(2)
        assert proc.returncode == -signal.SIGKILL
    finally:
        _finish(proc)


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_signal_all_on_empty_group(cgroup: AgentCgroup) -> None:
    assert cgroup.signal_all(signal.SIGTERM) == set()
    assert cgroup.wait_empty(0)


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_pids_max_stops_fork_bomb(cgroup: AgentCgroup) -> None:
    assert cgroup.set_limits(max_processes=10, memory_mb=256) == []
    proc = _start_in(cgroup, "cg_forkbomb.py")
    try:
        assert proc.stdout is not None
        forked, failure = map(int, proc.stdout.readline().split())
        # The victim itself counts, so it may fork 9 more.
        assert (forked, failure) == (9, errno.EAGAIN)
        assert proc.wait(5) == 0
    finally:
        _finish(proc)


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_memory_limit_is_written(cgroup: AgentCgroup) -> None:
    assert cgroup.set_limits(max_processes=None, memory_mb=64) == []
    memory_dirs = [p for p in cgroup.paths if "memory" in p]
    limit_files = ("memory.limit_in_bytes", "memory.max")
    values = [
        Path(d, f).read_text().strip()
        for d in memory_dirs
        for f in limit_files
        if Path(d, f).exists()
    ]
    assert values == [str(64 << 20)]


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_v1_only_layout_tracks_with_pids_hierarchy() -> None:
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    if "pids" not in mounts.v1:
        pytest.skip("no cgroup v1 pids hierarchy on this machine")
    group = AgentCgroup.create(f"v1-{os.getpid()}", mounts=CgroupMounts(None, mounts.v1))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert group.tracking.startswith(mounts.v1["pids"])
        group.add(proc.pid)
        assert group.pids() == {proc.pid}
        group.kill()  # no cgroup.kill in v1: the SIGKILL sweep
        assert proc.wait(2) == -signal.SIGKILL
        assert group.wait_empty(2)
    finally:
        proc.kill()
        proc.wait()
        group.remove()
    assert not any(os.path.exists(p) for p in group.paths)


def test_unavailable_when_name_is_taken(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    (root / "agentsup").mkdir()
    (root / "agentsup" / "taken").mkdir()
    (root / "agentsup" / "taken" / "cgroup.procs").write_text("")
    with pytest.raises(CgroupUnavailable, match="already exists and is in use"):
        AgentCgroup.create("taken", mounts=CgroupMounts(str(root), {}))


WAIT_THEN_RUN = "import sys; sys.stdin.readline(); exec(sys.argv[1])"
SERVICE_CHILD = """
import json, os, sys
from agentsup.kernel import cgroup
base = cgroup.delegate_to_service()
group = cgroup.AgentCgroup.create("delegated-agent")
own = open("/proc/self/cgroup").read()
print(json.dumps({"base": base, "tracking": group.tracking, "own": own}))
group.remove()
"""


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_a_delegated_service_keeps_agent_groups_inside_its_own_cgroup() -> None:
    """Under Delegate=yes: the supervisor moves to a leaf and agents go beside it."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    if mounts.v2 is None:
        pytest.skip("no cgroup v2 mount")
    service = Path(mounts.v2) / f"agentsup-test-{os.getpid()}.service"
    service.mkdir()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", WAIT_THEN_RUN, SERVICE_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        (service / "cgroup.procs").write_text(str(child.pid))
        out, _err = child.communicate("go\n", timeout=30)
        report = json.loads(out)
        assert report["base"] == str(service)
        assert report["tracking"] == str(service / "agentsup" / "delegated-agent")
        assert f"/{service.name}/supervisor" in report["own"]
    finally:
        for leaf in (service / "agentsup", service / "supervisor", service):
            with contextlib.suppress(OSError):
                leaf.rmdir()


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_a_leftover_group_goes_but_one_with_a_process_stays(cgroup: AgentCgroup) -> None:
    # Inside a group of the test's own: the host's other groups are not touched.
    dead = _dead_pid()
    leftover = Path(cgroup.tracking, f"leftover-{dead}")
    occupied = Path(cgroup.tracking, f"occupied-{dead}")
    leftover.mkdir()
    occupied.mkdir()
    proc = subprocess.Popen(["sleep", "30"])
    try:
        (occupied / "cgroup.procs").write_text(str(proc.pid))
        assert remove_stale_groups([cgroup.tracking], older_than=-1) == 1
        assert not leftover.exists()
        assert str(proc.pid) in (occupied / "cgroup.procs").read_text().split()
    finally:
        proc.kill()
        proc.wait(5)
        for _ in range(100):
            with contextlib.suppress(OSError):
                occupied.rmdir()
            if not occupied.exists():
                break
            time.sleep(0.01)
