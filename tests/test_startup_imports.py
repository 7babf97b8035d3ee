"""What `agentsup run` imports before its agent starts, and what it has imported by then.

Before the trampoline is forked, the run imports only what setting the
agent up needs: not the optional machinery (egress proxy, hook server,
control server, TOTP, policy watcher, suggestions, the daemon, the YAML
loader with a cached policy) nor what they pull in (logging, subprocess,
inotify_simple).  While the trampoline sets the agent up, the run imports
what it may need once the agent runs: an import opens files, and an agent
that used up the supervisor's fds must not make one fail later.  The policy
watcher's modules come when it starts watching, 1 s into the run (an fd is
held for them until then), the loader with a policy reload, and logging
when something is logged (agentsup.logger: out of fds, one stderr line).

Behaviour, not timing: the modules are read from `sys.modules` at the fork
and when the agent is released.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import Sandbox
from test_policy_cache import PARENT

PROBE = """\
import json, sys
already = set(sys.modules)  # the interpreter's and its site's
from agentsup.cli.main import main  # first, as in the console script
import agentsup.supervision.launch as launch

seen = {}
real_start = launch.start

def start(plan, meanwhile=lambda: None, timeout=30.0):
    seen["at_fork"] = sorted(set(sys.modules) - already)
    launched = real_start(plan, meanwhile, timeout)
    seen["when_released"] = sorted(sys.modules)
    seen["new_when_released"] = sorted(set(sys.modules) - already)
    return launched

