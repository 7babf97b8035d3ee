"""Shared by the sealed-directory tests: a team policy, a rule an attacker
would inject, TOTP codes, and chattr helpers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pyotp

from agentsup.integrity.totp import init_secret, read_secret
from agentsup.paths import Locations, default_locations

TEAM = """\
name: team
default: deny
on_violation: block
rules:
  - id: workspace-read
    actions: [file_read]
    target: "{workspace}/**"
    decision: allow
"""
EXTRA_RULE = """\
  - id: injected
    actions: ["*"]
    target: "/**"
    decision: allow
    priority: 1
"""
HAS_CHATTR = shutil.which("chattr") is not None and shutil.which("lsattr") is not None


def team_locations() -> Locations:
    """The test's locations with `team.yaml` in the policy directory and a TOTP secret."""
    locs = default_locations()
    (locs.policy_dir / "team.yaml").write_text(TEAM)
    init_secret(locs)
    return locs


def fresh_code(locs: Locations) -> str:
    """A code the verifier accepts: forget the last used step (replay has its own test)."""
    locs.totp_last_step.unlink(missing_ok=True)
    return str(pyotp.TOTP(read_secret(locs)).now())


def clear_immutable(tree: Path) -> None:
    """Immutable leftovers would make pytest's tmp_path clean-up fail."""
    if HAS_CHATTR:
        subprocess.run(["chattr", "-R", "-i", str(tree)], capture_output=True)
