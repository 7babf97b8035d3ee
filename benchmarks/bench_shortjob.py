#!/usr/bin/env python3
"""A job of short commands, bare and under `agentsup run --policy strict`, as a ratio.

    python benchmarks/bench_shortjob.py [--runs 5] [--rounds 10] [--policy strict]

In a fresh git repository inside the workspace, one job is `rounds` times:
`git status`, a small change committed with `git commit -a`, `git log`.
Each command is its own process, started bare or as its own `agentsup run`
(what an agent's tool calls look like).  The job runs bare and supervised,
alternating, in the same run; printed are the medians and their ratio, and
the start-up share (the supervised job minus the bare one, per command).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def job(prefix: list[str], repo: Path, rounds: int, env: dict[str, str], tag: str) -> float:
    """Run the job's commands, each behind `prefix`; the wall time of the whole job."""
    git = shutil.which("git") or "git"
    started = time.perf_counter()
    for index in range(rounds):
        (repo / "notes.txt").write_text(f"{tag} {index}\n")
        for command in (
            [git, "status", "--short"],
            [git, "commit", "-q", "-a", "-m", f"{tag} {index}"],
            [git, "log", "--oneline", "-n", "5"],
        ):
            proc = subprocess.run([*prefix, *command], cwd=repo, env=env, capture_output=True)
            if proc.returncode != 0:
                raise SystemExit(
                    f"failed ({proc.returncode}): {' '.join(command)}\n{proc.stderr.decode()}"
                )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--policy", default="strict")
    args = parser.parse_args()

    root = Path(
        tempfile.mkdtemp(prefix="agentsup-bench-", dir="/run" if os.geteuid() == 0 else None)
    )
    workspace = root / "workspace"
    home = root / "home"
    repo = workspace / "repo"
    for directory in (repo, home):
        directory.mkdir(parents=True)
    env = dict(
        os.environ,
        **GIT_IDENTITY,
        HOME=str(home),  # no ~/.gitconfig of the user's: the same for both
        AGENTSUP_POLICY_DIR=str(root / "policies"),
        AGENTSUP_AUDIT_LOG=str(root / "log" / "audit.jsonl"),
        AGENTSUP_STATE_DIR=str(root / "state"),
        AGENTSUP_RUNTIME_DIR=str(root / "run"),
    )
    supervised = [
        sys.executable,
        "-m",
        "agentsup",
        "run",
        "--policy",
        args.policy,
        "--workspace",
        str(repo),
        "--id",
        "bench",
        "--",
    ]
    try:
        subprocess.run(["git", "init", "-q", str(repo)], env=env, check=True)
        (repo / "notes.txt").write_text("start\n")
        subprocess.run(["git", "add", "notes.txt"], cwd=repo, env=env, check=True)
        subprocess.run(["git", "commit", "-q", "-m", "start"], cwd=repo, env=env, check=True)
        job(supervised, repo, 1, env, "warm")  # the caches, and the page cache
        bare_times: list[float] = []
        sup_times: list[float] = []
        for run in range(args.runs):
            bare_times.append(job([], repo, args.rounds, env, f"bare {run}"))
            sup_times.append(job(supervised, repo, args.rounds, env, f"agentsup {run}"))
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)

    bare = statistics.median(bare_times)
    sup = statistics.median(sup_times)
    commands = 3 * args.rounds
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.runs} runs each, "
        f"{args.rounds} rounds of git status / commit / log ({commands} commands), "
        f"policy {args.policy}"
    )
    print(f"{'':10} {'bare s':>9} {'agentsup s':>11} {'ratio':>6}")
    print(f"{'job':10} {bare:9.3f} {sup:11.3f} {sup / bare:6.2f}")
    print(f"per command: +{(sup - bare) / commands * 1e3:.1f} ms under agentsup")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
