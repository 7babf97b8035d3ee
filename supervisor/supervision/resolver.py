"""Name resolution for the egress proxy, off the supervisor's event loop.

getaddrinfo blocks, and the supervisor is single-threaded by design (it
forks agents, and a fork from a threaded process can inherit a held lock).
So resolution runs in a helper process with a few threads of its own; the
supervisor talks to it over two pipes, one JSON object per line:

    request:  {"id": 7, "host": "pypi.org", "port": 443}
    answer:   {"id": 7, "addrs": ["151.101.0.223", "2a04:4e42::223"]}
              {"id": 7, "error": "Name or service not known"}

`Resolver` is the supervisor's end: non-blocking, driven by the loop.
`AGENTSUP_EGRESS_HOSTS` ("name=addr,name=addr") answers some names without
asking: tests use it to point a test host name at a test server.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..paths import own_python
from .loop import EventLoop

HOSTS_ENV = "AGENTSUP_EGRESS_HOSTS"
_WORKERS = 4
_MAX_LINE = 64 * 1024

Answer = Callable[[list[str], str], None]  # (addresses, error text)


def _lookup(host: str, port: int) -> dict[str, object]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return {"error": str(exc)[:200]}
    addrs = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return {"addrs": addrs}


def main() -> None:
    """The helper: answer lookups from stdin on stdout until stdin closes."""
    lock = threading.Lock()
    out = sys.stdout

    def work(request_id: int, host: str, port: int) -> None:
        answer = {"id": request_id, **_lookup(host, port)}
        with lock:
            out.write(json.dumps(answer) + "\n")
            out.flush()

    with ThreadPoolExecutor(_WORKERS) as pool:
        for line in sys.stdin:
            try:
                request = json.loads(line)
                pool.submit(work, int(request["id"]), str(request["host"]), int(request["port"]))
            except (ValueError, KeyError, TypeError):
                continue


def parse_overrides(text: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for item in text.split(","):
        name, sep, addr = item.strip().partition("=")
        if sep and name and addr:
            table[name.strip().lower().rstrip(".")] = addr.strip()
    return table


class Resolver:
    """The supervisor's end of the helper; answers come back through the loop."""

    def __init__(self, loop: EventLoop, overrides: dict[str, str] | None = None) -> None:
        self.loop = loop
        self.overrides = (
            overrides if overrides is not None else parse_overrides(os.environ.get(HOSTS_ENV, ""))
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._waiting: dict[int, Answer] = {}
        self._next = 1
        self._inbox = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            self._proc = subprocess.Popen(
                own_python("-c", "from agentsup.supervision.resolver import main; main()"),
                cwd="/",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
            )
            assert self._proc.stdout is not None
            os.set_blocking(self._proc.stdout.fileno(), False)
            self.loop.add_reader(self._proc.stdout.fileno(), self._on_answer)
        return self._proc

    def resolve(self, host: str, port: int, answer: Answer) -> None:
        """Call `answer(addresses, error)` later, from the loop; never blocks."""
        name = host.lower().rstrip(".")
        if name in self.overrides:
            addrs = [self.overrides[name]]
            self.loop.call_later(0, lambda: answer(addrs, ""))
            return
        proc = self._start()
        request_id, self._next = self._next, self._next + 1
        self._waiting[request_id] = answer
        assert proc.stdin is not None
        try:
            # A line is far below the pipe buffer: this write does not block.
            os.write(
                proc.stdin.fileno(),
                (json.dumps({"id": request_id, "host": host, "port": port}) + "\n").encode(),
            )
        except OSError as exc:
            del self._waiting[request_id]
            message = f"resolver unavailable: {exc.strerror}"
            self.loop.call_later(0, lambda: answer([], message))

    def _on_answer(self, _events: int) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            chunk = os.read(self._proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.loop.remove_reader(self._proc.stdout.fileno())
            waiting, self._waiting = self._waiting, {}
            for answer in waiting.values():
                answer([], "resolver exited")
            return
        self._inbox += chunk
        if len(self._inbox) > _MAX_LINE and b"\n" not in self._inbox:
            self._inbox = b""
        while b"\n" in self._inbox:
            line, self._inbox = self._inbox.split(b"\n", 1)
            try:
                message = json.loads(line)
                answer = self._waiting.pop(int(message["id"]))
            except (ValueError, KeyError, TypeError):
                continue
            answer([str(a) for a in message.get("addrs", [])], str(message.get("error", "")))

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdout is not None and proc.stdin is not None
        self.loop.remove_reader(proc.stdout.fileno())
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.kill()
        proc.wait()
        proc.stdout.close()
