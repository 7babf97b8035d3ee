#!/usr/bin/env python3
"""Unpacking and installing, bare and under `agentsup run --policy strict`, as ratios.

    python benchmarks/bench_installs.py [--runs 5] [--files 300] [--policy strict]

Two steps agents run all the time, each on `--files` small Python modules:

- "tar": `tar xzf` of a tarball of them.  tar creates each file, then sets
  its owner, mode and times on the fd it wrote it through (fchown, fchmod,
  futimens), and each directory's by name at the end.
- "pip": `pip install --no-index --no-deps --target` of a wheel of them
  (built here, offline).  pip writes each file, sets its mode by name, and
  writes its RECORD.

Both run inside one `agentsup run` and are timed by the shell itself
(start-up excluded), after one untimed round; bare and supervised alternate
in the same run, and the medians and their ratios are printed.  pip is the
one of the Python running this script (`-m pip`): run it with a Python that
has pip, outside the agent's private /tmp.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from _scratch import agentsup_env, remove, scratch_root

MODULE = "def f{i}(x):\n    return x + {i}\n" + "# padding\n" * 60


def build_inputs(root: Path, files: int) -> tuple[Path, Path]:
    """A tarball and a wheel of the same `files` modules, in `root`."""
    package = root / "src" / "benchpkg"
    package.mkdir(parents=True)
    for i in range(files):
        (package / f"m{i:04d}.py").write_text(MODULE.format(i=i))
    (package / "__init__.py").write_text("")
    tarball = root / "benchpkg.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(package, arcname="benchpkg")
    wheel = root / "benchpkg-1.0-py3-none-any.whl"
    dist_info = "benchpkg-1.0.dist-info"
    entries = {f"benchpkg/{p.name}": p.read_bytes() for p in sorted(package.iterdir())}
    entries[f"{dist_info}/METADATA"] = b"Metadata-Version: 2.1\nName: benchpkg\nVersion: 1.0\n"
    entries[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    entries[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return tarball, wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--policy", default="strict")
    args = parser.parse_args()

    root = scratch_root()
    workspace = root / "workspace"
    env = agentsup_env(root)
    tarball, wheel = build_inputs(workspace, args.files)
    out = workspace / "out"
    # One untimed round, then each step between two clock readings (ms).
    steps = (
        f'rm -rf {out}; mkdir {out}; tar xzf {tarball} -C {out}; rm -rf {out}; '
        f'{sys.executable} -m pip install -q --no-index --no-deps --no-compile '
        f'--disable-pip-version-check --target {out}/site {wheel} >/dev/null 2>&1; '
        f'rm -rf {out}; mkdir {out}; '
        's=$(date +%s%N); tar xzf "$1" -C "$2"; t=$(date +%s%N); '
        f'{sys.executable} -m pip install -q --no-index --no-deps --no-compile '
        '--disable-pip-version-check --target "$2/site" "$3" >/dev/null 2>&1; '
        'p=$(date +%s%N); echo $(( (t-s)/1000 )) $(( (p-t)/1000 ))'
    )
    job = ["sh", "-c", steps, "job", str(tarball), str(out), str(wheel)]
    supervised = [
        sys.executable, "-m", "agentsup", "run", "--policy", args.policy,
        "--workspace", str(workspace), "--id", "bench", "--",
    ]  # fmt: skip
    results: dict[str, dict[str, list[float]]] = {"tar": {}, "pip": {}}
    try:
        for _ in range(args.runs):
            for name, command in (("bare", job), ("agentsup", [*supervised, *job])):
                proc = subprocess.run(command, cwd=workspace, env=env, capture_output=True,
                                      text=True)  # fmt: skip
                words = proc.stdout.split()
                if proc.returncode != 0 or len(words) < 2:
                    raise SystemExit(f"failed ({proc.returncode}): {name}\n{proc.stderr}")
                for step, micros in zip(("tar", "pip"), words[-2:], strict=True):
                    results[step].setdefault(name, []).append(int(micros) / 1e3)
        if not (out / "site" / "benchpkg" / "m0000.py").exists():
            raise SystemExit("pip installed nothing")
    finally:
        remove(root)

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {args.runs} runs each, "
        f"{args.files} modules, policy {args.policy}, workspace on /run"
    )
    print(f"{'':6} {'bare ms':>9} {'agentsup ms':>12} {'ratio':>6}")
    for step, by_name in results.items():
        bare, ours = statistics.median(by_name["bare"]), statistics.median(by_name["agentsup"])
        print(f"{step:6} {bare:9.1f} {ours:12.1f} {ours / bare:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
