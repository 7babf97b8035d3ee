"""Start-up of `agentsup run` with the caches: real agents, real decisions.

The run takes its policy from the state directory's cache and its seccomp
program from there too; an edited policy file still applies at once, and
the run path loads no module it does not need (no PyYAML, no pyseccomp in
the supervisor or in the forked children, no HTTP parser, no psutil).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from conftest import Sandbox
from test_policy_cache import PARENT, _entries

from agentsup.policy.cachefiles import CACHE_DIR_NAME


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_real_agent_sees_an_edited_policy_at_once(sandbox: Sandbox) -> None:
    (sandbox.workspace / "notes.txt").write_text("hello\n")
    sandbox.policy("parent", PARENT.replace("DECISION", "allow"))
    sandbox.policy("mine", "name: mine\nextends: [parent]\n")
    for _ in range(2):  # the second run takes the policy from the cache
        done = sandbox.run("/bin/cat", "notes.txt", policy="mine")
        assert done.returncode == 0 and done.stdout == "hello\n", done.stderr
    assert _entries(sandbox.state_dir, "policy") and _entries(sandbox.state_dir, "compiled")
    sandbox.policy("parent", PARENT.replace("DECISION", "deny"))
    done = sandbox.run("/bin/cat", "notes.txt", policy="mine")
    assert done.returncode != 0 and "Permission denied" in done.stderr, done.stderr
    refused = [r for r in sandbox.audit_records() if r.get("decision") == "deny"]
    assert [r["rule"] for r in refused] == ["notes"]


def test_the_run_path_does_not_import_what_it_does_not_need(sandbox: Sandbox) -> None:
    """With the policy cached: no PyYAML, no pyseccomp, no HTTP parser, no psutil.

    `-X importtime` also reports the imports of the forked trampoline and
    agent: none of them loads pyseccomp to build the filter any more.
    """
    probe = (
        "import sys\n"
        "from agentsup.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = ('yaml', 'pyseccomp', 'h11', 'psutil', 'concurrent.futures')\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
        "raise SystemExit(code)\n"
    )
    argv = sandbox.command("/bin/true")[3:]  # from "run" on
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", probe, *argv],
            env=sandbox.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "pyseccomp" not in done.stderr and "import time:" in done.stderr


def test_the_state_dir_cache_is_private_to_its_owner(sandbox: Sandbox) -> None:
    assert sandbox.run("/bin/true").returncode == 0
    directory = sandbox.state_dir / CACHE_DIR_NAME
    info = os.lstat(directory)
    assert info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o700
    assert _entries(sandbox.state_dir, "seccomp")  # the agent's filter program, too


def test_run_builds_only_its_own_parser() -> None:
    from agentsup.cli.main import build_parser, named_command, subcommands

    assert named_command(["run", "--", "x"]) == "run"
    assert named_command(["-h", "run"]) is None and named_command(["nope"]) is None
    whole = {path[0] for path, _parser, _help in subcommands(build_parser()) if path}
    assert {"run", "policy", "audit", "totp", "ps", "resume"} <= whole
    alone = {path[0] for path, _parser, _help in subcommands(build_parser("run")) if path}
    assert alone == {"run"}
