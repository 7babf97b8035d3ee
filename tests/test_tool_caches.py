"""Tool caches the policy keeps out of the home are moved into the agent's private /tmp,
and tools that retry a failed fetch for a minute fail at once where no connect can succeed.

npm fails outright when it cannot write its cache (`npm pack`: EACCES, then
the advice to chown the home as root), and a cache the agent could write in
the home would poison the user's later installs.  So where the policy
refuses a write there, and the agent has a private /tmp, the tool's cache
variable points into it: the tool works, and the home is untouched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import Sandbox

from agentsup.policy import (
    CompiledPolicy,
    RunContext,
    compile_policy,
    load_policy_text,
    resolve_policy,
)
from agentsup.supervision.agent import PRIVATE_CACHES, moved_caches, no_retries_offline

NO_POLICY_DIR = Path("/nonexistent")


def compiled(template: str) -> CompiledPolicy:
    return compile_policy(
        resolve_policy(template, NO_POLICY_DIR), RunContext("/srv/project", "/home/u", "t")
    )


STRICT = compiled("strict")
PERMISSIVE = compiled("permissive")


def test_caches_strict_refuses_in_the_home_move_into_the_private_tmp() -> None:
    moved = moved_caches(STRICT, "/home/u", {}, ("/tmp", "/var/tmp"))
    assert moved["npm_config_cache"] == f"{PRIVATE_CACHES}/npm"
    assert set(moved) == {"npm_config_cache", "GOCACHE", "YARN_CACHE_FOLDER", "PIP_CACHE_DIR"}


def test_a_cache_the_policy_lets_the_agent_write_stays_where_it_is() -> None:
    assert moved_caches(PERMISSIVE, "/home/u", {}, ("/tmp", "/var/tmp")) == {}


def test_a_variable_already_set_and_a_run_without_a_private_tmp_move_nothing() -> None:
    env = {"npm_config_cache": "/srv/cache"}
    assert "npm_config_cache" not in moved_caches(STRICT, "/home/u", env, ("/tmp",))
    assert moved_caches(STRICT, "/home/u", {}, ()) == {}


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_with_no_way_out_tools_do_not_retry() -> None:
    retries = no_retries_offline(STRICT, {}, None)
    assert retries == {"npm_config_fetch_retries": "0", "PIP_RETRIES": "0", "CARGO_NET_RETRY": "0"}
    assert "PIP_RETRIES" not in no_retries_offline(STRICT, {"PIP_RETRIES": "3"}, None)


def test_with_a_way_out_tools_retry_as_they_would() -> None:
    assert no_retries_offline(PERMISSIVE, {}, None) == {}  # connects may go ahead
    assert no_retries_offline(STRICT, {}, 3128) == {}  # an egress proxy to go through
    direct = compile_policy(
        load_policy_text(
            "name: one-host\nextends: [strict]\nnetwork: direct\nrules:\n"
            "  - {id: one, actions: [network_connect], target: '10.0.0.1:443', decision: allow,"
            " priority: 1}\n",
            NO_POLICY_DIR,
        ),
        RunContext("/srv/project", "/home/u", "t"),
    )
    assert no_retries_offline(direct, {}, None) == {}


def test_npm_pack_works_under_strict_and_leaves_the_home_alone(sandbox: Sandbox) -> None:
    # A home outside /tmp, as real homes are (strict lets the agent write in
    # its /tmp, and a home under it is bound back in).
    home = Path(f"/srv/agentsup-test-home-{os.getpid()}")
    home.mkdir(parents=True)
    (sandbox.workspace / "package.json").write_text('{"name": "demo", "version": "1.0.0"}\n')
    (sandbox.workspace / "index.js").write_text("console.log(1)\n")
    try:
        result = sandbox.run(
            "sh", "-c", f"cd {sandbox.workspace} && npm pack --silent",
            env={**sandbox.env, "HOME": str(home)}, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert (sandbox.workspace / "demo-1.0.0.tgz").exists()
        assert list(home.iterdir()) == []
    finally:
        shutil.rmtree(home)
    start = next(r for r in sandbox.audit_records() if r.get("event") == "start")
    assert start["caches_moved"]["npm_config_cache"] == f"{PRIVATE_CACHES}/npm"  # type: ignore[index]


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_pips_cache_is_the_agents_own_under_strict(sandbox: Sandbox) -> None:
    """pip builds an sdist's wheel in its cache: where ~/.cache/pip exists and
    strict refuses writing it, `pip install` of an sdist failed (EACCES on
    ~/.cache/pip/wheels/..).  pip is told of a cache of the agent's own, which
    it can write, and the home's is left alone."""
    home = Path(f"/srv/agentsup-test-home-{os.getpid()}")
    (home / ".cache" / "pip").mkdir(parents=True)
    script = 'python3 -m pip cache dir && mkdir -p "$(python3 -m pip cache dir)/wheels/f9"'
    try:
        result = sandbox.run(
            "sh", "-c", script, env={**sandbox.env, "HOME": str(home)}, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split() == [f"{PRIVATE_CACHES}/pip"]
        assert list((home / ".cache" / "pip").iterdir()) == []
    finally:
        shutil.rmtree(home)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_under_strict_the_agents_tools_fail_fast_offline(sandbox: Sandbox) -> None:
    result = sandbox.run("sh", "-c", 'echo "$npm_config_fetch_retries $PIP_RETRIES"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]
    start = next(r for r in sandbox.audit_records() if r.get("event") == "start")
    assert start["network_retries_off"] == [
        "CARGO_NET_RETRY",
        "PIP_RETRIES",
        "npm_config_fetch_retries",
    ]
