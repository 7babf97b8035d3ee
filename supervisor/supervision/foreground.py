"""`agentsup run`: supervise one agent in the foreground (DESIGN.md 1.4).

The run's exit code is the agent's (see agentrun.py for the table); 125
when agentsup fails before the agent starts.
"""

from __future__ import annotations

import os

from ..paths import default_locations
from .agent import EXIT_SETUP_FAILED, RunRequest, SetupError, say
from .supervisor import Supervisor


def run_agent(request: RunRequest) -> int:
    try:
        supervisor = Supervisor(default_locations())
    except OSError as exc:
        say(f"cannot start the supervisor: {exc}")
        return EXIT_SETUP_FAILED
    try:
        if request.cpus == "shared":
            # Every trapped syscall is a ping-pong between agent and supervisor;
            # on one CPU each hand-over is a context switch, not a cross-CPU
            # wake-up (DESIGN.md §3).  The forked agent inherits the affinity.
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        try:
            run = supervisor.launch(request)
        except SetupError as exc:
            say(str(exc))
            return exc.exit_code
        supervisor.run_until(lambda: run.exited)
        return run.finish()
    finally:
        supervisor.close()
