"""Cost of the in-agent audit hook.

    python benchmarks/bench_hook.py [--runs N]

Per event (inside one hooked agent, against a HookServer in this process):
an audit event the hook ignores, an `open` reported as a note, and an
os.environ read and a sqlite3 SELECT allowed by the supervisor: a round trip
each, or answered from the hook's cache when the supervisor marks plain
allows cacheable.  Start-up: a
trivial agent under plain `python` against the bootstrap, median of N runs.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agentsup.events import Response
from agentsup.hooks import bootstrap
from agentsup.supervision.hookserver import HookReply, HookRequest, HookServer

ALLOW = HookReply(True, "bench", "", Response.ALLOW)

PER_EVENT = r"""
import json, os, sys, time
n = int(sys.argv[1])
def per_call(fn, count):
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count * 1e6
results = {
    "ignored event": per_call(lambda: sys.audit("bench.ignored", 1), n),
    "open (note)": per_call(lambda: open("/dev/null", "rb").close(), n // 10),
    "env read (check)": per_call(lambda: os.environ.get("HOME"), n // 10),
}
import sqlite3
conn = sqlite3.connect(":memory:")
results["sqlite SELECT (check)"] = per_call(lambda: conn.execute("SELECT 1").fetchall(), n // 10)

print(json.dumps(results))
"""


class ThreadedServer:
    def __init__(self, path: Path, cache: bool = False) -> None:
        self.server = HookServer(
            path, self._decide, cacheable=(lambda request, reply: True) if cache else None
        )
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _decide(self, request: HookRequest) -> HookReply:
        self.count += 1
        return ALLOW

    def _loop(self) -> None:
        while not self._stop.is_set():
            fds = self.server.fds()
            writable = [fd for fd in fds if self.server.want_write(fd)]
            readable, ready, _ = select.select(fds, writable, [], 0.05)
            for fd in {*readable, *ready}:
                self.server.on_ready(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.server.close()


def per_event(env: dict[str, str], hooked: bool, n: int) -> dict[str, float]:
    script_env = dict(env)
    if not hooked:
        script_env = {k: v for k, v in env.items() if not k.startswith("AGENTSUP_")}
    out = subprocess.run(
        [sys.executable, "-c", PER_EVENT, str(n)],
        env=script_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def startup(argv: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        served = ThreadedServer(Path(tmp, "hook.sock"))
        caching = ThreadedServer(Path(tmp, "cache.sock"), cache=True)
        agent = Path(tmp, "agent.py")
        agent.write_text("print('hello')\n")
        env = {**os.environ, **bootstrap.environment(Path(tmp, "hook.sock"), "bench")}
        cache_env = {**env, **bootstrap.environment(Path(tmp, "cache.sock"), "bench")}
        plain_env = {k: v for k, v in env.items() if not k.startswith("AGENTSUP_")}
        try:
            bare = per_event(env, False, args.events)
            hooked = per_event(env, True, args.events)
            cached = per_event(cache_env, True, args.events)
            print("per event (µs per call)          bare    hooked   cached")
            for name in bare:
                print(f"  {name:28s} {bare[name]:8.2f} {hooked[name]:8.2f} {cached[name]:8.2f}")
            plain = startup([sys.executable, str(agent)], plain_env, args.runs)
            boot = startup(bootstrap.command(agent), env, args.runs)
            print(
                f"start-up, median of {args.runs} (ms):  plain {plain:.1f}  bootstrap {boot:.1f}"
                f"  overhead {boot - plain:.1f}"
            )
        finally:
            served.close()
            caching.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
