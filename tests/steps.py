"""Running a red-team agent that takes its steps as JSON, and reading its reports.

The agents (an `AGENT` script text in each red-team test file) take
`STEPS_JSON` as their one argument, each step `[case, op, *args]`, and print
one JSON report per step (`{"case", "result", "data"?}`), then "survived".
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import Sandbox, fastpath_env


def steps_command(
    sandbox: Sandbox, agent: str, name: str, policy: str, steps: list[list[str]]
) -> list[str]:
    """`agentsup run` of the agent, written into the workspace as `name`."""
    script = sandbox.workspace / name
    script.write_text(agent)
    return sandbox.command("python3", str(script), json.dumps(steps), policy=policy)


def run_steps(
    sandbox: Sandbox,
    native: bool,
    agent: str,
    name: str,
    policy: str,
    steps: list[list[str]],
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    """The agent's steps under agentsup, on the native path or the Python path alone."""
    return subprocess.run(
        steps_command(sandbox, agent, name, policy, steps),
        env={**sandbox.env, **fastpath_env(native)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_steps_bare(
    workspace: Path, agent: str, name: str, steps: list[list[str]]
) -> subprocess.CompletedProcess[str]:
    """The same steps without agentsup: what the kernel answers the agent itself."""
    script = workspace / name
    script.write_text(agent)
    done = subprocess.run(
        ["python3", str(script), json.dumps(steps)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.rstrip().endswith("survived"), done.stderr[-2000:]
    return done


def step_reports(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    """Each step's report, by case."""
    reports = (json.loads(t) for t in result.stdout.splitlines() if t.startswith("{"))
    return {r["case"]: r for r in reports}


def assert_survived(result: subprocess.CompletedProcess[str]) -> None:
    """The agent ran every step and was not killed."""
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.rstrip().endswith("survived"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
