"""The egress proxy end to end: real clients in a supervised agent, a real HTTPS server.

The server listens on 127.0.0.2 in the host's namespace, with a certificate
from a test CA.  The agent's own namespace has only loopback and the proxy;
`AGENTSUP_EGRESS_HOSTS` maps the test host names to 127.0.0.2 for the
supervisor's resolver, so nothing outside this machine is involved.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import http.server
import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from conftest import AGENTS, Sandbox

from agentsup.kernel.proc import process_state

pytestmark = [pytest.mark.requires_root, pytest.mark.requires_seccomp_notify]

HOSTS = (
    "example.test",
    "blocked.test",
    "approve.test",
    "other.test",
    "git.test",
    "pypi.test",
    "refused.test",
    "api.anthropic.com",  # only ever on a test address: AGENTSUP_EGRESS_HOSTS maps it
    "pypi.org",
)
CLIENT = "egress_client.py"


def _make_ca(directory: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentsup test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "test-ca.txt", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class _Hello(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []  # the Host of every request served, for tests that must see none

    def do_GET(self) -> None:
        self.seen.append(str(self.headers.get("Host")))
        body = f"hello {self.headers.get('Host')} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(server: http.server.ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def servers(sandbox: Sandbox) -> Iterator[tuple[int, int]]:
    """(https port, http port) on 127.0.0.2; the CA is in the workspace as test-ca.txt."""
    _ca, cert, key = _make_ca(sandbox.workspace)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    https = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Hello)
    https.socket = tls.wrap_socket(https.socket, server_side=True)
    plain = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Hello)
    _serve(https)
    _serve(plain)
    shutil.copy(AGENTS / CLIENT, sandbox.workspace / CLIENT)
    _Hello.seen.clear()
    sandbox.env["AGENTSUP_EGRESS_HOSTS"] = ",".join(f"{h}=127.0.0.2" for h in HOSTS)
    try:
        yield https.server_address[1], plain.server_address[1]
    finally:
        for server in (https, plain):
            server.shutdown()
            server.server_close()


POLICY = """
name: egress
extends: [strict]
on_violation: block
rules:
  - id: example-host
    actions: [network_connect]
    target: "example.test:*"
    decision: allow
    priority: 1
  - id: example-requests
    actions: [network_request]
    pattern: '^(CONNECT example\\.test:\\d+|GET http://example\\.test:\\d+/.*)$'
    decision: allow
    priority: 1
  # The audit hook in hooked Python clients names each request as well (layer
  # hook); these pass there so that the proxy's host rules decide them.
  - id: hook-requests
    actions: [network_request]
    pattern: '^GET https?://(example\\.test:\\d+|blocked\\.test:\\d+|169\\.254\\.169\\.254)/'
    decision: allow
    priority: 1
  - id: loopback-ephemeral-binds
    actions: [network_connect]
    pattern: '^(127\\.0\\.0\\.1|\\[::1\\]):0$'
    decision: allow
    priority: 1
  - id: blocked-host
    actions: [network_connect]
    target: "blocked.test:*"
    decision: deny
    on_violation: block
    priority: 1
  - id: approve-host
    actions: [network_connect]
    target: "approve.test:*"
    decision: require_approval
    priority: 1
  - id: approve-requests
    actions: [network_request]
    target: "CONNECT approve.test:*"
    decision: allow
    priority: 1
"""


DIRECT_BLOCKED = """
  - id: no-direct
    actions: [network_connect]
    pattern: '^[0-9]'
    decision: deny
    on_violation: block
    priority: 2
  - id: localhost-by-name
    actions: [network_connect, network_request]
    pattern: '^(CONNECT )?localhost:'
    decision: allow
    priority: 2
