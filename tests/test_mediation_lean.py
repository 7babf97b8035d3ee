"""What the leaner mediation path must still see: the cache never stands in for a check.

A read whose (action, path) pair is already allowed skips the judge; it must
not skip what makes the path the one to judge (a hard link to a protected
file is judged under the protected name).  And the broker's cached
/proc/self/fd directory never outlives a fork.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from conftest import AGENTS, Sandbox, agent_reports

from agentsup.kernel import proc

ATTACK = "attack.py"


@pytest.fixture
def attacker(sandbox: Sandbox) -> Sandbox:
    shutil.copy(AGENTS / ATTACK, sandbox.workspace / ATTACK)
    return sandbox


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.parametrize("native", ["0", "1"], ids=["python-path", "native-path"])
def test_an_allowed_read_turned_hard_link_to_the_key_is_judged_again(
    attacker: Sandbox, native: str
) -> None:
    """Read once (allowed, cached), then the same name becomes a link to the key."""
    innocent = attacker.workspace / "innocent.txt"
    innocent.write_text("nothing to see")
    go = attacker.workspace / "go"
    proc_ = subprocess.Popen(
        attacker.command(
            "python3",
            ATTACK,
            *("read_then_survive", str(innocent), "then", "wait_for", str(go)),
            *("then", "read_then_survive", str(innocent)),
        ),
        env={**attacker.env, "AGENTSUP_FASTPATH": native},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc_.stdout is not None
    first = proc_.stdout.readline()
    assert '"read", "result": "ok"' in first, first
    assert "SURVIVED" in proc_.stdout.readline()
    assert '"waiting"' in proc_.stdout.readline()
    innocent.unlink()
    os.link(attacker.key, innocent)  # planted from outside, as an attacker's helper would
    go.write_text("")
    out, err = proc_.communicate(timeout=60)
    assert "SURVIVED" not in out, err[-2000:]
    assert proc_.returncode == 137, err[-2000:]
    assert not [r for r in agent_reports(out) if r.get("op") == "read"], out
    kills = [r for r in attacker.audit_records() if r.get("kind") == "signal"]
    assert kills and kills[0]["signal"] == "SIGKILL", kills


def test_fd_path_in_a_forked_child_names_the_childs_own_fds(tmp_path: object) -> None:
    """The /proc/self/fd directory fd_path keeps is the parent's: a child drops it."""
    parent_file = os.path.join(str(tmp_path), "parent")
    child_file = os.path.join(str(tmp_path), "child")
    fd = os.open(parent_file, os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC, 0o600)
    try:
        assert proc.fd_path(fd) == parent_file  # now cached in this process
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the same fd number, another file
            code = 1
            try:
                other = os.open(child_file, os.O_CREAT | os.O_RDONLY, 0o600)
                os.dup2(other, fd)
                os.close(other)
                os.write(write_end, proc.fd_path(fd).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        seen = os.read(read_end, 4096).decode()
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert seen == child_file
        assert proc.fd_path(fd) == parent_file
    finally:
        os.close(fd)
