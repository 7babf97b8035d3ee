"""A person in the loop: held actions, TOTP resume, deny, timeouts, on a real agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse

import pyotp
import pytest
from conftest import TRY, Sandbox, agent_reports, both_paths, fastpath_env

from agentsup.kernel.proc import process_state

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

APPROVAL = """
name: approval
extends: [strict]
approval:
  timeout_seconds: {timeout}
  on_timeout: {on_timeout}
rules:
  - id: deletes-need-a-person
    actions: [file_delete]
    target: "{{workspace}}/**"
    decision: require_approval
    priority: 1
    message: deleting workspace files needs a human
"""


def totp_secret(sandbox: Sandbox) -> str:
    result = sandbox.agentsup("totp", "init")
    assert result.returncode == 0, result.stderr
    uri = next(word for word in result.stdout.split() if word.startswith("otpauth://"))
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


def start_deleter(sandbox: Sandbox, policy: str) -> tuple[subprocess.Popen[str], str]:
    doomed = sandbox.workspace / "doomed.txt"
    doomed.write_text("delete me")
    proc = subprocess.Popen(
        sandbox.command(
            "python3",
            TRY,
            "unlink",
            str(doomed),
            "then",
            "write",
            f"{sandbox.workspace}/after",
            policy=policy,
            agent_id="deleter",
        ),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, str(doomed)


def wait_for_pending(sandbox: Sandbox, timeout: float = 15) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = sandbox.agentsup("pending", "--json")
        if result.returncode == 0 and result.stdout.strip():
            pending = json.loads(result.stdout)
            if pending:
                return list(pending)
        time.sleep(0.1)
    raise AssertionError("nothing became pending")


def tree_states(sandbox: Sandbox) -> list[str]:
    ps = json.loads(sandbox.agentsup("ps", "--json").stdout)
    return [process_state(int(agent["pid"])) for agent in ps]


def test_approval_with_a_valid_code_lets_the_action_happen_once(sandbox: Sandbox) -> None:
    secret = totp_secret(sandbox)
    policy = sandbox.policy("approval", APPROVAL.format(timeout=60, on_timeout="deny"))
    notified = sandbox.root / "notified.txt"
    sandbox.env["AGENTSUP_NOTIFY"] = (
        f"{sys.executable} -c 'import sys; open(sys.argv[1], \"w\").write(sys.argv[2])' {notified}"
    )
    proc, doomed = start_deleter(sandbox, policy)
    try:
        pending = wait_for_pending(sandbox)
        assert pending[0]["action_type"] == "file_delete"
        assert pending[0]["target"] == doomed
        assert pending[0]["rule"] == "deletes-need-a-person"
        assert tree_states(sandbox) == ["T"]
        assert (sandbox.workspace / "doomed.txt").exists()
        deadline = time.monotonic() + 5
        while not notified.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "waits for approval of file_delete" in notified.read_text()

        code = pyotp.TOTP(secret).now()
        resumed = sandbox.agentsup("resume", "deleter", "--code", code, "--reason", "ok by me")
        assert resumed.returncode == 0, resumed.stderr
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert [r["result"] for r in agent_reports(out)] == ["ok", "ok"]
        assert not (sandbox.workspace / "doomed.txt").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    replay = sandbox.agentsup("resume", "deleter", "--code", code)
    assert replay.returncode == 1
    approvals = [r for r in sandbox.audit_records() if r["kind"] == "approval"]
    assert any(r.get("outcome") == "approved" and r.get("uid") == 0 for r in approvals)


def test_a_wrong_code_is_refused_and_the_agent_stays_stopped(sandbox: Sandbox) -> None:
    totp_secret(sandbox)
    policy = sandbox.policy("approval", APPROVAL.format(timeout=60, on_timeout="deny"))
    proc, _ = start_deleter(sandbox, policy)
    try:
        wait_for_pending(sandbox)
        refused = sandbox.agentsup("resume", "deleter", "--code", "000000")
        assert refused.returncode == 1
        assert tree_states(sandbox) == ["T"]
        assert (sandbox.workspace / "doomed.txt").exists()
    finally:
        proc.kill()
        proc.communicate()
    refusals = [r for r in sandbox.audit_records() if str(r.get("outcome", "")).startswith("ref")]
    assert refusals


def test_deny_fails_the_action_and_the_agent_keeps_running(sandbox: Sandbox) -> None:
    policy = sandbox.policy("approval", APPROVAL.format(timeout=60, on_timeout="deny"))
    proc, _ = start_deleter(sandbox, policy)
    try:
        wait_for_pending(sandbox)
        denied = sandbox.agentsup("deny", "deleter", "--reason", "not today")
        assert denied.returncode == 0, denied.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert [r["result"] for r in agent_reports(out)] == ["EACCES", "ok"]
    assert (sandbox.workspace / "doomed.txt").exists()


def test_an_approval_timeout_with_kill_ends_the_agent(sandbox: Sandbox) -> None:
    policy = sandbox.policy("approval", APPROVAL.format(timeout=2, on_timeout="kill"))
    started = time.monotonic()
    proc, _ = start_deleter(sandbox, policy)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 137, err
    assert time.monotonic() - started < 15
    assert "approval.timeout_seconds" in err
    assert (sandbox.workspace / "doomed.txt").exists()
    exits = [r for r in sandbox.audit_records() if r.get("event") == "exit"]
    assert exits[0]["killed_by"] == "approval.timeout_seconds"  # the policy key that ran out


def test_the_agent_cannot_reach_the_control_socket(sandbox: Sandbox) -> None:
    probe = (
        "import glob, os, socket, sys\n"
        "path = glob.glob(sys.argv[1] + '/sup-*.sock')[0]\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(path); print('connected')\n"
        "except OSError as e:\n"
        "    print('refused', e.errno)\n"
    )
    result = sandbox.run("python3", "-c", probe, str(sandbox.runtime_dir), policy="permissive")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused 1"
    record = next(r for r in sandbox.audit_records() if r.get("rule") == "agentsup-self-protection")
    assert record["severity"] == "critical"


VIOLATION = """
name: violation
extends: [strict]
rules:
  - id: no-prod-data
    actions: [file_read]
    target: "{home}/prod/**"
    decision: deny
    on_violation: sigstop
    priority: 5
    message: production data, ask the on-call
