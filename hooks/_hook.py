"""The audit hook installed inside a Python agent (DESIGN.md 1.2, 2, 3).

`install()` adds one `sys.addaudithook` hook and gates what syscalls cannot
show: HTTP method and URL (network_request), SQL through sqlite3
(database_*), and environment reads and writes (env_read, env_write).  Those
are *checks*: the hook asks the supervisor and raises PermissionError on a
deny, or when it gets no valid answer (fail closed).  Files, commands,
connects and dlopen are *notes*: telemetry only, the syscall layer decides.

The hook is a second gate, never the only one.  All state lives in closures
so that an agent cannot switch the hook off by setting a module attribute;
cheap attacks (replacing sys.audit, os.environ or our sqlite3 wrapper) are
refused or repaired.  Determined in-process code can still go around it
(ctypes, gc plus closure cells, os.environ._data, patching http.client's
Python code); that is why the syscall layer exists.

Standard library only.  Import and install cost well under a millisecond.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import Any, Callable, Dict, cast  # noqa: UP035  (typing's: 3.8 has no builtin generics)

from . import _mapping as mapping
from . import _protocol as protocol

# Module-level aliases are evaluated: spelled so Python 3.8 (the first with
# audit hooks) can import the hook from a foreign interpreter.
Detail = Dict[str, Any]  # noqa: UP006
Send = Callable[[str, str, Detail], None]
Tamper = Callable[[str], None]

_installed = False
_CACHE_SIZE = 4096  # cached answers per process; cleared when full
# Set in sys.modules by whichever copy installs first: agentsup's own import,
# or the private one hooks/site/sitecustomize.py loads by path.  One hook per process.
INSTALLED_MARKER = "_agentsup_hook_installed"
OPEN_CHECK_INTERVAL = 0.001  # seconds


class _JsonContext:
    """Settings for a private C JSON scanner: replies are parsed without any
    Python-level json code the agent could patch.  NaN and Infinity are refused."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> None:
        raise ValueError(f"{name} is not valid in a reply")


def _encode_value(value: Any, quote: Callable[[str], str]) -> str:
    if type(value) is str:
        return quote(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) in (list, tuple):
        return "[" + ",".join(quote(mapping.fs_text(item)) for item in value) + "]"
    return quote(mapping.fs_text(value))


