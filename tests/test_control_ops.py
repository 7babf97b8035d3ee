"""The control socket as operators meet it: busy, hung and idle peers, bad codes."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from test_control import FakeAPI, Harness

from agentsup.control import channel
from agentsup.control.channel import (
    MAX_CONNECTIONS,
    ControlServer,
    RuntimeDirError,
    SupervisorBusy,
    request,
)
from agentsup.integrity.totp import TotpVerifier, init_secret
from agentsup.paths import Locations, default_locations
from agentsup.supervision.loop import EventLoop


@pytest.fixture
def locs(locations: Path) -> Locations:
    return default_locations()


@pytest.fixture
def harness(locs: Locations) -> Iterator[Harness]:
    h = Harness(locs.runtime_dir, locs)
    yield h
    h.close()


def agentsup(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentsup", *args], capture_output=True, text=True, timeout=60
    )


def test_an_idle_connection_is_dropped_by_the_loop_alone(
    locs: Locations, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel, "CONNECTION_TIMEOUT_S", 0.3)
    loop = EventLoop()
    server = ControlServer(
        locs.runtime_dir,
        FakeAPI(),
        TotpVerifier(locs),
        owner_uid=0,
        clock=loop.clock,
        call_later=loop.call_later,
    )
    loop.attach(server)
    loop.call_later(5, lambda: None)  # without the server's own timer the test still ends
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.connect(str(server.path))
            idle.sendall(b'{"v": 1, "op": "p')  # half a request, then nothing
            deadline = time.monotonic() + 5
            loop.run_until(lambda: len(server.fds()) == 3 or time.monotonic() > deadline)
            # Nothing else happens on the socket: only the timer can end it.
            loop.run_until(lambda: len(server.fds()) == 2 or time.monotonic() > deadline)
            assert len(server.fds()) == 2  # the listener and the wake-up pipe
            idle.settimeout(1)
            assert idle.recv(10) == b""
        # The freed slot (and fd number) serves the next client.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(server.path))
            client.sendall(b'{"v": 1, "op": "ps"}\n')
            answered = lambda: bool(select.select([client], [], [], 0)[0])  # noqa: E731
            loop.run_until(lambda: answered() or time.monotonic() > deadline + 5)
            client.settimeout(5)
            assert json.loads(client.makefile("rb").readline())["ok"] is True
    finally:
        server.close()
        loop.close()


def test_a_full_supervisor_answers_busy(harness: Harness) -> None:
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in idle:
            sock.connect(str(harness.server.path))
        deadline = time.monotonic() + 5
        while len(harness.server.fds()) < MAX_CONNECTIONS + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(SupervisorBusy, match="busy"):
            request(harness.server.path, {"op": "ps"}, timeout=5)
        listed = agentsup("ps", "--json")
        assert listed.returncode == 1
        [entry] = json.loads(listed.stdout)
        assert entry["state"] == "busy" and entry["supervisor_pid"] == os.getpid()
        table = agentsup("ps")
        assert f"busy: supervisor pid {os.getpid()}" in table.stdout
    finally:
        for sock in idle:
            sock.close()


def test_a_hung_supervisor_is_listed_as_unreachable_with_its_pid(locs: Locations) -> None:
    helper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.bind('{locs.runtime_dir}/sup-' + str(os.getpid()) + '.sock')\n"
            "s.listen(4); print('up', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    locs.runtime_dir.mkdir(parents=True, exist_ok=True)
    try:
        assert helper.stdout is not None and helper.stdout.readline() == "up\n"
        started = time.monotonic()
        result = agentsup("ps")
        assert time.monotonic() - started < 15
        assert result.returncode == 1
        assert f"unreachable: supervisor pid {helper.pid}" in result.stdout
        assert "Traceback" not in result.stderr
    finally:
        helper.send_signal(signal.SIGKILL)
        helper.communicate()


def test_a_socket_nobody_listens_on_is_removed_even_if_its_pid_lives(locs: Locations) -> None:
    locs.runtime_dir.mkdir(parents=True, exist_ok=True)
    stale = locs.runtime_dir / f"sup-{os.getpid()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale))  # bound, never listening: connect is refused
    result = agentsup("ps")
    assert (result.returncode, result.stdout.strip()) == (0, "no supervised agents")
    assert not stale.exists()


def test_a_non_numeric_code_uses_no_attempt(harness: Harness, locs: Locations) -> None:
    init_secret(locs)
    for _ in range(10):
        with pytest.raises(channel.ControlError, match="6 digits; no attempt was used"):
            request(harness.server.path, {"op": "resume", "agent": "a1", "code": "abcdef"})
    good = pyotp.TOTP(locs.totp_secret.read_text().strip()).now()
    assert request(harness.server.path, {"op": "resume", "agent": "a1", "code": good})


def test_an_unusable_runtime_dir_is_one_clear_error(locs: Locations, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RuntimeDirError, match=r"runtime directory .*file/run is unusable"):
        ControlServer(blocker / "run", FakeAPI(), TotpVerifier(locs), owner_uid=0)
