"""`agentsup run`: supervise one agent in the foreground.

Exit codes (DESIGN.md 1.4): the agent's own code; 128+N when it died by
signal N (137 when the policy or a person killed it); 125 when agentsup
failed before the agent started; 126 when the program cannot be executed;
127 when it is not found.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentsup import _landlock, _seccomp, floor, launch, notify
from agentsup.audit import AuditLog
from agentsup.cgroup import AgentCgroup, CgroupUnavailable
from agentsup.control import ControlServer
from agentsup.events import ActionType, AuditLevel, Decision, Response, response_for
from agentsup.hooks import _protocol as hook_protocol
from agentsup.hooks import bootstrap
from agentsup.hookserver import HookReply, HookRequest, HookServer
from agentsup.loop import EventLoop
from agentsup.mediator import ALWAYS_REFUSED, FORCED_ENOSYS, MEDIATED, Mediator
from agentsup.operator_api import OperatorAPI
from agentsup.paths import Locations, default_locations
from agentsup.policy import CompiledPolicy, PolicyError, RunContext, compile_policy, resolve_policy
from agentsup.policywatch import PolicyWatcher
from agentsup.seal import check_sealed
from agentsup.session import AgentSession, AgentState, Pending, ProcessTree, SessionConfig
from agentsup.totp import TotpVerifier

EXIT_SETUP_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

_PR_SET_CHILD_SUBREAPER = 36

READ_ACTIONS = (ActionType.FILE_READ,)
WRITE_ACTIONS = (
    ActionType.FILE_WRITE,
    ActionType.FILE_DELETE,
    ActionType.FILE_MOVE,
    ActionType.FILE_CHMOD,
)


class SetupError(Exception):
    """agentsup could not start the agent; `exit_code` says how `run` exits."""

    def __init__(self, message: str, exit_code: int = EXIT_SETUP_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunRequest:
    program: str
    args: list[str]
    policy: str = "strict"
    workspace: str = "."
    agent_id: str | None = None
    json_status: str | None = None
    allow_degraded: Sequence[str] = ()
    share_cpu: bool = False


def _say(text: str) -> None:
    print(f"agentsup: {text}", file=sys.stderr, flush=True)


def _has_seccomp_notify() -> bool:
    try:
        return "user_notif" in Path("/proc/sys/kernel/seccomp/actions_avail").read_text().split()
    except OSError:
        return False


def resolve_program(program: str, args: Sequence[str], env_path: str) -> tuple[str, list[str]]:
    """The executable and argv the trampoline execs.  `.py` runs under our Python, hooked."""
    if program.endswith(".py"):
        script = os.path.abspath(program)
        if not os.path.exists(script):
            raise SetupError(f"{program}: not found", EXIT_NOT_FOUND)
        return sys.executable, bootstrap.command(script, args)
    if "/" in program:
        path = os.path.abspath(program)
        if not os.path.exists(path):
            raise SetupError(f"{program}: not found", EXIT_NOT_FOUND)
    else:
        found = shutil.which(program, path=env_path)
        if found is None:
            raise SetupError(f"{program}: command not found", EXIT_NOT_FOUND)
        path = found
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise SetupError(f"{program}: cannot execute (not an executable file)", EXIT_CANNOT_EXECUTE)
    return path, [program, *args]


def _real(paths: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if paths is None:
        return None
    return tuple(os.path.realpath(p) for p in paths)


def plan_landlock(policy: CompiledPolicy, locations: Locations) -> floor.FloorPlan:
    """The kernel floor for this policy: the roots any proceeding rule could reach."""
    network = policy.floor_roots((ActionType.NETWORK_CONNECT,))
    # With network denied by default and no rule letting a connect through,
    # Landlock refuses every TCP connect and bind; otherwise ports stay open
    # and the seccomp layer alone decides.
    tcp_ports: frozenset[int] | None = frozenset() if network == () else None
    return floor.plan_floor(
        read_roots=_real(policy.floor_roots(READ_ACTIONS)),
        write_roots=_real(policy.floor_roots(WRITE_ACTIONS)),
        exec_roots=_real(policy.floor_roots((ActionType.PROCESS_SPAWN,))),
        connect_ports=tcp_ports,
        bind_ports=tcp_ports,
        no_write=[os.path.realpath(p) for p in locations.protected_paths()],
        no_read=[os.path.realpath(p) for p in locations.secret_paths()],
        abi=_landlock.landlock_abi(),
    )


def protected_inodes(policy: CompiledPolicy, budget: int = 20000) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) -> path of the files under the policy's read-deny rules.

    A hard link has no real name to judge, so an open of a multiply-linked file
    is judged under the protected name when its inode is one of these.  The walk
    covers the literal roots of the deny rules (`{home}/.ssh`, `/etc/shadow`);
    a rule with no literal root (`**/*.pem`) cannot be walked.
    """
    found: dict[tuple[int, int], str] = {}
    for rule in policy.rules:
        if not rule.applies or ActionType.FILE_READ not in rule.rule.actions:
            continue
        if response_for(rule.decision).proceeds or rule.matcher.roots is None:
            continue
        for root in rule.matcher.roots:
            if root == "/":
                continue
            for path in _walk_files(root, budget - len(found)):
                try:
                    st = os.stat(path, follow_symlinks=False)
                except OSError:
                    continue
                found.setdefault((st.st_dev, st.st_ino), path)
    return found


