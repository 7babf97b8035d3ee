"""`agentsup doctor`: the layers this host gives an agent, and what a missing one costs.

The command runs for real; this machine (CI's) has every layer.  A normal
user's view is probed in a child that became `nobody`.  The verdict and
the exit code for a host that lacks layers are checked on made-up facts.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from agentsup.cli import doctor
from agentsup.supervision import layers
from agentsup.supervision.layers import Layer

LAYERS = [
    "seccomp_notify",
    "seccomp_addfd",
    "seccomp_continue",
    "landlock",
    "user_namespace",
    "mount_namespace",
    "pid_namespace",
    "uts_namespace",
    "ipc_namespace",
    "net_namespace",
    "cgroup",
    "capabilities",
    "pty",
    "native_path",
    "read_lane",
]
NOBODY = 65534
_PR_SET_DUMPABLE = 4


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentsup", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.requires_cgroup
def test_json_names_every_layer_and_here_all_are_available() -> None:
    result = _doctor("--json")
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert list(document["layers"]) == LAYERS
    for name, fields in document["layers"].items():
        assert set(fields) == {"available", "needed", "degrade", "detail", "cost"}, name
        assert fields["available"] is True, (name, fields["detail"])
        assert fields["cost"] == ""
    assert document["ok"] is True and document["refused_without"] == []
    assert document["uid"] == os.geteuid()
    # As root a run makes no user namespace, and a pty is never required.
    assert document["layers"]["user_namespace"]["needed"] is False
    assert document["layers"]["pty"]["needed"] is False
    # The native path is a speed-up: a run never needs it.
    assert document["layers"]["native_path"]["needed"] is False
    assert document["layers"]["native_path"]["detail"].startswith("native")
    assert document["layers"]["net_namespace"]["degrade"] == "net"
    assert document["layers"]["seccomp_notify"]["degrade"] is None


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.requires_cgroup
def test_text_is_a_table_and_a_verdict() -> None:
    result = _doctor()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("agentsup doctor: Linux ")
    assert lines[2].split() == ["LAYER", "STATE", "DETAIL"]
    rows = {line.split()[0]: line.split()[1] for line in lines[3:] if line and line[0] != " "}
    assert {name: rows.get(name) for name in LAYERS} == dict.fromkeys(LAYERS, "ok")
    assert lines[-1] == "A default `agentsup run` has every layer it needs here."


def _as_nobody() -> dict[str, Any]:
    """Probe in a child that dropped to `nobody` (dumpable again, as after an exec)."""

    def probe() -> dict[str, object]:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
        return {layer.name: layer.as_dict() for layer in layers.probe(refresh=True)}

    return layers.in_child(probe, timeout=30)


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
def test_a_normal_user_gets_every_namespace_through_a_user_namespace() -> None:
    layers.probe()  # pyseccomp is loaded before the child drops root
    found = _as_nobody()
    for name in ("user", "mount", "pid", "uts", "ipc", "net"):
        entry = found[f"{name}_namespace"]
        assert (entry["available"], entry["needed"]) == (True, True), (name, entry)
    for name in ("seccomp_notify", "seccomp_addfd", "seccomp_continue", "capabilities"):
        assert found[name]["available"] is True, (name, found[name])
    assert "user namespace" in str(found["capabilities"]["detail"])
    # A normal user's run goes on without a cgroup, so it is never needed.
    assert found["cgroup"]["needed"] is False


def _layer(name: str, available: bool, needed: bool = True, degrade: str | None = None) -> Layer:
    cost = "" if available else layers.COSTS[name]
    return Layer(name, available, needed, degrade, "why" if not available else "works", cost)


def _run_doctor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], found: list[Layer]
) -> tuple[int, str]:
    monkeypatch.setattr(doctor, "probe", lambda: found)
    code = doctor.cmd_doctor(argparse.Namespace(json=False))
    return code, capsys.readouterr().out


def test_a_missing_needed_layer_exits_1_and_names_the_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    found = [
        _layer("seccomp_notify", True),
        _layer("pid_namespace", False, degrade="pid"),
        _layer("net_namespace", False, degrade="net"),
        _layer("pty", False, needed=False),
    ]
    code, out = _run_doctor(monkeypatch, capsys, found)
    assert code == doctor.EXIT_MISSING
    assert re.search(r"^pid_namespace +MISSING +why$", out, re.M)
    assert re.search(r"^pty +missing \(optional\) +why$", out, re.M)
    assert f"cost: {layers.COSTS['pid_namespace']}" in out
    assert "/proc/PID/environ" in out
    assert out.splitlines()[-1] == (
        "A default `agentsup run` refuses to start here: pid_namespace, net_namespace missing; "
        "`--allow-degraded pid --allow-degraded net` runs it without them, at the costs above."
    )


def test_without_seccomp_notification_no_option_helps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run_doctor(monkeypatch, capsys, [_layer("seccomp_notify", False)])
    assert code == doctor.EXIT_MISSING
    assert out.splitlines()[-1].endswith("no option runs it without them.")


def test_only_optional_layers_missing_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    found = [_layer("landlock", True), _layer("cgroup", False, needed=False, degrade="cgroup")]
    code, out = _run_doctor(monkeypatch, capsys, found)
    assert code == doctor.EXIT_OK
    assert "cost: no writable cgroup" in out


def test_every_layer_has_a_cost_line() -> None:
    assert set(layers.COSTS) == set(LAYERS)
    assert all(len(cost.splitlines()) == 1 for cost in layers.COSTS.values())


def test_host_layers_probe_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    first = layers.host_layers()
    assert list(first) == LAYERS

    def no_more_forks(*_args: object, **_kwargs: object) -> dict[str, str]:
        raise AssertionError("probed again")

    monkeypatch.setattr(layers, "in_child", no_more_forks)
    monkeypatch.setattr(layers.AgentCgroup, "create", no_more_forks)
    started = time.perf_counter()
    assert layers.host_layers() == first
    assert time.perf_counter() - started < 0.05


def test_probes_leave_no_fd_and_no_child() -> None:
    layers.probe()  # modules loaded, so only the probe itself is compared
    fds = sorted(os.listdir("/proc/self/fd"))
    layers.probe(refresh=True)
    assert sorted(os.listdir("/proc/self/fd")) == fds
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_hung_probe_is_killed_and_reported() -> None:
    def hang() -> dict[str, str]:
        time.sleep(60)
        return {}

    started = time.monotonic()
    found = layers.in_child(hang, timeout=0.3)
    assert "longer than 0.3 s" in found["error"]
    assert time.monotonic() - started < 5
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
