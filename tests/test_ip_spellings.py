"""Other spellings of an IPv4 address, and of an HTTP method, meet the same rules.

A rule refusing `http://169.254.169.254/**` or `127.0.0.1:*` must refuse every
spelling that reaches that address.  getaddrinfo (so Python's sockets,
urllib, http.client, and curl) reads a host that is all numbers as inet_aton
does: `127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`, `0x7f000001` and
`169.254.43518` are addresses, not names.  Python's sockets also IDNA-encode
a host that is not ASCII first, so 127.0.0.1 in fullwidth digits is 127.0.0.1
too.  And a method in lower case (`delete`) is DELETE to some servers, so it
is judged as DELETE; a method that is not a token is no method, and is refused.

The pure part (`hooks._mapping`: `ipv4_aton`, `ip_literal`, `host_text`,
`http_method`, `request_target`, `http_request_line`), checked against the
C library's own reading, and end to end: a real agent under `agentsup run`
sending such requests to a server on the host's loopback, raw through the
egress proxy and with urllib/http.client (the audit hook).
"""

from __future__ import annotations

import json
import random
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Sandbox

from agentsup.events import ActionType, Event
from agentsup.hooks import _mapping as mapping
from agentsup.policy import RunContext, compile_policy
from agentsup.policy.loader import load_policy_text

# -- the pure part -----------------------------------------------------------------


def _numeric_host(host: str | bytes) -> str | None:
    """What the C library's getaddrinfo makes of `host` as an IPv4 address (no lookup)."""
    try:
        infos = socket.getaddrinfo(
            host, 80, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
        )
    except (socket.gaierror, UnicodeError):
        return None
    return str(infos[0][4][0])


LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f.0.0.1",
    "0X7F.0.0.1",
    "0x7f.1",
    "0177.0.0.1",
    "0177.1",
    "0x7f000001",
    "0x7F000001",
    "017700000001",
    "127.0.0.01",
    "127.0.0.0x1",
    "0000000000000000000177.1",
    "0x000000007f.0x0.0.1",
]
METADATA_SPELLINGS = [
    "169.254.169.254",
    "169.254.43518",
    "169.16689662",
    "2852039166",
    "0xa9fea9fe",
    "0xa9.0xfe.0xa9.0xfe",
    "0251.0376.0251.0376",
    "0251.0xfe.43518",
]
# Not addresses to the C library either: names, for the resolver (if anything).
NOT_ADDRESSES = [
    "",
    ".",
    "127.0.0.1.",  # url_parts drops a URL host's trailing dot; ip_literal does not
    "127.0.0.08",  # 08 is no octal number
    "0x",
    "0x.1",
    "0xg.1",
    "127.0.0.256",
    "0x100.0.0.1",
    "0400.0.0.1",
    "1.2.65536",
    "1.16777216",
    "4294967296",
    "99999999999",
    "1.2.3.4.5",
    "127..1",
    ".127.1",
    "+127.1",
    "127.-1",
    "127.0.0.1 ",
    " 127.0.0.1",
    "127.0.0.1 x",
    "1e2",
    "1_0.0.0.1",
    "localhost",
    "\u0661\u0662\u0667.0.0.1",  # Arabic-Indic digits: not digits to C
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_127_0_0_1(host: str) -> None:
    assert _numeric_host(host.encode()) == "127.0.0.1"  # the C library agrees
    assert mapping.ipv4_aton(host) == bytes([127, 0, 0, 1])
    assert mapping.ip_literal(host) == "127.0.0.1"
    assert mapping.host_text(host) == "127.0.0.1"
    assert mapping.normal_url(f"http://{host}:8080/admin") == "http://127.0.0.1:8080/admin"
    assert mapping.socket_address((host, 22)) == "127.0.0.1:22"


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_every_spelling_of_the_metadata_address_is_169_254_169_254(host: str) -> None:
    assert _numeric_host(host.encode()) == "169.254.169.254"
    assert mapping.ip_literal(host) == "169.254.169.254"
    url = f"http://{host}/latest/meta-data/"
    assert mapping.request_target("GET", url) == "GET http://169.254.169.254/latest/meta-data/"
    # A trailing dot goes (as for names), and https gets its own default port.
    assert mapping.normal_url(f"https://{host}.:443/x") == "https://169.254.169.254/x"


def test_the_unspecified_address_is_judged_as_the_local_host_it_reaches() -> None:
    from agentsup.supervision.mediator import describe_sockaddr

    assert mapping.reached_address("0.0.0.0") == "127.0.0.1"
    assert mapping.reached_address("::") == "::1"
    assert mapping.reached_address("10.0.0.1") == "10.0.0.1"
    assert mapping.normal_url("http://0.0.0.0:8080/admin") == "http://127.0.0.1:8080/admin"
    assert mapping.normal_url("http://[::]:8080/") == "http://[::1]:8080/"
    anywhere = bytes([2, 0, 0x1F, 0x90, 0, 0, 0, 0]) + bytes(8)  # AF_INET 0.0.0.0:8080
    assert describe_sockaddr(anywhere, str, reaching=True) == "127.0.0.1:8080"
    assert describe_sockaddr(anywhere, str) == "0.0.0.0:8080"  # a bind: every address


@pytest.mark.parametrize("host", NOT_ADDRESSES)
def test_what_the_c_library_reads_as_no_address_is_not_folded(host: str) -> None:
    assert _numeric_host(host.encode()) is None
    assert mapping.ipv4_aton(host) is None
    assert mapping.ip_literal(host) is None


def test_the_reading_is_the_c_librarys_on_random_spellings() -> None:
    chance = random.Random(43)
    alphabet = "0123456789" * 3 + "abcdefABCDEF" + "xX" * 3 + "." * 8 + "89 +-"
    agreed = 0
    for _ in range(20000):
        host = "".join(chance.choice(alphabet) for _ in range(chance.randint(1, 16)))
        packed = mapping.ipv4_aton(host)
        expected = _numeric_host(host.encode())
        assert (socket.inet_ntoa(packed) if packed else None) == expected, host
        agreed += expected is not None
    assert agreed > 500  # enough of them were addresses


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("\uff11\uff12\uff17.0.0.1", "127.0.0.1"),  # fullwidth digits
        ("127\u30021", "127.0.0.1"),  # ideographic full stop
        ("\uff12\uff11\uff13\uff10\uff17\uff10\uff16\uff14\uff13\uff13", "127.0.0.1"),
        ("169\uff0e254\uff0e169\uff0e254", "169.254.169.254"),  # fullwidth full stop
    ],
)
def test_a_host_that_is_not_ascii_is_read_as_sockets_read_it(host: str, address: str) -> None:
    # Python's getaddrinfo IDNA-encodes a str host before the C library sees it.
    assert _numeric_host(host) == address
    assert mapping.host_text(host) == address
    assert mapping.normal_url(f"http://{host}:8080/a") == f"http://{address}:8080/a"


