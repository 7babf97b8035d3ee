"""A pty between the user's terminal and the agent (as `docker run -t` does).

The agent gets the slave side of a fresh pty as its controlling terminal and
never holds the user's: whatever it does to its terminal (TIOCSTI, changing
modes, reading after it exits) stays in its own pty.  The supervisor keeps
the master and relays bytes both ways from its one event loop, copies the
window size on SIGWINCH, and keeps the user's terminal raw while relaying,
so that ^C, ^Z and line editing reach the agent's pty and act there.

Nothing here blocks except the final flush in `detach`, which is bounded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import select
import signal
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from .loop import EventLoop

# Buffered bytes in one direction above which the relay stops reading that
# side, so a slow reader slows the writer down instead of growing memory.
HIGH_WATER = 1 << 20
_CHUNK = 65536
# How long `detach` may wait for a slow terminal to take the last output.
FLUSH_TIMEOUT_S = 2.0

_HANGUP = select.EPOLLHUP | select.EPOLLERR


class _Side:
    """A non-blocking descriptor of our own for one side of the user's terminal.

    O_NONBLOCK belongs to the open file description, which fds 0 and 1 share
    with the shell that started us: set there, the shell would be left with
    a non-blocking terminal if we died.  A terminal is therefore re-opened
    through /proc/self/fd, which gives a description of our own.  That is
    refused when the tty belongs to another user (su or setpriv from a root
    terminal); then, and for pipes and files (re-opening a file would reset
    its offset), the fd is dup'ed, made non-blocking, and its flags restored
    in `close`.
    """

    def __init__(self, fd: int, flags: int) -> None:
        self.restore_flags: int | None = None
        if os.isatty(fd):
            with contextlib.suppress(OSError):
                self.fd = os.open(
                    f"/proc/self/fd/{fd}", flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
                )
                return
        self.fd = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        self.restore_flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, self.restore_flags | os.O_NONBLOCK)

    def close(self) -> None:
        if self.restore_flags is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, fcntl.F_SETFL, self.restore_flags)
        os.close(self.fd)


class PtyRelay:
    """Bytes between the user's terminal (`in_fd`, `out_fd`) and a pty `master`.

    `attach(loop)` puts the terminal in raw mode, copies its window size and
    starts relaying; `detach()` relays what the agent left in the pty, then
    restores the terminal and the fds' flags.  Use `with relay.attached(loop):`
    so that the terminal is restored on every way out.  The relay never
    closes `master`, `in_fd` or `out_fd`: they stay their owners'.
    """

    def __init__(self, master: int, in_fd: int = 0, out_fd: int = 1) -> None:
        self.master = master
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._loop: EventLoop | None = None
        self._in: _Side | None = None
        self._out: _Side | None = None
        self._master_flags: int | None = None
        self._saved: list[Any] | None = None
        self._to_master = bytearray()
        self._to_out = bytearray()
        self._masks: dict[int, int] = {}
        self.input_closed = False  # the user's side hung up: nothing more to read
        self.output_closed = False  # nobody reads our output: the agent's is dropped
        self.master_closed = False  # every slave fd is closed: the agent's tree is gone

    def __repr__(self) -> str:
        state = "finished" if self.finished else "attached" if self._loop else "idle"
        return f"<PtyRelay master={self.master} {state}>"

    @property
    def finished(self) -> bool:
        """The agent's side hung up and everything it wrote has been passed on."""
        return self.master_closed and (self.output_closed or not self._to_out)

    # -- the terminal ------------------------------------------------------------

    def copy_window_size(self) -> None:
        """Give the pty our terminal's size; the kernel SIGWINCHes the agent's foreground group."""
        for source in (self._in_fd, self._out_fd):
            with contextlib.suppress(OSError, termios.error):  # not a terminal
                termios.tcsetwinsize(self.master, termios.tcgetwinsize(source))
                return

    def _enter_raw(self) -> None:
        if not os.isatty(self._in_fd):
            return
        # A run in the background (`agentsup run ... &`) would be stopped by
        # SIGTTOU for changing the terminal and SIGTTIN for reading it.
        try:
            background = os.tcgetpgrp(self._in_fd) != os.getpgrp()
        except OSError:  # not our controlling terminal: no job control applies
            background = False
        if background:
            self.input_closed = True
            return
        self._saved = termios.tcgetattr(self._in_fd)
        tty.setraw(self._in_fd, termios.TCSANOW)  # TCSANOW: keep what was typed ahead

    def _restore(self) -> None:
        if self._saved is not None:
            saved, self._saved = self._saved, None
            # TCSANOW, not TCSADRAIN: a terminal that stopped reading must not
            # hang the supervisor's exit.
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._in_fd, termios.TCSANOW, saved)

    # -- attaching to the loop ---------------------------------------------------

    def attach(self, loop: EventLoop) -> None:
        if self._loop is not None:
            raise RuntimeError("the relay is attached already")
        self._loop = loop
        try:
            self._master_flags = fcntl.fcntl(self.master, fcntl.F_GETFL)
            fcntl.fcntl(self.master, fcntl.F_SETFL, self._master_flags | os.O_NONBLOCK)
            self._in = _Side(self._in_fd, os.O_RDONLY)
            self._out = _Side(self._out_fd, os.O_WRONLY)
            self._enter_raw()
            self.copy_window_size()
            loop.on_signal(signal.SIGWINCH, self.copy_window_size)
            self._sync()
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        """Pass on what the agent left, stop relaying, restore the terminal (idempotent)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            loop.on_signal(signal.SIGWINCH, _ignore)  # drops the loop's reference to us
            for fd in list(self._masks):
                loop.remove_reader(fd)
            self._masks.clear()
            self._drain_master()
            self._flush_out()
        finally:
            self._restore()
            for side in (self._in, self._out):
                if side is not None:
                    side.close()
            self._in = self._out = None
            if self._master_flags is not None:
                flags, self._master_flags = self._master_flags, None
                with contextlib.suppress(OSError):
                    fcntl.fcntl(self.master, fcntl.F_SETFL, flags)

    @contextlib.contextmanager
    def attached(self, loop: EventLoop) -> Iterator[PtyRelay]:
        self.attach(loop)
        try:
            yield self
        finally:
            self.detach()

    def _sync(self) -> None:
        """Register each fd for what it is waiting for now, and nothing else.

        An fd waiting for nothing is unregistered, not left with an empty
        mask: epoll reports a hang-up whatever the mask, and a hung-up pty
        would wake the loop forever.
        """
        loop, in_side, out_side = self._loop, self._in, self._out
        if loop is None or in_side is None or out_side is None:
            return
        wanted: dict[int, int] = {}

        def want(fd: int, mask: int) -> None:
            wanted[fd] = wanted.get(fd, 0) | mask

        if not self.input_closed and len(self._to_master) < HIGH_WATER:
            want(in_side.fd, select.EPOLLIN)
        if not self.master_closed:
            if len(self._to_out) < HIGH_WATER:
                want(self.master, select.EPOLLIN)
            if self._to_master:
                want(self.master, select.EPOLLOUT)
        if self._to_out and not self.output_closed:
            want(out_side.fd, select.EPOLLOUT)
        for fd, mask in list(self._masks.items()):
            if wanted.get(fd) != mask:
                loop.remove_reader(fd)
                del self._masks[fd]
        for fd, mask in wanted.items():
            if fd not in self._masks:
                loop.add_reader(fd, functools.partial(self._on_event, fd), mask)
                self._masks[fd] = mask

    # -- moving bytes --------------------------------------------------------------

    def _on_event(self, fd: int, events: int) -> None:
        if self._in is not None and fd == self._in.fd:
            self._read_input()
        elif fd == self.master:
            if events & select.EPOLLOUT:
                self._write_master()
            if events & (select.EPOLLIN | _HANGUP):
                self._read_master(everything=bool(events & _HANGUP))
        elif self._out is not None and fd == self._out.fd:
            self._write_out()
        self._sync()

    def _read_input(self) -> None:
        assert self._in is not None
        data = _read(self._in.fd)
        if data is None:
            return
        if not data:  # the user's terminal hung up, or stdin ended
            self.input_closed = True
            return
        self._to_master += data
        self._write_master()

    def _read_master(self, everything: bool = False) -> bool:
        """Read one chunk (all of it on a hang-up: the agent will write no more).

        Returns whether anything was read or the end was seen.
        """
        progressed = False
        while True:
            data = _read(self.master)
            if data is None:
                return progressed
            progressed = True
            if not data:  # EIO: no slave fd is open any more
                self.master_closed = True
                self._to_master.clear()
                return progressed
            if not self.output_closed:
                self._to_out += data
                self._write_out()
            if not everything:
                return progressed

    def _write_master(self) -> None:
        try:
            self._to_master = _write(self.master, self._to_master)
        except OSError:  # EIO: the agent's side is gone; its input goes nowhere
            self._to_master.clear()

    def _write_out(self) -> None:
        assert self._out is not None
        try:
            self._to_out = _write(self._out.fd, self._to_out)
        except OSError:  # EPIPE/EIO: nobody reads our output any more
            self.output_closed = True
            self._to_out.clear()

    def _drain_master(self) -> None:
        """Take what the agent wrote before it ended, without waiting for more."""
        while not self.master_closed and select.select([self.master], [], [], 0)[0]:
            if not self._read_master():
                break  # readable with nothing to read: stop rather than spin

    def _flush_out(self) -> None:
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while self._to_out and not self.output_closed and self._out is not None:
            self._write_out()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self._to_out:
                select.select([], [self._out.fd], [], left)


def _ignore() -> None:
    pass


def _read(fd: int) -> bytes | None:
    """A chunk, b"" at the end (a pty says EIO when its other side is closed), None if none yet."""
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EIO, errno.ENXIO):
            return b""
        raise


def _write(fd: int, buf: bytearray) -> bytearray:
    """Write what the fd takes now; return the rest."""
    while buf:
        try:
            written = os.write(fd, buf)
        except BlockingIOError:
            break
        del buf[:written]
    return buf
