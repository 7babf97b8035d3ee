"""Running a file reads it: what the policy does not let the agent read, it cannot run.

The kernel maps a program it runs into the new process, which can then read
itself (an ELF header written over the start of a file the agent may write
but not read, with the file in a PT_LOAD, printed the rest).  So an exec
is judged as a read of the file too, on the native path and the Python one.
"""

from __future__ import annotations

import pytest
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

DROP_BOX = """
name: drop-box
extends: strict
rules:
  - id: drop-box-write
    actions: [file_write, file_chmod, file_delete]
    target: "{workspace}/drop/**"
    decision: allow
    priority: 50
  - id: drop-box-unread
    actions: [file_read]
    target: "{workspace}/drop/**"
    decision: deny
    on_violation: block
    priority: 50
    message: the drop box is written, never read
"""


@pytest.mark.parametrize("path", ["native", "python"])
def test_a_file_the_agent_may_write_but_not_read_is_not_run(sandbox: Sandbox, path: str) -> None:
    (sandbox.workspace / "drop").mkdir()
    (sandbox.workspace / "tools").mkdir()
    policy = sandbox.policy("drop-box", DROP_BOX)
    script = (
        "cp /bin/echo drop/run-me && chmod +x drop/run-me && echo written; "
        "drop/run-me leaked || echo 'run refused'; "
        "cp /bin/echo tools/run-me && chmod +x tools/run-me && tools/run-me ran"
    )
    env = {"AGENTSUP_FASTPATH": "0"} if path == "python" else {}
    result = sandbox.run("sh", "-c", script, policy=policy, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:3] == ["written", "run refused", "ran"]
    refusals = [
        r
        for r in sandbox.audit_records()
        if r.get("action_type") == "process_spawn" and r.get("decision") == "deny"
    ]
    assert [r["rule"] for r in refusals] == ["drop-box-unread"]
    assert str(refusals[0]["message"]).startswith("running a file reads it: the drop box")
