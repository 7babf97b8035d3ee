"""Unix sockets the test process serves as the host, recording what reaches them.

The isolation tests check that an agent reaches none of them: a stream
socket counts the connections it accepted, a datagram socket keeps what came.
An address is a path, or bytes starting with NUL for an abstract name.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path


class _Served:
    """A bound unix socket served by a thread until `close`."""

    def __init__(self, address: str | bytes, kind: socket.SocketKind) -> None:
        self.address = address
        self._server = socket.socket(socket.AF_UNIX, kind)
        self._server.bind(address)
        if kind == socket.SOCK_STREAM:
            self._server.listen(128)
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                self._once(self._server)
            except (TimeoutError, OSError):
                continue

    def _once(self, server: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()
        if isinstance(self.address, str):
            Path(self.address).unlink(missing_ok=True)


class StreamServer(_Served):
    """A stream socket: `reached` counts the connections accepted."""

    def __init__(self, address: str | bytes) -> None:
        self.reached = 0
        super().__init__(address, socket.SOCK_STREAM)

    def _once(self, server: socket.socket) -> None:
        conn, _ = server.accept()
        self.reached += 1
        conn.close()


class DatagramServer(_Served):
    """A datagram socket (journald's /dev/log is one): `received` keeps what came."""

    def __init__(self, address: str | bytes) -> None:
        self.received: list[bytes] = []
        super().__init__(address, socket.SOCK_DGRAM)

    def _once(self, server: socket.socket) -> None:
        self.received.append(server.recv(4096))

    def collected(self) -> list[bytes]:
        """Everything that came, what is still queued too; it stops serving."""
        self._stop.set()
        self._thread.join()
        self._server.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.received.append(self._server.recv(4096))
        return self.received


@contextlib.contextmanager
def stream_server(address: str | bytes | Path) -> Iterator[StreamServer]:
    server = StreamServer(str(address) if isinstance(address, Path) else address)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def datagram_server(address: str | bytes | Path) -> Iterator[DatagramServer]:
    server = DatagramServer(str(address) if isinstance(address, Path) else address)
    try:
        yield server
    finally:
        server.close()