def test_names_keep_their_one_spelling() -> None:
    assert mapping.host_text("Example.TEST.") == "example.test"
    assert mapping.host_text("b\u00fccher.test") == "xn--bcher-kva.test"  # what goes to DNS
    assert mapping.host_text("127.0.0.08") == "127.0.0.08"  # a name, not an address
    assert mapping.host_text("::FFFF:127.0.0.1") == "127.0.0.1"
    assert mapping.host_text("::ffff:127.1") == "::ffff:127.1"  # inet_pton refuses it
    bad_idna = "x" * 70 + "\u00fc"  # a label too long for IDNA: no socket connects to it
    assert mapping.host_text(bad_idna) == bad_idna


@pytest.mark.parametrize(
    ("method", "judged"),
    [("GET", "GET"), ("delete", "DELETE"), ("Delete", "DELETE"), ("dElEtE", "DELETE"),
     ("m-search", "M-SEARCH"), ("PROPFIND", "PROPFIND"), ("x!#$%&'*+.^_`|~1", "X!#$%&'*+.^_`|~1")],
)  # fmt: skip
def test_a_method_is_judged_in_upper_case(method: str, judged: str) -> None:
    assert mapping.http_method(method) == judged
    url = "http://0x7f.1:8080/x"
    assert mapping.request_target(method, url) == f"{judged} http://127.0.0.1:8080/x"


