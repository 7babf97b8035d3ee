"""One network action, one target: other spellings of it meet the same rules.

A red team got past refusing rules by spelling a target differently:
- an IPv4 address as IPv4-mapped IPv6 (`::ffff:169.254.169.254`, over an
  AF_INET6 socket), which the kernel connects over IPv4 all the same;
- a plain-HTTP URL with another case, a trailing dot, the default port,
  `//`, `/x/../`, or `%61` for `a`.

The pure part (`hooks._mapping`: `ip_text`, `url_parts`, `normal_url`), and
end to end: a real agent under `agentsup run` connecting to a mapped address
(the seccomp mediator), and sending such URLs through the egress proxy, raw
and with urllib (the audit hook).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import random
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Sandbox

from agentsup.events import ActionType, Event
from agentsup.hooks import _mapping as mapping
from agentsup.policy import RunContext, compile_policy
from agentsup.policy.loader import load_policy_text
from agentsup.supervision.mediator import describe_sockaddr

ADMIN = "http://intranet.corp/admin/x"


@pytest.mark.parametrize(
    "url",
    [
        "http://intranet.corp/admin/x",
        "http://INTRANET.corp/admin/x",
        "HTTP://Intranet.Corp/admin/x",
        "http://intranet.corp:80/admin/x",
        "http://intranet.corp:080/admin/x",
        "http://intranet.corp:/admin/x",
        "http://intranet.corp./admin/x",
        "http://intranet.corp//admin/x",
        "http://intranet.corp/admin//x",
        "http://intranet.corp/x/../admin/x",
        "http://intranet.corp/x/y/../../admin/./x",
        "http://intranet.corp/../admin/x",
        "http://intranet.corp/x//../admin/x",
        "http://intranet.corp/%61dmin/x",
        "http://intranet.corp/%61%64%6D%69%6e/x",
        "http://intranet.corp/x/%2e%2E/admin/x",
        "http://intranet.corp/x/.%2e/admin/x",
        "http://user:secret@intranet.corp/admin/x",
        "http://intranet.corp/admin/x#fragment",
    ],
)
def test_spellings_of_one_url_have_one_form(url: str) -> None:
    assert mapping.normal_url(url) == ADMIN
    assert mapping.request_target("GET", url) == f"GET {ADMIN}"


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        # The query is kept as it is, escapes and dots too.
        ("http://h/a?q=%61&r=../x", "http://h/a?q=%61&r=../x"),
        # Reserved characters stay escaped, with upper-case hex.
        ("http://h/a%2fb%3a%7e", "http://h/a%2Fb%3A~"),
        # A "%" that starts no escape is a literal "%": never a new escape.
        ("http://h/100%", "http://h/100%25"),
        ("http://h/%zz", "http://h/%25zz"),
        ("http://h/%%61dmin", "http://h/%25admin"),
        ("http://h/%25", "http://h/%25"),
        # Anything but visible ASCII is escaped as UTF-8.
        ("http://h/caf\u00e9 x", "http://h/caf%C3%A9%20x"),
        ("http://h", "http://h/"),
        ("http://h?q", "http://h/?q"),
        ("http://h/a/", "http://h/a/"),
        ("http://h/a/b/..", "http://h/a/"),
        ("http://h/a/.", "http://h/a/"),
        ("http://h/a//", "http://h/a/"),
        ("http://h/..", "http://h/"),
        ("http://h/a/...", "http://h/a/..."),
        ("https://h:443/a", "https://h/a"),
        ("https://h:80/a", "https://h:80/a"),
        ("http://h:443/a", "http://h:443/a"),
        ("http://h:8080/a", "http://h:8080/a"),
        # IP literals: IPv4-mapped IPv6 is the IPv4 address; IPv6 in one spelling.
        ("http://[::ffff:169.254.169.254]/", "http://169.254.169.254/"),
        ("http://[::FFFF:a9fe:a9fe]:80/", "http://169.254.169.254/"),
        ("http://[0:0:0:0:0:ffff:a00:1]:22/", "http://10.0.0.1:22/"),
        ("http://[0:0:0:0:0:0:0:1]:8080/", "http://[::1]:8080/"),
        ("http://[2001:DB8::0001]/", "http://[2001:db8::1]/"),
        # IPv4-compatible (deprecated) is IPv6 to Linux: not folded.
        ("http://[::169.254.169.254]/", "http://[::a9fe:a9fe]/"),
        ("ftp://files.test/a/../b", "ftp://files.test/b"),
    ],
)
def test_normal_url(url: str, normal: str) -> None:
    assert mapping.normal_url(url) == normal
    assert mapping.normal_url(normal) == normal  # a fixed point


@pytest.mark.parametrize(
    "url",
    ["http:///admin", "http://./admin", "http://h:0/", "http://h:+80/", "http://h:99999/",
     "http://h:8o/", "http://h:80:80/", "/admin", "http://[::1/"],
)  # fmt: skip
def test_urls_without_a_host_or_port_are_not_read(url: str) -> None:
    with pytest.raises(ValueError):
        mapping.normal_url(url)
    # The hook judges such a URL as written; no client sends it.
    assert mapping.request_target("GET", url) == f"GET {url}"


def test_url_parts_give_the_port_that_is_used() -> None:
    assert mapping.url_parts("http://H.test./a") == ("http", "h.test", 80, "/a")
    assert mapping.url_parts("https://h.test/a?b") == ("https", "h.test", 443, "/a?b")
    assert mapping.url_parts("http://[::ffff:127.0.0.1]:81") == ("http", "127.0.0.1", 81, "/")
    assert mapping.url_parts("ftp://h.test/") == ("ftp", "h.test", None, "/")
    assert mapping.url_authority("http", "::1", 80) == "[::1]"
    assert mapping.url_authority("https", "h", 80) == "h:80"


# -- addresses ------------------------------------------------------------------------


def _v6(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, text)


def test_ip_text_is_ipaddress_for_ipv6_and_folds_ipv4_mapped() -> None:
    rng = random.Random(7)
    samples = [bytes(16), _v6("::1"), _v6("1::"), _v6("1:0:1:1:1:1:1:1"), _v6("1:0:0:1:0:0:1:1")]
    for _ in range(2000):
        # Mostly zero groups, so that runs of every length and position come up.
        groups = [rng.choice((0, 0, 0, 1, 0xFFFF, rng.randrange(0x10000))) for _ in range(8)]
        samples.append(struct.pack(">8H", *groups))
    for packed in samples:
        if packed[:12] == b"\0" * 10 + b"\xff\xff":
            assert mapping.ip_text(packed) == str(ipaddress.IPv6Address(packed).ipv4_mapped)
        else:
            assert mapping.ip_text(packed) == str(ipaddress.IPv6Address(packed))
    assert mapping.ip_text(bytes([10, 0, 0, 1])) == "10.0.0.1"
    assert mapping.ip_text(_v6("::ffff:169.254.169.254")) == "169.254.169.254"
    assert mapping.ip_text(_v6("::ffff:0.0.0.0")) == "0.0.0.0"
    assert mapping.ip_text(_v6("::169.254.169.254")) == "::a9fe:a9fe"  # compatible: IPv6
    assert mapping.ip_text(_v6("::ffff:0:a9fe:a9fe")) == "::ffff:0:a9fe:a9fe"  # translated
    with pytest.raises(ValueError):
        mapping.ip_text(b"\0" * 5)


@pytest.mark.parametrize(
    ("host", "literal"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::FFFF:a00:1", "10.0.0.1"),
        ("0:0::1", "::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("example.test", None),
        ("127.1", "127.0.0.1"),  # inet_aton's shorthand: getaddrinfo reads it as an address
        ("127.0.0.08", None),  # 08 is no octal number: a name, the resolver's to read
        ("10.0.0.1%eth0", None),
        ("", None),
    ],
)
def test_ip_literal(host: str, literal: str | None) -> None:
    assert mapping.ip_literal(host) == literal


def _sockaddr_in6(text: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET6) + struct.pack(">HI", port, 0) + _v6(text) + bytes(4)


def _sockaddr_in(text: str, port: int) -> bytes:
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(text)


@pytest.mark.parametrize(
    ("data", "target"),
    [
        (_sockaddr_in6("::ffff:169.254.169.254", 80), "169.254.169.254:80"),
        (_sockaddr_in6("::ffff:a00:1", 22), "10.0.0.1:22"),
        (_sockaddr_in("169.254.169.254", 80), "169.254.169.254:80"),
        (_sockaddr_in6("::1", 443), "[::1]:443"),
        (_sockaddr_in6("2001:db8::1", 443), "[2001:db8::1]:443"),
        (_sockaddr_in6("::169.254.169.254", 80), "[::a9fe:a9fe]:80"),
        (_sockaddr_in6("::", 0), "[::]:0"),
    ],
)
def test_the_mediator_and_the_hook_spell_an_address_alike(data: bytes, target: str) -> None:
    assert describe_sockaddr(data, lambda _raw: "") == target
    port = struct.unpack_from(">H", data, 2)[0]
    if len(data) >= 24:
        host = socket.inet_ntop(socket.AF_INET6, data[8:24])
        assert mapping.socket_address((host, port, 0, 0)) == target
        assert mapping.socket_address((host.upper(), port, 0, 0)) == target
    else:
        assert mapping.socket_address((socket.inet_ntoa(data[4:8]), port)) == target


RED_TEAM_POLICY = r"""
name: red-team
default: allow
rules:
  - id: no-metadata
    actions: [network_connect]
    target: "169.254.169.254:*"
    decision: deny
  - id: no-ssh-inside
    actions: [network_connect]
    pattern: '^10\.\d+\.\d+\.\d+:22$'
    decision: deny
