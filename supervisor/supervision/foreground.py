"""`agentsup run`: supervise one agent in the foreground (DESIGN.md 1.4).

The run's exit code is the agent's (see agent.py for the table); 125 when
agentsup fails before the agent starts.  SIGINT, SIGTERM and SIGHUP are
forwarded to the agent's tree, which is SIGKILLed if it is still there
after the stop timeout (a second signal kills at once); the run then exits
128+N (130 for SIGINT, 143 for SIGTERM) with one line saying so.

`--json-status FILE` is written after the agent ended, in FILE's directory
as it was before the agent started, and never through a symlink at its name
(`statefiles.write_output`): if it cannot be, a warning says why and the
exit code is still the agent's.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import signal

from ..events import signal_name
from ..integrity.audit import AuditError
from ..integrity.statefiles import open_output_directory, write_output
from ..paths import default_locations
from .agent import EXIT_SETUP_FAILED, Agent, RunRequest, SetupError, say
from .stopping import STOP_TIMEOUT_S
from .supervisor import Supervisor


def status_document(run: Agent, code: int) -> dict[str, object]:
    """What --json-status records about the run's end."""
    assert run.judge is not None
    status = run.judge.exit_status
    sig = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    report = run.judge.kill_report
    judge = run.judge
    return {
        "agent": run.agent_id,
        "exit_code": code,
        "signal": signal_name(sig) if sig else None,
        "killed_by": dataclasses.asdict(report) if report else None,
        # What the agent met short of a kill (new user 17: a stopped and
        # resumed run looked like a clean one).
        "refused": sum(judge.refused.values()) + sum(judge.refused_low.values()),
        "held_for_a_person": judge.holds,
        "layers": run.layers,
    }


class StatusFile:
    """--json-status: its directory held from before the agent starts (reached
    through no symlink), and the file made there at the end, never through a
    symlink either (`statefiles`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._error: OSError | None = None
        self._directory = -1
        try:
            self._directory = open_output_directory(path)
        except OSError as exc:
            self._error = exc

    def write(self, document: dict[str, object]) -> None:
        try:
            if self._error is not None:
                raise self._error
            write_output(self._directory, os.path.basename(self.path), json.dumps(document) + "\n")
        except OSError as exc:
            say(f"warning: cannot write --json-status {self.path}: {exc.strerror or exc}")

    def close(self) -> None:
        if self._directory >= 0:
            os.close(self._directory)
            self._directory = -1


def _interrupted_line(sig: int, run: Agent, code: int, grace: float) -> str:
    name = signal_name(sig)
    if run.judge is not None and run.judge.exit_status is not None:
        status = run.judge.exit_status
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            ended = f"was killed (SIGKILL) after the {grace:g} s stop timeout or a second signal"
        else:
            ended = f"ended with status {code}"
    else:
        ended = "ended"
    return f"interrupted by {name}: agent '{run.agent_id}' got {name} and {ended}"


def run_agent(request: RunRequest, *, stop_timeout: float = STOP_TIMEOUT_S) -> int:
    # The status is written here, after the end, so a bad path never costs the
    # exit code; its directory is held from now on, before the agent runs.
    status = StatusFile(request.json_status) if request.json_status else None
    try:
        return _run_agent(request, stop_timeout, status)
    finally:
        if status is not None:
            status.close()


def _run_agent(request: RunRequest, stop_timeout: float, status: StatusFile | None) -> int:
    try:
        supervisor = Supervisor(default_locations(), stop_timeout=stop_timeout, one_run=True)
    except OSError as exc:
        say(f"cannot start the supervisor: {exc.strerror or exc}")
        return EXIT_SETUP_FAILED
    except AuditError as exc:
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
            if status is not None:  # a CI wrapper reads why it never ran
                status.write(
                    {"agent": request.agent_id, "exit_code": exc.exit_code, "error": str(exc)}
                )
            return exc.exit_code
        finally:
            # `agentsup run` starts with the collector off (cli/main.py).  What
            # the start-up made lives as long as the run: out of its way.
            gc.freeze()
            gc.enable()
        supervisor.run_until(lambda: run.exited)
        code = run.finish()
        if supervisor.interrupted is not None:
            say(_interrupted_line(supervisor.interrupted, run, code, stop_timeout))
            code = 128 + supervisor.interrupted
        if status is not None:
            document = status_document(run, code)
            if supervisor.interrupted is not None:
                document["interrupted_by"] = signal_name(supervisor.interrupted)
            status.write(document)
        return code
    finally:
        supervisor.close()
