"""`agentsup audit verify | show | report`: check and read the audit log.

Exit codes: 0 on success (an intact chain, for `verify`); 1 when the chain is
broken, or the key, head record or log cannot be read; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..integrity.audit import (
    KINDS,
    OUTCOMES,
    AgentReport,
    AuditError,
    iter_records,
    load_key,
    read_head,
    summarize,
    verify_log,
)
from ..paths import default_locations

EXIT_OK = 0
EXIT_FAIL = 1

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SHOW_COLUMNS = (
    ("ts", 27),
    ("agent", 16),
    ("kind", 9),
    ("action_type", 16),
    ("target", 40),
    ("decision", 16),
    ("rule", 20),
    ("severity", 8),
)


def register(subparsers: Any) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="verify and read the HMAC-chained audit log",
        description="Verify and read the HMAC-chained audit log (DESIGN.md 1.5).",
    )
    commands = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    commands.required = True

    verify = commands.add_parser(
        "verify",
        help="check every record's mac, the chain and the head record",
        description="Exit 0 on an intact log; 1 naming the first bad seq otherwise.",
    )
    verify.add_argument(
        "path", nargs="?", type=Path, help="the live log file (default: the configured log)"
    )
    verify.set_defaults(func=cmd_verify)

    show = commands.add_parser("show", help="print records, oldest first")
    show.add_argument("--agent", help="only this agent id")
    show.add_argument(
        "--since", type=_since_arg, help="RFC 3339 time, or an age such as 10m, 2h, 1d"
    )
    show.add_argument("--kind", choices=KINDS, help="only records of this kind")
    show.add_argument("--json", action="store_true", help="print JSON Lines")
    show.set_defaults(func=cmd_show)

    report = commands.add_parser(
        "report", help="per agent: actions allowed, denied, approved and killed"
    )
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.set_defaults(func=cmd_report)


# ------------------------------------------------------------------ pure parts


def parse_since(text: str, now: datetime) -> datetime:
    """An RFC 3339 time, or an age (`30s`, `10m`, `2h`, `1d`) before `now`."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(seconds=int(amount) * _UNIT_SECONDS[unit])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"'{text}' is neither an RFC 3339 time nor an age like 10m, 2h or 1d"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"'{text}' has no time zone (add Z or an offset such as +02:00)")
    return when


def record_time(record: Mapping[str, object]) -> datetime | None:
    ts = record.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def select(
    records: Iterable[Mapping[str, object]],
    *,
    agent: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
) -> Iterator[Mapping[str, object]]:
    for record in records:
        if agent is not None and record.get("agent") != agent:
            continue
        if kind is not None and record.get("kind") != kind:
            continue
        if since is not None:
            when = record_time(record)
            if when is None or when < since:
                continue
        yield record


def _cell(value: object, width: int) -> str:
    text = "-" if value is None else str(value)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.ljust(width)


def format_row(values: Iterable[object]) -> str:
    cells = (_cell(value, width) for value, (_, width) in zip(values, SHOW_COLUMNS, strict=True))
    return " ".join(cells).rstrip()


def format_report(reports: Mapping[str, AgentReport]) -> str:
    lines: list[str] = []
    header = "".join(f"{name:>10}" for name in OUTCOMES)
    for agent, report in reports.items():
        totals = ", ".join(f"{name} {report.totals[name]}" for name in OUTCOMES)
        lines.append(f"agent {agent}: {totals}")
        for title, table in (("rule", report.by_rule), ("action type", report.by_action_type)):
            lines.append(f"  {'by ' + title:<28}{header}")
            for name, counts in sorted(table.items()):
                row = "".join(f"{counts[outcome]:>10}" for outcome in OUTCOMES)
                lines.append(f"    {_cell(name, 26)}{row}")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------- handlers


def _since_arg(text: str) -> datetime:
    try:
        return parse_since(text, datetime.now(timezone.utc))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _error(message: str) -> int:
    sys.stderr.write(f"agentsup audit: {message}\n")
    return EXIT_FAIL


def cmd_verify(args: argparse.Namespace) -> int:
    locations = default_locations()
    path: Path = args.path or locations.audit_log
    try:
        key = load_key(locations.audit_key)
    except AuditError as exc:
        return _error(f"{exc}; cannot verify (is AGENTSUP_STATE_DIR right?)")
    try:
        head = read_head(locations.audit_head)
    except AuditError as exc:
        print(f"FAIL: head record {locations.audit_head}: {exc}")
        return EXIT_FAIL
    try:
        result = verify_log(path, key, head)
    except OSError as exc:
        return _error(f"cannot read {exc.filename}: {exc.strerror}")
    if result.ok:
        print(f"ok: {result.records} records, chain intact")
        return EXIT_OK
    print(f"FAIL: first bad record seq={result.first_bad_seq}: {result.reason}")
    return EXIT_FAIL


def _records(path: Path) -> Iterator[dict[str, object]] | None:
    if not path.exists():
        return None
    return iter_records(path)


def cmd_show(args: argparse.Namespace) -> int:
    path = default_locations().audit_log
    records = _records(path)
    if records is None:
        return _error(f"no audit log at {path} (nothing has been logged yet?)")
    chosen = select(records, agent=args.agent, kind=args.kind, since=args.since)
    out = sys.stdout
    if args.json:
        for record in chosen:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return EXIT_OK
    out.write(format_row(name for name, _ in SHOW_COLUMNS) + "\n")
    for record in chosen:
        out.write(format_row(record.get(name) for name, _ in SHOW_COLUMNS) + "\n")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    path = default_locations().audit_log
    records = _records(path)
    if records is None:
        return _error(f"no audit log at {path} (nothing has been logged yet?)")
    reports = summarize(records)
    if args.json:
        print(json.dumps({agent: report.to_json() for agent, report in reports.items()}, indent=2))
    else:
        print(
            format_report(reports) if reports else "no allowed, denied, approved or killed actions"
        )
    return EXIT_OK
