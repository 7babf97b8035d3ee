"""Pure functions that turn audit-event arguments into action targets.

No I/O and no state, so every mapping is testable without a hook or a
supervisor.  Standard library only; nothing here is imported lazily because
the hook needs all of it on its first events.
"""

from __future__ import annotations

import _socket
import os
from typing import Any, Optional, Tuple  # noqa: UP035  (typing's: 3.8 has no builtin generics)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DEFAULT_PORTS = {"http": 80, "https": 443}
# http.server's limit on a request line; nginx, h11 and most servers take less.
_MAX_REQUEST_LINE = 64 * 1024 + 2
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"  # ::ffff:0:0/96
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_OCTAL_DIGITS = frozenset("01234567")
_DECIMAL_DIGITS = frozenset("0123456789")
# RFC 9110 5.6.2: what an HTTP method may be made of.
_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# RFC 3986 2.3: escapes of these mean the character itself.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Module-level aliases are evaluated: spelled so Python 3.8 can import this.
UrlParts = Tuple[str, str, Optional[int], str]  # noqa: UP006, UP045


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
        host = ip_literal(host) or host  # a name stays as written
        if ":" in host:
            return f"[{host}]:{address[1]}"
        return f"{host}:{address[1]}"
    return repr(address)


def reached_address(text: str) -> str:
    """Where a connection to the address `text` (as `ip_text` writes it) goes.

    The unspecified address is the local host: Linux routes a connect or a
    datagram to 0.0.0.0 (or ::) to loopback, so a rule about 127.0.0.1 must
    see it.  (A bind to it means every address, and is not folded.)
    """
    return _UNSPECIFIED.get(text, text)


_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def ip_text(packed: bytes) -> str:
    """The one spelling of a 4- or 16-byte address in targets, in every layer.

    An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is written as the IPv4
    address: a connect to it over AF_INET6 reaches a.b.c.d's IPv4 sockets, so
    a rule about a.b.c.d must see it.  The deprecated IPv4-compatible form
    (::a.b.c.d) is not folded: Linux sends it as IPv6 (at most into a sit
    tunnel, as IPv6 inside IPv4), never to an IPv4 socket of a.b.c.d, so it
    stays `[::a.b.c.d as hex]`, which only a rule about IPv6 matches.
    IPv6 as RFC 5952 (and `ipaddress`) write it: lower-case hex without
    leading zeros, the first longest run of two or more zero groups as "::".
    """
    if len(packed) == 16 and packed[:12] == _V4_MAPPED:
        packed = packed[12:]
    if len(packed) == 4:
        return ".".join(str(byte) for byte in packed)
    if len(packed) != 16:
        raise ValueError(f"not an IP address: {len(packed)} bytes")
    groups = [f"{packed[i] << 8 | packed[i + 1]:x}" for i in range(0, 16, 2)]
    best, best_length, start = -1, 1, -1
    for i in range(9):
        if i < 8 and groups[i] == "0":
            if start < 0:
                start = i
        elif start >= 0:
            if i - start > best_length:
                best, best_length = start, i - start
            start = -1
    if best < 0:
        return ":".join(groups)
    return ":".join(groups[:best]) + "::" + ":".join(groups[best + best_length :])


def _aton_number(part: str) -> int | None:
    """One part of an inet_aton address, read as C's strtoul(part, 0) reads it.

    `0x` then hex digits is hex, a leading `0` is octal, else decimal; ASCII
    digits only, no sign, no space, nothing left over (`0x`, `08` are not numbers).
    """
    if part[:2] in ("0x", "0X"):
        digits = part[2:]
        if digits and all(char in _HEX_DIGITS for char in digits):
            return int(digits, 16)
        return None
    if part[:1] == "0":
        return int(part, 8) if all(char in _OCTAL_DIGITS for char in part) else None
    # More than 10 decimal digits is past 2**32 (and past int()'s digit limit soon).
    if part and len(part) <= 10 and all(char in _DECIMAL_DIGITS for char in part):
        return int(part)
    return None