@pytest.mark.parametrize(
    "method",
    ["", " ", "GET /admin", "DEL ETE", "GET\t", "GET\r\n", "(GET)", "GET/1", "GET:",
     "DELETE\x7f", "\u0394ELETE", "DELET\u0130", "GET,POST", 'GET"', "GET@"],
)  # fmt: skip
def test_a_method_that_is_no_token_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match="not an HTTP method"):
        mapping.http_method(method)
    with pytest.raises(ValueError, match="not an HTTP method"):
        mapping.request_target(method, "http://h.test/")


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"delete /x HTTP/1.1\r\nHost: h\r\n\r\n", ("delete", "/x")),
        (b"Delete http://h.test/x HTTP/1.1\r\n", ("Delete", "http://h.test/x")),
        # http.client sends any method without control characters: a space too.
        (b"GET /admin /public HTTP/1.1\r\n", ("GET /admin", "/public")),
        (b"DEL ETE /x HTTP/1.1\r\n", ("DEL ETE", "/x")),
        (b"  DELETE /x HTTP/1.1\r\n", ("DELETE", "/x")),  # http.client's method " DELETE"
        (b" /x HTTP/1.1\r\n", None),  # method "": two words, a request no server takes
        # As leniently as servers read a request line: any whitespace, bare LF,
        # empty lines before it, the version in any case.
        (b"DELETE\t/x HTTP/1.1\r\n", ("DELETE", "/x")),
        (b"DELETE  /x  HTTP/1.1\n", ("DELETE", "/x")),
        (b"\r\n\r\nDELETE /x HTTP/1.1\r\n", ("DELETE", "/x")),
        (b"DELETE /x http/1.1\r\n", ("DELETE", "/x")),
        (b"DELETE /x\r\n", None),
        (b"\r\n", None),
        (b"body text that is not a request\r\n", None),
    ],
)
def test_request_lines_in_any_spelling_are_found(data: bytes, line: tuple[str, str] | None) -> None:
    assert mapping.http_request_line(data) == line


def test_a_long_request_line_is_still_found() -> None:
    data = b"delete /" + b"a" * 60000 + b" HTTP/1.1\r\n\r\n"
    found = mapping.http_request_line(data)
    assert found is not None and found[0] == "delete"


SPELLINGS_POLICY = r"""
name: spellings
default: allow
rules:
  - id: no-metadata
    actions: [network_request]
    target: "* http://169.254.169.254/**"
    decision: deny
  - id: no-loopback
    actions: [network_connect]
    target: "127.0.0.1:*"
    decision: deny
  - id: no-deletes
    actions: [network_request]
    pattern: '^DELETE '
    decision: deny
"""


def _rule(action: ActionType, target: str) -> str | None:
    context = RunContext(workspace="/w", home="/home/u", agent_id="a", python_prefixes=())
    policy = compile_policy(load_policy_text(SPELLINGS_POLICY, "t.yaml", Path("/")), context)
    return policy.evaluate(Event(action, target)).rule_id


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_a_rule_about_the_metadata_url_meets_every_spelling(host: str) -> None:
    target = mapping.request_target("get", f"HTTP://{host}./latest/meta-data/iam")
    assert _rule(ActionType.NETWORK_REQUEST, target) == "no-metadata"


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_a_rule_about_the_loopback_address_meets_every_spelling(host: str) -> None:
    # The proxy's network_connect target: the URL's host and port, or CONNECT's.
    _scheme, folded, port, _path = mapping.url_parts(f"http://{host}:8080/")
    assert _rule(ActionType.NETWORK_CONNECT, f"{folded}:{port}") == "no-loopback"
    assert _rule(ActionType.NETWORK_CONNECT, f"{mapping.host_text(host)}:443") == "no-loopback"


@pytest.mark.parametrize("method", ["DELETE", "delete", "Delete"])
def test_a_rule_about_a_method_meets_every_case(method: str) -> None:
    target = mapping.request_target(method, "http://api.test/items/1")
    assert _rule(ActionType.NETWORK_REQUEST, target) == "no-deletes"


# -- end to end: a server on the host's loopback, and a real agent ------------------


