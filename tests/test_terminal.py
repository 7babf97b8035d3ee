"""The pty relay, between two real ptys and a real event loop; no supervisor.

`user` stands for agentsup's own terminal (its stdin and stdout), `agent`
for the slave the agent would get; the test types on the user's master and
reads what the agent's slave receives, and the other way round.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import subprocess
import termios
import threading
import tty
from collections.abc import Callable, Iterator

import pytest

from agentsup.supervision import terminal
from agentsup.supervision.loop import EventLoop
from agentsup.supervision.terminal import PtyRelay


class Terminals:
    def __init__(self) -> None:
        self.user_master, self.user = os.openpty()
        self.agent_master, self.agent = os.openpty()
        self.agent_cooked = termios.tcgetattr(self.agent)
        # The agent side without a line discipline: bytes arrive as they were sent.
        tty.setraw(self.agent, termios.TCSANOW)
        self.loop = EventLoop()
        self.relay = PtyRelay(self.agent_master, self.user, self.user)
        self.seen_by_agent = bytearray()
        self.seen_by_user = bytearray()
        self._watched: list[int] = []

    def watch(self, agent: bool = True) -> None:
        """Collect what reaches the user's master (and the agent's slave), from the loop."""
        sides = [(self.user_master, self.seen_by_user)]
        if agent:
            sides.append((self.agent, self.seen_by_agent))
        for fd, sink in sides:
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, lambda _events, fd=fd, sink=sink: _collect(fd, sink))
            self._watched.append(fd)

    def unwatch(self, fd: int) -> None:
        self.loop.remove_reader(fd)
        self._watched.remove(fd)

    def run_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        expired: list[bool] = []
        timer = self.loop.call_later(timeout, lambda: expired.append(True))
        self.loop.run_until(lambda: done() or bool(expired))
        timer.cancel()
        assert not expired, f"timed out; user saw {bytes(self.seen_by_user)!r}"

    def close(self) -> None:
        self.relay.detach()
        for fd in self._watched:
            self.loop.remove_reader(fd)
        self.loop.close()
        for fd in (self.user_master, self.user, self.agent_master, self.agent):
            if fd >= 0:
                os.close(fd)


def _collect(fd: int, sink: bytearray) -> None:
    try:
        sink += os.read(fd, 65536)
    except BlockingIOError:
        pass
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise


@pytest.fixture
def terms() -> Iterator[Terminals]:
    found = Terminals()
    try:
        yield found
    finally:
        found.close()


def test_bytes_go_both_ways(terms: Terminals) -> None:
    terms.watch()
    terms.relay.attach(terms.loop)
    os.write(terms.user_master, b"typed by the user\r")
    os.write(terms.agent, b"printed by the agent\r\n")
    terms.run_until(
        lambda: (
            terms.seen_by_agent == b"typed by the user\r"
            and terms.seen_by_user == b"printed by the agent\r\n"
        )
    )


def test_control_characters_reach_the_agent_in_raw_mode(terms: Terminals) -> None:
    """^C and ^Z act in the agent's pty, not on agentsup (docker run -t)."""
    terms.watch()
    terms.relay.attach(terms.loop)
    os.write(terms.user_master, b"\x03\x1a\x04")
    terms.run_until(lambda: terms.seen_by_agent == b"\x03\x1a\x04")


