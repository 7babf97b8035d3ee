"""What every benchmark sets up: a scratch root, and agentsup's files inside it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


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