"""


@pytest.mark.parametrize(
    ("address", "port", "rule"),
    [("::ffff:169.254.169.254", 80, "no-metadata"), ("::ffff:a00:1", 22, "no-ssh-inside")],
)
def test_the_red_teams_mapped_addresses_meet_their_rules(
    address: str, port: int, rule: str
) -> None:
    context = RunContext(workspace="/w", home="/home/u", agent_id="a", python_prefixes=())
    policy = compile_policy(load_policy_text(RED_TEAM_POLICY, "t.yaml", Path("/")), context)
    target = describe_sockaddr(_sockaddr_in6(address, port), lambda _raw: "")
    assert policy.evaluate(Event(ActionType.NETWORK_CONNECT, target)).rule_id == rule


# -- end to end: a mapped address through the seccomp mediator ----------------------

MAPPED_AGENT = """
import errno, json, socket, sys

def name(exc):
    return errno.errorcode.get(exc.errno or 0, str(exc))

for port in sys.argv[1:-1]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(("::ffff:127.0.0.1", int(port)))
        result = "ok:" + s.recv(64).decode()
    except OSError as exc:
        result = name(exc)
    s.close()
    print(json.dumps({"op": "connect", "port": port, "result": result}))
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("::ffff:127.0.0.1", int(sys.argv[-1])))
    result = "ok"
