"""Secrets `strict` keeps from a real agent: root's credential files, tokens, histories.

A uid-0 agent with no capabilities still owns root's files, so for it only
the policy stands between it and /etc/shadow- or an SSH host key.  Each file
is planted (or, under /etc, used where the host has it) and read by a real
agent under `strict`: the credentials kill it, the histories and ~/.npmrc
are refused quietly, and none of their bytes come out.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TRY, Sandbox, agent_reports

from agentsup.events import ActionType, Event, Verdict, ViolationMode
from agentsup.policy import RunContext, compile_policy, resolve_policy

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

MARKER = "AGENTSUP-PLANTED-SECRET-7781"

# path (under {home} unless absolute) -> the rule that refuses it, and whether it kills.
SECRETS: dict[str, tuple[str, bool]] = {
    "/etc/shadow-": ("system-credentials", True),
    "/etc/gshadow-": ("system-credentials", True),
    "/etc/ssh/ssh_host_ed25519_key": ("system-credentials", True),
    "/etc/ssh/ssh_host_rsa_key": ("system-credentials", True),
    "/etc/ssl/private/server-cert": ("secret-ssl-private", True),
    "/etc/krb5.keytab": ("system-credentials", True),
    ".git-credentials": ("token-files", True),
    ".pypirc": ("token-files", True),
    ".config/gh/hosts.yml": ("secret-home-credentials", True),
    ".password-store/mail.gpg": ("secret-home-credentials", True),
    ".local/share/keyrings/login.keyring": ("secret-home-credentials", True),
    ".npmrc": ("npm-user-config", False),
    ".bash_history": ("shell-history", False),
    ".zsh_history": ("shell-history", False),
    ".python_history": ("shell-history", False),
    ".psql_history": ("shell-history", False),
    ".local/share/fish/fish_history": ("shell-history", False),
}


def _path(sandbox: Sandbox, name: str) -> Path:
    return Path(name) if name.startswith("/") else sandbox.home / name


def test_each_secret_is_refused_by_its_rule_in_the_policy(sandbox: Sandbox) -> None:
    context = RunContext(str(sandbox.workspace), str(sandbox.home), "t")
    strict = compile_policy(resolve_policy("strict", Path("/nonexistent-policy-dir")), context)
    for name, (rule, kills) in SECRETS.items():
        # ~/.npmrc is only refused for reading (npm writes its own settings there).
        for action in (ActionType.FILE_READ, ActionType.FILE_WRITE)[: 2 if kills else 1]:
            decision = strict.evaluate(Event(action, str(_path(sandbox, name))))
            assert (decision.verdict, decision.rule_id) == (Verdict.DENY, rule), (name, decision)
            expected = ViolationMode.SIGKILL if kills else ViolationMode.BLOCK
            assert decision.on_violation is expected, (name, decision)


def test_each_secret_is_unreadable_to_a_root_agent_under_strict(sandbox: Sandbox) -> None:
    planted = []
    for name in SECRETS:
        path = _path(sandbox, name)
        if name.startswith("/"):
            if path.exists():
                planted.append(name)  # the host's own: read, never written
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"token = {MARKER}\n")
        os.chmod(path, 0o600)
        planted.append(name)
    assert len(planted) >= 13, planted  # every file of the home directory, and /etc's

    def attempt(index: int) -> tuple[str, subprocess.CompletedProcess[str]]:
        name = planted[index]
        result = sandbox.run(
            "python3", TRY, "read", str(_path(sandbox, name)), agent_id=f"secret-{index}"
        )
        return name, result

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = list(pool.map(attempt, range(len(planted))))
    records = sandbox.audit_records()
    for name, result in outcomes:
        rule, kills = SECRETS[name]
        assert MARKER not in result.stdout, name
        if kills:
            assert result.returncode == 137, (name, result.stderr)
        else:
            (report,) = agent_reports(result.stdout)
            assert report["result"] == "EACCES", (name, report)
        target = str(_path(sandbox, name))
        assert any(r.get("rule") == rule and r.get("target") == target for r in records), name
