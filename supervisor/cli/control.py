"""`agentsup ps | top | pending | resume | deny | stop | kill`: talk to running supervisors.

Every supervisor serves `sup-<pid>.sock` in the runtime directory.  `ps`,
`top` and `pending` ask all of them; the other commands find the supervisor
that has the agent and send it the request.  Exit 0 on success, 1 when
refused or when a supervisor could not be asked (`ps` and `pending` still
list what the others said, and name the one that did not answer).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..control.channel import (
    ControlError,
    SupervisorBusy,
    SupervisorUnreachable,
    remove_if_stale,
    request,
    socket_pid,
    supervisor_sockets,
)
from ..paths import default_locations
from ..visible import visible, visible_cut
from .output import CommandError, add_json_flag, emit, json_text, wants_json
from .resources import UsageSampler, human_bytes
from .totp import code_argument

EXIT_OK = 0
EXIT_REFUSED = 1
LISTING_TIMEOUT_S = 3.0  # a supervisor that takes longer to list its agents is reported
ACTION_TIMEOUT_S = 10.0

PS_COLUMNS = (
    "ID",
    "PID",
    "POLICY",
    "STATE",
    "UPTIME",
    "PENDING",
    "PROCS",
    "CPU%",
    "MEM",
    "READ",
    "WRITE",
    "NET",
)
PENDING_COLUMNS = ("REQUEST", "AGENT", "ACTION", "TARGET", "RULE", "MESSAGE", "AGE")


@dataclass
class Survey:
    """What every supervisor said to one request, and which ones could not be asked."""

    records: list[dict[str, object]] = field(default_factory=list)
    silent: list[dict[str, object]] = field(default_factory=list)

    def rows_for_json(self) -> list[dict[str, object]]:
        return [*self.records, *self.silent]


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
    """Columns padded to their widest cell; cells are already `visible` (see `_cells`)."""
    widths = [len(c) for c in columns]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (columns, *rows)
    ]
    return "\n".join(lines)


def _cell(value: object, width: int | None = None) -> str:
    """A table cell: the value made `visible`, then cut to `width` (between escapes)."""
    text = str(value)
    return visible(text) if width is None else visible_cut(text, width, "...")


def _usage_cells(usage: object) -> list[str]:
    if not isinstance(usage, dict):
        return ["-"] * 6
    connections = usage.get("connections")
    cpu = usage.get("cpu_percent")
    return [
        str(usage.get("processes", "-")),
        f"{cpu:.1f}" if isinstance(cpu, int | float) else "-",
        human_bytes(usage.get("rss_bytes")),
        human_bytes(usage.get("read_bytes")),
        human_bytes(usage.get("write_bytes")),
        str(len(connections)) if isinstance(connections, list) else "-",
    ]


def ps_rows(agents: Sequence[dict[str, object]]) -> list[list[str]]:
    rows = []
    for a in agents:
        if a.get("id") is None:  # a supervisor that did not answer
            state = _cell(f"{a.get('state')}: supervisor pid {a.get('supervisor_pid')}")
            rows.append(["?", "-", "-", state, "-", "-", *["-"] * 6])
            continue
        rows.append(
            [
                _cell(a.get("id", "?")),
                _cell(a.get("pid", "-")),
                _cell(a.get("policy", "-")),
                _cell(a.get("state", "-")),
                format_duration(a.get("uptime_s")),
                str(a.get("pending", 0)),
                *_usage_cells(a.get("usage")),
            ]
        )
    return rows


def pending_rows(items: Sequence[dict[str, object]]) -> list[list[str]]:
    return [
        [
            _cell(p.get("request_id", "-")),
            _cell(p.get("agent", "-")),
            _cell(p.get("action_type", "-")),
            # Whole, however wide: a person approves what runs (padding would
            # push `; rm ...` past a cut: red team 25).
            _cell(p.get("target", "")),
            _cell(p.get("rule", "-")),
            _cell(p.get("message", "")),
            format_duration(p.get("age_s")),
        ]
        for p in items
    ]


def _runtime_dir() -> Path:
    return default_locations().runtime_dir


def survey(runtime_dir: Path, op: str, timeout: float = LISTING_TIMEOUT_S) -> Survey:
    """Send `op` to every supervisor.  Dead ones' sockets are removed; silent ones listed."""
    found = Survey()
    for path in supervisor_sockets(runtime_dir):
        pid = socket_pid(path)

        def silent(state: str, error: object, pid: int | None = pid) -> None:
            found.silent.append(
                {"id": None, "supervisor_pid": pid, "state": state, "error": str(error)}
            )

        try:
            result = request(path, {"op": op}, timeout=timeout)
        except SupervisorBusy as exc:
            silent("busy", exc)
            continue
        except SupervisorUnreachable as exc:
            if not remove_if_stale(path, refused=exc.refused):
                silent("unreachable", exc)
            continue
        except ControlError as exc:
            silent("refused", exc)
            continue
        if not isinstance(result, list):
            silent("unreachable", f"{path}: unexpected answer to {op}")
            continue
        for item in result:
            if isinstance(item, dict):
                found.records.append({**item, "supervisor_pid": pid})
    return found


