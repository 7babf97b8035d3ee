"""The seccomp program is built once by the supervisor and loaded raw by the agent.

`filter_program` is libseccomp's own export of `build_filter`, kept in the
state directory's cache; `install_program` loads it with no_new_privs and
seccomp(SECCOMP_SET_MODE_FILTER, NEW_LISTENER), as libseccomp's load does,
without importing pyseccomp in the forked child.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agentsup.kernel import seccomp
from agentsup.policy.cachefiles import CACHE_DIR_NAME, BadEntry, read_entry
from agentsup.supervision.layers import in_child
from agentsup.supervision.syscalls import ALWAYS_REFUSED, FORCED_ENOSYS, MEDIATED

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYS_CLONE3 = 435  # the same on every architecture since Linux 5.3

NOTIFY = list(MEDIATED + ALWAYS_REFUSED)
ENOSYS = list(FORCED_ENOSYS)


def _libseccomp_export(notify: list[str], enosys: list[str]) -> bytes:
    with tempfile.TemporaryFile() as out:
        seccomp.build_filter(notify, enosys).export_bpf(out)
        out.seek(0)
        return out.read()


def test_the_program_is_what_libseccomp_exports() -> None:
    program = seccomp.filter_program(NOTIFY, ENOSYS)
    assert program.bpf == _libseccomp_export(NOTIFY, ENOSYS)
    assert program.seccomp_nr == seccomp._number("seccomp") > 0
    assert seccomp.syscall_numbers(NOTIFY) == {
        nr: name for name, nr in program.numbers.items() if nr >= 0 and name in NOTIFY
    }


def test_the_program_comes_from_the_cache_the_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = seccomp.filter_program(NOTIFY, ENOSYS, tmp_path)
    [entry] = (tmp_path / CACHE_DIR_NAME).glob("seccomp-*")
    assert entry.stat().st_mode & 0o777 == 0o600

    def no_build(*_args: object) -> seccomp.FilterProgram:
        raise AssertionError("built again")

    monkeypatch.setattr(seccomp, "_build_program", no_build)
    assert seccomp.filter_program(NOTIFY, ENOSYS, tmp_path) == first
    # Other lists are another entry.
    with pytest.raises(AssertionError):
        seccomp.filter_program(NOTIFY[:-1], ENOSYS, tmp_path)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda path: path.write_bytes(path.read_bytes().replace(b'"seccomp_nr":', b'"x":')),
        lambda path: path.chmod(0o604),
        lambda path: path.write_bytes(path.read_bytes()[:100]),
    ],
    ids=["altered", "open-to-others", "truncated"],
)
def test_a_bad_program_entry_is_built_again(tmp_path: Path, spoil: Any) -> None:
    first = seccomp.filter_program(NOTIFY, ENOSYS, tmp_path)
    [entry] = (tmp_path / CACHE_DIR_NAME).glob("seccomp-*")
    spoil(entry)
    with pytest.raises(BadEntry):
        read_entry(entry)
    assert seccomp.filter_program(NOTIFY, ENOSYS, tmp_path) == first
    read_entry(entry)  # whole again


def test_a_well_formed_entry_that_is_no_program_is_refused(tmp_path: Path) -> None:
    for document in (
        {"format": 1, "bpf": "00" * 7, "seccomp_nr": 317, "numbers": {}},
        {"format": 1, "bpf": "00" * 8 * 5000, "seccomp_nr": 317, "numbers": {}},
        {"format": 1, "bpf": "zz", "seccomp_nr": 317, "numbers": {}},
        {"format": 1, "bpf": "00" * 8, "seccomp_nr": -1, "numbers": {}},
        {"format": 1, "bpf": "00" * 8, "seccomp_nr": 317, "numbers": {"x": "1"}},
    ):
        with pytest.raises(BadEntry):
            seccomp._program_from(document)


def _filtered() -> dict[str, object]:
    """In a child: load the program raw, then see what it does."""
    program = seccomp.filter_program(["umask"], ["clone3"])
    listener = seccomp.install_program(program)
    status = dict(
        line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
    )
    found: dict[str, object] = {
        "no_new_privs": status["NoNewPrivs"].strip(),
        "seccomp": status["Seccomp"].strip(),
    }
    found["clone3"] = ctypes.get_errno() if _libc.syscall(_SYS_CLONE3, None, 0) < 0 else 0
    pid = os.fork()
    if pid == 0:  # the grandchild: its umask is notified to the listener
        os.umask(0o22)
        os._exit(0)
    if select.select([listener], [], [], 10)[0]:
        notification = seccomp.receive(listener)
        assert notification is not None
        found["notified"] = notification.nr == program.numbers["umask"]
        seccomp.respond_continue(listener, notification.id)
    found["grandchild"] = os.waitpid(pid, 0)[1]
    return found


@pytest.mark.requires_seccomp_notify
def test_the_raw_load_installs_the_filter_with_a_listener() -> None:
    found = in_child(_filtered)
    assert found == {
        "no_new_privs": "1",
        "seccomp": "2",
        "clone3": errno.ENOSYS,
        "notified": True,
        "grandchild": 0,
    }


@pytest.mark.requires_seccomp_notify
def test_a_program_the_kernel_refuses_fails_closed() -> None:
    bad = seccomp.FilterProgram(b"\xff" * 8, seccomp._number("seccomp"), {})
    found = in_child(lambda: {"fd": seccomp.install_program(bad)})
    assert "EINVAL" in str(found.get("error")) or "Invalid argument" in str(found.get("error"))
    assert os.path.exists("/proc/self/status")  # nothing installed here
