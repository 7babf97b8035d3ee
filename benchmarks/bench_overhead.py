#!/usr/bin/env python3
"""Wall-time overhead of `agentsup run` on the shared workload, as a ratio to bare.

    python benchmarks/bench_overhead.py [--runs 5] [--policy strict] [--workload PATH] [--tmpfs]

Runs ../shared/bench/workload.py bare and under `agentsup run`, alternating,
in the same process and on the same machine, and prints the median wall time
of each and their ratio, per workload phase too.  Every file open of the
supervised run goes through the seccomp notifier (the policy's rules decide
each one; Landlock is the floor underneath).  The workspace is in the
temporary directory (on the disk here) by default; `--tmpfs` mounts a tmpfs
for it (root only), where the bare workload is several times faster and the
same per-syscall cost weighs more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_WORKLOAD = HERE.parent.parent / "shared" / "bench" / "workload.py"


def timed(command: list[str], env: dict[str, str]) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr}")
    phases = json.loads(proc.stdout.strip().splitlines()[-1])
    return elapsed, phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--policy", default="strict")
    parser.add_argument("--workload", default=str(DEFAULT_WORKLOAD))
    parser.add_argument(
        "--cpus",
        choices=["auto", "all", "shared"],
        default="auto",
        help="passed to agentsup run --cpus",
    )
    parser.add_argument("--tmpfs", action="store_true", help="the workspace on a tmpfs (root)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="agentsup-bench-"))
    if args.tmpfs:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(root)], check=True)
    workspace = root / "workspace"
    workspace.mkdir()
    env = dict(
        os.environ,
        AGENTSUP_POLICY_DIR=str(root / "policies"),
        AGENTSUP_AUDIT_LOG=str(root / "log" / "audit.jsonl"),
        AGENTSUP_STATE_DIR=str(root / "state"),
        AGENTSUP_RUNTIME_DIR=str(root / "run"),
    )
    # The agent's code lives in its workspace, as under `agentsup demo`; the
    # file the workload opens 5,000 times is that copy of itself.
    script = workspace / "workload.py"
    shutil.copy(args.workload, script)
    workload = [sys.executable, str(script), "--base", str(workspace / "fs")]
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
        "--cpus",
        args.cpus,
        "--",
        *workload,
    ]
    bare_times: list[float] = []
    sup_times: list[float] = []
    bare_phases: list[dict[str, float]] = []
    sup_phases: list[dict[str, float]] = []
    timed(workload, env)  # warm the page cache
    for _ in range(args.runs):
        elapsed, phases = timed(workload, env)
        bare_times.append(elapsed)
        bare_phases.append(phases)
        elapsed, phases = timed(supervised, env)
        sup_times.append(elapsed)
        sup_phases.append(phases)

    bare = statistics.median(bare_times)
    sup = statistics.median(sup_times)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.runs} runs each, "
        f"policy {args.policy}, workspace on {'tmpfs' if args.tmpfs else 'disk'}"
    )
    print(f"{'':10} {'bare s':>9} {'agentsup s':>11} {'ratio':>6}")
    for phase in ("fs", "spawn", "open", "total"):
        b = statistics.median(p[phase] for p in bare_phases)
        s = statistics.median(p[phase] for p in sup_phases)
        print(f"{phase:10} {b:9.3f} {s:11.3f} {s / b:6.2f}")
    print(f"{'wall':10} {bare:9.3f} {sup:11.3f} {sup / bare:6.2f}   (incl. start-up)")
    if args.tmpfs:
        subprocess.run(["umount", str(root)], check=False)
    subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
