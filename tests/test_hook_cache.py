"""Hook-side caching of plainly allowed answers (hooks/_hook.py, hookserver.py).

The supervisor marks an allow cacheable; the hook then answers the same
(action, target) itself, and a policy reload (invalidate) drops every cached
answer before the next check.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_hook_e2e import ServedHooks, agent_env

from agentsup.supervision.hookserver import HookReply, HookRequest


def _plain_allow(request: HookRequest, reply: HookReply) -> bool:
    return request.target != "NOT_CACHED"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedHooks]:
    hooks = ServedHooks(tmp_path / "hook.sock", lambda r: r.target != "SECRET", _plain_allow)
    yield hooks
    hooks.close()


def _run(tmp_path: Path, script: str) -> subprocess.Popen[str]:
    env = agent_env(tmp_path / "hook.sock")
    env.pop("AGENTSUP_HOOK_NOTES")
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


REPEAT = """
import os
for name in ["HOME"] * 50 + ["NOT_CACHED"] * 3 + ["SECRET"] * 3:
    try:
        os.environ.get(name)
    except PermissionError:
        print("refused", name)
"""


def test_a_cacheable_allow_is_asked_once_and_a_deny_every_time(
    tmp_path: Path, served: ServedHooks
) -> None:
    agent = _run(tmp_path, REPEAT)
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert out.split("\n").count("refused SECRET") == 3
    asked = [r.target for r in served.checks("env_read")]
    assert asked == ["HOME"] + ["NOT_CACHED"] * 3 + ["SECRET"] * 3


RELOAD = """
import os, sys
os.environ.get("HOME")
os.environ.get("HOME")
print("cached", flush=True)
sys.stdin.readline()
try:
    os.environ.get("HOME")
    print("allowed")
except PermissionError:
    print("refused")
"""


def test_a_policy_reload_drops_cached_answers(tmp_path: Path, served: ServedHooks) -> None:
    agent = _run(tmp_path, RELOAD)
    assert agent.stdout is not None and agent.stdin is not None
    assert agent.stdout.readline() == "cached\n"
    served.invalidate(lambda r: r.target != "HOME")  # the reloaded policy denies HOME
    agent.stdin.write("go\n")
    agent.stdin.flush()
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert out == "refused\n"
    assert [r.target for r in served.checks("env_read")] == ["HOME", "HOME"]


FORK = """
import os
os.environ.get("HOME")
pid = os.fork()
if pid == 0:
    os.environ.get("HOME")  # a child has no connection yet: it asks itself
    os._exit(0)
os.waitpid(pid, 0)
os.environ.get("HOME")
"""


def test_a_forked_child_does_not_inherit_the_cache(tmp_path: Path, served: ServedHooks) -> None:
    agent = _run(tmp_path, FORK)
    _out, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    pids = [r.pid for r in served.checks("env_read")]
    assert len(pids) == 2 and pids[0] == agent.pid and pids[1] != agent.pid


def test_without_a_cacheable_callback_nothing_is_cached(tmp_path: Path) -> None:
    hooks = ServedHooks(tmp_path / "hook.sock", lambda r: True)
    try:
        agent = _run(tmp_path, "import os\nfor _ in range(5): os.environ.get('HOME')\n")
        _out, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
        assert len(hooks.checks("env_read")) == 5
    finally:
        hooks.close()
