"""Landlock floor on the real kernel: a victim applies a plan and reports errnos."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsup.kernel.landlock import LandlockError, apply_floor, landlock_abi
from agentsup.policy.floor import FloorPlan

VICTIM = Path(__file__).parent / "victims" / "ll_probe.py"

pytestmark = pytest.mark.requires_landlock


def _probe(plan: dict[str, Any], probes: list[tuple[str, str]]) -> list[int]:
    defaults: dict[str, Any] = {
        "read_roots": None,
        "write_roots": [],
        "exec_roots": None,
        "connect_ports": None,
        "bind_ports": None,
        "no_write": [],
        "no_read": [],
    }
    spec = {"plan": {**defaults, **plan}, "probes": probes}
    done = subprocess.run(
        [sys.executable, str(VICTIM), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: list[int] = json.loads(done.stdout)
    return results


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_abi_is_reported() -> None:
    assert landlock_abi() >= 1


def test_exec_outside_exec_roots_is_denied(tmp_path: Path) -> None:
    results = _probe(
        {"exec_roots": [str(tmp_path)], "read_roots": None},
        [("exec", "/bin/true"), ("read", "/bin/true")],
    )
    # Reading the binary still works: only executing it is outside the floor.
    assert results == [errno.EACCES, 0]


def test_exec_inside_exec_roots_works() -> None:
    assert _probe({"exec_roots": ["/"]}, [("exec", "/bin/true")]) == [0]


def test_write_roots_and_punched_hole(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "protected").mkdir(parents=True)
    (work / "sibling").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    results = _probe(
        {"write_roots": [str(work)], "no_write": [str(work / "protected")]},
        [
            ("create", str(elsewhere / "f")),
            ("create", str(work / "sibling" / "f")),
            ("create", str(work / "protected" / "f")),
            # The documented cost of a hole: new entries directly in the parent.
            ("create", str(work / "new-entry")),
            ("read", str(work / "sibling" / "f")),
        ],
    )
    assert results == [errno.EACCES, 0, errno.EACCES, errno.EACCES, 0]
    assert (work / "sibling" / "f").exists()
    assert not (work / "protected" / "f").exists()


def test_no_read_hides_a_path_under_read_root(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("k")
    (tmp_path / "public").write_text("p")
    results = _probe(
        {"no_read": [str(secret)]},
        [("read", str(secret / "key")), ("read", str(tmp_path / "public"))],
    )
    assert results == [errno.EACCES, 0]


def test_devices_stay_usable(tmp_path: Path) -> None:
    results = _probe({"write_roots": []}, [("read", "/dev/null"), ("read", "/dev/urandom")])
    assert results == [0, 0]


@pytest.mark.skipif(landlock_abi() < 4, reason="TCP rules need Landlock ABI 4")
def test_connect_only_to_allowed_ports(listener: int) -> None:
    other = _free_port()
    results = _probe(
        {"connect_ports": [listener]},
        [("connect", str(other)), ("connect", str(listener))],
    )
    assert results == [errno.EACCES, 0]


@pytest.mark.skipif(landlock_abi() < 4, reason="TCP rules need Landlock ABI 4")
def test_allowed_port_without_listener_is_refused_not_denied() -> None:
    port = _free_port()
    assert _probe({"connect_ports": [port]}, [("connect", str(port))]) == [errno.ECONNREFUSED]


@pytest.mark.skipif(landlock_abi() < 6, reason="scoping needs Landlock ABI 6")
def test_cannot_signal_outside_domain() -> None:
    assert _probe({}, [("kill", str(os.getpid()))]) == [errno.EPERM]


@pytest.mark.skipif(landlock_abi() < 6, reason="scoping needs Landlock ABI 6")
def test_cannot_reach_abstract_socket_outside_domain() -> None:
    name = f"agentsup-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("\0" + name)
        server.listen(1)
        assert _probe({}, [("abstract", name)]) == [errno.EPERM]


def test_apply_without_landlock_raises() -> None:
    plan = FloorPlan(abi=0, handled_fs=0, handled_net=0, scoped=0, fs_rules=(), net_rules=())
    with pytest.raises(LandlockError, match="not available"):
        apply_floor(plan)


def test_kernel_rejecting_a_rule_raises_clear_error(tmp_path: Path) -> None:
    # TRUNCATE is not handled at ABI 1, so landlock_add_rule refuses the rule.
    # Run in a child: if the kernel accepted it, this process would be confined.
    code = f"""
from agentsup.kernel.landlock import LandlockError, apply_floor
from agentsup.policy.floor import FS_TRUNCATE, FloorPlan, fs_rights_for_abi
plan = FloorPlan(abi=1, handled_fs=fs_rights_for_abi(1), handled_net=0, scoped=0,
                 fs_rules=(({str(tmp_path)!r}, FS_TRUNCATE),), net_rules=())
try:
    apply_floor(plan)
except LandlockError as exc:
    print(exc)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert f"landlock_add_rule({tmp_path}): Invalid argument" in done.stdout
