#!/usr/bin/env python3
"""A job of short commands, bare and under `agentsup run --policy strict`, as a ratio.

    python benchmarks/bench_shortjob.py [--runs 5] [--rounds 10] [--policy strict] [--home DIR]

In a fresh git repository inside the workspace, one job is `rounds` times:
`git status`, a small change committed with `git commit -a`, `git log`.

- "one run": the job is one shell script, run bare and as one `agentsup run`
  (an agent that runs many short commands): every git exec, library load and
  config read is mediated.
- "run per command": every command is its own `agentsup run` (a tool call
  per process): start-up counts once per command.
- "in a running agent": the job's second run inside one `agentsup run`,
  timed by the shell itself (start-up excluded): what each short command
  costs an agent that is already running, as most agents are.
- "the floor": the same, under `floor_mediator.c` (see bench_floor.py):
  agentsup's own filter, each open and unlink answered with the least work
  (opened and injected, or done), no policy, no Landlock, no namespaces.
  What mediating these syscalls costs on this machine at all.

By default the agent gets a fresh, nearly empty home directory; `--home DIR`
runs both with a real one (say your own): a policy's secrets under the home
are walked for hard links, which costs what the home holds.

Bare and supervised alternate in the same run; printed are the medians and
their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _scratch import agentsup_env, floor_command, remove, scratch_root

GIT_CONFIG = "[user]\n\tname = bench\n\temail = bench@example.invalid\n"
ROUND = (
    'echo "$1 $i" > notes.txt; git status --short; git commit -q -a -m "$1 $i"; '
    "git log -n 5 >/dev/null\n"
)


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {command}\n{proc.stderr.decode()}")
    return time.perf_counter() - started


def timed_inside(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    """The seconds the job's second run took, as the shell that ran it measured them."""
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {command}\n{proc.stderr}")
    return int(proc.stdout.split()[-1]) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--policy", default="strict")
    parser.add_argument("--home", help="HOME for both (default: a fresh one in the scratch root)")
    args = parser.parse_args()

    root = scratch_root()
    repo = root / "workspace" / "repo"
    repo.mkdir()
    # A home of its own (no ~/.gitconfig of the user's), the same for both;
    # the identity is in its ~/.gitconfig, which strict lets git read.  A real
    # home is left as it is: the identity goes in the repository's own config.
    env = agentsup_env(root, home=args.home)
    if args.home is None:
        (root / "home" / ".gitconfig").write_text(GIT_CONFIG)
    script = repo / "job.sh"
    script.write_text(f"set -e\ni=0\nwhile [ $i -lt {args.rounds} ]; do\n{ROUND}i=$((i+1))\ndone\n")
    supervised = [
        sys.executable, "-m", "agentsup", "run", "--policy", args.policy,
        "--workspace", str(repo), "--id", "bench", "--",
    ]  # fmt: skip
    one_command = ["git", "log", "-n", "5"]
    # The job once to warm up, then once more between two clock readings.
    inside = [
        "sh", "-c",
        f'sh {script} warm >/dev/null; s=$(date +%s%N); sh {script} "$1" >/dev/null; '
        'e=$(date +%s%N); echo $((e - s))',
        "inside",
    ]  # fmt: skip
    results: dict[str, list[float]] = {
        name: [] for name in ("bare", "one", "bare1", "per", "bare_in", "in", "floor_in")
    }
    try:
        floor = floor_command(root)
        subprocess.run(["git", "init", "-q", str(repo)], env=env, check=True)
        if args.home is not None:
            with (repo / ".git" / "config").open("a") as config:
                config.write(GIT_CONFIG)
        (repo / "notes.txt").write_text("start\n")
        subprocess.run(["git", "add", "job.sh", "notes.txt"], cwd=repo, env=env, check=True)
        subprocess.run(["git", "commit", "-q", "-m", "start"], cwd=repo, env=env, check=True)
        timed([*supervised, "sh", str(script), "warm"], repo, env)  # caches, page cache
        for run in range(args.runs):
            results["bare"].append(timed(["sh", str(script), f"bare{run}"], repo, env))
            results["one"].append(timed([*supervised, "sh", str(script), f"sup{run}"], repo, env))
            results["bare1"].append(timed(one_command, repo, env))
            results["per"].append(timed([*supervised, *one_command], repo, env))
            results["bare_in"].append(timed_inside([*inside, f"bare{run}"], repo, env))
            results["in"].append(timed_inside([*supervised, *inside, f"in{run}"], repo, env))
            results["floor_in"].append(timed_inside([*floor, *inside, f"floor{run}"], repo, env))
    finally:
        remove(root)

    median = {name: statistics.median(values) for name, values in results.items()}
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.runs} runs each, "
        f"{args.rounds} rounds of git status / commit / log, policy {args.policy}, "
        f"HOME {args.home or 'fresh'}"
    )
    print(f"{'':18} {'bare s':>9} {'agentsup s':>11} {'ratio':>6}")
    print(f"{'one run':18} {median['bare']:9.3f} {median['one']:11.3f} "
          f"{median['one'] / median['bare']:6.2f}")  # fmt: skip
    print(f"{'run per command':18} {median['bare1']:9.3f} {median['per']:11.3f} "
          f"{median['per'] / median['bare1']:6.2f}   (one git log)")  # fmt: skip
    print(f"{'in a running agent':18} {median['bare_in']:9.3f} {median['in']:11.3f} "
          f"{median['in'] / median['bare_in']:6.2f}   (start-up excluded)")  # fmt: skip
    print(f"{'the floor':18} {median['bare_in']:9.3f} {median['floor_in']:11.3f} "
          f"{median['floor_in'] / median['bare_in']:6.2f}   (in a running agent)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
