"""The one event loop: epoll over every fd the supervisor owns, plus timers.

Notification listeners, pidfds, the control socket, the hook socket and the
signal wake-up pipe all register here.  Nothing else blocks.

A callback may name its `Owner` (an agent).  When one raises, the loop hands
the error to that owner, which fails closed (the agent is killed, on record),
and goes on serving everyone else: under the daemon, a bug that one agent's
input reaches ends that agent, not the others.  An error in a callback with
no owner still ends the loop: nothing is known to be safe to go on with.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Callback = Callable[[], None]
# A reader gets the epoll event mask, so it can tell data (EPOLLIN) from a
# peer that went away (EPOLLHUP/EPOLLERR).
ReaderCallback = Callable[[int], None]


_LONGEST_WAIT_S = 3600.0


class Owner(Protocol):
    """Whose callback it is: told when one of its callbacks raised."""

    def fail_closed(self, error: Exception) -> None: ...


class FdComponent(Protocol):
    def fds(self) -> list[int]: ...

    def on_ready(self, fd: int) -> None: ...


@dataclass(order=True)
class Timer:
    """A callback the loop calls at its deadline (ties go in the order they were set)."""

    deadline: float
    seq: int
    callback: Callback = field(compare=False)
    owner: Owner | None = field(default=None, compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._epoll = select.epoll()
        self._readers: dict[int, tuple[ReaderCallback, Owner | None]] = {}
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._after_batch: list[Callback] = []
        self._signal_handlers: dict[int, Callback] = {}
        self._wakeup_r = -1
        self._wakeup_w = -1

    # -- fds ------------------------------------------------------------------

    def add_reader(
        self,
        fd: int,
        callback: ReaderCallback,
        mask: int = select.EPOLLIN,
        owner: Owner | None = None,
    ) -> None:
        """Call `callback(events)` whenever `fd` is ready for `mask` (input by default)."""
        self._readers[fd] = (callback, owner)
        self._epoll.register(fd, mask)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def attach(self, component: FdComponent, owner: Owner | None = None) -> None:
        """Drive a component whose set of fds changes (a socket server and its peers).

        After every `on_ready` the loop re-reads `fds()` and registers the
        difference; a fd the component `want_write`s also waits for EPOLLOUT.
        """
        registered: dict[int, int] = {}

        def sync() -> None:
            wanted = set(component.fds())
            for fd in set(registered) - wanted:
                self.remove_reader(fd)
                del registered[fd]
            want_write = getattr(component, "want_write", None)
            for fd in wanted:
                mask = select.EPOLLIN
                if want_write is not None and want_write(fd):
                    mask |= select.EPOLLOUT
                if fd not in registered:
                    self._readers[fd] = (functools.partial(ready, fd), owner)
                    self._epoll.register(fd, mask)
                elif registered[fd] != mask:
                    self._epoll.modify(fd, mask)
                registered[fd] = mask

        def ready(fd: int, _events: int) -> None:
            component.on_ready(fd)
            sync()

        sync()

    # -- timers -----------------------------------------------------------------

    def call_later(self, delay: float, callback: Callback, owner: Owner | None = None) -> Timer:
        timer = Timer(self.clock() + delay, next(self._seq), callback, owner)
        heapq.heappush(self._timers, timer)
        return timer

    def after_each_batch(self, callback: Callback) -> None:
        """Run `callback` after every batch of ready fds (the audit log's fsync point)."""
        self._after_batch.append(callback)

    # -- signals ------------------------------------------------------------------

    def on_signal(self, signum: int, callback: Callback) -> None:
        """Run `callback` in the loop (not in a signal handler) when `signum` arrives."""
        if self._wakeup_r < 0:
            self._wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
            self._wakeup_w = wakeup_w
            self.add_reader(self._wakeup_r, lambda _events: self._drain_signals())
        self._signal_handlers[signum] = callback
        signal.signal(signum, lambda *_: None)

    def _drain_signals(self) -> None:
        try:
            data = os.read(self._wakeup_r, 512)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler()

    # -- running -------------------------------------------------------------------

    def _run_due_timers(self) -> float | None:
        now = self.clock()
        while self._timers:
            timer = self._timers[0]
            if timer.cancelled:
                heapq.heappop(self._timers)
                continue
            if timer.deadline > now:
                return timer.deadline - now
            heapq.heappop(self._timers)
            try:
                timer.callback()
            except Exception as exc:
                if timer.owner is None:
                    raise
                timer.owner.fail_closed(exc)
            now = self.clock()
        return None

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            timeout = self._run_due_timers()
            if done():
                break
            try:
                # epoll takes at most 2**31 ms: a timer weeks away (a policy's
                # max_runtime_seconds) is waited for an hour at a time.
                wait = -1 if timeout is None else min(max(timeout, 0.0), _LONGEST_WAIT_S)
                ready = self._epoll.poll(wait)
            except InterruptedError:
                ready = []
            for fd, events in ready:
                reader = self._readers.get(fd)
                if reader is None:
                    continue
                callback, owner = reader
                try:
                    callback(events)
                except Exception as exc:
                    if owner is None:
                        raise
                    # Not again: a fd that stays ready would fail it in a loop.
                    self.remove_reader(fd)
                    owner.fail_closed(exc)
            for after in self._after_batch:
                after()

    def close(self) -> None:
        if self._wakeup_r >= 0:
            signal.set_wakeup_fd(-1)
            for signum in self._signal_handlers:
                signal.signal(signum, signal.SIG_DFL)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = -1
        self._epoll.close()
