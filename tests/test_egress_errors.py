"""The egress proxy never lets one request end the supervisor.

A red team crashed the whole supervisor (under `agentsup daemon`, every agent
with it) from inside an agent with one request to the proxy:
`CONNECT 1.1.1.1:99999` then a ClientHello without SNI (OverflowError from
connect_ex), or `GET http://[2606:4700::1111%25bogus]/` (gaierror: the zone
id reached connect_ex).  Now a CONNECT port must be 1 to 65535, an IPv6 zone
id is refused (it names an interface of the supervisor's host), and anything
that still raises while one connection is served is recorded and answered on
that connection alone.

Here the proxy runs in the test's own loop with a stand-in judge and audit
log; tests/test_egress_e2e.py has the same attacks from a supervised agent.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from agentsup.events import (
    Decision,
    Event,
    Response,
    Severity,
    Verdict,
    ViolationMode,
)
from agentsup.policy import CompiledPolicy, RunContext, compile_policy, load_policy_text
from agentsup.supervision import egress
from agentsup.supervision.egress import RECORDED_URL, EgressProxy
from agentsup.supervision.loop import EventLoop
from agentsup.supervision.resolver import Resolver

ALLOW = Decision(Verdict.ALLOW, "t-allow", Severity.LOW, "", ViolationMode.BLOCK, "")


class Judge:
    """Allows everything, or raises when `fail` is set; records what it judged."""

    agent_id = "t"
    main_pid = 0
    tree = None

    def __init__(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self.judged: list[str] = []
        self.fail: Exception | None = None

    def judge_event(
        self, event: Event, tid: int, on_settle: Callable[[bool], None] | None = None
    ) -> tuple[Decision, Response]:
        self.judged.append(event.target)
        if self.fail is not None:
            raise self.fail
        return ALLOW, Response.ALLOW

    def kill_for(self, event: Event, decision: Decision) -> None:
        raise AssertionError("nothing here kills")


class Audit(list[Mapping[str, object]]):
    def append(self, record: Mapping[str, object]) -> Mapping[str, object]:  # type: ignore[override]
        super().append(record)
        return record


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Proxy:
    def __init__(self, tmp_path: Path, hosts: dict[str, str]) -> None:
        self.server = http.server.HTTPServer(("127.0.0.1", 0), _Hello)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        text = "name: p\ndefault: allow\non_violation: block\nrules: []\n"
        policy = load_policy_text(text, policy_dir=tmp_path)
        self.judge = Judge(compile_policy(policy, RunContext(str(tmp_path), "/root", "t")))
        self.audit = Audit()
        self.loop = EventLoop()
        listener = socket.create_server(("127.0.0.1", 0))
        self.address = listener.getsockname()
        self.proxy = EgressProxy(
            self.loop, listener, self.judge, self.audit, Resolver(self.loop, overrides=hosts)
        )

    def ask(self, request: bytes, then: bytes = b"", timeout: float = 5) -> bytes:
        """Send `request` (and `then` after a 200), serving the proxy until it hangs up."""
        client = socket.create_connection(self.address)
        client.setblocking(False)
        client.sendall(request)
        answer = bytearray()
        deadline = time.monotonic() + timeout
        sent_then = not then

        def wake() -> None:
            self.loop.call_later(0.02, wake)  # the loop sleeps in epoll; look again soon

        def done() -> bool:
            nonlocal sent_then
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                return time.monotonic() > deadline
            except ConnectionResetError:
                return True
            answer.extend(chunk)
            if not sent_then and answer.startswith(b"HTTP/1.1 200") and b"\r\n\r\n" in answer:
                client.sendall(then)
                sent_then = True
            return not chunk

        wake()
        self.loop.run_until(done)
        client.close()
        return bytes(answer)

    def works(self) -> bool:
        """A later request goes through: the proxy serves on."""
        port = self.server.server_address[1]
        request = f"GET http://ok.test:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        answer = self.ask(request)
        return answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"hello")

    def close(self) -> None:
        self.proxy.close()
        self.loop.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    item = Proxy(
        tmp_path,
        {
            "zoned.test": "2606:4700::1111%bogus",  # what getaddrinfo in connect_ex refuses
            "garbage.test": "not an address",  # gaierror too
            "ok.test": "127.0.0.1",  # the test's server (the operator's table is trusted)
        },
    )
    yield item
    item.close()


def _hello() -> bytes:
    """A ClientHello without SNI, as for an IP literal."""
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00" + b"\x00\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


@pytest.mark.parametrize(
    ("text", "port"),
    [
        ("1", 1),
        ("443", 443),
        ("65535", 65535),
        ("0443", 443),
        ("0", None),
        ("65536", None),
        ("99999", None),
        ("999999999999999999999", None),
        ("", None),
        ("-1", None),
        ("+80", None),
        (" 80", None),
        ("٤٤٣", None),  # Arabic-Indic digits: isdigit() says yes, no port is written so
    ],
)
def test_connect_ports_are_1_to_65535_in_ascii_digits(text: str, port: int | None) -> None:
    assert egress._port(text) == port


def test_an_address_with_a_zone_is_no_ip_literal_the_proxy_connects_to() -> None:
    assert egress._ip_literal("2606:4700::1111")
    assert egress._ip_literal("fe80::1")
    assert not egress._ip_literal("2606:4700::1111%25bogus")
    assert not egress._ip_literal("fe80::1%eth0")


@pytest.mark.parametrize(
    ("request_line", "status", "reason"),
    [
        (b"CONNECT 1.1.1.1:99999", b"400", "port 1 to 65535"),
        (b"CONNECT 1.1.1.1:0", b"400", "port 1 to 65535"),
        (b"CONNECT [fe80::1%25eth0]:443", b"400", "zone"),
        (b"CONNECT [2606:4700::1111%25bogus]:443", b"400", "zone"),
        (b"GET http://[2606:4700::1111%25bogus]/", b"400", "zone"),
        (b"GET http://[fe80::1%25eth0]:8080/", b"400", "zone"),
    ],
)
def test_bad_ports_and_zone_ids_are_refused_before_anything_is_judged(
    proxy: Proxy, request_line: bytes, status: bytes, reason: str
) -> None:
    """Both red-team requests once raised out of the loop; now they get a 400 and a record."""
    answer = proxy.ask(request_line + b" HTTP/1.1\r\nHost: x\r\n\r\n", then=_hello())
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert proxy.judge.judged == []
    (record,) = proxy.audit
    assert record["decision"] == "deny" and reason in str(record["reason"])
    assert proxy.works()


@pytest.mark.parametrize("host", [b"zoned.test", b"garbage.test"])
def test_an_address_connect_ex_cannot_take_is_unreachable_not_a_crash(
    proxy: Proxy, host: bytes
) -> None:
    """A resolved address with a zone raised gaierror from connect_ex into the loop."""
    answer = proxy.ask(b"GET http://" + host + b"/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502"), answer
    (record,) = proxy.audit
    assert record["decision"] == "deny" and "gaierror" in str(record["reason"])
    assert proxy.works()


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET http://ok.test/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT ok.test:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_a_judge_that_raises_ends_that_request_only(proxy: Proxy, request_head: bytes) -> None:
    """Any exception in a proxy callback once ended the supervisor; now it ends one connection."""
    proxy.judge.fail = RuntimeError("judge broke")
    answer = proxy.ask(request_head)
    assert answer.startswith(b"HTTP/1.1 502"), answer
    (record,) = proxy.audit
    assert record["rule"] == egress.ERROR_RULE and record["severity"] == "high"
    assert "proxy error" in str(record["reason"])
    assert proxy.proxy.conns == {}
    proxy.judge.fail = None
    assert proxy.works()


def test_an_answer_from_the_resolver_that_raises_ends_that_request_only(proxy: Proxy) -> None:
    """The resolver's answer arrives in a callback of its own: guarded as well."""

    def resolve(host: str, port: int, answer: Callable[[list[str], str], None]) -> None:
        proxy.loop.call_later(0, lambda: answer(["not an address"], ""))  # is_internal raises

    proxy.proxy.resolver.resolve = resolve  # type: ignore[method-assign]
    answer = proxy.ask(b"GET http://elsewhere.test/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502"), answer
    (record,) = proxy.audit
    assert record["rule"] == egress.ERROR_RULE and "ValueError" in str(record["reason"])
    assert proxy.proxy.conns == {}


def test_a_long_url_is_recorded_cut_to_size(proxy: Proxy) -> None:
    """Red team 24: the proxy records every request, with the URL the agent
    chose (up to h11's 16 KB) twice; 300 of them erased a small log."""
    port = proxy.server.server_address[1]
    path = "/" + "x" * 8000
    answer = proxy.ask(f"GET http://ok.test:{port}{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200"), answer[:200]
    (record,) = [r for r in proxy.audit if r.get("event") == "egress"]
    assert len(str(record["target"])) < RECORDED_URL + 100
    assert str(record["url"]).endswith(
        f"... ({len(f'http://ok.test:{port}{path}') - RECORDED_URL} more)"
    )
