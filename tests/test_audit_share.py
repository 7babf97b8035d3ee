"""No agent can push older records out of the audit log.

The log keeps what its live file and its rotated files hold, and drops the
oldest file past that; the chain that is left still verifies.  Red team 23
made records at will (hook notes padded to 60 KB, and refused opens in a
loop: about 1,000 records a second) until every earlier record was gone, its
own refusals and other agents' records alike.  Now an agent whose records
take more than a quarter of what the log keeps is killed (`audit_share`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import Sandbox

from agentsup.events import AuditLevel
from agentsup.integrity.audit import AuditLog
from agentsup.integrity.shares import BUCKETS, AuditShares
from agentsup.supervision.judge import AgentState
from agentsup.supervision.supervisor import BatchedAudit

# What a small log keeps: 50 KiB a file, eleven files (about 0.55 MiB).
SMALL_LOG = {"AGENTSUP_AUDIT_ROTATE_MB": "0.05"}

FLOOD = """
import sys
for _ in range(int(sys.argv[2])):
    try:
        open(sys.argv[1]).close()
    except OSError:
        pass
print("survived")
"""


def test_an_agents_share_counts_its_own_bytes_among_the_last_kept() -> None:
    shares = AuditShares(retained=64_000)
    assert shares.limit == 16_000
    assert shares.add("a", end=1_000, size=1_000) == 1_000
    assert shares.add("b", end=3_000, size=2_000) == 2_000
    assert shares.add("a", end=3_500, size=500) == 1_500
    assert not shares.over(16_000) and shares.over(16_001)


class _Judge:
    """What BatchedAudit asks of a Judge for the share: its policy's level and a kill."""

    def __init__(self, level: AuditLevel) -> None:
        self.policy = SimpleNamespace(audit_level=level)
        self.state = AgentState.RUNNING
        self.kill_report: str | None = None

    def kill_for_limit(self, key: str, detail: str) -> None:
        self.kill_report = key


def _shares_of(tmp_path: Path, level: AuditLevel, records: list[dict[str, object]]) -> int:
    """The agent's share after `records`, in a log of 64 KiB files."""
    log = AuditLog(tmp_path / "a.jsonl", tmp_path / "key", tmp_path / "head", rotate_bytes=65536)
    judges = {"a": _Judge(level)}
    audit = BatchedAudit(log, lambda _delay, _callback: None, lambda: judges)
    try:
        for record in records:
            audit.append({"agent": "a", "kind": "decision", **record})
        return audit.shares.add("a", log.bytes_written, 0)
    finally:
        log.close()


@pytest.mark.parametrize(
    ("record", "level", "counted"),
    [
        ({"decision": "deny", "target": "/etc/x"}, AuditLevel.VIOLATIONS, True),
        ({"decision": "allow", "target": "/etc/x"}, AuditLevel.ALL, False),
        ({"decision": "log", "target": "/etc/x"}, AuditLevel.VIOLATIONS, False),
        ({"decision": "warn", "target": "/etc/x"}, AuditLevel.VIOLATIONS, False),
        ({"decision": "deny", "would_deny": True, "target": "/x"}, AuditLevel.VIOLATIONS, False),
        # Made at will beside the agent's actions: asked for only at level all.
        ({"decision": "log", "note": True, "target": "x"}, AuditLevel.VIOLATIONS, True),
        ({"decision": "log", "note": True, "target": "x"}, AuditLevel.ALL, False),
        (
            {"decision": "allow", "layer": "proxy", "target": "GET http://x/"},
            AuditLevel.VIOLATIONS,
            True,
        ),
        ({"decision": "allow", "layer": "proxy", "target": "GET http://x/"}, AuditLevel.ALL, False),
    ],
)
def test_what_counts_in_an_agents_share(
    tmp_path: Path, record: dict[str, object], level: AuditLevel, counted: bool
) -> None:
    """Red team 24: the egress proxy records every request at any level, and
    the agent chooses its URL: an allowed request in a loop erased the log.
    A shadow run (would_deny) or a warn rule is asked for by the run and the
    policy, and no reason to kill."""
    share = _shares_of(tmp_path, level, [record] * 10)
    assert (share > 0) is counted, share


def test_a_record_asked_for_counts_what_it_holds_beyond_a_plain_one(tmp_path: Path) -> None:
    padded = {"decision": "allow", "target": "/w/" + "x" * 5000}
    share = _shares_of(tmp_path, AuditLevel.ALL, [padded] * 10)
    assert 10 * 4000 < share < 10 * 5500


