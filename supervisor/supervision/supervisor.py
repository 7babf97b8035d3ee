"""The supervisor: one event loop that owns every agent and every fd.

A `Supervisor` holds the loop, the audit log, the control socket and the
policy-directory watcher, and any number of `Agent`s.  `agentsup run`
is a supervisor with one agent; `agentsup daemon` one with many.

`agentsup run`'s supervisor (`one_run=True`) starts lean: it binds its
control socket at once (an unusable runtime directory is still the first
error) but serves it, and imports what serving takes, only while the
agent's trampoline sets up (launch.start), before the agent runs.  Its
policy directory is watched from `WATCH_AFTER` s into the run, against the
seal status read before the policy was loaded, so a change made in between
is still reported; a short command never pays for the watch (its imports,
and the teardown of inotify marks at exit).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from ..control.agentids import AgentIdClaim, AgentIdTaken, claim_agent_id
from ..control.endpoint import bind_control_socket, close_listener, socket_path
from ..events import AuditLevel
from ..integrity.audit import AuditLog, format_ts
from ..integrity.seal import SealStatus, check_sealed
from ..integrity.shares import AuditShares
from ..paths import Locations, UntrustedLocation, untrusted_locations
from .agent import Agent, RunRequest, SetupError, say
from .judge import AgentState, Judge
from .loop import EventLoop
from .stopping import STOP_TIMEOUT_S, STOPPED_STATES, stop_gracefully

if TYPE_CHECKING:
    from ..control.channel import ControlServer
    from ..integrity.policywatch import PolicyWatcher

_PR_SET_CHILD_SUBREAPER = 36
# How long `agentsup run`'s agent runs before its policy directory is watched: when
# the watcher's timer made its first check (policywatch.DEFAULT_INTERVAL).
WATCH_AFTER = 1.0
# Held until then, and given back one for one: the watcher's imports open one file
# at a time, and its inotify instance is one fd.
_WATCH_FDS = 1


class BatchedAudit:
    """The audit log as the loop uses it: durable at once when it matters.

    Records about signals, approvals, tampering, the lifecycle, denies and
    anything critical are fsynced at the end of the loop iteration that wrote
    them.  Routine records (allows and logs at `audit.level: all`) are fsynced
    at most 200 ms (or 256 records) later, so that level stays usable.

    When the log cannot be written (ENOSPC, EDQUOT, EIO on a write or a
    sync), nothing is raised to the caller.  Records are held in memory, in
    order, up to `max_held` (the rest are counted), and every running agent
    whose record is held is SIGSTOPped: it acts no more than can be audited.
    A failed sync stops every running agent, since any of their records may
    be lost.  One stderr line says so.  A timer retries every RETRY_SECONDS;
    once the log takes writes again, the held records go in between an
    `audit_log_unwritable` and an `audit_log_writable` lifecycle record (the
    latter counts any dropped ones), and the agents stopped for it continue.
    """

    URGENT_KINDS = frozenset({"signal", "approval", "tamper", "lifecycle", "policy"})
    RETRY_SECONDS = 0.5
    MAX_HELD = 10_000
    _STOPPABLE = (AgentState.STARTING, AgentState.RUNNING)

    def __init__(
        self,
        log: AuditLog,
        call_later: Callable[[float, Callable[[], None]], object],
        judges: Callable[[], Mapping[str, Judge]] = dict,
    ) -> None:
        self.log = log
        self.max_held = self.MAX_HELD
        self._call_later = call_later
        self._judges = judges
        self._urgent = False
        self._timer_armed = False
        self._failure: OSError | None = None  # why the log cannot be written now
        self._held: list[dict[str, object]] = []
        self._held_count = 0  # records kept in memory during this stall
        self._dropped = 0
        self._stalled_at = ""
        self.shares = AuditShares(log.retained_bytes)

    @property
    def stalled(self) -> bool:
        return self._failure is not None

    def append(self, record: Mapping[str, object]) -> Mapping[str, object]:
        if self._failure is None:
            before = self.log.bytes_written
            try:
                written = self.log.append(record)
            except OSError as exc:
                self._stall(exc)
            else:
                agent_id = record.get("agent")
                if isinstance(agent_id, str):
                    self._count_share(agent_id, record, self.log.bytes_written - before)
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
        return self._hold(record)

    def _count_share(self, agent_id: str, record: Mapping[str, object], size: int) -> None:
        """Kill an agent whose records would push older ones out of the log (AuditShares)."""
        # (The judges are looked up only when needed: the mapping is built per call.)
        if _asked_for(record, lambda: self._judges().get(agent_id)):
            # What a padded record holds beyond a plain one is the agent's own.
            size -= ASKED_FOR_BYTES
            if size <= 0:
                return
        share = self.shares.add(agent_id, self.log.bytes_written, size)
        if not self.shares.over(share):
            return
        judge = self._judges().get(agent_id)
        if judge is None or judge.kill_report is not None or judge.state is AgentState.EXITED:
            return  # dying already: its last records still go in
        judge.kill_for_limit(
            "audit_share",
            f"its audit records took {_mib(share)}, more than a quarter of the "
            f"{_mib(self.log.retained_bytes)} the log keeps: more would push older records out",
        )

    def _flush_routine(self) -> None:
        self._timer_armed = False
        self._flush()

    def after_batch(self) -> None:
        if self._urgent:
            self._urgent = False
            self._flush()

    def _flush(self) -> None:
        if self._failure is not None:
            return  # the retry timer flushes
        try:
            self.log.flush()
        except OSError as exc:
            # Which records were lost is unknown: every running agent stops.
            self._stall(exc)
            for judge in self._judges().values():
                self._stop(judge)

    # -- the log cannot be written ---------------------------------------------------

    def _stall(self, exc: OSError) -> None:
        self._failure = exc
        self._stalled_at = format_ts(time.time())
        self._held_count = self._dropped = 0
        self._hold(
            {
                "kind": "lifecycle",
                "event": "audit_log_unwritable",
                "layer": "supervisor",
                "severity": "high",
                "error": _describe(exc),
                "ts": self._stalled_at,
            }
        )
        say(
            f"cannot write the audit log {self.log.path}: {_describe(exc)}; agents whose "
            f"records cannot be written are stopped until it can be "
            f"(retrying every {self.RETRY_SECONDS:g} s)"
        )
        self._call_later(self.RETRY_SECONDS, self._retry)

    def _hold(self, record: Mapping[str, object]) -> Mapping[str, object]:
        held = dict(record)
        if held.get("ts") is None:
            held["ts"] = format_ts(time.time())  # when it happened, not when written
        if len(self._held) < self.max_held:
            self._held.append(held)
            self._held_count += 1
        else:
            self._dropped += 1
        agent_id = record.get("agent")
        if isinstance(agent_id, str):
            judge = self._judges().get(agent_id)
            if judge is not None:
                self._stop(judge)
        return held

    def _stop(self, judge: Judge) -> None:
        if judge.state not in self._STOPPABLE:
            return  # stopped already, by this stall or otherwise
        assert self._failure is not None
        # First: the SIGSTOP's own record comes back here.  The state is what
        # `ps` shows and `resume` refuses, and it stops the agent again if a
        # re-sealed policy continued it while the log is still unwritable.
        judge.state = AgentState.STOPPED_AUDIT
        judge.signal_tree(
            signal.SIGSTOP, f"the audit log cannot be written: {_describe(self._failure)}"
        )

    def _retry(self) -> None:
        if self._failure is None:
            return
        if not self._drain():
            self._call_later(self.RETRY_SECONDS, self._retry)
            return
        held, dropped = self._held_count, self._dropped
        lost = f", {dropped} dropped (over {self.max_held})" if dropped else ""
        say(
            f"the audit log {self.log.path} is writable again: {_records(held)} held in "
            f"memory are written{lost}; stopped agents continue"
        )
        for _agent_id, judge in sorted(self._judges().items()):
            # The agents this stall stopped; not those a person, a violation or
            # a tampered policy stopped meanwhile.
            if judge.state is AgentState.STOPPED_AUDIT:
                judge.state = AgentState.RUNNING
                judge.signal_tree(signal.SIGCONT, "the audit log can be written again")

    def _drain(self) -> bool:
        """Write what is held, then the record that closes the gap; False if still failing."""
        try:
            self.log.flush()  # after a failed sync this writes the unsynced lines again
            while self._held:
                batch = self._held[:256]
                self.log.append_many(batch)
                del self._held[: len(batch)]
            self.log.append(
                {
                    "kind": "lifecycle",
                    "event": "audit_log_writable",
                    "layer": "supervisor",
                    "severity": "high" if self._dropped else "medium",
                    "since": self._stalled_at,
                    "held": self._held_count,
                    "dropped": self._dropped,
                }
            )
            self.log.flush()
        except OSError as exc:
            self._failure = exc
            return False
        self._failure = None
        return True

    def close(self) -> None:
        if self._failure is not None and not self._drain():
            lost = len(self._held) + self._dropped
            say(
                f"{_records(lost)} could not be written to the audit log {self.log.path} "
                f"({_describe(self._failure)}) and are lost"
            )
            self._held.clear()
            self._failure = None
        try:
            self.log.close()
        except OSError as exc:
            say(f"cannot flush the audit log {self.log.path}: {_describe(exc)}")


# A record the policy or the run asked to keep counts in its agent's share
# only for what it holds beyond this many bytes.
ASKED_FOR_BYTES = 1024


def _asked_for(record: Mapping[str, object], judge_of: Callable[[], Judge | None]) -> bool:
    """A record the policy or the run asked to keep: an action let through
    (allow, log, warn) that is recorded for the policy's own rule, or under
    `--shadow` (would_deny), not one the agent can make at will beside its
    actions: a hook's note, or the egress proxy's record of each request,
    which are asked for only at `audit.level: all`."""
    if record.get("would_deny"):
        return True
    if record.get("decision") not in ("allow", "log", "warn"):
        return False
    if not record.get("note") and record.get("layer") != "proxy":
        return True
    judge = judge_of()
    return judge is not None and judge.policy.audit_level is AuditLevel.ALL


def _mib(size: int) -> str:
    mib = size / 2**20
    return f"{mib:.2g} MiB" if mib < 10 else f"{mib:.0f} MiB"


def _records(count: int) -> str:
    return "1 record" if count == 1 else f"{count} records"


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "error")
    return f"{exc.strerror or exc} ({name})"


class Supervisor:
    """The loop, the audit log, the control socket, the policy watcher, the agents."""

    def __init__(
        self, locations: Locations, *, stop_timeout: float = STOP_TIMEOUT_S, one_run: bool = False
    ) -> None:
        reason = untrusted_locations(locations)
        if reason is not None:
            raise UntrustedLocation(errno.EPERM, reason)
        self.locations = locations
        # SIGINT/SIGTERM/SIGHUP are forwarded to the agents; SIGKILL after this long.
        self.stop_timeout = stop_timeout
        self.claims: dict[str, AgentIdClaim] = {}
        self.loop = EventLoop()
        self.audit = BatchedAudit(AuditLog.open(locations), self.loop.call_later, self.judges)
        self.agents: dict[str, Agent] = {}
        self.control: ControlServer | None = None
        self._control_socket: socket.socket | None = None  # bound, not served yet
        self.watcher: PolicyWatcher | None = None
        self._watch_fds: list[int] = []  # held for the watcher until it starts
        self.interrupted: int | None = None
        # Called once for each run whose agent ended (the daemon restarts them).
        self.on_agent_exit: Callable[[Agent], None] | None = None
        # Adds to (or edits) what `ps` lists (the daemon's failed and waiting agents).
        self.describe_agents: Callable[[list[dict[str, object]]], list[dict[str, object]]] = (
            lambda listed: listed
        )
        self.loop.after_each_batch(self.audit.after_batch)
        # Orphans of an agent (setsid, double fork) are re-parented to us, so
        # we can reap and account for them.
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.loop.on_signal(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.loop.on_signal(sig, functools.partial(self._interrupt, sig))
        try:
            if one_run:
                # Served, and the policy directory watched, from the first launch.
                self._control_socket = bind_control_socket(locations.runtime_dir, os.getuid())
            else:
                # The watcher comes before any policy is loaded: a change between
                # the seal check and the load is still an event it sees.
                self._watch_policies()
                self._serve_control()
        except BaseException:
            self.close()
            raise

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
            self._claim(run.agent_id)
            run.start(lambda: self._before_agent_runs(sealed))
        except BaseException:
            run.close()
            raise
        self.agents[run.agent_id] = run
        return run

    def _before_agent_runs(self, sealed: SealStatus) -> None:
        """What a lean supervisor (`one_run`) does while its first agent is set up."""
        if self._control_socket is None:
            return  # served (and watching) since __init__, or since the first launch
        try:
            self._serve_control()
        except OSError as exc:
            raise SetupError(f"cannot start the supervisor: {exc.strerror or exc}") from exc
        # Its first check compares against `sealed`, read before the policy was.
        self._watch_from(sealed)

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
                try:
                    ended.main_exited(status)
                    if self.on_agent_exit is not None:
                        self.on_agent_exit(ended)
                except Exception as exc:  # that agent's end, no other's (loop.Owner)
                    ended.fail_closed(exc)

    def _claim(self, agent_id: str) -> None:
        """Hold the id for as long as this supervisor has the agent (agentids.py)."""
        if agent_id in self.claims:
            return
        try:
            self.claims[agent_id] = claim_agent_id(self.locations.runtime_dir, agent_id)
        except AgentIdTaken as exc:
            raise SetupError(str(exc)) from exc
        except OSError as exc:
            raise SetupError(f"cannot claim agent id '{agent_id}': {exc}") from exc

    def release_id(self, agent_id: str) -> None:
        claim = self.claims.pop(agent_id, None)
        if claim is not None:
            claim.release()

    def stop_agent(self, run: Agent, sig: int, why: str) -> None:
        """Forward `sig` to the agent's tree; SIGKILL it after `stop_timeout` s."""
        if run.judge is not None and not run.exited:
            stop_gracefully(
                run.judge,
                sig,
                why,
                audit=self.audit,
                call_later=self.loop.call_later,
                grace=self.stop_timeout,
            )

    def _interrupt(self, sig: int) -> None:
        # Fail closed: if the supervisor is told to stop, its agents stop too,
        # given the signal first and a grace period; a second signal kills now.
        again = self.interrupted is not None
        self.interrupted = sig
        why = f"supervisor received {signal.Signals(sig).name}"
        for run in self.agents.values():
            if run.judge is None or run.exited:
                continue
            if again:
                run.judge.signal_tree(signal.SIGKILL, f"{why} again")
            else:
                self.stop_agent(run, sig, why)

    def run_until(self, done: Callable[[], bool]) -> None:
        self.loop.run_until(done)

    # -- the sealed policy directory -----------------------------------------------

    def _watch_from(self, baseline: SealStatus) -> None:
        """Watch the policy directory from WATCH_AFTER s on, comparing against `baseline`.

        The watcher's modules are imported then too (inotify_simple brings
        ctypes.util, subprocess, shutil and tempfile: ~8 ms a short command
        never needs).  An import opens files: until then an fd is held for
        it and the inotify instance, so that an agent that used up the
        supervisor's fds cannot keep it from watching.  (Its checks, out of
        fds, are "unavailable": what it knew stands, and it checks again.)
        """
        try:
            while len(self._watch_fds) < _WATCH_FDS:
                self._watch_fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            self._release_watch_fds()
            say(f"warning: cannot watch {self.locations.policy_dir} ({exc}); no hot reload")
            return

        def start() -> None:
            self._release_watch_fds()
            self._watch_policies(baseline)

        self.loop.call_later(WATCH_AFTER, start)

    def _release_watch_fds(self) -> None:
        while self._watch_fds:
            os.close(self._watch_fds.pop())

    def _watch_policies(self, baseline: SealStatus | None = None) -> None:
        """Watch the policy directory from now on; with a `baseline`, check against it now."""
        try:
            from ..integrity.policywatch import PolicyWatcher

            self.watcher = PolicyWatcher(
                self.locations,
                on_tamper=self._on_policy_tamper,
                on_resealed=self._on_policy_resealed,
                on_reload=self._on_policy_reload,
                clock=self.loop.clock,
                audit=self.audit,
                baseline=baseline,
            )
        except (OSError, ImportError) as exc:
            say(f"warning: cannot watch {self.locations.policy_dir} ({exc}); no hot reload")
            return
        watcher = self.watcher
        self.loop.add_reader(watcher.fd(), lambda _events: watcher.on_ready())

        def tick() -> None:
            watcher.check()
            self.loop.call_later(watcher.interval, tick)

        if baseline is None:
            self.loop.call_later(watcher.interval, tick)
        else:
            tick()

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
            if judge.state is not AgentState.STOPPED_TAMPER:
                # A stop for a person (a violation, an approval, an operator's) stays
                # when the re-seal lifts this one (red team 38).
                judge.covered_stop = judge.state if judge.state in STOPPED_STATES else None
            judge.state = AgentState.STOPPED_TAMPER
            judge.signal_tree(signal.SIGSTOP, "policy directory tampered: " + "; ".join(reasons))

    def _on_policy_resealed(self) -> None:
        say("policy directory re-sealed: agents stopped for its tampering continue")
        for judge in self._running_judges():
            if judge.state is AgentState.STOPPED_TAMPER:
                covered, judge.covered_stop = judge.covered_stop, None
                if covered is not None:
                    judge.state = covered  # still stopped, for the person it waits for
                    continue
                judge.state = AgentState.RUNNING
                judge.signal_tree(signal.SIGCONT, "policy directory re-sealed")

    def _on_policy_reload(self) -> None:
        for run in self.agents.values():
            run.reload_policy()

    # -- the person in the loop ----------------------------------------------------

    def _serve_control(self) -> None:
        from ..control.channel import ControlServer
        from ..integrity.totp import TotpVerifier
        from .operator_api import OperatorAPI

        api = OperatorAPI(self.judges, self.audit, lambda listed: self.describe_agents(listed))
        # No control socket, no supervisor: nobody could resume, deny or stop its
        # agents, and its ids could not be claimed (RuntimeDirError says why).
        self.control = ControlServer(
            self.locations.runtime_dir,
            api,
            TotpVerifier(self.locations),
            owner_uid=os.getuid(),
            clock=self.loop.clock,
            call_later=self.loop.call_later,
            listener=self._control_socket,
        )
        self._control_socket = None  # the server's now
        self.loop.attach(self.control)

    def close(self) -> None:
        for run in self.agents.values():
            run.close()
        if self.control is not None:
            self.control.close()
        if self._control_socket is not None:
            path = socket_path(self.locations.runtime_dir, os.getpid())
            close_listener(self._control_socket, path)
        if self.watcher is not None:
            self.watcher.close()
        self._release_watch_fds()
        for agent_id in list(self.claims):
            self.release_id(agent_id)
        self.loop.close()
        self.audit.close()
