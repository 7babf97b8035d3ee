"""A working directory deeper than PATH_MAX works as it does bare.

The kernel resolves a relative name from the cwd whatever its depth; only
naming it (readlink of /proc/PID/cwd, getcwd) stops at PATH_MAX.  agentsup
judges by real path: past PATH_MAX that path is found by climbing ".." to an
ancestor that can be named (`proc.long_path`), and the broker acts on the
directory it pinned.  No target is ever made up: a file at such a depth is
judged under the workspace, never as `/f`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from agent_ops import OPS_MAIN, OPS_PRELUDE
from conftest import Sandbox, agent_reports, both_paths, fastpath_env

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

LEVEL = "d" * 200
DEPTH = 22  # 22 * 201 bytes: past PATH_MAX (4096)

AGENT = (
    OPS_PRELUDE
    + r"""
import os

LEVEL, DEPTH = "d" * 200, 22


def down():
    for _ in range(DEPTH):
        os.chdir(LEVEL)
    return {}


def write():
    with open("f", "w") as out:
        out.write("hi\n")
    return {}


def read():
    with open("f") as src:
        return {"text": src.read()}


def mkdir():
    os.mkdir("d")
    return {"listed": sorted(os.listdir("."))}


def missing():
    open("no-such-file")
    return {}


def move():
    os.rename("f", "g")
    os.chmod("g", 0o600)
    return {"listed": sorted(os.listdir("."))}


def clean():
    os.unlink("g")
    os.rmdir("d")
    return {"listed": os.listdir(".")}


OPS = {
    "down": down, "write": write, "read": read, "mkdir": mkdir, "missing": missing,
    "move": move, "clean": clean,
}
"""
    + OPS_MAIN
)


def deep_tree(workspace: Path) -> None:
    """DEPTH nested directories made bare, one level at a time (no path names them all)."""
    fd = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            os.mkdir(LEVEL, dir_fd=fd)
            below = os.open(LEVEL, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


def made_up_targets(sandbox: Sandbox) -> list[tuple[object, object]]:
    """File records whose target is not under the workspace (a made-up `/f`)."""
    workspace = str(sandbox.workspace.resolve()) + "/"
    return [
        (r.get("action_type"), r.get("target"))
        for r in sandbox.audit_records()
        if str(r.get("action_type") or "").startswith("file_")
        and LEVEL in str(r.get("target"))
        and not str(r.get("target")).startswith(workspace)
    ] + [
        (r.get("action_type"), r.get("target"))
        for r in sandbox.audit_records()
        if r.get("target") in ("/f", "/d", "/g", "/no-such-file")
    ]


@both_paths
def test_file_work_in_a_cwd_deeper_than_path_max(user_sandbox: Sandbox, native: bool) -> None:
    deep_tree(user_sandbox.workspace)
    agent = user_sandbox.workspace / "deep.py"
    agent.write_text(AGENT)
    ops = ("down", "write", "read", "mkdir", "missing", "move", "clean")
    result = user_sandbox.run("python3", str(agent), *ops, env=fastpath_env(native))
    assert result.returncode == 0, result.stderr
    reports = {str(r["op"]): r for r in agent_reports(result.stdout)}
    assert reports["down"]["result"] == "ok", reports
    assert reports["write"]["result"] == "ok", reports
    assert reports["read"] == {"op": "read", "result": "ok", "text": "hi\n"}
    assert reports["mkdir"] == {"op": "mkdir", "result": "ok", "listed": ["d", "f"]}
    assert reports["missing"]["result"] == "ENOENT"  # the kernel's, not a made-up refusal
    assert reports["move"] == {"op": "move", "result": "ok", "listed": ["d", "g"]}
    assert reports["clean"] == {"op": "clean", "result": "ok", "listed": []}
    assert user_sandbox.denials() == []
    assert made_up_targets(user_sandbox) == []


def test_a_shell_in_a_cwd_deeper_than_path_max(user_sandbox: Sandbox) -> None:
    """The new user's round: `echo hi > f`, `mkdir d`, `cat f` from that deep."""
    deep_tree(user_sandbox.workspace)
    script = (
        f"for i in $(seq {DEPTH}); do cd {LEVEL} 2>/dev/null || exit 3; done; "
        "echo hi > f && mkdir d && cat f && ls"
    )
    result = user_sandbox.run("bash", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hi", "d", "f"]
    assert made_up_targets(user_sandbox) == []
    fd = os.open(user_sandbox.workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in [LEVEL] * DEPTH:
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        assert sorted(os.listdir(fd)) == ["d", "f"]
    finally:
        os.close(fd)


def test_a_file_past_path_max_is_judged_under_the_workspace(user_sandbox: Sandbox) -> None:
    """A refused write that deep is recorded with its real (long) path."""
    deep_tree(user_sandbox.workspace)
    policy = user_sandbox.policy(
        "no-deep-f",
        """
name: no-deep-f
extends: [strict]
rules:
  - id: no-f
    actions: [file_write]
    target: "{workspace}/**/f"
    decision: deny
    priority: 1
    on_violation: block
""",
    )
    agent = user_sandbox.workspace / "deep.py"
    agent.write_text(AGENT)
    result = user_sandbox.run("python3", str(agent), "down", "write", "mkdir", policy=policy)
    assert result.returncode == 0, result.stderr
    reports = {str(r["op"]): r for r in agent_reports(result.stdout)}
    assert reports["write"]["result"] == "EACCES", reports
    assert reports["mkdir"] == {"op": "mkdir", "result": "ok", "listed": ["d"]}
    expected = "/".join([str(user_sandbox.workspace.resolve()), *[LEVEL] * DEPTH, "f"])
    refused = [r.get("target") for r in user_sandbox.audit_records() if r.get("decision") == "deny"]
    assert refused == [expected]
