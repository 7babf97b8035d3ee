#!/usr/bin/env python3
"""Start-up of `agentsup run -- /bin/true` against a bare `/bin/true`, in the same run.

    python benchmarks/bench_startup.py [--runs 21] [--policy strict] [--cold]
                                       [--agentsup PATH]

Runs bare `/bin/true` and `agentsup run --workspace W -- /bin/true`,
alternating, and prints the median of each, their difference in ms and
their ratio.  `agentsup` is what users run: the console script installed
next to this Python (a venv's `bin/agentsup`), else the one on PATH; never a
wrapper such as a pyenv shim (a bash script costing ~100 ms of its own).
Without either, `python -m agentsup` is timed, and a note says so.

One supervised run before the timed ones fills the state directory's caches
(the compiled policy, the seccomp program), as any earlier run on the machine
would; `--cold` empties them before each run.  Also printed: a bare
`python -c pass`, the floor no Python program goes under.  HOME is a fresh
directory unless `--own-home`: an open of a file with more than one link
walks the home's protected files once (agent.ProtectedInodes), which costs
what the home holds, not what start-up does.
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


def _is_console_script(path: str) -> bool:
    """A script whose first line starts a Python (pip's console scripts), not a shell shim."""
    try:
        with open(path, "rb") as script:
            first = script.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first and b"env bash" not in first


def agentsup_command() -> tuple[list[str], str]:
    """The installed `agentsup` to time, and a note when it is not the console script."""
    beside = os.path.join(os.path.dirname(sys.executable), "agentsup")
    for candidate in (beside, shutil.which("agentsup")):
        if candidate and os.access(candidate, os.X_OK) and _is_console_script(candidate):
            return [candidate], ""
    note = (
        "note: no installed agentsup console script next to this Python or on PATH; "
        f"timing {sys.executable} -m agentsup instead (it imports runpy as well)"
    )
    return [sys.executable, "-m", "agentsup"], note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--policy", default="strict")
    parser.add_argument("--cold", action="store_true", help="empty the caches before each run")
    parser.add_argument("--own-home", action="store_true", help="keep the caller's HOME")
    parser.add_argument(
        "--agentsup",
        metavar="PATH",
        help="the agentsup command to time (default: the console script beside this Python, "
        "else on PATH)",
    )
    args = parser.parse_args()
    if args.agentsup:
        command, note = [args.agentsup], ""
    else:
        command, note = agentsup_command()
    if note:
        print(note)

    root = scratch_root()
    workspace = root / "workspace"
    state = root / "state"
    env = agentsup_env(root, os.environ.get("HOME", "/") if args.own_home else None)
    true = shutil.which("true") or "/bin/true"
    bare = [true]
    python = [sys.executable, "-c", "pass"]
    supervised = [
        *command,
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
    print(f"agentsup: {' '.join(command)}")
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