"""


def _results(stdout: str) -> dict[str, dict[str, object]]:
    found = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            found[result["kind"]] = result
    return found


def _proxy_records(sandbox: Sandbox) -> list[dict[str, object]]:
    return [r for r in sandbox.audit_records() if r.get("layer") == "proxy"]


def test_real_clients_reach_an_allowed_host_with_no_configuration(
    sandbox: Sandbox, servers: tuple[int, int]
) -> None:
    https, plain = servers
    policy = sandbox.policy("egress", POLICY)
    url = f"https://example.test:{https}/x"
    result = sandbox.run(
        "sh",
        "-c",
        f"curl -q -sS --cacert test-ca.txt {url}/curl; echo; "
        f"curl -q -sS http://example.test:{plain}/plain; echo; "
        f"python3 {CLIENT} test-ca.txt urllib={url}/urllib requests={url}/requests "
        f"httpx={url}/httpx",
        policy=policy,
    )
    assert result.returncode == 0, result.stderr
    assert f"hello example.test:{https} /x/curl" in result.stdout
    assert f"hello example.test:{plain} /plain" in result.stdout
    found = _results(result.stdout)
    for client in ("urllib", "requests", "httpx"):
        assert found[client]["ok"], found[client]
        assert found[client]["data"] == f"hello example.test:{https} /x/{client}"
    records = _proxy_records(sandbox)
    tunnels = [r for r in records if r.get("event") == "egress" and r["method"] == "CONNECT"]
    assert len(tunnels) == 4
    # Each record names the process that connected: curl's, then python's (not sh's).
    assert all(int(str(r["pid"])) > 0 for r in records)
    assert len({r["pid"] for r in tunnels}) == 2, [r["pid"] for r in tunnels]
    for record in tunnels:
        assert record["decision"] == "allow" and record["rule"] == "example-host"
        assert record["sni"] == "example.test" and record["host"] == "example.test"
        assert int(record["bytes_up"]) > 0 and int(record["bytes_down"]) > 0  # type: ignore[call-overload]
        assert "duration_ms" in record
    gets = [r for r in records if r.get("event") == "egress" and r["method"] == "GET"]
    assert gets and gets[0]["url"] == f"http://example.test:{plain}/plain"
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


def test_disallowed_hosts_are_refused_per_policy(
    sandbox: Sandbox, servers: tuple[int, int]
) -> None:
    https, _plain = servers
    policy = sandbox.policy("egress", POLICY)
    blocked = f"https://blocked.test:{https}/"
    result = sandbox.run(
        "sh",
        "-c",
        f"curl -q -sS --cacert test-ca.txt {blocked}; echo curl=$?; "
        f"python3 {CLIENT} test-ca.txt urllib={blocked} requests={blocked} httpx={blocked}; "
        f"curl -q -sS --cacert test-ca.txt https://other.test:{https}/; echo never",
        policy=policy,
    )
    # blocked.test is refused and the agent carries on; other.test meets
    # strict's no-network rule, which kills.
    assert result.returncode == 137, result.stderr
    assert "curl=56" in result.stdout or "curl=7" in result.stdout, result.stdout
    found = _results(result.stdout)
    for client in ("urllib", "requests", "httpx"):
        assert not found[client]["ok"]
        assert "403" in str(found[client]["data"]) or "Forbidden" in str(found[client]["data"])
    assert "never" not in result.stdout
    assert "no-network" in result.stderr and "other.test" in result.stderr
    records = _proxy_records(sandbox)
    assert [r for r in records if r["rule"] == "blocked-host" and r.get("event") == "egress"]
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


def test_direct_connects_dns_sni_mismatch_and_internal_addresses_are_refused(
    sandbox: Sandbox, servers: tuple[int, int]
) -> None:
    https, _plain = servers
    # Direct connects are refused without a kill here, so that every attempt runs;
    # localhost passes the host rules, so the proxy's own address check decides.
    policy = sandbox.policy("egress", POLICY + DIRECT_BLOCKED)
    result = sandbox.run(
        "python3",
        CLIENT,
        "test-ca.txt",
        f"direct=127.0.0.2:{https}",
        "dns=8.8.8.8",
        f"sni=example.test:{https},other.test",
        "urllib=http://169.254.169.254/latest/meta-data/",
        f"connect=localhost:{https},localhost",
        policy=policy,
    )
    assert result.returncode == 0, result.stderr
    found = _results(result.stdout)
    records = sandbox.audit_records()
    assert not found["direct"]["ok"]
    assert not found["dns"]["ok"]
    assert not found["sni"]["ok"]
    assert not found["urllib"]["ok"] and "403" in str(found["urllib"]["data"])
    assert "403" in str(found["connect"]["data"])  # NO_PROXY has localhost: ask by hand
    internal = [r for r in records if r.get("rule") == "agentsup-egress-internal"]
    assert internal and internal[0]["host"] == "localhost"
    sni = [r for r in records if r.get("rule") == "agentsup-egress-sni" and "sni" in r]
    assert sni and sni[0]["sni"] == "other.test" and sni[0]["layer"] == "proxy"
    assert any(str(r.get("target")).startswith("169.254.169.254:80") for r in records)
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


OPEN = """
name: egress-open
extends: [strict]
on_violation: block
rules:
  # Every connect and request passes the rules, even strict's DNS and direct
  # ones: so what stops the attempts below is the namespace and the proxy's
  # own address check, not a rule.
  - id: anything
    actions: [network_connect, network_request]
    pattern: '.*'
    decision: allow
    priority: 1
"""


@pytest.fixture
def dns_listener() -> Iterator[list[bytes]]:
    """A UDP socket on 127.0.0.2:53 in the test's namespace; yields what it received."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind(("127.0.0.2", 53))
    except OSError as exc:
        udp.close()
        pytest.skip(f"127.0.0.2:53 is taken: {exc}")
    received: list[bytes] = []
    udp.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                data, peer = udp.recvfrom(512)
                received.append(data)
                udp.sendto(data[:2] + b"\x81\x80" + data[4:], peer)  # an answer, if ever asked

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        stop.set()
        thread.join()
        udp.close()


