"""The pure mappings from audit-event arguments to action targets."""

from __future__ import annotations

import pytest

from agentsup.hooks import _mapping as mapping
from agentsup.hooks import _protocol as protocol


@pytest.mark.parametrize(
    ("sql", "action"),
    [
        ("SELECT * FROM t", "database_read"),
        ("  -- note\n select 1", "database_read"),
        ("VALUES (1)", "database_read"),
        ("INSERT INTO t VALUES (1)", "database_write"),
        ("replace into t values (1)", "database_write"),
        ("UPDATE t SET a = 1", "database_write"),
        ("DELETE FROM t", "database_delete"),
        ("WITH x AS (SELECT 1) DELETE FROM t WHERE id IN x", "database_delete"),
        (
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION SELECT n+1 FROM c) SELECT n FROM c",
            "database_read",
        ),
        ("/* DELETE */ DROP TABLE t", "database_execute"),
        ("CREATE TABLE t (a)", "database_execute"),
        ("PRAGMA table_info(t)", "database_execute"),
        ("ATTACH 'x.db' AS x", "database_execute"),
        ("", "database_execute"),
        ("SELECT 'DROP TABLE t'", "database_read"),
        # transaction control: the statements inside are judged each
        ("BEGIN", "database_read"),
        ("begin immediate transaction", "database_read"),
        ("COMMIT", "database_read"),
        ("END TRANSACTION", "database_read"),
        ("ROLLBACK TO SAVEPOINT sp", "database_read"),
        ("SAVEPOINT sp", "database_read"),
        ("RELEASE sp", "database_read"),
        ("VACUUM", "database_execute"),
    ],
)
def test_sql_action(sql: str, action: str) -> None:
    assert mapping.sql_action(sql) == action


def test_split_sql_script_respects_strings_and_triggers() -> None:
    script = "SELECT ';'; CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM u; END; DROP TABLE t"
    assert mapping.split_sql_script(script) == [
        "SELECT ';'",
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN DELETE FROM u; END",
        "DROP TABLE t",
    ]


def test_authorizer_codes_and_what_a_class_covers() -> None:
    assert mapping.sqlite_code_action(21) == "database_read"  # SQLITE_SELECT
    assert mapping.sqlite_code_action(18) == "database_write"  # SQLITE_INSERT
    assert mapping.sqlite_code_action(9) == "database_delete"  # SQLITE_DELETE
    assert mapping.sqlite_code_action(11) == "database_execute"  # SQLITE_DROP_TABLE
    assert "database_delete" not in mapping.ACTION_COVERS["database_write"]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"GET /x?a=1 HTTP/1.1\r\nHost: h\r\n\r\n", ("GET", "/x?a=1")),
        (b"POST http://proxy.test/y HTTP/1.0\r\n", ("POST", "http://proxy.test/y")),
        (b'{"json": "body"}', None),
        (b"get /x HTTP/1.1\r\n", ("get", "/x")),  # judged as GET (request_target)
        (b"GET /x SPDY/3\r\n", None),
        ("GET / HTTP/1.1\r\n", None),
    ],
)
def test_http_request_line(data: object, line: tuple[str, str] | None) -> None:
    assert mapping.http_request_line(data) == line


def test_http_url_and_request_target() -> None:
    assert mapping.http_url("https", "h.test", 443, "/a") == "https://h.test/a"
    assert mapping.http_url("http", "::1", 8080, "/a") == "http://[::1]:8080/a"
    assert mapping.http_url("http", "p", 3128, "http://x.test/") == "http://x.test/"
    assert mapping.request_target("GET", "http://H.test:80/a?b#frag") == mapping.request_target(
        "GET", "http://h.test/a?b"
    )


def test_socket_address_and_argv() -> None:
    assert mapping.socket_address(("10.0.0.1", 443)) == "10.0.0.1:443"
    assert mapping.socket_address(("::1", 80, 0, 0)) == "[::1]:80"
    assert mapping.socket_address("/run/x.sock") == "unix:/run/x.sock"
    assert mapping.socket_address(b"\0abstract") == "unix:@abstract"
    assert mapping.join_argv(["rm", b"-rf", "/tmp/x"]) == "rm -rf /tmp/x"
    assert mapping.open_action("rb", 0) == "file_read"
    assert mapping.open_action("a", 0) == "file_write"
    assert mapping.open_action(None, 0o1101) == "file_write"


def test_frames_split_and_oversize() -> None:
    buffer = bytearray(protocol.frame(b"one") + protocol.frame(b"two") + b"\0\0")
    assert protocol.split_frames(buffer) == [b"one", b"two"]
    assert buffer == b"\0\0"
    with pytest.raises(protocol.ProtocolError):
        protocol.split_frames(bytearray(protocol.HEADER.pack(protocol.MAX_FRAME + 1)))


def test_reply_validation_is_strict() -> None:
    good = {"v": 1, "id": 4, "verdict": "deny", "rule": "r", "message": "m", "response": "kill"}
    assert protocol.validate_reply(good, 4) == (False, "r", "m", "kill", None)
    for broken in (
        {**good, "id": 5},
        {**good, "verdict": "maybe"},
        {**good, "rule": ["r"]},
        {**good, "extra": 1},
        {**good, "v": True},
        {**good, "cache": 1},  # a deny is never cached
        [good],
    ):
        with pytest.raises(protocol.ProtocolError):
            protocol.validate_reply(broken, 4)
    allow = {**good, "verdict": "allow", "response": "allow", "cache": 3}
    assert protocol.validate_reply(allow, 4) == (True, "r", "m", "allow", 3)
    for broken in ({**allow, "cache": -1}, {**allow, "cache": True}, {**allow, "response": "log"}):
        with pytest.raises(protocol.ProtocolError):
            protocol.validate_reply(broken, 4)
    assert protocol.is_flush({"v": 1, "flush": 2})
    assert not protocol.is_flush({"v": 1, "flush": "2"})