def _warn_silent(found: Survey) -> None:
    for entry in found.silent:
        said = f"supervisor pid {entry['supervisor_pid']} is {entry['state']}: {entry['error']}"
        sys.stderr.write(f"agentsup: {visible(said)}\n")


def add_usage(agents: list[dict[str, object]], sampler: UsageSampler, *, lifetime: bool) -> None:
    """Add each agent's resource use (psutil, over the pids its supervisor listed)."""
    listed: list[int] = []
    for agent in agents:
        pids = agent.get("pids")
        if not isinstance(pids, list):
            main = agent.get("pid")
            pids = [main] if isinstance(main, int) and main > 0 else []
        numbers = [p for p in pids if isinstance(p, int)]
        listed += numbers
        uptime = agent.get("uptime_s")
        span = float(uptime) if lifetime and isinstance(uptime, int | float) else None
        if agent.get("state") == "exited":
            continue
        agent["usage"] = sampler.sample(numbers, lifetime_s=span).to_json()
    sampler.forget_gone(listed)


def cmd_ps(args: argparse.Namespace) -> int:
    found = survey(_runtime_dir(), "ps")
    add_usage(found.records, UsageSampler(), lifetime=True)
    if wants_json(args):
        print(json_text(found.rows_for_json()))
    elif not found.records and not found.silent:
        print("no supervised agents")
    else:
        print(format_table(PS_COLUMNS, ps_rows(found.rows_for_json())))
    return EXIT_REFUSED if found.silent else EXIT_OK


def cmd_top(args: argparse.Namespace) -> int:
    sampler = UsageSampler()
    interactive = sys.stdout.isatty() and not wants_json(args)
    count = 0
    # SIGTERM ends top as quietly as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            found = survey(_runtime_dir(), "ps")
            add_usage(found.records, sampler, lifetime=count == 0)
            _show_top(args, found, interactive)
            count += 1
            if args.iterations and count >= args.iterations:
                return EXIT_REFUSED if found.silent else EXIT_OK
            time.sleep(args.interval)
    except KeyboardInterrupt:
        if interactive:
            print()
        return EXIT_OK


def _show_top(args: argparse.Namespace, found: Survey, interactive: bool) -> None:
    if wants_json(args):
        # JSON Lines: one compact document per refresh, for `jq` or a line reader.
        document = {"time": time.time(), "agents": found.rows_for_json()}
        print(json.dumps(document, default=str, ensure_ascii=False), flush=True)
        return
    states = [str(a.get("state")) for a in found.records]
    running = states.count("running") + states.count("starting")
    stopped = sum(1 for state in states if state.startswith("stopped"))
    header = (
        f"agentsup top - {time.strftime('%H:%M:%S')}  {running} agent(s) running, "
        f"{stopped} stopped, {states.count('exited')} exited; every {args.interval:g} s "
        "(Ctrl-C quits)"
    )
    table = format_table(PS_COLUMNS, ps_rows(found.rows_for_json()))
    if interactive:
        sys.stdout.write("\x1b[H\x1b[2J")  # home, clear screen
    print(f"{header}\n\n{table}\n", flush=True)


def cmd_pending(args: argparse.Namespace) -> int:
    found = survey(_runtime_dir(), "pending")
    if wants_json(args):
        print(json_text(found.rows_for_json()))
        return EXIT_REFUSED if found.silent else EXIT_OK
    _warn_silent(found)
    if not found.records:
        print("nothing pending")
    else:
        print(format_table(PENDING_COLUMNS, pending_rows(found.records)))
    return EXIT_REFUSED if found.silent else EXIT_OK