def _make_channel(path: str, busy: set[int]) -> tuple[Send, Send, Tamper]:
    """(check, note, tamper) over one lazily opened connection per process."""
    import _json
    import _socket
    import _thread

    quote: Callable[[str], str] = _json.encode_basestring_ascii
    scan = _json.make_scanner(cast(Any, _JsonContext()))
    header = protocol.HEADER
    max_frame = protocol.MAX_FRAME
    validate_reply = protocol.validate_reply
    get_ident = _thread.get_ident
    getpid = os.getpid

    sock: Any = None
    owner_pid = 0
    lock = _thread.allocate_lock()
    last_id = 0
    # (action, target) pairs the supervisor marked cacheable (a plain allow,
    # no record, no rate limit), valid for `generation` of its cache.  Only
    # with a live connection: a flush the server pushes is seen there.
    cache: set[tuple[str, str]] = set()
    generation = -1
    peek = _socket.MSG_PEEK | _socket.MSG_DONTWAIT
    is_flush = protocol.is_flush

    def cached(key: tuple[str, str]) -> bool:
        conn = sock
        if key not in cache or conn is None or owner_pid != getpid():
            return False
        try:
            conn.recv(1, peek)
        except BlockingIOError:
            return True  # nothing pushed since the answer came: it stands
        except OSError:
            return False
        return False  # a pushed flush (or the channel's end) waits: ask

    def drop() -> None:
        nonlocal sock
        cache.clear()
        if sock is not None:
            try:  # noqa: SIM105  (contextlib is not worth importing at agent start)
                sock.close()
            except OSError:
                pass
        sock = None

    def connection() -> Any:
        # A forked child must never share its parent's connection: replies
        # would go to whichever process reads first.
        nonlocal sock, owner_pid
        if sock is not None and owner_pid == getpid():
            return sock
        drop()
        new = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            new.connect(path)
        except BaseException:
            new.close()
            raise
        sock, owner_pid = new, getpid()
        return new

    def encode(op: str, action: str, target: str, detail: Detail) -> tuple[int, bytes]:
        nonlocal last_id
        last_id += 1
        parts = ['{"v":1,"id":', int.__repr__(last_id), ',"op":"', op, '"']
        if action:
            parts += [',"action":"', action, '"']
        parts += [',"target":', quote(target), ',"detail":{']
        parts.append(
            ",".join(quote(key) + ":" + _encode_value(v, quote) for key, v in detail.items())
        )
        parts.append("}}")
        return last_id, "".join(parts).encode("ascii")

    def recv_exact(conn: Any, size: int) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            count = conn.recv_into(view[received:])
            if count == 0:
                raise ConnectionError("the supervisor closed the hook channel")
            received += count
        return bytes(buffer)

    def refuse(action: str, target: str, why: str) -> PermissionError:
        return PermissionError(errno.EACCES, f"agentsup: {action} {target} refused: {why}")

    def read_frame(conn: Any) -> Any:
        (length,) = header.unpack(recv_exact(conn, header.size))
        if length > max_frame:
            raise protocol.ProtocolError("oversize reply")
        text = recv_exact(conn, length).decode("utf-8")
        message, end = scan(text, 0)
        if end != len(text):
            raise protocol.ProtocolError("trailing data after the reply")
        return message

    def check(action: str, target: str, detail: Detail) -> None:
        nonlocal generation
        if cached((action, target)):
            return
        thread = get_ident()
        if thread in busy:
            # Re-entered from a signal handler in the middle of a check: the
            # channel is mid-request, so this one cannot be asked.
            raise refuse(action, target, "re-entrant check")
        busy.add(thread)
        try:
            with lock:
                try:
                    request_id, payload = encode("check", action, target, detail)
                    if len(payload) > max_frame:
                        raise protocol.ProtocolError("request too large to check")
                    conn = connection()
                    conn.sendall(header.pack(len(payload)) + payload)
                    reply = read_frame(conn)
                    while is_flush(reply):
                        cache.clear()  # the policy changed: nothing cached stands
                        generation = reply[protocol.FLUSH_KEY]
                        reply = read_frame(conn)
                    allowed, rule, message, _response, cacheable = validate_reply(reply, request_id)
                    if cacheable is not None:
                        if cacheable != generation or len(cache) >= _CACHE_SIZE:
                            cache.clear()
                            generation = cacheable
                        cache.add((action, target))
                except Exception as exc:
                    drop()
                    raise refuse(
                        action, target, f"no valid answer from the supervisor ({exc})"
                    ) from None
        finally:
            busy.discard(thread)
        if not allowed:
            raise PermissionError(
                errno.EACCES, f"agentsup: {action} {target} denied by rule '{rule}': {message}"
            )

    def send_one_way(op: str, action: str, target: str, detail: Detail) -> None:
        thread = get_ident()
        if thread in busy:
            return
        busy.add(thread)
        try:
            with lock:
                try:
                    _request_id, payload = encode(op, action, target, detail)
                    if len(payload) > max_frame:
                        _request_id, payload = encode(
                            op, action, target[:4096], {"truncated": True}
                        )
                    connection().sendall(header.pack(len(payload)) + payload)
                except Exception:
                    # Telemetry only: the syscall layer decides these actions.
                    drop()
        finally:
            busy.discard(thread)

    notes_wanted = _notes_wanted()

    def note(action: str, target: str, detail: Detail) -> None:
        # ctypes.dlopen is rare and says "this agent is about to go around
        # Python": always worth a record.  The rest only at audit level all.
        if notes_wanted or detail.get("event") == "ctypes.dlopen":
            send_one_way("note", action, target, detail)

    def tamper(reason: str) -> None:
        send_one_way("tamper", "", reason, {})

    def after_fork_in_child() -> None:
        nonlocal lock
        drop()
        lock = _thread.allocate_lock()
        busy.clear()

    os.register_at_fork(after_in_child=after_fork_in_child)
    return check, note, tamper


def _guard_module(module: Any, protected: dict[str, Any], tamper: Tamper) -> type:
    """Make assigning or deleting `protected` attributes of `module` fail."""
    base: Any = type(module)
    name = module.__name__

    def refuse(attribute: str) -> PermissionError:
        tamper(f"assignment to {name}.{attribute} refused")
        return PermissionError(errno.EACCES, f"agentsup: {name}.{attribute} is protected")

    # importlib makes every new module as `type(sys)(name)`, so other modules
    # get this class too: only the guarded one is protected (trio, for one,
    # assigns its own module's __class__).
    class GuardedModule(base):  # type: ignore[misc]
        __slots__ = ()

        def __setattr__(self, attribute: str, value: Any) -> None:
            if self is module and attribute in protected and value is not protected[attribute]:
                raise refuse(attribute)
            base.__setattr__(self, attribute, value)

        def __delattr__(self, attribute: str) -> None:
            if self is module and attribute in protected:
                raise refuse(attribute)
            base.__delattr__(self, attribute)

    protected["__class__"] = GuardedModule
    module.__class__ = GuardedModule
    return GuardedModule


