"""`agentsup audit verify | show | report`, run against logs in a temporary directory."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from agentsup.cli import audit as audit_command
from agentsup.cli.audit import parse_since
from agentsup.cli.main import UsageParser
from agentsup.integrity.audit import AuditLog
from agentsup.paths import default_locations

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)


def run(*argv: str) -> int:
    # Only this command group: other groups may be mid-edit in the checkout.
    parser = UsageParser(prog="agentsup")
    subparsers = parser.add_subparsers(dest="command", parser_class=UsageParser)
    subparsers.required = True
    audit_command.register(subparsers)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def ts(delta: timedelta) -> str:
    return (NOW + delta).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


RECORDS: list[dict[str, object]] = [
    {"agent": "analyst-1", "kind": "lifecycle", "message": "started", "ts": ts(-timedelta(days=2))},
    {"agent": "analyst-1", "kind": "decision", "action_type": "file_read",
     "target": "/work/a.csv", "decision": "allow", "rule": "workspace-rw", "severity": "low",
     "layer": "seccomp", "response": "allow", "ts": ts(-timedelta(hours=3))},
    {"agent": "analyst-1", "kind": "decision", "action_type": "shell_execute",
     "target": "rm -rf /", "decision": "deny", "rule": "no-rm", "severity": "critical",
     "layer": "seccomp", "response": "kill", "ts": ts(-timedelta(minutes=5))},
    {"agent": "analyst-1", "kind": "signal", "signal": "SIGKILL", "rule": "no-rm",
     "action_type": "shell_execute", "ts": ts(-timedelta(minutes=5))},
    {"agent": "coder-2", "kind": "decision", "action_type": "network_connect",
     "target": "1.2.3.4:443", "decision": "require_approval", "rule": "ask-net",
     "severity": "high", "layer": "seccomp", "response": "hold", "ts": ts(-timedelta(minutes=2))},
    {"agent": "coder-2", "kind": "approval", "outcome": "approved", "rule": "ask-net",
     "action_type": "network_connect", "ts": ts(-timedelta(minutes=1))},
]  # fmt: skip


@pytest.fixture
def logged(locations: Path) -> Path:
    """A small log at the configured location; returns the log path."""
    with AuditLog.open(default_locations()) as log:
        log.append_many(RECORDS)
    return default_locations().audit_log


# ----------------------------------------------------------------------- verify


def test_verify_an_intact_log_exits_0(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "verify") == 0
    assert capsys.readouterr().out == "ok: 6 records, chain intact\n"


def test_verify_takes_an_explicit_path(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "verify", str(logged)) == 0
    assert "ok: 6 records" in capsys.readouterr().out


def test_verify_a_tampered_log_exits_1_naming_the_seq(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = logged.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"rm -rf /", b"ls -la /")
    logged.write_bytes(b"".join(lines))
    assert run("audit", "verify") == 1
    assert capsys.readouterr().out.startswith("FAIL: first bad record seq=3: mac mismatch")


def test_verify_a_truncated_log_exits_1(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logged.write_bytes(b"".join(logged.read_bytes().splitlines(keepends=True)[:-2]))
    assert run("audit", "verify") == 1
    assert capsys.readouterr().out.startswith("FAIL: first bad record seq=5:")


def test_verify_without_a_key_is_a_clear_error(
    locations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("audit", "verify") == 1
    err = capsys.readouterr().err
    assert "no audit key at" in err and "audit.key" in err


def test_verify_with_a_bad_head_record_fails(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default_locations().audit_head.write_text("{not json")
    assert run("audit", "verify") == 1
    assert capsys.readouterr().out.startswith("FAIL: head record")


# ------------------------------------------------------------------------- show


def test_show_prints_a_table_for_people(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "show") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ts", "agent", "kind", "action_type", "target", "decision", "rule", "severity"
    ]  # fmt: skip
    assert len(lines) == 1 + len(RECORDS)
    assert "rm -rf /" in lines[3] and "no-rm" in lines[3] and "critical" in lines[3]
    # What a record that is not a decision is, in the decision column (new user 17).
    assert lines[4].split()[-3:] == ["SIGKILL", "no-rm", "-"]
    assert lines[6].split()[-3:] == ["approved", "ask-net", "-"]


def test_show_cuts_the_target_to_a_terminal_and_never_in_a_pipe(
    locations: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """New user 17: targets were cut at 40 characters even when piped."""
    long = "/srv/project/" + "deep/" * 20 + "settings.ini"
    with AuditLog.open(default_locations()) as log:
        log.append({**RECORDS[1], "target": long})
    monkeypatch.delenv("COLUMNS", raising=False)
    assert run("audit", "show") == 0
    assert long in capsys.readouterr().out  # stdout is not a terminal here
    monkeypatch.setenv("COLUMNS", "200")
    assert run("audit", "show") == 0
    row = capsys.readouterr().out.splitlines()[1]
    assert long not in row and long[:60] in row and len(row) <= 200


def show_json(capsys: pytest.CaptureFixture[str], *options: str) -> list[dict[str, object]]:
    assert run("audit", "show", "--json", *options) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_show_json_prints_full_records(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = show_json(capsys)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all("mac" in r and "prev" in r for r in records)


def test_show_filters_by_agent_and_kind(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert [r["seq"] for r in show_json(capsys, "--agent", "coder-2")] == [5, 6]
    assert [r["seq"] for r in show_json(capsys, "--kind", "decision")] == [2, 3, 5]
    both = show_json(capsys, "--agent", "analyst-1", "--kind", "signal")
    assert [r["seq"] for r in both] == [4]


def test_show_since_takes_rfc3339(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    since = ts(-timedelta(minutes=3)).replace("Z", "+00:00")
    assert [r["seq"] for r in show_json(capsys, "--since", since)] == [5, 6]


def test_show_since_takes_an_age(locations: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(timezone.utc)
    with AuditLog.open(default_locations()) as log:
        log.append({"agent": "old", "ts": (now - timedelta(hours=5)).isoformat()})
        log.append({"agent": "new"})  # stamped now
    assert [r["agent"] for r in show_json(capsys, "--since", "1h")] == ["new"]
    assert [r["agent"] for r in show_json(capsys, "--since", "1d")] == ["old", "new"]


def test_show_rejects_a_bad_since_with_usage_exit_2(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("audit", "show", "--since", "yesterday")
    assert exit_info.value.code == 2
    assert "neither an RFC 3339 time nor an age" in capsys.readouterr().err


def test_show_without_a_log_exits_3(locations: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "show") == 3
    assert "no audit log at" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("2026-11-21T05:42:21.123456Z", datetime(2026, 11, 21, 5, 42, 21, 123456, timezone.utc)),
        ("2026-11-21T07:00:00+02:00", datetime(2026, 11, 21, 5, 0, tzinfo=timezone.utc)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["10", "5x", "2026-11-21T05:42:21", "soon"])
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text, NOW)


# ----------------------------------------------------------------------- report


def test_report_json_counts_per_agent(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "report", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    analyst, coder = report["analyst-1"], report["coder-2"]
    assert (analyst["allowed"], analyst["denied"], analyst["killed"]) == (1, 1, 1)
    assert analyst["by_action_type"]["shell_execute"] == {
        "allowed": 0, "denied": 1, "approved": 0, "killed": 1
    }  # fmt: skip
    assert analyst["by_rule"]["workspace-rw"]["allowed"] == 1
    assert coder["approved"] == 1 and coder["denied"] == 0
    assert coder["by_rule"] == {"ask-net": {"allowed": 0, "denied": 0, "approved": 1, "killed": 0}}


def test_report_text(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "report") == 0
    out = capsys.readouterr().out
    assert "agent analyst-1: allowed 1, denied 1, approved 0, killed 1" in out
    assert "agent coder-2: allowed 0, denied 0, approved 1, killed 0" in out
    assert "by rule" in out and "by action type" in out


# ------------------------------------------- verify: head, json, bad input (issues 11, 14)


def forge_last_line(log: Path) -> None:
    with open(log, "ab") as file:
        file.write(b'{"seq":7,"prev":"' + b"0" * 64 + b'","mac":"' + b"f" * 64 + b'"}\n')


def test_verify_counts_in_the_singular(locations: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with AuditLog.open(default_locations()) as log:
        log.append(RECORDS[0])
    assert run("audit", "verify") == 0
    assert capsys.readouterr().out == "ok: 1 record, chain intact\n"


def test_verify_fails_without_the_head_record_unless_told(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    default_locations().audit_head.unlink()
    assert run("audit", "verify") == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: no head record at") and "--no-head" in out
    assert run("audit", "verify", "--no-head") == 0
    assert capsys.readouterr().out.startswith("ok: 6 records, chain intact (no head record")


def test_verify_json_on_an_intact_log(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("audit", "verify", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and result["records"] == 6 and result["breaks"] == []
    assert result["head"] is True and result["first_bad_seq"] is None


def test_verify_json_names_the_break_and_the_restart(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge_last_line(logged)
    with AuditLog.open(default_locations()) as log:
        log.append(RECORDS[0])  # the writer restarts the chain at seq 7
    assert run("audit", "verify", "--json") == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["first_bad_seq"], result["where"]) == (
        False, 7, "audit.jsonl line 7"
    )  # fmt: skip
    (only,) = result["breaks"]
    assert only["resumed_at"] == 7 and "mac" in only["writer_saw"]
    assert result["records"] == 8 and result["unchecked"] == 0


def test_verify_text_says_where_checking_resumed(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forge_last_line(logged)
    with AuditLog.open(default_locations()) as log:
        log.append(RECORDS[0])
    assert run("audit", "verify") == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: first bad record seq=7: mac mismatch")
    assert "(audit.jsonl line 7)" in out
    assert "the writer restarted the chain at seq 7" in out


def test_verify_errors_are_json_under_json(
    locations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with AuditLog.open(default_locations()) as log:
        log.append(RECORDS[0])
    default_locations().audit_key.unlink()
    assert run("audit", "verify", "--json") == 1
    captured = capsys.readouterr()
    error = json.loads(captured.out)
    assert error["ok"] is False and "no audit key" in error["error"] and error["exit_code"] == 1
    assert captured.err == ""


def test_verify_a_path_that_does_not_exist(
    locations: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nonexistent.jsonl"
    with AuditLog.open(default_locations()):
        pass  # a key and a head, as on any host that has run agentsup
    assert run("audit", "verify", str(missing)) == audit_command.EXIT_NO_LOG == 3
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err and "tail removed" not in err
    assert run("audit", "verify", "--json", str(missing)) == 3
    assert json.loads(capsys.readouterr().out)["exit_code"] == 3


def test_verify_a_deleted_log_that_held_records_is_tampering(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logged.unlink()
    assert run("audit", "verify") == 1
    assert "head record says it held records up to seq 6" in capsys.readouterr().out


def test_verify_a_deeply_nested_line(logged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = logged.read_bytes().splitlines(keepends=True)
    lines.insert(2, b"[" * 100_000 + b"\n")
    logged.write_bytes(b"".join(lines))
    assert run("audit", "verify") == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: first bad record seq=3: line is nested too deeply")
    assert "(audit.jsonl line 3)" in out


# ------------------------------------------------- show and report: skipped lines


def spoil(log: Path) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    lines.insert(1, b"[" * 100_000 + b"\n")
    log.write_bytes(b"".join(lines))


def test_show_says_how_many_lines_it_skipped(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spoil(logged)
    assert run("audit", "show") == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 + len(RECORDS)
    assert "skipped 1 line that is not a record (audit.jsonl line 2)" in captured.err


def test_show_json_reports_skipped_lines_as_json(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spoil(logged)
    assert run("audit", "show", "--json") == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == len(RECORDS)
    assert json.loads(captured.err) == {"skipped_lines": 1, "first_skipped": "audit.jsonl line 2"}


def test_report_says_how_many_lines_it_skipped(
    logged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spoil(logged)
    with open(logged, "ab") as file:
        file.write(b"not json\n")
    assert run("audit", "report") == 0
    captured = capsys.readouterr()
    assert "agent analyst-1" in captured.out
    assert "skipped 2 lines that are not records (first: audit.jsonl line 2)" in captured.err


def test_show_and_report_without_a_log_exit_3(
    locations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("audit", "report") == 3
    assert "no audit log at" in capsys.readouterr().err
    assert run("audit", "report", "--json") == 3
    assert json.loads(capsys.readouterr().out)["exit_code"] == 3
