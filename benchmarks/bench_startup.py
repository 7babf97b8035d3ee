#!/usr/bin/env python3
"""Start-up of `agentsup run -- /bin/true` against a bare `/bin/true`, in the same run.

    python benchmarks/bench_startup.py [--runs 21] [--policy strict] [--cold]

Runs bare `/bin/true` and `agentsup run --workspace W -- /bin/true`,
alternating, and prints the median of each, their difference in ms and
their ratio.  One supervised run before the timed ones fills the state
directory's caches (the compiled policy, the seccomp program), as any
earlier run on the machine would; `--cold` empties them before each run.
Also printed: a bare `python -c pass`, the floor no Python program goes under.
HOME is a fresh directory unless `--own-home`: an open of a file with more
than one link walks the home's protected files once (agent.ProtectedInodes),
which costs what the home holds, not what start-up does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from _scratch import agentsup_env, scratch_root


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--policy", default="strict")
    parser.add_argument("--cold", action="store_true", help="empty the caches before each run")
    parser.add_argument("--own-home", action="store_true", help="keep the caller's HOME")
    args = parser.parse_args()

    root = scratch_root()
    workspace = root / "workspace"
    state = root / "state"
    env = agentsup_env(root, os.environ.get("HOME", "/") if args.own_home else None)
    true = shutil.which("true") or "/bin/true"
    bare = [true]
    python = [sys.executable, "-c", "pass"]
    supervised = [
        sys.executable,
        "-m",
        "agentsup",
        "run",
        "--policy",
        args.policy,
        "--workspace",
        str(workspace),
        "--id",
        "bench",
        "--",
        true,
    ]
    try:
        timed(supervised, env)  # the caches, and the page cache
        times: dict[str, list[float]] = {"bare": [], "python": [], "agentsup": []}
        for _ in range(args.runs):
            times["bare"].append(timed(bare, env))
            times["python"].append(timed(python, env))
            if args.cold:
                shutil.rmtree(state / "cache", ignore_errors=True)
            times["agentsup"].append(timed(supervised, env))
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)

    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.runs} runs each, "
        f"policy {args.policy}, caches {'emptied before each run' if args.cold else 'warm'}, "
        f"HOME {env['HOME']}"
    )
    for name in ("bare", "python", "agentsup"):
        print(f"{name:10} {median[name] * 1e3:9.1f} ms")
    difference = (median["agentsup"] - median["bare"]) * 1e3
    print(
        f"agentsup run -- {true}: +{difference:.1f} ms over bare, "
        f"ratio {median['agentsup'] / median['bare']:.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
