"""Pure tests of the Landlock floor planner: a fake directory tree, no kernel."""

from __future__ import annotations

from typing import Any

import pytest

from agentsup.policy.floor import (
    EXEC_RIGHTS,
    FILE_RIGHTS,
    FS_IOCTL_DEV,
    FS_REFER,
    FS_TRUNCATE,
    NET_BIND_TCP,
    NET_CONNECT_TCP,
    READ_RIGHTS,
    SCOPE_ABSTRACT_UNIX_SOCKET,
    SCOPE_SIGNAL,
    WRITE_RIGHTS,
    FloorPlan,
    fs_rights_for_abi,
    plan_floor,
    punch,
)

TREE = {
    "/": ["bin", "etc", "var", "home", "dev", "usr"],
    "/var": ["log", "lib", "tmp"],
    "/var/log": ["agentsup", "syslog"],
    "/var/lib": ["agentsup", "dpkg"],
    "/etc": ["agentsup", "passwd"],
    "/etc/agentsup": ["policies"],
    "/home": ["alice"],
    "/home/alice": ["work", "notes"],
}


def fake_listdir(path: str) -> list[str]:
    if path in TREE:
        return list(TREE[path])
    if path in {"/etc/passwd", "/var/log/syslog"}:
        raise NotADirectoryError(20, "Not a directory", path)
    raise FileNotFoundError(2, "No such file or directory", path)


def plan(**overrides: Any) -> FloorPlan:
    kwargs: dict[str, Any] = {
        "read_roots": None,
        "write_roots": (),
        "exec_roots": None,
        "connect_ports": None,
        "bind_ports": None,
        "no_write": (),
        "no_read": (),
        "abi": 7,
        "listdir": fake_listdir,
    }
    kwargs.update(overrides)
    return plan_floor(**kwargs)


def rules(p: FloorPlan) -> dict[str, int]:
    return dict(p.fs_rules)


def without_devices(p: FloorPlan) -> dict[str, int]:
    return {path: m for path, m in p.fs_rules if not path.startswith("/dev/")}


def test_abi_masks() -> None:
    assert fs_rights_for_abi(0) == 0
    assert fs_rights_for_abi(1) == (1 << 13) - 1
    assert fs_rights_for_abi(2) & FS_REFER
    assert not fs_rights_for_abi(2) & FS_TRUNCATE
    assert fs_rights_for_abi(3) & FS_TRUNCATE
    assert not fs_rights_for_abi(4) & FS_IOCTL_DEV
    assert fs_rights_for_abi(5) & FS_IOCTL_DEV
    assert fs_rights_for_abi(7) == (1 << 16) - 1


def test_unknown_rights_are_masked_out_for_old_abi() -> None:
    p = plan(abi=1, write_roots=("/home/alice/work",), connect_ports=frozenset({443}))
    assert p.handled_fs == fs_rights_for_abi(1)
    assert p.handled_net == 0
    assert p.scoped == 0
    assert p.net_rules == ()
    for _, mask in p.fs_rules:
        assert mask & ~fs_rights_for_abi(1) == 0
    assert any("ABI 4" in gap for gap in p.gaps)
    assert any("ABI 6" in gap for gap in p.gaps)


def test_everything_readable_workspace_writable() -> None:
    p = plan(write_roots=("/home/alice/work",))
    got = without_devices(p)
    assert got == {"/": READ_RIGHTS | EXEC_RIGHTS, "/home/alice/work": WRITE_RIGHTS | FS_IOCTL_DEV}
    assert p.scoped == SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    assert p.gaps == ()


def test_write_root_slash_punches_hole_along_protected_path() -> None:
    p = plan(write_roots=None, no_write=("/var/log/agentsup",))
    writable = {path for path, m in p.fs_rules if m & WRITE_RIGHTS}
    expected = {
        "/bin", "/etc", "/home", "/dev", "/usr",  # every entry of / except /var
        "/var/lib", "/var/tmp",  # every entry of /var except /var/log
        "/var/log/syslog",  # every entry of /var/log except agentsup
    }  # fmt: skip
    # The devices always allowed are writable too.
    assert writable - {path for path in writable if path.startswith("/dev/")} == expected
    assert "/" not in writable and "/var" not in writable and "/var/log/agentsup" not in writable
    # Reading is not affected by a no_write path.
    assert rules(p)["/"] & READ_RIGHTS == READ_RIGHTS


def test_no_read_removes_every_right() -> None:
    p = plan(write_roots=("/var",), no_read=("/var/lib/agentsup",))
    got = without_devices(p)
    assert "/" not in got
    assert "/var/lib/agentsup" not in got
    assert not any(path.startswith("/var/lib/agentsup") for path in got)
    assert got["/var/lib/dpkg"] == READ_RIGHTS | EXEC_RIGHTS | WRITE_RIGHTS | FS_IOCTL_DEV
    assert got["/etc"] == READ_RIGHTS | EXEC_RIGHTS
    assert got["/var/log"] & WRITE_RIGHTS == WRITE_RIGHTS


