"""Where agentsup keeps its files (DESIGN.md 1.4).

As root: /etc/agentsup/policies, /var/log/agentsup/audit.jsonl,
/var/lib/agentsup and /run/agentsup.  As a normal user: the XDG
equivalents.  Each can be moved with an environment variable so that tests
and CI can use a temporary directory; moving a location keeps its
protections.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class Locations(NamedTuple):
    """The four places agentsup keeps its files; the rest are derived."""

    policy_dir: Path
    audit_log: Path
    state_dir: Path
    runtime_dir: Path

    @property
    def audit_key(self) -> Path:
        return self.state_dir / "audit.key"

    @property
    def audit_head(self) -> Path:
        return self.state_dir / "audit.head"

    @property
    def totp_secret(self) -> Path:
        return self.state_dir / "totp.secret"

    @property
    def totp_last_step(self) -> Path:
        return self.state_dir / "totp.last_step"

    @property
    def policy_manifest(self) -> Path:
        return self.state_dir / "policy.manifest"

    def protected_paths(self) -> tuple[Path, ...]:
        """Paths the agent may never write, whatever the policy says."""
        return (self.policy_dir, self.audit_log.parent, self.state_dir, self.runtime_dir)

    def secret_paths(self) -> tuple[Path, ...]:
        """Paths the agent may never even read."""
        return (self.state_dir,)


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def default_locations() -> Locations:
    if os.geteuid() == 0:
        policy_dir = Path("/etc/agentsup/policies")
        audit_log = Path("/var/log/agentsup/audit.jsonl")
        state_dir = Path("/var/lib/agentsup")
        runtime_dir = Path("/run/agentsup")
    else:
        policy_dir = _xdg("XDG_CONFIG_HOME", ".config") / "agentsup" / "policies"
        audit_log = _xdg("XDG_STATE_HOME", ".local/state") / "agentsup" / "audit.jsonl"
        state_dir = _xdg("XDG_DATA_HOME", ".local/share") / "agentsup"
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/agentsup-{os.getuid()}"
        runtime_dir = Path(runtime) / "agentsup"
    env = os.environ
    return Locations(
        policy_dir=Path(env.get("AGENTSUP_POLICY_DIR") or policy_dir),
        audit_log=Path(env.get("AGENTSUP_AUDIT_LOG") or audit_log),
        state_dir=Path(env.get("AGENTSUP_STATE_DIR") or state_dir),
        runtime_dir=Path(env.get("AGENTSUP_RUNTIME_DIR") or runtime_dir),
    )
