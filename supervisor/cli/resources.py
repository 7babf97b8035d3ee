"""What an agent's process tree uses, read with psutil for `agentsup ps` and `top`.

The supervisor's `ps` reply lists the pids of each agent's tree (its cgroup,
or every process below its trampoline); this module adds up, over those processes, CPU
time and CPU share, resident memory, storage I/O and open network
connections.  A process that ends between listing and reading simply stops
counting.  Values psutil may not read (another user's I/O counters) are
None, shown as `-`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import psutil


@dataclass
class TreeUsage:
    """What an agent's process tree uses, summed over its processes."""

    processes: int = 0
    cpu_seconds: float = 0.0
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    read_bytes: int | None = 0
    write_bytes: int | None = 0
    connections: list[dict[str, object]] | None = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "processes": self.processes,
            "cpu_seconds": round(self.cpu_seconds, 2),
            "cpu_percent": round(self.cpu_percent, 1),
            "rss_bytes": self.rss_bytes,
            "read_bytes": self.read_bytes,
            "write_bytes": self.write_bytes,
            "connections": self.connections,
        }


def human_bytes(value: object) -> str:
    """`512B`, `1.5K`, `23M`, `1.2G`; `-` when unknown."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M", "G", "T"):
        if amount < 1024 or unit == "T":
            if unit == "B":
                return f"{int(amount)}B"
            return f"{amount:.1f}{unit}" if amount < 10 else f"{amount:.0f}{unit}"
        amount /= 1024
    return "-"  # unreachable


def _address(addr: tuple[str, int] | tuple[()]) -> str:
    if not addr:
        return ""
    ip, port = addr[0], addr[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# /proc/net/tcp `st` field: the TCP states an operator looks for.
_TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
    "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def _hex_address(text: str) -> str:
    """`0100007F:1F90` (or its 32-hex-digit IPv6 form) as `127.0.0.1:8080` / `[::1]:8080`."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host (little-endian) order.
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET6 if len(packed) == 16 else socket.AF_INET
    return _address((socket.inet_ntop(family, packed), int(port, 16)))


def _connections(process: psutil.Process) -> list[dict[str, object]]:
    """The process's inet sockets, read in its own network namespace.

    psutil reads /proc/net of the caller's namespace, where the sockets of an
    agent in a network namespace of its own do not appear; /proc/PID/net is
    the process's.
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{process.pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{process.pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    found: list[dict[str, object]] = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/{process.pid}/net/{proto}") as table:
                lines = table.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[9] not in inodes:
                continue
            remote = _hex_address(fields[2])
            found.append(
                {
                    "pid": process.pid,
                    "local": _hex_address(fields[1]),
                    "remote": "" if remote.endswith(":0") else remote,
                    "status": _TCP_STATES.get(fields[3], "NONE") if proto[:3] == "tcp" else "NONE",
                }
            )
    return found


class UsageSampler:
    """Adds up the use of a set of pids; CPU % is over the time since the last sample.

    psutil's per-process CPU % needs two readings, so the sampler keeps the
    Process objects between calls (`top`).  A one-off `ps` passes
    `lifetime_s` instead and gets the average since the agent started.
    """

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process:
        known = self._processes.get(pid)
        if known is not None and known.is_running():
            return known
        process = psutil.Process(pid)
        process.cpu_percent(None)  # the first reading only starts the clock
        self._processes[pid] = process
        return process

    def _live(self, pids: Iterable[int]) -> Iterator[psutil.Process]:
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                yield self._process(pid)

    def sample(self, pids: Iterable[int], lifetime_s: float | None = None) -> TreeUsage:
        usage = TreeUsage()
        for process in self._live(pids):
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    cpu = process.cpu_percent(None)
                    rss = process.memory_info().rss
            except psutil.Error:
                continue
            usage.processes += 1
            usage.cpu_seconds += times.user + times.system
            usage.cpu_percent += cpu
            usage.rss_bytes += rss
            usage.read_bytes, usage.write_bytes = self._io(process, usage)
            if usage.connections is not None:
                try:
                    usage.connections.extend(_connections(process))
                except PermissionError:
                    usage.connections = None
                except OSError:
                    pass  # gone meanwhile
        if lifetime_s is not None and lifetime_s > 0:
            usage.cpu_percent = 100.0 * usage.cpu_seconds / lifetime_s
        return usage

    @staticmethod
    def _io(process: psutil.Process, usage: TreeUsage) -> tuple[int | None, int | None]:
        if usage.read_bytes is None or usage.write_bytes is None:
            return None, None
        try:
            counters = process.io_counters()
        except (psutil.AccessDenied, AttributeError):
            return None, None
        except psutil.Error:
            return usage.read_bytes, usage.write_bytes
        return usage.read_bytes + counters.read_bytes, usage.write_bytes + counters.write_bytes

    def forget_gone(self, pids: Iterable[int]) -> None:
        """Drop the Process objects of pids that are no longer listed."""
        keep = set(pids)
        for pid in list(self._processes):
            if pid not in keep:
                del self._processes[pid]
