"""The README's recipe for a test suite's own servers, as written there, run for real.

The policy is read out of README.md (the "Own servers" block), so the README
cannot drift from what is tested.  Under it an agent starts an HTTP server on
its loopback and reaches it with curl (a connect) and with urllib (a request
the hook judges too); a server on the host's loopback stays out of reach,
since the agent's network namespace is its own.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "# Own servers"

AGENT = """
import json, subprocess, sys, time, urllib.request

host_port = sys.argv[1]
server = subprocess.Popen([sys.executable, "-m", "http.server", "8765", "--bind", "127.0.0.1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            urllib.request.urlopen("http://127.0.0.1:8765/", timeout=5).read()
            break
        except OSError:
            time.sleep(0.05)
    report = {}
    report["urllib"] = urllib.request.urlopen("http://127.0.0.1:8765/", timeout=5).status
    report["localhost"] = urllib.request.urlopen("http://localhost:8765/", timeout=5).status
    curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "http://127.0.0.1:8765/"], capture_output=True, text=True)
    report["curl"] = curl.stdout
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=5)
        report["host"] = "reached"
    except OSError as exc:
        report["host"] = type(exc).__name__
    print(json.dumps(report))
finally:
    server.kill()
"""


def own_servers_block(readme: str) -> str:
    start = readme.index(f"```yaml\n{HEADING}") + len("```yaml\n")
    return readme[start : readme.index("```", start)]


@pytest.fixture
def host_server() -> Iterator[tuple[int, list[str]]]:
    """A server on the host's loopback that records every path asked of it."""
    asked: list[str] = []

    class Recording(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], asked
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_the_readmes_recipe_reaches_the_agents_own_servers_and_nothing_on_the_host(
    sandbox: Sandbox, host_server: tuple[int, list[str]]
) -> None:
    port, asked = host_server
    policy = sandbox.policy("own-servers", own_servers_block(README.read_text(encoding="utf-8")))
    agent = sandbox.workspace / "serve.py"
    agent.write_text(AGENT)
    result = sandbox.run("python3", str(agent), str(port), policy=policy)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"urllib": 200, "localhost": 200, "curl": "200", "host": "URLError"}
    assert asked == []
