"""An exec's arguments, read from the agent's memory: in one piece or string by string.

The strings are read here from this process's own memory, laid out the ways
an agent could lay them out.  Every layout reads back exactly what was
written, which is what the kernel will copy.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import types
from collections.abc import Callable, Iterator

import pytest

from agentsup.supervision import mediator
from agentsup.supervision.broker import BrokerClient

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


@pytest.fixture
def reader() -> Iterator[mediator.Mediator]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        judge = types.SimpleNamespace(allow_cache=set())
        reading = mediator.Mediator(-1, judge, lambda tid: tid, BrokerClient(ours))  # type: ignore[arg-type]
        yield reading
        reading.close()


@pytest.fixture
def pages() -> Iterator[Callable[[int], int]]:
    """Fresh anonymous pages of our own: `pages(n)` is the address of n of them."""
    mapped: list[tuple[int, int]] = []

    def take(count: int) -> int:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        base = _libc.mmap(None, count * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
        assert base not in (None, ctypes.c_void_p(-1).value)
        mapped.append((base, count * PAGE))
        return int(base)

    yield take
    for base, size in mapped:
        _libc.munmap(base, size)


def _put(address: int, text: bytes) -> int:
    ctypes.memmove(address, text + b"\0", len(text) + 1)
    return address


def _read(reader: mediator.Mediator, addresses: list[int]) -> list[str]:
    array = (ctypes.c_uint64 * (len(addresses) + 1))(*addresses, 0)
    return reader._argv(os.getpid(), ctypes.addressof(array))


def test_strings_side_by_side_are_read_back(
    reader: mediator.Mediator, pages: Callable[[int], int]
) -> None:
    at = pages(1)
    words = [b"git", b"commit", b"-q", b"-m", b"caf\xe9 \xff", b""]
    addresses = []
    for word in words:
        addresses.append(_put(at, word))
        at += len(word) + 1
    assert _read(reader, addresses) == [os.fsdecode(w) for w in words]


def test_strings_far_apart_or_long_are_read_one_by_one(
    reader: mediator.Mediator, pages: Callable[[int], int]
) -> None:
    base = pages(16)
    far = _put(base + 15 * PAGE, b"far")
    long = _put(base + PAGE, b"x" * 3000)  # runs past what one piece takes after the last
    near = _put(base, b"near")
    assert _read(reader, [near, long]) == ["near", "x" * 3000]
    assert _read(reader, [near, far, near]) == ["near", "far", "near"]


def test_a_last_string_at_the_end_of_the_mapping_is_read(
    reader: mediator.Mediator, pages: Callable[[int], int]
) -> None:
    """One piece would run into the unmapped page after it: each string is read alone."""
    base = pages(2)
    assert _libc.munmap(base + PAGE, PAGE) == 0  # the second page is gone
    first = _put(base + PAGE - 11, b"first")
    last = _put(base + PAGE - 5, b"last")
    assert _read(reader, [first, last]) == ["first", "last"]


def test_no_argv_is_an_empty_one(reader: mediator.Mediator) -> None:
    assert reader._argv(os.getpid(), 0) == []
    assert _read(reader, []) == []


def test_an_impossible_pointer_fails_like_the_kernel(reader: mediator.Mediator) -> None:
    with pytest.raises(OSError):
        _read(reader, [1 << 63])
