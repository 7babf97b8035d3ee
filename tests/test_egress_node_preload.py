"""agentsup's node preload (hooks/node/egress.cjs) against a scripted proxy, no sandbox.

The proxy here records what node sends it and answers as the real one would
(403, or 200 and then the ClientHello is read for its SNI), so each routing
choice of the preload is seen on the wire: CONNECT for https, absolute form
for http, NO_PROXY hosts direct, and nothing at all without proxy variables.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentsup.supervision import egress
from agentsup.supervision.egress import client_hello_sni


@dataclass
class FakeProxy:
    """Accepts connections; answers CONNECT per `tunnels`, plain requests with a body."""

    listener: socket.socket
    tunnels: dict[str, int] = field(default_factory=dict)  # authority -> status (else 403)
    heads: list[str] = field(default_factory=list)
    snis: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        host, port = self.listener.getsockname()
        return f"http://{host}:{port}"

    def serve(self) -> None:
        while True:
            try:
                conn, _peer = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            text = head.decode("latin-1")
            self.heads.append(text)
            method, target, _version = text.split("\r\n", 1)[0].split(" ")
            if method != "CONNECT":
                body = f"relayed {target}".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
                return
            status = self.tunnels.get(target, 403)
            conn.sendall(b"HTTP/1.1 %d Refused\r\nContent-Length: 0\r\n\r\n" % status)
            if status != 200:
                return
            hello = rest
            while (sni := client_hello_sni(hello)) is None:
                hello += conn.recv(65536)
            self.snis[target] = sni


@pytest.fixture
def proxy() -> Iterator[FakeProxy]:
    fake = FakeProxy(socket.create_server(("127.0.0.1", 0)))
    thread = threading.Thread(target=fake.serve, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.listener.close()


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    return node


def _fetch(env: dict[str, str], *urls: str) -> dict[str, str]:
    """What node's fetch made of each URL: the body, or the error's cause."""
    script = (
        f"const urls = {json.dumps(list(urls))};"
        "(async () => { const out = {};"
        " for (const u of urls) { try { out[u] = await (await fetch(u)).text(); }"
        " catch (e) { out[u] = String(e.cause || e); } }"
        " console.log(JSON.stringify(out)); })();"
    )
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    clean.pop("NODE_OPTIONS", None)
    result = subprocess.run(
        [_node(), "-e", script],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, str] = json.loads(result.stdout)
    return answer


def _agent_env(proxy: FakeProxy, **extra: str) -> dict[str, str]:
    env = egress.proxy_environment(3128)
    env.update({name: proxy.url for name, value in env.items() if value.startswith("http://")})
    env.update(extra)
    return env


def test_the_environment_preloads_the_dispatcher_after_the_users_node_options() -> None:
    env = egress.proxy_environment(3128, "--max-old-space-size=200 ")
    assert os.path.isfile(egress.NODE_PRELOAD)
    assert env["NODE_OPTIONS"] == f'--max-old-space-size=200 --require "{egress.NODE_PRELOAD}"'
    assert egress.proxy_environment(3128)["NODE_OPTIONS"] == f'--require "{egress.NODE_PRELOAD}"'
    assert env["NODE_USE_ENV_PROXY"] == "1"


def test_https_goes_through_a_connect_tunnel_with_the_host_as_sni(proxy: FakeProxy) -> None:
    proxy.tunnels = {"example.test:8443": 200, "10.1.2.3:9443": 200}
    found = _fetch(
        _agent_env(proxy),
        "https://example.test:8443/a",
        "https://10.1.2.3:9443/b",
        "https://blocked.test/c",
    )
    assert proxy.snis == {"example.test:8443": "example.test", "10.1.2.3:9443": ""}
    assert "CONNECT blocked.test:443 HTTP/1.1" in [h.split("\r\n")[0] for h in proxy.heads]
    refused = found["https://blocked.test/c"]
    assert "403" in refused and "blocked.test:443" in refused, refused


def test_plain_http_goes_to_the_proxy_in_absolute_form(proxy: FakeProxy) -> None:
    found = _fetch(_agent_env(proxy), "http://example.test:8080/p?q=1", "http://example.test/r")
    assert found == {
        "http://example.test:8080/p?q=1": "relayed http://example.test:8080/p?q=1",
        "http://example.test/r": "relayed http://example.test/r",
    }
    first = proxy.heads[0].lower().split("\r\n")
    assert "host: example.test:8080" in first and "connection: close" in first


def test_no_proxy_hosts_and_no_proxy_variables_go_direct(proxy: FakeProxy) -> None:
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"direct")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        local = f"http://127.0.0.1:{port}/"
        assert _fetch(_agent_env(proxy), local) == {local: "direct"}  # NO_PROXY has 127.0.0.1
        by_suffix = _agent_env(proxy, no_proxy="*.test", NO_PROXY="*.test")
        _fetch(by_suffix, "http://a.example.test/")  # fails to resolve: no network here
        preload = {"NODE_OPTIONS": f'--require "{egress.NODE_PRELOAD}"'}
        assert _fetch(preload, local) == {local: "direct"}  # no proxy variables: node as it was
        assert proxy.heads == []
    finally:
        server.shutdown()
        server.server_close()


def test_a_dispatcher_node_already_proxies_with_is_left_alone(
    proxy: FakeProxy, tmp_path: Path
) -> None:
    """Newer nodes install EnvHttpProxyAgent under NODE_USE_ENV_PROXY: the preload keeps it."""
    first = tmp_path / "node-proxies.cjs"
    first.write_text(
        "const made = [];\n"
        "globalThis[Symbol.for('undici.globalDispatcher.1')] = new (class EnvHttpProxyAgent {\n"
        "  constructor() { made.push(this); }\n"
        "  dispatch() { throw new Error(`node proxied this with agent ${made.indexOf(this)}`); }\n"
        "})();\n"
    )
    env = _agent_env(proxy)
    env["NODE_OPTIONS"] = f'--require "{first}" {env["NODE_OPTIONS"]}'
    found = _fetch(env, "https://example.test/")
    assert "node proxied this with agent 0" in found["https://example.test/"], found
    assert proxy.heads == []
