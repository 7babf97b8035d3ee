"""End to end: real agents started through the bootstrap, a real HookServer.

The supervisor's loop is stood in for by a small select() loop in a thread.
"""

from __future__ import annotations

import http.server
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentsup.events import Response
from agentsup.hooks import bootstrap
from agentsup.supervision.hookserver import HookReply, HookRequest, HookServer

AGENTS = Path(__file__).parent / "agents"
ALLOW = HookReply(True, "allow-all", "", Response.ALLOW)

Policy = Callable[[HookRequest], bool]


def deny(rule: str = "test-deny") -> HookReply:
    return HookReply(False, rule, "refused by the test", Response.BLOCK)


class ServedHooks:
    """A HookServer answered by `allows`, served from a thread."""

    def __init__(
        self,
        path: Path,
        allows: Policy,
        cacheable: Callable[[HookRequest, HookReply], bool] | None = None,
    ) -> None:
        self.requests: list[HookRequest] = []
        self.tampers: list[tuple[int, str]] = []
        self._allows = allows
        self.server = HookServer(
            path,
            self._decide,
            lambda pid, why: self.tampers.append((pid, why)),
            cacheable=cacheable,
        )
        self._invalidate = threading.Event()
        self._invalidated = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _decide(self, request: HookRequest) -> HookReply:
        self.requests.append(request)
        return ALLOW if self._allows(request) else deny()

    def invalidate(self, allows: Policy) -> None:
        """A policy reload, done in the serving thread (the server is not thread-safe)."""
        self._invalidated.clear()
        self._allows = allows
        self._invalidate.set()
        assert self._invalidated.wait(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._invalidate.is_set():
                self._invalidate.clear()
                self.server.invalidate()
                self._invalidated.set()
            fds = self.server.fds()
            writable = [fd for fd in fds if self.server.want_write(fd)]
            readable, ready_to_write, _ = select.select(fds, writable, [], 0.05)
            for fd in {*readable, *ready_to_write}:
                self.server.on_ready(fd)

    def checks(self, action: str | None = None) -> list[HookRequest]:
        return [
            r for r in self.requests if r.op == "check" and (action is None or r.action == action)
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


@pytest.fixture
def hook_socket(tmp_path: Path) -> Path:
    return tmp_path / "hook.sock"


@pytest.fixture
def serve(hook_socket: Path) -> Iterator[Callable[[Policy], ServedHooks]]:
    served: list[ServedHooks] = []

    def start(allows: Policy) -> ServedHooks:
        served.append(ServedHooks(hook_socket, allows))
        return served[-1]

    yield start
    for item in served:
        item.close()


def agent_env(hook_socket: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(bootstrap.environment(hook_socket, "agent-1"))
    # These tests watch the telemetry notes too (audit level `all` asks for them).
    env["AGENTSUP_HOOK_NOTES"] = "1"
    return env


def run_agent(
    hook_socket: Path, script: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        bootstrap.command(AGENTS / script if cwd is None else script, args),
        env=agent_env(hook_socket),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]]

    def _answer(self) -> None:
        self.seen.append((self.command, self.path))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    handler = type("Handler", (_RecordingHandler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()
    thread.join()


def deny_post_to_api(request: HookRequest) -> bool:
    return not (
        request.action == "network_request"
        and request.target.startswith("POST http://api.example.test:")
    )


@pytest.mark.parametrize("client", ["urllib", "requests"])
def test_post_denied_before_any_byte_get_reaches_server(
    serve: Callable[[Policy], ServedHooks],
    hook_socket: Path,
    http_server: tuple[int, list[tuple[str, str]]],
    client: str,
) -> None:
    port, seen = http_server
    hooks = serve(deny_post_to_api)

    post = run_agent(hook_socket, "hook_http.py", str(port), client, "POST")
    assert post.returncode == 0, post.stderr
    assert post.stdout.startswith("DENIED [Errno 13] agentsup: network_request POST "), post.stdout
    assert "denied by rule 'test-deny'" in post.stdout
    assert seen == []

    get = run_agent(hook_socket, "hook_http.py", str(port), client, "GET")
    assert get.stdout.strip() == "STATUS 200", get.stderr
    assert seen == [("GET", "/x")]

    url = f"http://api.example.test:{port}/x"
    targets = [r.target for r in hooks.checks("network_request")]
    # One check per request: urllib's is not repeated by http.client.
    assert targets == [f"POST {url}", f"GET {url}"]
    assert hooks.tampers == []


def test_sql_drop_denied_select_allowed(
    serve: Callable[[Policy], ServedHooks], hook_socket: Path, tmp_path: Path
) -> None:
    hooks = serve(lambda r: not r.target.upper().startswith("DROP"))
    database = tmp_path / "agent.db"
    result = run_agent(hook_socket, "hook_sqlite.py", str(database))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "SELECT 1" in lines
    assert any(
        line.startswith("DROP denied: [Errno 13] agentsup: database_execute DROP TABLE items")
        for line in lines
    )
    assert "RAW DROP refused: not authorized" in lines
    assert any(line.startswith("RAW CONNECT refused:") for line in lines)
    assert any(line.startswith("SCRIPT denied:") for line in lines)
    assert lines[-1] == "TABLES ['items']"

    checks = [
        (r.action.value, r.target) for r in hooks.checks() if r.action.value.startswith("database")
    ]
    assert ("database_read", "SELECT count(*) FROM items") in checks
    assert ("database_write", "INSERT INTO items (name) VALUES (?)") in checks
    assert ("database_execute", "DROP TABLE items") in checks
    # The bypass attempts are reported as tampering.
    assert {why for _pid, why in hooks.tampers} == {
        "hook reported: sqlite3 statement prepared around the agentsup wrapper",
        "hook reported: sqlite3 connection opened around the agentsup wrapper",
    }


def test_env_read_denied_and_seen(
    serve: Callable[[Policy], ServedHooks], hook_socket: Path
) -> None:
    hooks = serve(lambda r: not (r.action == "env_read" and r.target == "HOME"))
    result = run_agent(hook_socket, "hook_env.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for label in ("environ.get", "getenv", "getitem", "contains"):
        assert (
            f"{label} denied: [Errno 13] agentsup: env_read HOME denied by rule 'test-deny': "
            "refused by the test" in lines
        )
    assert any(line.startswith("hook variable kept:") for line in lines)
    assert [r.target for r in hooks.checks("env_read")].count("HOME") == 4
    writes = [r.target for r in hooks.checks("env_write")]
    assert writes == ["AGENT_SET", "AGENT_PUT"]  # os.environ's own putenv is not asked twice


def test_python_grandchild_is_hooked(
    serve: Callable[[Policy], ServedHooks], hook_socket: Path
) -> None:
    hooks = serve(lambda r: not (r.action == "env_read" and r.target == "CHILD_MARK"))
    result = run_agent(hook_socket, "hook_grandchild.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("plain rc 1"), lines
    assert "env_read CHILD_MARK denied" in lines[0]
    assert lines[1].startswith("bare rc 1") and "env_read CHILD_MARK denied" in lines[1]
    parent_pid = int(lines[2].split()[1])
    child_pids = {r.pid for r in hooks.checks("env_read") if r.target == "CHILD_MARK"}
    assert len(child_pids) == 2 and parent_pid not in child_pids
    commands = [r.target for r in hooks.requests if r.action == "shell_execute"]
    assert len(commands) == 2 and all(
        c.startswith(sys.executable + " -c import os") for c in commands
    )


def test_agent_cannot_switch_the_hook_off(
    serve: Callable[[Policy], ServedHooks], hook_socket: Path
) -> None:
    hooks = serve(lambda r: not (r.target.startswith("POST ") or r.target == "SECRET_NAME"))
    result = run_agent(hook_socket, "hook_tamper.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "sys.audit = refused",
        "os.environ = refused",
        "del os.environ refused",
        "POST denied: [Errno 13] agentsup: network_request POST http://127.0.0.1:9/x denied by "
        "rule 'test-deny': refused by the test",
        "env read denied",
    ]
    reasons = [why for _pid, why in hooks.tampers]
    assert "hook reported: sys.audit was replaced; restored" in reasons
    assert "hook reported: assignment to os.environ refused" in reasons


def test_main_module_looks_as_without_agentsup(
    serve: Callable[[Policy], ServedHooks], hook_socket: Path, tmp_path: Path
) -> None:
    serve(lambda r: True)
    link_dir = tmp_path / "links"
    link_dir.mkdir()
    (link_dir / "agent.py").symlink_to(AGENTS / "hook_main.py")
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSUP_")}
    for args in (["a", "b c"], ["--fail"]):
        plain = subprocess.run(
            [sys.executable, "links/agent.py", *args],
            env=plain_env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        hooked = run_agent(hook_socket, "links/agent.py", *args, cwd=tmp_path)
        assert hooked.stdout == plain.stdout
        assert hooked.stderr == plain.stderr
        assert hooked.returncode == plain.returncode
    seen = json.loads(hooked.stdout.splitlines()[0])
    assert seen["argv"] == ["links/agent.py", "--fail"]
    assert seen["file"] == str(link_dir / "agent.py")
    assert seen["path0"] == str(AGENTS)  # the real directory, as CPython does
    assert 'File "' + str(link_dir / "agent.py") + '", line 13, in fail' in hooked.stderr
    assert "agentsup" not in hooked.stderr and hooked.returncode == 1


def test_fail_closed_when_supervisor_unreachable(tmp_path: Path) -> None:
    result = run_agent(tmp_path / "nobody-listens.sock", "hook_env.py")
    assert (
        "environ.get denied: [Errno 13] agentsup: env_read HOME refused: no valid answer"
        in result.stdout
    )
    assert result.returncode != 0  # the env write that follows fails too


def test_bootstrap_refuses_to_run_unhooked(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSUP_")}
    result = subprocess.run(
        bootstrap.command(AGENTS / "hook_main.py"), env=env, capture_output=True, text=True
    )
    assert result.returncode == 125
    assert "AGENTSUP_HOOK_SOCKET is not set" in result.stderr
    assert result.stdout == ""


def test_an_open_repairs_a_tamper_at_most_once_a_millisecond(
    serve: Callable[[Policy], ServedHooks], hook_socket: Path
) -> None:
    """Opens come by the thousand, so on them the integrity check is rate-limited;
    every other C-level event (connect, exec, import) checks each time."""
    hooks = serve(lambda r: True)
    result = run_agent(hook_socket, "hook_open_repairs.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "a while after: restored", lines
    assert "hook reported: sys.audit was replaced; restored" in [w for _p, w in hooks.tampers]
