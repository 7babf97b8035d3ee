"""Where an agent runs relative to its supervisor: `run --cpus auto|all|shared`.

Every mediated syscall is a ping-pong between the agent and the supervisor.
On one CPU each hand-over is a context switch; across CPUs it is a wake-up
of an idle CPU, which in a VM costs an IPI and a halt exit each way
(DESIGN.md §3: ~15 µs against ~100 µs).  So a syscall-heavy agent is 2-3x
faster sharing its supervisor's CPU, while an agent that computes in
parallel wants every CPU.

With the broker's native path the hand-overs are between the agent and its
broker, both in the agent's tree: sharing one CPU helps them the same way,
and the supervisor, which is then mostly told what the broker did, keeps off
that CPU while it answers few syscalls itself (`supervisor_apart`): its own
work (exec notices, the audit log) runs beside the agent's, not in turn.

`auto` (the default where a cgroup is available) starts the agent's tree on
the supervisor's CPU (most commands an agent runs are short and make
mediated syscalls), watches it twice a second, and moves it: onto every CPU
as soon as its tasks queue for the CPU (cgroup CPU pressure) or it goes
quiet, and back while it makes many mediated syscalls without using more
than about one core.  `shared` always shares; `all` never does.

Placement is agentsup's own business, not the agent's: an agent asking
which CPUs it may use (sched_getaffinity: nproc, `make -j`, a runtime
sizing its thread pool) learns the CPUs agentsup itself started with
(`all_cpus`), as it would bare, while placement keeps it on one (the
broker's native path answers it, or the mediator; their comments say how).
And the CPUs an agent gives itself (taskset, sched_setaffinity) stay its
own: `place` moves only the threads whose CPUs are still those it gave.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import NamedTuple

from ..kernel import fastpath
from ..kernel.proc import start_time

SAMPLE_SECONDS = 0.5


class Sample(NamedTuple):
    """One second of the agent's life."""

    notifications_per_s: float
    cores_used: float  # CPU time of the tree per wall second
    stalled: float  # fraction of the second some task of the tree waited for a CPU
    # Of the notifications, those the supervisor itself answered (the agent waiting).
    answered_per_s: float = 0.0


class Thresholds(NamedTuple):
    """When `should_share` moves the agent between one CPU and all of them."""

    share_above_rate: float = 500.0
    # The agent and its broker take turns: together about one core.
    share_below_cores: float = 1.2
    # The supervisor, the broker and the agent hand over to each other: some queueing is theirs.
    spread_above_stall: float = 0.5
    spread_below_rate: float = 100.0
    # With the native path the broker answers in the agent's tree, and what the
    # supervisor does is mostly told, not asked (exec notices, the audit log):
    # on a CPU of its own it runs beside the agent.  Past this many answers of
    # its own a second, the agent waits on it, and a wake-up across CPUs costs
    # more than sharing (a `#!` script's exec: 20% slower apart).
    apart_below_answers: float = 100.0


_THRESHOLDS = Thresholds()


def should_share(shared_now: bool, sample: Sample, limits: Thresholds = _THRESHOLDS) -> bool:
    """Pure: share the supervisor's CPU for the next second?"""
    if shared_now:
        # Tasks queueing for the one CPU means the agent wants more of them.
        if sample.stalled > limits.spread_above_stall:
            return False
        return sample.notifications_per_s >= limits.spread_below_rate
    # Its tasks already queue for CPUs (the machine is busy with others, so it
    # gets less than a core): one CPU would only make them queue longer.
    return (
        sample.notifications_per_s >= limits.share_above_rate
        and sample.cores_used < limits.share_below_cores
        and sample.stalled <= limits.spread_above_stall
    )


def supervisor_apart(
    native: bool, cpus: int, sample: Sample | None, limits: Thresholds = _THRESHOLDS
) -> bool:
    """Pure: while the agent shares one CPU, keep the supervisor off it?"""
    if not native or cpus < 2:
        return False  # the Python path: every syscall is a hand-over to the supervisor
    return sample is None or sample.answered_per_s < limits.apart_below_answers


