"""`agentsup demo`, the README's first command, does what the README says."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]


def test_the_demo_agent_works_is_blocked_and_is_killed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentsup", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "agent: read back: quarterly numbers look fine" in out
    assert "agent: blocked, carrying on (Permission denied)" in out
    assert "workspace-key-read" in out  # the refusal is on record
    assert "(this line should never be printed)" not in out
    assert "exit status: 137 (killed by policy)" in out
    assert "rule 'secret-ssh' denied file_read" in result.stderr
    assert "ok:" in out and "chain intact" in out
    assert "demo passed" in out
