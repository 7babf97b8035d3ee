#!/usr/bin/env python3
"""What the walls cost: start-up and a mediated open, against bare, in the same run.

    python benchmarks/bench_walls.py [--runs 7] [--opens 20000] [--policy strict]

Start-up: `agentsup run -- /bin/true` (trampoline, namespaces, mounts,
capability drop, Landlock, seccomp, broker) against `/bin/true`.  Open: a
Python loop of `os.open` + `os.close` on a workspace file timed inside the
agent, under `agentsup run` and bare; every supervised open is a round trip
to the supervisor and its broker (resolve, decide, reopen, ADDFD).  Runs
alternate, and medians are printed with the spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OPEN_LOOP = """
import os, sys, time
path, count = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
for _ in range(count):
    os.close(os.open(path, os.O_RDONLY))
print(time.perf_counter() - start)
"""


def wall(command: list[str], env: dict[str, str], cwd: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    return elapsed, done.stdout


def spread(values: list[float]) -> str:
    return f"{min(values):.4g}-{max(values):.4g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--opens", type=int, default=20000)
    parser.add_argument("--policy", default="strict")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(
        prefix="agentsup-bench-", dir="/var/lib" if os.geteuid() == 0 else None
    ) as root:
        workspace = Path(root) / "workspace"
        workspace.mkdir()
        (workspace / "loop.py").write_text(OPEN_LOOP)
        target = workspace / "data.txt"
        target.write_text("x" * 100)
        env = dict(os.environ)
        for var, sub in (
            ("AGENTSUP_POLICY_DIR", "policies"),
            ("AGENTSUP_AUDIT_LOG", "log/audit.jsonl"),
            ("AGENTSUP_STATE_DIR", "state"),
            ("AGENTSUP_RUNTIME_DIR", "run"),
        ):
            env[var] = str(Path(root) / "agentsup" / sub)
        (Path(root) / "agentsup" / "policies").mkdir(parents=True)
        supervised = [sys.executable, "-m", "agentsup", "run", "--policy", args.policy, "--"]
        python = [sys.executable, "-S"]
        loop = [*python, "loop.py", str(target), str(args.opens)]
        start_bare: list[float] = []
        start_run: list[float] = []
        open_bare: list[float] = []
        open_run: list[float] = []
        for _ in range(args.runs):
            start_bare.append(wall(["/bin/true"], env, str(workspace))[0])
            start_run.append(wall([*supervised, "/bin/true"], env, str(workspace))[0])
            open_bare.append(float(wall(loop, env, str(workspace))[1].split()[-1]))
            open_run.append(float(wall([*supervised, *loop], env, str(workspace))[1].split()[-1]))
    version = sys.version.split()[0]
    print(f"python {version}, {os.cpu_count()} cpus, {args.runs} runs, policy {args.policy}")
    sb, sr = statistics.median(start_bare), statistics.median(start_run)
    print(
        f"start-up   bare {sb * 1000:7.1f} ms   agentsup {sr * 1000:7.1f} ms   "
        f"+{(sr - sb) * 1000:.0f} ms (agentsup {spread([v * 1000 for v in start_run])} ms)"
    )
    ob, orun = statistics.median(open_bare), statistics.median(open_run)
    per_bare, per_run = ob / args.opens * 1e6, orun / args.opens * 1e6
    print(
        f"open       bare {per_bare:7.1f} us   agentsup {per_run:7.1f} us   "
        f"+{per_run - per_bare:.1f} us per open, {orun / ob:.1f}x "
        f"(agentsup {spread([v / args.opens * 1e6 for v in open_run])} us)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