class _Recorder(socketserver.BaseRequestHandler):
    """Records the request line of every request, whatever its method, and answers 200.

    A connection that sends nothing is no request: http.client connects
    before it sends, and the hook refuses at the send.
    """

    seen: list[str] = []

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = self.request.recv(65536)
            if not chunk:
                break
            data += chunk
        if data:
            self.seen.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nserved"
        )


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def loopback_server(sandbox: Sandbox) -> Iterator[int]:
    """A server on the host's 127.0.0.1 (where the proxy connects from); yields its port."""
    server = _Server(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.seen = []
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# The server's loopback address is named, so the proxy may reach it; requests
# for /secret and DELETEs are refused.  Any host may be asked on the server's
# port: without one spelling, `2130706433:PORT` went through that rule, and the
# request for /secret through `other-requests`, to 127.0.0.1 all the same.
# `network: direct` leaves the agent on the host's network, where the hook is
# the only judge of requests.
LOOPBACK_POLICY = """
name: loopback
extends: [strict]
network: {network}
on_violation: block
rules:
  - id: no-loopback-secret
    actions: [network_request]
    target: "* http://127.0.0.1:{port}/secret/**"
    decision: deny
    priority: 1
  - id: no-deletes
    actions: [network_request]
    pattern: '^DELETE '
    decision: deny
    priority: 1
  - id: loopback-server
    actions: [network_connect]
    target: "127.0.0.1:{port}"
    decision: allow
    priority: 2
  - id: any-host-on-the-port
    actions: [network_connect]
    target: "*:{port}"
    decision: allow
    priority: 3
  - id: other-requests
    actions: [network_request]
    target: "**"
    decision: allow
    priority: 3
"""

RAW_AGENT = """
import json, os, socket, sys
from urllib.parse import urlsplit

proxy = urlsplit(os.environ["http_proxy"])
for line in sys.argv[1:]:
    with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as s:
        s.sendall(f"{line} HTTP/1.1\\r\\nHost: decoy.test\\r\\n\\r\\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    print(json.dumps({"line": line, "status": status}))
"""

PYTHON_AGENT = """
import http.client, json, os, sys, urllib.error, urllib.request
from urllib.parse import urlsplit

proxy = urlsplit(os.environ.get("http_proxy", ""))
for item in sys.argv[1:]:
    how, method, url = item.split(" ", 2)
    method = method.replace("_", " ")
    try:
        if how == "urllib":
            request = urllib.request.Request(url, method=method)
            with urllib.request.urlopen(request, timeout=10) as answer:
                result = answer.status
        else:  # http.client: to the proxy in absolute form, or to the host
            parts = urlsplit(url)
            if proxy.hostname:
                conn = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=10)
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                url = parts.path
            conn.request(method, url)
            result = conn.getresponse().status
            conn.close()
    except PermissionError:
        result = "PermissionError"
    except urllib.error.HTTPError as exc:
        result = exc.code
    except (OSError, ValueError, http.client.HTTPException) as exc:
        result = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"item": item, "result": result}))
"""


def _reports(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _loopback_urls(port: int, path: str) -> list[str]:
    return [
        f"http://{host}:{port}{path}"
        for host in ("127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "0x7f000001", "0X7F.1.")
    ]


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
def test_the_proxy_judges_every_spelling_of_a_loopback_url_as_one(
    sandbox: Sandbox, loopback_server: int
) -> None:
    port = loopback_server
    secret = [f"GET {url}" for url in _loopback_urls(port, "/secret/key")]
    deletes = [f"{m} http://127.0.0.1:{port}/public" for m in ("delete", "Delete", "DELETE")]
    deletes.append(f"delete http://2130706433:{port}/public")
    not_methods = [f"GET /secret/key http://127.0.0.1:{port}/public"]
    allowed = f"get http://0x7f.1:{port}/public"
    (sandbox.workspace / "raw.py").write_text(RAW_AGENT)
    text = LOOPBACK_POLICY.replace("{port}", str(port)).replace("{network}", "proxy")
    policy = sandbox.policy("loopback", text)
    result = sandbox.run(
        str(sandbox.workspace / "raw.py"),
        *secret,
        *deletes,
        *not_methods,
        allowed,
        policy=policy,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    statuses = {str(r["line"]): r["status"] for r in _reports(result.stdout)}
    assert statuses == {
        **dict.fromkeys(secret, 403),
        **dict.fromkeys(deletes, 403),
        **dict.fromkeys(not_methods, 400),
        allowed: 200,
    }
    # Nothing refused reached the server; the one request that went is as judged.
    assert _Recorder.seen == ["GET /public HTTP/1.1"]
    records = sandbox.audit_records()
    refused = [r for r in records if r.get("rule") == "no-loopback-secret"]
    assert len(refused) == 2 * len(secret)  # the judge's decision and the proxy's record
    for record in refused:
        assert record["layer"] == "proxy"
        assert record["target"] == f"GET http://127.0.0.1:{port}/secret/key"
    refused = [r for r in records if r.get("rule") == "no-deletes"]
    assert len(refused) == 2 * len(deletes)
    assert {r["target"] for r in refused} == {f"DELETE http://127.0.0.1:{port}/public"}
    went = [r for r in records if r.get("event") == "egress" and r.get("decision") == "allow"]
    assert [(r["target"], r["addr"]) for r in went] == [
        (f"GET http://127.0.0.1:{port}/public", "127.0.0.1")
    ]


FRAMED_AGENT = """
import json, os, socket, sys
from urllib.parse import urlsplit

proxy = urlsplit(os.environ["http_proxy"])
for name, raw in json.loads(sys.argv[1]).items():
    with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as s:
        s.sendall(raw.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    print(json.dumps({"line": name, "status": status}))
"""


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
def test_the_proxy_judges_a_method_override_and_refuses_an_ambiguous_length(
    sandbox: Sandbox, loopback_server: int
) -> None:
    """A method some frameworks take from a header is judged too, and a body
    framed two ways (what a server reads past is another request) is refused."""
    url = f"http://127.0.0.1:{loopback_server}/public"
    requests = {
        "override": f"GET {url} HTTP/1.1\r\nHost: x\r\nX-HTTP-Method-Override: delete\r\n\r\n",
        "two lengths": (
            f"POST {url} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        "plain": f"GET {url} HTTP/1.1\r\nHost: x\r\nX-HTTP-Method-Override: GET\r\n\r\n",
    }
    (sandbox.workspace / "framed.py").write_text(FRAMED_AGENT)
    text = LOOPBACK_POLICY.replace("{port}", str(loopback_server)).replace("{network}", "proxy")
    result = sandbox.run(
        str(sandbox.workspace / "framed.py"),
        json.dumps(requests),
        policy=sandbox.policy("loopback", text),
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    statuses = {str(r["line"]): r["status"] for r in _reports(result.stdout)}
    assert statuses == {"override": 403, "two lengths": 400, "plain": 200}
    assert _Recorder.seen == ["GET /public HTTP/1.1"]
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "no-deletes"]
    # The judge's decision names the method judged; the proxy's record, the request.
    assert {r["target"] for r in refused} == {f"DELETE {url}", f"GET {url}"}


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
@pytest.mark.parametrize("network", ["proxy", "direct"])
def test_the_hook_judges_every_spelling_of_a_loopback_url_as_one(
    sandbox: Sandbox, loopback_server: int, network: str
) -> None:
    port = loopback_server
    secret = [f"urllib GET {url}" for url in _loopback_urls(port, "/secret/key")]
    # 127.0.0.1 in fullwidth digits: Python's socket IDNA-encodes it to 127.0.0.1.
    fullwidth = "\uff11\uff12\uff17.0.0.1"
    secret.append(f"urllib GET http://{fullwidth}:{port}/secret/key")
    if network == "direct":  # a request line must be ASCII: only origin-form can carry it
        secret.append(f"http.client GET http://{fullwidth}:{port}/secret/key")
    deletes = [
        f"urllib delete http://127.0.0.1:{port}/public",
        f"urllib Delete http://0x7f000001:{port}/public",
        f"http.client delete http://127.0.0.1:{port}/public",
        f"http.client dElEtE http://2130706433:{port}/public",
    ]
    # `GET /secret/key` as a method: no method, refused in the agent.
    not_methods = [
        f"http.client GET_/secret/key http://127.0.0.1:{port}/public",
        f"urllib GET_/secret/key http://127.0.0.1:{port}/public",
    ]
    allowed = f"urllib get http://0177.0.0.1:{port}/public"
    (sandbox.workspace / "fetch.py").write_text(PYTHON_AGENT)
    text = LOOPBACK_POLICY.replace("{port}", str(port)).replace("{network}", network)
    policy = sandbox.policy("loopback", text)
    result = sandbox.run(
        str(sandbox.workspace / "fetch.py"),
        *secret,
        *deletes,
        *not_methods,
        allowed,
        policy=policy,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    results = {str(r["item"]): r["result"] for r in _reports(result.stdout)}
    assert results == {
        **dict.fromkeys([*secret, *deletes, *not_methods], "PermissionError"),
        allowed: 200,
    }
    # Only the allowed request came: as the agent wrote it, or as the proxy judged it.
    assert _Recorder.seen == [
        "get /public HTTP/1.1" if network == "direct" else "GET /public HTTP/1.1"
    ]
    records = sandbox.audit_records()
    refused = [r for r in records if r.get("rule") == "no-loopback-secret"]
    assert len(refused) == len(secret)
    for record in refused:
        assert record["layer"] == "hook"  # refused in the agent, before the proxy
        assert record["target"] == f"GET http://127.0.0.1:{port}/secret/key"
    refused = [r for r in records if r.get("rule") == "no-deletes"]
    assert len(refused) == len(deletes)
    for record in refused:
        assert record["layer"] == "hook"
        assert record["target"] == f"DELETE http://127.0.0.1:{port}/public"


TUNNEL_AGENT = """
import json, os, socket, ssl, sys
from urllib.parse import urlsplit

proxy = urlsplit(os.environ["http_proxy"])
for item in sys.argv[1:]:
    authority, sni = item.split(" ")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    with socket.create_connection((proxy.hostname, proxy.port), timeout=10) as s:
        s.sendall(f"CONNECT {authority} HTTP/1.1\\r\\nHost: {authority}\\r\\n\\r\\n".encode())
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            chunk = s.recv(65536)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        answer = b""
        if status == 200:
            # The hello, then an end of head for the test's server to answer.
            s.sendall(hello + b"\\r\\n\\r\\n")
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                answer += chunk
    print(json.dumps({"item": item, "status": status, "served": answer.endswith(b"served")}))
"""


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
def test_a_tunnel_to_a_spelled_address_is_judged_and_checked_as_that_address(
    sandbox: Sandbox, loopback_server: int
) -> None:
    port = loopback_server
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens there
    policy_text = LOOPBACK_POLICY.replace("{port}", str(port)).replace("{network}", "proxy")
    policy_text += f"""
  - id: no-closed-port
    actions: [network_connect]
    target: "127.0.0.1:{closed}"
    decision: deny
    priority: 1
"""
    # Python names the host in the SNI as it was written (2130706433 is no IP to
    # OpenSSL): the same address, so the tunnel goes.  Another name does not.
    same = f"0x7f.1:{port} 2130706433"
    other = f"2130706433:{port} other.test"
    refused = f"0x7f000001:{closed} -"
    (sandbox.workspace / "tunnel.py").write_text(TUNNEL_AGENT)
    result = sandbox.run(
        str(sandbox.workspace / "tunnel.py"),
        same,
        other,
        refused,
        policy=sandbox.policy("loopback", policy_text),
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    reports = {str(r["item"]): (r["status"], r["served"]) for r in _reports(result.stdout)}
    assert reports == {same: (200, True), other: (200, False), refused: (403, False)}
    assert len(_Recorder.seen) == 1 and _Recorder.seen[0].startswith("\x16\x03")  # the hello
    records = sandbox.audit_records()
    sni = [r for r in records if r.get("rule") == "agentsup-egress-sni"]
    assert {(r["target"], r.get("sni")) for r in sni} == {
        (f"CONNECT 127.0.0.1:{port}", "other.test")
    }
    closed_records = [r for r in records if r.get("rule") == "no-closed-port"]
    assert closed_records
    assert {(r["action_type"], r["target"]) for r in closed_records} == {
        ("network_connect", f"127.0.0.1:{closed}"),
        ("network_request", f"CONNECT 127.0.0.1:{closed}"),
    }


CONNECT_AGENT = """
import errno, json, socket, sys

for host in sys.argv[2:]:
    try:
        socket.create_connection((host, int(sys.argv[1])), timeout=5).close()
        result = "connected"
    except OSError as exc:
        result = errno.errorcode.get(exc.errno or 0, str(exc))
    print(json.dumps({"host": host, "result": result}))
"""


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
def test_a_direct_connect_is_judged_by_the_address_it_reaches(
    sandbox: Sandbox, loopback_server: int
) -> None:
    """No fold is needed at the syscall: connect() gets the address getaddrinfo made."""
    port = loopback_server
    policy_text = LOOPBACK_POLICY.replace("{port}", str(port)).replace("{network}", "direct")
    policy_text += f"""
  - id: no-loopback-server
    actions: [network_connect]
    target: "127.0.0.1:{port}"
    decision: deny
    priority: 1
"""
    # 0.0.0.0 is no spelling of 127.0.0.1, but the kernel routes a connect to
    # it (and to ::ffff:0.0.0.0) to loopback: it is judged as where it goes.
    hosts = ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "0.0.0.0", "::ffff:0.0.0.0"]
    (sandbox.workspace / "connect.py").write_text(CONNECT_AGENT)
    result = sandbox.run(
        str(sandbox.workspace / "connect.py"),
        str(port),
        *hosts,
        policy=sandbox.policy("loopback", policy_text),
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert {str(r["host"]): r["result"] for r in _reports(result.stdout)} == dict.fromkeys(
        hosts, "EPERM"
    )
    assert _Recorder.seen == []
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "no-loopback-server"]
    assert len(refused) == len(hosts)
    assert {(r["target"], r["layer"]) for r in refused} == {(f"127.0.0.1:{port}", "seccomp")}
