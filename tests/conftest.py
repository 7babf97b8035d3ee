"""Shared fixtures, and one probe of the kernel's features.

Tests that need a kernel feature are marked (`requires_root`,
`requires_seccomp_notify`, `requires_landlock`, `requires_cgroup`) and skip
with the reason when the feature is missing.  CI runs as root on a kernel
with all of them, so there the whole suite runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentsup.kernel import fastpath
from agentsup.paths import Locations

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_CREATE_RULESET_VERSION = 1


def _landlock_abi() -> int:
    abi = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return int(abi) if abi > 0 else 0


def _has_seccomp_notify() -> bool:
    # /proc/sys/kernel/seccomp/actions_avail lists "user_notif" when the
    # kernel supports SECCOMP_RET_USER_NOTIF.
    try:
        actions = Path("/proc/sys/kernel/seccomp/actions_avail").read_text().split()
    except OSError:
        return False
    return "user_notif" in actions


def _has_cgroup2() -> bool:
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if (
            os.path.exists(os.path.join(root, "cgroup.controllers"))
            and os.path.exists(os.path.join(root, "cgroup.procs"))
            and os.access(root, os.W_OK)
        ):
            return True
    return False


FEATURES = {
    "requires_root": (os.geteuid() == 0, "needs root"),
    "requires_seccomp_notify": (_has_seccomp_notify(), "kernel lacks seccomp user notification"),
    "requires_landlock": (_landlock_abi() >= 1, "kernel lacks Landlock"),
    "requires_cgroup": (_has_cgroup2(), "no writable cgroup v2 hierarchy"),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker, (available, reason) in FEATURES.items():
            if item.get_closest_marker(marker) and not available:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _package_bytecode() -> None:
    """Compile agentsup's own modules once, as `pip install` does.

    A hooked agent imports agentsup.hooks; from a source checkout with stale
    bytecode (and PYTHONDONTWRITEBYTECODE unset in the agent) it would try to
    write __pycache__ next to the sources, which no test means to exercise.
    """
    import compileall

    import agentsup
    import agentsup.hooks

    for module in (agentsup, agentsup.hooks):
        folder = os.path.dirname(module.__file__ or "")
        if os.access(folder, os.W_OK):
            compileall.compile_dir(folder, quiet=2)


@pytest.fixture
def locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point every agentsup location at a fresh temporary directory."""
    root = tmp_path / "agentsup"
    for var, sub in (
        ("AGENTSUP_POLICY_DIR", "policies"),
        ("AGENTSUP_AUDIT_LOG", "log/audit.jsonl"),
        ("AGENTSUP_STATE_DIR", "state"),
        ("AGENTSUP_RUNTIME_DIR", "run"),
    ):
        monkeypatch.setenv(var, str(root / sub))
    (root / "policies").mkdir(parents=True)
    yield root


AGENTS = Path(__file__).parent / "agents"

# A test run with the broker's native path, and again with the Python path
# alone (AGENTSUP_FASTPATH=0): `native` is the parameter, `fastpath_env` its
# environment.  (The read lane is opt-in: test_read_lane_e2e.py runs it.)
both_paths = pytest.mark.parametrize(
    "native",
    [
        pytest.param(
            True,
            id="native",
            marks=pytest.mark.skipif(not fastpath.enabled(), reason=fastpath.status()[1]),
        ),
        pytest.param(False, id="python"),
    ],
)


def fastpath_env(native: bool) -> dict[str, str]:
    return {fastpath.ENV_SWITCH: "1" if native else "0"}


def run_again(tests: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Other tests (files or ids) in a pytest of their own, with `env` added:
    the same attacks under another configuration."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=Path(__file__).resolve().parent,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=1200,
    )


@functools.cache
def readlane_available() -> bool:
    """Whether this host gives a run the read lane when it opts in: the native
    path, fanotify permission events (root, Linux 6.13+) and Landlock."""
    from agentsup.kernel import fanotify
    from agentsup.kernel.landlock import landlock_abi

    return fastpath.enabled() and fanotify.status()[0] and landlock_abi() >= 1


@contextlib.contextmanager
def supervisor_stopped(proc: subprocess.Popen[Any]) -> Iterator[None]:
    """`agentsup run` (the supervisor: `proc` itself) stopped, its agent and
    broker running: what happens meanwhile was answered by the broker alone.
    Whatever the block raises, the supervisor continues."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


# Every sandbox copies the victim agent into its workspace (an agent's code
# lives in its workspace; strict lets it read nothing else of the user's).
TRY = "try_syscall.py"

FAKE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "c2VjcmV0LWJ5dGVzLXRoYXQtbXVzdC1uZXZlci1sZWFr\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    """Wait until `check()` holds; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.1)


