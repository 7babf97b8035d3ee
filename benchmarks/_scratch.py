"""What every benchmark sets up: a scratch root, and agentsup's files inside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def scratch_root() -> Path:
    """A fresh directory with `workspace/` and `home/` (under /run as root: on the
    host's disk, not in the agent's private /tmp)."""
    root = Path(
        tempfile.mkdtemp(prefix="agentsup-bench-", dir="/run" if os.geteuid() == 0 else None)
    )
    (root / "workspace").mkdir()
    (root / "home").mkdir()
    return root


def agentsup_env(root: Path, home: str | None = None) -> dict[str, str]:
    """The environment that keeps a run's policies, audit log and state inside `root`."""
    return dict(
        os.environ,
        HOME=home if home is not None else str(root / "home"),
        AGENTSUP_POLICY_DIR=str(root / "policies"),
        AGENTSUP_AUDIT_LOG=str(root / "log" / "audit.jsonl"),
        AGENTSUP_STATE_DIR=str(root / "state"),
        AGENTSUP_RUNTIME_DIR=str(root / "run"),
    )


def remove(root: Path) -> None:
    subprocess.run(["rm", "-rf", str(root)], check=False)


def floor_command(directory: Path) -> list[str]:
    """`floor_mediator.c` built in `directory` with agentsup's own filter beside
    it: the command prefix that runs a program under the floor of mediation
    (see floor_mediator.c).  Exits when there is no C compiler."""
    from agentsup.kernel.seccomp import filter_program
    from agentsup.supervision.syscalls import ALWAYS_REFUSED, FORCED_ENOSYS, MEDIATED

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("no C compiler to build floor_mediator.c")
    mediator, bpf = directory / "floor_mediator", directory / "filter.bpf"
    build = [compiler, "-O2", "-o", str(mediator), str(HERE / "floor_mediator.c")]
    subprocess.run(build, check=True)
    bpf.write_bytes(filter_program(MEDIATED + ALWAYS_REFUSED, FORCED_ENOSYS).bpf)
    return [str(mediator), str(bpf)]
