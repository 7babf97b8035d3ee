"""`agentsup logs [-f] [-n N] [--json] ID`: what a daemon agent wrote to stdout and stderr."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from ..control.agentids import BadAgentId
from ..control.logs import LogReader, log_path, parse_line
from ..paths import default_locations
from ..visible import visible_output
from .output import CommandError, add_json_flag, wants_json

EXIT_OK = 0


def _print(args: argparse.Namespace, line: str) -> None:
    if wants_json(args):
        print(json.dumps({"agent": args.agent_id, **parse_line(line)}, ensure_ascii=False))
    else:
        print(visible_output(line))  # the agent's text: no control reaches the terminal


def cmd_logs(args: argparse.Namespace) -> int:
    locations = default_locations()
    try:
        path = log_path(locations, args.agent_id)
    except BadAgentId as exc:
        raise CommandError(str(exc), 2) from None
    rotated = path.with_name(path.name + ".1")
    if not path.exists() and not rotated.exists() and not args.follow:
        raise CommandError(
            f"no log for agent '{args.agent_id}' in {path.parent} (agentsup daemon keeps one "
            "for each of its agents; a foreground run writes to its own terminal)"
        )
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        reader = LogReader(path)
    except PermissionError as exc:
        raise CommandError(f"cannot read {exc.filename}: permission denied") from None
    try:
        for line in reader.tail(args.tail):
            _print(args, line)
        sys.stdout.flush()
        if args.follow:
            for line in reader.follow():
                _print(args, line)
                sys.stdout.flush()
    except PermissionError as exc:
        raise CommandError(f"cannot read {exc.filename}: permission denied") from None
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        reader.close()
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print what a daemon agent wrote to stdout and stderr",
        description=(
            "Print the log of one of agentsup daemon's agents: every line it wrote to stdout "
            "or stderr, with the time and the stream, across restarts. Logs live beside the "
            "audit log in agents/ID.log (/var/log/agentsup/agents/ as root, "
            "~/.local/state/agentsup/agents/ for a user) and rotate at 10 MiB to ID.log.1."
        ),
    )
    parser.add_argument("agent_id", metavar="AGENT_ID")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C"
    )
    parser.add_argument(
        "-n", "--tail", type=int, metavar="N", help="only the last N lines (default: all)"
    )
    add_json_flag(parser, "one JSON object per line: agent, time, stream, text")
    parser.set_defaults(func=cmd_logs)
