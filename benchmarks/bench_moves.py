#!/usr/bin/env python3
"""Renames, bare and under `agentsup run --policy strict`: a file, and a whole tree.

    python benchmarks/bench_moves.py [--runs 5] [--entries 20000] [--policy strict]

A rename is judged by what it renames: a directory's tree is listed by the
broker and each entry compared under its old and new name (the README's
"Rules follow names").  This measures what that costs.  An agent renames
one workspace file back and forth 400 times (the time per rename), and a
directory holding `--entries` entries (100 files to a subdirectory, each
with a `__pycache__`, as a project has) back and forth 4 times (the time
per move).  It runs bare and supervised, alternating, in the same run, and
prints the medians and their ratios; the time is the agent's own
(start-up excluded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _scratch import agentsup_env, remove, scratch_root

AGENT = """
import os, sys, time
os.chdir(sys.argv[1])
started = time.perf_counter()
for _ in range(200):
    os.rename("file", "file2")
    os.rename("file2", "file")
per_file = (time.perf_counter() - started) / 400
started = time.perf_counter()
for _ in range(2):
    os.rename("tree", "tree2")
    os.rename("tree2", "tree")
per_tree = (time.perf_counter() - started) / 4
print(per_file * 1e6, per_tree * 1e3)
"""


def build_tree(workspace: Path, entries: int) -> None:
    (workspace / "file").write_text("x\n")
    tree = workspace / "tree"
    made = 0
    directory = 0
    while made < entries:
        sub = tree / f"d{directory:04d}"
        (sub / "__pycache__").mkdir(parents=True)
        made += 2
        for i in range(min(100, entries - made)):
            (sub / f"m{i:03d}.py").write_text("")
            made += 1
        directory += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--policy", default="strict")
    args = parser.parse_args()

    root = scratch_root()
    workspace = root / "workspace"
    workspace.mkdir(exist_ok=True)
    env = agentsup_env(root)
    build_tree(workspace, args.entries)
    script = workspace / "mover.py"
    script.write_text(AGENT)
    job = [sys.executable, "-S", str(script), str(workspace)]
    supervised = [
        sys.executable, "-m", "agentsup", "run", "--policy", args.policy,
        "--workspace", str(workspace), "--id", "bench", "--",
    ]  # fmt: skip
    results: dict[str, dict[str, list[float]]] = {"file": {}, "tree": {}}
    try:
        for _ in range(args.runs):
            for name, command in (("bare", job), ("agentsup", [*supervised, *job])):
                proc = subprocess.run(command, env=env, capture_output=True, text=True)
                words = proc.stdout.split()
                if proc.returncode != 0 or len(words) != 2:
                    raise SystemExit(f"failed ({proc.returncode}): {name}\n{proc.stderr}")
                results["file"].setdefault(name, []).append(float(words[0]))
                results["tree"].setdefault(name, []).append(float(words[1]))
    finally:
        remove(root)

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.runs} runs each, "
        f"policy {args.policy}, a tree of {args.entries} entries"
    )
    print(f"{'':22} {'bare':>9} {'agentsup':>9} {'added':>9} {'ratio':>7}")
    for step, unit in (("file", "µs"), ("tree", "ms")):
        by_name = results[step]
        bare, ours = statistics.median(by_name["bare"]), statistics.median(by_name["agentsup"])
        label = f"rename a {step} ({unit})"
        print(f"{label:22} {bare:9.2f} {ours:9.2f} {ours - bare:9.2f} {ours / bare:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
