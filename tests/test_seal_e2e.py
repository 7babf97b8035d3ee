"""A sealed policy directory fails closed when tampered with, and hot-reloads when a
person edits it properly (unseal, edit, seal)."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import urllib.parse

import psutil
import pyotp
import pytest
from conftest import Sandbox

from agentsup.kernel.proc import process_state

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

TEAM = """\
name: team
extends: [strict]
rules:
  - id: notes-readable
    actions: [file_read]
    target: "{workspace}/notes.txt"
    decision: allow
    priority: 1
"""

READER = """
import time
while True:
    try:
        with open("notes.txt") as f:
            f.read()
        print("read ok", flush=True)
    except PermissionError:
        print("read refused", flush=True)
    time.sleep(0.1)
"""


class Totp:
    def __init__(self, sandbox: Sandbox) -> None:
        result = sandbox.agentsup("totp", "init")
        assert result.returncode == 0, result.stderr
        uri = next(w for w in result.stdout.split() if w.startswith("otpauth://"))
        self.totp = pyotp.TOTP(urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0])
        self.offset = -1

    def code(self) -> str:
        # Each time step is accepted once and must be newer than the last;
        # the verifier allows one step of clock drift either way, so a test
        # can use the previous, the current and the next step in turn.
        assert self.offset <= 1, "a test needs at most three codes"
        # Not in a step's last seconds: the code must still be within a step
        # of the clock when agentsup checks it, a few hundred ms later.
        left = 30 - time.time() % 30
        if left < 3:
            time.sleep(left + 0.1)
        code = self.totp.at(time.time() + 30 * self.offset)
        self.offset += 1
        return code


def seal(sandbox: Sandbox, totp: Totp) -> None:
    result = sandbox.agentsup("policy", "seal", "--code", totp.code())
    assert result.returncode == 0, result.stdout + result.stderr


def unseal(sandbox: Sandbox, totp: Totp) -> None:
    result = sandbox.agentsup("policy", "unseal", "--code", totp.code())
    assert result.returncode == 0, result.stdout + result.stderr


def agent_pid(sandbox: Sandbox) -> int:
    (agent,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
    return int(agent["pid"])


def start_reader(sandbox: Sandbox) -> subprocess.Popen[str]:
    (sandbox.workspace / "notes.txt").write_text("notes")
    (sandbox.workspace / "reader.py").write_text(textwrap.dedent(READER))
    proc = subprocess.Popen(
        sandbox.command(str(sandbox.workspace / "reader.py"), policy="team", agent_id="reader"),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "read ok"
    return proc


def wait_for_state(pid: int, state: str, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process_state(pid) == state:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} is {process_state(pid)!r}, not {state!r}")


def test_tampering_stops_the_agent_and_refuses_new_runs_until_resealed(sandbox: Sandbox) -> None:
    totp = Totp(sandbox)
    team = sandbox.policy_dir / "team.yaml"
    team.write_text(TEAM)
    seal(sandbox, totp)
    proc = start_reader(sandbox)
    try:
        subprocess.run(["chattr", "-i", str(team)], check=False)
        team.chmod(0o644)
        with team.open("a") as f:
            f.write(
                "  - {id: sneaky, actions: ['*'], target: '**', decision: allow, priority: 0}\n"
            )

        assert wait_for_state(agent_pid(sandbox), "T", timeout=2.0) < 2.0
        refused = sandbox.run("true", policy="team")
        assert refused.returncode == 125
        assert "team.yaml" in refused.stderr
        tamper = [r for r in sandbox.audit_records() if r["kind"] == "tamper"]
        assert tamper and tamper[0]["severity"] == "critical"

        # A person looks, restores the file and seals again: everything continues.
        team.write_text(TEAM)
        seal(sandbox, totp)
        wait_for_state(agent_pid(sandbox), "S", timeout=5.0)
        assert sandbox.run("true", policy="team").returncode == 0
    finally:
        proc.kill()
        proc.communicate()


def test_unseal_edit_seal_reloads_the_running_agent(sandbox: Sandbox) -> None:
    totp = Totp(sandbox)
    team = sandbox.policy_dir / "team.yaml"
    team.write_text(TEAM)
    seal(sandbox, totp)
    proc = start_reader(sandbox)
    assert proc.stdout is not None
    try:
        unseal(sandbox, totp)
        team.write_text(TEAM.replace("decision: allow", "decision: deny\n    on_violation: block"))
        seal(sandbox, totp)
        deadline = time.monotonic() + 10
        line = ""
        while time.monotonic() < deadline and line != "read refused":
            line = proc.stdout.readline().strip()
        assert line == "read refused"
        assert process_state(agent_pid(sandbox)) in ("S", "R")
        reloads = [r for r in sandbox.audit_records() if r.get("event") == "reloaded"]
        assert reloads
    finally:
        proc.kill()
        proc.communicate()


HELD = """\
name: held
extends: [strict]
rules:
  - id: ask-first
    actions: [file_write]
    target: "{workspace}/asked.txt"
    decision: require_approval
    priority: 1