def ipv4_aton(host: str) -> bytes | None:
    """The address a host written in one of inet_aton's forms names; None for anything else.

    getaddrinfo (glibc's and musl's), and so Python's sockets, urllib,
    http.client and curl, read a host that is all numbers this way before any
    name lookup: one to four parts between dots, each decimal, `0x` hex or
    `0` octal, the last part filling the bytes that are left.  So `127.1`,
    `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`, `0x7f000001` and
    `169.254.43518` are 127.0.0.1 and 169.254.169.254 on the wire.  Exactly
    glibc's __inet_aton_exact: no sign, no space, no empty part, no trailing
    dot, and a part past its size (`127.0.0.256`, `0x100.1`) is no address.
    """
    parts = host.split(".")
    if len(parts) > 4:
        return None
    numbers: list[int] = []
    for part in parts:
        number = _aton_number(part)
        if number is None:
            return None
        numbers.append(number)
    *leading, last = numbers
    if any(number > 0xFF for number in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = last
    for index, number in enumerate(leading):
        value |= number << (8 * (3 - index))
    return value.to_bytes(4, "big")


def ip_literal(host: str) -> str | None:
    """`ip_text` of a host written as an IP address (IPv6 without brackets); None for a name.

    IPv4 in every form getaddrinfo takes for an address (`ipv4_aton`:
    `127.1`, `2130706433`, `0x7f.0.0.1` are all 127.0.0.1), IPv6 in
    inet_pton's form (getaddrinfo takes no other).  An IPv6 zone (`%eth0`)
    is kept as written.
    """
    packed = ipv4_aton(host)
    if packed is not None:
        return ip_text(packed)
    address, sep, zone = host.partition("%")
    try:
        text = ip_text(_socket.inet_pton(_socket.AF_INET6, address))
    except (OSError, ValueError):
        return None
    return text + sep + zone if ":" in text else text


def host_text(host: str) -> str:
    """The one spelling of a URL's host (brackets already off), as the connection reads it.

    A host that is not ASCII is IDNA-encoded first, as Python's sockets do
    before they resolve it (fullwidth digits are digits, `bücher.test` is
    `xn--bcher-kva.test`); then lower case, the trailing dot dropped, and
    an IP address in any spelling as `ip_literal` writes it.
    """
    if not host.isascii():
        try:  # noqa: SIM105  (contextlib is not worth importing at agent start)
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # no socket connects to it either: judged as written
    host = host.lower().rstrip(".")
    literal = ip_literal(host)
    return host if literal is None else reached_address(literal)


def http_method(method: str) -> str:
    """A request's method as rules see it: upper case.  ValueError when it is no token.

    Methods are case-sensitive (RFC 9110 9.1), but servers differ: some
    read `delete` as DELETE, some refuse it, so a rule about DELETE must
    see it.  Anything that is not a token (a space, a `/`, a control
    character, nothing at all) is no method: a server reads such a request
    line as another method or another target than the rules would see, so
    it is refused, as the egress proxy (h11) refuses it.
    """
    if not method or not all(char in _TOKEN_CHARS for char in method):
        raise ValueError(f"not an HTTP method: {method!r}")
    return method.upper()


def normal_path(path: str) -> str:
    """A URL path in the one form rules see (RFC 3986 6.2.2, and slashes collapsed).

    Escapes of unreserved characters are decoded (`%61` is `a`), other
    escapes get upper-case hex (`%2f` is `%2F`), and a `%` that starts no
    escape is `%25` (a lenient server's reading; a strict one refuses it).
    Anything but visible ASCII is escaped as UTF-8.  Then repeated slashes
    are collapsed and dot-segments removed (5.2.4), as servers such as
    nginx do before they match a location: `/x//../admin` is `/admin`.
    """
    out: list[str] = []
    index, length = 0, len(path)
    while index < length:
        char = path[index]
        if char == "%":
            pair = path[index + 1 : index + 3]
            if len(pair) == 2 and pair[0] in _HEX_DIGITS and pair[1] in _HEX_DIGITS:
                decoded = chr(int(pair, 16))
                out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
                index += 3
                continue
            out.append("%25")
        elif "!" <= char <= "~":
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        index += 1
    segments = "".join(out).split("/")
    if segments[0]:
        return "".join(out)  # not an absolute path (`*`): nothing to resolve against
    kept: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in ("", "."):
            kept.append(segment)
    # "/a/" and "/a/b/.." keep the slash that ends them; "/a//" has one.
    trailing = bool(kept) and segments[-1] in ("", ".", "..")
    return "/" + "/".join(kept) + ("/" if trailing else "")


def url_authority(scheme: str, host: str, port: int | None) -> str:
    """host[:port] of a URL: IPv6 in brackets, the scheme's default port left out."""
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        authority += f":{port}"
    return authority


def url_parts(url: str) -> UrlParts:
    """(scheme, host, port, path[?query]) of an absolute URL, each in its one form.

    Scheme lower-case, the host as `host_text` writes it (lower case, no
    trailing dot, IDNA, an IP address in any spelling as `ip_literal` writes
    it: `0x7f.1` is 127.0.0.1, IPv4-mapped IPv6 folded), the port
    the scheme's default when none is written (None for a scheme without
    one), the path as `normal_path` writes it and the query as it is.
    User info and the fragment are not part of it: neither is sent in the
    request line.  ValueError when there is no host, or the port is no port.
    """
    from urllib.parse import urlsplit  # loaded already by urllib / http.client

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = host_text(parts.hostname or "")
    if not host:
        raise ValueError(f"no host in {url!r}")
    # The port as urlsplit finds it, without int()'s leniency ("+80", " 80").
    hostinfo = parts.netloc.rpartition("@")[2]
    _before, bracket, bracketed = hostinfo.partition("[")
    port_text = (bracketed.partition("]")[2] if bracket else hostinfo).partition(":")[2]
    if port_text:
        if not (port_text.isdigit() and port_text.isascii()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in {url!r}")
        port: int | None = int(port_text)
    else:
        port = _DEFAULT_PORTS.get(scheme)
    rest = normal_path(parts.path or "/")
    if parts.query:
        rest += "?" + parts.query
    return scheme, host, port, rest


def normal_url(url: str) -> str:
    """The one form of an absolute URL that network_request targets use (`url_parts`)."""
    scheme, host, port, rest = url_parts(url)
    return f"{scheme}://{url_authority(scheme, host, port)}{rest}"


def request_target(method: str, url: str) -> str:
    """The network_request target `METHOD URL`: the method as `http_method`
    writes it (ValueError when it is no method), the URL in its one form.

    A URL `url_parts` cannot read stays as written: no client sends it
    (urllib and http.client refuse it too), and http.client's own event,
    checked from the connection, names what does go out.
    """
    method = http_method(method)
    try:  # noqa: SIM105  (contextlib is not worth importing at agent start)
        url = normal_url(url)
    except ValueError:
        pass
    return f"{method} {url}"


def http_request_line(data: Any) -> tuple[str, str] | None:
    """(method, request-target) when `data` starts with an HTTP request line.

    http.client sends the request line and headers as one bytes block, and
    the body in later blocks; a block that does not start with a request
    line is body and yields None.  A request line is read as leniently as
    any server reads one (RFC 9112 3: words split on any whitespace), so
    that no spelling of one goes unjudged: a first line of three or more
    words whose last is `HTTP/...` is a request.  The method comes as
    written (any case, and everything before the target: `GET /x /y
    HTTP/1.1` has the method `GET /x`), for `request_target` to judge or
    refuse.  A body block that starts like a request line is judged as one:
    a server reading the connection as a pipeline would see one there.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return None
    # Servers skip empty lines before a request line (RFC 9112 2.2).
    head = bytes(data[:_MAX_REQUEST_LINE]).lstrip(b"\r\n")
    end = head.find(b"\n")
    if end <= 0:
        return None
    words = head[:end].split()
    if len(words) < 3 or not words[-1].upper().startswith(b"HTTP/"):
        return None
    method = b" ".join(words[:-2])
    return method.decode("latin-1"), words[-2].decode("latin-1")


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
_TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"})


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
    DELETE delete, DDL and everything else (PRAGMA, ATTACH, VACUUM...) execute.
    Transaction control (BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT, RELEASE)
    changes nothing of its own (the statements inside it are judged each):
    it is a read, so that every `with connection:` is no warning.

    A WITH prefix is skipped: the first verb outside the CTE bodies decides.
    """
    words = _top_level_words(sql)
    if not words:
        return "database_execute"
    if words[0] in _TRANSACTION_CONTROL:
        return "database_read"
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
