"""`run --shadow` and `policy suggest`: from a job a tight policy refuses to one that passes.

Real agents: a shell script that reads a tool's configuration in the home
directory, fills a cache directory and runs a few programs, under a policy
that allows only the workspace, the system's files and bash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Sandbox

from agentsup.events import ActionType, Event, Verdict
from agentsup.policy import (
    RunContext,
    builtin_source,
    compile_policy,
    load_policy_text,
    load_source,
)
from agentsup.policy.suggest import last_run, suggest

TIGHT = r"""
name: tight
default: deny
on_violation: block
rules:
  - id: workspace
    actions: [file_read, file_write, file_delete, file_move, file_chmod]
    target: "{workspace}/**"
    decision: allow
  - id: system-read
    actions: [file_read]
    pattern: '^/(?:usr|lib|lib64|bin|etc|proc|sys|dev)(?:/|\Z)'
    decision: allow
  - id: dev-null
    actions: [file_write]
    target: /dev/null
    decision: allow
  - id: bash
    actions: [process_spawn, shell_execute]
    pattern: '^(?:/usr/bin/bash|/bin/bash|bash)(?:\s|\Z)'
    decision: allow
"""

JOB = """#!/bin/bash
set -e
cat "$HOME/.config/mytool/settings.ini"
mkdir -p "$HOME/.cache/mytool"
echo one > "$HOME/.cache/mytool/a.bin"
echo two > "$HOME/.cache/mytool/b.bin"
date +%Y > /dev/null
ls "$HOME/.cache/mytool"
echo done > result.txt
"""


def _job(sandbox: Sandbox) -> str:
    config = sandbox.home / ".config" / "mytool"
    config.mkdir(parents=True)
    (config / "settings.ini").write_text("color=blue\n")
    (sandbox.workspace / "job.sh").write_text(JOB)
    return sandbox.policy("tight", TIGHT)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_shadow_then_suggest_turns_a_failing_job_into_a_passing_one(sandbox: Sandbox) -> None:
    policy = _job(sandbox)
    failing = sandbox.run("bash", "job.sh", policy=policy, agent_id="job")
    assert failing.returncode != 0
    assert not (sandbox.workspace / "result.txt").exists()

    shadow = sandbox.run("bash", "job.sh", policy=policy, agent_id="job", extra=["--shadow"])
    assert shadow.returncode == 0, shadow.stderr
    assert "color=blue" in shadow.stdout
    assert "would be denied" in shadow.stderr and "policy suggest --agent job" in shadow.stderr
    records = [r for r in sandbox.audit_records() if r.get("agent") == "job"]
    would = [r for r in records if r.get("would_deny")]
    assert would and all(r["decision"] == "deny" and r["response"] == "allow" for r in would)
    assert not [r for r in records if r.get("kind") == "signal"]

    learned = sandbox.policy_dir / "tight-learned.yaml"
    suggested = sandbox.agentsup("policy", "suggest", "--agent", "job", "-o", str(learned))
    assert suggested.returncode == 0, suggested.stderr
    text = learned.read_text()
    assert f"extends:\n- {policy}\n" in text and "'{home}/.cache/mytool/**'" in text
    check = sandbox.agentsup("policy", "check", str(learned))
    assert check.returncode == 0, check.stdout + check.stderr

    for path in (sandbox.home / ".cache", sandbox.workspace / "result.txt"):
        if path.is_dir():
            for child in sorted(path.rglob("*"), reverse=True):
                child.unlink() if child.is_file() else child.rmdir()
            path.rmdir()
        else:
            path.unlink()
    passing = sandbox.run("bash", "job.sh", policy=str(learned), agent_id="job2")
    assert passing.returncode == 0, passing.stderr
    assert (sandbox.workspace / "result.txt").read_text() == "done\n"
    assert "Permission denied" not in passing.stderr

    explain = sandbox.agentsup(
        "policy",
        "explain",
        "--policy",
        str(learned),
        "--workspace",
        str(sandbox.workspace),
        "file_read",
        str(sandbox.key),
    )
    assert explain.returncode == 1, explain.stdout  # still denied
    assert "secret-ssh" in explain.stdout


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_shadow_still_refuses_a_secret_without_a_signal(sandbox: Sandbox) -> None:
    policy = _job(sandbox)
    result = sandbox.run(
        "cat", str(sandbox.key), policy=policy, agent_id="peek", extra=["--shadow"]
    )
    assert result.returncode == 1
    assert "PRIVATE" not in result.stdout and "Permission denied" in result.stderr
    # The summary says what made the job fail, not only what would have been refused.
    assert "1 action(s) were refused all the same" in result.stderr
    assert f"file_read {sandbox.key} (secret-ssh)" in result.stderr
    records = [r for r in sandbox.audit_records() if r.get("agent") == "peek"]
    read = [r for r in records if r.get("target") == str(sandbox.key)]
    assert read and read[0]["response"] == "block" and not read[0].get("would_deny")
    assert not [r for r in records if r.get("kind") == "signal"]
    suggested = sandbox.agentsup("policy", "suggest", "--agent", "peek")
    assert suggested.returncode == 0, suggested.stderr
    assert str(sandbox.key) not in suggested.stdout
    assert ".ssh" not in suggested.stdout.split("learned-", 1)[-1]


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_default_deny_kill_points_at_policy_suggest(sandbox: Sandbox) -> None:
    policy = sandbox.policy(
        "killing",
        TIGHT.replace("name: tight", "name: killing").replace(
            "on_violation: block", "on_violation: sigkill"
        ),
    )
    _job(sandbox)
    result = sandbox.run("bash", "job.sh", policy=policy, agent_id="k")
    assert result.returncode == 137
    assert "agentsup policy suggest --agent k" in result.stderr
    assert "--shadow" in result.stderr


# -- pure: records in, policy text out ----------------------------------------------


def _record(action: str, target: str, rule: str = "<default>") -> dict[str, object]:
    return {
        "agent": "a",
        "kind": "decision",
        "action_type": action,
        "target": target,
        "decision": "deny",
        "rule": rule,
        "response": "block",
    }


def _suggested(records: list[dict[str, object]], parent_text: str) -> str:
    parent = load_policy_text(parent_text, "parent.yaml")
    strict_source = builtin_source("strict")
    assert strict_source is not None
    strict = load_source(strict_source, Path("/nonexistent"))
    start = {"agent": "a", "kind": "lifecycle", "event": "start", "policy": "parent"}
    run = last_run([_record("file_read", "/old"), start, *records], "a")
    assert run[0] is start and len(run) == len(records) + 1
    context = RunContext(workspace="/w", home="/h", agent_id="a")
    return suggest(run, parent, strict, context, extends="parent", name="parent-learned")


def test_suggest_generalises_and_never_allows_a_secret_or_a_destructive_command() -> None:
    text = _suggested(
        [
            _record("file_write", "/h/.cache/pip/x/1"),
            _record("file_write", "/h/.cache/pip/y/2"),
            *(_record("file_read", f"/data/in/{n}.csv") for n in range(4)),
            _record("file_read", "/h/.ssh/id_rsa"),
            _record("file_read", "/h/.aws/credentials"),
            _record("shell_execute", "rm -rf /"),
            _record("shell_execute", "make all"),
            _record("process_spawn", "/usr/bin/make"),
            _record("file_read", "/srv/odd*[name]"),
            _record("file_read", "/etc/hosts", rule="no-etc"),
            _record("file_read", "/x", rule="agentsup-self-protection"),
        ],
        TIGHT.replace("name: tight", "name: parent")
        + "  - {id: no-etc, actions: [file_read], target: /etc/hosts, decision: deny,"
        + " priority: 5}\n",
    )
    assert "extends:\n- parent\n" in text
    policy = load_policy_text(text.replace("extends:\n- parent\n", ""), "learned.yaml")
    compiled_rules = {rule.id: rule for rule in policy.rules}
    learned = [rule for rule in policy.rules if rule.id.startswith("learned-")]
    targets = {rule.target or rule.pattern for rule in learned}
    assert "{home}/.cache/pip/**" in targets and "/data/in/*" in targets
    assert "make all" in targets and "/usr/bin/make" in targets
    assert r"/srv/odd\*\[name]" in targets and "/etc/hosts" in targets
    assert not any(".ssh" in t or ".aws" in t or "rm " in t or t == "/x" for t in targets)
    etc = next(rule for rule in learned if rule.target == "/etc/hosts")
    assert etc.priority == 5  # just before the rule that refused it
    assert "secret-ssh" in compiled_rules and "rm-rf-root" in compiled_rules
    compiled = compile_policy(policy, RunContext("/w", "/h", "a"))
    for action, target in [
        (ActionType.FILE_READ, "/h/.ssh/id_rsa"),
        (ActionType.SHELL_EXECUTE, "rm -rf /"),
    ]:
        assert compiled.evaluate(Event(action, target)).verdict is Verdict.DENY
    assert compiled.evaluate(Event(ActionType.FILE_READ, "/data/in/9.csv")).verdict is Verdict.ALLOW


@pytest.mark.parametrize(
    ("connects", "network"),
    [(["127.0.0.1:8765", "[::1]:8080"], "proxy"), (["127.0.0.1:8765", "10.0.0.5:5432"], "direct")],
)
def test_learned_connects_to_addresses_say_which_network(connects: list[str], network: str) -> None:
    """New user 18: a learned `127.0.0.1:9` rule, with no `network:` key, meant
    the host's network, and every check of it warned so.  Loopback only: the
    agent's own servers (its own namespace, as in the run); else direct."""
    text = _suggested(
        [_record("network_connect", target) for target in connects],
        TIGHT.replace("name: tight", "name: parent"),
    )
    assert f"\nnetwork: {network}\n" in text, text
    policy = load_policy_text(text.replace("extends:\n- parent\n", ""), "learned.yaml")
    assert policy.network == network and policy.warnings == ()
    assert "learned-network-127-0-0-1-8765" in {rule.id for rule in policy.rules}


