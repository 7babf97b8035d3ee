"""`agentsup demo`, the README's first command, does what the README says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_the_demo_leaves_nothing_behind_when_its_reader_goes(tmp_path: Path) -> None:
    """New user 17: `agentsup demo | head` left its temporary directory."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    demo = subprocess.Popen(
        [sys.executable, "-m", "agentsup", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert demo.stdout is not None
    demo.stdout.readline()
    demo.stdout.close()  # the reader goes, as `head -1` does
    demo.wait(120)
    assert list(tmp_path.iterdir()) == []
