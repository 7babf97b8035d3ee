#!/usr/bin/env python3
"""The shared workload bare, under the floor of mediation, and under agentsup.

    python benchmarks/bench_floor.py [--runs 5] [--tmpfs] [--policy strict]

"Floor" is `floor_mediator.c`, built here with the C compiler: agentsup's own
seccomp filter (the same syscalls go to user space), answered by a few lines
of C that do the least anything could: an absolute open is opened and
injected (ADDFD), an unlink or rmdir done, the rest let through, on one CPU
with the agent, with no policy, no Landlock, no namespaces and no broker.
So its ratio is what mediating these syscalls in user space costs on this
machine at all, and agentsup's ratio beside it shows what its decisions
and its layers add.  Bare, floor and agentsup alternate in the same run;
the medians of the workload's own phase timers are printed, as ratios to
bare.
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
from pathlib import Path

from _scratch import agentsup_env, floor_command, remove

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE.parent.parent / "shared" / "bench" / "workload.py"
PHASES = ("fs", "spawn", "open", "total")


def phases(command: list[str], env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr}")
    found: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--policy", default="strict")
    parser.add_argument("--tmpfs", action="store_true", help="the workspace on a tmpfs (root)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentsup-floor-"))
    try:
        if args.tmpfs:
            mount = ["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(root)]
            subprocess.run(mount, check=True)
        floor = floor_command(root)
        workspace = root / "workspace"
        workspace.mkdir()
        (root / "home").mkdir()
        env = agentsup_env(root)
        script = workspace / "workload.py"
        shutil.copy(WORKLOAD, script)
        workload = [sys.executable, str(script), "--base", str(workspace / "fs")]
        commands = {
            "bare": workload,
            "floor": [*floor, *workload],
            "agentsup": [
                sys.executable, "-m", "agentsup", "run", "--policy", args.policy,
                "--workspace", str(workspace), "--id", "floor", "--", *workload,
            ],
        }  # fmt: skip
        results: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
        phases(workload, env)  # the page cache
        for _ in range(args.runs):
            for name, command in commands.items():
                results[name].append(phases(command, env))
    finally:
        if args.tmpfs:
            subprocess.run(["umount", str(root)], check=False)
        remove(root)

    median = {
        name: {phase: statistics.median(run[phase] for run in runs) for phase in PHASES}
        for name, runs in results.items()
    }
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.runs} runs each, "
        f"policy {args.policy}, workspace on {'tmpfs' if args.tmpfs else 'disk'}"
    )
    print(f"{'':8} {'bare s':>8} {'floor s':>8} {'ratio':>6} {'agentsup s':>11} {'ratio':>6}")
    for phase in PHASES:
        bare, floor, ours = (median[name][phase] for name in ("bare", "floor", "agentsup"))
        row = f"{phase:8} {bare:8.3f} {floor:8.3f} {floor / bare:6.2f}"
        print(f"{row} {ours:11.3f} {ours / bare:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