def _walk_files(root: str, budget: int) -> list[str]:
    if budget <= 0:
        return []
    if not os.path.isdir(root) or os.path.islink(root):
        return [root] if os.path.isfile(root) else []
    paths: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        paths.extend(os.path.join(dirpath, name) for name in files)
        if len(paths) >= budget:
            break
    return paths[:budget]


def _status_code(raw_status: int) -> tuple[int, int | None]:
    if os.WIFSIGNALED(raw_status):
        sig = os.WTERMSIG(raw_status)
        return 128 + sig, sig
    return os.waitstatus_to_exitcode(raw_status), None


class ForegroundRun:
    """Everything one `agentsup run` owns: the loop, the session, the fds."""

    def __init__(self, request: RunRequest, locations: Locations) -> None:
        self.request = request
        self.locations = locations
        self.loop = EventLoop()
        self.session: AgentSession | None = None
        self.launched: launch.Launched | None = None
        self.mediator: Mediator | None = None
        self.group: AgentCgroup | None = None
        self.exec_error: int | None = None
        self.interrupted: int | None = None
        self.audit = BatchedAudit(AuditLog.open(locations), self.loop.call_later)
        self._watchdog: subprocess.Popen[bytes] | None = None
        self.control: ControlServer | None = None
        self.hooks: HookServer | None = None
        self.watcher: PolicyWatcher | None = None
        self._context: RunContext | None = None

    # -- setup ---------------------------------------------------------------------

    def prepare(self) -> launch.LaunchPlan:
        request = self.request
        workspace = os.path.realpath(request.workspace)
        if not os.path.isdir(workspace):
            raise SetupError(f"workspace {request.workspace} is not a directory")
        agent_id = request.agent_id or f"agent-{os.getpid()}"
        # The watcher comes first: a change between the check and the load is
        # still an event it sees.
        self._watch_policies()
        sealed = check_sealed(self.locations)
        if sealed.tampered:
            raise SetupError(f"refusing to start: {sealed.describe()}")
        try:
            policy = resolve_policy(request.policy, self.locations.policy_dir)
        except PolicyError as exc:
            raise SetupError(str(exc)) from exc
        except OSError as exc:
            raise SetupError(f"cannot read policy {request.policy}: {exc.strerror}") from exc
        home = os.environ.get("HOME") or os.path.expanduser("~")
        self._context = RunContext(workspace, home, agent_id)
        compiled = compile_policy(policy, self._context)

        if not _has_seccomp_notify():
            raise SetupError(
                "this kernel lacks seccomp user notification (Linux 5.5+ needed); "
                "refusing to run the agent unsupervised"
            )
        env = compiled.filter_environ(os.environ)
        executable, argv = resolve_program(request.program, request.args, env.get("PATH", ""))
        hook_socket = None
        if request.program.endswith(".py"):
            self.locations.runtime_dir.mkdir(parents=True, exist_ok=True)
            hook_socket = os.path.realpath(self.locations.runtime_dir / f"hook-{os.getpid()}.sock")
            env.update(bootstrap.environment(hook_socket, agent_id))
            if compiled.audit_level is AuditLevel.ALL:
                env[hook_protocol.ENV_NOTES] = "1"

        landlock_plan: floor.FloorPlan | None = None
        plan = plan_landlock(compiled, self.locations)
        if plan.abi < 1:
            if "landlock" not in request.allow_degraded:
                raise SetupError(
                    "this kernel has no Landlock, the kernel floor under the policy; "
                    "refusing to run (pass --allow-degraded landlock to run on seccomp alone)"
                )
            _say("warning: no Landlock on this kernel; running on the seccomp layer alone")
        else:
            landlock_plan = plan

        self.session = AgentSession(
            SessionConfig(
                agent_id=agent_id,
                policy=compiled,
                policy_name=policy.name,
                workspace=workspace,
                locations=self.locations,
                hook_socket=hook_socket,
            ),
            self.audit,
        )
        if hook_socket is not None:
            try:
                self.hooks = HookServer(Path(hook_socket), self._on_hook_request, self._on_tamper)
            except OSError as exc:
                raise SetupError(f"cannot serve the hook socket {hook_socket}: {exc}") from exc
        try:
            self.group = AgentCgroup.create(f"{agent_id}-{os.getpid()}")
        except CgroupUnavailable as exc:
            if "cgroup" not in request.allow_degraded and os.geteuid() == 0:
                raise SetupError(f"cannot create a cgroup for the agent: {exc}") from exc
            _say(f"warning: no cgroup ({exc}); tracking the process tree as its subreaper")
        limits = compiled.limits
        rlimits = {"RLIMIT_CORE": 0}  # a core dump would write agent memory to disk
        if self.group is not None:
            for gap in self.group.set_limits(limits.max_processes, limits.memory_mb):
                _say(f"warning: cannot enforce {gap}")
        else:
            if limits.memory_mb:
                rlimits["RLIMIT_AS"] = limits.memory_mb * 2**20
            if limits.max_processes:
                rlimits["RLIMIT_NPROC"] = limits.max_processes
        return launch.LaunchPlan(
            executable=executable,
            argv=argv,
            env=env,
            cwd=workspace,
            notify=list(MEDIATED + ALWAYS_REFUSED),
            enosys=list(FORCED_ENOSYS),
            landlock=landlock_plan,
            rlimits=rlimits,
        )

    # -- running -------------------------------------------------------------------

    def start(self, plan: launch.LaunchPlan) -> None:
        assert self.session is not None
        session = self.session
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if self.request.share_cpu:
            # Every trapped syscall is a ping-pong between agent and supervisor;
            # on one CPU each hand-over is a context switch, not a cross-CPU
            # wake-up (DESIGN.md §3: ~15 µs against ~100 µs in a VM).  The
            # forked agent inherits the affinity.
            os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        try:
            launched = launch.start(plan)
        except launch.LaunchError as exc:
            raise SetupError(str(exc)) from exc
        self.launched = launched
        if self.group is not None:
            self.group.add(launched.pid)
            from agentsup.watchdog import spawn_watchdog

            self._watchdog = spawn_watchdog(os.getpid(), self.group)
        session.main_pid = launched.pid
        session.tree = ProcessTree(self.group, launched.pid)
        _seccomp.request_sync_wakeups(launched.listener)
        self.mediator = Mediator(launched.listener, session, session.tgid_of, session.agent_id)
        self.mediator.protected_inodes = protected_inodes(session.policy)
        self.loop.add_reader(launched.listener, self._on_listener)
        self.loop.add_reader(launched.pidfd, lambda _events: self._reap())
        self.loop.add_reader(launched.status_fd, self._on_status)
        self.loop.on_signal(signal.SIGCHLD, self._reap)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.loop.on_signal(sig, functools.partial(self._interrupt, sig))
        self.loop.after_each_batch(self.audit.after_batch)
        self._serve_control()
        if self.hooks is not None:
            self.loop.attach(self.hooks)
        session.on_hold = self._on_hold
        limits = session.policy.limits
        if limits.max_runtime_seconds:
            self.loop.call_later(limits.max_runtime_seconds, self._runtime_exceeded)
        session.lifecycle(
            "start",
            argv=plan.argv,
            workspace=session.config.workspace,
            landlock=plan.landlock is not None,
            cgroup=self.group is not None,
        )
        session.state = AgentState.RUNNING
        launched.release()

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
            _say(f"warning: cannot watch {self.locations.policy_dir} ({exc}); no hot reload")
            return
        watcher = self.watcher
        self.loop.add_reader(watcher.fd(), lambda _events: watcher.on_ready())

        def tick() -> None:
            watcher.check()
            self.loop.call_later(watcher.interval, tick)

        self.loop.call_later(watcher.interval, tick)

    def _on_policy_tamper(self, reasons: list[str]) -> None:
        # Fail closed: nothing runs on rules that may have been rewritten.
        session = self.session
        if session is None or session.state is AgentState.EXITED:
            return
        _say(
            f"policy directory tampered with ({'; '.join(reasons)}); agent stopped until "
            "a person re-seals it with: agentsup policy seal --code <TOTP>"
        )
        session.state = AgentState.STOPPED_TAMPER
        session.signal_tree(signal.SIGSTOP, "policy directory tampered: " + "; ".join(reasons))

    def _on_policy_resealed(self) -> None:
        session = self.session
        if session is not None and session.state is AgentState.STOPPED_TAMPER:
            session.state = AgentState.RUNNING
            session.signal_tree(signal.SIGCONT, "policy directory re-sealed")

    def _on_policy_reload(self) -> None:
        session = self.session
        if session is None or self._context is None:
            return
        try:
            policy = resolve_policy(self.request.policy, self.locations.policy_dir)
            compiled = compile_policy(policy, self._context)
        except (PolicyError, OSError) as exc:
            self.audit.append(
                {
                    "agent": session.agent_id,
                    "kind": "policy",
                    "layer": "supervisor",
                    "severity": "high",
                    "event": "reload-failed",
                    "reason": str(exc),
                }
            )
            _say(f"warning: policy reload failed, keeping the old rules: {exc}")
            return
        session.set_policy(compiled)
        self.audit.append(
            {
                "agent": session.agent_id,
                "kind": "policy",
                "layer": "supervisor",
                "event": "reloaded",
                "policy": policy.name,
            }
        )

    # -- the person in the loop ----------------------------------------------------

    def _serve_control(self) -> None:
        assert self.session is not None
        session = self.session
        api = OperatorAPI(lambda: {session.agent_id: session}, self.audit)
        try:
            self.control = ControlServer(
                self.locations.runtime_dir,
                api,
                TotpVerifier(self.locations),
                owner_uid=os.getuid(),
                clock=self.loop.clock,
            )
        except OSError as exc:
            _say(f"warning: no control socket ({exc}); resume/deny/stop/kill are unavailable")
            return
        self.loop.attach(self.control)

    # -- the Python hook ----------------------------------------------------------

    def _on_hook_request(self, request: HookRequest) -> HookReply | None:
        assert self.session is not None
        session = self.session
        event = request.event(session.agent_id)
        if not request.needs_reply:
            # Notes are telemetry (asked for only at audit level `all`): the
            # syscall layer makes the one decision about files, execs, connects.
            self.audit.append(
                {
                    "agent": session.agent_id,
                    "pid": request.pid,
                    "kind": "decision",
                    "action_type": str(event.action),
                    "target": event.target,
                    "layer": "hook",
                    "note": True,
                    "detail": request.detail,
                }
            )
            return None
        hooks = self.hooks
        assert hooks is not None
        token = request.token
        held: list[Decision] = []

        def answer(approved: bool) -> None:
            hooks.reply_later(token, HookReply.from_decision(held[0], approved=approved))

        decision, response = session.judge_event(event, request.pid, on_settle=answer)
        if response is Response.HOLD:
            held.append(decision)
            return None
        return HookReply.from_decision(decision)

    def _on_tamper(self, pid: int, reason: str) -> None:
        assert self.session is not None
        self.audit.append(
            {
                "agent": self.session.agent_id,
                "pid": pid,
                "kind": "tamper",
                "severity": "critical",
                "layer": "hook",
                "reason": reason,
            }
        )

    def _on_hold(self, pending: Pending) -> None:
        """An agent waits for a person: tell them, and arm the approval timeout."""
        assert self.session is not None
        command = notify.notify_command()
        if command is not None:
            verb = "waits for approval of" if pending.kind == "approval" else "was stopped for"
            notify.send(
                command,
                f"agentsup: agent '{self.session.agent_id}' {verb} {pending.event.action} "
                f"{pending.event.target}",
                {
                    "agent": self.session.agent_id,
                    "request": pending.request_id,
                    "action": str(pending.event.action),
                    "target": pending.event.target,
                    "rule": pending.decision.rule_id,
                    "kind": pending.kind,
                },
                self.loop.call_later,
            )
        self._arm_approval_timeout(pending)

    def _arm_approval_timeout(self, pending: Pending) -> None:
        assert self.session is not None
        if pending.kind != "approval":
            return
        session = self.session
        approval = session.policy.approval
        request_id = pending.request_id

        def expire() -> None:
            if request_id not in session.pending:
                return
            if approval.on_timeout == "kill":
                session.kill_for_limit(
                    "approval.timeout_seconds",
                    f"no decision on {pending.event.action} {pending.event.target} "
                    f"within {approval.timeout_seconds:g} s",
                )
            else:
                session.settle(False, uid=-1, reason="approval timed out", outcome="timeout")

        pending.timer = self.loop.call_later(approval.timeout_seconds, expire)

    def _on_listener(self, events: int) -> None:
        assert self.mediator is not None and self.launched is not None
        if not self.mediator.on_ready(events):
            self.loop.remove_reader(self.launched.listener)

    def _on_status(self, _events: int) -> None:
        assert self.launched is not None
        data = os.read(self.launched.status_fd, 256)
        self.loop.remove_reader(self.launched.status_fd)
        if data.startswith(b"E"):
            self.exec_error = int(data[1:].split()[0])

    def _reap(self) -> None:
        assert self.session is not None and self.launched is not None
        main = self.launched.pid
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.mediator is not None:
                self.mediator.forget_process(pid)
            if pid == main:
                self.session.exit_status = status
                self._agent_exited()

    def _agent_exited(self) -> None:
        assert self.session is not None
        session = self.session
        # The agent is its main process: whatever it left behind goes with it.
        if session.tree is not None and session.tree.pids():
            session.tree.kill()
        session.state = AgentState.EXITED

    def _runtime_exceeded(self) -> None:
        assert self.session is not None
        if self.session.state is not AgentState.EXITED:
            limit = self.session.policy.limits.max_runtime_seconds
            self.session.kill_for_limit("max_runtime_seconds", f"ran longer than {limit} s")

    def _interrupt(self, sig: int) -> None:
        # Fail closed: if the supervisor is told to stop, the agent stops too.
        assert self.session is not None
        self.interrupted = sig
        self.session.signal_tree(signal.SIGKILL, f"supervisor received {signal.Signals(sig).name}")

    def run(self) -> int:
        assert self.session is not None
        session = self.session
        self.loop.run_until(lambda: session.state is AgentState.EXITED)
        return self.finish()

    def finish(self) -> int:
        assert self.session is not None
        session = self.session
        status = session.exit_status if session.exit_status is not None else 0
        code, sig = _status_code(status)
        if self.exec_error is not None:
            code = (
                EXIT_NOT_FOUND
                if self.exec_error in (errno.ENOENT, errno.ENOTDIR)
                else (EXIT_CANNOT_EXECUTE)
            )
            _say(f"cannot execute {self.request.program}: {os.strerror(self.exec_error)}")
        report = session.kill_report
        session.lifecycle(
            "exit",
            exit_code=code,
            signal=signal.Signals(sig).name if sig else None,
            killed_by=report.rule if report else None,
        )
        if self.request.json_status:
            status_doc = {
                "agent": session.agent_id,
                "exit_code": code,
                "signal": signal.Signals(sig).name if sig else None,
                "killed_by": dataclasses.asdict(report) if report else None,
            }
            Path(self.request.json_status).write_text(json.dumps(status_doc) + "\n")
        return code

    def close(self) -> None:
        if self.session is not None and self.session.state is not AgentState.EXITED:
            self.session.signal_tree(signal.SIGKILL, "supervisor shutting down")
        if self.mediator is not None:
            self.mediator.close()
        if self.launched is not None:
            for fd in (self.launched.listener, self.launched.pidfd, self.launched.status_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.launched.go_fd >= 0:
                os.close(self.launched.go_fd)
        if self.group is not None:
            self.group.kill()
            self.group.wait_empty(2.0)
            self.group.remove()
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.terminate()
            watchdog.wait()
        if self.control is not None:
            self.control.close()
        if self.watcher is not None:
            self.watcher.close()
        if self.hooks is not None:
            self.hooks.close()
        self.loop.close()
        self.audit.close()


class BatchedAudit:
    """The audit log as the loop uses it: durable at once when it matters.

    Records about signals, approvals, tampering, the lifecycle and anything
    critical are fsynced at the end of the loop iteration that wrote them.
    Routine records (allows and logs at `audit.level: all`) are fsynced at
    most every 200 ms, or every 256 records, so that level stays usable.
    """

    URGENT_KINDS = frozenset({"signal", "approval", "tamper", "lifecycle", "policy"})

    def __init__(self, log: AuditLog, call_later: Callable[[float, Callable[[], None]], object]):
        self.log = log
        self._call_later = call_later
        self._urgent = False
        self._timer_armed = False

    def append(self, record: Mapping[str, object]) -> Mapping[str, object]:
        written = self.log.append(record)
        if (
            record.get("kind") in self.URGENT_KINDS
            or record.get("severity") == "critical"
            or (record.get("decision") == "deny")
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

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        self.log.close()


def run_agent(request: RunRequest) -> int:
    locations = default_locations()
    try:
        run = ForegroundRun(request, locations)
    except OSError as exc:
        _say(f"cannot open the audit log: {exc}")
        return EXIT_SETUP_FAILED
    started = time.monotonic()
    try:
        try:
            plan = run.prepare()
            run.start(plan)
        except SetupError as exc:
            _say(str(exc))
            return exc.exit_code
        return run.run()
    finally:
        run.close()
        del started
