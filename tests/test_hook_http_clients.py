"""httpx (sync and async) and aiohttp are gated at the request level.

They carry their own HTTP stacks, so http.client's audit event never sees
their requests; the hook wraps them when they are imported.  Served hooks
first, then under the real supervisor from a venv the agent made.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Sandbox
from test_hook_e2e import Policy, ServedHooks, agent_env
from test_hook_e2e import http_server as http_server
from test_hook_site import serve as serve
from test_hook_supervised import WEB_POLICY, _Recorder
from test_hook_supervised import http_server as recorded_server  # noqa: F401  (fixture)

pytest.importorskip("httpx")
pytest.importorskip("aiohttp")

CLIENTS = """
import asyncio, sys
import aiohttp, httpx
base = sys.argv[1]

def attempt(label, call):
    try:
        print(label, call())
    except PermissionError as exc:
        print(label, "refused:", exc)

attempt("httpx GET", lambda: httpx.get(base + "/a").status_code)
attempt("httpx POST", lambda: httpx.post(base + "/b", content=b"x").status_code)

async def async_httpx(method, path):
    async with httpx.AsyncClient() as client:
        return (await client.request(method, base + path)).status_code

async def with_aiohttp(method, path):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, base + path) as response:
            return response.status

for label, call in (("httpx async", async_httpx), ("aiohttp", with_aiohttp)):
    attempt(label + " GET", lambda: asyncio.run(call("GET", "/c")))
    attempt(label + " POST", lambda: asyncio.run(call("POST", "/d")))
"""

EXPECTED = [
    ("httpx GET", "200"),
    ("httpx POST", "refused:"),
    ("httpx async GET", "200"),
    ("httpx async POST", "refused:"),
    ("aiohttp GET", "200"),
    ("aiohttp POST", "refused:"),
]


def _outcomes(stdout: str) -> list[tuple[str, str]]:
    outcomes = []
    for line in stdout.splitlines():
        label, _, rest = line.partition(" GET " if " GET " in line else " POST ")
        verb = "GET" if " GET " in line else "POST"
        outcomes.append((f"{label} {verb}", rest.split()[0] if rest else ""))
    return outcomes


def test_httpx_and_aiohttp_requests_are_checked(
    tmp_path: Path,
    serve: Callable[[Policy], ServedHooks],
    http_server: tuple[int, list[tuple[str, str]]],
) -> None:
    port, seen = http_server
    served = serve(lambda r: not r.target.startswith("POST "))
    script = tmp_path / "clients.py"
    script.write_text(CLIENTS)
    result = subprocess.run(
        [sys.executable, str(script), f"http://127.0.0.1:{port}"],
        env=agent_env(tmp_path / "hook.sock"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert _outcomes(result.stdout) == EXPECTED, result.stdout
    checks = [(r.target, r.detail.get("source")) for r in served.checks("network_request")]
    base = f"http://127.0.0.1:{port}"
    assert checks == [
        (f"GET {base}/a", "httpx"),
        (f"POST {base}/b", "httpx"),
        (f"GET {base}/c", "httpx"),
        (f"POST {base}/d", "httpx"),
        (f"GET {base}/c", "aiohttp"),
        (f"POST {base}/d", "aiohttp"),
    ]
    assert [method for method, _path in seen] == ["GET", "GET", "GET"]


CLIENT_POLICY = WEB_POLICY.replace("api.example.test", "127.0.0.1")


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_workspace_venv_is_gated_by_network_request_rules(
    sandbox: Sandbox,
    recorded_server: int,  # noqa: F811
) -> None:
    port = recorded_server
    venv = sandbox.workspace / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # httpx and aiohttp come from the test's own environment (itself a venv in
    # CI, whose packages --system-site-packages would not reach).
    (site,) = venv.glob("lib/python3*/site-packages")
    paths = sysconfig.get_paths()
    (site / "test-env.pth").write_text(f"{paths['purelib']}\n{paths['platlib']}\n")
    script = sandbox.workspace / "clients.py"
    script.write_text(textwrap.dedent(CLIENTS))
    policy = sandbox.policy("clients", CLIENT_POLICY.replace("{port}", str(port)))
    result = sandbox.run(
        str(venv / "bin" / "python"), str(script), f"http://127.0.0.1:{port}", policy=policy
    )
    assert result.returncode == 0, result.stderr
    assert _outcomes(result.stdout) == EXPECTED, result.stdout + result.stderr
    assert _Recorder.seen == ["GET /a", "GET /c", "GET /c"]
    denials = [r for r in sandbox.audit_records() if r.get("rule") == "no-posting"]
    assert [(r["layer"], r["target"]) for r in denials] == [
        ("hook", f"POST http://127.0.0.1:{port}/{path}") for path in ("b", "d", "d")
    ]