def _started_on() -> frozenset[int]:
    # The native module took them when it was imported, with agentsup's
    # first modules: before `--cpus shared` or any placement moved this
    # process.  Without it, now (the same, but under `--cpus shared`).
    if fastpath.native is not None:
        return frozenset(fastpath.native.started_on())
    return frozenset(os.sched_getaffinity(0))


_STARTED_ON = _started_on()


def all_cpus() -> set[int]:
    """The CPUs agentsup started with (`taskset` on `agentsup run` included):
    those its agents would have bare, and get when spread."""
    return set(_STARTED_ON)


def cpu_mask(cpus: Iterable[int], size: int) -> bytes:
    """`cpus` as the kernel's mask of `size` bytes (sched_getaffinity's buffer)."""
    mask = bytearray(size)
    for cpu in cpus:
        if cpu < size * 8:
            mask[cpu // 8] |= 1 << (cpu % 8)
    return bytes(mask)


# What `place` gave each thread: tid -> (its start time, its CPUs as the kernel
# then said, the call that gave them).  A thread whose CPUs differ from them
# now chose its own (taskset, sched_setaffinity): it is left alone from then
# on.  So is a thread born since whose CPUs are not those its tree was last
# given (it inherited its creator's choice).  Not told apart: a thread that
# chose exactly the CPUs placement gave it (on a 2-CPU machine, the shared
# one while it shares): it is moved with the rest.
_given: dict[int, tuple[int, frozenset[int], int]] = {}
_calls = 0


def place(pids: set[int], cpus: set[int], supervisor: set[int] | None = None) -> None:
    """Set the affinity of every thread of `pids` that did not choose its own
    CPUs, and of the supervisor itself (`supervisor`, or the same `cpus`)."""
    global _calls
    os.sched_setaffinity(0, supervisor or cpus)
    _calls += 1
    threads: list[tuple[int, int]] = []
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for name in tids:
            start = start_time(tid := int(name))
            if start is not None:
                threads.append((tid, start))
    # What this tree was given last (the trampoline and the broker always
    # take it): what a thread born since inherited, unless it was a choice.
    known = {
        tid: given for tid, start in threads if (given := _given.get(tid)) and given[0] == start
    }
    previous = max(known.values(), key=lambda given: given[2])[1] if known else None
    for tid, start in threads:
        try:
            now = frozenset(os.sched_getaffinity(tid))
            given = known.get(tid)
            expected = given[1] if given else previous
            if expected is not None and now != expected:
                continue  # its own choice
            os.sched_setaffinity(tid, cpus)
            _given[tid] = (start, frozenset(os.sched_getaffinity(tid)), _calls)
        except OSError:
            continue
    ours = {tid for tid, _start in threads}
    for tid, (start, _cpus, _call) in list(_given.items()):
        if tid not in ours and start_time(tid) != start:
            del _given[tid]  # gone (or its number taken by another)


class CgroupCpu:
    """CPU time and CPU pressure of a cgroup v2 group, as running counters."""

    def __init__(self, group_dir: str) -> None:
        self._stat = os.path.join(group_dir, "cpu.stat")
        self._pressure = os.path.join(group_dir, "cpu.pressure")

    def available(self) -> bool:
        return os.path.exists(self._stat) and os.path.exists(self._pressure)

    def read(self) -> tuple[float, float]:
        """(CPU seconds used, seconds some task stalled), both since the group began."""
        usage = stalled = 0.0
        with contextlib.suppress(OSError):
            with open(self._stat) as stat:
                for line in stat:
                    if line.startswith("usage_usec "):
                        usage = int(line.split()[1]) / 1e6
                        break
            with open(self._pressure) as pressure:
                for line in pressure:
                    if line.startswith("some "):
                        stalled = int(line.rsplit("total=", 1)[1]) / 1e6
                        break
        return usage, stalled