def _gate_environ(check: Send, tamper: Tamper, env_marks: dict[int, str]) -> tuple[Any, Any, Any]:
    """(environ, environb, class): os.environ replacements that report reads and writes."""
    import _thread

    get_ident = _thread.get_ident
    base: Any = type(os.environ)
    own_names = frozenset({protocol.ENV_SOCKET, protocol.ENV_AGENT_ID})
    fs_text = mapping.fs_text

    def read(key: Any) -> None:
        check("env_read", fs_text(key), {})

    def write(key: Any) -> None:
        name = fs_text(key)
        if name in own_names:
            tamper(f"change to {name} refused")
            raise PermissionError(
                errno.EACCES, f"agentsup: env_write {name} refused: the hook's own variable"
            )
        check("env_write", name, {})
        # os.putenv/os.unsetenv raise their own audit event for this write.
        env_marks[get_ident()] = name

    class GatedEnviron(base):  # type: ignore[misc]
        def __getitem__(self, key: Any) -> Any:
            read(key)
            return base.__getitem__(self, key)

        def get(self, key: Any, default: Any = None) -> Any:
            read(key)
            try:
                return base.__getitem__(self, key)
            except KeyError:
                return default

        def __contains__(self, key: object) -> bool:
            read(key)
            try:
                base.__getitem__(self, key)
            except KeyError:
                return False
            return True

        def __setitem__(self, key: Any, value: Any) -> None:
            write(key)
            try:
                base.__setitem__(self, key, value)
            finally:
                env_marks.pop(get_ident(), None)

        def __delitem__(self, key: Any) -> None:
            write(key)
            try:
                base.__delitem__(self, key)
            finally:
                env_marks.pop(get_ident(), None)

        def __repr__(self) -> str:
            # The inherited repr reads every value straight from _data.
            items = ", ".join(f"{key!r}: {self[key]!r}" for key in list(self))
            return f"environ({{{items}}})"

    plain: Any = os.environ
    # Python 3.8's _Environ also takes putenv and unsetenv.
    calls = (plain.putenv, plain.unsetenv) if hasattr(plain, "putenv") else ()
    environ = GatedEnviron(
        plain._data, plain.encodekey, plain.decodekey, plain.encodevalue, plain.decodevalue, *calls
    )
    environb = None
    if hasattr(os, "environb"):
        plainb: Any = os.environb
        environb = GatedEnviron(
            plain._data,
            plainb.encodekey,
            plainb.decodekey,
            plainb.encodevalue,
            plainb.decodevalue,
            *calls,
        )
    return environ, environb, GatedEnviron