"""


@both_paths
def test_a_violation_stop_continues_once_with_the_action_refused(
    sandbox: Sandbox, native: bool
) -> None:
    """New user 17: after `resume` of a sigstop violation the agent was stopped
    again on the same action, over and over.  The stop had come before the
    refusal, so the kernel reissued the refused syscall after SIGCONT.  The
    syscall is refused first, then the tree stops: once.  `deny`, which needs
    no code, does not continue it (red team 36): only a resume with a code."""
    secret = totp_secret(sandbox)
    data = sandbox.home / "prod" / "db.csv"
    data.parent.mkdir()
    data.write_text("rows")
    policy = sandbox.policy("violation", VIOLATION)
    proc = subprocess.Popen(
        sandbox.command(
            "python3",
            TRY,
            "read",
            str(data),
            "then",
            "write",
            f"{sandbox.workspace}/after",
            policy=policy,
            agent_id="reader",
        ),
        env={**sandbox.env, **fastpath_env(native)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pending = wait_for_pending(sandbox)
        assert [p["rule"] for p in pending] == ["no-prod-data"]
        deadline = time.monotonic() + 5
        while tree_states(sandbox) != ["T"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tree_states(sandbox) == ["T"]
        refused = sandbox.agentsup("deny", "reader")
        assert refused.returncode != 0 and "stopped for a violation" in refused.stderr
        assert tree_states(sandbox) == ["T"]
        answered = sandbox.agentsup("resume", "reader", "--code", pyotp.TOTP(secret).now())
        assert answered.returncode == 0, answered.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert [r["result"] for r in agent_reports(out)] == ["EACCES", "ok"]
    assert err.count("stopped agent 'reader'") == 1, err
    assert "(production data, ask the on-call)" in err, err
    stops = [r for r in sandbox.audit_records() if r.get("signal") == "SIGSTOP"]
    assert len(stops) == 1, stops


def test_a_policy_that_waits_for_a_person_says_when_no_one_can_resume(sandbox: Sandbox) -> None:
    """New user 17: without a TOTP secret a stopped agent cannot be resumed,
    and that was first said at the resume; now at the start."""
    policy = sandbox.policy("violation", VIOLATION)
    started = sandbox.run("true", policy=policy)
    assert started.returncode == 0, started.stderr
    assert "rule 'no-prod-data' can stop the agent" in started.stderr
    assert "agentsup totp init" in started.stderr
    totp_secret(sandbox)
    again = sandbox.run("true", policy=policy)
    assert "can stop the agent" not in again.stderr, again.stderr


BUSY_BESIDE_A_VIOLATION = """
import os, sys, threading, time
errors = []
def busy():
    end = time.monotonic() + 1.5
    n = 0
    while time.monotonic() < end:
        try:
            with open(f"busy-{n % 10}.txt", "w") as f:
                f.write("x")
        except OSError as exc:
            errors.append(exc.errno)
        n += 1
worker = threading.Thread(target=busy)
worker.start()
time.sleep(0.3)
try:
    open(sys.argv[1]).read()
except OSError:
    pass
worker.join()
print("errors", sorted(set(errors)), flush=True)
"""


def test_what_other_threads_do_as_the_agent_stops_waits_for_the_resume(
    sandbox: Sandbox,
) -> None:
    """New user 18: a syscall that came while the agent was being stopped was
    refused on record, and, if the stop interrupted it, the kernel reissued it
    after the resume and it went ahead.  Now it is left unanswered: the stop
    interrupts it and it is judged after the resume, as if the agent had been
    stopped a moment before it."""
    secret = totp_secret(sandbox)
    data = sandbox.home / "prod" / "db.csv"
    data.parent.mkdir()
    data.write_text("rows")
    proc = subprocess.Popen(
        sandbox.command(
            "python3",
            "-c",
            BUSY_BESIDE_A_VIOLATION,
            str(data),
            policy=sandbox.policy("violation", VIOLATION),
            agent_id="busy",
        ),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=sandbox.workspace,
    )
    try:
        wait_for_pending(sandbox)
        time.sleep(0.5)
        answered = sandbox.agentsup("resume", "busy", "--code", pyotp.TOTP(secret).now())
        assert answered.returncode == 0, answered.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "errors []" in out, out + err
    stopped = [r for r in sandbox.audit_records() if r.get("rule") == "agentsup-stopped"]
    assert stopped == [], stopped