def test_an_agents_old_bytes_age_out_as_others_are_written() -> None:
    """A long-lived agent is judged by what the log still keeps of it."""
    shares = AuditShares(retained=64_000)
    assert shares.add("a", end=10_000, size=10_000) == 10_000
    # A whole log's worth later, what "a" wrote then has rotated away.
    later = 10_000 + 64_000 + 64_000 // BUCKETS
    assert shares.add("a", end=later, size=100) == 100


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_an_agent_that_floods_the_log_is_killed_before_it_erases_anything(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    outside = Path("/srv") / f"agentsup-flood-{tmp_path.name}"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.txt"
    secret.write_text("not the agent's\n")
    (sandbox.workspace / "flood.py").write_text(FLOOD)
    try:
        # 20,000 refused reads make about 9 MiB of records: the log keeps 0.55.
        result = sandbox.run(
            "python3", "flood.py", str(secret), "20000", env=SMALL_LOG, timeout=120
        )
    finally:
        secret.unlink()
        outside.rmdir()
    assert result.returncode == 137, result.stderr
    assert "audit_share exceeded" in result.stderr
    assert "survived" not in result.stdout
    records = _kept_records(sandbox.audit_log)
    assert min(int(str(record["seq"])) for record in records) == 1  # nothing rotated away
    exits = [record for record in records if record.get("event") == "exit"]
    assert exits[-1]["killed_by"] == "audit_share"
    verify = sandbox.agentsup("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _kept_records(log: Path) -> list[dict[str, object]]:
    """Every record of the live file and the rotated ones."""
    return [
        json.loads(line)
        for path in log.parent.glob(log.name + "*")
        if not path.name.endswith(".lock")
        for line in path.read_text().splitlines()
    ]


def test_a_bad_rotation_size_is_one_clear_line(sandbox: Sandbox) -> None:
    result = sandbox.run("/bin/true", env={"AGENTSUP_AUDIT_ROTATE_MB": "lots"})
    assert result.returncode == 125
    assert result.stderr.strip().splitlines() == [
        "agentsup: cannot start the supervisor: AGENTSUP_AUDIT_ROTATE_MB='lots': not a size in MiB"
    ]


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_what_the_policy_asks_to_keep_is_not_counted(sandbox: Sandbox) -> None:
    """What a policy asks to keep (`audit.level: all`, `log` rules) is no
    flood: an agent under the `audit` template makes far more than a quarter
    of the small log in reads it logs, and runs to its end."""
    (sandbox.workspace / "flood.py").write_text(FLOOD)
    (sandbox.workspace / "data.txt").write_text("the agent's own\n")
    result = sandbox.run(
        "python3", "flood.py", "data.txt", "5000", policy="audit", env=SMALL_LOG, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "survived"
    # About 5,000 logged reads and as many hook notes: the log kept only the newest.
    assert max(int(str(record["seq"])) for record in _kept_records(sandbox.audit_log)) > 5000


def test_a_hook_notes_detail_is_recorded_cut_to_size() -> None:
    """A note's detail is the agent's own text: padded (red team 23 sent 60 KB
    a note), it is recorded cut to a size, and says how much was left out."""
    from agentsup.supervision.agent import (
        NOTE_ITEMS,
        NOTE_KEYS,
        NOTE_TARGET,
        NOTE_TEXT,
        bounded_detail,
    )
    from agentsup.visible import cut_text

    # Its target too (red team 24: 60 KB targets at audit.level all).
    assert (
        cut_text("t" * 60_000, NOTE_TARGET)
        == "t" * NOTE_TARGET + f"... ({60_000 - NOTE_TARGET} more)"
    )

    detail = {f"k{i}": "x" * 60_000 for i in range(100)}
    detail["k0"] = ["y" * 1_000] * 100  # type: ignore[assignment]
    kept = bounded_detail(detail)
    assert len(kept) == NOTE_KEYS
    assert len(kept["k0"]) == NOTE_ITEMS
    assert kept["k1"] == "x" * NOTE_TEXT + f"... ({60_000 - NOTE_TEXT} more)"
    assert len(json.dumps(kept)) < 32 * 1024
    assert bounded_detail({"event": "ctypes.dlopen", "name": "libc.so.6"}) == {
        "event": "ctypes.dlopen",
        "name": "libc.so.6",
    }
