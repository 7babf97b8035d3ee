"""The agent cannot drive the operator's terminal through agentsup's own output.

File names and command lines are the agent's.  Where agentsup prints them for
a person (the end-of-run summary, the approval prompt, `pending`, `audit
show`), an ESC, BEL or CR in them shows as `\\x1b`, `\\x07`, `\\x0d`: no
clipboard write (OSC 52), no new window title, no line that overwrites
`rm -rf ...` with `ls -la` so the operator approves something else.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

# A raw control byte: C0 (but the newline between lines), DEL, C1.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")
OSC52 = "\x1b]52;c;ZWNobyBwd25lZAo=\x07\x1b]0;TITLE\x07"  # clipboard write, then a title
OSC52_SHOWN = "\\x1b]52;c;ZWNobyBwd25lZAo=\\x07\\x1b]0;TITLE\\x07"

HOLD_RM = """
name: sh
extends: [strict]
rules:
  - {id: hold-rm, actions: [shell_execute], pattern: '(^|\\s)rm\\s', decision: require_approval,
     priority: 5}
approval: {timeout_seconds: 60, on_timeout: deny}
"""
SPOOF = "rm -rf ./precious #\r\x1b[2Kls -la"
SPOOF_SHOWN = "rm -rf ./precious #\\x0d\\x1b[2Kls -la"


def test_a_refused_file_name_is_shown_escaped_at_the_end_and_in_audit_show(
    sandbox: Sandbox,
) -> None:
    name = f"x{OSC52}.pem"
    (sandbox.workspace / name).write_text("k")  # strict refuses reading *.pem
    script = f"import sys\ntry: open({name!r}).read()\nexcept OSError: sys.exit(1)\n"
    result = sandbox.run("python3", "-c", script)
    assert result.returncode == 1, result.stderr
    assert not RAW_CONTROL.search(result.stderr), result.stderr
    assert "were refused (no signal)" in result.stderr
    assert f"x{OSC52_SHOWN}.pem" in result.stderr

    show = sandbox.agentsup("audit", "show", "--agent", "t")
    assert show.returncode == 0, show.stderr
    assert not RAW_CONTROL.search(show.stdout), show.stdout
    records = sandbox.agentsup("audit", "show", "--agent", "t", "--json").stdout.splitlines()
    assert any(str(json.loads(line).get("target")).endswith(name) for line in records)  # JSON as is


def wait_for_pending(sandbox: Sandbox, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = sandbox.agentsup("pending", "--json")
        if listed.returncode == 0 and json.loads(listed.stdout or "[]"):
            return
        time.sleep(0.1)
    raise AssertionError("nothing became pending")


def test_a_command_line_cannot_hide_itself_from_the_person_who_approves_it(
    sandbox: Sandbox,
) -> None:
    (sandbox.workspace / "precious").mkdir()
    policy = sandbox.policy("sh", HOLD_RM)
    script = f"import subprocess\nsubprocess.run(['/bin/sh', '-c', {SPOOF!r}])\n"
    proc = subprocess.Popen(
        sandbox.command("python3", "-c", script, policy=policy, agent_id="spoof"),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_pending(sandbox)
        pending = sandbox.agentsup("pending")
        denied = sandbox.agentsup("deny", "spoof", "--reason", "no\x1b[2J")
        assert denied.returncode == 0, denied.stderr
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert pending.returncode == 0, pending.stderr
    assert not RAW_CONTROL.search(pending.stdout), pending.stdout
    row = pending.stdout.splitlines()[1]
    assert SPOOF_SHOWN in row and "hold-rm" in row  # the whole command, as it runs

    waiting = [line for line in err.splitlines() if "waiting for approval" in line]
    assert len(waiting) == 1 and SPOOF_SHOWN in waiting[0], err
    assert not RAW_CONTROL.search(err), err
    assert (sandbox.workspace / "precious").exists()

    sandbox.env["COLUMNS"] = "160"  # the target's column is 40 wide
    show = sandbox.agentsup("audit", "show", "--agent", "spoof")
    assert not RAW_CONTROL.search(show.stdout), show.stdout
    # Cut to its column after escaping: between escapes, never inside one.
    assert "/bin/sh -c rm -rf ./precious #\\x0d\\x1b[… require_approval hold-rm" in show.stdout
