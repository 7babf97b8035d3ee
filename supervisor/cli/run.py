"""`agentsup run`: start PROGRAM as a supervised agent in the foreground."""

from __future__ import annotations

import argparse
import os
import sys

from ..control.agentids import BadAgentId, check_agent_id
from ..supervision.agent import EXIT_SETUP_FAILED, RunRequest
from ..supervision.foreground import run_agent
from ..supervision.stopping import STOP_TIMEOUT_S


def agent_id_argument(text: str) -> str:
    try:
        return check_agent_id(text)
    except BadAgentId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run PROGRAM under supervision (foreground)",
        description=(
            "Start PROGRAM as a child process whose every file, exec, network and memory "
            "action is checked against the policy at the syscall boundary. A PROGRAM "
            "ending in .py runs under agentsup's own Python with the audit hook. Exit "
            "status: the agent's own; 128+N if it died by signal N (137: killed by policy "
            "or a person); 125 if agentsup failed before the agent started (bad usage, bad "
            "policy, an agent id another supervisor uses, an unusable runtime directory); "
            "126 if PROGRAM cannot be executed; 127 if it is not found. SIGINT, SIGTERM and "
            "SIGHUP are forwarded to the agent's tree, SIGKILL follows after --stop-timeout "
            "(or a second signal), and run exits 128+N (130, 143, 129)."
        ),
    )
    parser.usage_exit_code = EXIT_SETUP_FAILED  # type: ignore[attr-defined]
    parser.add_argument(
        "--policy",
        default="strict",
        help="policy name (policy directory, then built-in templates) or path; default strict",
    )
    parser.add_argument(
        "--workspace",
        default=".",
        help="the directory the agent works in (default: current); it starts in the "
        "current directory when that lies in the workspace, else at the workspace's root",
    )
    parser.add_argument(
        "--id",
        dest="agent_id",
        type=agent_id_argument,
        help="agent id, unique among running agents (default: agent-<pid>)",
    )
    parser.add_argument(
        "--json-status",
        metavar="FILE",
        help="write the final status (exit code, signal, rule); if FILE cannot be written, "
        "a warning says so and the exit code is still the agent's",
    )
    parser.add_argument(
        "--stop-timeout",
        type=seconds_argument,
        default=STOP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"after a forwarded SIGINT/SIGTERM, SIGKILL the agent's tree this much later "
        f"(default {STOP_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--allow-degraded",
        action="append",
        default=[],
        choices=["landlock", "cgroup", "namespaces", "user", "mount", "pid", "uts", "ipc", "net"],
        help="run even if this kernel feature is missing (one warning line); "
        "namespaces: any of them",
    )
    parser.add_argument(
        "--user",
        metavar="NAME",
        help="run the agent as this user, with its groups (root only)",
    )
    parser.add_argument(
        "--cpus",
        choices=["auto", "all", "shared"],
        default="auto",
        help="auto (default): share the supervisor's CPU while the agent makes many "
        "mediated syscalls on about one core, spread when it computes in parallel; "
        "all: never share; shared: always share (2-3x cheaper mediated syscalls)",
    )
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="enforce nothing: record each action the policy would refuse (would_deny: true "
        "in the audit log) and let it go, print a summary at exit; secrets, destructive "
        "commands and agentsup's own files stay refused (then: agentsup policy suggest)",
    )
    parser.add_argument("program", metavar="PROGRAM")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    parser.set_defaults(func=_run)


def _caller_directory() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # removed since: the agent starts at the workspace's root
        return None


def _run(args: argparse.Namespace) -> int:
    program_args = list(args.args)
    if program_args[:1] == ["--"]:
        program_args = program_args[1:]
    request = RunRequest(
        program=args.program,
        args=program_args,
        policy=args.policy,
        workspace=args.workspace,
        agent_id=args.agent_id,
        json_status=args.json_status,
        allow_degraded=args.allow_degraded,
        cpus=args.cpus,
        user=args.user,
        terminal=sys.stdin.isatty() and sys.stdout.isatty(),
        shadow=args.shadow,
        cwd=_caller_directory(),
    )
    return run_agent(request, stop_timeout=args.stop_timeout)
