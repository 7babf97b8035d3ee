"""What `agentsup run` tells the operator on its terminal: enough, not a flood.

- The environment variables the policy's `env.pass` keeps from the agent are
  named in the audit start record, and on the operator's terminal at the
  start: a tool missing its PIP_INDEX_URL or CC otherwise fails far from
  the cause.
- A rule that warns is said the first few times, then once that it goes on;
  every warning is in the audit log.
"""

from __future__ import annotations

import pytest
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]


def test_the_variables_kept_from_the_agent_are_named_in_the_start_record(
    sandbox: Sandbox,
) -> None:
    """(And on the operator's terminal, when stderr is one.)"""
    passed = {"CC": "clang", "CFLAGS": "-O3", "PYTHONUNBUFFERED": "1", "SSL_CERT_FILE": "/x"}
    kept = {"PIP_INDEX_URL": "https://u:p@index.invalid/", "AWS_PROFILE": "prod"}
    script = 'echo "$CC $CFLAGS $PYTHONUNBUFFERED $SSL_CERT_FILE ${PIP_INDEX_URL-unset}"'
    result = sandbox.run("sh", "-c", script, env={**passed, **kept})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clang -O3 1 /x unset"
    start = next(r for r in sandbox.audit_records() if r.get("event") == "start")
    dropped = start["env_not_passed"]
    assert isinstance(dropped, list) and set(kept) <= set(dropped)
    assert not set(passed) & set(dropped)
    assert not any(name.startswith("AGENTSUP_") for name in dropped)  # agentsup's own


def test_a_warning_rule_is_said_a_few_times_and_then_only_recorded(sandbox: Sandbox) -> None:
    statements = 20
    script = (
        "import sqlite3\n"
        f"for i in range({statements}): sqlite3.connect(':memory:').execute('create table t(x)')\n"
    )
    result = sandbox.run("python3", "-c", script)
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "database-delete-execute" in line]
    assert len(said) == 4 and "the rest are only in the audit log (agentsup audit show)" in said[-1]
    recorded = [r for r in sandbox.audit_records() if r.get("rule") == "database-delete-execute"]
    assert len(recorded) == statements


def test_transactions_are_no_warning(sandbox: Sandbox) -> None:
    """`with connection:` and an explicit BEGIN ... COMMIT change nothing of
    their own: only the statements inside them are judged."""
    script = (
        "import sqlite3\n"
        "db = sqlite3.connect('app.db', isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "db.execute('SAVEPOINT sp')\n"
        "db.execute('RELEASE sp')\n"
        "db.execute('COMMIT')\n"
        "db.isolation_level = ''\n"
        "with db:\n"
        "    db.execute('select 1')\n"
        "print('done')\n"
    )
    result = sandbox.run("python3", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert "warning" not in result.stderr, result.stderr
    assert not [r for r in sandbox.audit_records() if r.get("rule") == "database-delete-execute"]
