"""The hook layer under the real supervisor: `agentsup run agent.py`.

A Python agent gets the audit hook before its first line; its HTTP requests,
SQL and environment reads are decided by the policy and recorded with
`layer: hook`.
"""

from __future__ import annotations

import http.server
import json
import sqlite3
import subprocess
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pyotp
import pytest
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:
        _Recorder.seen.append(f"GET {self.path}")
        body = b"hello from the test server"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        _Recorder.seen.append(f"POST {self.path}")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    _Recorder.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def agent(sandbox: Sandbox, body: str) -> str:
    path = sandbox.workspace / "agent.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


WEB_POLICY = """
name: web
extends: [strict]
rules:
  - id: api-get
    actions: [network_request]
    target: "GET http://api.example.test:{port}/**"
    decision: allow
    priority: 1
  - id: no-posting
    actions: [network_request]
    pattern: "^POST "
    decision: deny
    on_violation: block
    priority: 1
    message: this agent only reads from the API
  - id: api-connect
    actions: [network_connect]
    target: "127.0.0.1:{port}"
    decision: allow
    priority: 1
"""

RESOLVE_EXAMPLE_TEST = """
import socket
_real = socket.getaddrinfo
def _fake(host, *args, **kwargs):
    return _real("127.0.0.1" if host == "api.example.test" else host, *args, **kwargs)
socket.getaddrinfo = _fake
"""


def test_post_is_refused_before_any_byte_leaves_and_get_goes_through(
    sandbox: Sandbox, http_server: int
) -> None:
    policy = sandbox.policy("web", WEB_POLICY.replace("{port}", str(http_server)))
    script = agent(
        sandbox,
        RESOLVE_EXAMPLE_TEST
        + f"""
import urllib.request
url = "http://api.example.test:{http_server}/items"
try:
    urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"))
    print("POST went through")
except PermissionError as exc:
    print("POST refused:", exc)
print("GET:", urllib.request.urlopen(url).read().decode())
""",
    )
    result = sandbox.run(script, policy=policy)
    assert result.returncode == 0, result.stderr
    assert "POST refused:" in result.stdout and "no-posting" in result.stdout
    assert "GET: hello from the test server" in result.stdout
    assert _Recorder.seen == ["GET /items"]
    hook_records = [r for r in sandbox.audit_records() if r.get("layer") == "hook"]
    assert hook_records[0]["action_type"] == "network_request"
    assert hook_records[0]["target"] == f"POST http://api.example.test:{http_server}/items"


def test_drop_table_is_refused_and_select_allowed(sandbox: Sandbox) -> None:
    db = sandbox.workspace / "data.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    conn.close()
    policy = sandbox.policy(
        "db",
        """
name: db
extends: [strict]
rules:
  - id: no-ddl
    actions: [database_execute]
    target: "**"
    decision: deny
    on_violation: block
    priority: 1
""",
    )
    script = agent(
        sandbox,
        """
        import sqlite3
        conn = sqlite3.connect("data.db")
        print("rows:", conn.execute("SELECT name FROM users").fetchall())
        try:
            conn.execute("DROP TABLE users")
            print("dropped")
        except PermissionError as exc:
            print("refused:", exc)
        """,
    )
    result = sandbox.run(script, policy=policy)
    assert result.returncode == 0, result.stderr
    assert "rows: [('ada',)]" in result.stdout
    assert "refused:" in result.stdout and "no-ddl" in result.stdout
    with sqlite3.connect(db) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    conn.close()
    assert tables == [("users",)]
    record = next(r for r in sandbox.audit_records() if r.get("rule") == "no-ddl")
    assert record["target"] == "DROP TABLE users"
    assert record["layer"] == "hook"


HOME_DENIED = """
name: nohome
extends: [strict]
rules:
  - id: no-home
    actions: [env_read]
    target: HOME
    decision: deny
    on_violation: {mode}
    priority: 1
"""


