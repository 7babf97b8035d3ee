"""The floor asked in user space, before the supervisor does file work for the agent."""

from __future__ import annotations

from agentsup.policy.floor import (
    FS_EXECUTE,
    FS_MAKE_REG,
    FS_READ_FILE,
    FS_WRITE_FILE,
    FloorCheck,
    FloorPlan,
    plan_floor,
)


def plan(**roots: tuple[str, ...] | None) -> FloorPlan:
    return plan_floor(
        read_roots=roots.get("read", ()),
        write_roots=roots.get("write", ()),
        exec_roots=roots.get("exec", ()),
        connect_ports=None,
        bind_ports=None,
        no_write=["/var/lib/agentsup"],
        no_read=["/var/lib/agentsup"],
        abi=7,
        listdir=lambda path: {
            "/": ["var", "tmp"],
            "/var": ["lib", "log"],
            "/var/lib": ["agentsup", "dpkg"],
        }.get(path, []),
    )


def test_a_path_beneath_a_granted_root_is_reachable() -> None:
    check = FloorCheck(plan(read=("/srv/ws",), write=("/srv/ws",)))
    assert check.allows("/srv/ws", FS_READ_FILE)
    assert check.allows("/srv/ws/a/b.txt", FS_WRITE_FILE | FS_MAKE_REG)


def test_a_sibling_with_the_same_prefix_is_not() -> None:
    check = FloorCheck(plan(read=("/srv/ws",)))
    assert not check.allows("/srv/ws-other/secret", FS_READ_FILE)
    assert not check.allows("/srv", FS_READ_FILE)


def test_rights_are_per_root() -> None:
    check = FloorCheck(plan(read=("/usr",), exec=("/usr/bin",)))
    assert check.allows("/usr/lib/x.so", FS_READ_FILE)
    assert not check.allows("/usr/lib/x.so", FS_WRITE_FILE)
    assert check.allows("/usr/bin/ls", FS_EXECUTE)
    assert not check.allows("/usr/lib/x.so", FS_EXECUTE)


def test_everything_but_the_punched_out_state_directory() -> None:
    check = FloorCheck(plan(read=None, write=None, exec=None))
    assert check.allows("/tmp/x", FS_READ_FILE)
    assert check.allows("/var/lib/dpkg/status", FS_READ_FILE)
    assert not check.allows("/var/lib/agentsup/audit.key", FS_READ_FILE)
    assert not check.allows("/var/lib/agentsup/audit.key", FS_WRITE_FILE)
