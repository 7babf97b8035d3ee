"""The seccomp filter refuses terminal injection (TIOCSTI, TIOCLINUX) in BPF.

The pseudo-filter text is checked without loading anything; a forked child
then installs the real filter and tries the ioctls, and an end-to-end test
runs an agent on a real pty and looks at the invoking terminal's input queue.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import subprocess
import sys
import tempfile
import termios
import time
import tty
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox

from agentsup.kernel import seccomp
from agentsup.supervision.layers import in_child

_SYS_IOCTL = 16  # x86_64
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _pfc(notify: list[str]) -> str:
    with tempfile.TemporaryFile() as out:
        seccomp.build_filter(notify, ["clone3"]).export_pfc(out)
        out.seek(0)
        return out.read().decode()


def test_the_built_filter_refuses_both_ioctls_with_eperm() -> None:
    text = _pfc(["openat", "umask"])
    ioctl = text[text.index('"ioctl"') :]
    for request in (seccomp.TIOCSTI, seccomp.TIOCLINUX):
        assert f"if ($a1.lo32 & 0xffffffff == {request})" in ioctl
    # Only the low 32 bits count, as in the kernel's `unsigned int cmd`.
    assert "if ($a1.hi32 & 0x00000000 == 0)" in ioctl
    assert ioctl.count(f"action ERRNO({errno.EPERM});") == 2


def test_the_built_filter_refuses_a_file_lease_with_eperm() -> None:
    text = _pfc(["openat"])
    fcntl_rules = text[text.index('"fcntl"') :]
    fcntl_rules = fcntl_rules[: fcntl_rules.index("# ")]
    assert f"if ($a1.lo32 & 0xffffffff == {seccomp.F_SETLEASE})" in fcntl_rules
    assert fcntl_rules.count(f"action ERRNO({errno.EPERM});") == 1


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
def test_a_lease_on_a_file_the_agent_may_only_read_is_refused(tmp_path: Path) -> None:
    """Red team 33: a read lease on a file the agent could only read held a
    host writer of that file for the kernel's lease-break time."""
    target = tmp_path / "config.txt"
    target.write_text("the host's\n")

    def attempt() -> dict[str, int]:
        found = {}
        for name in ("before", "after"):
            fd = os.open(target, os.O_RDONLY)
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                found[name] = 0
            except OSError as exc:
                found[name] = exc.errno or -1
            finally:
                os.close(fd)
            if name == "before":
                os.close(seccomp.load_filter(["umask"], []))
        return found

    assert in_child(attempt) == {"before": 0, "after": errno.EPERM}


def test_the_ioctl_rules_do_not_depend_on_what_is_notified() -> None:
    assert "ERRNO(1)" in _pfc([]) and "ERRNO(1)" in _pfc(["connect"])


def test_only_the_first_calls_of_a_start_up_are_notified() -> None:
    """brk(NULL) and arch_prctl(ARCH_SET_FS), where a new image's exec is
    checked; a malloc's brk(address) and the other arch_prctl codes stay in BPF."""
    text = _pfc(["brk", "arch_prctl"])
    brk = text[text.index('"brk"') :]
    brk = brk[: brk.index("# ")]
    assert "if ($a0.hi32 & 0xffffffff == 0)" in brk  # all 64 bits of the address
    assert "if ($a0.lo32 & 0xffffffff == 0)" in brk
    assert brk.count("action 0x7fc00000") == 1  # NOTIFY
    prctl = text[text.index('"arch_prctl"') :]
    prctl = prctl[: prctl.index("# ")]
    assert f"if ($a0.lo32 & 0xffffffff == {seccomp.ARCH_SET_FS})" in prctl
    assert prctl.count("action 0x7fc00000") == 1


def _raw_ioctl(fd: int, request: int, arg: bytes) -> int:
    """ioctl through syscall(2), so that all 64 bits of `request` reach the kernel."""
    buf = ctypes.create_string_buffer(arg)
    if _libc.syscall(_SYS_IOCTL, fd, ctypes.c_ulong(request), buf) < 0:
        return ctypes.get_errno()
    return 0


