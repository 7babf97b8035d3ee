"""`agentsup daemon`: many agents under one supervisor, as a systemd service."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Sandbox

from agentsup.kernel.proc import process_state
from agentsup.supervision.daemon import (
    AgentDefinition,
    DefinitionError,
    parse_definition,
    should_restart,
)

# -- agent definitions (pure) ---------------------------------------------------------


def test_a_definition_needs_a_program_and_a_workspace(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("program: /bin/true\n")
    with pytest.raises(DefinitionError, match="'workspace' is required"):
        parse_definition(path)


def test_bad_yaml_in_a_definition_is_one_line_naming_the_place(tmp_path: Path) -> None:
    path = tmp_path / "a3.yaml"
    path.write_text("program: [x\nworkspace: /w\n")
    with pytest.raises(DefinitionError) as raised:
        parse_definition(path)
    assert str(raised.value).startswith(f"{path}:2:")
    assert "invalid YAML: " in str(raised.value) and "\n" not in str(raised.value)


def test_a_deeply_nested_definition_is_refused_not_a_crash(tmp_path: Path) -> None:
    """PyYAML composes recursively: 5,000 `[` raised RecursionError, which ended
    the daemon and every agent it ran (red team 16)."""
    path = tmp_path / "deep.yaml"
    path.write_text("program: " + "[" * 5000 + "\n")
    with pytest.raises(DefinitionError) as raised:
        parse_definition(path)
    # agentsup's own limit, or libyaml's where PyYAML is built with it: one line
    message = str(raised.value)
    assert message.startswith(f"{path}:1:") and "nest" in message and "\n" not in message


def test_a_definition_that_is_not_utf8_is_one_line_naming_the_byte(tmp_path: Path) -> None:
    """As in a policy file: `FILE:LINE:COLUMN:` and what is wrong, where the codec's
    own message used to come with no place at all."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"program: /bin/true\nworkspace: /tmp\nargs: ['caf\xe9']\n")
    with pytest.raises(DefinitionError) as raised:
        parse_definition(path)
    assert str(raised.value) == f"{path}:3:12: not UTF-8 text (invalid continuation byte)"


@pytest.mark.parametrize("kind", ["directory", "fifo", "too large"])
def test_a_definition_that_is_no_file_to_read_is_one_line_at_once(
    tmp_path: Path, kind: str
) -> None:
    """A FIFO is never opened to block the daemon, and a file over 1 MiB is
    refused rather than cut short and read as if that were all of it."""
    path = tmp_path / "odd.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("program: /bin/true\nworkspace: /tmp\n# " + "x" * (1 << 20) + "\n")
    with pytest.raises(DefinitionError) as raised:
        parse_definition(path)
    expected = {
        "directory": "not a regular file; an agent definition is a YAML file",
        "fifo": "not a regular file; an agent definition is a YAML file",
        "too large": "too large: over 1048576 bytes (an agent definition has at most that)",
    }
    assert str(raised.value) == f"{path}: {expected[kind]}"


@pytest.mark.parametrize("who", ["others may write it", "another user owns it"])
def test_a_definition_someone_else_could_change_is_refused(tmp_path: Path, who: str) -> None:
    """Red team 25: user `nobody` planted a definition, and the daemon ran its
    program as root.  A definition names what the daemon runs: it is trusted
    as agentsup's locations are, or not read at all."""
    path = tmp_path / "planted.yaml"
    path.write_text("program: /bin/true\nworkspace: /tmp\n")
    if who == "others may write it":
        path.chmod(0o666)
    else:
        os.chown(path, 65534, 65534)
    with pytest.raises(DefinitionError, match=r"planted.yaml: cannot be trusted: "):
        parse_definition(path)