"""


def test_an_answer_to_a_held_action_does_not_lift_a_tamper_stop(sandbox: Sandbox) -> None:
    """Red team 36 F6: the policy directory was tampered with while an agent
    waited for approval; `deny` (no code), `resume` or the approval timeout
    set it running again with the directory still tampered.  The answer
    settles the held action, and the tree stays stopped until a re-seal."""
    totp = Totp(sandbox)
    held = sandbox.policy_dir / "held.yaml"
    held.write_text(HELD)
    seal(sandbox, totp)
    asked = sandbox.workspace / "asked.txt"
    proc = subprocess.Popen(
        sandbox.command("sh", "-c", f"echo x > {asked}; echo after", policy="held", agent_id="h"),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not json.loads(sandbox.agentsup("pending", "--json").stdout or "[]"):
            assert time.monotonic() < deadline, "nothing became pending"
            time.sleep(0.1)
        subprocess.run(["chattr", "-i", str(held)], check=False)
        held.chmod(0o644)
        with held.open("a") as f:
            f.write("  - {id: sneaky, actions: ['*'], target: '**', decision: allow}\n")
        deadline = time.monotonic() + 5
        tampered = "stopped: policy tampered"
        while json.loads(sandbox.agentsup("ps", "--json").stdout)[0]["state"] != tampered:
            assert time.monotonic() < deadline, sandbox.agentsup("ps").stdout
            time.sleep(0.05)
        denied = sandbox.agentsup("deny", "h")
        assert denied.returncode == 0, denied.stderr
        assert "stays stopped until the policy directory is re-sealed" in denied.stdout
        time.sleep(0.5)
        (agent,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
        assert agent["state"] == tampered
        assert process_state(int(agent["pid"])) == "T"
        assert not asked.exists()
    finally:
        proc.kill()
        proc.communicate()


def test_a_reseal_gives_back_the_stop_a_tamper_stop_came_over(sandbox: Sandbox) -> None:
    """Red team 38 F5: an agent stopped for a `sigstop` violation, then for a
    tampered policy directory, ran on at the re-seal with no one resuming
    it: it goes back to its violation stop, waiting for a person."""
    totp = Totp(sandbox)
    stopper = sandbox.policy_dir / "stopper.yaml"
    stopper.write_text(STOPPER)
    seal(sandbox, totp)
    script = f"cat {sandbox.key} 2>/dev/null; while :; do sleep 0.1; done"
    proc = subprocess.Popen(
        sandbox.command("sh", "-c", script, policy="stopper", agent_id="h"),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def state() -> str:
        listed = json.loads(sandbox.agentsup("ps", "--json").stdout or "[]")
        return str(listed[0]["state"]) if listed else ""

    def becomes(wanted: str) -> None:
        deadline = time.monotonic() + 15
        while state() != wanted:
            assert time.monotonic() < deadline, sandbox.agentsup("ps").stdout
            time.sleep(0.05)

    try:
        becomes("stopped: violation")
        subprocess.run(["chattr", "-i", str(stopper)], check=False)
        stopper.chmod(0o644)
        stopper.write_text(STOPPER + "# an edit\n")
        becomes("stopped: policy tampered")
        stopper.write_text(STOPPER)
        seal(sandbox, totp)
        time.sleep(0.5)
        assert state() == "stopped: violation"
        (agent,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
        # Stopped, or waiting on a stopped vfork child (dash's `D` in kernel_clone).
        main = psutil.Process(int(agent["pid"]))
        states = {process.status() for process in [main, *main.children(recursive=True)]}
        assert states <= {psutil.STATUS_STOPPED, psutil.STATUS_DISK_SLEEP}, states
    finally:
        proc.kill()
        proc.communicate()


STOPPER = """\
name: stopper
extends: [strict]
rules:
  - id: ssh-config-stops
    actions: [file_read]
    target: "{home}/.ssh/id_rsa"
    decision: deny
    on_violation: sigstop
    priority: 1
"""
