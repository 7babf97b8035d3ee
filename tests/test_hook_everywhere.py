"""Under the real supervisor: every Python the agent runs carries the hook.

A shell agent starting `python3 x.py`, Debian's /usr/bin/python3 as the
PROGRAM, and a venv the agent made in its workspace: each one's os.environ
read is decided by the policy and recorded with `layer: hook`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import Sandbox
from test_hook_site import READ_HOME
from test_hook_supervised import HOME_DENIED

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

NO_HOME = HOME_DENIED.format(mode="block")


def _script(sandbox: Sandbox) -> str:
    path = sandbox.workspace / "x.py"
    path.write_text(textwrap.dedent(READ_HOME))
    return str(path)


def _hook_denials(sandbox: Sandbox) -> list[dict[str, object]]:
    return [
        r
        for r in sandbox.audit_records()
        if r.get("layer") == "hook" and r.get("rule") == "no-home"
    ]


@pytest.mark.parametrize(
    "program",
    [
        pytest.param(lambda s: ["/bin/bash", "-c", f"python3 {s}"], id="bash-python3"),
        pytest.param(lambda s: ["/usr/bin/python3", s], id="usr-bin-python3"),
        pytest.param(lambda s: [sys.executable, s], id="own-python-not-as-py-program"),
    ],
)
def test_a_python_started_by_any_program_is_hooked(sandbox: Sandbox, program: object) -> None:
    policy = sandbox.policy("nohome", NO_HOME)
    argv = program(_script(sandbox))  # type: ignore[operator]
    result = sandbox.run(*argv, policy=policy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:") and "no-home" in result.stdout, result.stdout
    assert len(_hook_denials(sandbox)) == 1
    assert not [r for r in sandbox.audit_records() if r.get("kind") == "tamper"]


def test_the_agents_own_venv_is_hooked(sandbox: Sandbox) -> None:
    venv = sandbox.workspace / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    policy = sandbox.policy("nohome", NO_HOME)
    result = sandbox.run(str(venv / "bin" / "python"), _script(sandbox), policy=policy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:"), result.stdout
    assert len(_hook_denials(sandbox)) == 1


def test_a_program_that_never_starts_python_is_not_tamper(sandbox: Sandbox) -> None:
    result = sandbox.run("/bin/echo", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
    assert not [r for r in sandbox.audit_records() if r.get("kind") == "tamper"]