def test_an_environment_read_is_audited_and_refused(sandbox: Sandbox) -> None:
    policy = sandbox.policy("nohome", HOME_DENIED.format(mode="block"))
    script = agent(
        sandbox,
        """
        import os
        try:
            os.environ.get("HOME")
            print("read HOME")
        except PermissionError:
            print("HOME refused")
        print("PATH visible:", "PATH" in os.environ)
        """,
    )
    result = sandbox.run(script, policy=policy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["HOME refused", "PATH visible: True"]
    record = next(r for r in sandbox.audit_records() if r.get("rule") == "no-home")
    assert (record["action_type"], record["target"], record["layer"]) == (
        "env_read",
        "HOME",
        "hook",
    )


def test_sigkill_applies_to_hook_events_too(sandbox: Sandbox) -> None:
    policy = sandbox.policy("nohome", HOME_DENIED.format(mode="sigkill"))
    script = agent(sandbox, "import os\nprint(os.environ['HOME'])\n")
    result = sandbox.run(script, policy=policy)
    assert result.returncode == 137
    assert "rule 'no-home' denied env_read HOME" in result.stderr
    assert str(sandbox.home) not in result.stdout


def test_a_python_grandchild_is_hooked_too(sandbox: Sandbox) -> None:
    policy = sandbox.policy("nohome", HOME_DENIED.format(mode="block"))
    script = agent(
        sandbox,
        """
        import subprocess, sys
        code = (
            "import os\\n"
            "try:\\n"
            "    os.environ['HOME']; print('grandchild read HOME')\\n"
            "except PermissionError:\\n"
            "    print('grandchild refused', os.getpid())\\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        """,
    )
    result = sandbox.run(script, policy=policy)
    assert result.returncode == 0, result.stderr
    assert "grandchild refused" in result.stdout
    records = sandbox.audit_records()
    start = next(r for r in records if r.get("kind") == "lifecycle")
    record = next(r for r in records if r.get("rule") == "no-home")
    # The grandchild's own hook reported it (the audit names host pids; the
    # agent numbers itself in its own PID namespace).
    assert record["pid"] not in (start["pid"], None)


def test_an_agent_cannot_switch_the_hook_off(sandbox: Sandbox) -> None:
    policy = sandbox.policy("nohome", HOME_DENIED.format(mode="block"))
    script = agent(
        sandbox,
        """
        import os, sys
        sys.addaudithook(lambda event, args: None)
        try:
            sys.audit = lambda *a: None
        except Exception as exc:
            print("cannot replace sys.audit:", type(exc).__name__)
        try:
            os.environ = dict(os.environ)
        except Exception as exc:
            print("cannot replace os.environ:", type(exc).__name__)
        try:
            os.environ["HOME"]
            print("read HOME")
        except PermissionError:
            print("HOME still refused")
        """,
    )
    result = sandbox.run(script, policy=policy)
    assert result.returncode == 0, result.stderr
    assert "HOME still refused" in result.stdout
    assert "read HOME" not in result.stdout


def test_ctypes_dlopen_is_recorded(sandbox: Sandbox) -> None:
    script = agent(sandbox, "import ctypes\nctypes.CDLL('libc.so.6')\nprint('loaded')\n")
    result = sandbox.run(script)
    assert result.returncode == 0, result.stderr
    record = next(r for r in sandbox.audit_records() if r.get("rule") == "agentsup-hook-note")
    assert record["target"] == "libc.so.6"
    assert record["detail"] == {"event": "ctypes.dlopen"}
    assert record["layer"] == "hook"


def test_a_held_hook_action_proceeds_after_a_person_approves(
    sandbox: Sandbox, http_server: int
) -> None:
    init = sandbox.agentsup("totp", "init")
    uri = next(w for w in init.stdout.split() if w.startswith("otpauth://"))
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]
    policy = sandbox.policy(
        "held",
        WEB_POLICY.replace("{port}", str(http_server)).replace(
            "    decision: deny\n    on_violation: block\n    priority: 1\n"
            "    message: this agent only reads from the API",
            "    decision: require_approval\n    priority: 1\n    message: posting needs a person",
        ),
    )
    script = agent(
        sandbox,
        RESOLVE_EXAMPLE_TEST
        + f"""
import urllib.request
url = "http://api.example.test:{http_server}/items"
urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"))
print("posted")
""",
    )
    proc = subprocess.Popen(
        sandbox.command(script, policy=policy, agent_id="poster"),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        pending: list[dict[str, object]] = []
        while not pending and time.monotonic() < deadline:
            listing = sandbox.agentsup("pending", "--json")
            pending = json.loads(listing.stdout) if listing.stdout.strip() else []
            time.sleep(0.1)
        assert pending and pending[0]["action_type"] == "network_request"
        assert _Recorder.seen == []  # nothing left before the person said yes
        resumed = sandbox.agentsup("resume", "poster", "--code", pyotp.TOTP(secret).now())
        assert resumed.returncode == 0, resumed.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "posted" in out
    assert _Recorder.seen == ["POST /items"]


def test_a_frame_with_a_lone_surrogate_costs_only_its_own_connection(sandbox: Sandbox) -> None:
    """A red team crashed `agentsup run` (and under the daemon every agent) from
    inside the agent: on its own hook socket it sent a frame whose JSON held a
    lone surrogate (`"\\udfff"` in a note's detail, `"GET http://\\ud800/"` as a
    check's target).  Writing the record raised UnicodeEncodeError: exit 125,
    the agent killed, no exit record.

    Now each such frame is refused as a bad frame: that connection is closed
    and a tamper record says why.  The supervisor keeps serving, the agent's
    next check is answered, and it exits 0 with its exit recorded.
    """
    script = agent(
        sandbox,
        r"""
import os, socket, struct, json
def send(text):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(os.environ["AGENTSUP_HOOK_SOCKET"])
    data = text.encode()
    s.sendall(struct.pack(">I", len(data)) + data)
    s.settimeout(10)
    length = s.recv(4, socket.MSG_WAITALL)
    if not length:
        return "closed"
    return json.loads(s.recv(struct.unpack(">I", length)[0], socket.MSG_WAITALL))["verdict"]
print("note:", send('{"v":1,"id":1,"op":"note","action":"file_read","target":"x",'
                    '"detail":{"event":"ctypes.dlopen","k":"\\udfff"}}'))
print("check:", send('{"v":1,"id":2,"op":"check","action":"network_request",'
                     '"target":"GET http://\\ud800/","detail":{}}'))
print("later:", send('{"v":1,"id":3,"op":"check","action":"env_read","target":"HOME",'
                     '"detail":{}}'))
print("home:", os.environ["HOME"])
""",
    )
    result = sandbox.run(script)
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    assert "note: closed" in result.stdout and "check: closed" in result.stdout
    assert "later: allow" in result.stdout and f"home: {sandbox.home}" in result.stdout
    records = sandbox.audit_records()
    tampers = [r for r in records if r["kind"] == "tamper" and r.get("layer") == "hook"]
    assert [str(r["reason"]) for r in tampers] == [
        "detail holds text that is not UTF-8 (a lone surrogate)",
        "target is not UTF-8 text (a lone surrogate)",
    ]
    exits = [r for r in records if r["kind"] == "lifecycle" and r.get("event") == "exit"]
    assert len(exits) == 1 and exits[0]["exit_code"] == 0
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0
