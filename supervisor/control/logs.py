"""The daemon's agent logs: each agent's stdout and stderr, a prefixed line at a time.

Where: `agents/<id>.log` beside the audit log, that is
`/var/log/agentsup/agents/` as root and `~/.local/state/agentsup/agents/`
for a normal user (it moves with `AGENTSUP_AUDIT_LOG`).  Agents can never
write there: the audit log's directory is one of the protected paths.
Files are mode 0600 in a 0700 directory.

Each line is `<RFC 3339 UTC time> <stdout|stderr> <text>`.  A line longer
than `LINE_MAX_BYTES` is split; bytes that are not UTF-8 are replaced.  At
`LOG_MAX_BYTES` the file is renamed to `<id>.log.1` (one old file is kept)
and a new one started.  `agentsup logs [-f] ID` reads them back.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from ..paths import Locations
from .agentids import check_agent_id

LOG_MAX_BYTES = 10 * 2**20
LINE_MAX_BYTES = 16 * 1024
STREAMS = ("stdout", "stderr")
FOLLOW_POLL_S = 0.2


def log_dir(locations: Locations) -> Path:
    return locations.audit_log.parent / "agents"


def log_path(locations: Locations, agent_id: str) -> Path:
    return log_dir(locations) / f"{check_agent_id(agent_id)}.log"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AgentLogWriter:
    """Turns the bytes an agent writes into timestamped lines in its log file.

    `echo`, when given, also gets each line as `[id] text` (`[id stderr]` for
    stderr): the daemon passes its own stderr, so the journal has them too.
    The pipes of an ended run may still hold output: each is `attach`ed, and
    `close` waits for the last one to `end`.  A write that fails (a full
    disk) loses that line, never the caller.
    """

    def __init__(
        self,
        path: Path,
        agent_id: str,
        echo: Callable[[str], None] | None = None,
        max_bytes: int = LOG_MAX_BYTES,
    ) -> None:
        self.path = path
        self.agent_id = agent_id
        self._echo = echo
        self._max_bytes = max_bytes
        self._partial = {stream: bytearray() for stream in STREAMS}
        self._attached = 0
        self._closing = False
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._file: IO[str] | None = self._open()

    def _open(self) -> IO[str]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8", errors="replace")

    def attach(self) -> None:
        """One more pipe feeds this log; `detach` it at its end."""
        self._attached += 1

    def detach(self, stream: str) -> None:
        self.end(stream)
        self._attached -= 1
        if self._closing and self._attached <= 0:
            self._close_file()

    def feed(self, stream: str, data: bytes) -> None:
        """Bytes read from the agent's `stream`; complete lines are written at once."""
        buffer = self._partial[stream]
        buffer += data
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                if len(buffer) < LINE_MAX_BYTES:
                    break
                cut = LINE_MAX_BYTES
                line, rest = bytes(buffer[:cut]), buffer[cut:]
            else:
                line, rest = bytes(buffer[:cut]), buffer[cut + 1 :]
            buffer[:] = rest
            self._write(stream, line.decode("utf-8", errors="replace"))
        self._flush()

    def end(self, stream: str) -> None:
        """The stream closed: a last line without a newline is still a line."""
        buffer = self._partial[stream]
        if buffer:
            self._write(stream, bytes(buffer).decode("utf-8", errors="replace"))
            buffer.clear()
            self._flush()

    def note(self, text: str) -> None:
        """A line from the daemon about the agent (started, ended), marked `agentsup`."""
        self._write("agentsup", text)
        self._flush()

    def _write(self, stream: str, text: str) -> None:
        text = text.rstrip("\r")
        if self._echo is not None and stream != "agentsup":
            label = self.agent_id if stream == "stdout" else f"{self.agent_id} {stream}"
            self._echo(f"[{label}] {text}")
        if self._file is None:
            return
        try:
            self._file.write(f"{_now()} {stream} {text}\n")
            if self._file.tell() >= self._max_bytes:
                self._rotate()
        except (OSError, ValueError):
            pass  # the line is lost (the echo above still has it)

    def _flush(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._file.flush()

    def _rotate(self) -> None:
        self._close_file()
        with contextlib.suppress(OSError):
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._file = self._open()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        """Close now if no pipe is attached, else once the last one has ended."""
        self._closing = True
        if self._attached <= 0:
            for stream in STREAMS:
                self.end(stream)
            self._close_file()


def parse_line(line: str) -> dict[str, str]:
    """One log line as {"time", "stream", "text"}."""
    when, _, rest = line.rstrip("\n").partition(" ")
    stream, _, text = rest.partition(" ")
    return {"time": when, "stream": stream, "text": text}


def _open(path: Path) -> tuple[IO[str], tuple[int, int]] | None:
    try:
        # Lines end at a newline only: a CR the agent printed is text, never
        # the start of a line of its own making (red team 33 forged an
        # "agentsup ended" line with one).
        handle = path.open(encoding="utf-8", errors="replace", newline="\n")
    except FileNotFoundError:
        return None
    st = os.fstat(handle.fileno())
    return handle, (st.st_dev, st.st_ino)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


class LogReader:
    """Reads an agent's log: what is there (`tail`), then what comes (`follow`).

    Both go through one open file, so no line written in between is lost or
    printed twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._opened = _open(path)
        self._partial = ""

    def tail(self, lines: int | None) -> list[str]:
        """The last `lines` lines (all with None), the rotated file's first."""
        kept: deque[str] = deque(maxlen=lines) if lines is not None else deque()
        rotated = self.path.with_name(self.path.name + ".1")
        older = _open(rotated)
        if older is not None:
            with older[0] as f:
                kept.extend(line.rstrip("\n") for line in f)
        kept.extend(self._read_complete())
        return list(kept)

    def _identity_changed(self) -> bool:
        current = _identity(self.path)
        return self._opened is not None and current is not None and current != self._opened[1]

    def _read_complete(self) -> list[str]:
        if self._opened is None:
            return []
        chunk = self._opened[0].read()
        if not chunk:
            return []
        self._partial += chunk
        *complete, self._partial = self._partial.split("\n")
        return complete

    def follow(self, *, poll: float = FOLLOW_POLL_S) -> Iterator[str]:
        """Lines appended from here on, across rotations; runs until interrupted."""
        while True:
            if self._opened is None:
                self._opened = _open(self.path)  # it did not exist yet: all of it is new
            complete = self._read_complete()
            if complete:
                yield from complete
                continue
            if self._identity_changed():
                self.close()  # rotated (and fully read): the new file from its start
                self._opened = _open(self.path)
                continue
            time.sleep(poll)

    def close(self) -> None:
        if self._opened is not None:
            self._opened[0].close()
            self._opened = None
        self._partial = ""


def read_tail(path: Path, lines: int | None) -> list[str]:
    reader = LogReader(path)
    try:
        return reader.tail(lines)
    finally:
        reader.close()
