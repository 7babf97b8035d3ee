#!/usr/bin/env python3
"""The cost of one mediated exec: a shell runs `/bin/true` many times.

    python benchmarks/bench_execs.py [--execs 300] [--runs 5] [--policy strict]

The loop runs bare and under `agentsup run`, alternating; an empty run
(`sh -c true` under `agentsup run`) in the same round is its start-up, so

    added per exec = (supervised - empty - bare) / execs

Each exec is decided (`process_spawn` and `shell_execute`) and its new image
checked at its first syscall; with the broker's native path both happen in
the broker, `AGENTSUP_FASTPATH=0` shows the Python path's cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _scratch import agentsup_env, remove, scratch_root


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {command}\n{proc.stderr.decode()}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--policy", default="strict")
    args = parser.parse_args()

    root = scratch_root()
    env = agentsup_env(root)
    loop = ["sh", "-c", f"i=0; while [ $i -lt {args.execs} ]; do /bin/true; i=$((i+1)); done"]
    run = [
        sys.executable, "-m", "agentsup", "run", "--policy", args.policy,
        "--workspace", str(root / "workspace"), "--id", "bench", "--",
    ]  # fmt: skip
    paths = {"native": "1", "python": "0"}
    names = ("bare", *paths, *(f"{p} empty" for p in paths))
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for _ in range(args.runs):
            times["bare"].append(timed(loop, env))
            for name, switch in paths.items():
                path_env = {**env, "AGENTSUP_FASTPATH": switch}
                times[f"{name} empty"].append(timed([*run, "sh", "-c", "true"], path_env))
                times[name].append(timed([*run, *loop], path_env))
    finally:
        remove(root)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.runs} runs each, "
        f"{args.execs} execs of /bin/true, policy {args.policy}"
    )
    print(f"bare           {median['bare'] / args.execs * 1e3:6.3f} ms per exec")
    for name in paths:
        added = (median[name] - median[f"{name} empty"] - median["bare"]) / args.execs
        print(f"{name:14} {added * 1e3:+6.3f} ms per exec")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