def locations_in(root: Path) -> Locations:
    """agentsup's locations laid out under `root`, as a Sandbox lays them out."""
    return Locations(root / "policies", root / "log" / "audit.jsonl", root / "state", root / "run")


def locations_root() -> Path:
    """A fresh directory for agentsup's own files, outside /tmp, /var/tmp and /run.

    An agent gets a private /tmp and /run: files there are out of its sight
    anyway.  agentsup's locations under /etc, /var/log and /var/lib are in
    its view, so the tests put theirs where the agent can see them too, and
    the self-protection is what keeps them out of reach.
    """
    if os.geteuid() == 0:
        base = "/var/lib"
    else:
        base = os.path.expanduser("~/.cache")
        os.makedirs(base, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="agentsup-test-", dir=base))


# strict on the host's network: `network: direct` and one address to reach
# keep the agent out of a network namespace of its own.
SHARED_NETWORK = """
name: strict-shared-network
extends: [strict]
network: direct
rules:
  - id: one-port
    actions: [network_connect]
    target: "127.0.0.1:9"
    decision: allow
    priority: 1
"""


class Sandbox:
    """A workspace, a home with a planted key, and private agentsup locations."""

    def __init__(self, root: Path, locations: Path | None = None) -> None:
        self.root = root
        self.workspace = root / "workspace"
        self.home = root / "home"
        self.key = self.home / ".ssh" / "id_rsa"
        own = locations or root / "agentsup"
        self.policy_dir = own / "policies"
        self.audit_log = own / "log" / "audit.jsonl"
        self.state_dir = own / "state"
        self.runtime_dir = own / "run"
        self.workspace.mkdir()
        shutil.copy(AGENTS / TRY, self.workspace / TRY)
        self.key.parent.mkdir(parents=True)
        self.key.write_text(FAKE_KEY)
        self.policy_dir.mkdir(parents=True)
        self.env = dict(
            os.environ,
            HOME=str(self.home),
            AGENTSUP_POLICY_DIR=str(self.policy_dir),
            AGENTSUP_AUDIT_LOG=str(self.audit_log),
            AGENTSUP_STATE_DIR=str(self.state_dir),
            AGENTSUP_RUNTIME_DIR=str(self.runtime_dir),
        )

    def policy(self, name: str, text: str) -> str:
        path = self.policy_dir / f"{name}.yaml"
        path.write_text(text)
        return str(path)

    def command(
        self, *program: str, policy: str = "strict", agent_id: str = "t", extra: Sequence[str] = ()
    ) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agentsup",
            "run",
            "--policy",
            policy,
            "--workspace",
            str(self.workspace),
            "--id",
            agent_id,
            *extra,
            "--",
            *program,
        ]

    def run(
        self,
        *program: str,
        policy: str = "strict",
        agent_id: str = "t",
        extra: Sequence[str] = (),
        timeout: float = 60,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*program, policy=policy, agent_id=agent_id, extra=extra),
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(
        self, *program: str, policy: str = "strict", env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """`run`, started: stdin, stdout and stderr are text pipes, for a test
        that talks to the agent (and stops the supervisor meanwhile)."""
        return subprocess.Popen(
            self.command(*program, policy=policy),
            env={**self.env, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def audit_records(self) -> list[dict[str, object]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]

    def denials(self) -> list[tuple[object, object]]:
        """(action type, rule) of every deny the audit log holds."""
        return [
            (r.get("action_type"), r.get("rule"))
            for r in self.audit_records()
            if r.get("decision") == "deny"
        ]

    def agentsup(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentsup", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    own = locations_root()
    try:
        yield Sandbox(tmp_path, own)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(own)], capture_output=True)
        shutil.rmtree(own, ignore_errors=True)


@contextlib.contextmanager
def out_of_fds() -> Iterator[None]:
    """This process at its RLIMIT_NOFILE: every open fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.dup(0))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def read_for(fd: int, seconds: float) -> bytes:
    """What arrives on `fd` within `seconds` (a pipe of an agent under test)."""
    seen = b""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
    return seen


@contextlib.contextmanager
def sandbox_at(root: Path, own: Path) -> Iterator[Sandbox]:
    """A Sandbox in `root` with agentsup's locations in `own`; both removed after."""
    try:
        yield Sandbox(root, own)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(own)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture
def user_sandbox() -> Iterator[Sandbox]:
    """A workspace, home and agentsup locations outside /tmp and /run, as a
    user's are (the agent's /tmp and /run are its own)."""
    with sandbox_at(locations_root(), locations_root()) as sandbox:
        yield sandbox


def agent_reports(stdout: str) -> list[dict[str, object]]:
    """The JSON lines a try_syscall agent printed."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# Reads a file, waits for a line on stdin, reads it again.
READ_TWICE = """
import sys
for _ in range(2):
    try:
        print(open(sys.argv[1]).read().strip(), flush=True)
    except PermissionError:
        print("refused", flush=True)
    sys.stdin.readline()
"""


def reads_around_a_reload(
    sandbox: Sandbox,
    path: Path,
    reloaded: str,
    env: dict[str, str] | None = None,
    meanwhile: Callable[[], object] = lambda: None,
) -> tuple[str, str]:
    """What an agent under a policy `reloaded` (extending strict) read at `path`,
    before and after the operator's edit made it `reloaded`, a policy text;
    `meanwhile` runs after the reload, before the second read."""
    script = sandbox.workspace / "read_twice.py"
    script.write_text(READ_TWICE)
    policy = sandbox.policy("reloaded", "name: reloaded\nextends: [strict]\n")
    command = sandbox.command("python3", str(script), str(path), policy=policy)
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(command, env={**sandbox.env, **(env or {})}, text=True, **pipes) as proc:  # type: ignore[call-overload]
        try:
            before = proc.stdout.readline().strip()
            Path(policy).write_text(reloaded)
            time.sleep(3)  # the policy directory is watched: an unsealed edit reloads
            meanwhile()
            proc.stdin.write("again\n")
            proc.stdin.flush()
            after = proc.stdout.readline().strip()
            proc.stdin.write("done\n")
            proc.stdin.flush()
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    return before, after


def run_ops_agent(
    sandbox: Sandbox,
    agent: str,
    *ops: str,
    policy: str = "strict",
    extra: Sequence[str] = (),
    wrap: Sequence[str] = (),
    timeout: float = 120,
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    """Run an operation agent (tests/agent_ops.py) with `ops` (`name=arg,arg`)
    from its workspace, under `wrap` (a command that runs the rest), if any;
    what it did and its reports by operation."""
    script = sandbox.workspace / "ops_agent.py"
    script.write_text(agent)
    result = subprocess.run(
        [*wrap, *sandbox.command(str(script), *ops, policy=policy, extra=extra)],
        env=sandbox.env,
        cwd=sandbox.workspace,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, {str(r["op"]): r for r in agent_reports(result.stdout)}


def run_ops_agent_counting_fds(
    sandbox: Sandbox, agent: str, *ops: str, timeout: float = 150
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]], int]:
    """`run_ops_agent`, and the most fds the supervisor held meanwhile."""
    script = sandbox.workspace / "ops_agent.py"
    script.write_text(agent)
    process = subprocess.Popen(
        sandbox.command(str(script), *ops),
        env=sandbox.env,
        cwd=sandbox.workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    most = [0]
    done = threading.Event()

    def count() -> None:  # the supervisor is the `agentsup run` process itself
        while not done.is_set():
            with contextlib.suppress(OSError):  # it has exited
                most[0] = max(most[0], len(os.listdir(f"/proc/{process.pid}/fd")))
            time.sleep(0.05)

    counter = threading.Thread(target=count)
    counter.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        done.set()
        counter.join()
        if process.poll() is None:
            process.kill()
            process.communicate()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    reports = {str(r["op"]): r for r in agent_reports(stdout)}
    return result, reports, most[0]


def host_pids(agent_pid: int, inner: list[int]) -> list[int]:
    """The host's pids for `inner`, pids as the agent's own PID namespace numbers them.

    `agent_pid` is any process of the agent, as the host sees it (`ps --json`).
    """
    try:
        namespace = os.readlink(f"/proc/{agent_pid}/ns/pid")
    except OSError:
        return inner
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            with open(f"/proc/{entry}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"NSpid:"):
                        found[int(line.split()[-1])] = int(entry)
        except OSError:
            continue
    return [found.get(pid, pid) for pid in inner]


def deny_rule(rule_id: str, actions: str, matcher: str, *, mode: str = "block") -> str:
    """A policy on strict whose one rule, first, denies `actions` on `matcher`."""
    return textwrap.dedent(
        f"""
        name: {rule_id}
        extends: [strict]
        rules:
          - id: {rule_id}
            actions: [{actions}]
            {matcher}
            decision: deny
            priority: 1
            on_violation: {mode}
        """
    )


# Landlock ABI 6 scopes abstract unix sockets: a connect reaches only those
# made inside the agent's own Landlock domain (tests/test_own_sockets_e2e.py).
FEATURES["requires_landlock_scope"] = (
    _landlock_abi() >= 6,
    "kernel lacks Landlock's abstract-socket scope (ABI 6)",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_landlock_scope: needs Landlock ABI 6 (abstract-socket scope)"
    )
