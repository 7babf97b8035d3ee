"""Under `strict`, an agent that reaches for an SSH key is killed, however it tries.

Every test runs a real agent process under `agentsup run` and checks the real
outcome: exit status 137, the stderr line naming the rule, the audit record,
and that the key's bytes never reached the agent's output.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import FAKE_KEY, TRY, Sandbox, agent_reports

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

SECRET_MARK = "c2VjcmV0LWJ5dGVz"  # a piece of the planted key's body


def assert_killed_for_key(sandbox: Sandbox, result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 137, result.stderr
    assert "rule 'secret-ssh' denied file_read" in result.stderr or (
        "rule 'secret-id-rsa' denied file_read" in result.stderr
    ), result.stderr
    assert SECRET_MARK not in result.stdout
    assert SECRET_MARK not in result.stderr
    assert sandbox.key.read_text() == FAKE_KEY
    kills = [r for r in sandbox.audit_records() if r["kind"] == "signal"]
    assert kills and kills[0]["signal"] == "SIGKILL"


def test_python_open_of_the_key_is_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "read", str(sandbox.key))
    assert_killed_for_key(sandbox, result)
    denied = [r for r in sandbox.audit_records() if r.get("decision") == "deny"]
    assert denied[0]["target"] == str(sandbox.key)
    assert denied[0]["layer"] == "seccomp"
    assert denied[0]["severity"] == "critical"


def test_child_cat_is_killed_with_the_whole_tree(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "exec", "cat", str(sandbox.key))
    assert_killed_for_key(sandbox, result)


def test_os_system_is_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "system", f"cat {sandbox.key}")
    assert_killed_for_key(sandbox, result)


def test_raw_ctypes_openat_is_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "ctypes_openat", str(sandbox.key))
    assert_killed_for_key(sandbox, result)


def test_openat2_is_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "openat2", str(sandbox.key))
    assert_killed_for_key(sandbox, result)


def test_symlink_planted_in_the_workspace_is_killed(sandbox: Sandbox) -> None:
    link = sandbox.workspace / "innocent.txt"
    link.symlink_to(sandbox.key)
    result = sandbox.run("python3", TRY, "read", str(link))
    assert_killed_for_key(sandbox, result)


def test_hardlink_planted_in_the_workspace_is_killed(sandbox: Sandbox) -> None:
    link = sandbox.workspace / "innocent.txt"
    os.link(sandbox.key, link)
    result = sandbox.run("python3", TRY, "read", str(link))
    assert_killed_for_key(sandbox, result)


def test_hardlink_made_by_the_agent_is_killed(sandbox: Sandbox) -> None:
    link = sandbox.workspace / "copy"
    result = sandbox.run(
        "python3", TRY, "link", str(sandbox.key), str(link), "then", "read", str(link)
    )
    assert_killed_for_key(sandbox, result)
    assert not link.exists()


def test_proc_self_root_is_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "read", f"/proc/self/root{sandbox.key}")
    assert_killed_for_key(sandbox, result)


def test_dotdot_from_the_workspace_is_killed(sandbox: Sandbox) -> None:
    sneaky = f"{sandbox.workspace}/../home/./.ssh/../.ssh/id_rsa"
    result = sandbox.run("python3", TRY, "read", sneaky)
    assert_killed_for_key(sandbox, result)


def test_relative_path_from_the_workspace_is_killed(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "read", "../home/.ssh/id_rsa")
    assert_killed_for_key(sandbox, result)


@pytest.mark.slow
def test_a_thread_flipping_the_path_buffer_never_leaks(sandbox: Sandbox) -> None:
    """TOCTOU: a second thread rewrites the path between check and use."""
    decoy = sandbox.workspace / "decoy.txt"
    decoy.write_text("nothing to see\n")
    policy = sandbox.policy(
        "race",
        """
name: race
default: allow
on_violation: block
rules:
  # Torn reads of the flipping buffer produce mixed paths; block them all
  # (no kill), so the loop runs its thousands of tries.
  - id: key-blocked
    actions: [file_read]
    pattern: 'id_rsa|[.]ssh|ome/'
    decision: deny
""",
    )
    result = sandbox.run(
        "python3", TRY, "race", str(decoy), str(sandbox.key), "5000", policy=policy, timeout=240
    )
    assert result.returncode == 0, result.stderr
    (report,) = agent_reports(result.stdout)
    assert report["data"]["leaked"] == 0
    assert report["data"]["opened"] > 0
    assert SECRET_MARK not in result.stdout


def test_reading_the_workspace_is_fine(sandbox: Sandbox) -> None:
    note = sandbox.workspace / "note.txt"
    note.write_text("hello")
    result = sandbox.run("python3", TRY, "read", str(note))
    assert result.returncode == 0, result.stderr
    assert agent_reports(result.stdout)[0]["data"] == "hello"


@pytest.mark.slow
def test_a_thread_flipping_an_unlink_path_never_deletes_the_protected_file(
    sandbox: Sandbox,
) -> None:
    keep = sandbox.workspace / "keep" / "precious.txt"
    keep.parent.mkdir()
    keep.write_text("precious")
    policy = sandbox.policy(
        "keep",
        """
name: keep
extends: [strict]
rules:
  - id: keep-precious
    actions: [file_delete]
    target: "{workspace}/keep/**"
    decision: deny
    on_violation: block
    priority: 1
""",
    )
    scratch = sandbox.workspace / "scratch.txt"
    result = sandbox.run(
        "python3", TRY, "unlink_race", str(scratch), str(keep), "3000", policy=policy, timeout=240
    )
    assert result.returncode == 0, result.stderr
    assert agent_reports(result.stdout)[0]["data"]["removed"] > 0
    assert keep.read_text() == "precious"
