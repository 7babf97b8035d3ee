"""Whatever the policy says, an agent cannot touch agentsup's own files.

Even under `permissive`, an agent that writes to the policy directory or the
audit log, or reads the audit key, is killed; the files stay as they were and
the audit chain still verifies.
"""

from __future__ import annotations

import pytest
from conftest import TRY, Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]


def _prepare(sandbox: Sandbox) -> None:
    # One supervised run first, so the log, its key and its head exist.
    assert sandbox.run("true", policy="permissive").returncode == 0
    (sandbox.policy_dir / "team.yaml").write_text("name: team\nextends: [strict]\n")


@pytest.mark.parametrize(
    ("op", "target"),
    [
        ("append", "policy_dir/team.yaml"),
        ("append", "audit_log"),
        ("read", "state_dir/audit.key"),
        ("unlink", "audit_log"),
    ],
)
def test_touching_agentsups_files_is_fatal(sandbox: Sandbox, op: str, target: str) -> None:
    _prepare(sandbox)
    base, _, rest = target.partition("/")
    path = getattr(sandbox, base) / rest if rest else getattr(sandbox, base)
    before = path.read_bytes()
    result = sandbox.run("python3", TRY, op, str(path), policy="permissive")
    assert result.returncode == 137, result.stderr
    assert "rule 'agentsup-self-protection'" in result.stderr
    if base == "audit_log":
        # The supervisor keeps appending its own records; the agent's never land.
        assert path.read_bytes().startswith(before)
        assert b"appended by agent" not in path.read_bytes()
    else:
        assert path.read_bytes() == before
    verify = sandbox.agentsup("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    records = sandbox.audit_records()
    # The log holds the attempt (appended by the supervisor, not the agent).
    assert any(
        r.get("rule") == "agentsup-self-protection" and r.get("severity") == "critical"
        for r in records
    )


def test_a_symlink_in_the_workspace_does_not_get_around_it(sandbox: Sandbox) -> None:
    _prepare(sandbox)
    link = sandbox.workspace / "policy.yaml"
    link.symlink_to(sandbox.policy_dir / "team.yaml")
    before = (sandbox.policy_dir / "team.yaml").read_text()
    result = sandbox.run("python3", TRY, "append", str(link), policy="permissive")
    assert result.returncode == 137
    assert (sandbox.policy_dir / "team.yaml").read_text() == before
