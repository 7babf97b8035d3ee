"""Victim: apply a Landlock floor, then try each probe and report its errno.

Usage: ll_probe.py JSON, where JSON is {"plan": plan_floor kwargs (lists for
tuples and sets), "probes": [[kind, arg], ...]}.  Prints a JSON list with one
errno per probe (0 = it worked).  Runs as its own process because Landlock
cannot be undone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from agentsup.kernel.landlock import apply_floor, landlock_abi
from agentsup.policy.floor import plan_floor


def _create(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _exec(path: str) -> None:
    subprocess.run([path], check=True)


def _connect(port: str) -> None:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
        pass


def _kill(pid: str) -> None:
    os.kill(int(pid), 0)


def _abstract(name: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect("\0" + name)


def _read(path: str) -> None:
    with open(path, "rb") as f:
        f.read(1)


PROBES = {
    "create": _create,
    "exec": _exec,
    "connect": _connect,
    "kill": _kill,
    "abstract": _abstract,
    "read": _read,
}


def main() -> int:
    spec = json.loads(sys.argv[1])
    kwargs = spec["plan"]
    for key in ("read_roots", "write_roots", "exec_roots"):
        if kwargs[key] is not None:
            kwargs[key] = tuple(kwargs[key])
    for key in ("connect_ports", "bind_ports"):
        if kwargs[key] is not None:
            kwargs[key] = frozenset(kwargs[key])
    apply_floor(plan_floor(abi=landlock_abi(), **kwargs))
    results = []
    for kind, arg in spec["probes"]:
        try:
            PROBES[kind](arg)
            results.append(0)
        except OSError as exc:
            results.append(exc.errno or -1)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
