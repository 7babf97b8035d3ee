"""The read lane's pure parts: which reads the kernel may take unasked, the
marks' mount list, the filter's rows, and the floor's holes for devices."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from agentsup.kernel import fanotify, seccomp
from agentsup.policy import floor
from agentsup.supervision import readlane


def test_mountinfo_lines_give_each_mount_its_point_device_and_type() -> None:
    text = (
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "40 22 0:5 / /dev rw - devtmpfs udev rw\n"
        "41 22 0:44 / /mnt/with\\040space rw - tmpfs tmpfs rw\n"
        "42 22 0:21 / /proc rw,nosuid - proc proc rw\n"
    )
    mounts = list(fanotify.parse_mountinfo(text))
    assert [m.point for m in mounts] == ["/", "/dev", "/mnt/with space", "/proc"]
    assert mounts[0].device == os.makedev(254, 0)
    assert [m.fstype for m in mounts] == ["ext4", "devtmpfs", "tmpfs", "proc"]


def test_a_line_that_is_no_mountinfo_is_refused() -> None:
    with pytest.raises(ValueError, match="not a mountinfo line"):
        list(fanotify.parse_mountinfo("22 1 254:0 / / rw\n"))


def test_procfs_names_cover_the_top_and_each_sample_process() -> None:
    names = readlane.procfs_names()
    assert "/proc" in names and "/proc/sys/kernel/hostname" in names
    for pid in ("1", "2", "4194304"):
        assert f"/proc/{pid}/environ" in names
        assert f"/proc/{pid}/task/{pid}/environ" in names
        assert f"/proc/{pid}/fd/0" in names
    assert not any(name.startswith(("/proc/self", f"/proc/{os.getpid()}/")) for name in names)


def test_the_first_name_not_plainly_readable_keeps_the_lane_off() -> None:
    names = ["/proc/cpuinfo", "/proc/1/environ", "/proc/2/environ"]
    assert readlane.procfs_refusal(lambda name: True, names) is None
    assert readlane.procfs_refusal(lambda name: "environ" not in name, names) == "/proc/1/environ"


def test_the_lane_is_opt_in_and_shadow_mode_keeps_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def asked() -> readlane.PolicyAnswers:
        raise AssertionError("the policy is not asked when the lane is off anyway")

    everything = frozenset({"mount", "pid", "net"})
    monkeypatch.delenv(readlane.ENV_SWITCH, raising=False)
    off = (False, "off (opt in with AGENTSUP_READ_LANE=1)")
    assert readlane.status(asked, everything, frozenset())[:2] == off
    monkeypatch.setenv(readlane.ENV_SWITCH, "1")
    on, why, _ = readlane.status(asked, everything, frozenset(), shadow=True)
    assert not on and "shadow" in why
    on, why, _ = readlane.status(asked, everything, frozenset({"mount"}))
    assert not on and "mount and PID namespaces" in why


def test_answers_are_kept_for_the_same_policy_and_devices(tmp_path: Path) -> None:
    asked: list[str] = []

    def plainly_reads(name: str) -> bool:
        asked.append(name)
        return not name.startswith("/dev/")

    first = readlane.policy_answers(plainly_reads, tmp_path, "compiled-x")
    count = len(asked)
    assert count > 1000 and first.procfs_refusal is None
    assert first.unread_devices and all(path.startswith("/dev/") for path in first.unread_devices)
    again = readlane.policy_answers(plainly_reads, tmp_path, "compiled-x")
    assert again == first and len(asked) == count  # from the cache: nothing asked
    readlane.policy_answers(plainly_reads, tmp_path, "compiled-y")
    assert len(asked) > count  # another policy is asked again


def _rows(text: str, syscall: str) -> str:
    """The pseudo-filter lines of one syscall."""
    start = text.index(f'"{syscall}"')
    ends = [text.find(mark, start) for mark in ("# filter for syscall", "# default action")]
    return text[start : min(end for end in ends if end > 0)]


def _pfc(kernel_reads: bool) -> str:
    with tempfile.TemporaryFile() as out:
        seccomp.build_filter(["open", "openat"], [], kernel_reads).export_pfc(out)
        out.seek(0)
        return out.read().decode()


def test_with_the_lane_only_opens_that_do_more_than_read_are_notified() -> None:
    flags = (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC, os.O_APPEND, os.O_PATH, 0x400000)
    for syscall, argument in (("open", "$a1"), ("openat", "$a2")):
        rows = _rows(_pfc(True), syscall)  # 0x400000: O_TMPFILE's own bit
        assert rows.count("action 0x7fc00000") == len(flags)  # NOTIFY
        for flag in flags:
            assert f"if ({argument}.lo32 & 0x{flag:08x} == {flag})" in rows
        assert "lo32" not in _rows(_pfc(False), syscall)  # without it: every call


def test_sorted_holes_are_the_holes_of_a_pass_over_every_path() -> None:
    tree = {
        "/": ["dev", "usr", "dev-x"],
        "/dev": ["null", "vda", "vcs", "pts", "disk"],
        "/dev/disk": ["by-id"],
        "/dev/disk/by-id": ["a", "b"],
        "/usr": ["bin"],
    }

    def listdir(path: str) -> list[str]:
        if path not in tree:
            raise NotADirectoryError(path)
        return tree[path]

    protected = ["/dev/vda", "/dev/vcs", "/dev/disk/by-id/b", "/dev-x", "/usr/bin"]
    covered = floor.punch("/", protected, listdir)
    assert covered == ["/dev/disk/by-id/a", "/dev/null", "/dev/pts"]
    assert floor.punch("/dev", ["/dev"], listdir) == []
    assert floor.punch("/usr", ["/dev/vda"], listdir) == ["/usr"]


def test_a_read_of_a_multiply_linked_file_tells_the_broker_the_protected_inodes() -> None:
    """The broker judges a file with other names itself once it knows which
    inodes are protected (until then every read of one, libc where perf keeps
    a hard link in ~/.debug, came to the supervisor at each exec).  The read
    lane tells it, once, as an open through seccomp does."""
    import socket
    import stat

    from agentsup.events import Response
    from agentsup.kernel import fastpath
    from agentsup.supervision import mediator as mediation
    from agentsup.supervision.broker import BrokerClient

    told: list[list[tuple[int, int]]] = []
    answers: list[tuple[int, bool]] = []

    class Protected:
        def get(self, _key: tuple[int, int]) -> str | None:
            return None  # no protected name: judged under its own

        def inodes(self) -> list[tuple[int, int]]:
            return [(1, 2)]

    class Broker:
        def protect(self, inodes: list[tuple[int, int]]) -> None:
            told.append(list(inodes))

        def act(self, _op: int, asked: int, allow: bool) -> None:
            answers.append((asked, allow))

    class Judge:
        allow_cache: set[object] = set()

        def judge_event(self, *_args: object, **_kw: object) -> tuple[None, Response]:
            return None, Response.ALLOW

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        mediator = mediation.Mediator(-1, Judge(), lambda tid: tid, BrokerClient(ours))  # type: ignore[arg-type]
        mediator.broker = Broker()  # type: ignore[assignment]
        mediator.forwarded = object()  # type: ignore[assignment]
        mediator.protected_inodes = Protected()  # type: ignore[assignment]
        for number in (1, 2):
            read = seccomp.Notification(
                (number << 32) | 5,
                os.getpid(),
                fastpath.FAN_READ,
                0,
                (3, 4, stat.S_IFREG | 0o755, 2, 0, 0),  # dev, ino, mode, two names, no error
                fastpath.NOTICE_FAN_READ,
                b"/usr/lib/x86_64-linux-gnu/libc.so.6",
            )
            mediator._fan_read(read)
    assert told == [[(1, 2)]]
    assert answers == [((1 << 32) | 5, True), ((2 << 32) | 5, True)]