class _SqliteGate:
    """Wraps sqlite3.connect so that every connection is gated.

    Each execute/executemany/executescript is classified from its SQL text
    and checked once.  The connection's authorizer then holds the statement
    to that class: anything wider (an INSERT hidden in a trigger, say) needs
    a second check, and a statement prepared outside the wrapper is refused.
    A deny raises PermissionError; when SQLite itself refused the statement
    ("not authorized"), that DatabaseError is replaced by the PermissionError.
    """

    def __init__(self, check: Send, tamper: Tamper) -> None:
        import _thread

        self._check = check
        self._tamper = tamper
        self._get_ident = _thread.get_ident
        self._statements: dict[int, _Statement] = {}
        self._actions: dict[str, str] = {}  # SQL text -> its database_* action
        self._connecting: set[int] = set()
        self._connection_classes: dict[type, type] = {}
        self._cursor_classes: dict[type, type] = {}
        self.patched: Any = None

    # --- install -------------------------------------------------------
    def patch(self, module: Any) -> None:
        """Replace connect in sqlite3 and sqlite3.dbapi2 (idempotent)."""
        dbapi2 = sys.modules.get("sqlite3.dbapi2")
        original = getattr(dbapi2, "connect", None) or module.connect
        if original is self.patched:
            return
        gate = self

        def connect(*args: Any, **kwargs: Any) -> Any:
            return gate.connect(original, args, kwargs)

        connect.__doc__ = original.__doc__
        connect.__name__ = "connect"
        self.patched = connect
        module.connect = connect
        if dbapi2 is not None:
            setattr(dbapi2, "connect", connect)  # noqa: B010

    def on_connect_event(self) -> None:
        """The `sqlite3.connect` audit event: refuse connections made around the wrapper."""
        if self._get_ident() not in self._connecting:
            self._tamper("sqlite3 connection opened around the agentsup wrapper")
            raise PermissionError(
                errno.EACCES, "agentsup: sqlite3 connections must be opened with sqlite3.connect"
            )

    # --- connections ---------------------------------------------------
    def connect(self, original: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import sqlite3

        positional = list(args)
        if len(positional) > 5:
            positional[5] = self._connection_class(positional[5])
        else:
            kwargs["factory"] = self._connection_class(kwargs.get("factory", sqlite3.Connection))
        thread = self._get_ident()
        self._connecting.add(thread)
        try:
            conn = original(*positional, **kwargs)
        finally:
            self._connecting.discard(thread)
        sqlite3.Connection.set_authorizer(conn, self._authorizer)
        database = positional[0] if positional else kwargs.get("database", "")
        conn._agentsup_database = mapping.fs_text(database)
        return conn

    def _connection_class(self, factory: Any) -> Any:
        if not isinstance(factory, type):
            return factory
        known = self._connection_classes.get(factory)
        if known is not None:
            return known
        gate = self

        class GatedConnection(factory):  # type: ignore[misc]
            def cursor(self, factory: Any = None) -> Any:
                import sqlite3

                return super().cursor(gate._cursor_class(factory or sqlite3.Cursor))

            def execute(self, sql: str, parameters: Any = (), /) -> Any:
                return self.cursor().execute(sql, parameters)

            def executemany(self, sql: str, parameters: Any, /) -> Any:
                return self.cursor().executemany(sql, parameters)

            def executescript(self, script: str, /) -> Any:
                return self.cursor().executescript(script)

            def set_authorizer(self, *args: Any, **kwargs: Any) -> None:
                gate._tamper("sqlite3 set_authorizer on a gated connection")
                raise PermissionError(errno.EACCES, "agentsup: the authorizer is agentsup's")

        GatedConnection.__name__ = factory.__name__
        GatedConnection.__qualname__ = factory.__qualname__
        self._connection_classes[factory] = GatedConnection
        return GatedConnection

    def _cursor_class(self, factory: Any) -> Any:
        if not isinstance(factory, type):
            return factory
        known = self._cursor_classes.get(factory)
        if known is not None:
            return known
        gate = self

        class GatedCursor(factory):  # type: ignore[misc]
            def execute(self, sql: str, parameters: Any = (), /) -> Any:
                return gate.run(self, [sql], sql, super().execute, (sql, parameters))

            def executemany(self, sql: str, parameters: Any, /) -> Any:
                return gate.run(self, [sql], sql, super().executemany, (sql, parameters))

            def executescript(self, script: str, /) -> Any:
                statements = mapping.split_sql_script(script) if type(script) is str else []
                return gate.run(self, statements, script, super().executescript, (script,))

        GatedCursor.__name__ = factory.__name__
        GatedCursor.__qualname__ = factory.__qualname__
        self._cursor_classes[factory] = GatedCursor
        return GatedCursor

    # --- statements ----------------------------------------------------
    def run(
        self,
        cursor: Any,
        statements: list[str],
        target: Any,
        call: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> Any:
        import sqlite3

        if type(target) is not str:
            return call(*args)  # sqlite3 raises its own TypeError
        database = getattr(cursor.connection, "_agentsup_database", "")
        approved: set[str] = set()
        for statement in statements:
            action = self._actions.get(statement)
            if action is None:
                # Classifying is pure but costs more than a cached check.
                action = mapping.sql_action(statement)
                if len(self._actions) >= _CACHE_SIZE:
                    self._actions.clear()
                self._actions[statement] = action
            if action not in approved:
                self._check(action, statement, {"database": database})
                approved.add(action)
        covered: set[str] = set()
        for action in approved:
            covered |= mapping.ACTION_COVERS[action]
        context = _Statement(target, database, covered)
        thread = self._get_ident()
        outer = self._statements.get(thread)
        self._statements[thread] = context
        try:
            return call(*args)
        except sqlite3.DatabaseError:
            if context.denial is not None:
                raise context.denial from None
            raise
        finally:
            if outer is None:
                self._statements.pop(thread, None)
            else:
                self._statements[thread] = outer

    def _authorizer(self, code: int, arg1: Any, arg2: Any, db: Any, trigger: Any) -> int:
        # sqlite3 treats an exception here as a deny, but prints it; answer
        # with codes only.
        if code in mapping.SQLITE_TRANSACTION_CODES:
            return 0  # SQLITE_OK
        context = self._statements.get(self._get_ident())
        if context is None:
            self._tamper("sqlite3 statement prepared around the agentsup wrapper")
            return 1  # SQLITE_DENY
        action = mapping.sqlite_code_action(code)
        if action in context.covered:
            return 0
        if context.denial is not None:
            return 1
        try:
            self._check(action, context.sql, {"database": context.database, "widened": True})
        except PermissionError as denial:
            context.denial = denial
            return 1
        context.covered |= mapping.ACTION_COVERS[action]
        return 0


class _Statement:
    __slots__ = ("covered", "database", "denial", "sql")

    def __init__(self, sql: str, database: str, covered: set[str]) -> None:
        self.sql = sql
        self.database = database
        self.covered = covered
        self.denial: PermissionError | None = None


Patch = Callable[[Any], None]


class _PatchFinder:
    """Meta path finder that patches a module (sqlite3, httpx, aiohttp) as
    soon as it is imported, without importing it into agents that never do."""

    def __init__(self, patches: dict[str, Patch]) -> None:
        self.patches = patches

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        patch = self.patches.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = cast(Any, _PatchingLoader(spec.loader, patch))
                return spec
        return None

    def pending(self) -> bool:
        """True while a module it patches has not been imported yet."""
        return any(name not in sys.modules for name in self.patches)


class _PatchingLoader:
    def __init__(self, loader: Any, patch: Patch) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._patch(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _request_target(method: Any, url: str) -> str:
    """`mapping.request_target`; a method that is no HTTP method is refused here.

    Such a method (`GET /x`, `DEL ETE`) makes a request line that servers
    read as another method or target than any rule would see; the egress
    proxy (h11) refuses it too.  Nothing is asked: no request is made.
    """
    try:
        return mapping.request_target(str(method), url)
    except ValueError as exc:
        raise PermissionError(errno.EACCES, f"agentsup: network_request refused: {exc}") from None


def _http_client_patches(check: Send) -> dict[str, Patch]:
    """Request-level gates for HTTP clients with their own HTTP stack.

    httpx (over httpcore/h11) and aiohttp never reach http.client, so no
    audit event shows their requests.  Each hop (redirects included) is
    checked as `METHOD URL`, normalised as http.client requests are, before
    the connection is opened.
    """

    def target(method: Any, scheme: Any, host: Any, port: Any, path: Any) -> str:
        url = mapping.http_url(str(scheme), str(host), port, mapping.fs_text(path) or "/")
        return _request_target(method, url)

    def httpx_target(request: Any) -> str:
        url = request.url
        return target(request.method, url.scheme, url.host, url.port, url.raw_path)

    def gate_sync(original: Any) -> Any:
        def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            check("network_request", httpx_target(request), {"source": "httpx"})
            return original(self, request, *args, **kwargs)

        return send

    def gate_async(original: Any) -> Any:
        async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            check("network_request", httpx_target(request), {"source": "httpx"})
            return await original(self, request, *args, **kwargs)

        return send

    def patch_httpx(module: Any) -> None:
        for class_name, gate in (("Client", gate_sync), ("AsyncClient", gate_async)):
            cls = getattr(module, class_name, None)
            # One call per hop; `send` (all hops at once) on other versions.
            name = "_send_single_request" if hasattr(cls, "_send_single_request") else "send"
            original = getattr(cls, name, None)
            if original is None or getattr(original, "_agentsup_gated", False):
                continue
            wrapper = gate(original)
            wrapper._agentsup_gated = True
            wrapper.__name__ = name
            setattr(cls, name, wrapper)

    def patch_aiohttp(module: Any) -> None:
        cls = getattr(module, "ClientRequest", None)
        original = getattr(cls, "__init__", None)
        if original is None or getattr(original, "_agentsup_gated", False):
            return

        # aiohttp builds one ClientRequest per hop, before it connects.
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            url = self.url
            port = url.explicit_port if hasattr(url, "explicit_port") else url.port
            check(
                "network_request",
                target(self.method, url.scheme, url.raw_host or "", port, url.raw_path_qs),
                {"source": "aiohttp"},
            )

        init._agentsup_gated = True  # type: ignore[attr-defined]
        cls.__init__ = init  # type: ignore[misc,union-attr]

    return {"httpx._client": patch_httpx, "aiohttp.client_reqrep": patch_aiohttp}


# The handler of an open that is not due an integrity check (not an event name).
_NOTE_OPEN = "agentsup: open, noted only"


def _no_note(args: tuple[Any, ...]) -> None:
    """Opens are not noted below audit level `all`."""


def _notes_wanted() -> bool:
    """Whether plain notes (an open, a spawn) are recorded: audit level `all`."""
    return os.environ.get(protocol.ENV_NOTES) == "1"


def _make_handlers(
    socket_path: str,
    agent_id: str,
    check: Send,
    note: Send,
    tamper: Tamper,
    env_marks: dict[int, str],
    sqlite_gate: _SqliteGate,
    integrity: Callable[[], None],
) -> dict[str, Callable[[tuple[Any, ...]], None]]:
    """Audit event name -> handler.  Handlers raise only PermissionError."""
    import _thread

    get_ident = _thread.get_ident
    fs_text = mapping.fs_text
    join_argv = mapping.join_argv
    abspath = os.path.abspath
    # Per thread: the target of the urllib request already checked, so that
    # http.client does not ask again for the same request.  Both are in the
    # one form (mapping.request_target), and http.client's is built from what
    # its connection really uses: a URL urllib reads otherwise than we do is
    # checked again there.
    urllib_pending: dict[int, str] = {}

    def on_urllib_request(args: tuple[Any, ...]) -> None:
        url, _data, _headers, method = args[:4]
        url, method = str(url), str(method)
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("file", "data"):
            return  # not network; file access is the syscall layer's
        target = _request_target(method, url)
        check("network_request", target, {"source": "urllib"})
        if scheme in ("http", "https"):
            urllib_pending[get_ident()] = target

    def on_http_send(args: tuple[Any, ...]) -> None:
        conn, data = args[0], args[1]
        line = mapping.http_request_line(data)
        if line is None:
            return
        method, request_target = line
        if method == "CONNECT":
            # Proxy tunnel set-up, as http.client writes it (upper case); the
            # tunnelled request is checked itself.  Any other case is judged.
            return
        scheme = "https" if getattr(conn, "default_port", 80) == 443 else "http"
        tunnel_host = getattr(conn, "_tunnel_host", None)
        host = tunnel_host or getattr(conn, "host", "")
        port = getattr(conn, "_tunnel_port" if tunnel_host else "port", None)
        url = mapping.http_url(scheme, str(host), port, request_target)
        target = _request_target(method, url)
        if urllib_pending.pop(get_ident(), None) == target:
            return
        check("network_request", target, {"source": "http.client"})

    # An open is the syscall layer's to decide; the hook only notes it, and
    # then only at audit level `all` (`note_open`).  The hook itself runs
    # the integrity check on opens, rate-limited (`install`).
    def note_open(args: tuple[Any, ...]) -> None:
        path = args[0]
        if path is None or type(path) is int:
            return
        text = fs_text(path)
        action = mapping.open_action(
            args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else 0
        )
        note(action, abspath(text), {})

    opens_noted = _notes_wanted()

    def on_open(args: tuple[Any, ...]) -> None:
        integrity()
        if opens_noted:
            note_open(args)

    def on_popen(args: tuple[Any, ...]) -> None:
        integrity()
        executable, argv, cwd, env = args[:4]
        if type(env) is dict:
            # Python children get the hook through the .pth file or this
            # hook's sitecustomize, which need these variables; an explicit
            # env= must not drop them.
            text_keys = not any(isinstance(key, bytes) for key in env)
            for key, value in (
                (protocol.ENV_SOCKET, socket_path),
                (protocol.ENV_AGENT_ID, agent_id),
                (protocol.ENV_SITE, protocol.SITE_DIR),
            ):
                env_key: Any = key if text_keys else key.encode()
                env_value: Any = value if text_keys else os.fsencode(value)
                env[env_key] = env_value
            # And the directory whose sitecustomize hooks any other Python.
            path_key: Any = "PYTHONPATH" if text_keys else b"PYTHONPATH"
            site_dir: Any = protocol.SITE_DIR if text_keys else os.fsencode(protocol.SITE_DIR)
            sep: Any = os.pathsep if text_keys else os.pathsep.encode()
            entries = env.get(path_key) or site_dir[:0]
            if entries.split(sep)[0] != site_dir:
                env[path_key] = sep.join(filter(None, (site_dir, entries)))
        detail: Detail = {"event": "subprocess.Popen"}
        if executable is not None:
            detail["executable"] = fs_text(executable)
        if cwd is not None:
            detail["cwd"] = fs_text(cwd)
        note("shell_execute", join_argv(argv), detail)

    def on_system(args: tuple[Any, ...]) -> None:
        integrity()
        note("shell_execute", fs_text(args[0]), {"event": "os.system"})

    def on_exec(args: tuple[Any, ...]) -> None:
        integrity()
        note("shell_execute", join_argv(args[1]), {"event": "os.exec", "path": fs_text(args[0])})

    def on_spawn(args: tuple[Any, ...]) -> None:
        integrity()
        note(
            "shell_execute",
            join_argv(args[1]),
            {"event": "os.posix_spawn", "path": fs_text(args[0])},
        )

    def on_socket_connect(args: tuple[Any, ...]) -> None:
        integrity()
        note("network_connect", mapping.socket_address(args[1]), {})

    def on_dlopen(args: tuple[Any, ...]) -> None:
        integrity()
        name = args[0]
        if name is not None:  # dlopen(NULL) is the running program itself (ctypes.pythonapi)
            note("file_read", fs_text(name), {"event": "ctypes.dlopen"})

    def on_putenv(args: tuple[Any, ...]) -> None:
        name = fs_text(args[0])
        if env_marks.get(get_ident()) == name:
            return  # os.environ already checked this write
        if name in (protocol.ENV_SOCKET, protocol.ENV_AGENT_ID):
            tamper(f"change to {name} refused")
            raise PermissionError(
                errno.EACCES, f"agentsup: env_write {name} refused: the hook's own variable"
            )
        check("env_write", name, {})

    def on_sqlite_connect(args: tuple[Any, ...]) -> None:
        sqlite_gate.on_connect_event()

    def on_integrity_event(args: tuple[Any, ...]) -> None:
        integrity()

    return {
        "urllib.Request": on_urllib_request,
        "http.client.send": on_http_send,
        "open": on_open,
        _NOTE_OPEN: note_open if opens_noted else _no_note,
        "subprocess.Popen": on_popen,
        "os.system": on_system,
        "os.exec": on_exec,
        "os.posix_spawn": on_spawn,
        "socket.connect": on_socket_connect,
        "socket.getaddrinfo": on_integrity_event,
        "import": on_integrity_event,
        "ctypes.dlopen": on_dlopen,
        "os.putenv": on_putenv,
        "os.unsetenv": on_putenv,
        "sqlite3.connect": on_sqlite_connect,
    }


def _make_integrity(
    tamper: Tamper,
    sys_protected: dict[str, Any],
    os_protected: dict[str, Any],
    environ_class: type,
    finder: _PatchFinder,
) -> Callable[[], None]:
    """Repair what an agent can cheaply switch off, and report it.

    Called on C-level audit events (open, import, connect, exec), which the
    agent cannot silence, so a change is undone before the next network
    request, import or command.
    """
    sys_module = sys
    os_module = os
    sys_dict = sys.__dict__
    os_dict = os.__dict__
    modules = sys.modules
    meta_path = sys.meta_path
    environ_methods = {
        name: environ_class.__dict__[name]
        for name in ("__getitem__", "get", "__contains__", "__setitem__", "__delitem__", "__repr__")
    }
    sys_class = sys_protected["__class__"]
    audited_modules = ("urllib.request", "http.client", "subprocess")

    def repair_dict(namespace: dict[str, Any], expected: dict[str, Any], label: str) -> None:
        for name, value in expected.items():
            if name != "__class__" and namespace.get(name) is not value:
                namespace[name] = value
                tamper(f"{label}.{name} was replaced; restored")

    def integrity() -> None:
        repair_dict(sys_dict, sys_protected, "sys")
        repair_dict(os_dict, os_protected, "os")
        if type(sys_module) is not sys_class:
            object.__setattr__(sys_module, "__class__", sys_class)
            tamper("sys module class was replaced; restored")
        os_class = os_protected.get("__class__")
        if os_class is not None and type(os_module) is not os_class:
            object.__setattr__(os_module, "__class__", os_class)
            tamper("os module class was replaced; restored")
        for name, method in environ_methods.items():
            if environ_class.__dict__.get(name) is not method:
                type.__setattr__(environ_class, name, method)
                tamper(f"os.environ.{name} was replaced; restored")
        for module_name in audited_modules:
            module = modules.get(module_name)
            # A module still being imported has no `sys` yet; that is no tamper.
            bound = None if module is None else module.__dict__.get("sys")
            if bound is not None and bound is not sys_module:
                module.__dict__["sys"] = sys_module
                tamper(f"{module_name}.sys was replaced; restored")
        if finder not in meta_path and finder.pending():
            meta_path.insert(0, finder)
            tamper("the agentsup import finder was removed; restored")

    return integrity


_RUN_EVENTS = (
    "cpython.run_file",
    "cpython.run_command",
    "cpython.run_module",
    "cpython.run_stdin",
    "cpython.run_startup",
    "cpython.run_interactivehook",
)


def install(socket_path: str, agent_id: str, *, during_site: bool = False) -> None:
    """Install the hook in this process (idempotent).

    With `during_site` (the .pth file), os.environ is gated only when the
    interpreter starts running the program: the `site` module's own reads of
    PYTHONUSERBASE and the like are the interpreter's, not the agent's.
    """
    global _installed
    if _installed or INSTALLED_MARKER in sys.modules:
        return
    import _thread

    busy: set[int] = set()
    env_marks: dict[int, str] = {}
    check, note, tamper = _make_channel(socket_path, busy)

    environ, environb, environ_class = _gate_environ(check, tamper, env_marks)
    os_protected: dict[str, Any] = {}  # filled when os.environ is gated
    sys_protected: dict[str, Any] = {"audit": sys.audit, "addaudithook": sys.addaudithook}
    _guard_module(sys, sys_protected, tamper)

    def gate_environ() -> None:
        if os_protected:
            return
        os_protected["environ"] = environ
        os.__dict__["environ"] = environ
        if environb is not None:
            os_protected["environb"] = environb
            os.__dict__["environb"] = environb
        _guard_module(os, os_protected, tamper)

    sqlite_gate = _SqliteGate(check, tamper)
    patches: dict[str, Patch] = {"sqlite3": sqlite_gate.patch, **_http_client_patches(check)}
    for name, patch in patches.items():
        if name in sys.modules:
            patch(sys.modules[name])
    finder = _PatchFinder(patches)
    if finder.pending():
        sys.meta_path.insert(0, finder)

    integrity = _make_integrity(tamper, sys_protected, os_protected, environ_class, finder)
    handlers = _make_handlers(
        socket_path, agent_id, check, note, tamper, env_marks, sqlite_gate, integrity
    )
    for event in _RUN_EVENTS:
        handlers[event] = lambda args: gate_environ()
    if not during_site:
        gate_environ()
    lookup = handlers.get
    get_ident = _thread.get_ident
    # Opens come by the thousand, and most need nothing of the hook: on them
    # the integrity check runs at most once per OPEN_CHECK_INTERVAL, decided
    # here before any handler is looked up (every other event, a connect, an
    # exec, an import, a name lookup, checks each time).
    on_open, note_open = handlers["open"], handlers[_NOTE_OPEN]
    clock = time.monotonic
    next_open_check = 0.0

    def agentsup_audit_hook(event: str, args: tuple[Any, ...]) -> None:
        nonlocal next_open_check
        handler: Callable[[tuple[Any, ...]], None] | None
        if event == "open":
            now = clock()
            if now >= next_open_check:
                next_open_check = now + OPEN_CHECK_INTERVAL
                handler = on_open
            elif note_open is _no_note:
                return
            else:
                handler = note_open
        else:
            handler = lookup(event)
            if handler is None:
                return
        if get_ident() in busy:
            return
        try:
            handler(args)
        except PermissionError as denial:
            # Drop the hook's own frames: the agent's traceback ends at its call.
            raise denial.with_traceback(None) from None
        except Exception as exc:
            # A handler bug must not let a gated action through.
            raise PermissionError(errno.EACCES, f"agentsup: {event} refused: {exc!r}") from None

    sys.addaudithook(agentsup_audit_hook)
    _installed = True
    sys.modules[INSTALLED_MARKER] = sys.modules[__name__]


def install_from_env(*, during_site: bool = False) -> bool:
    """Install the hook when AGENTSUP_HOOK_SOCKET is set; True when installed."""
    if _installed or INSTALLED_MARKER in sys.modules:
        return True  # by the .pth or sitecustomize; os.environ reads would now be checks
    socket_path = os.environ.get(protocol.ENV_SOCKET)
    if not socket_path:
        return False
    install(socket_path, os.environ.get(protocol.ENV_AGENT_ID, ""), during_site=during_site)
    return True


def is_installed() -> bool:
    return _installed or INSTALLED_MARKER in sys.modules
