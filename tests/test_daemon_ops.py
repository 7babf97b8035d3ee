"""`agentsup daemon` as an operator runs it: reloads, back-off, logs, bad set-ups."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import Sandbox, eventually

from agentsup.control.logs import AgentLogWriter, LogReader, parse_line, read_tail
from agentsup.supervision.daemon import (
    RESTART_FLOOR_S,
    AgentDefinition,
    DefinitionError,
    parse_definition,
    restart_delay,
)
from agentsup.visible import visible_output

# -- pure parts --------------------------------------------------------------------------


def test_restarts_back_off_and_stop_at_the_start_limit() -> None:
    definition = AgentDefinition(
        "a",
        "/bin/false",
        "/tmp",
        restart_delay_seconds=1,
        restart_max_delay_seconds=5,
        start_limit_burst=5,
        start_limit_interval_seconds=100,
    )
    starts: list[float] = []
    delays = []
    now = 0.0
    while True:
        starts.append(now)
        delay = restart_delay(definition, starts, now + 0.5)
        if delay is None:
            break
        delays.append(delay)
        now += 0.5 + delay
    assert delays == [1, 2, 4, 5]  # doubling, capped, then the fifth start was the last
    assert len(starts) == 5
    # Long after, the window is empty again: the first delay once more.
    assert restart_delay(definition, starts, now + 1000) == 1


def test_no_start_limit_with_burst_zero() -> None:
    definition = AgentDefinition("a", "/bin/false", "/tmp", start_limit_burst=0)
    assert restart_delay(definition, [0.0] * 100, 1.0) == definition.restart_max_delay_seconds


def _delays_of_an_agent_that_fails_at_once(
    definition: AgentDefinition, restarts: int
) -> list[float]:
    """The waits `restart_delay` asks for, an agent failing 10 ms after each start."""
    starts: list[float] = []
    delays: list[float] = []
    now = 0.0
    for _ in range(restarts):
        starts.append(now)
        delay = restart_delay(definition, starts, now + 0.01)
        assert delay is not None
        delays.append(delay)
        now += 0.01 + delay
    return delays


def test_a_zero_restart_delay_means_only_the_first_restart_is_at_once() -> None:
    """`restart_delay_seconds: 0` with no start limit restarted a failing agent
    about twice a second, forever: the delay doubled, and 0 doubled is 0.  0
    means the first restart is at once; each further one waits twice the one
    before and at least RESTART_FLOOR_S (systemd's RestartSec= default), up to
    `restart_max_delay_seconds`."""
    definition = AgentDefinition(
        "a",
        "/bin/false",
        "/tmp",
        restart_delay_seconds=0,
        restart_max_delay_seconds=1,
        start_limit_burst=0,
    )
    assert RESTART_FLOOR_S == 0.1
    delays = _delays_of_an_agent_that_fails_at_once(definition, 9)
    assert delays == pytest.approx([0, 0.1, 0.2, 0.4, 0.8, 1, 1, 1, 1])
    # A delay under the floor grows from the floor too; one above it as before.
    small = replace(definition, restart_delay_seconds=0.03)
    assert _delays_of_an_agent_that_fails_at_once(small, 4) == pytest.approx([0.03, 0.1, 0.2, 0.4])
    usual = replace(definition, restart_delay_seconds=0.3, restart_max_delay_seconds=300)
    assert _delays_of_an_agent_that_fails_at_once(usual, 4) == pytest.approx([0.3, 0.6, 1.2, 2.4])


@pytest.mark.parametrize("interval", [0, 0.001, 300])
@pytest.mark.parametrize("ceiling", [0, 0.05, 300])
def test_no_definition_restarts_an_agent_in_a_tight_loop(interval: float, ceiling: float) -> None:
    """Whatever the zeros: no start limit, no window, no maximum delay.  After
    the first restart, a failing agent waits at least RESTART_FLOOR_S."""
    definition = AgentDefinition(
        "a",
        "/bin/false",
        "/tmp",
        restart_delay_seconds=0,
        restart_max_delay_seconds=ceiling,
        start_limit_burst=0,
        start_limit_interval_seconds=interval,
    )
    delays = _delays_of_an_agent_that_fails_at_once(definition, 50)
    assert delays[0] == 0
    assert min(delays[1:]) >= RESTART_FLOOR_S
    if ceiling < 1.0:
        # The backoff climbs to a second whatever the maximum says: ten
        # restarts a second forever is a restart loop too.
        assert delays[-10:] == pytest.approx([1.0] * 10)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id: a/b\n", "invalid agent id 'a/b'"),
        ("start_limit_burst: -1\n", "'start_limit_burst' must be a whole number"),
        ("restart_max_delay_seconds: .nan\n", "'restart_max_delay_seconds' must be a number"),
        ("[1, 2]\n", None),
    ],
)
def test_bad_definitions(tmp_path: Path, text: str, message: str | None) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(
        text if text.startswith("[") else f"program: /bin/true\nworkspace: /tmp\n{text}"
    )
    with pytest.raises(DefinitionError, match=message or "expected a mapping"):
        parse_definition(path)


def test_the_log_writer_prefixes_splits_and_rotates(tmp_path: Path) -> None:
    echoed: list[str] = []
    path = tmp_path / "agents" / "a.log"
    log = AgentLogWriter(path, "a", echo=echoed.append, max_bytes=400)
    log.feed("stdout", b"hel")
    log.feed("stdout", b"lo\nwor")
    log.feed("stderr", b"oops\n")
    log.end("stdout")
    assert echoed == ["[a] hello", "[a stderr] oops", "[a] wor"]
    lines = [parse_line(line) for line in read_tail(path, None)]
    assert [(line["stream"], line["text"]) for line in lines] == [
        ("stdout", "hello"),
        ("stderr", "oops"),
        ("stdout", "wor"),
    ]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    for i in range(20):
        log.feed("stdout", f"line {i}\n".encode())
    log.close()
    assert path.with_name("a.log.1").exists()
    assert read_tail(path, 1)[0].endswith("stdout line 19")
    assert len(read_tail(path, None)) > len(path.read_text().splitlines())


def test_an_agent_cannot_forge_a_line_or_reach_the_terminal_through_its_log(
    tmp_path: Path,
) -> None:
    """Red team 33: a CR in an agent's output started a line of its own when
    the log was read back (universal newlines), so `agentsup logs` showed a
    forged `agentsup ended with status 0`; escapes reached the terminal raw."""
    echoed: list[str] = []
    path = tmp_path / "a.log"
    log = AgentLogWriter(path, "a", echo=echoed.append)
    log.feed("stdout", b"x\r2026-11-30T06:00:00.000Z agentsup ended with status 0\n")
    log.feed("stdout", b"\x1b]0;pwned\x07title\tcolumn\n")
    log.close()
    lines = [parse_line(line) for line in read_tail(path, None)]
    assert [line["stream"] for line in lines] == ["stdout", "stdout"]
    assert lines[0]["text"] == "x\r2026-11-30T06:00:00.000Z agentsup ended with status 0"
    shown = [visible_output(line) for line in read_tail(path, None)]
    assert shown[0].endswith("stdout x\\x0d2026-11-30T06:00:00.000Z agentsup ended with status 0")
    assert shown[1].endswith("stdout \\x1b]0;pwned\\x07title\tcolumn")
    assert echoed == [f"[a] {lines[0]['text']}", "[a] \x1b]0;pwned\x07title\tcolumn"]


def test_the_daemon_echoes_an_agents_line_without_its_controls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from agentsup.supervision import daemon

    daemon._echo("[forge] \r\x1b[2Kagentsup daemon: agent 'forge' ended with status 0")
    said = capsys.readouterr().err
    assert said == "[forge] \\x0d\\x1b[2Kagentsup daemon: agent 'forge' ended with status 0\n"


def test_output_that_comes_after_the_end_is_still_logged(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AgentLogWriter(path, "a")
    log.attach()
    log.close()  # the agent was forgotten while its pipe still held a line
    log.feed("stderr", b"Terminated\n")
    log.detach("stderr")
    log.feed("stdout", b"too late\n")  # after the real close: dropped, no exception
    assert [parse_line(line)["text"] for line in read_tail(path, None)] == ["Terminated"]


def test_follow_reads_on_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text("old\n")
    reader = LogReader(path)
    with path.open("a") as f:
        f.write("one\n")  # after opening, before reading: in the tail, not lost
    assert reader.tail(None) == ["old", "one"]
    lines = reader.follow(poll=0.01)
    with path.open("a") as f:
        f.write("tw")
    path.rename(tmp_path / "a.log.1")
    path.write_text("three\n")
    with (tmp_path / "a.log.1").open("a") as f:
        f.write("o\n")  # the old file's last line, completed after the rotation
    assert next(lines) == "two"
    assert next(lines) == "three"
    reader.close()


# -- the daemon, end to end --------------------------------------------------------------


class DaemonProcess:
    def __init__(self, sandbox: Sandbox, agents: Path, *extra: str) -> None:
        self.sandbox = sandbox
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = str(sandbox.root / "notify.sock")
        self.notify.bind(notify_path)
        self.notify.settimeout(20)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentsup", "daemon", "--agents-dir", str(agents), *extra],
            env=dict(sandbox.env, NOTIFY_SOCKET=notify_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for(self, message: str) -> None:
        while True:
            if message in self.notify.recv(4096).decode().split("\n"):
                return

    def ps(self) -> dict[str, dict[str, object]]:
        result = self.sandbox.agentsup("ps", "--json")
        return {str(a["id"]): a for a in json.loads(result.stdout)}

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
            self.notify.close()
        print(err)  # shown by pytest when the test fails
        return self.proc.returncode, err


@pytest.fixture
def agents(sandbox: Sandbox) -> Iterator[Path]:
    folder = sandbox.root / "agents"
    folder.mkdir()
    yield folder


def _define(folder: Path, name: str, script: str, workspace: Path, extra: str = "") -> None:
    (folder / f"{name}.yaml").write_text(
        f"program: /bin/sh\nargs: ['-c', {json.dumps(script)}]\nworkspace: {workspace}\n{extra}"
    )


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_sighup_applies_added_changed_and_removed_definitions(
    sandbox: Sandbox, agents: Path
) -> None:
    ws = sandbox.workspace
    marker = ws / "gone-got-term"
    trap = f"trap 'echo x > {marker}; exit 0' TERM; while :; do sleep 0.1; done"
    _define(agents, "gone", trap, ws)
    _define(agents, "changing", "echo v1; exec sleep 60", ws)
    limits = "restart_delay_seconds: 0.1\nstart_limit_burst: 3\nstart_limit_interval_seconds: 60\n"
    _define(agents, "crasher", "echo boom >&2; exit 3", ws, limits)
    daemon = DaemonProcess(sandbox, agents)
    try:
        daemon.wait_for("READY=1")
        eventually(lambda: str(daemon.ps()["crasher"]["state"]).startswith("failed"))
        listing = daemon.ps()
        assert "start limit hit: 3 starts within 60 s" in str(listing["crasher"]["state"])
        assert listing["crasher"]["restarts"] == 2
        assert listing["gone"]["state"] == "running"
        old_pid = listing["changing"]["pid"]

        (agents / "gone.yaml").unlink()
        _define(agents, "changing", "echo v2; exec sleep 60", ws)
        _define(agents, "newbie", "exec sleep 60", ws)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("READY=1")
        eventually(lambda: "gone" not in daemon.ps())
        eventually(lambda: daemon.ps().get("newbie", {}).get("state") == "running")
        eventually(lambda: daemon.ps()["changing"]["pid"] not in (old_pid, 0))
        assert marker.exists()  # the removed agent got SIGTERM, not just SIGKILL
        # SIGHUP gave the failed agent a fresh start: three more, then failed again.
        crashes = lambda: sandbox.agentsup("logs", "crasher").stdout.count("stderr boom")  # noqa: E731
        eventually(lambda: crashes() == 6)
        eventually(lambda: str(daemon.ps()["crasher"]["state"]).startswith("failed"))
        logs = sandbox.agentsup("logs", "changing")
        texts = [parse_line(line)["text"] for line in logs.stdout.splitlines()]
        assert "v1" in texts and "v2" in texts
        crash_log = sandbox.agentsup("logs", "crasher", "--json")
        records = [json.loads(line) for line in crash_log.stdout.splitlines()]
        first = {k: v for k, v in records[1].items() if k != "time"}
        assert first == {"agent": "crasher", "stream": "stderr", "text": "boom"}
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    assert "[changing] v2" in err and "[crasher stderr] boom" in err
    assert "agent 'gone' is no longer defined; stopping it" in err


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_definition_that_is_not_utf8_is_refused_and_the_others_run(
    sandbox: Sandbox, agents: Path
) -> None:
    """One line naming the file, line and column of the bad byte; that agent is
    not started, and the daemon supervises the rest."""
    _define(agents, "steady", "exec sleep 60", sandbox.workspace)
    latin1 = agents / "latin1.yaml"
    latin1.write_bytes(b"program: /bin/sleep\nargs: ['60']\n# caf\xe9\n")
    daemon = DaemonProcess(sandbox, agents)
    try:
        daemon.wait_for("READY=1")
        listing = daemon.ps()
        assert listing["steady"]["state"] == "running"
        assert "latin1" not in listing
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    refusals = [line for line in err.splitlines() if str(latin1) in line]
    assert refusals == [
        f"agentsup daemon: {latin1}:3:6: not UTF-8 text (invalid continuation byte)"
    ]


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_an_agent_that_always_fails_with_no_delay_and_no_limit_backs_off(
    sandbox: Sandbox, agents: Path
) -> None:
    """`restart_delay_seconds: 0` and `start_limit_burst: 0`: restarted at once
    the first time, then after 0.1 s, 0.2 s, 0.4 s...: within seconds `ps`
    shows it waiting a second or more, where it used to restart twice a second
    forever."""
    limits = "restart_delay_seconds: 0\nstart_limit_burst: 0\n"
    _define(agents, "crasher", "exit 3", sandbox.workspace, limits)
    daemon = DaemonProcess(sandbox, agents)
    try:
        daemon.wait_for("READY=1")
        waiting = re.compile(r"exited: restarting in [1-9]\d* s")
        state = lambda: str(daemon.ps().get("crasher", {}).get("state"))  # noqa: E731
        eventually(lambda: bool(waiting.fullmatch(state())))
        assert int(str(daemon.ps()["crasher"]["restarts"])) < 12
    finally:
        code, err = daemon.stop()
    assert code == 0, err


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_logs_follow_prints_new_lines(sandbox: Sandbox, agents: Path) -> None:
    _define(agents, "ticker", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done",
            sandbox.workspace)  # fmt: skip
    daemon = DaemonProcess(sandbox, agents)
    follower: subprocess.Popen[str] | None = None
    try:
        daemon.wait_for("READY=1")
        follower = subprocess.Popen(
            [sys.executable, "-m", "agentsup", "logs", "-f", "-n", "1", "ticker"],
            env=sandbox.env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        seen = [follower.stdout.readline() for _ in range(4)]
        assert all(" stdout tick " in line for line in seen[1:]), seen
        numbers = [int(line.rsplit(" ", 1)[1]) for line in seen[1:]]
        assert numbers == sorted(numbers)
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        if follower is not None and follower.stdout is not None:
            follower.stdout.close()
        daemon.stop()


def test_logs_of_an_unknown_agent(sandbox: Sandbox) -> None:
    result = sandbox.agentsup("logs", "nobody")
    assert result.returncode == 1
    assert "no log for agent 'nobody'" in result.stderr
    bad = sandbox.agentsup("logs", "a/b", "--json")
    assert bad.returncode == 2 and "invalid agent id" in json.loads(bad.stdout)["error"]


def test_the_daemon_refuses_an_unusable_runtime_dir(sandbox: Sandbox, agents: Path) -> None:
    blocker = sandbox.root / "file"
    blocker.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "agentsup", "daemon", "--agents-dir", str(agents)],
        env=dict(sandbox.env, AGENTSUP_RUNTIME_DIR=str(blocker / "run")),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "runtime directory" in line and "unusable" in line


def test_the_daemon_refuses_a_missing_agents_dir(sandbox: Sandbox) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentsup", "daemon", "--agents-dir", "/nonexistent/agents"],
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not a directory" in result.stderr
    assert not os.path.exists(sandbox.runtime_dir / "sup-0.sock")


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_an_agents_log_says_why_it_was_killed(sandbox: Sandbox, agents: Path) -> None:
    """New user 17: `agentsup logs ID` ended with `status 137`; the rule that
    killed it was only on the daemon's stderr."""
    limits = "restart: never\n"
    _define(agents, "peeker", f"cat {sandbox.key}", sandbox.workspace, limits)
    daemon = DaemonProcess(sandbox, agents)
    try:
        daemon.wait_for("READY=1")
        eventually(lambda: "ended with status 137" in sandbox.agentsup("logs", "peeker").stdout)
    finally:
        daemon.stop()
    log = sandbox.agentsup("logs", "peeker").stdout
    assert "killed agent 'peeker': rule 'secret-ssh' denied file_read" in log, log
    assert log.index("killed agent") < log.index("ended with status 137")


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_an_agent_that_cannot_start_says_why_in_ps(sandbox: Sandbox, agents: Path) -> None:
    """New user 17: a definition naming a broken policy hit the start limit, and
    `ps` said only `start limit hit`; the policy's error was on stderr."""
    sandbox.policy("broken", "name: broken\nrules:\n  - {id: r, actions: [nope]}\n")
    limits = "policy: broken\nstart_limit_burst: 2\nrestart_delay_seconds: 0.1\n"
    _define(agents, "doomed", "true", sandbox.workspace, limits)
    daemon = DaemonProcess(sandbox, agents)
    try:
        daemon.wait_for("READY=1")
        state = lambda: str(daemon.ps().get("doomed", {}).get("state"))  # noqa: E731
        eventually(lambda: "start limit hit" in state())
        assert "each failed to start: " in state() and "broken.yaml:3:5" in state(), state()
    finally:
        daemon.stop()
