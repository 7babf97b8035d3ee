"""Pure functions that turn audit-event arguments into action targets.

No I/O and no state, so every mapping is testable without a hook or a
supervisor.  Standard library only; nothing here is imported lazily because
the hook needs all of it on its first events.
"""

from __future__ import annotations

import os
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_REQUEST_LINE = 16 * 1024


def fs_text(value: Any) -> str:
    """A str, bytes or path-like argument as text (undecodable bytes escaped)."""
    if type(value) is str:
        return value
    try:
        return os.fsdecode(value)
    except TypeError:
        return str(value)


def join_argv(args: Any) -> str:
    """shell_execute target: argv joined by single spaces."""
    if isinstance(args, (str, bytes)) or not hasattr(args, "__iter__"):
        return fs_text(args)
    return " ".join(fs_text(arg) for arg in args)


def open_action(mode: Any, flags: Any) -> str:
    """file_read or file_write for the `open` audit event's mode and flags."""
    if isinstance(mode, str) and any(char in mode for char in "wax+"):
        return "file_write"
    if type(flags) is int and flags & _WRITE_FLAGS:
        return "file_write"
    return "file_read"


def socket_address(address: Any) -> str:
    """network_connect target: IP:PORT, [IPv6]:PORT or unix:/path."""
    if isinstance(address, (str, bytes)):
        text = fs_text(address)
        # A leading NUL is Linux's abstract namespace; show it as "@".
        return "unix:" + ("@" + text[1:] if text.startswith("\0") else text)
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        if ":" in host:
            return f"[{host}]:{address[1]}"
        return f"{host}:{address[1]}"
    return repr(address)


def http_request_line(data: Any) -> tuple[str, str] | None:
    """(METHOD, request-target) when `data` starts with an HTTP/1.x request line.

    http.client sends the request line and headers as one bytes block, and
    the body in later blocks; a block that does not start with a request
    line is body and yields None.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    head = bytes(data[:_MAX_REQUEST_LINE])
    end = head.find(b"\r\n")
    if end <= 0:
        return None
    parts = head[:end].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    method, target = parts[0], parts[1]
    if not method.isalpha() or not method.isupper() or not target:
        return None
    return method.decode("ascii"), target.decode("latin-1")


def http_url(scheme: str, host: str, port: int | None, target: str) -> str:
    """Rebuild the URL of an http.client request from its connection and request line."""
    if target.startswith(("http://", "https://")):
        return target  # absolute form: a request sent to a proxy
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    authority = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if not target.startswith("/"):
        target = "/" + target if target != "*" else target
    return f"{scheme}://{authority}{target}"


def url_key(method: str, url: str) -> tuple[str, str, str, int | None, str]:
    """A normalised form of a request, to recognise one urllib request in http.client."""
    from urllib.parse import urlsplit  # loaded already by urllib / http.client

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    scheme = parts.scheme.lower()
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return method.upper(), scheme, (parts.hostname or "").lower(), port, path


# SQLite authorizer action codes (sqlite3.h), grouped into the hook's classes.
_SQLITE_READ_CODES = frozenset({20, 21, 31, 33})  # READ, SELECT, FUNCTION, RECURSIVE
_SQLITE_WRITE_CODES = frozenset({18, 23})  # INSERT, UPDATE
_SQLITE_DELETE_CODES = frozenset({9})  # DELETE
# TRANSACTION and SAVEPOINT: the sqlite3 module issues BEGIN/COMMIT itself.
SQLITE_TRANSACTION_CODES = frozenset({22, 32})


def sqlite_code_action(code: int) -> str:
    """The database action an authorizer callback code belongs to."""
    if code in _SQLITE_READ_CODES:
        return "database_read"
    if code in _SQLITE_WRITE_CODES:
        return "database_write"
    if code in _SQLITE_DELETE_CODES:
        return "database_delete"
    return "database_execute"


# What an approved statement class may touch.  A statement classified from
# its text is checked once; the authorizer then refuses anything outside the
# approved class unless the supervisor also approves the wider class.
ACTION_COVERS: dict[str, frozenset[str]] = {
    "database_read": frozenset({"database_read"}),
    "database_write": frozenset({"database_read", "database_write"}),
    "database_delete": frozenset({"database_read", "database_delete"}),
    "database_execute": frozenset(
        {"database_read", "database_write", "database_delete", "database_execute"}
    ),
}

_VERB_ACTIONS = {
    "SELECT": "database_read",
    "VALUES": "database_read",
    "INSERT": "database_write",
    "REPLACE": "database_write",
    "UPDATE": "database_write",
    "DELETE": "database_delete",
}


def _top_level_words(sql: str) -> list[str]:
    """Upper-cased bare words outside parentheses, strings and comments."""
    words: list[str] = []
    depth = 0
    index = 0
    length = len(sql)
    closers = {"'": "'", '"': '"', "`": "`", "[": "]"}
    while index < length:
        char = sql[index]
        if char in closers:
            end = sql.find(closers[char], index + 1)
            index = length if end < 0 else end + 1
        elif sql.startswith("--", index):
            end = sql.find("\n", index)
            index = length if end < 0 else end + 1
        elif sql.startswith("/*", index):
            end = sql.find("*/", index + 2)
            index = length if end < 0 else end + 2
        elif char == "(":
            depth += 1
            index += 1
        elif char == ")":
            depth = max(0, depth - 1)
            index += 1
        elif char.isalpha() or char == "_":
            start = index
            while index < length and (sql[index].isalnum() or sql[index] in "_$"):
                index += 1
            if depth == 0:
                words.append(sql[start:index].upper())
        elif char == ";":
            break  # the first statement decides; executescript splits statements first
        else:
            index += 1
    return words


def sql_action(sql: str) -> str:
    """Classify one SQL statement: SELECT/VALUES read, INSERT/REPLACE/UPDATE write,
    DELETE delete, DDL and everything else (PRAGMA, ATTACH, BEGIN...) execute.

    A WITH prefix is skipped: the first verb outside the CTE bodies decides.
    """
    words = _top_level_words(sql)
    if not words:
        return "database_execute"
    if words[0] != "WITH":
        return _VERB_ACTIONS.get(words[0], "database_execute")
    for word in words[1:]:
        if word in _VERB_ACTIONS:
            return _VERB_ACTIONS[word]
    return "database_execute"


def split_sql_script(script: str) -> list[str]:
    """Split an executescript() script into statements, using SQLite's own
    notion of a complete statement (semicolons inside strings, comments and
    trigger bodies do not split)."""
    import sqlite3  # only called once sqlite3 is in use

    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending = pending + piece + ";" if pending else piece + ";"
        if sqlite3.complete_statement(pending):
            statement = pending.strip().rstrip(";").rstrip()
            if statement:
                statements.append(statement)
            pending = ""
    rest = pending.strip().rstrip(";").rstrip()
    if rest:
        statements.append(rest)
    return statements
