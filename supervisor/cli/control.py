"""`agentsup ps | pending | resume | deny | stop | kill`: talk to running supervisors.

Every supervisor serves `sup-<pid>.sock` in the runtime directory.  `ps` and
`pending` ask all of them; the other commands find the supervisor that has
the agent and send it the request.  Exit 0 on success, 1 when refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..control.channel import (
    ControlError,
    SupervisorUnreachable,
    remove_if_stale,
    request,
    socket_pid,
    supervisor_sockets,
)
from ..paths import default_locations

EXIT_OK = 0
EXIT_REFUSED = 1
_TARGET_WIDTH = 60

PS_COLUMNS = ("ID", "PID", "POLICY", "STATE", "UPTIME", "PENDING")
PENDING_COLUMNS = ("REQUEST", "AGENT", "ACTION", "TARGET", "RULE", "MESSAGE", "AGE")


@dataclass(frozen=True, slots=True)
class SupervisorReply:
    socket: Path
    result: object


def format_duration(seconds: object) -> str:
    """`42s`, `3m05s`, `2h07m`, `3d04h`; `-` for a missing value."""
    if not isinstance(seconds, int | float) or seconds < 0:
        return "-"
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(c) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (columns, *rows)
    ]
    return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def ps_rows(agents: Sequence[dict[str, object]]) -> list[list[str]]:
    return [
        [
            str(a.get("id", "?")),
            str(a.get("pid", "-")),
            str(a.get("policy", "-")),
            str(a.get("state", "-")),
            format_duration(a.get("uptime_s")),
            str(a.get("pending", 0)),
        ]
        for a in agents
    ]


def pending_rows(items: Sequence[dict[str, object]]) -> list[list[str]]:
    return [
        [
            str(p.get("request_id", "-")),
            str(p.get("agent", "-")),
            str(p.get("action_type", "-")),
            _shorten(str(p.get("target", "")), _TARGET_WIDTH),
            str(p.get("rule", "-")),
            str(p.get("message", "")),
            format_duration(p.get("age_s")),
        ]
        for p in items
    ]


def _warn(message: str) -> None:
    sys.stderr.write(f"agentsup: {message}\n")


def _runtime_dir() -> Path:
    return default_locations().runtime_dir


def ask_all(runtime_dir: Path, op: str) -> Iterator[SupervisorReply]:
    """Send `op` to every supervisor; stale sockets are removed, other failures warned."""
    for path in supervisor_sockets(runtime_dir):
        try:
            yield SupervisorReply(path, request(path, {"op": op}))
        except SupervisorUnreachable as exc:
            if remove_if_stale(path):
                continue
            _warn(f"supervisor pid {socket_pid(path)} did not answer: {exc}")
        except ControlError as exc:
            _warn(str(exc))


def _records(runtime_dir: Path, op: str) -> list[dict[str, object]]:
    records: list[dict[str, object]] = []
    for reply in ask_all(runtime_dir, op):
        if not isinstance(reply.result, list):
            _warn(f"{reply.socket}: unexpected answer to {op}")
            continue
        for item in reply.result:
            if isinstance(item, dict):
                records.append({**item, "supervisor_pid": socket_pid(reply.socket)})
    return records


def cmd_ps(args: argparse.Namespace) -> int:
    agents = _records(_runtime_dir(), "ps")
    if args.json:
        print(json.dumps(agents, indent=2, default=str))
    elif not agents:
        print("no supervised agents")
    else:
        print(format_table(PS_COLUMNS, ps_rows(agents)))
    return EXIT_OK


def cmd_pending(args: argparse.Namespace) -> int:
    items = _records(_runtime_dir(), "pending")
    if args.json:
        print(json.dumps(items, indent=2, default=str))
    elif not items:
        print("nothing pending")
    else:
        print(format_table(PENDING_COLUMNS, pending_rows(items)))
    return EXIT_OK


def find_supervisor(runtime_dir: Path, agent_id: str) -> Path:
    """The socket of the one supervisor that runs `agent_id`; raises ControlError."""
    holders = [
        reply.socket
        for reply in ask_all(runtime_dir, "ps")
        if isinstance(reply.result, list)
        and any(isinstance(a, dict) and a.get("id") == agent_id for a in reply.result)
    ]
    if not holders:
        raise ControlError(f"no agent {agent_id!r} (see agentsup ps)")
    if len(holders) > 1:
        pids = ", ".join(str(socket_pid(p)) for p in holders)
        raise ControlError(
            f"agent id {agent_id!r} is used by several supervisors (pids {pids}); "
            "stop the duplicate or give each run a unique --id"
        )
    return holders[0]


_NEXT_STEP = {
    "resume": "",
    "deny": "",
    "stop": " (resume it with: agentsup resume {agent} --code TOTP)",
    "kill": "",
}


def _run_action(op: str, args: argparse.Namespace) -> int:
    payload: dict[str, object] = {"op": op, "agent": args.agent_id, "reason": args.reason or ""}
    if op == "resume":
        payload["code"] = args.code
    try:
        path = find_supervisor(_runtime_dir(), args.agent_id)
        result = request(path, payload)
    except ControlError as exc:
        _warn(f"{op} refused: {exc}")
        return EXIT_REFUSED
    except SupervisorUnreachable as exc:
        _warn(f"{op} failed: the supervisor went away ({exc}); check agentsup ps")
        return EXIT_REFUSED
    print(f"{result}{_NEXT_STEP[op].format(agent=args.agent_id)}")
    return EXIT_OK


def _action_handler(op: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return _run_action(op, args)

    return handler


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ps = subparsers.add_parser("ps", help="list supervised agents")
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.set_defaults(func=cmd_ps)

    pending = subparsers.add_parser("pending", help="list actions waiting for a person")
    pending.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pending.set_defaults(func=cmd_pending)

    resume = subparsers.add_parser(
        "resume", help="approve the held action or continue after a violation (needs TOTP)"
    )
    resume.add_argument("agent_id", metavar="AGENT_ID")
    resume.add_argument("--code", required=True, metavar="TOTP", help="current TOTP code")
    resume.add_argument("--reason", metavar="TEXT", help="why, for the audit log")
    resume.set_defaults(func=_action_handler("resume"))

    helps = {
        "deny": "refuse the held action (EPERM) and continue the agent",
        "stop": "SIGSTOP the agent's whole process tree",
        "kill": "SIGKILL the agent's whole process tree",
    }
    for op, text in helps.items():
        parser = subparsers.add_parser(op, help=text)
        parser.add_argument("agent_id", metavar="AGENT_ID")
        parser.add_argument("--reason", metavar="TEXT", help="why, for the audit log")
        parser.set_defaults(func=_action_handler(op))