def find_supervisor(runtime_dir: Path, agent_id: str) -> Path:
    """The socket of the one supervisor that runs `agent_id`; raises ControlError."""
    found = survey(runtime_dir, "ps")
    holders = sorted(
        {
            int(str(a["supervisor_pid"]))
            for a in found.records
            if a.get("id") == agent_id and a.get("state") != "exited"
        }
        or {int(str(a["supervisor_pid"])) for a in found.records if a.get("id") == agent_id}
    )
    if not holders:
        silent = ", ".join(str(s["supervisor_pid"]) for s in found.silent)
        hint = f"; supervisor pid {silent} did not answer" if silent else ""
        raise ControlError(f"no agent {agent_id!r} (see agentsup ps){hint}")
    if len(holders) > 1:
        pids = ", ".join(str(p) for p in holders)
        raise ControlError(
            f"agent id {agent_id!r} is used by several supervisors (pids {pids}); "
            "stop the duplicate or give each run a unique --id"
        )
    return runtime_dir / f"sup-{holders[0]}.sock"


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
        result = request(path, payload, timeout=ACTION_TIMEOUT_S)
    except ControlError as exc:
        raise CommandError(f"{op} refused: {exc}") from None
    except SupervisorUnreachable as exc:
        raise CommandError(
            f"{op} failed: the supervisor did not answer ({exc}); check agentsup ps"
        ) from None
    emit(
        args,
        {"ok": True, "op": op, "agent": args.agent_id, "result": result},
        f"{result}{_NEXT_STEP[op].format(agent=args.agent_id)}",
    )
    return EXIT_OK


def _action_handler(op: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return _run_action(op, args)

    return handler


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ps = subparsers.add_parser(
        "ps",
        help="list supervised agents and what their process trees use",
        description=(
            "List every agent of every supervisor in the runtime directory: id, main pid, "
            "policy, state, uptime, pending actions, and over its whole process tree the "
            "number of processes, CPU (average since start), resident memory, storage I/O "
            "and open network connections. A supervisor that does not answer within "
            f"{LISTING_TIMEOUT_S:g} s is listed as unreachable or busy with its pid (exit 1)."
        ),
    )
    add_json_flag(ps)
    ps.set_defaults(func=cmd_ps)

    top = subparsers.add_parser(
        "top",
        help="a live view of agents and their resource use",
        description=(
            "Redraw the ps table every --interval seconds, with CPU % over the last "
            "interval. Ctrl-C quits. Without a terminal (or with --json) each refresh is "
            "printed after the last."
        ),
    )
    top.add_argument(
        "--interval", type=float, default=2.0, metavar="SECONDS", help="refresh period (default 2)"
    )
    top.add_argument(
        "--iterations", type=int, default=0, metavar="N", help="stop after N refreshes"
    )
    add_json_flag(top, "print one JSON document per refresh, one per line (JSON Lines)")
    top.set_defaults(func=cmd_top)

    pending = subparsers.add_parser(
        "pending",
        help="list actions waiting for a person",
        description=(
            "List held actions (require_approval) and sigstop violations waiting for "
            "agentsup resume or deny."
        ),
    )
    add_json_flag(pending)
    pending.set_defaults(func=cmd_pending)

    resume = subparsers.add_parser(
        "resume",
        help="approve the held action or continue after a violation (needs TOTP)",
        description=(
            "Approve the agent's held action (it proceeds once) or continue an agent "
            "stopped for a violation (the action stays denied), then SIGCONT its tree. "
            "Needs a current TOTP code (agentsup totp init); each code works once."
        ),
    )
    resume.add_argument("agent_id", metavar="AGENT_ID")
    resume.add_argument(
        "--code",
        required=True,
        type=code_argument,
        metavar="TOTP",
        help="current TOTP code, or - to read it from standard input (out of sight of ps)",
    )
    resume.add_argument("--reason", metavar="TEXT", help="why, for the audit log")
    add_json_flag(resume)
    resume.set_defaults(func=_action_handler("resume"))

    helps = {
        "deny": (
            "refuse the held action and continue the agent",
            "Refuse the agent's held action: the syscall fails with a permission error "
            "(EACCES or EPERM, as the policy's deny would) and the agent continues.",
        ),
        "stop": (
            "SIGSTOP the agent's whole process tree",
            "SIGSTOP every process of the agent's tree; agentsup resume continues it.",
        ),
        "kill": (
            "SIGKILL the agent's whole process tree",
            "SIGKILL every process of the agent's tree. A daemon agent is restarted only "
            "with restart: always.",
        ),
    }
    for op, (short, long) in helps.items():
        parser = subparsers.add_parser(op, help=short, description=long)
        parser.add_argument("agent_id", metavar="AGENT_ID")
        parser.add_argument("--reason", metavar="TEXT", help="why, for the audit log")
        add_json_flag(parser)
        parser.set_defaults(func=_action_handler(op))