except OSError as exc:
    result = name(exc)
print(json.dumps({"op": "sendto", "port": sys.argv[-1], "result": result}))
"""

MAPPED_POLICY = """
name: mapped
extends: [strict]
rules:
  - id: no-denied-port
    actions: [network_connect]
    pattern: '^127\\.0\\.0\\.1:({denied}|{udp})$'
    decision: deny
    priority: 1
    on_violation: block
  - id: loopback
    actions: [network_connect]
    target: "127.0.0.1:*"
    decision: allow
    priority: 2
  # IPv6 addresses go: so only a rule about 127.0.0.1 can stop the mapped one.
  - id: ipv6-literals
    actions: [network_connect]
    pattern: '^\\['
    decision: allow
    priority: 3
"""


def _ipv6_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM):
            return True
    except OSError:
        return False


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.skipif(not _ipv6_works(), reason="no IPv6 sockets on this host")
def test_a_connect_to_an_ipv4_mapped_address_meets_the_ipv4_rule(sandbox: Sandbox) -> None:
    listeners = []
    accepted: dict[int, int] = {}
    for _ in range(2):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        listeners.append(listener)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    allowed, denied = (listener.getsockname()[1] for listener in listeners)
    udp = receiver.getsockname()[1]
    stop = threading.Event()

    def serve(listener: socket.socket) -> None:
        port = listener.getsockname()[1]
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted[port] = accepted.get(port, 0) + 1
            conn.sendall(b"hello")
            conn.close()

    threads = [threading.Thread(target=serve, args=(li,), daemon=True) for li in listeners]
    for thread in threads:
        thread.start()
    (sandbox.workspace / "mapped.py").write_text(MAPPED_AGENT)
    policy = sandbox.policy(
        "mapped",
        MAPPED_POLICY.replace("{denied}", str(denied)).replace("{udp}", str(udp)),
    )
    try:
        result = sandbox.run(
            str(sandbox.workspace / "mapped.py"),
            str(allowed),
            str(denied),
            str(udp),
            policy=policy,
            timeout=60,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for listener in listeners:
            listener.close()
    receiver.setblocking(False)
    with pytest.raises(BlockingIOError):
        receiver.recv(16)  # the datagram never came
    receiver.close()
    assert result.returncode == 0, result.stderr
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["result"] for r in reports] == ["ok:hello", "EPERM", "EPERM"], reports
    assert accepted == {allowed: 1}  # the refused connect never reached its listener
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "no-denied-port"]
    assert {(r["action_type"], r["target"], r["decision"]) for r in refused} == {
        ("network_connect", f"127.0.0.1:{denied}", "deny"),
        ("network_connect", f"127.0.0.1:{udp}", "deny"),
    }


# -- end to end: URLs through the egress proxy, raw and through the hook -----------


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []  # (path as sent, Host) of every request served

    def do_GET(self) -> None:
        self.seen.append((self.path, str(self.headers.get("Host"))))
        body = f"served {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def intranet(sandbox: Sandbox) -> Iterator[str]:
    """An HTTP server on 127.0.0.2 (port 80 when free) that the proxy knows as
    intranet.test; yields the URL's port part, "" for 80 or ":PORT"."""
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.2", 80), _Recorder)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    sandbox.env["AGENTSUP_EGRESS_HOSTS"] = "intranet.test=127.0.0.2"
    port = server.server_address[1]
    try:
        yield "" if port == 80 else f":{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


