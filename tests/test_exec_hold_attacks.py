"""An allowed exec whose new image is held, refused, before its check: the check
must never be forgotten meanwhile.

The agent (agents/exec_hold.py) rewrites an allowed exec's argument to a
refused one after the decision, while the kernel still copies the
environment, and stops the process: its new image waits before its first
instruction, the check of its first call still to come.  Then it tries to
make agentsup forget that check, and lets the image go.  Found by red-teaming
(red team 30), each with the native path on and off: 4096 images that exit
without a trapped call pushed the held image's check out of the supervisor's
table; and when a thread did the exec, a call from another thread that got
its old id read as "that thread's exec failed".  Both let `echo forbidden`
run to its end.  Now a check is forgotten only when its process is gone (an
exec with no room left fails with EAGAIN, on record), and a thread's exec
is taken as failed only while that thread is still in its process.
`test_read_lane_e2e` runs these again with the read lane on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import Sandbox, agent_reports, both_paths
from test_exec_forge_attack import POLICY  # the same refusals: touch, and "forbidden"

from agentsup.kernel import fastpath

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]
AGENT = Path(__file__).parent / "agents" / "exec_hold.py"
TRIES = 3


def _hold(sandbox: Sandbox, native: bool, mode: str, count: int) -> dict[str, int]:
    shutil.copy(AGENT, sandbox.workspace / AGENT.name)
    result = sandbox.run(
        "python3",
        AGENT.name,
        mode,
        str(TRIES),
        str(count),
        policy=sandbox.policy("forge", POLICY),
        timeout=600,
        env={fastpath.ENV_SWITCH: "1" if native else "0"},
    )
    assert result.returncode == 0, result.stderr
    assert "forbidden" not in result.stdout  # no held image ran
    outcomes = agent_reports(result.stdout)[0]["data"]
    assert isinstance(outcomes, dict)
    # Killed at its check (held, or let go before the stop), or refused at
    # the exec itself when the rewrite came before the decision.
    assert set(outcomes) <= {"held:-9", "ended:-9", "ended:113"}, outcomes
    return outcomes


def _pid_max() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text())


@both_paths
def test_a_held_image_is_killed_at_its_check(sandbox: Sandbox, native: bool) -> None:
    outcomes = _hold(sandbox, native, "none", 0)
    assert outcomes.get("held:-9", 0) >= 1, outcomes  # the hold works here: the others test


@both_paths
def test_an_exec_that_hides_it_is_in_exec_is_still_checked(sandbox: Sandbox, native: bool) -> None:
    """Found by red-teaming (red team 31), under the read lane: the kernel's
    own reads inside execve spent the check on the old image when /proc
    could not say the process was in execve.  No read checks an exec now."""
    outcomes = _hold(sandbox, native, "hidden", 0)
    assert outcomes.get("ended:-9", 0) >= 1, outcomes


@pytest.mark.slow
@both_paths
def test_images_that_exit_unchecked_do_not_push_a_held_check_out(
    sandbox: Sandbox, native: bool
) -> None:
    outcomes = _hold(sandbox, native, "stale", 4200)
    assert outcomes.get("held:-9", 0) >= 1, outcomes


@pytest.mark.slow
@both_paths
@pytest.mark.skipif(_pid_max() > 70_000, reason="the host's thread ids take too long to wrap")
def test_a_thread_with_the_exec_threads_old_id_does_not_cancel_its_check(
    sandbox: Sandbox, native: bool
) -> None:
    outcomes = _hold(sandbox, native, "reuse", _pid_max() + 3_000)
    assert outcomes.get("held:-9", 0) >= 1, outcomes
