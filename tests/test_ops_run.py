"""`agentsup run` as operators expect: signals, duplicate ids, bad input as one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Sandbox

from agentsup.control.agentids import (
    AgentIdTaken,
    BadAgentId,
    check_agent_id,
    claim_agent_id,
)


def _one_line(stderr: str) -> str:
    """The one line agentsup wrote (the agent's own output, e.g. a shell's, is not ours)."""
    lines = [line for line in stderr.splitlines() if line.startswith("agentsup")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- agent ids (pure and local) -------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "agent-42", "analyst_1.v2", "ci@build+7", "A" * 64])
def test_good_agent_ids(good: str) -> None:
    assert check_agent_id(good) == good


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "-x", "a b", "A" * 65, "é"])
def test_bad_agent_ids(bad: str) -> None:
    with pytest.raises(BadAgentId, match="invalid agent id"):
        check_agent_id(bad)


def test_an_id_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    claim = claim_agent_id(tmp_path, "x")
    holder = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path\n"
            "from agentsup.control.agentids import claim_agent_id, AgentIdTaken\n"
            "try:\n    claim_agent_id(Path(sys.argv[1]), 'x')\n"
            "except AgentIdTaken as exc:\n    print(exc.holder)\n",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert holder.stdout.strip() == str(os.getpid())
    claim.release()
    again = claim_agent_id(tmp_path, "x")
    with pytest.raises(AgentIdTaken):
        # flock is per open file: a second claim in this process is refused too.
        claim_agent_id(tmp_path, "x")
    again.release()


# -- bad input: one line and a documented exit code ------------------------------------


def test_run_with_a_slash_in_the_id_is_refused(sandbox: Sandbox) -> None:
    result = sandbox.run("/bin/true", agent_id="a/b")
    assert result.returncode == 125
    assert "invalid agent id 'a/b'" in _one_line(result.stderr)


@pytest.mark.parametrize("usage", [["--bogus"], ["--cpus", "bogus"], ["--stop-timeout", "abc"]])
def test_every_usage_error_of_run_is_125(sandbox: Sandbox, usage: list[str]) -> None:
    """An option run does not know, as much as a bad value: the agent never started."""
    result = sandbox.agentsup("run", *usage, "--", "true")
    assert result.returncode == 125, result.stderr
    assert result.stderr.count("\n") == 1 and "error:" in result.stderr


@pytest.mark.parametrize("where", ["file", "long"])
def test_run_with_an_unusable_runtime_dir_is_refused(sandbox: Sandbox, where: str) -> None:
    blocker = sandbox.root / "not-a-dir"
    blocker.write_text("")
    runtime = blocker / "run" if where == "file" else sandbox.root / ("x" * 120)
    result = sandbox.run("/bin/true", env={"AGENTSUP_RUNTIME_DIR": str(runtime)})
    assert result.returncode == 125
    assert "runtime directory" in _one_line(result.stderr)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_json_status_that_cannot_be_written_keeps_the_exit_code(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "/bin/sh", "-c", "exit 3", extra=["--json-status", "/nonexistent/dir/status.json"]
    )
    assert result.returncode == 3
    line = _one_line(result.stderr)
    assert "warning: cannot write --json-status /nonexistent/dir/status.json" in line


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_json_status_is_written(sandbox: Sandbox) -> None:
    status = sandbox.root / "status.json"
    (sandbox.workspace / "server.key").write_text("key")  # strict refuses it, no signal
    script = "cat server.key 2>/dev/null; exit 4"
    result = sandbox.run(
        "/bin/sh", "-c", script, cwd=sandbox.workspace, extra=["--json-status", str(status)]
    )
    assert result.returncode == 4, result.stderr
    document = json.loads(status.read_text())
    assert {k: v for k, v in document.items() if k != "layers"} == {
        "agent": "t",
        "exit_code": 4,
        "signal": None,
        "killed_by": None,
        "refused": 1,  # the key: what the agent met short of a kill (new user 17)
        "held_for_a_person": 0,
    }
    assert isinstance(document["layers"], dict)


def test_json_status_says_why_a_run_never_started(sandbox: Sandbox) -> None:
    """New user 17: a run that exited 125 (a bad policy) wrote no status."""
    status = sandbox.root / "status.json"
    result = sandbox.run("true", policy="nosuch", extra=["--json-status", str(status)])
    assert result.returncode == 125
    document = json.loads(status.read_text())
    assert document["exit_code"] == 125 and "no such policy" in document["error"]


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_json_status_in_the_workspace_is_never_written_through_the_agents_symlink(
    sandbox: Sandbox,
) -> None:
    """Red team 33: the status is written as root after the agent ended; an
    agent that made the status file's name a symlink to the audit log (or
    any host file) had agentsup overwrite it.  The name is not followed."""
    victim = sandbox.root / "victim.txt"
    victim.write_text("the host's\n")
    victim.chmod(0o600)
    status = sandbox.workspace / "status.json"
    result = sandbox.run(
        "ln", "-sf", str(victim), str(status), extra=["--json-status", str(status)]
    )
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "the host's\n"
    assert status.is_symlink()
    line = _one_line(result.stderr)
    assert "cannot write --json-status" in line and "a symlink is at that name" in line


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_output_files_are_never_written_through_a_symlinked_directory(sandbox: Sandbox) -> None:
    """Red team 34: a first run made `out` in the workspace a symlink to a
    directory the agent may not write; the next run's status and a policy
    suggestion went there.  No symlink is followed on the way either."""
    victims = sandbox.root / "victims"
    victims.mkdir()
    out = sandbox.workspace / "out"
    first = sandbox.run("ln", "-s", str(victims), str(out), agent_id="job")
    assert first.returncode == 0 and out.is_symlink(), first.stderr
    status = sandbox.run("true", extra=["--json-status", str(out / "status.json")])
    assert status.returncode == 0
    assert "is reached through a symlink (not followed)" in _one_line(status.stderr)
    suggested = sandbox.agentsup("policy", "suggest", "--agent", "job", "-o", str(out / "p.yaml"))
    assert suggested.returncode != 0
    assert "is reached through a symlink (not followed)" in suggested.stderr
    assert list(victims.iterdir()) == []


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_json_status_replaces_a_file_the_agent_left_at_its_name(sandbox: Sandbox) -> None:
    status = sandbox.workspace / "status.json"
    result = sandbox.run(
        "sh", "-c", f"echo garbage > {status}; exit 5", extra=["--json-status", str(status)]
    )
    assert result.returncode == 5, result.stderr
    assert json.loads(status.read_text())["exit_code"] == 5


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_policy_suggest_never_writes_through_a_symlink_at_its_output(sandbox: Sandbox) -> None:
    """The same for `policy suggest -o` into the workspace."""
    victim = sandbox.root / "victim.txt"
    victim.write_text("the host's\n")
    output = sandbox.workspace / "suggested.yaml"
    ran = sandbox.run("sh", "-c", f"ls / ; ln -s {victim} {output}", agent_id="job")
    assert output.is_symlink(), ran.stderr
    result = sandbox.agentsup("policy", "suggest", "--agent", "job", "-o", str(output))
    assert result.returncode != 0
    assert victim.read_text() == "the host's\n"
    assert "a symlink is at that name" in result.stderr, result.stderr


# -- a second run with a live id -------------------------------------------------------


def _start(
    sandbox: Sandbox,
    *program: str,
    agent_id: str,
    extra: list[str] | None = None,
    policy: str = "strict",
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        sandbox.command(*program, policy=policy, agent_id=agent_id, extra=extra or []),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_listed(sandbox: Sandbox, agent_id: str, timeout: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = json.loads(sandbox.agentsup("ps", "--json").stdout or "[]")
        for agent in listed:
            if agent.get("id") == agent_id and agent.get("state") == "running":
                return dict(agent)
        time.sleep(0.1)
    raise AssertionError(f"{agent_id} never listed as running")


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_duplicate_id_is_refused_with_125(sandbox: Sandbox) -> None:
    first = _start(sandbox, "/bin/sleep", "30", agent_id="dup")
    try:
        listed = _wait_listed(sandbox, "dup")
        second = sandbox.run("/bin/true", agent_id="dup")
        assert second.returncode == 125
        line = _one_line(second.stderr)
        assert f"agent id 'dup' is already in use by supervisor pid {first.pid}" in line
        # The first one is untouched and still the only 'dup'.
        again = [a for a in json.loads(sandbox.agentsup("ps", "--json").stdout) if a["id"] == "dup"]
        assert [a["pid"] for a in again] == [listed["pid"]]
    finally:
        first.kill()
        first.communicate()


# -- signals ---------------------------------------------------------------------------

TRAP_TERM = (
    "trap 'echo got-term > {marker}; exit 0' TERM; "
    "echo ready > {ready}; while :; do sleep 0.1; done"
)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_is_forwarded_and_run_exits_128_plus_n(
    sandbox: Sandbox, sig: signal.Signals, code: int
) -> None:
    marker = sandbox.workspace / "marker"
    ready = sandbox.workspace / "ready"
    trap = "INT" if sig == signal.SIGINT else "TERM"
    script = TRAP_TERM.format(marker=marker, ready=ready).replace("TERM;", f"{trap};", 1)
    run = _start(sandbox, "/bin/sh", "-c", script, agent_id="sig")
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(sig)
    _out, err = run.communicate(timeout=20)
    assert run.returncode == code
    assert marker.read_text().strip() == "got-term"
    line = _one_line(err)
    assert f"interrupted by {sig.name}: agent 'sig' got {sig.name} and ended with status 0" in line


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_an_agent_that_ignores_the_signal_is_killed_after_the_stop_timeout(
    sandbox: Sandbox,
) -> None:
    ready = sandbox.workspace / "ready"
    script = f"trap '' TERM; echo ready > {ready}; while :; do sleep 0.1; done"
    run = _start(
        sandbox, "/bin/sh", "-c", script, agent_id="stubborn", extra=["--stop-timeout", "1"]
    )
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    run.send_signal(signal.SIGTERM)
    _out, err = run.communicate(timeout=20)
    assert run.returncode == 143
    assert 0.9 <= time.monotonic() - started < 10
    assert "was killed (SIGKILL)" in _one_line(err)
    kinds = [r for r in sandbox.audit_records() if r["kind"] == "signal"]
    assert [r["signal"] for r in kinds][-2:] == ["SIGTERM", "SIGKILL"]


# -- ps and top: what an agent's tree uses --------------------------------------------

LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
    "data = bytearray(32 * 2**20)\n"  # some memory to see
    "open(sys.argv[1], 'w').write('ready')\n"
    "time.sleep(60)\n"
)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_ps_and_top_show_what_the_tree_uses(sandbox: Sandbox) -> None:
    script = sandbox.workspace / "listener.py"
    script.write_text(LISTENER)
    ready = sandbox.workspace / "ready"
    run = _start(
        sandbox, "/bin/sh", "-c", f"{sys.executable} {script} {ready} & wait",
        agent_id="busy", policy="permissive",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        listing = sandbox.agentsup("ps", "--json")
        [agent] = [a for a in json.loads(listing.stdout) if a["id"] == "busy"]
        usage = agent["usage"]
        assert usage["processes"] >= 2  # the shell and the Python child
        assert usage["rss_bytes"] > 32 * 2**20
        assert any(c["status"] == "LISTEN" for c in usage["connections"])
        table = sandbox.agentsup("ps")
        header, *rows = table.stdout.splitlines()
        assert header.split()[-6:] == ["PROCS", "CPU%", "MEM", "READ", "WRITE", "NET"]
        [row] = [r for r in rows if r.startswith("busy ")]
        assert row.split()[-1] == "1" and row.split()[-6] == str(usage["processes"])
        top = sandbox.agentsup("top", "--iterations", "2", "--interval", "0.2", "--json")
        screens = [json.loads(line) for line in top.stdout.splitlines()]  # JSON Lines
        assert len(screens) == 2 and top.returncode == 0
        assert [a["id"] for a in screens[1]["agents"]] == ["busy"]
    finally:
        run.send_signal(signal.SIGKILL)
        run.communicate()


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_relative_program_is_found_from_the_callers_directory(sandbox: Sandbox) -> None:
    """`run --workspace W -- ./tool.sh` runs the caller's ./tool.sh, inside W."""
    caller = sandbox.root / "caller"
    caller.mkdir()
    tool = caller / "tool.sh"
    tool.write_text('#!/bin/sh\necho "ran in $(pwd)"\n')
    tool.chmod(0o755)
    (caller / "hello.py").write_text("import os\nprint('python in', os.getcwd())\n")
    for program, expected in (("./tool.sh", "ran in"), ("hello.py", "python in")):
        result = subprocess.run(
            sandbox.command(program, policy="permissive"),
            cwd=caller,
            env=sandbox.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{expected} {sandbox.workspace}"


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_agentsup_installed_in_its_own_state_directory_says_so(sandbox: Sandbox) -> None:
    """New user 18: install.sh put a user's environment in ~/.local/share/agentsup,
    the state directory no agent may read, and every Python agent was killed
    at its start reading agentsup's own pyvenv.cfg.  Said at once, exit 125."""
    inside = sandbox.state_dir / "venv"
    probe = (
        "import sys; from agentsup.cli.main import main\n"
        f"sys.prefix = {str(inside)!r}\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    argv = sandbox.command("true")[3:]  # from "run" on
    done = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 125, done.stderr
    assert "lies in its state directory" in done.stderr, done.stderr
