"""`agentsup daemon`: supervise the agents of the agents directory (systemd Type=notify)."""

from __future__ import annotations

import argparse

from ..supervision.stopping import STOP_TIMEOUT_S
from .run import seconds_argument


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "daemon",
        help="supervise many agents as a service (systemd Type=notify)",
        description=(
            "Start and supervise every agent defined in the agents directory "
            "(/etc/agentsup/agents/*.yaml as root, ~/.config/agentsup/agents/ for a user, "
            "$AGENTSUP_AGENTS_DIR, or --agents-dir), from one event loop, restarting them "
            "as their definitions say, with a growing delay and a start limit. SIGHUP "
            "applies added, changed and removed definitions; SIGTERM stops every agent "
            "(SIGTERM, then SIGKILL after --stop-timeout) and exits 0. Each agent's output "
            "goes to its log (agentsup logs ID) and, prefixed [ID], to the daemon's stderr. "
            "Exit 1 when it cannot start (an unusable runtime directory or audit log, a "
            "missing --agents-dir)."
        ),
    )
    parser.add_argument(
        "--agents-dir", metavar="DIR", help="read agent definitions (*.yaml) from DIR"
    )
    parser.add_argument(
        "--stop-timeout",
        type=seconds_argument,
        default=STOP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"SIGKILL an agent this long after its SIGTERM (default {STOP_TIMEOUT_S:g})",
    )
    parser.set_defaults(func=_daemon)


def _daemon(args: argparse.Namespace) -> int:
    from ..supervision.daemon import run_daemon

    return run_daemon(args.agents_dir, stop_timeout=args.stop_timeout)