def test_suggest_with_nothing_refused_adds_no_rules() -> None:
    text = _suggested([], TIGHT.replace("name: tight", "name: parent"))
    assert "rules: []" in text
    assert "secret-ssh" not in text  # no learned rule: nothing to guard


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_suggest_uses_the_runs_home_not_the_callers(sandbox: Sandbox) -> None:
    """Under sudo, or for a daemon agent with its own user, the home of the run
    is not the home of whoever asks: the start record says the run's."""
    policy = _job(sandbox)
    shadow = sandbox.run("bash", "job.sh", policy=policy, agent_id="away", extra=["--shadow"])
    assert shadow.returncode == 0, shadow.stderr
    elsewhere = {**sandbox.env, "HOME": str(sandbox.root)}
    suggested = subprocess.run(
        [sys.executable, "-m", "agentsup", "policy", "suggest", "--agent", "away"],
        env=elsewhere,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert suggested.returncode == 0, suggested.stderr
    assert "'{home}/.cache/mytool/**'" in suggested.stdout, suggested.stdout


def test_suggest_for_an_agent_with_no_run_answers_in_json(sandbox: Sandbox) -> None:
    sandbox.audit_log.parent.mkdir(parents=True, exist_ok=True)
    sandbox.run("true", agent_id="other")
    result = sandbox.agentsup("policy", "suggest", "--agent", "nosuch", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "ok": False,
        "error": "policy suggest: no run of agent 'nosuch' in the audit log",
        "exit_code": 1,
    }


HOOKED_REQUEST = """
import urllib.error, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:9/calc.py", timeout=5)
except PermissionError as exc:
    print("refused by agentsup:", exc)
except (urllib.error.URLError, OSError) as exc:
    print("went ahead:", exc)
"""


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_shadow_lets_what_the_hook_refuses_go_too(sandbox: Sandbox) -> None:
    """New user 17: under --shadow the audit log said a Python agent's request
    was let go (`would_deny`), and the hook refused it all the same: the
    learning run stopped early.  The hook's reply is what the judge did."""
    result = sandbox.run("python3", "-c", HOOKED_REQUEST, agent_id="learner", extra=["--shadow"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "went ahead:" in result.stdout, result.stdout + result.stderr[-2000:]
    hooked = [
        r
        for r in sandbox.audit_records()
        if r.get("layer") == "hook" and r.get("action_type") == "network_request"
    ]
    assert hooked and all(r["would_deny"] and r["response"] == "allow" for r in hooked), hooked
