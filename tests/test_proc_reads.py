"""Reading /proc files the cheap way (three syscalls) still reads all of them."""

from __future__ import annotations

import os
import subprocess
import sys

from agentsup.kernel import proc


def test_a_status_field_is_the_value_after_its_name() -> None:
    pid = os.getpid()
    assert proc.status_field(pid, b"Tgid") == str(pid).encode()
    assert proc.thread_group_id(pid) == pid
    assert proc.process_umask(pid) == _own_umask()
    assert proc.status_field(pid, b"NoSuchField") is None


def test_a_process_that_is_gone_gives_the_documented_fallbacks() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert proc.thread_group_id(child.pid) == child.pid
    assert proc.process_state(child.pid) == ""
    assert proc.process_group(child.pid) == 0


def test_a_command_line_longer_than_one_read_comes_whole() -> None:
    """More than one read (64 KiB) of a process's memory: every part is read."""
    long_arguments = ["x" * 40_000, "y" * 40_000, "z" * 40_000]
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print(); sys.stdin.read()", *long_arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()  # its exec is complete (Popen returns before the argv is set up)
        data = proc.read_proc(f"/proc/{child.pid}/cmdline", until_eof=True)
    finally:
        child.communicate(b"")
    assert data.split(b"\0")[-4:-1] == [a.encode() for a in long_arguments]


def _own_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
