"""What `agentsup run` tells the operator on its terminal: enough, not a flood.

- The environment variables the policy's `env.pass` keeps from the agent are
  named once, at the start: a tool missing its PIP_INDEX_URL or CC otherwise
  fails far from the cause.
- A rule that warns is said the first few times, then once that it goes on;
  every warning is in the audit log.
"""

from __future__ import annotations

import pytest
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]


def test_the_variables_kept_from_the_agent_are_named_once(sandbox: Sandbox) -> None:
    result = sandbox.run(
        "sh", "-c", 'echo "CC=${CC-unset}"', env={"CC": "clang", "PIP_INDEX_URL": "file:///x"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "CC=unset"
    notes = [line for line in result.stderr.splitlines() if "env.pass" in line]
    assert len(notes) == 1
    assert "CC" in notes[0] and "PIP_INDEX_URL" in notes[0]
    assert "AGENTSUP_" not in notes[0]  # agentsup's own settings are not the agent's


def test_a_warning_rule_is_said_a_few_times_and_then_only_recorded(sandbox: Sandbox) -> None:
    statements = 20
    script = (
        "import sqlite3\n"
        f"for i in range({statements}): sqlite3.connect(':memory:').execute('create table t(x)')\n"
    )
    result = sandbox.run("python3", "-c", script)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "database-delete-execute" in line]
    assert len(said) == 4 and "the rest are only in the audit log" in said[-1]
    recorded = [r for r in sandbox.audit_records() if r.get("rule") == "database-delete-execute"]
    assert len(recorded) == statements