def test_with_every_rule_open_only_the_proxy_leads_out(
    sandbox: Sandbox, servers: tuple[int, int], dns_listener: list[bytes]
) -> None:
    https, _plain = servers
    # The same attempts reach the server and the resolver from the test's namespace.
    socket.create_connection(("127.0.0.2", https), timeout=5).close()
    policy = sandbox.policy("egress-open", OPEN)
    result = sandbox.run(
        "python3",
        CLIENT,
        "test-ca.txt",
        f"direct=127.0.0.2:{https}",
        "dns=127.0.0.2",
        "dns=8.8.8.8",
        "resolve=example.test",
        "urllib=http://169.254.169.254/latest/meta-data/",
        f"urllib=https://127.0.0.2:{https}/by-address",
        "urllib=http://10.1.2.3/private",
        f"urllib=https://example.test:{https}/by-name",
        policy=policy,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 8, result.stdout
    direct, dns_local, dns_far, resolve, metadata, loopback, private, named = lines
    assert "ConnectionRefused" in direct["data"], direct  # the namespace's own loopback
    assert not dns_local["ok"] and not dns_far["ok"], (dns_local, dns_far)
    assert dns_listener == []  # no query left the namespace
    assert not resolve["ok"], resolve
    for refused in (metadata, loopback, private):
        assert not refused["ok"] and "403" in refused["data"], refused
    # The proxy itself works: a name the operator's table maps is no internal address.
    assert named["ok"] and named["data"] == f"hello example.test:{https} /by-name", named
    internal = [r for r in sandbox.audit_records() if r.get("rule") == "agentsup-egress-internal"]
    hosts = {r["host"] for r in internal if r.get("event") == "egress"}
    assert hosts == {"169.254.169.254", "127.0.0.2", "10.1.2.3"}, internal
    assert all(r["layer"] == "proxy" and r["decision"] == "deny" for r in internal)
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


BY_ADDRESS = """
name: egress-by-address
extends: [strict]
on_violation: block
network: {network}
rules:
  - id: server-address
    actions: [network_connect]
    target: "127.0.0.2:*"
    decision: allow
    priority: 1
  - id: server-requests  # the hook's and the proxy's names for the same GET
    actions: [network_request]
    pattern: '^GET http://127\\.0\\.0\\.2:\\d+/'
    decision: allow
    priority: 1
"""


@pytest.mark.parametrize("network", ["proxy", "direct"])
def test_the_network_key_overrides_the_choice_an_ip_rule_would_make(
    sandbox: Sandbox, servers: tuple[int, int], network: str
) -> None:
    """An IP-literal connect rule alone means direct; `network: proxy` keeps the proxy."""
    https, plain = servers
    policy = sandbox.policy("egress-by-address", BY_ADDRESS.format(network=network))
    result = sandbox.run(
        "python3",
        CLIENT,
        "test-ca.txt",
        f"direct=127.0.0.2:{https}",
        f"urllib=http://127.0.0.2:{plain}/asked",
        policy=policy,
    )
    assert result.returncode == 0, result.stderr
    direct, asked = (json.loads(x) for x in result.stdout.splitlines() if x.startswith("{"))
    # Both ways reach the server's address the rule names, each by its own road.
    assert asked["data"] == f"hello 127.0.0.2:{plain} /asked", asked
    gets = [r for r in _proxy_records(sandbox) if r.get("event") == "egress"]
    if network == "proxy":
        assert "ConnectionRefused" in direct["data"], direct  # no way out but the proxy
        assert [(r["rule"], r["decision"]) for r in gets] == [("server-address", "allow")]
    else:
        assert direct["ok"], direct
        assert gets == []
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


def test_the_readme_anthropic_policy_with_a_real_client(sandbox: Sandbox) -> None:
    """README's "only the Anthropic API", as written, with api.anthropic.com on 127.0.0.2:443."""
    _ca, cert, key = _make_ca(sandbox.workspace)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.2", 443), _Hello)
    except OSError as exc:
        pytest.skip(f"127.0.0.2:443 is taken: {exc}")
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    _serve(server)
    sandbox.env["AGENTSUP_EGRESS_HOSTS"] = ",".join(f"{h}=127.0.0.2" for h in HOSTS)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```yaml\n# only the Anthropic API") + len("```yaml\n")
    policy = sandbox.policy("anthropic-only", readme[start : readme.index("```", start)])
    curl = "curl -q -sS --cacert test-ca.txt"
    try:
        result = sandbox.run(
            "sh",
            "-c",
            f"{curl} https://api.anthropic.com/v1/models; echo; {curl} https://pypi.org/; echo no",
            policy=policy,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert "hello api.anthropic.com /v1/models" in result.stdout, result.stderr
    # Any other host meets strict's no-network rule, which kills.
    assert result.returncode == 137 and "no" not in result.stdout.split(), result.stdout
    records = [r for r in _proxy_records(sandbox) if r.get("event") == "egress"]
    assert [(r["host"], r["decision"]) for r in records] == [
        ("api.anthropic.com", "allow"),
        ("pypi.org", "deny"),
    ]
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


def _totp_secret(sandbox: Sandbox) -> str:
    """A TOTP secret for resume --code, made with `agentsup totp init`."""
    result = sandbox.agentsup("totp", "init")
    uri = next(word for word in result.stdout.split() if word.startswith("otpauth://"))
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


@contextlib.contextmanager
def _held(
    sandbox: Sandbox, *program: str, policy: str
) -> Iterator[tuple[subprocess.Popen[str], list[dict[str, object]]]]:
    """Agent `egress` running `program`, once it has an action pending; killed if left running."""
    proc = subprocess.Popen(
        sandbox.command(*program, policy=policy, agent_id="egress"),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        pending: list[dict[str, object]] = []
        while not pending and time.monotonic() < deadline and proc.poll() is None:
            listed = sandbox.agentsup("pending", "--json")
            pending = json.loads(listed.stdout) if listed.returncode == 0 else []
            time.sleep(0.1)
        assert pending, proc.poll() is not None and proc.communicate()
        yield proc, pending
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _next_pending(sandbox: Sandbox, proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        listed = sandbox.agentsup("pending", "--json")
        if listed.returncode == 0 and (pending := json.loads(listed.stdout)):
            return list(pending)
        time.sleep(0.1)
    raise AssertionError(f"nothing held: {proc.poll()}")


def test_a_new_host_waits_for_a_person_who_lets_exactly_that_request_through(
    sandbox: Sandbox, servers: tuple[int, int]
) -> None:
    https, _plain = servers
    secret = _totp_secret(sandbox)
    timeout = "approval: {timeout_seconds: 2, on_timeout: deny}\n"
    policy = sandbox.policy("egress", POLICY.replace("rules:\n", timeout + "rules:\n", 1))
    curl = f"curl -q -sS --cacert test-ca.txt https://approve.test:{https}"
    # Three requests to the held host: resumed, denied, and left to time out.
    script = "; ".join(f"{curl}/{n}; echo {n}=$?" for n in ("one", "two", "three"))
    with _held(sandbox, "sh", "-c", script, policy=policy) as (proc, pending):
        assert pending[0]["target"] == f"approve.test:{https}", pending
        # The connection waits, and so does the rest of the tree.
        (agent,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
        states = _namespace_processes(int(agent["pid"]))
        assert states and set(states.values()) == {"T"}, states
        assert _Hello.seen == []
        answer = sandbox.agentsup("resume", "egress", "--code", pyotp.TOTP(secret).now())
        assert answer.returncode == 0, answer.stderr
        # The approval was for that request only: the next one is held again.
        pending = _next_pending(sandbox, proc)
        assert pending[0]["target"] == f"approve.test:{https}", pending
        assert _Hello.seen == [f"approve.test:{https}"]
        answer = sandbox.agentsup("deny", "egress")
        assert answer.returncode == 0, answer.stderr
        _next_pending(sandbox, proc)  # the third, until approval.timeout_seconds denies it
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"hello approve.test:{https} /one" in out, out
    assert "one=0" in out and "two=0" not in out and "three=0" not in out, out
    assert "/two" not in out and "/three" not in out
    assert _Hello.seen == [f"approve.test:{https}"]  # exactly one request reached the server
    held = [r for r in sandbox.audit_records() if r.get("held") == "approval"]
    assert [r["outcome"] for r in held] == ["approved", "denied", "timeout"], held
    assert all(r["target"] == f"approve.test:{https}" for r in held), held
    tunnels = [r for r in _proxy_records(sandbox) if r.get("event") == "egress"]
    assert [r["decision"] for r in tunnels] == ["allow", "deny", "deny"], tunnels
    assert all(r["rule"] == "approve-host" for r in tunnels), tunnels
    assert int(tunnels[0]["bytes_down"]) > 0  # type: ignore[call-overload]
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


# -- git, pip and node: the tools an agent installs and fetches with -------------------

TOOLS = """
  - id: tool-hosts
    actions: [network_connect]
    pattern: '^(git|pypi)\\.test:\\d+$'
    decision: allow
    priority: 1
  - id: tool-requests
    actions: [network_request]
    pattern: '^(CONNECT git\\.test:\\d+|GET http://pypi\\.test:\\d+/.*)$'
    decision: allow
    priority: 1
  # libcurl (git) always looks for ~/.netrc; strict kills that read: refuse it quietly.
  - id: netrc-quiet
    actions: [file_read]
    target: "{home}/.netrc"
    decision: deny
    on_violation: block
    priority: 1
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def git_server(sandbox: Sandbox, tmp_path: Path) -> Iterator[int]:
    """A bare repository over HTTPS (git's dumb protocol) on 127.0.0.2; the CA as test-ca.txt."""
    _ca, cert, key = _make_ca(sandbox.workspace)
    served = tmp_path / "served"
    work = tmp_path / "seed"
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(work)], check=True, env=env)
    (work / "README").write_text("cloned through the proxy\n")
    subprocess.run([*git, "-C", str(work), "add", "README"], check=True, env=env)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "one"], check=True, env=env)
    subprocess.run(
        [*git, "clone", "-q", "--bare", str(work), str(served / "repo.git")], check=True, env=env
    )
    subprocess.run(["git", "-C", str(served / "repo.git"), "update-server-info"], check=True)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.2", 0), functools.partial(_Quiet, directory=str(served))
    )
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    _serve(server)
    sandbox.env["AGENTSUP_EGRESS_HOSTS"] = ",".join(f"{h}=127.0.0.2" for h in HOSTS)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_git_clones_over_https_through_the_proxy(sandbox: Sandbox, git_server: int) -> None:
    policy = sandbox.policy("egress", POLICY + TOOLS)
    # Only the CA is the test's: git finds the proxy in http(s)_proxy by itself.
    result = sandbox.run(
        "sh",
        "-c",
        f"GIT_SSL_CAINFO=test-ca.txt git clone -q https://git.test:{git_server}/repo.git clone"
        " && cat clone/README",
        policy=policy,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "cloned through the proxy" in result.stdout
    tunnels = [r for r in _proxy_records(sandbox) if r.get("event") == "egress"]
    assert tunnels and all(r["host"] == "git.test" for r in tunnels)
    assert all(r["decision"] == "allow" and r["sni"] == "git.test" for r in tunnels)
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


def _tiny_wheel(directory: Path) -> Path:
    """agentsup_tiny 1.0, a pure-Python wheel written by hand (no build backend needed)."""
    name = "agentsup_tiny"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}.py": "VALUE = 'installed through the proxy'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    wheel = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
        archive.writestr(
            f"{info}/RECORD", "".join(f"{p},,\n" for p in files) + f"{info}/RECORD,,\n"
        )
    return wheel


@pytest.fixture
def package_index(sandbox: Sandbox, tmp_path: Path) -> Iterator[int]:
    """pypiserver on 127.0.0.2 serving one tiny wheel over plain HTTP."""
    # Only looked for: importing it here would install bottle's import hook in pytest.
    if importlib.util.find_spec("pypiserver") is None:
        pytest.skip("pypiserver is not installed (pip install -e .[test])")
    packages = tmp_path / "packages"
    packages.mkdir()
    _tiny_wheel(packages)
    with socket.socket() as probe:  # a free port: pypiserver takes no port 0
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pypiserver",
            "run",
            "-i",
            "127.0.0.2",
            "-p",
            str(port),
            "-a",
            ".",
            "-P",
            ".",
            str(packages),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.2:{port}/simple/", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("pypiserver did not start")
                time.sleep(0.2)
        sandbox.env["AGENTSUP_EGRESS_HOSTS"] = ",".join(f"{h}=127.0.0.2" for h in HOSTS)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_pip_installs_from_an_index_through_the_proxy(sandbox: Sandbox, package_index: int) -> None:
    policy = sandbox.policy("egress", POLICY + TOOLS)
    result = sandbox.run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--target",
        "site",
        "--index-url",
        f"http://pypi.test:{package_index}/simple/",
        "--trusted-host",  # plain HTTP: pip's own insecure-index check, not proxying
        "pypi.test",
        "agentsup-tiny",
        policy=policy,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (sandbox.workspace / "site" / "agentsup_tiny.py").exists()
    gets = [r for r in _proxy_records(sandbox) if r.get("method") == "GET"]
    assert any(str(r["url"]).endswith(".whl") for r in gets), gets
    assert all(r["decision"] == "allow" and r["host"] == "pypi.test" for r in gets)
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


def test_git_and_pip_are_refused_a_disallowed_host(
    sandbox: Sandbox, git_server: int, package_index: int
) -> None:
    policy = sandbox.policy("egress", POLICY + TOOLS)
    pip = (
        f"{sys.executable} -m pip install -q --no-cache-dir --disable-pip-version-check"
        f" --retries 0 --target site --index-url http://blocked.test:{package_index}/simple/"
        " --trusted-host blocked.test agentsup-tiny"
    )
    result = sandbox.run(
        "sh",
        "-c",
        f"GIT_SSL_CAINFO=test-ca.txt git clone -q https://blocked.test:{git_server}/repo.git c;"
        f" echo git=$?; {pip}; echo pip=$?",
        policy=policy,
        timeout=120,
    )
    # blocked-host says block: both fail and the agent carries on.
    assert result.returncode == 0, result.stderr
    assert "git=128" in result.stdout and "pip=1" in result.stdout, result.stdout
    assert not (sandbox.workspace / "c").exists()
    assert not (sandbox.workspace / "site" / "agentsup_tiny.py").exists()
    refused = [
        r
        for r in _proxy_records(sandbox)
        if r.get("event") == "egress" and r["rule"] == "blocked-host"
    ]
    assert {r["method"] for r in refused} == {"CONNECT", "GET"}, refused
    assert all(r["decision"] == "deny" and r["response"] == "block" for r in refused)
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    return node


def _node_fetch(*urls: str) -> str:
    """A node script that fetches each URL in turn and prints one JSON line per URL."""
    script = f"""
    const urls = {json.dumps(list(urls))};
    (async () => {{
      for (const url of urls) {{
        try {{
          const answer = await fetch(url);
          console.log(JSON.stringify({{ url, ok: answer.ok, data: await answer.text() }}));
        }} catch (error) {{
          console.log(JSON.stringify({{ url, ok: false, data: String(error.cause || error) }}));
        }}
      }}
    }})();
    """
    return script


def _fetched(stdout: str) -> dict[str, dict[str, object]]:
    return {
        str(line["url"]): line
        for line in (json.loads(text) for text in stdout.splitlines() if text.startswith("{"))
    }


def test_node_fetch_through_the_proxy(sandbox: Sandbox, servers: tuple[int, int]) -> None:
    """node's fetch ignores the proxy variables (node < 24): agentsup's preload routes it."""
    node = _node()
    https, plain = servers
    policy = sandbox.policy("egress", POLICY)
    (sandbox.workspace / "fetch.js").write_text(
        _node_fetch(f"https://example.test:{https}/node", f"http://example.test:{plain}/plain")
    )
    # The user's own NODE_OPTIONS stay in force next to the preload.
    sandbox.env["NODE_OPTIONS"] = "--max-old-space-size=200"
    result = sandbox.run(
        "sh",
        "-c",
        f"NODE_EXTRA_CA_CERTS=test-ca.txt {node} fetch.js;"
        f" {node} -p 'v8.getHeapStatistics().heap_size_limit >> 20'",
        policy=policy,
    )
    assert result.returncode == 0, result.stderr
    found = _fetched(result.stdout)
    assert found[f"https://example.test:{https}/node"]["data"] == (
        f"hello example.test:{https} /node"
    ), found
    assert found[f"http://example.test:{plain}/plain"]["data"] == (
        f"hello example.test:{plain} /plain"
    ), found
    assert int(result.stdout.strip().splitlines()[-1]) < 400, result.stdout
    records = [r for r in _proxy_records(sandbox) if r.get("event") == "egress"]
    tunnel = [r for r in records if r["method"] == "CONNECT"]
    assert tunnel and tunnel[0]["sni"] == "example.test" and tunnel[0]["decision"] == "allow"
    assert [r["url"] for r in records if r["method"] == "GET"] == [
        f"http://example.test:{plain}/plain"
    ]
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


def test_node_fetch_is_refused_a_disallowed_host_per_policy(
    sandbox: Sandbox, servers: tuple[int, int]
) -> None:
    node = _node()
    https, plain = servers
    policy = sandbox.policy("egress", POLICY)
    blocked = (f"https://blocked.test:{https}/", f"http://blocked.test:{plain}/")
    (sandbox.workspace / "blocked.js").write_text(_node_fetch(*blocked))
    (sandbox.workspace / "other.js").write_text(_node_fetch(f"https://other.test:{https}/"))
    result = sandbox.run(
        "sh",
        "-c",
        f"NODE_EXTRA_CA_CERTS=test-ca.txt {node} blocked.js; echo node=$?;"
        f" NODE_EXTRA_CA_CERTS=test-ca.txt {node} other.js; echo never",
        policy=policy,
    )
    # blocked.test is refused and the agent carries on; other.test meets
    # strict's no-network rule, which kills.
    assert result.returncode == 137, result.stderr
    assert "node=0" in result.stdout and "never" not in result.stdout
    found = _fetched(result.stdout)
    assert not found[blocked[0]]["ok"] and "403" in str(found[blocked[0]]["data"]), found
    # Plain HTTP gets the proxy's own 403 answer, which names the rule.
    assert not found[blocked[1]]["ok"] and "blocked-host" in str(found[blocked[1]]["data"])
    assert "no-network" in result.stderr and "other.test" in result.stderr
    refused = [
        r
        for r in _proxy_records(sandbox)
        if r.get("event") == "egress" and r["rule"] == "blocked-host"
    ]
    assert {r["method"] for r in refused} == {"CONNECT", "GET"}, refused
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


STOP_HOST = """
  - id: stop-host
    actions: [network_connect]
    target: "stopped.test:*"
    decision: deny
    on_violation: sigstop
    priority: 1
"""


def _namespace_processes(agent_pid: int) -> dict[int, str]:
    """Host pid -> state of every process in the agent's PID namespace but its broker (pid 1)."""
    namespace = os.readlink(f"/proc/{agent_pid}/ns/pid")
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        if nspid.split()[-1] != "1":
            found[int(entry)] = process_state(int(entry))
    return found


def test_node_fetch_of_a_sigstop_host_stops_the_agent_until_a_person_resumes(
    sandbox: Sandbox, servers: tuple[int, int]
) -> None:
    node = _node()
    https, _plain = servers
    secret = _totp_secret(sandbox)
    policy = sandbox.policy("egress", POLICY + STOP_HOST)
    stopped, allowed = f"https://stopped.test:{https}/", f"https://example.test:{https}/after"
    (sandbox.workspace / "fetch.js").write_text(_node_fetch(stopped, allowed))
    fetch = f"NODE_EXTRA_CA_CERTS=test-ca.txt exec {node} fetch.js"
    with _held(sandbox, "sh", "-c", fetch, policy=policy) as (proc, pending):
        assert pending[0]["target"] == f"stopped.test:{https}", pending
        (agent,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
        states = _namespace_processes(int(agent["pid"]))
        assert states and set(states.values()) == {"T"}, states
        answer = sandbox.agentsup("resume", "egress", "--code", pyotp.TOTP(secret).now())
        assert answer.returncode == 0, answer.stderr
        out, err = proc.communicate(timeout=30)
    # Resumed, the refused fetch stays refused and the agent goes on.
    assert proc.returncode == 0, err
    found = _fetched(out)
    assert not found[stopped]["ok"] and "403" in str(found[stopped]["data"]), found
    assert found[allowed]["data"] == f"hello example.test:{https} /after", found
    refused = [r for r in _proxy_records(sandbox) if r.get("rule") == "stop-host"]
    assert refused and all(r["response"] == "stop" for r in refused), refused
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


# -- a refused host, for every client and every way the policy may answer --------------

REFUSED = """
  - id: refused-host
    actions: [network_connect]
    target: "refused.test:*"
    decision: deny
    on_violation: {mode}
    priority: 1
  - id: refused-hook-requests  # hooked Python clients: let the proxy's host rule decide
    actions: [network_request]
    pattern: '^GET https?://refused\\.test:\\d+/'
    decision: allow
    priority: 1
"""

# One shell line per client, each aimed at refused.test: {https} and {plain}
# are the test servers' ports.  Nothing tells a client where the proxy is.
REFUSED_CLIENTS = {
    "curl": "curl -q -sS --cacert test-ca.txt https://refused.test:{https}/",
    "git": "GIT_SSL_CAINFO=test-ca.txt git clone -q https://refused.test:{https}/repo.git c",
    "pip": "{python} -m pip install -q --no-cache-dir --disable-pip-version-check --retries 0"
    " --target site --index-url http://refused.test:{plain}/simple/"
    " --trusted-host refused.test agentsup-tiny",
    "urllib": "python3 " + CLIENT + " test-ca.txt urllib=https://refused.test:{https}/",
    "requests": "python3 " + CLIENT + " test-ca.txt requests=https://refused.test:{https}/",
    "httpx": "python3 " + CLIENT + " test-ca.txt httpx=https://refused.test:{https}/",
    "node": "NODE_EXTRA_CA_CERTS=test-ca.txt {node} fetch.js",
}


@pytest.mark.parametrize("mode", ["block", "sigkill", "sigstop"])
@pytest.mark.parametrize("client", list(REFUSED_CLIENTS))
def test_a_refused_host_is_refused_as_the_policy_says_for_each_client(
    sandbox: Sandbox, servers: tuple[int, int], client: str, mode: str
) -> None:
    https, plain = servers
    node = _node() if client == "node" else ""
    (sandbox.workspace / "fetch.js").write_text(_node_fetch(f"https://refused.test:{https}/"))
    policy = sandbox.policy("egress", POLICY + TOOLS + REFUSED.format(mode=mode))
    line = REFUSED_CLIENTS[client].format(
        https=https, plain=plain, python=sys.executable, node=node
    )
    # The agent says when it goes on after the refusal, and with what exit status.
    program = ("sh", "-c", f"{line}; echo after=$?")
    if mode == "sigstop":
        secret = _totp_secret(sandbox)
        with _held(sandbox, *program, policy=policy) as (proc, pending):
            assert pending[0]["target"] == f"refused.test:{https if client != 'pip' else plain}"
            (agent,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
            states = _namespace_processes(int(agent["pid"]))
            assert states and set(states.values()) == {"T"}, states
            answer = sandbox.agentsup("resume", "egress", "--code", pyotp.TOTP(secret).now())
            assert answer.returncode == 0, answer.stderr
            out, err = proc.communicate(timeout=60)
        returncode = proc.returncode
    else:
        result = sandbox.run(*program, policy=policy, timeout=90)
        returncode, out, err = result.returncode, result.stdout, result.stderr
    if mode == "sigkill":
        assert returncode == 137, (out, err)
        assert "after=" not in out
    else:
        # Refused, and (after a person's resume) the agent carries on.
        assert returncode == 0, (out, err)
        assert "after=" in out, (out, err)
        if client in ("urllib", "requests", "httpx"):
            assert not _results(out)[client]["ok"], out
        elif client == "node":
            assert "403" in str(next(iter(_fetched(out).values()))["data"]), out
        else:
            assert "after=0" not in out, out
    assert not (sandbox.workspace / "site").exists()  # pip installed nothing
    refused = [r for r in _proxy_records(sandbox) if r.get("rule") == "refused-host"]
    response = {"block": "block", "sigkill": "kill", "sigstop": "stop"}[mode]
    assert refused and all(r["decision"] == "deny" for r in refused), refused
    assert all(r["response"] == response and r["layer"] == "proxy" for r in refused), refused
    # Nothing reached the server, and no record lets refused.test through.
    assert not [host for host in _Hello.seen if host.startswith("refused.test")], _Hello.seen
    assert not [
        r
        for r in sandbox.audit_records()
        if "refused.test" in str(r.get("target"))
        and r.get("decision") == "allow"
        and r.get("layer") == "proxy"
    ]
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))


BAD_PROXY_REQUESTS = r"""
import os, socket, sys, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["http_proxy"])
def hello():
    # A ClientHello without SNI, as for an IP literal.
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00" + b"\x00\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake
def ask(head, then=b""):
    s = socket.create_connection((proxy.hostname, proxy.port), timeout=10)
    s.sendall(head + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        answer += chunk
        if then and answer.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in answer:
            s.sendall(then)
            then = b""
    status, _, rest = answer.partition(b"\r\n")
    return status.decode() + " | " + rest.partition(b"\r\n\r\n")[2].decode().strip()
for head in sys.argv[1:]:
    print(head, "=>", ask(head.encode(), hello()), flush=True)
"""


def test_bad_ports_and_zone_ids_at_the_proxy_cost_only_that_request(
    sandbox: Sandbox, servers: tuple[int, int]
) -> None:
    """A red team crashed `agentsup run` under `--policy permissive` (and under the
    daemon, every agent) with one request to the proxy: `CONNECT 1.1.1.1:99999`
    and a ClientHello without SNI (OverflowError in connect_ex), or
    `GET http://[2606:4700::1111%25bogus]/` (the zone id reached connect_ex:
    gaierror).  Exit 125, the agent killed.

    Now both are refused with a 400 and recorded, the agent's next request
    goes through, and it exits 0.
    """
    _https, plain = servers
    (sandbox.workspace / "bad.py").write_text(BAD_PROXY_REQUESTS)
    result = sandbox.run(
        "python3",
        "bad.py",
        "CONNECT 1.1.1.1:99999",
        "CONNECT 1.1.1.1:0",
        "GET http://[2606:4700::1111%25bogus]/",
        "CONNECT [fe80::1%25eth0]:443",
        f"GET http://example.test:{plain}/later",
        policy="permissive",
    )
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5, result.stdout
    for line in lines[:4]:
        assert "=> HTTP/1.1 400" in line, line
    assert f"hello example.test:{plain} /later" in lines[4], lines[4]
    refusals = [r for r in _proxy_records(sandbox) if r["decision"] == "deny"]
    assert [str(r["reason"]) for r in refusals] == [
        "CONNECT needs host:port, the port 1 to 65535",
        "CONNECT needs host:port, the port 1 to 65535",
        "an IPv6 zone (%) names an interface of the host",
        "an IPv6 zone (%) names an interface of the host",
    ]
    assert refusals[0]["target"] == "CONNECT 1.1.1.1:99999"
    exits = [r for r in sandbox.audit_records() if r.get("event") == "exit"]
    assert len(exits) == 1 and exits[0]["exit_code"] == 0
    assert sandbox.agentsup("audit", "verify", str(sandbox.audit_log)).returncode == 0