def _in_filtered_child(slave: int) -> dict[str, Any]:
    """In a child: try the ioctls before and after loading the filter; the errnos."""

    def attempt() -> dict[str, int]:
        found = {"before": _raw_ioctl(slave, seccomp.TIOCSTI, b"a")}
        listener = seccomp.load_filter(["umask"], [])  # nothing here calls umask
        found["tiocsti"] = _raw_ioctl(slave, seccomp.TIOCSTI, b"b")
        found["tiocsti_high_bits"] = _raw_ioctl(slave, (1 << 32) | seccomp.TIOCSTI, b"c")
        found["tioclinux"] = _raw_ioctl(slave, seccomp.TIOCLINUX, b"\x03")
        found["tiocgwinsz"] = _raw_ioctl(slave, termios.TIOCGWINSZ, bytes(8))
        os.close(listener)
        return found

    return in_child(attempt)


def _queued(fd: int) -> int:
    """Bytes waiting in a terminal's input queue (FIONREAD; whole lines in canonical mode)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0])


@pytest.mark.requires_root  # root may TIOCSTI into any tty: the baseline must succeed
@pytest.mark.requires_seccomp_notify
def test_the_loaded_filter_refuses_them_and_nothing_is_queued() -> None:
    master, slave = os.openpty()
    try:
        tty.setraw(slave)  # FIONREAD counts single bytes, not only whole lines
        found = _in_filtered_child(slave)
        assert found["before"] == 0  # the test can see an injection ...
        assert found["tiocsti"] == errno.EPERM  # ... and the filter stops it
        assert found["tiocsti_high_bits"] == errno.EPERM
        assert found["tioclinux"] == errno.EPERM  # a pty answers ENOTTY/EINVAL, not EPERM
        assert found["tiocgwinsz"] == 0  # other terminal ioctls still work
        time.sleep(0.05)
        assert _queued(slave) == 1  # only the baseline's byte
    finally:
        os.close(master)
        os.close(slave)


_INJECT = (
    "import fcntl, termios\n"
    "try:\n"
    "    for c in b'echo INJECTED\\n':\n"
    "        fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))\n"
    "    print('TIOCSTI accepted')\n"
    "except OSError as exc:\n"
    "    print('TIOCSTI refused', exc.errno)\n"
)


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[str, int, int]:
    """Run `argv` with a fresh pty as its controlling terminal, as `script` does.

    Returns what it printed, its exit code, and the bytes left in the
    terminal's input queue afterwards: what the user's shell would read next.
    """
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        output = bytearray()
        deadline = time.monotonic() + 60
        os.set_blocking(master, False)
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                output += os.read(master, 65536)
            except BlockingIOError:
                time.sleep(0.02)
        code = proc.wait(timeout=5)
        with contextlib.suppress(OSError):  # EIO: every slave fd of the child is closed
            output += os.read(master, 65536)
        return output.decode(errors="replace"), code, _queued(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_an_unsupervised_program_can_inject(sandbox: Sandbox) -> None:
    """The control case: the check below sees an injection when there is one."""
    legacy = Path("/proc/sys/dev/tty/legacy_tiocsti")
    if legacy.exists() and legacy.read_text().strip() == "0" and os.geteuid() != 0:
        pytest.skip("this kernel refuses TIOCSTI to normal users already")
    output, code, queued = _on_a_terminal([sys.executable, "-c", _INJECT], sandbox.env)
    assert (code, "TIOCSTI accepted" in output) == (0, True), output
    assert queued > 0


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_supervised_agent_cannot_inject_into_the_invoking_terminal(sandbox: Sandbox) -> None:
    # `audit` allows everything: what refuses it here is the filter, for every policy.
    argv = sandbox.command(sys.executable, "-c", _INJECT, policy="audit")
    output, code, queued = _on_a_terminal(argv, sandbox.env)
    assert code == 0, output
    assert "TIOCSTI accepted" not in output, output
    assert queued == 0
