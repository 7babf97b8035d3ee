"""A create gets exactly the mode the kernel would give it, umask and all.

The broker's native path creates files for the agent, with the caller's
umask applied (the broker's own is 0), and keeps each thread's umask rather
than read it from /proc for every create.  umask(2) is trapped, so the broker
sees every change before it happens; a kept value must never outlive one:

- after the process's own umask, a thread's (threads share it), and not a
  child's (a child has its own copy);
- after the umask of a process made with clone(CLONE_FS), which shares it
  without being a thread (the broker cannot tell who shares it: every kept
  value goes);
- a umask still in flight (here: waiting for a stopped supervisor) has not
  happened, so a create meanwhile gets the old one, and nothing read then
  may be kept: once it happened, the next create gets the new one.

The Python path (the supervisor creates through the broker) keeps the umask
per process by the same rules: every umask drops every kept value, and none
is kept until the call returned.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import AGENTS, Sandbox, supervisor_stopped

from agentsup.kernel import fastpath

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]
needs_native = pytest.mark.skipif(not fastpath.enabled(), reason=fastpath.status()[1])
both_paths = pytest.mark.parametrize(
    "native",
    [pytest.param(True, id="native", marks=needs_native), pytest.param(False, id="python")],
)

AGENT = "umasks.py"


def _modes(sandbox: Sandbox, scenario: str, native: bool) -> dict[str, str]:
    shutil.copy(AGENTS / AGENT, sandbox.workspace / AGENT)
    result = sandbox.run(
        "python3",
        str(sandbox.workspace / AGENT),
        str(sandbox.workspace),
        scenario,
        env={fastpath.ENV_SWITCH: "1" if native else "0"},
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {line["case"]: line["mode"] for line in lines}


@both_paths
def test_a_create_gets_the_umask_in_force_after_each_change(
    sandbox: Sandbox, native: bool
) -> None:
    assert _modes(sandbox, "sequence", native) == {
        "first": "0o644",
        "again": "0o644",
        "after umask": "0o600",
        "after a thread's umask": "0o640",
        "in the thread": "0o664",
        "after the thread's create": "0o664",
        "in the child": "0o660",
        "parent after the child": "0o664",
    }


@both_paths
def test_a_umask_shared_with_another_process_reaches_its_creates(
    sandbox: Sandbox, native: bool
) -> None:
    assert _modes(sandbox, "shared-fs", native) == {
        "first": "0o644",
        "after the sibling's umask": "0o606",
    }


@needs_native
def test_nothing_read_while_a_umask_is_in_flight_is_kept(sandbox: Sandbox) -> None:
    shutil.copy(AGENTS / AGENT, sandbox.workspace / AGENT)
    command = sandbox.command(
        "python3", str(sandbox.workspace / AGENT), str(sandbox.workspace), "in-flight"
    )
    proc = subprocess.Popen(
        command,
        env={**sandbox.env, fastpath.ENV_SWITCH: "1"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    lines = []
    try:
        lines.append(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "ready"
        # The other thread's umask is forwarded to the supervisor, which is
        # stopped: it waits, while the broker answers the create on its own.
        with supervisor_stopped(proc):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            lines.append(proc.stdout.readline())
            assert proc.stdout.readline().strip() == "created"
        rest, errors = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, errors
    modes = {
        line["case"]: line["mode"]
        for line in map(json.loads, [*lines, *rest.splitlines()])
    }
    assert modes == {"first": "0o644", "while it waits": "0o644", "once it happened": "0o600"}