def test_the_terminal_is_raw_while_relaying_and_restored_after(terms: Terminals) -> None:
    before = termios.tcgetattr(terms.user)
    with terms.relay.attached(terms.loop):
        during = termios.tcgetattr(terms.user)
        assert not during[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
    assert termios.tcgetattr(terms.user) == before


def test_the_terminal_is_restored_on_an_exception(terms: Terminals) -> None:
    before = termios.tcgetattr(terms.user)
    with pytest.raises(RuntimeError, match="boom"), terms.relay.attached(terms.loop):
        raise RuntimeError("boom")
    assert termios.tcgetattr(terms.user) == before


def test_window_size_is_copied_at_attach_and_on_sigwinch(terms: Terminals) -> None:
    termios.tcsetwinsize(terms.user, (40, 132))
    terms.relay.attach(terms.loop)
    assert termios.tcgetwinsize(terms.agent) == (40, 132)
    termios.tcsetwinsize(terms.user, (50, 100))
    os.kill(os.getpid(), signal.SIGWINCH)
    terms.run_until(lambda: termios.tcgetwinsize(terms.agent) == (50, 100))


def test_the_agent_ending_finishes_the_relay_after_its_last_output(terms: Terminals) -> None:
    terms.watch()
    terms.relay.attach(terms.loop)
    os.write(terms.agent, b"last words")
    terms.unwatch(terms.agent)
    os.close(terms.agent)  # the last slave fd: the master now reads EIO
    terms.agent = -1
    terms.run_until(lambda: terms.relay.finished and terms.seen_by_user == b"last words")
    assert terms.relay.master_closed


def test_detach_passes_on_what_the_agent_left(terms: Terminals) -> None:
    terms.relay.attach(terms.loop)
    os.write(terms.agent, b"written just before the end")
    select.select([terms.agent_master], [], [], 2)
    terms.relay.detach()
    select.select([terms.user_master], [], [], 2)  # a pty passes bytes on from a work queue
    assert os.read(terms.user_master, 100) == b"written just before the end"


def test_a_slow_reader_slows_the_agent_instead_of_growing_memory(
    terms: Terminals, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(terminal, "HIGH_WATER", 4096)
    total = 1 << 20
    payload = bytes(range(256)) * (total // 256)
    terms.relay.attach(terms.loop)
    writer = threading.Thread(target=_write_all, args=(terms.agent, payload), daemon=True)
    writer.start()
    # Nobody reads the user's terminal yet: the relay must stop reading the agent.
    peak = 0

    def tick() -> None:
        nonlocal peak
        peak = max(peak, len(terms.relay._to_out))
        ticker[0] = terms.loop.call_later(0.01, tick)

    ticker = [terms.loop.call_later(0.01, tick)]
    stalled: list[bool] = []
    terms.loop.call_later(0.5, lambda: stalled.append(True))
    terms.run_until(lambda: bool(stalled))
    assert writer.is_alive()  # blocked on a full pty
    assert peak < 4096 + 65536
    terms.watch(agent=False)  # the writer thread needs its slave blocking
    terms.run_until(lambda: len(terms.seen_by_user) == total, timeout=30)
    ticker[0].cancel()
    writer.join(5)
    assert bytes(terms.seen_by_user) == payload


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def test_pipes_are_relayed_and_their_flags_restored(terms: Terminals) -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    relay = PtyRelay(terms.agent_master, in_r, out_w)
    try:
        flags = fcntl.fcntl(in_r, fcntl.F_GETFL), fcntl.fcntl(out_w, fcntl.F_GETFL)
        os.set_blocking(terms.agent, False)
        got = bytearray()
        terms.loop.add_reader(terms.agent, lambda _e: _collect(terms.agent, got))
        with relay.attached(terms.loop):
            os.write(in_w, b"from a pipe")
            os.write(terms.agent, b"to a pipe")
            terms.run_until(lambda: got == b"from a pipe")
        terms.loop.remove_reader(terms.agent)
        assert os.read(out_r, 100) == b"to a pipe"
        assert (fcntl.fcntl(in_r, fcntl.F_GETFL), fcntl.fcntl(out_w, fcntl.F_GETFL)) == flags
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)


def test_output_nobody_reads_is_dropped_and_the_agent_not_blocked(terms: Terminals) -> None:
    out_r, out_w = os.pipe()
    os.close(out_r)  # our stdout's reader is gone: EPIPE
    relay = PtyRelay(terms.agent_master, terms.user, out_w)
    try:
        with relay.attached(terms.loop):
            writer = threading.Thread(target=_write_all, args=(terms.agent, b"x" * (1 << 20)))
            writer.start()
            terms.run_until(lambda: not writer.is_alive())
            writer.join()
            assert relay.output_closed
    finally:
        os.close(out_w)


def test_in_the_background_the_terminal_is_left_alone(
    terms: Terminals, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`agentsup run ... &`: no SIGTTOU for changing the terminal, no SIGTTIN for reading it."""
    monkeypatch.setattr(os, "tcgetpgrp", lambda _fd: os.getpgrp() + 1)
    before = termios.tcgetattr(terms.user)
    with terms.relay.attached(terms.loop):
        assert termios.tcgetattr(terms.user) == before
        assert terms.relay.input_closed


def test_no_fd_is_left_behind_and_the_master_is_restored(terms: Terminals) -> None:
    fds = set(os.listdir("/proc/self/fd"))
    flags = fcntl.fcntl(terms.agent_master, fcntl.F_GETFL)
    terms.relay.attach(terms.loop)
    assert fcntl.fcntl(terms.agent_master, fcntl.F_GETFL) & os.O_NONBLOCK
    terms.relay.detach()
    terms.relay.detach()  # idempotent
    assert fcntl.fcntl(terms.agent_master, fcntl.F_GETFL) == flags
    # The loop's own signal pipe is the only addition (SIGWINCH).
    assert len(set(os.listdir("/proc/self/fd")) - fds) <= 2


def test_attaching_twice_is_refused(terms: Terminals) -> None:
    terms.relay.attach(terms.loop)
    with pytest.raises(RuntimeError, match="attached already"):
        terms.relay.attach(terms.loop)
    assert "attached" in repr(terms.relay)


def test_an_agent_on_the_pty_sees_the_size_and_gets_ctrl_c(terms: Terminals) -> None:
    """The wiring `run` uses: a new session with the slave as controlling terminal."""
    termios.tcsetattr(terms.agent, termios.TCSANOW, terms.agent_cooked)  # ^C makes a SIGINT
    termios.tcsetwinsize(terms.user, (40, 132))
    terms.relay.copy_window_size()  # before the agent starts, so it sees it at once
    script = (
        'trap "echo got-int; exit 3" INT; echo "size $(stty size)"; while :; do sleep 0.1; done'
    )
    agent = subprocess.Popen(
        ["/bin/sh", "-c", script],
        stdin=terms.agent,
        stdout=terms.agent,
        stderr=terms.agent,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    try:
        os.close(terms.agent)  # the supervisor keeps no slave: EIO once the agent's tree is gone
        terms.agent = -1
        terms.watch(agent=False)
        terms.relay.attach(terms.loop)
        terms.run_until(lambda: b"size 40 132" in terms.seen_by_user)
        os.write(terms.user_master, b"\x03")  # ^C, typed on the user's (raw) terminal
        terms.run_until(lambda: terms.relay.finished and b"got-int" in terms.seen_by_user)
        assert agent.wait(5) == 3
    finally:
        agent.kill()
        agent.wait()
