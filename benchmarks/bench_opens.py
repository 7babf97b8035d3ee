#!/usr/bin/env python3
"""The cost of one mediated, plainly allowed open: bare, native path, Python path.

    python benchmarks/bench_opens.py [--opens 20000] [--runs 5] [--policy strict]

An agent opens and closes one workspace file `--opens` times and reports the
time per open it measured itself (start-up excluded).  It runs bare, under
`agentsup run` with the broker's native path, and with `AGENTSUP_FASTPATH=0`
(the Python supervisor answers every open), alternating, in the same run;
the medians and the added microseconds per open are printed.  The first
open is decided by the policy; the rest are answered from the allow cache
(with the opt-in read lane, `AGENTSUP_READ_LANE=1`, by the kernel: the
first open left an ignore mark on the file).

"native -S" is the native path with the agent's Python started with -S: no
site, so no agentsup audit hook in it (the hook sees every open too).  The
difference to "native" is the hook's share of the added time; the rest is
the broker's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from _scratch import agentsup_env, remove, scratch_root

AGENT = """
import os, sys, time
path, count = sys.argv[1], int(sys.argv[2])
os.close(os.open(path, os.O_RDONLY))
started = time.perf_counter()
for _ in range(count):
    os.close(os.open(path, os.O_RDONLY))
print((time.perf_counter() - started) / count * 1e6)
"""


def per_open(command: list[str], env: dict[str, str]) -> float:
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr}")
    return float(proc.stdout.split()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opens", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--policy", default="strict")
    args = parser.parse_args()

    root = scratch_root()
    workspace = root / "workspace"
    script = workspace / "opens.py"
    script.write_text(AGENT)
    target = workspace / "data.txt"
    target.write_text("data\n")
    env = agentsup_env(root)
    python = sys.executable  # the interpreter itself, never a wrapper script such as a pyenv shim
    agent = [python, str(script), str(target), str(args.opens)]
    run = [
        sys.executable, "-m", "agentsup", "run", "--policy", args.policy,
        "--workspace", str(workspace), "--id", "bench", "--",
    ]  # fmt: skip
    supervised = [*run, *agent]
    unhooked = [*run, python, "-S", *agent[1:]]
    native = {**env, "AGENTSUP_FASTPATH": "1", "AGENTSUP_READ_LANE": "0"}
    kinds = {
        "bare": (agent, env),
        "native": (supervised, native),
        "native -S": (unhooked, native),
        "read lane": (supervised, {**native, "AGENTSUP_READ_LANE": "1"}),
        "python": (supervised, {**env, "AGENTSUP_FASTPATH": "0"}),
    }
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for _ in range(args.runs):
            for kind, (command, kind_env) in kinds.items():
                results[kind].append(per_open(command, kind_env))
    finally:
        remove(root)
    bare = statistics.median(results["bare"])
    print(f"{args.opens} opens of one file, {args.runs} runs each, policy {args.policy}, "
          f"{os.cpu_count()} cpus")  # fmt: skip
    print(f"{'':10} {'µs/open':>9} {'added µs':>9} {'ratio':>7}")
    for kind in kinds:
        value = statistics.median(results[kind])
        print(f"{kind:10} {value:9.1f} {value - bare:9.1f} {value / bare:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
