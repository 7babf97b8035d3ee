"""`agentsup audit verify | show | report`: check and read the audit log.

Exit codes: 0 on success (an intact chain, for `verify`); 1 when the chain is
broken, the head record is missing (unless `verify --no-head`), or the key,
head record or log cannot be read; 2 on bad usage; 3 when there is no log
to read (the file does not exist, and no head record says it should).

Under `--json`, results and errors alike are JSON on stdout; an error is
`{"ok": false, "error": "...", "exit_code": N}`.  `show` and `report` skip
lines that are not records and say how many on stderr (as JSON under
`--json`).

The text of `show` and `report` is for a terminal: a record's fields (targets,
command lines, messages) are the agent's, so each is printed `visible`, then
cut to its column.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..integrity.audit import (
    KINDS,
    OUTCOMES,
    AgentReport,
    AuditError,
    RecordReader,
    VerifyResult,
    chain_files,
    load_key,
    read_head,
    summarize,
    verify_log,
)
from ..paths import default_locations
from ..visible import visible, visible_cut, visible_lines
from .output import plural, report_error, terminal_columns, wants_json

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_NO_LOG = 3

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
        description=(
            "Exit 0 on an intact log; 1 naming the first bad seq otherwise (and where the "
            "writer restarted the chain after it, if it did), or when the head record is "
            "missing; 3 when the log does not exist."
        ),
    )
    verify.add_argument(
        "path", nargs="?", type=Path, help="the live log file (default: the configured log)"
    )
    verify.add_argument(
        "--no-head",
        action="store_true",
        help="check the chain without the head record (a removed tail then goes unnoticed)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.set_defaults(func=cmd_verify)

    show = commands.add_parser(
        "show",
        help="print records, oldest first",
        description="Print records, oldest first; lines that are not records are counted.",
    )
    show.add_argument("--agent", help="only this agent id")
    show.add_argument(
        "--since", type=_since_arg, help="RFC 3339 time, or an age such as 10m, 2h, 1d"
    )
    show.add_argument("--kind", choices=KINDS, help="only records of this kind")
    show.add_argument("--json", action="store_true", help="print JSON Lines")
    show.set_defaults(func=cmd_show)

    report = commands.add_parser(
        "report",
        help="per agent: actions allowed, denied, approved and killed",
        description="Per agent: actions allowed, denied, approved and killed, by rule and type.",
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


def _cell(value: object, width: int | None) -> str:
    """`value` made `visible`, cut to `width` after that (never inside an escape),
    padded; whole where `width` is None."""
    text = "-" if value is None else str(value)
    if width is None:
        return visible(text).ljust(_LEAST_TARGET)
    return visible_cut(text, width).ljust(width)


_LEAST_TARGET = 40


def show_widths(columns: int | None) -> list[int | None]:
    """Each column's width for a terminal `columns` wide: the target takes what
    the others leave (40 at least); to a pipe (None) it is never cut."""
    fixed = sum(width for name, width in SHOW_COLUMNS if name != "target") + len(SHOW_COLUMNS)
    target = None if columns is None else max(_LEAST_TARGET, columns - fixed)
    return [target if name == "target" else width for name, width in SHOW_COLUMNS]


def shown_values(record: Mapping[str, object]) -> list[object]:
    """A record's cells: a record that is not a decision says what it is in the
    decision column (the signal, the approval's outcome, the lifecycle event
    and exit status) rather than `-`."""
    shown = dict(record)
    kind = record.get("kind")
    if kind == "signal":
        shown["decision"] = record.get("signal")
    elif kind == "approval":
        # A held action's answer (`deny (denied)`), or an operator's command (`resume (ok)`).
        said = record.get("decision") or record.get("op")
        if record.get("held") == "violation":
            said = "continue"  # its action stays denied; a person let the agent go on
        shown["decision"] = f"{said} ({record.get('outcome')})" if said else record.get("outcome")
    elif kind != "decision" and record.get("event") is not None:
        what = str(record.get("event"))
        if record.get("exit_code") is not None:
            what += f" {record.get('exit_code')}"
        shown["decision"] = what
        shown["rule"] = record.get("rule") or record.get("killed_by")
    return [shown.get(name) for name, _ in SHOW_COLUMNS]


def format_row(values: Iterable[object], widths: Sequence[int | None] | None = None) -> str:
    widths = widths or [width for _, width in SHOW_COLUMNS]
    cells = (_cell(value, width) for value, width in zip(values, widths, strict=True))
    return " ".join(cells).rstrip()


def format_report(reports: Mapping[str, AgentReport]) -> str:
    lines: list[str] = []
    header = "".join(f"{name:>10}" for name in OUTCOMES)
    for agent, report in reports.items():
        totals = ", ".join(f"{name} {report.totals[name]}" for name in OUTCOMES)
        lines.append(f"agent {visible(agent)}: {totals}")
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


def _error(args: argparse.Namespace, message: str, code: int = EXIT_FAIL) -> int:
    return report_error(wants_json(args), f"audit: {message}", code)


def verify_document(result: VerifyResult, path: Path, *, head: bool) -> dict[str, object]:
    return {
        "ok": result.ok,
        "log": str(path),
        "head": head,
        "records": result.records,
        "first_bad_seq": result.first_bad_seq,
        "reason": result.reason,
        "where": result.where,
        "breaks": [chain_break.to_json() for chain_break in result.breaks],
        "unchecked": result.unchecked,
        "first_seq": result.first_seq,
    }


def format_verify(result: VerifyResult, *, head: bool) -> str:
    if result.ok:
        text = f"ok: {plural(result.records, 'record')}, chain intact"
        if result.first_seq > 1:
            dropped = plural(result.first_seq - 1, "earlier record")
            text += f" from seq {result.first_seq} (rotation dropped the {dropped})"
        if not head:
            text += " (no head record: removal of the newest records goes unnoticed)"
        return text
    lines = [f"FAIL: first bad record seq={result.first_bad_seq}: {result.reason} ({result.where})"]
    for number, chain_break in enumerate(result.breaks):
        if number:
            lines.append(
                f"  then seq={chain_break.seq}: {chain_break.reason} ({chain_break.where})"
            )
        if chain_break.resumed_at is None:
            continue
        if chain_break.writer_saw and chain_break.writer_saw in chain_break.reason:
            lines.append(f"  checked again from seq {chain_break.resumed_at} on")
        else:
            lines.append(
                f"  the writer restarted the chain at seq {chain_break.resumed_at} "
                f"(it found: {chain_break.writer_saw}); checked again from there"
            )
    if result.unchecked:
        lines.append(f"  {plural(result.unchecked, 'line')} after a break could not be checked")
    lines.append(f"  {plural(result.records, 'record')} intact")
    return "\n".join(lines)


def _verify_failure(args: argparse.Namespace, path: Path, reason: str) -> int:
    """A failure found before the chain is read (no head, no log)."""
    result = VerifyResult(False, 0, None, reason)
    if args.json:
        print(json.dumps(verify_document(result, path, head=False), indent=2))
    else:
        print(f"FAIL: {visible(reason)}")
    return EXIT_FAIL


def cmd_verify(args: argparse.Namespace) -> int:
    locations = default_locations()
    path: Path = args.path or locations.audit_log
    try:
        key = load_key(locations.audit_key)
    except AuditError as exc:
        return _error(args, f"{exc}; cannot verify (is AGENTSUP_STATE_DIR right?)")
    try:
        head = read_head(locations.audit_head)
    except AuditError as exc:
        return _verify_failure(args, path, f"head record {locations.audit_head}: {exc}")
    files = chain_files(path)
    if not files:
        if head is not None and head.seq > 0 and path == locations.audit_log:
            return _verify_failure(
                args,
                path,
                f"the log {path} is gone, but the head record says it held records "
                f"up to seq {head.seq}",
            )
        return _error(args, f"{path} does not exist: no audit log to verify", EXIT_NO_LOG)
    if args.no_head:
        head = None
    elif head is None and _holds_lines(files):
        return _verify_failure(
            args,
            path,
            f"no head record at {locations.audit_head}: a removed tail cannot be detected "
            "(--no-head checks the chain without it)",
        )
    try:
        result = verify_log(path, key, head)
    except OSError as exc:
        return _error(args, f"cannot read {exc.filename}: {exc.strerror}")
    if args.json:
        print(json.dumps(verify_document(result, path, head=head is not None), indent=2))
    else:
        print(visible_lines(format_verify(result, head=head is not None)))
    return EXIT_OK if result.ok else EXIT_FAIL


def _holds_lines(files: list[Path]) -> bool:
    try:
        return any(file.stat().st_size > 0 for file in files)
    except OSError:
        return True  # let the verifier say what is wrong with it


def _reader(args: argparse.Namespace) -> RecordReader | int:
    path = default_locations().audit_log
    if not chain_files(path):
        return _error(args, f"no audit log at {path} (nothing has been logged yet?)", EXIT_NO_LOG)
    return RecordReader(path)


def _say_skipped(args: argparse.Namespace, reader: RecordReader) -> None:
    if not reader.skipped:
        return
    if args.json:
        notice = {"skipped_lines": reader.skipped, "first_skipped": reader.first_skipped}
        sys.stderr.write(json.dumps(notice) + "\n")
        return
    first = visible(str(reader.first_skipped))
    if reader.skipped == 1:
        sys.stderr.write(f"agentsup audit: skipped 1 line that is not a record ({first})\n")
    else:
        sys.stderr.write(
            f"agentsup audit: skipped {reader.skipped} lines that are not records "
            f"(first: {first})\n"
        )


def cmd_show(args: argparse.Namespace) -> int:
    reader = _reader(args)
    if isinstance(reader, int):
        return reader
    chosen = select(reader, agent=args.agent, kind=args.kind, since=args.since)
    out = sys.stdout
    try:
        if args.json:
            for record in chosen:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            widths = show_widths(terminal_columns())
            out.write(format_row((name for name, _ in SHOW_COLUMNS), widths) + "\n")
            for record in chosen:
                out.write(format_row(shown_values(record), widths) + "\n")
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        return _error(args, f"cannot read {exc.filename}: {exc.strerror}")
    _say_skipped(args, reader)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    reader = _reader(args)
    if isinstance(reader, int):
        return reader
    try:
        reports = summarize(reader)
    except OSError as exc:
        return _error(args, f"cannot read {exc.filename}: {exc.strerror}")
    if args.json:
        print(json.dumps({agent: report.to_json() for agent, report in reports.items()}, indent=2))
    else:
        print(
            format_report(reports) if reports else "no allowed, denied, approved or killed actions"
        )
    _say_skipped(args, reader)
    return EXIT_OK