launch.start = start
code = main(sys.argv[1:])
print(json.dumps(seen))
raise SystemExit(code)
"""

# Never needed before the fork of a run like this one (no --shadow, no pty, a
# policy that does not connect, the policy in the cache).
NOT_BEFORE_THE_FORK = (
    "agentsup.cli.control",
    "agentsup.cli.daemon",
    "agentsup.control.channel",
    "agentsup.control.notify",
    "agentsup.hooks._hook",  # the agent's side of the hook
    "agentsup.integrity.policywatch",
    "agentsup.integrity.totp",
    "agentsup.policy.loader",
    "agentsup.policy.suggest",
    "agentsup.policy.yaml_file",
    "agentsup.supervision.daemon",
    "agentsup.supervision.egress",
    "agentsup.supervision.hookserver",
    "agentsup.supervision.mediator",
    "agentsup.supervision.operator_api",
    "agentsup.supervision.placement",
    "agentsup.supervision.terminal",
    "agentsup.supervision.watchdog",
    "_hashlib",
    "h11",
    "hashlib",
    "hmac",
    "importlib.resources",
    "inotify_simple",
    "logging",
    "psutil",
    "pyotp",
    "shutil",
    "subprocess",
    "yaml",
)

# Imported while the trampoline works: what the run may use once the agent runs.
BEFORE_THE_AGENT_RUNS = (
    "agentsup.control.channel",
    "agentsup.control.notify",
    "agentsup.integrity.totp",
    "agentsup.supervision.hookserver",
    "agentsup.supervision.mediator",
    "agentsup.supervision.operator_api",
    "agentsup.supervision.placement",
    "agentsup.supervision.watchdog",
)
# Never, for a command that ends within 1 s.
NOT_FOR_A_SHORT_COMMAND = (
    "_hashlib",
    # What the real `inspect` imports: dataclasses has a stand-in (cli/main.py).
    "ast",
    "dis",
    "tokenize",
    "agentsup.integrity.policywatch",
    "agentsup.policy.loader",
    "hmac",
    "inotify_simple",
    "logging",
    "subprocess",
    "yaml",
)


def _modules(sandbox: Sandbox) -> dict[str, list[str]]:
    argv = sandbox.command("/bin/true")[3:]  # from "run" on
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        env=sandbox.env,
        stdin=subprocess.DEVNULL,  # no terminal: no pty to relay
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, list[str]] = json.loads(done.stdout.splitlines()[-1])
    return seen


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_run_imports_only_the_set_up_before_the_fork_and_the_rest_before_the_agent_runs(
    sandbox: Sandbox,
) -> None:
    _modules(sandbox)  # fills the policy cache
    seen = _modules(sandbox)
    at_fork, when_released = set(seen["at_fork"]), set(seen["when_released"])
    assert sorted(at_fork & set(NOT_BEFORE_THE_FORK)) == []
    assert sorted(set(BEFORE_THE_AGENT_RUNS) - when_released) == []
    assert sorted(set(seen["new_when_released"]) & set(NOT_FOR_A_SHORT_COMMAND)) == []
    # What set the agent up was there at the fork.
    assert {"agentsup.supervision.judge", "agentsup.policy.engine", "re2"} <= at_fork


def test_the_stand_in_for_inspect_is_the_real_module_once_used() -> None:
    """The command line's `inspect` loads when a name is first read from it."""
    probe = (
        "import sys, agentsup.cli.main, dataclasses, inspect\n"
        "assert 'ast' not in sys.modules\n"
        "from inspect import signature\n"
        "assert str(signature(lambda a, b=1: 0)) == '(a, b=1)'\n"
        "assert inspect.isfunction(signature) and sys.modules['inspect'].signature is signature\n"
        "assert 'ast' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_agentsup_policy_names_each_resolve() -> None:
    """The package imports its modules on first use: every name it exports is found."""
    import agentsup.policy as policy

    for name in policy.__all__:
        assert getattr(policy, name) is not None, name
    with pytest.raises(AttributeError):
        _ = policy.no_such_name  # type: ignore[attr-defined]


def test_the_digests_without_openssl_are_hashlibs() -> None:
    """agentsup.hashing (CPython's own SHA-256) gives what hashlib and hmac give."""
    import hashlib
    import hmac

    from agentsup.hashing import compare_digest, sha256
    from agentsup.integrity.audit import MacKey

    for data in (b"", b"abc", bytes(range(256)) * 300):
        assert sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()
        for key in (b"k", b"k" * 64, b"k" * 65):
            assert MacKey(key).hexdigest(data) == hmac.new(key, data, "sha256").hexdigest()
    assert compare_digest(b"same", b"same") and not compare_digest(b"same", b"diff")


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_policy_edit_before_the_watch_starts_is_still_reloaded(sandbox: Sandbox) -> None:
    """The run watches its policy directory from 1 s on, comparing against what it
    read before loading the policy: an edit made in between reaches the agent."""
    (sandbox.workspace / "notes.txt").write_text("notes\n")
    sandbox.policy("parent", PARENT.replace("DECISION", "allow"))
    script = "echo started; sleep 2; cat notes.txt >/dev/null 2>&1 && echo read ok || echo refused"
    proc = subprocess.Popen(
        sandbox.command("/bin/sh", "-c", script, policy="parent"),
        env=sandbox.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "started"  # the policy is loaded
        sandbox.policy("parent", PARENT.replace("DECISION", "deny"))
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert out.split()[-1:] == ["refused"], err
    records = sandbox.audit_records()
    assert any(r.get("event") == "reloaded" for r in records)
    assert [r["rule"] for r in records if r.get("decision") == "deny"] == ["notes"]


def test_the_logger_imports_logging_when_used_and_never_raises(
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """agentsup.logger: logging's own logger when it imports; else one stderr line."""
    from agentsup.logger import Logger

    log = Logger("agentsup.test")
    log.warning("through logging: %s", "yes")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("agentsup.test", "through logging: yes")
    ]
    monkeypatch.setitem(sys.modules, "logging", None)  # `import logging` fails, as out of fds
    try:
        raise OSError("no fds")
    except OSError:
        log.exception("no logging: %d", 24)
    assert capfd.readouterr().err == "agentsup: agentsup.test: no logging: 24\n"
