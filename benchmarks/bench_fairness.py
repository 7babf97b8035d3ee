#!/usr/bin/env python3
"""Is the loop still answering others while one process sends 100 KB command lines?

    python benchmarks/bench_fairness.py [--seconds 5] [--argv-kb 100]

One supervised agent runs two processes: one execs `/bin/true` with a single
100 KB argument, again and again (each exec is a mediated execve whose
command line the policy must match), the other opens a file in a loop and
times every open.  Both go through the one event loop, as two agents of one
supervisor would.  Printed: the open latency percentiles and maximum, bare
(no supervisor) and supervised.  The target (issue 11) is under 10 ms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

AGENT = """
import os, subprocess, sys, time
seconds, size = float(sys.argv[1]), int(sys.argv[2])
spammer = subprocess.Popen([sys.executable, "-c",
    "import os, sys, time\\n"
    "end = time.monotonic() + float(sys.argv[1])\\n"
    "arg = 'a ' * (int(sys.argv[2]) // 2)\\n"
    "while time.monotonic() < end:\\n"
    "    pid = os.fork()\\n"
    "    if pid == 0:\\n"
    "        os.execv('/bin/true', ['true', arg])\\n"
    "    os.waitpid(pid, 0)\\n", str(seconds), str(size)])
samples = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    start = time.perf_counter()
    os.close(os.open(__file__, os.O_RDONLY))
    samples.append(time.perf_counter() - start)
spammer.wait()
samples.sort()
pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000
print(len(samples), pick(0.5), pick(0.99), pick(0.999), samples[-1] * 1000)
"""


def run(command: list[str], env: dict[str, str], cwd: str) -> list[float]:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    return [float(v) for v in done.stdout.split()[-5:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--argv-kb", type=int, default=100)
    args = parser.parse_args()
    base = "/var/lib" if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="agentsup-bench-", dir=base) as root:
        workspace = Path(root) / "workspace"
        workspace.mkdir()
        (workspace / "agent.py").write_text(AGENT)
        env = dict(os.environ)
        for var, sub in (
            ("AGENTSUP_POLICY_DIR", "policies"),
            ("AGENTSUP_AUDIT_LOG", "log/audit.jsonl"),
            ("AGENTSUP_STATE_DIR", "state"),
            ("AGENTSUP_RUNTIME_DIR", "run"),
        ):
            env[var] = str(Path(root) / "agentsup" / sub)
        (Path(root) / "agentsup" / "policies").mkdir(parents=True)
        agent = ["python3", "-S", "agent.py", str(args.seconds), str(args.argv_kb * 1024)]
        bare = run(agent, env, str(workspace))
        supervised = run(
            [sys.executable, "-m", "agentsup", "run", "--", *agent], env, str(workspace)
        )
    print(f"{args.argv_kb} KB argv execs against timed opens, {args.seconds:g} s each")
    for name, (count, p50, p99, p999, worst) in (("bare", bare), ("agentsup", supervised)):
        print(
            f"{name:9} {int(count):7d} opens   p50 {p50:6.3f} ms   p99 {p99:6.3f} ms   "
            f"p99.9 {p999:6.3f} ms   max {worst:6.3f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
