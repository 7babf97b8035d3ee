"""The event loop: whose callback failed decides what fails with it.

A callback registered for an owner (an agent) that raises is that owner's
failure alone: the owner is told (it fails closed), and the loop serves
everyone else.  A callback with no owner that raises ends the loop, as
nothing is known to be safe to go on with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agentsup.supervision.loop import EventLoop


class Owner:
    def __init__(self) -> None:
        self.errors: list[Exception] = []

    def fail_closed(self, error: Exception) -> None:
        self.errors.append(error)


def _fail(_events: int = 0) -> None:
    raise RuntimeError("a bug nobody foresaw")


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_an_owned_reader_that_raises_fails_its_owner_and_is_not_called_again(
    loop: EventLoop, pipe: tuple[int, int]
) -> None:
    failing, other = Owner(), Owner()
    r, w = pipe
    served: list[int] = []
    calls: list[int] = []

    def fails(events: int) -> None:
        calls.append(events)
        _fail()

    r2, w2 = os.pipe()
    try:
        loop.add_reader(r, fails, owner=failing)
        loop.add_reader(r2, lambda _events: served.append(len(os.read(r2, 10))), owner=other)
        os.write(w, b"x")  # stays readable: a loop would call it forever
        os.write(w2, b"y")
        loop.call_later(0.05, lambda: os.write(w2, b"z"))
        loop.run_until(lambda: len(served) == 2)
    finally:
        os.close(r2)
        os.close(w2)
    assert len(calls) == 1
    assert [str(e) for e in failing.errors] == ["a bug nobody foresaw"]
    assert other.errors == []
    assert served == [1, 1]


def test_an_owned_timer_that_raises_fails_its_owner_and_the_rest_still_run(
    loop: EventLoop,
) -> None:
    owner = Owner()
    ran: list[str] = []
    loop.call_later(0, _fail, owner=owner)
    loop.call_later(0.01, lambda: ran.append("later"))
    loop.run_until(lambda: bool(ran))
    assert len(owner.errors) == 1
    assert ran == ["later"]


def test_an_attached_component_fails_its_owner(loop: EventLoop, pipe: tuple[int, int]) -> None:
    owner = Owner()
    r, w = pipe

    class Component:
        def fds(self) -> list[int]:
            return [r]

        def on_ready(self, fd: int) -> None:
            _fail()

    loop.attach(Component(), owner=owner)
    os.write(w, b"x")
    loop.call_later(0.05, lambda: None)
    loop.run_until(lambda: bool(owner.errors))
    assert len(owner.errors) == 1


@pytest.mark.parametrize("where", ["reader", "timer"])
def test_a_callback_with_no_owner_that_raises_ends_the_loop(
    loop: EventLoop, pipe: tuple[int, int], where: str
) -> None:
    r, w = pipe
    if where == "reader":
        loop.add_reader(r, _fail)
        os.write(w, b"x")
    else:
        loop.call_later(0, _fail)
    with pytest.raises(RuntimeError, match="a bug nobody foresaw"):
        loop.run_until(lambda: False)


def test_a_timer_weeks_away_is_waited_for(loop: EventLoop, pipe: tuple[int, int]) -> None:
    """epoll cannot wait 25 days at once (OverflowError): a policy's
    max_runtime_seconds of a month must not end the supervisor."""
    r, w = pipe
    ran: list[str] = []
    loop.call_later(30 * 24 * 3600, lambda: ran.append("a month later"))
    loop.add_reader(r, lambda _events: ran.append("input"))
    os.write(w, b"x")
    loop.run_until(lambda: bool(ran))
    assert ran == ["input"]
