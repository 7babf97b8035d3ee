"""A bug the supervisor hits serving one agent ends that agent, not the others.

The daemon serves several agents from one loop.  A fault is injected into the
real daemon (its mediator raises whenever it serves agent "faulty"), as an
error nobody foresaw would: the faulty agent is killed and the record says
why, while agent "steady" runs on and the daemon keeps answering.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import Sandbox, eventually

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

# The real `agentsup daemon`, with one fault: serving agent "faulty" raises.
DRIVER = textwrap.dedent(
    """
    import runpy, sys
    from agentsup.supervision import mediator

    served = mediator.Mediator.on_ready

    def on_ready(self, events):
        if self.agent_id == "faulty":
            raise RuntimeError("injected fault")
        return served(self, events)

    mediator.Mediator.on_ready = on_ready
    sys.argv = ["agentsup", "daemon", "--agents-dir", sys.argv[1]]
    runpy.run_module("agentsup", run_name="__main__")
    """
)


def test_a_fault_serving_one_agent_kills_that_agent_only(sandbox: Sandbox) -> None:
    """Agent "faulty" runs a program now and then (the supervisor is told of
    each exec); serving it raises.  Agent "steady" counts in a file.

    Correct outcome: faulty is killed (its exit record: killed_by
    agentsup-mediation-error, exit 137) with one line saying why and no
    traceback; steady goes on counting; the daemon answers `ps` and stops
    cleanly (exit 0)."""
    agents = sandbox.root / "agents"
    agents.mkdir()
    ws = sandbox.workspace
    count = ws / "count"
    for name, script in [
        ("faulty", "while :; do /bin/true; sleep 0.1; done"),
        ("steady", f"i=0; while :; do i=$((i+1)); echo $i > {count}; sleep 0.1; done"),
    ]:
        (agents / f"{name}.yaml").write_text(
            f"program: /bin/sh\nargs: ['-c', {json.dumps(script)}]\nworkspace: {ws}\n"
            "restart: never\n"
        )
    driver = sandbox.root / "driver.py"
    driver.write_text(DRIVER)
    daemon = subprocess.Popen(
        [sys.executable, str(driver), str(agents)],
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def faulty_exit() -> dict[str, object] | None:
            for record in sandbox.audit_records():
                if record.get("agent") == "faulty" and record.get("event") == "exit":
                    return record
            return None

        eventually(lambda: faulty_exit() is not None or daemon.poll() is not None)
        assert daemon.poll() is None, daemon.communicate()[1][-2000:]
        exit_record = faulty_exit()
        assert exit_record is not None
        assert exit_record["killed_by"] == "agentsup-mediation-error"
        assert exit_record["exit_code"] == 128 + signal.SIGKILL
        kills = [
            r
            for r in sandbox.audit_records()
            if r.get("agent") == "faulty" and r.get("kind") == "signal"
        ]
        assert kills and "RuntimeError: injected fault" in str(kills[0]["reason"])
        counted = int(count.read_text())
        eventually(lambda: int(count.read_text() or 0) > counted + 3)
        listing = sandbox.agentsup("ps", "--json")
        states = {a["id"]: a["state"] for a in json.loads(listing.stdout)}
        assert states["steady"] == "running", states
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    assert (
        "killed agent 'faulty': the supervisor failed serving it "
        "(RuntimeError: injected fault)" in err
    ), err[-2000:]
    assert os.path.exists(count)


def test_an_agent_ended_by_a_real_time_signal_is_named_and_recorded(sandbox: Sandbox) -> None:
    """Python's signal enum names no real-time signal: an agent that ended by
    signal 40 ended `run` with an internal error (exit 125, no exit record),
    and under the daemon every agent with it (red team 26)."""
    result = sandbox.run("python3", "-c", "import os; os.kill(os.getpid(), 40)")
    assert result.returncode == 128 + 40, result.stderr[-2000:]
    [ended] = [r for r in sandbox.audit_records() if r.get("event") == "exit"]
    assert ended["signal"] == f"SIGRTMIN+{40 - signal.SIGRTMIN}"
    assert "internal error" not in result.stderr