def test_protected_root_itself_gets_nothing() -> None:
    p = plan(write_roots=("/etc/agentsup",), no_write=("/etc/agentsup",))
    assert not any(m & WRITE_RIGHTS for path, m in p.fs_rules if path.startswith("/etc"))


def test_protected_path_outside_roots_changes_nothing() -> None:
    a = plan(write_roots=("/home/alice/work",), no_write=("/var/log/agentsup",))
    b = plan(write_roots=("/home/alice/work",))
    assert a == b


def test_missing_protected_path_still_gets_a_hole() -> None:
    # /home/alice/work/.agentsup does not exist yet: its parent is listed and
    # split, so creating it later stays out of reach.
    p = plan(write_roots=("/home/alice",), no_write=("/home/alice/notes/x",))
    got = without_devices(p)
    assert "/home/alice" not in got or not got["/home/alice"] & WRITE_RIGHTS
    assert got["/home/alice/work"] & WRITE_RIGHTS
    assert "/home/alice/notes" not in got or not got["/home/alice/notes"] & WRITE_RIGHTS


def test_unlistable_directory_is_left_out() -> None:
    assert punch("/nowhere", ["/nowhere/x"], fake_listdir) == []
    # A file cannot hold the protected path, so it is granted whole.
    assert punch("/etc/passwd", ["/etc/passwd/x"], fake_listdir) == ["/etc/passwd"]


def test_punch_paths_are_normalised() -> None:
    p = plan(write_roots=("/var/./log/",), no_write=("/var/log//agentsup/",))
    writable = {path for path, m in p.fs_rules if m & WRITE_RIGHTS and not path.startswith("/dev")}
    assert writable == {"/var/log/syslog"}


def test_relative_paths_are_rejected() -> None:
    with pytest.raises(ValueError, match="absolute"):
        plan(write_roots=("work",))


def test_read_roots_include_exec_roots() -> None:
    p = plan(read_roots=("/etc",), exec_roots=("/usr",))
    got = without_devices(p)
    assert got == {"/etc": READ_RIGHTS, "/usr": READ_RIGHTS | EXEC_RIGHTS}


def test_exec_root_none_makes_everything_readable() -> None:
    p = plan(read_roots=("/etc",), exec_roots=None)
    assert rules(p)["/"] == READ_RIGHTS | EXEC_RIGHTS


def test_devices_always_allowed_with_file_rights() -> None:
    p = plan(read_roots=(), exec_roots=(), write_roots=())
    got = rules(p)
    for device in ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random"):
        assert got[device] & ~FILE_RIGHTS == 0
        assert got[device] & FS_TRUNCATE  # `> /dev/null` opens with O_TRUNC
    assert got["/dev/tty"] & FS_IOCTL_DEV
    assert set(got) == {
        "/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random", "/dev/tty",
        "/dev/ptmx", "/dev/pts",  # ptys, in the agent's own devpts instance
    }  # fmt: skip


def test_ports() -> None:
    p = plan(connect_ports=frozenset({443, 80}), bind_ports=frozenset({80}))
    assert p.handled_net == NET_CONNECT_TCP | NET_BIND_TCP
    assert p.net_rules == ((80, NET_CONNECT_TCP | NET_BIND_TCP), (443, NET_CONNECT_TCP))


def test_empty_port_set_handles_without_rules_and_none_leaves_unhandled() -> None:
    p = plan(connect_ports=frozenset(), bind_ports=None)
    assert p.handled_net == NET_CONNECT_TCP
    assert p.net_rules == ()


def test_bad_port_rejected() -> None:
    with pytest.raises(ValueError, match="65536"):
        plan(connect_ports=frozenset({65536}))


def test_no_landlock_plan_is_empty() -> None:
    p = plan(abi=0, write_roots=("/home",), connect_ports=frozenset({1}))
    assert (p.handled_fs, p.handled_net, p.scoped, p.fs_rules, p.net_rules) == (0, 0, 0, (), ())
    assert "not available" in p.gaps[0]


def test_plan_is_deterministic_and_describes_itself() -> None:
    kwargs: dict[str, Any] = {"write_roots": None, "no_write": ("/var/log/agentsup",)}
    p = plan(**kwargs, connect_ports=frozenset({443}))
    assert p == plan(**kwargs, connect_ports=frozenset({443}))
    assert [path for path, _ in p.fs_rules] == sorted(path for path, _ in p.fs_rules)
    text = p.describe()
    assert text[0].startswith("landlock abi 7: handled fs=execute,write_file")
    assert "scoped=abstract_unix_socket,signal" in text[0]
    assert "  allow /var/tmp: write_file,remove_dir,remove_file," in "\n".join(text)
    assert "  allow tcp port 443: connect" in text