@pytest.mark.requires_root
def test_the_daemon_refuses_an_agents_directory_others_may_write(sandbox: Sandbox) -> None:
    agents = sandbox.root / "agents"
    agents.mkdir()
    agents.chmod(0o777)
    env = dict(sandbox.env, AGENTSUP_AGENTS_DIR=str(agents))
    result = subprocess.run(
        [sys.executable, "-m", "agentsup", "daemon"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"agentsup daemon: cannot start: the agents directory {agents} cannot be trusted: "
        f"{agents} is writable by anyone"
    ], result.stderr


def test_a_definition_names_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("program: /bin/true\nworkspace: /tmp\nrestrat: always\n")
    with pytest.raises(DefinitionError, match=r"a.yaml:3:1: unknown key 'restrat'"):
        parse_definition(path)


def test_a_definition_error_names_the_line_and_column_as_a_policys_does(tmp_path: Path) -> None:
    """New user 17: a definition's errors named the file only."""
    path = tmp_path / "a.yaml"
    cases = {
        "program: /bin/true\nworkspace: /tmp\nrestart: sometimes\n": "3:10: unknown restart",
        "program: /bin/true\nworkspace: /tmp\nargs: [1]\n": "3:7: 'args' must be",
        "program: /bin/true\nworkspace: /tmp\nrestart_delay_seconds: -1\n": "3:24: 'restart_",
        "workspace: /tmp\n": "1:1: 'program' is required",
    }
    for text, said in cases.items():
        path.write_text(text)
        with pytest.raises(DefinitionError) as raised:
            parse_definition(path)
        assert str(raised.value).startswith(f"{path}:{said}"), str(raised.value)


def test_the_id_defaults_to_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "analyst-1.yaml"
    path.write_text("program: /bin/true\nworkspace: /tmp\nargs: [a, b]\n")
    definition = parse_definition(path)
    assert (definition.agent_id, definition.args, definition.policy) == (
        "analyst-1",
        ("a", "b"),
        "strict",
    )


def test_a_definition_may_name_the_user_the_agent_runs_as(tmp_path: Path) -> None:
    path = tmp_path / "analyst-1.yaml"
    path.write_text("program: /bin/true\nworkspace: /tmp\nuser: nobody\n")
    assert parse_definition(path).request().user == "nobody"
    path.write_text("program: /bin/true\nworkspace: /tmp\nuser: 12\n")
    with pytest.raises(DefinitionError, match="'user' must be a user name"):
        parse_definition(path)


@pytest.mark.parametrize(
    ("restart", "code", "killed", "again"),
    [
        ("never", 1, False, False),
        ("on-failure", 0, False, False),
        ("on-failure", 3, False, True),
        ("on-failure", 137, True, False),  # a policy kill is a reason to look
        ("always", 0, False, True),
        ("always", 137, True, True),
    ],
)
def test_restart_rules(restart: str, code: int, killed: bool, again: bool) -> None:
    definition = AgentDefinition("a", "/bin/true", "/tmp", restart=restart)
    assert should_restart(definition, code, killed) is again


# -- the daemon, end to end ------------------------------------------------------------


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_the_daemon_supervises_restarts_and_stops_its_agents(sandbox: Sandbox) -> None:
    agents = sandbox.root / "agents"
    agents.mkdir()
    (agents / "sleeper.yaml").write_text(
        f"program: /bin/sleep\nargs: ['60']\nworkspace: {sandbox.workspace}\n"
    )
    (agents / "thief.yaml").write_text(
        f"program: /bin/cat\nargs: ['{sandbox.key}']\nworkspace: {sandbox.workspace}\n"
        "restart: on-failure\nrestart_delay_seconds: 0.1\n"
    )
    counter = sandbox.workspace / "count"
    (agents / "ticker.yaml").write_text(
        "program: /bin/sh\n"
        f"args: ['-c', 'echo x >> {counter}']\n"
        f"workspace: {sandbox.workspace}\nrestart: always\nrestart_delay_seconds: 0.2\n"
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(sandbox.root / "notify.sock")
    notify.bind(notify_path)
    notify.settimeout(15)
    env = dict(sandbox.env, AGENTSUP_AGENTS_DIR=str(agents), NOTIFY_SOCKET=notify_path)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agentsup", "daemon"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messages = []
        while "READY=1" not in messages:
            messages.append(notify.recv(4096).decode())
        time.sleep(1.5)
        listing = {a["id"]: a for a in json.loads(sandbox.agentsup("ps", "--json").stdout)}
        assert listing["sleeper"]["state"] == "running"
        assert process_state(int(listing["sleeper"]["pid"])) == "S"
        # The thief was killed by the policy and, as a violator, not restarted.
        assert listing["thief"]["state"] == "exited"
        kills = [r for r in sandbox.audit_records() if r["kind"] == "signal"]
        assert len([r for r in kills if r.get("rule") == "secret-ssh"]) == 1
        # The ticker exits 0 and is restarted every time.
        assert len(counter.read_text().split()) >= 3
        sleeper_pid = int(listing["sleeper"]["pid"])
        daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=15)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
        notify.close()
    assert daemon.returncode == 0, err
    assert process_state(sleeper_pid) in ("", "Z")
    assert "started agent 'sleeper'" in err
    assert not os.path.exists(sandbox.runtime_dir / f"sup-{daemon.pid}.sock")
