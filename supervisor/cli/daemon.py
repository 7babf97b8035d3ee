"""`agentsup daemon`: supervise the agents of the agents directory (systemd Type=notify)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "daemon",
        help="supervise many agents as a service (systemd Type=notify)",
        description=(
            "Start and supervise every agent defined in the agents directory "
            "(/etc/agentsup/agents/*.yaml as root, ~/.config/agentsup/agents/ for a user, or "
            "$AGENTSUP_AGENTS_DIR), from one event loop, restarting them as their definitions "
            "say. SIGHUP rescans the directory; SIGTERM stops every agent and exits 0. "
            "ps, pending, resume, deny, stop and kill reach its agents as they reach a "
            "foreground run."
        ),
    )
    parser.set_defaults(func=_daemon)


def _daemon(_args: argparse.Namespace) -> int:
    from ..supervision.daemon import run_daemon

    return run_daemon()