INTRANET_POLICY = """
name: intranet
extends: [strict]
on_violation: block
rules:
  - id: intranet-admin
    actions: [network_request]
    target: "* http://intranet.test{port}/admin/**"
    decision: deny
    priority: 1
    on_violation: block
  - id: intranet-host
    actions: [network_connect]
    target: "intranet.test:*"
    decision: allow
    priority: 1
  - id: other-requests
    actions: [network_request]
    target: "**"
    decision: allow
    priority: 2
"""

RAW_AGENT = """
import json, os, socket, sys
from urllib.parse import urlsplit

proxy = urlsplit(os.environ["http_proxy"])
for url in sys.argv[1:]:
    with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as s:
        s.sendall(f"GET {url} HTTP/1.1\\r\\nHost: decoy.test\\r\\n\\r\\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    print(json.dumps({"url": url, "status": status}))
"""

URLLIB_AGENT = """
import json, sys, urllib.error, urllib.request

for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            result = answer.status
    except PermissionError:
        result = "PermissionError"
    except urllib.error.HTTPError as exc:
        result = exc.code
    print(json.dumps({"url": url, "result": result}))
"""


def _admin_spellings(port: str) -> list[str]:
    spellings = [
        f"http://intranet.test{port}/admin/secret",
        f"http://INTRANET.test{port}/admin/secret",
        f"HTTP://intranet.test{port}/admin/secret",
        f"http://intranet.test.{port}/admin/secret",
        f"http://intranet.test{port}//admin/secret",
        f"http://intranet.test{port}/x/../admin/secret",
        f"http://intranet.test{port}/x/%2e%2e/admin/secret",
        f"http://intranet.test{port}/%61dmin/secret",
    ]
    if not port:
        spellings.append("http://intranet.test:80/admin/secret")
    return spellings


def _reports(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
def test_the_proxy_judges_and_forwards_one_form_of_a_url(sandbox: Sandbox, intranet: str) -> None:
    port = intranet
    spellings = _admin_spellings(port)
    ambiguous = [
        f"http://intranet.test{port}/x/..%2Fadmin/secret",
        f"http://intranet.test{port}/x/..%5cadmin/secret",
        f"http://intranet.test{port}/x/..;/admin/secret",
    ]
    allowed = f"http://intranet.test.{port}/x/..//pub%6cic?q=%61&r=/../"
    (sandbox.workspace / "raw.py").write_text(RAW_AGENT)
    policy = sandbox.policy("intranet", INTRANET_POLICY.replace("{port}", port))
    result = sandbox.run(
        str(sandbox.workspace / "raw.py"),
        *spellings,
        *ambiguous,
        allowed,
        policy=policy,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    statuses = {str(r["url"]): r["status"] for r in _reports(result.stdout)}
    assert statuses == {
        **dict.fromkeys(spellings, 403),
        **dict.fromkeys(ambiguous, 400),
        allowed: 200,
    }
    # Forwarded as judged: the one path, and the judged host in Host (not the decoy).
    assert _Recorder.seen == [("/public?q=%61&r=/../", f"intranet.test{port}")]
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "intranet-admin"]
    # Per request: the judge's decision, and the proxy's record of the request.
    assert len(refused) == 2 * len(spellings)
    for record in refused:
        assert record["layer"] == "proxy"
        assert record["target"] == f"GET http://intranet.test{port}/admin/secret"
        if record.get("event") == "egress":
            assert record["url"] == f"http://intranet.test{port}/admin/secret"


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
def test_the_hook_judges_urllib_requests_in_one_form(sandbox: Sandbox, intranet: str) -> None:
    port = intranet
    spellings = _admin_spellings(port)[1:]  # urllib sends each as it is written
    (sandbox.workspace / "fetch.py").write_text(URLLIB_AGENT)
    policy = sandbox.policy("intranet", INTRANET_POLICY.replace("{port}", port))
    result = sandbox.run(str(sandbox.workspace / "fetch.py"), *spellings, policy=policy, timeout=90)
    assert result.returncode == 0, result.stderr
    results = {str(r["url"]): r["result"] for r in _reports(result.stdout)}
    assert results == dict.fromkeys(spellings, "PermissionError")
    assert _Recorder.seen == []
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "intranet-admin"]
    assert len(refused) == len(spellings)
    for record in refused:
        assert record["layer"] == "hook"  # refused in the agent, before the proxy
        assert record["target"] == f"GET http://intranet.test{port}/admin/secret"
