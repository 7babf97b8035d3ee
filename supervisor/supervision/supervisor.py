"""The supervisor: one event loop that owns every agent and every fd.

A `Supervisor` holds the loop, the audit log, the control socket and the
policy-directory watcher, and any number of `Agent`s.  `agentsup run`
is a supervisor with one agent; `agentsup daemon` one with many.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from collections.abc import Callable, Mapping

from ..control.channel import ControlServer
from ..integrity.audit import AuditLog
from ..integrity.policywatch import PolicyWatcher
from ..integrity.seal import check_sealed
from ..integrity.totp import TotpVerifier
from ..paths import Locations
from .agent import Agent, RunRequest, SetupError, say
from .judge import AgentState, Judge
from .loop import EventLoop
from .operator_api import OperatorAPI

_PR_SET_CHILD_SUBREAPER = 36


class BatchedAudit:
    """The audit log as the loop uses it: durable at once when it matters.

    Records about signals, approvals, tampering, the lifecycle, denies and
    anything critical are fsynced at the end of the loop iteration that wrote
    them.  Routine records (allows and logs at `audit.level: all`) are fsynced
    at most 200 ms (or 256 records) later, so that level stays usable.
    """

    URGENT_KINDS = frozenset({"signal", "approval", "tamper", "lifecycle", "policy"})

    def __init__(
        self, log: AuditLog, call_later: Callable[[float, Callable[[], None]], object]
    ) -> None:
        self.log = log
        self._call_later = call_later
        self._urgent = False
        self._timer_armed = False

    def append(self, record: Mapping[str, object]) -> Mapping[str, object]:
        written = self.log.append(record)
        if (
            record.get("kind") in self.URGENT_KINDS
            or record.get("severity") == "critical"
            or record.get("decision") == "deny"
        ):
            self._urgent = True
        elif not self._timer_armed:
            self._timer_armed = True
            self._call_later(self.log.flush_seconds, self._flush_routine)
        return written

    def _flush_routine(self) -> None:
        self._timer_armed = False
        self.log.flush()

    def after_batch(self) -> None:
        if self._urgent:
            self._urgent = False
            self.log.flush()

    def close(self) -> None:
        self.log.close()


class Supervisor:
    """The loop, the audit log, the control socket, the policy watcher, the agents."""

    def __init__(self, locations: Locations) -> None:
        self.locations = locations
        self.loop = EventLoop()
        self.audit = BatchedAudit(AuditLog.open(locations), self.loop.call_later)
        self.agents: dict[str, Agent] = {}
        self.control: ControlServer | None = None
        self.watcher: PolicyWatcher | None = None
        self.interrupted: int | None = None
        # Called once for each run whose agent ended (the daemon restarts them).
        self.on_agent_exit: Callable[[Agent], None] | None = None
        self.loop.after_each_batch(self.audit.after_batch)
        # Orphans of an agent (setsid, double fork) are re-parented to us, so
        # we can reap and account for them.
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.loop.on_signal(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.loop.on_signal(sig, functools.partial(self._interrupt, sig))
        # The watcher comes before any policy is loaded: a change between the
        # seal check and the load is still an event it sees.
        self._watch_policies()
        self._serve_control()

    def judges(self) -> dict[str, Judge]:
        return {run.agent_id: run.judge for run in self.agents.values() if run.judge}

    # -- agents --------------------------------------------------------------------

    def launch(self, request: RunRequest) -> Agent:
        """Set up and start one agent; SetupError (exit 125/126/127) if it cannot be."""
        sealed = check_sealed(self.locations)
        if sealed.tampered:
            raise SetupError(f"refusing to start: {sealed.describe()}")
        run = Agent(request, self)
        try:
            run.prepare()
            previous = self.agents.get(run.agent_id)
            if previous is not None:
                if not previous.exited:
                    raise SetupError(f"an agent with id '{run.agent_id}' is already running")
                previous.close()
            run.start()
        except BaseException:
            run.close()
            raise
        self.agents[run.agent_id] = run
        return run

    def reap(self) -> None:
        """Collect every exited child; an agent's main process ends its run."""
        mains = {run.launched.pid: run for run in self.agents.values() if run.launched}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for agent in self.agents.values():
                agent.forget_process(pid)
            ended = mains.get(pid)
            if ended is not None and not ended.exited:
                ended.main_exited(status)
                if self.on_agent_exit is not None:
                    self.on_agent_exit(ended)

    def _interrupt(self, sig: int) -> None:
        # Fail closed: if the supervisor is told to stop, its agents stop too.
        self.interrupted = sig
        for run in self.agents.values():
            if run.judge is not None and not run.exited:
                run.judge.signal_tree(
                    signal.SIGKILL, f"supervisor received {signal.Signals(sig).name}"
                )

    def run_until(self, done: Callable[[], bool]) -> None:
        self.loop.run_until(done)

    # -- the sealed policy directory -----------------------------------------------

    def _watch_policies(self) -> None:
        try:
            self.watcher = PolicyWatcher(
                self.locations,
                on_tamper=self._on_policy_tamper,
                on_resealed=self._on_policy_resealed,
                on_reload=self._on_policy_reload,
                clock=self.loop.clock,
                audit=self.audit,
            )
        except OSError as exc:
            say(f"warning: cannot watch {self.locations.policy_dir} ({exc}); no hot reload")
            return
        watcher = self.watcher
        self.loop.add_reader(watcher.fd(), lambda _events: watcher.on_ready())

        def tick() -> None:
            watcher.check()
            self.loop.call_later(watcher.interval, tick)

        self.loop.call_later(watcher.interval, tick)

    def _running_judges(self) -> list[Judge]:
        return [run.judge for run in self.agents.values() if run.judge and not run.exited]

    def _on_policy_tamper(self, reasons: list[str]) -> None:
        # Fail closed: nothing runs on rules that may have been rewritten.
        judges = self._running_judges()
        if judges:
            say(
                f"policy directory tampered with ({'; '.join(reasons)}); agents stopped until "
                "a person re-seals it with: agentsup policy seal --code <TOTP>"
            )
        for judge in judges:
            judge.state = AgentState.STOPPED_TAMPER
            judge.signal_tree(signal.SIGSTOP, "policy directory tampered: " + "; ".join(reasons))

    def _on_policy_resealed(self) -> None:
        for judge in self._running_judges():
            if judge.state is AgentState.STOPPED_TAMPER:
                judge.state = AgentState.RUNNING
                judge.signal_tree(signal.SIGCONT, "policy directory re-sealed")

    def _on_policy_reload(self) -> None:
        for run in self.agents.values():
            run.reload_policy()

    # -- the person in the loop ----------------------------------------------------

    def _serve_control(self) -> None:
        api = OperatorAPI(self.judges, self.audit)
        try:
            self.control = ControlServer(
                self.locations.runtime_dir,
                api,
                TotpVerifier(self.locations),
                owner_uid=os.getuid(),
                clock=self.loop.clock,
            )
        except OSError as exc:
            say(f"warning: no control socket ({exc}); resume/deny/stop/kill are unavailable")
            return
        self.loop.attach(self.control)

    def close(self) -> None:
        for run in self.agents.values():
            run.close()
        if self.control is not None:
            self.control.close()
        if self.watcher is not None:
            self.watcher.close()
        self.loop.close()
        self.audit.close()
