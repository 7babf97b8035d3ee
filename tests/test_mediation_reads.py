"""A read allowed before is handed over again at once, but only the very same file.

The supervisor remembers which file a name opened for an allowed read (its
real path, inode and whether it has more links); the broker hands that file
over without asking again only when it finds exactly that.  A name that
now leads somewhere else (a hard link to the key, a symlink to it) is judged
afresh, and the key's reader is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import AGENTS, Sandbox, agent_reports
from test_protected_inodes import both_paths

from agentsup.kernel import fastpath

ATTACK = "attack.py"

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]


def _replace_with_hard_link(name: Path, key: Path) -> None:
    name.unlink()
    os.link(key, name)


def _replace_with_symlink(name: Path, key: Path) -> None:
    name.unlink()
    name.symlink_to(key)


@both_paths
@pytest.mark.parametrize(
    "swap", [_replace_with_hard_link, _replace_with_symlink], ids=["hard-link", "symlink"]
)
def test_a_name_read_twice_then_swapped_for_the_key_is_judged_again(
    sandbox: Sandbox, native: str, swap: object
) -> None:
    shutil.copy(AGENTS / ATTACK, sandbox.workspace / ATTACK)
    innocent = sandbox.workspace / "innocent.txt"
    innocent.write_text("nothing to see")
    # A second link: the native path forwards multiply-linked files, so the
    # supervisor sees (and remembers) these reads on both paths.
    os.link(innocent, sandbox.workspace / "second-name.txt")
    go = sandbox.workspace / "go"
    read = ["read_then_survive", str(innocent)]
    steps = [*read, "then", *read, "then", *read, "then", "wait_for", str(go), "then", *read]
    proc = subprocess.Popen(
        sandbox.command("python3", ATTACK, *steps),
        env={**sandbox.env, fastpath.ENV_SWITCH: native},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(3):
        assert '"read", "result": "ok"' in proc.stdout.readline()
        assert "SURVIVED" in proc.stdout.readline()
    assert '"waiting"' in proc.stdout.readline()
    swap(innocent, sandbox.key)  # type: ignore[operator]
    go.write_text("")
    out, err = proc.communicate(timeout=60)
    assert "SURVIVED" not in out, err[-2000:]
    assert proc.returncode == 137, err[-2000:]
    assert not [r for r in agent_reports(out) if r.get("op") == "read"], out
    assert "rule 'secret-ssh' denied file_read" in err, err[-2000:]
