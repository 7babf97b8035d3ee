"""What `agentsup run` tells the operator on its terminal: enough, not a flood.

- The environment variables the policy's `env.pass` keeps from the agent are
  named in the audit start record, and on the operator's terminal at the
  start: a tool missing its PIP_INDEX_URL or CC otherwise fails far from
  the cause.
- A rule that warns is said the first few times, then once that it goes on;
  every warning is in the audit log.
"""

from __future__ import annotations

import os
import pwd

import pytest
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]


def test_the_variables_kept_from_the_agent_are_named_in_the_start_record(
    sandbox: Sandbox,
) -> None:
    """(And on the operator's terminal, when stderr is one.)"""
    passed = {
        "CC": "clang",
        "CFLAGS": "-O3",
        "PYTHONUNBUFFERED": "1",
        "SSL_CERT_FILE": "/x",
        "ASAN_OPTIONS": "detect_leaks=0",
    }
    kept = {"PIP_INDEX_URL": "https://u:p@index.invalid/", "AWS_PROFILE": "prod"}
    script = (
        'echo "$CC $CFLAGS $PYTHONUNBUFFERED $SSL_CERT_FILE $ASAN_OPTIONS ${PIP_INDEX_URL-unset}"'
    )
    result = sandbox.run("sh", "-c", script, env={**passed, **kept})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clang -O3 1 /x detect_leaks=0 unset"
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


def test_refusals_with_no_signal_are_named_at_the_end(sandbox: Sandbox) -> None:
    """A blocked refusal shows only as the tool's own error: the end of a run
    that failed names the rule behind it (quiet, low-severity refusals such
    as listing / are left out)."""
    key = sandbox.workspace / "server.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    result = sandbox.run("sh", "-c", f"cat {key}; cat {key}; ls / > /dev/null; exit 3")
    assert result.returncode == 3, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("agentsup: ")]
    assert lines[-3:] == [
        "agentsup: 2 action(s) of agent 't' were refused (no signal):",
        f"agentsup:       2  file_read {key} (workspace-key-read)",
        "agentsup: all of them: agentsup audit show --agent t",
    ]


def test_a_run_that_failed_on_a_quiet_refusal_alone_names_it(sandbox: Sandbox) -> None:
    """Found by a new user: `ls /` failed with "Permission denied" and
    agentsup said nothing, as listing / is a low-severity refusal, left out
    of the summary.  Where nothing else was refused, the low ones are named."""
    result = sandbox.run("ls", "/")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("agentsup: ")]
    assert lines == [
        "agentsup: 1 low-severity action(s) of agent 't' were refused (no signal):",
        "agentsup:       1  file_read / (root-listing)",
        "agentsup: all of them: agentsup audit show --agent t",
    ]


def test_a_refused_ptrace_says_what_helps(sandbox: Sandbox) -> None:
    """Found by a new user: an AddressSanitizer binary failed ("LeakSanitizer
    does not work under ptrace") and the summary said `ptrace ptrace`."""
    traceme = "import ctypes, sys; sys.exit(1 if ctypes.CDLL(None).ptrace(0, 0, 0, 0) else 0)"
    result = sandbox.run("python3", "-S", "-c", traceme)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("agentsup: ")]
    assert (
        "agentsup:       1  ptrace (agentsup-always-refused: a debugger, strace, or a "
        "sanitizer's leak check: ASAN_OPTIONS=detect_leaks=0)" in lines
    ), lines


def test_an_overlong_refused_target_is_named_cut_and_whole_in_the_log(sandbox: Sandbox) -> None:
    """A command line longer than any rule is run on (a glob over 30,000
    names) is refused; the end of the run names it cut to a line a person can
    read, and the audit log keeps it whole.  An agent making refusals at will
    cannot grow what the summary keeps without bound either."""
    result = sandbox.run("bash", "-c", "/bin/echo $(seq 1 30000) > /dev/null")
    assert result.returncode == 126, result.stderr[-2000:]
    said = [line for line in result.stderr.splitlines() if "agentsup-target-too-long" in line]
    assert said and all(len(line) < 2000 for line in said), [len(line) for line in said]
    assert "more) (agentsup-target-too-long)" in said[0], said[0][-200:]
    [record] = [r for r in sandbox.audit_records() if r.get("rule") == "agentsup-target-too-long"]
    assert len(str(record["target"])) > 128 * 1024


def test_a_run_that_ends_well_says_nothing_more(sandbox: Sandbox) -> None:
    """A refusal the job got past (npm without ~/.npmrc) is only in the audit log."""
    key = sandbox.workspace / "server.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    result = sandbox.run("sh", "-c", f"cat {key} 2>/dev/null; echo hello")
    assert result.returncode == 0 and result.stdout == "hello\n"
    assert result.stderr == ""


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
def test_a_thread_the_process_limit_refused_is_said_at_the_end(sandbox: Sandbox) -> None:
    """Threads count against max_processes (pids.max): the kernel's EAGAIN
    says nothing about a policy, so the end of the run does."""
    policy = sandbox.policy(
        "few-tasks", "name: few-tasks\nextends: [strict]\nlimits: {max_processes: 12}\n"
    )
    script = (
        "import threading, time\n"
        "started = 0\n"
        "for _ in range(30):\n"
        "    try:\n"
        "        threading.Thread(target=time.sleep, args=(1,), daemon=True).start()\n"
        "        started += 1\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "print(started)\n"
    )
    result = sandbox.run("python3", "-c", script, policy=policy)
    assert result.returncode == 0, result.stderr
    assert 0 < int(result.stdout) < 30
    refused = 30 - int(result.stdout)
    assert (
        f"agentsup: the policy's max_processes (12) refused {refused} fork(s) or new thread(s)"
        in result.stderr
    )
    end = next(r for r in sandbox.audit_records() if r.get("event") == "exit")
    assert end["process_limit_refused"] == refused


@pytest.mark.requires_root
def test_a_root_agent_in_another_users_workspace_is_told_to_run_as_them(
    sandbox: Sandbox,
) -> None:
    """Root with no capabilities cannot write another user's files: a warning
    names the owner and --user, where the kernel's EACCES names nothing."""
    os.chown(sandbox.workspace, 65534, 65534)
    result = sandbox.run("sh", "-c", "echo x > made || echo refused")
    assert result.stdout.strip() == "refused"
    owner = pwd.getpwuid(65534).pw_name
    assert (
        f"agentsup: warning: the workspace belongs to {owner}, and the agent runs as root "
        "with no capabilities" in result.stderr
    )
    assert f"--user {owner}" in result.stderr
