"""The judge of one agent: its state, its process tree, and decisions turned into action.

The judge is where a decision becomes action: self-protection first, then
the policy, then rate limits, then the audit record, then signals.  Nothing
here reads agent memory or speaks seccomp; the mediator does that and asks
`judge(event, tid)`.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import os
import signal
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple, Protocol, TextIO

from ..events import (
    ActionType,
    AuditLevel,
    Decision,
    Event,
    Layer,
    Response,
    Severity,
    Verdict,
    ViolationMode,
    response_for,
    should_audit,
)
from ..kernel import cgroup as cgroups
from ..kernel.proc import process_group, process_state, thread_group_id
from ..paths import Locations, own_user_site
from ..policy import CompiledPolicy, RateLimiter
from ..policy.engine import MoveEscape, PlainTables
from ..policy.floor import FloorCheck, floor_prefixes, floor_reaches, floor_verdict
from ..visible import cut_text, visible

if TYPE_CHECKING:
    from pathlib import Path

_ALLOW_CACHE_SIZE = 16384
SELF_PROTECTION_RULE = "agentsup-self-protection"
HOOK_CODE_RULE = "agentsup-hook-code"
ALWAYS_REFUSED_RULE = "agentsup-always-refused"
OUTSIDE_TREE_RULE = "agentsup-outside-tree"
OUTSIDE_VIEW_RULE = "agentsup-outside-view"
NOT_OPENED_RULE = "agentsup-not-opened"
EXEC_UNCHECKED_RULE = "agentsup-exec-unchecked"
HARD_LINKED_RULE = "agentsup-hard-linked"
MEDIATION_ERROR_RULE = "agentsup-mediation-error"
STOPPED_RULE = "agentsup-stopped"
UNREADABLE_PROGRAM_RULE = "agentsup-unreadable-program"
INTERPRETER_REFUSED_RULE = "agentsup-interpreter-refused"

_WRITE_CLASS = frozenset(
    {ActionType.FILE_WRITE, ActionType.FILE_DELETE, ActionType.FILE_MOVE, ActionType.FILE_CHMOD}
)


def _package_dirs() -> tuple[str, ...]:
    from .. import hooks

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return tuple(
        os.path.realpath(path) for path in (package, os.path.dirname(hooks.__file__ or ""))
    )


# A hooked Python agent imports agentsup.hooks (and the package around it)
# before its first line; that code is public and read-only to it.
_AGENTSUP_CODE = _package_dirs()
_AGENTSUP_CODE_DIRS = tuple(root + "/" for root in _AGENTSUP_CODE)  # one startswith
_HOOK_CODE_DECISION = Decision(
    verdict=Verdict.ALLOW,
    rule_id=HOOK_CODE_RULE,
    severity=Severity.LOW,
    message="",
    on_violation=ViolationMode.BLOCK,
    reason="agentsup's own hook code is readable by the agents it hooks",
)


_HOOK_SOCKET_DECISION = Decision(
    verdict=Verdict.ALLOW,
    rule_id="agentsup-hook-channel",
    severity=Severity.LOW,
    message="",
    on_violation=ViolationMode.BLOCK,
    reason="the hook's channel to its own supervisor",
)


_EGRESS_PROXY_DECISION = Decision(
    verdict=Verdict.ALLOW,
    rule_id="agentsup-egress-proxy",
    severity=Severity.LOW,
    message="",
    on_violation=ViolationMode.BLOCK,
    reason="the egress proxy: the agent's one way out, judged per request",
)


def _shown(target: str) -> str:
    """A target fit for a record: bytes of a path that are not UTF-8 written as \\xNN.

    Paths are decoded with surrogate escapes, which no UTF-8 writer takes;
    the decision is made on the path itself, only the record shows it so.
    """
    if target.isascii():
        return target
    try:
        return target.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no byte escapes to (\ud800): as \ud800
        return target.encode("utf-8", "backslashreplace").decode("utf-8")


class AuditSink(Protocol):
    def append(self, record: Mapping[str, object]) -> Mapping[str, object]: ...


class AgentState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    AWAITING_APPROVAL = "stopped: awaiting approval"
    STOPPED_VIOLATION = "stopped: violation"
    STOPPED_OPERATOR = "stopped: by operator"
    STOPPED_TAMPER = "stopped: policy tampered"
    STOPPED_AUDIT = "stopped: audit log unwritable"
    EXITED = "exited"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class Pending:
    """An action waiting for a person: a require_approval hold or a sigstop violation."""

    request_id: str
    kind: str  # "approval" | "violation"
    tid: int
    event: Event
    decision: Decision
    since: float
    timer: object | None = None
    # For hook-layer holds: answers the waiting request (True = approved).
    # Seccomp holds need none: the syscall is reissued and meets a grant.
    on_settle: Callable[[bool], None] | None = None


@dataclass(slots=True)
class KillReport:
    """What killed the agent (a rule, a limit, an operator), for the run's last lines."""

    rule: str
    action: str
    target: str
    message: str


class ProcessTree:
    """Every process of one agent: its cgroup where there is one, else what hangs below the root.

    The root is the trampoline; its one child is the agent's init (and broker).
    Without a cgroup the tree is every live descendant of the root, read with
    psutil from the parent links:

    - With a PID namespace, the init is its PID 1: orphans (double-forked
      daemons, children of dead parents) re-parent to it, so every process of
      the namespace is below the root, and SIGKILL to the init makes the
      kernel kill the whole namespace at once, forks in flight included.
    - Without one, the init is a subreaper: orphans re-parent to it and stay
      in the tree.  Not covered: a process re-parented after its init died
      (the agent may signal its own init, same user) goes to the host's
      init, outside the tree, and is neither shown nor killed; and a kill
      sweep races a fast fork loop (repeated until nothing new shows up,
      not atomic as `cgroup.kill` is).  Limits are per-process rlimits.

    What a kill needs is opened up front (the group's `cgroup.kill`, pidfds
    of the root and of a namespace's init), so that a supervisor out of fds
    can still kill.
    """

    def __init__(self, group: cgroups.AgentCgroup | None, root_pid: int) -> None:
        self.group = group
        self.root_pid = root_pid
        self._kill_fd = self._events_fd = self._root_fd = self._init_fd = -1
        if group is not None:  # v2 only: a v1 group has neither file
            self._kill_fd = _open_or_none(f"{group.tracking}/cgroup.kill", os.O_WRONLY)
            self._events_fd = _open_or_none(f"{group.tracking}/cgroup.events", os.O_RDONLY)
        self._root_fd = _pidfd_or_none(root_pid)
        # What the last `signal_all` could not do (read the tree, pin a pid):
        # processes it may have missed.  Empty when it reached every one.
        self.missed: list[str] = []
        # The broker is the root's one child (the init of the agent's namespace).
        self._broker = _first_child(root_pid)
        if self._broker > 0 and _namespace_init(root_pid, self._broker):
            self._init_fd = _pidfd_or_none(self._broker)
        fds = (self._kill_fd, self._events_fd, self._root_fd, self._init_fd)
        weakref.finalize(self, _close_fds, fds)

    def pids(self) -> set[int]:
        """The tree's processes; only its root when they cannot be read (out of fds)."""
        try:
            return self._read_pids()
        except OSError:
            return {self.root_pid}  # not empty: a kill still goes out, and escalates

    def _read_pids(self) -> set[int]:
        """The tree's processes; OSError when they cannot be read, where a
        group that cannot be listed (out of fds) would look empty."""
        if self.group is not None:
            return self.group.pids(strict=True)
        found = _descendants(self.root_pid)
        if os.path.exists(f"/proc/{self.root_pid}"):
            found.add(self.root_pid)
        return found

    def signal_all(self, sig: int) -> set[int]:
        """Send `sig` to every process of the tree; the pids signalled.

        SIGSTOP spares the broker: stopped in the middle of an ADDFD, it
        would be interrupted there, and the agent's open() return 0.  It does
        nothing on its own, so the agent is as stopped as before.
        """
        self.missed = []
        spared = {self._broker} if sig == signal.SIGSTOP and self._broker > 0 else set()
        signalled = self._signal_once(sig, spared)
        if sig == signal.SIGSTOP:
            # One pass reaches processes one by one, and one not yet stopped can
            # SIGCONT the rest (red team 38: `kill -CONT -1` in a fork loop):
            # again, until none runs.  A stopped process sends nothing.
            for _ in range(_STOP_PASSES):
                running = {pid for pid in self.pids() - spared if _runs(pid)}
                if not running:
                    break
                time.sleep(_STOP_PAUSE)  # a signal lands when its process is scheduled
                signalled |= self._signal_once(sig, spared)
        return signalled

    def _signal_once(self, sig: int, spared: set[int]) -> set[int]:
        if self.group is not None and not spared:
            return self.group.signal_all(sig)
        return self._sweep(sig, spared)

    def _sweep(self, sig: int, spared: set[int]) -> set[int]:
        """Signal every process of the tree but `spared`, until no new one shows up;
        the pids signalled.

        A fork racing with the signal is caught on the next pass; each pid is
        pinned with a pidfd and found in the tree again before it is
        signalled (a recycled pid outside the tree is never hit).  What
        could not be done (out of fds) is added to `missed`.
        """
        seen: set[int] = set()
        signalled: set[int] = set()
        while True:
            fresh = self._members() - seen - spared
            if not fresh:
                return signalled
            pinned: dict[int, int] = {}
            for pid in fresh:
                try:
                    pinned[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue  # gone already
                except OSError as exc:
                    self._miss(f"cannot pin pid {pid}: {exc.strerror or exc}")
            try:
                still = self._members()
                for pid, fd in pinned.items():
                    if pid in still:
                        with contextlib.suppress(ProcessLookupError):
                            signal.pidfd_send_signal(fd, sig)
                            signalled.add(pid)
            finally:
                _close_fds(tuple(pinned.values()))
            seen |= fresh

    def _members(self) -> set[int]:
        try:
            return self._read_pids()
        except OSError as exc:
            self._miss(f"cannot read the agent's processes: {exc.strerror or exc}")
            return {self.root_pid}  # not empty: a kill still goes out, and escalates

    def _miss(self, why: str) -> None:
        if why not in self.missed and len(self.missed) < 8:
            self.missed.append(why)

    def kill(self) -> list[str]:
        """SIGKILL the whole tree; [] when that is confirmed, else how it was escalated.

        Confirmed means the group's `cgroup.events` says it is no longer
        populated (read through an fd opened at start: a sweep that could not
        open the group's files sees no members, which proves nothing), or,
        without a cgroup, that no live process is left below the root.
        Without a cgroup, the namespace's init is killed first (the kernel
        then kills its whole namespace), then every process found.
        Unconfirmed, the fds opened up front are used: `cgroup.kill`, and
        SIGKILL to the tree's root, whose death takes the agent's init and its
        PID namespace along.
        """
        try:
            if self.group is None:
                self._kill_below()
                if self._none_left_below():
                    return []
            elif cgroups.kill_groups([self.group.tracking]) and self._emptied():
                return []
        except OSError:
            pass
        escalated = []
        if self._kill_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self._kill_fd, b"1")
                escalated.append("cgroup.kill")
        if self._root_fd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._root_fd, signal.SIGKILL)
                escalated.append("root")
        return escalated or ["nothing"]

    def _emptied(self, timeout: float = 1.0) -> bool:
        """Whether `cgroup.events` says "populated 0" within `timeout` (no file: trust it)."""
        if self._events_fd < 0:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                if b"populated 0" in os.pread(self._events_fd, 256, 0):
                    return True
            except OSError:
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def _kill_below(self) -> None:
        """SIGKILL the tree without a cgroup: its namespace at once, else the init last.

        A subreaper init must outlive the rest: a process whose init died is
        re-parented out of the tree before the sweep reaches it.  The root
        goes last too, as its death kills the init (parent-death signal).
        """
        if self._init_fd >= 0:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._init_fd, signal.SIGKILL)
        self._sweep(signal.SIGKILL, {self.root_pid, self._broker})
        self._sweep(signal.SIGKILL, set())

    def _none_left_below(self, timeout: float = 1.0) -> bool:
        """Whether only zombies are left below the root within `timeout` (no cgroup).

        The killed processes stay zombies until their parents, killed too,
        are gone; the root itself is the supervisor's to reap.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = _descendants(self.root_pid, alive=True)
            if not left:
                return True
            if time.monotonic() >= deadline:
                return False
            self._kill_below()  # one forked after the sweep
            time.sleep(0.005)

    def has(self, pid: int) -> bool:
        """Whether `pid` (a process or thread id, as we number it) belongs to the tree."""
        tgid = thread_group_id(pid)
        if self.group is None:  # up its parent links, rather than listing every process
            return tgid == self.root_pid or _has_ancestor(tgid, self.root_pid)
        return tgid in self.pids()

    def has_group(self, pgid: int) -> bool:
        """Whether process group `pgid` is one of the tree's.

        A group lives in one session, and the agent's sessions hold only its
        own processes, so a group any of them is in is wholly the agent's.
        """
        return any(process_group(pid) == pgid for pid in self.pids())


def _pidfd_or_none(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def _descendants(pid: int, *, alive: bool = False) -> set[int]:
    """Every process below `pid` now (`alive`: zombies left out); empty once it is gone.

    psutil reads the parent links of every process; imported here, so that a
    run with a cgroup never loads it.
    """
    import psutil

    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    except psutil.Error as exc:
        raise OSError(f"cannot read the process tree below {pid}: {exc}") from exc
    if not alive:
        return {child.pid for child in below}
    found = set()
    for child in below:
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
    return found


def _has_ancestor(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is among the parents of `pid` (False when it cannot be read)."""
    import psutil

    try:
        return any(parent.pid == ancestor for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def _namespace_init(root_pid: int, init_pid: int) -> bool:
    """Whether `init_pid`, the root's child, is PID 1 of a PID namespace of its own."""
    try:
        return os.readlink(f"/proc/{init_pid}/ns/pid") != os.readlink(f"/proc/{root_pid}/ns/pid")
    except OSError:
        return False


def _first_child(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as children:
            return int(children.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _open_or_none(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError:
        return -1


def _close_fds(fds: tuple[int, ...]) -> None:
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


@dataclass
class JudgeConfig:
    """What a Judge is made from: the agent, its compiled policy, where things are."""

    agent_id: str
    policy: CompiledPolicy
    policy_name: str
    workspace: str
    locations: Locations
    hook_socket: str | None = None  # the one unix socket path the agent may connect to
    egress_proxy: str | None = None  # `127.0.0.1:PORT`: the egress proxy in the agent's netns
    # `run --shadow`: the guard (policy.suggest) whose refusals still apply; None: enforce.
    shadow_guard: CompiledPolicy | None = None
    # The files the policy was read from, outside the policy directory (a
    # `--policy ./pol.yaml`): the agent may not change what a reload reads.
    policy_files: tuple[str, ...] = ()
    # agentsup's own import path (Agent._own_import_dirs): a .pth or module the
    # agent wrote there would run in the next agentsup, as root.
    import_dirs: tuple[str, ...] = ()
    clock: Callable[[], float] = time.monotonic
    stderr: TextIO = field(default_factory=lambda: sys.stderr)


# Warnings of one rule said on the terminal; the rest go to the audit log only.
_WARNINGS_SAID_PER_RULE = 3
# The end-of-run summaries count targets cut to this much, and at most this
# many different ones: an agent makes refusals at will, each target up to
# MAX_TARGET_LENGTH (the audit log keeps them whole).  A line said to the
# operator cuts a target at SAID_TARGET_CHARS (a person's approval prompt
# never: what it leaves out could be what runs).
_SUMMARY_TARGET_CHARS = 512
_SUMMARY_ENTRIES = 4096
_SUMMARY_OTHERS = "(other targets, not counted one by one)"
SAID_TARGET_CHARS = 1024


_TIMES_SYSCALLS = frozenset({"utimensat", "utimes", "futimesat", "utime"})

# What a person who meets these refusals most likely ran, and what helps.
_ALWAYS_REFUSED_HINTS = {
    "ptrace": "a debugger, strace, or a sanitizer's leak check: ASAN_OPTIONS=detect_leaks=0",
}


def _tally(counter: Counter[str], what: str) -> None:
    if what in counter or len(counter) < _SUMMARY_ENTRIES:
        counter[what] += 1
    else:
        counter[_SUMMARY_OTHERS] += 1


def _summed(target: str) -> str:
    return cut_text(_shown(target), _SUMMARY_TARGET_CHARS)


# An agent stopped for a violation, a tampered policy or by a person is
# SIGSTOPped; its mediated actions are refused as well, so that a stop that
# did not reach every process (a sweep out of fds) leaves none able to act.
_REFUSING_STATES = frozenset(
    {AgentState.STOPPED_VIOLATION, AgentState.STOPPED_TAMPER, AgentState.STOPPED_OPERATOR}
)
# Stops that only their cause lifts (a re-seal, a writable log), not a person's answer.
_LIFTED_ELSEWHERE = frozenset({AgentState.STOPPED_TAMPER, AgentState.STOPPED_AUDIT})


# How long after its answer a held syscall's grant waits for the reissue (it comes
# at once after SIGCONT, unless the stop never interrupted the syscall).
_GRANT_SECONDS = 5.0
_STOP_PASSES = 20
_STOP_PAUSE = 0.002  # seconds between passes


def _runs(pid: int) -> bool:
    """Whether `pid` may still run: neither stopped, nor in an uninterruptible wait
    (a vfork parent waits so on its stopped child), nor gone."""
    return process_state(pid) in ("R", "S", "I")


def _where(path: str) -> str:
    """The real path of the directory `path` lies in, and its own name: a symlink
    is where it lies, not where it leads."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _plain(decision: Decision, response: Response) -> bool:
    """An allow the cache may keep (once no record is due): nothing counts or waits."""
    return response is Response.ALLOW and decision.rate_limit is None


class PlainProgram(NamedTuple):
    """`Judge.plainly_allowed_bits` as data, for the broker's native path: the
    policy's tables, and the judge's own checks around them as prefixes."""

    tables: PlainTables
    # `root/`: what the judge refuses at or beneath, whatever the policy says
    write_guards: tuple[str, ...]  # file_write, file_delete, file_move, file_chmod
    read_guards: tuple[str, ...]  # file_read, process_spawn
    code_dirs: tuple[str, ...]  # `root/` of agentsup's own code: the judge's to decide
    floor: Mapping[ActionType, tuple[str, ...] | None]  # `floor_prefixes` per action


class Judge:
    """The state machine of one agent, and the judge of its actions."""

    def __init__(self, config: JudgeConfig, audit: AuditSink) -> None:
        self.config = config
        self.agent_id = config.agent_id
        self.policy = config.policy
        self.audit = audit
        self.clock = config.clock
        self.limiter = RateLimiter()
        self._state = AgentState.STARTING
        self.tree: ProcessTree | None = None
        self.main_pid = 0
        self.started = self.clock()
        self.exit_status: int | None = None  # raw wait status
        self.kill_report: KillReport | None = None
        self.pending: dict[str, Pending] = {}
        # One-shot human decisions for a held action, keyed (tid, action, target).
        self.grants: dict[tuple[int, ActionType, str], Response] = {}
        self._grant_deadlines: dict[tuple[int, ActionType, str], float] = {}
        # (action, target) pairs the policy plainly allows without a record:
        # the decision is a pure function of them, so it is asked once.
        self.allow_cache: set[tuple[ActionType, str]] = set()
        # Told of every pair added (and of clears: None), for the broker's native path.
        self.allow_mirror: Callable[[ActionType | None, str], None] | None = None
        # The Landlock floor, asked again before work the supervisor does for the agent.
        self.floor: FloorCheck | None = None
        self._request_ids = itertools.count(1)
        self._tgids: dict[int, int] = {}
        # Targets are real paths, so compare against real paths.
        guarded: list[str | Path] = list(config.locations.protected_paths())
        self.protected_write = tuple(os.path.realpath(path) for path in guarded)
        # A policy file's names as they lie, a symlink among them not followed.
        self._policy_places = tuple(_where(path) for path in config.policy_files)
        self.protected_write += self._policy_places
        # agentsup's own import path and user site-packages (read-only to the
        # agent too): refused, not killed.
        user_site = own_user_site()
        self._own_code = {os.path.realpath(path) for path in config.import_dirs}
        if user_site is not None:
            self._own_code.add(os.path.realpath(user_site))
        self.protected_write += tuple(sorted(self._own_code))
        self.protected_read = tuple(os.path.realpath(p) for p in config.locations.secret_paths())
        self._supervisor_procs: tuple[str, ...] = (f"/proc/{os.getpid()}",)
        self._guards = self._guard_prefixes()
        # `run --shadow`: what would have been refused, per action type and per target.
        self.would_deny: Counter[str] = Counter()
        self.would_deny_targets: Counter[str] = Counter()
        # "action target (rule)" of each refusal the agent met with no signal
        # (severity medium and up; with --shadow, those that stood: the guard's
        # and agentsup's own), said at the end of the run.
        self.refused: Counter[str] = Counter()
        # Low-severity refusals (listing /, a __pycache__ write): tools carry on
        # from most, so they are named only where nothing else was refused.
        self.refused_low: Counter[str] = Counter()
        self.holds = 0  # actions held for a person: approvals and violation stops
        self._warnings_said: Counter[str] = Counter()  # per rule id
        # Called by the supervisor to arm approval timeouts and report state.
        self.on_hold: Callable[[Pending], None] = lambda pending: None
        self._stop_reached = True  # the last SIGSTOP sweep reached every process
        # The stop a tamper stop came over (awaiting approval, a violation, an
        # operator's): where it goes back to at the re-seal.
        self.covered_stop: AgentState | None = None
        self.also_said: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"<Judge {self.agent_id!r} pid={self.main_pid} {self.state}>"

    @property
    def state(self) -> AgentState:
        return self._state

    @state.setter
    def state(self, state: AgentState) -> None:
        if state in _REFUSING_STATES and self._state not in _REFUSING_STATES:
            # A cached allow would skip the refusal; so would the broker's own
            # copy of this judge, which knows nothing of the stop: it goes too,
            # and every miss comes here for the rest of the run.
            self._forget_allowed(policy_changed=True)
        self._state = state

    def set_policy(self, policy: CompiledPolicy) -> None:
        """Swap in a reloaded policy; the next decision uses it."""
        self.policy = policy
        self._forget_allowed(policy_changed=True)
        self.limiter = RateLimiter()

    def _forget_allowed(self, policy_changed: bool = False) -> None:
        self.allow_cache.clear()
        if self.allow_mirror is not None:
            self.allow_mirror(None, "policy" if policy_changed else "")

    def plainly_allows(self, action: ActionType, target: str) -> bool:
        """Would the allow cache take (action, target)?  Allowed, with no record,
        no rate limit and no approval: a pure function of the two, asked with no
        side effect (the broker's native path asks its copy of this judge)."""
        return self.plainly_allowed_bits(target, ((action, 1),)) == 1

    def plainly_allowed_bits(self, target: str, wanted: Iterable[tuple[ActionType, int]]) -> int:
        """`plainly_allows` for several actions on one target at once: the OR of
        the bits of the (action, bit) pairs it holds for.

        The broker's native path asks this on a miss, for every action its
        cache keeps: `decide` without what a plain allow cannot need (an
        Event, the rate limiter, which would count an action not taken, and
        the Decision objects a refusal builds).
        """
        if self.policy.audit_level is AuditLevel.ALL:
            return 0  # every decision is recorded: none is plain
        floor, granted = self.floor, 0
        for action, bit in wanted:
            decision = self._decide(action, target)
            if (
                decision.verdict is Verdict.ALLOW
                and decision.rate_limit is None
                and (floor is None or floor_reaches(floor, action, target))
            ):
                granted |= bit
        return granted

    def plain_program(self, actions: Iterable[ActionType]) -> PlainProgram | None:
        """What `plainly_allowed_bits` decides `actions` with; None when every
        decision is recorded (no allow is plain)."""
        if self.policy.audit_level is AuditLevel.ALL:
            return None
        floor = self.floor
        return PlainProgram(
            tables=self.policy.plain_tables(),
            write_guards=self._guards[0],
            read_guards=self._guards[1],
            code_dirs=_AGENTSUP_CODE_DIRS,
            floor={
                action: None if floor is None else floor_prefixes(floor, action)
                for action in actions
            },
        )

    def refuses_writes(self, target: str) -> bool:
        """Whether no write of `target` can go ahead: file_write is refused
        outright (blocked, killed or stopped; not held for a person, not let
        go by shadow mode).  Asked with no side effect: no record, no rate
        limit counted."""
        if self.config.shadow_guard is not None:
            return False  # a refusal of the policy's would be let go
        decision = self._decide(ActionType.FILE_WRITE, target)
        if self.floor is not None:
            decision = floor_verdict(self.floor, ActionType.FILE_WRITE, target, decision)
        return response_for(decision) in (Response.BLOCK, Response.KILL, Response.STOP)

    # -- identity -------------------------------------------------------------------

    def tgid_of(self, tid: int) -> int:
        tgid = self._tgids.get(tid)
        if tgid is None:
            tgid = thread_group_id(tid)
            if len(self._tgids) > 4096:
                self._tgids.clear()
            self._tgids[tid] = tgid
        return tgid

    def forget_tid(self, tid: int) -> None:
        self._tgids.pop(tid, None)

    # -- judging ---------------------------------------------------------------------

    @property
    def supervisor_procs(self) -> tuple[str, ...]:
        """/proc/<the supervisor's pid>, where the agent's /proc is the host's."""
        return self._supervisor_procs

    @supervisor_procs.setter
    def supervisor_procs(self, procs: tuple[str, ...]) -> None:
        self._supervisor_procs = procs
        self._guards = self._guard_prefixes()

    def _guard_prefixes(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The guarded roots for writes and for reads, each as `root/` (one startswith)."""
        write = self.protected_write + self._supervisor_procs
        read = self.protected_read + self._supervisor_procs
        return tuple(root + "/" for root in write), tuple(root + "/" for root in read)

    def _self_protection(self, action: ActionType, target: str) -> Decision | None:
        """The supervisor's own files are out of reach whatever the policy says."""
        mode = ViolationMode.SIGKILL
        if action in _WRITE_CLASS:
            prefixes = self._guards[0]
        elif action is ActionType.FILE_READ or action is ActionType.PROCESS_SPAWN:
            prefixes = self._guards[1]
        elif action is ActionType.NETWORK_CONNECT and target.startswith("unix:"):
            # Refused, not killed: the control socket simply is not there for agents.
            target = target[5:]
            prefixes = (os.path.realpath(self.config.locations.runtime_dir) + "/",)
            mode = ViolationMode.BLOCK
        else:
            return None
        probe = target + "/"  # a root itself, or anything beneath it
        # (A move of a directory above a root moves the root with it.)
        moving = action is ActionType.FILE_MOVE
        if not probe.startswith(prefixes) and not (
            moving and any(prefix.startswith(probe) for prefix in prefixes)
        ):
            return None
        root = next(
            prefix for prefix in prefixes
            if probe.startswith(prefix) or (moving and prefix.startswith(probe))
        )[:-1]  # fmt: skip
        message = "agentsup's own policy, audit, state and runtime files are off limits"
        if root in self._policy_places:
            mode = ViolationMode.BLOCK  # a repository's own policy file, edited in good faith
            message = "the policy file this run was read from is off limits"
        if root in self._own_code:
            mode = ViolationMode.BLOCK  # `pip install --user` goes there in good faith
            message = (
                "agentsup's Python imports from here when it starts, as root: what is "
                "written here would run in the next agentsup"
            )
        return Decision(
            verdict=Verdict.DENY,
            rule_id=SELF_PROTECTION_RULE,
            severity=Severity.CRITICAL,
            message=message,
            on_violation=mode,
            reason=f"target is inside {root}",
        )

    def decide(self, event: Event) -> Decision:
        action, target = event.action, event.target
        decision = self._decide(action, target)
        if decision.rate_limit is not None:
            decision = self.limiter.check(decision, self.clock())
        if self.floor is None:
            return decision
        return floor_verdict(self.floor, action, target, decision)

    def _decide(self, action: ActionType, target: str) -> Decision:
        """The decision before the rate limiter and the floor."""
        if action is ActionType.FILE_READ:
            if target.startswith(_AGENTSUP_CODE_DIRS) or target in _AGENTSUP_CODE:
                return _HOOK_CODE_DECISION
        elif action is ActionType.NETWORK_CONNECT:
            config = self.config
            if config.hook_socket is not None and target == "unix:" + config.hook_socket:
                return _HOOK_SOCKET_DECISION
            if config.egress_proxy is not None and target == config.egress_proxy:
                return _EGRESS_PROXY_DECISION
        decision = self._self_protection(action, target)
        if decision is None:
            decision = self.policy.evaluate_target(action, target)
            if action is ActionType.FILE_MOVE and response_for(decision).proceeds:
                decision = self.policy.refused_beneath(target) or decision
            elif action is ActionType.PROCESS_SPAWN and response_for(decision).proceeds:
                # The kernel maps a program it runs into the new process, which
                # can then read itself: what may not be read may not be run.
                read = self._decide(ActionType.FILE_READ, target)
                if not response_for(read).proceeds:
                    message = f"running a file reads it: {read.message or 'reading it is refused'}"
                    decision = read._replace(message=message)
        return decision

    def carried_check(
        self, old: str, new: str, tree: Callable[[], Iterable[str]] | None
    ) -> MoveEscape | None:
        """For a move of `old` to `new`: one more check it must pass, or None
        (`CompiledPolicy.moved_escape`).  `tree` lists what a moved directory
        holds; it is asked only when some rule could tell the names apart."""
        policy = self.policy
        entries = tree() if tree is not None and policy.names_could_move(old, new) else ()
        return policy.moved_escape(old, new, entries)

    def judge(self, event: Event, tid: int) -> Response:
        return self.judge_event(event, tid)[1]

    def judge_event(
        self, event: Event, tid: int, on_settle: Callable[[bool], None] | None = None
    ) -> tuple[Decision, Response]:
        """Decide, record and enforce one event; the decision and what was done."""
        if not event.agent_id:
            event = replace(event, agent_id=self.agent_id)
        if self._state in _REFUSING_STATES:
            decision = Decision(
                verdict=Verdict.DENY,
                rule_id=STOPPED_RULE,
                severity=Severity.HIGH,
                message=f"the agent is {self._state}: nothing it does goes ahead until resumed",
                on_violation=ViolationMode.BLOCK,
                reason=str(self._state),
            )
            if event.layer is Layer.SECCOMP and self._stop_reached:
                # Left unanswered: the stop interrupts the syscall and the kernel
                # reissues it after SIGCONT, to be judged then.  A refusal here
                # was on record while the reissued syscall went ahead after the
                # resume (new user 18).  Refused where the stop missed processes
                # (red team 14): nothing would interrupt theirs.
                return decision, Response.HOLD
            self._record(event, tid, decision, Response.BLOCK)
            return decision, Response.BLOCK
        # Grants are rare: no key is built while there are none.
        grant = self._grant(tid, event) if self.grants else None
        decision = self.decide(event)
        if grant is not None:
            # The reissued syscall of an action a person already decided.
            self._record(event, tid, decision, grant, kind="approval")
            return decision, grant
        response = response_for(decision)
        if self.config.shadow_guard is not None and not response.proceeds:
            response = self._shadow(event, decision, response)
            if response is Response.ALLOW:
                self._record(event, tid, decision, response, would_deny=True)
                return decision, response
        if response is Response.BLOCK and self.config.shadow_guard is None:  # (_shadow counts)
            low = decision.severity is Severity.LOW
            _tally(
                self.refused_low if low else self.refused,
                f"{event.action} {_summed(event.target)} ({decision.rule_id})",
            )
        if should_audit(decision, self.policy.audit_level):
            self._record(event, tid, decision, response)
        elif _plain(decision, response):
            if len(self.allow_cache) >= _ALLOW_CACHE_SIZE:
                self._forget_allowed()
            self.allow_cache.add((event.action, event.target))
            if self.allow_mirror is not None:
                self.allow_mirror(event.action, event.target)
        if response is Response.KILL:
            self.kill_for(event, decision)
        elif response is Response.STOP:
            self._hold(event, tid, decision, kind="violation")
        elif response is Response.HOLD:
            self._hold(event, tid, decision, kind="approval", on_settle=on_settle)
        elif response is Response.WARN:
            self._warn(event, decision)
        return decision, response

    def _grant(self, tid: int, event: Event) -> Response | None:
        """A person's answer for this thread's reissued syscall, taken once; none
        once its deadline passed."""
        key = (tid, event.action, event.target)
        grant = self.grants.pop(key, None)
        deadline = self._grant_deadlines.pop(key, None)
        if grant is None or (deadline is not None and self.clock() > deadline):
            return None
        return grant

    def _warn(self, event: Event, decision: Decision) -> None:
        """Say a warning, the first few of each rule: a test suite's sqlite
        fixtures would otherwise bury the terminal.  All are in the audit log."""
        said = self._warnings_said[decision.rule_id] = self._warnings_said[decision.rule_id] + 1
        if said <= _WARNINGS_SAID_PER_RULE:
            self.say(
                f"warning: rule '{decision.rule_id}' flagged {event.action} "
                f"{cut_text(event.target, SAID_TARGET_CHARS)}"
                + (f": {decision.message}" if decision.message else "")
            )
        elif said == _WARNINGS_SAID_PER_RULE + 1:
            self.say(
                f"warning: rule '{decision.rule_id}' flags more; the rest are only in the "
                "audit log (agentsup audit show)"
            )

    def _shadow(self, event: Event, decision: Decision, response: Response) -> Response:
        """Shadow mode: a refusal of the policy's lets the action go (a would-deny).

        agentsup's own refusals stand as they are; what the guard refuses
        (secrets, destructive commands) is still refused, without a signal.
        """
        guard = self.config.shadow_guard
        if guard is None:
            return response
        from ..policy.suggest import AGENTSUP_RULE_PREFIX, guarded  # only for --shadow

        refused = f"{event.action} {_summed(event.target)}"
        if decision.rule_id.startswith(AGENTSUP_RULE_PREFIX):
            _tally(self.refused, f"{refused} ({decision.rule_id})")
            return response
        guard_rule = guarded(guard, event.action, event.target)
        if guard_rule is not None:
            _tally(self.refused, f"{refused} ({guard_rule})")
            return Response.BLOCK
        self.would_deny[str(event.action)] += 1
        _tally(self.would_deny_targets, f"{event.action} {_summed(event.target)}")
        return Response.ALLOW

    def shadow_summary(self, top: int = 5) -> list[str]:
        """The lines `run --shadow` prints at exit."""
        total = sum(self.would_deny.values())
        name = f"shadow run of agent '{self.agent_id}'"
        lines = [f"{name}: the policy would have refused nothing"]
        if total:
            kinds = ", ".join(f"{kind} {count}" for kind, count in self.would_deny.most_common())
            lines = [f"{name}: {total} action(s) would be denied ({kinds})"]
            top_targets = self.would_deny_targets.most_common(top)
            lines += [f"  {count:5d}  {what}" for what, count in top_targets]
        refused = sum(self.refused.values())
        if refused:
            # Said, not only logged: a job that failed in a shadow run failed on these.
            lines.append(
                f"{refused} action(s) were refused all the same (shadow mode keeps the "
                "guard's and agentsup's own refusals):"
            )
            lines += [f"  {count:5d}  {what}" for what, count in self.refused.most_common(top)]
        if total:
            lines.append(
                f"rules that let them pass: agentsup policy suggest --agent {self.agent_id}"
            )
        return lines

    def refusal_summary(self, top: int = 5) -> list[str]:
        """The lines `run` prints at the end of a failed run about refusals
        the agent met quietly.

        A refusal with no signal shows only as the tool's own error (EACCES,
        "Permission denied"): these lines name the rules behind them.
        """
        counted, low = self.refused, ""
        if not counted:  # the only refusals were low ones: one of them may be why
            counted, low = self.refused_low, " low-severity"
        refused = sum(counted.values())
        if not refused:
            return []
        lines = [f"{refused}{low} action(s) of agent '{self.agent_id}' were refused (no signal):"]
        lines += [f"  {count:5d}  {what}" for what, count in counted.most_common(top)]
        lines.append(f"all of them: agentsup audit show --agent {self.agent_id}")
        return lines

    def refuse_always(self, syscall: str, tid: int) -> None:
        hint = _ALWAYS_REFUSED_HINTS.get(syscall, "")
        message = f"{syscall} is refused for every agent" + (f" ({hint})" if hint else "")
        self._refusal(syscall, tid, syscall, ALWAYS_REFUSED_RULE, message, hint=hint)

    def refuse_outside(self, syscall: str, tid: int, target: str) -> None:
        """A call that named a process outside the agent's tree: refused, critical."""
        message = f"{syscall} may only reach the agent's own processes"
        self._refusal(syscall, tid, target, OUTSIDE_TREE_RULE, message)

    def refuse_outside_view(
        self, syscall: str, tid: int, target: str, layer: Layer = Layer.SECCOMP
    ) -> None:
        """A file the agent holds, asked for more than its fd gives, whose path
        names something else (or nothing) in the agent's view: no rule can
        judge it (a log `run` writes under the host's /tmp).  Refused."""
        message = "the file this fd holds is not at that path for the agent: no rule can judge it"
        self._refusal(syscall, tid, target, OUTSIDE_VIEW_RULE, message, "medium", layer)

    def refuse_not_opened(self, syscall: str, tid: int, target: str) -> None:
        """A file the read lane's reader may not open (a device but the
        harmless ones, where the kernel asks about devices; what was made at
        the top of the root after the start): the kernel refused the agent's
        open before any driver ran, whatever the rules say."""
        message = "the broker's reader may not open this file: the kernel refused the open"
        self._refusal(syscall, tid, target, NOT_OPENED_RULE, message, "low", Layer.FANOTIFY)

    def refuse_hard_linked(self, syscall: str, tid: int, target: str) -> None:
        """A change to a file with other names, which may lie where the agent
        may not write (a `git clone --local` hard-links the operator's objects
        into the workspace, red team 34): it would change them too.  Refused."""
        message = "this file has other names (hard links), which a change would change too"
        # git freshens an object it would write again by its times, and goes
        # on without: a refused time is low, and named only where it is alone.
        severity = "low" if syscall in _TIMES_SYSCALLS else "medium"
        self._refusal(syscall, tid, target, HARD_LINKED_RULE, message, severity)

    def refuse_exec_unchecked(self, syscall: str, tid: int, target: str) -> None:
        """An exec while as many others wait for their new image's first call
        (where each is held to what was allowed) as can be kept: this one could
        not be held to anything, so it fails (EAGAIN)."""
        message = "too many execs wait for their check: this one could not be checked"
        self._refusal(syscall, tid, target, EXEC_UNCHECKED_RULE, message, "high")

    def refuse_unreadable_program(self, syscall: str, tid: int, target: str) -> None:
        """An exec of a file the agent may write but no one may read: what the
        kernel would load with it (its PT_INTERP, its #! line) cannot be known."""
        message = (
            "a program the agent may write is run only if it can be read: "
            "its interpreter cannot be known otherwise"
        )
        self._refusal(syscall, tid, target, UNREADABLE_PROGRAM_RULE, message, "high")

    def interpreter_refused(self, syscall: str, tid: int, program: str, interpreter: str) -> None:
        """A program the agent may write names an interpreter the policy refuses:
        it was made to read a file the agent may not.  The check races the
        kernel's own open (README), and a refusal alone would let the agent
        try again until it won: the first attempt ends the agent."""
        message = f"{program} names {interpreter}, which the policy refuses, as its interpreter"
        self._refusal(syscall, tid, interpreter, INTERPRETER_REFUSED_RULE, message)
        decision = Decision(
            Verdict.DENY,
            INTERPRETER_REFUSED_RULE,
            Severity.CRITICAL,
            message,
            ViolationMode.SIGKILL,
            "a crafted interpreter",
        )
        event = Event(ActionType.PROCESS_SPAWN, interpreter, self.agent_id, self.tgid_of(tid))
        self.kill_for(event, decision)

    def mediation_failed(self, syscall: str, tid: int, error: str) -> None:
        """Serving a syscall raised: it failed closed (EIO); the record says why."""
        message = f"could not serve {syscall}, failed it with EIO: {error}"[:500]
        self._refusal(
            syscall, tid, syscall, MEDIATION_ERROR_RULE, message, "high", Layer.SUPERVISOR
        )

    def broker_gone(self, syscall: str, tid: int, error: str) -> None:
        """The broker stopped answering: every mediated syscall fails from now on.

        With the native path the broker ends the agent too (its supervisor hung
        up on it), so `run` exits 137: this line and record say why.
        """
        message = f"{error}: every mediated syscall fails with EIO from now on"
        self._refusal(
            syscall, tid, syscall, MEDIATION_ERROR_RULE, message, "high", Layer.SUPERVISOR
        )
        self.say(f"agent '{self.agent_id}': {message}")

    def _refusal(
        self,
        syscall: str,
        tid: int,
        target: str,
        rule: str,
        message: str,
        severity: str = "critical",
        layer: Layer = Layer.SECCOMP,
        *,
        hint: str = "",
    ) -> None:
        """The record of a syscall refused by agentsup itself, whatever the policy
        says; `hint` (what helps) goes into the end-of-run summary too."""
        low = self.config.shadow_guard is None and severity == Severity.LOW
        what = syscall if target == syscall else f"{syscall} {_summed(target)}"
        what += f" ({rule}: {hint})" if hint else f" ({rule})"
        _tally(self.refused_low if low else self.refused, what)
        self.audit.append(
            {
                "agent": self.agent_id,
                "pid": self.tgid_of(tid),
                "kind": "decision",
                "action_type": None,
                "target": target,
                "decision": "deny",
                "rule": rule,
                "severity": severity,
                "layer": str(layer),
                "response": "block",
                "syscall": syscall,
                "message": message,
            }
        )

    def in_tree(self, pid: int) -> bool:
        return self.tree is not None and self.tree.has(pid)

    def group_in_tree(self, pgid: int) -> bool:
        return self.tree is not None and self.tree.has_group(pgid)

    def _record(
        self,
        event: Event,
        tid: int,
        decision: Decision,
        response: Response,
        kind: str = "decision",
        would_deny: bool = False,
    ) -> None:
        record: dict[str, object] = {
            "agent": self.agent_id,
            "pid": self.tgid_of(tid) if tid else event.pid,
            "kind": kind,
            "action_type": str(event.action),
            "target": _shown(event.target),
            "decision": str(decision.verdict),
            "rule": decision.rule_id,
            "severity": str(decision.severity),
            "layer": str(event.layer),
            "response": str(response),
        }
        if event.syscall:
            record["syscall"] = event.syscall
        if decision.message:
            record["message"] = decision.message
        if not decision.is_default:
            record["reason"] = decision.reason
        if would_deny:
            record["would_deny"] = True  # `run --shadow`: refused by the policy, let through
        self.audit.append(record)

    def say(self, text: str) -> None:
        """One line to the operator; what the agent controls in it (targets,
        commands, reasons) cannot reach the terminal as a control character.
        Also to `also_said` (the daemon: the agent's own log)."""
        print(f"agentsup: {visible(text)}", file=self.config.stderr, flush=True)
        if self.also_said is not None:
            self.also_said(visible(text))

    # -- enforcement -------------------------------------------------------------------

    def signal_tree(
        self,
        sig: int,
        why: str,
        uid: int | None = None,
        *,
        rule: str | None = None,
        event: Event | None = None,
    ) -> None:
        if self.tree is None:
            return
        pids: set[int] = set()
        escalated: list[str] = []
        missed: list[str] = []
        if sig == signal.SIGKILL:
            escalated = self.tree.kill()
        else:
            pids = self.tree.signal_all(sig)
            missed = self.tree.missed
            if sig == signal.SIGSTOP:
                self._stop_reached = not missed
        record: dict[str, object] = {
            "agent": self.agent_id,
            "pid": self.main_pid,
            "kind": "signal",
            "signal": signal.Signals(sig).name,
            "layer": "supervisor",
            "reason": why,
        }
        if pids:
            record["pids"] = sorted(pids)
        if rule is not None:
            record["rule"] = rule
        if event is not None:
            record["action_type"] = str(event.action)
            record["target"] = _shown(event.target)
        if uid is not None:
            record["uid"] = uid
        if escalated:
            # The tree could not be seen gone: what was done instead is on record.
            record["confirmed"] = False
            record["escalated"] = escalated
            self.say(
                f"could not confirm the kill of agent '{self.agent_id}'; escalated: "
                + ", ".join(escalated)
            )
        if missed:
            # Processes the signal may not have reached (out of fds): on record, and said.
            record["confirmed"] = False
            record["missed"] = list(missed)
            refusing = (
                "; its mediated actions are refused until it is resumed"
                if self._state in _REFUSING_STATES
                else ""
            )
            self.say(
                f"{signal.Signals(sig).name} may not have reached every process of agent "
                f"'{self.agent_id}' ({'; '.join(missed)}){refusing}"
            )
        self.audit.append(record)

    def kill_for(self, event: Event, decision: Decision) -> None:
        if self.kill_report is None:
            self.kill_report = KillReport(
                decision.rule_id, str(event.action), _shown(event.target), decision.message
            )
            self.say(
                f"killed agent '{self.agent_id}': rule '{decision.rule_id}' denied "
                f"{event.action} {cut_text(event.target, SAID_TARGET_CHARS)}"
                + (f" ({decision.message})" if decision.message else "")
                + (
                    "; no rule matched: learn the rules it needs with agentsup run --shadow "
                    f"--id {self.agent_id} ..., then agentsup policy suggest "
                    f"--agent {self.agent_id}"
                    if decision.is_default
                    else ""
                )
            )
        self.signal_tree(
            signal.SIGKILL,
            f"rule {decision.rule_id}: {event.action} {_shown(event.target)}",
            rule=decision.rule_id,
            event=event,
        )

    def kill_for_limit(self, key: str, detail: str) -> None:
        """Kill for the policy key `key` (`limits.max_runtime_seconds`, ...) running out."""
        if self.kill_report is None:
            self.kill_report = KillReport(key, "limit", detail, "")
            self.say(f"killed agent '{self.agent_id}': {key} exceeded ({detail})")
        self.signal_tree(signal.SIGKILL, f"{key}: {detail}", rule=key)

    def kill_for_error(self, error: str) -> None:
        """The supervisor failed serving this agent: it fails closed, killed."""
        message = f"the supervisor failed serving it ({error})"[:500]
        if self.kill_report is None:
            self.kill_report = KillReport(MEDIATION_ERROR_RULE, "supervisor", message, "")
            self.say(f"killed agent '{self.agent_id}': {message}; nothing it waited for went ahead")
        why = f"{MEDIATION_ERROR_RULE}: {message}"
        self.signal_tree(signal.SIGKILL, why, rule=MEDIATION_ERROR_RULE)

    def _hold(
        self,
        event: Event,
        tid: int,
        decision: Decision,
        kind: str,
        on_settle: Callable[[bool], None] | None = None,
    ) -> None:
        request_id = f"{self.agent_id}-{next(self._request_ids)}"
        self.holds += 1
        pending = Pending(request_id, kind, tid, event, decision, self.clock(), on_settle=on_settle)
        self.pending[request_id] = pending
        self.state = (
            AgentState.AWAITING_APPROVAL if kind == "approval" else AgentState.STOPPED_VIOLATION
        )

        # The tree stops at once, the action with it: the kernel drops the held
        # syscall and reissues it after SIGCONT, where a grant answers it (a
        # person's for an approval; a refusal for a violation, which was stopped
        # again at every resume without one: new user 17).
        self.signal_tree(
            signal.SIGSTOP, f"{kind}: rule {decision.rule_id}", rule=decision.rule_id, event=event
        )
        why = f" ({decision.message})" if decision.message else ""  # the rule's own words
        if kind == "approval":
            self.say(
                f"agent '{self.agent_id}' is stopped, waiting for approval of {event.action} "
                f"{event.target} (rule '{decision.rule_id}'){why}. Approve: agentsup resume "
                f"{self.agent_id} --code <TOTP>   refuse: agentsup deny {self.agent_id}"
            )
        else:
            self.say(
                f"stopped agent '{self.agent_id}': rule '{decision.rule_id}' denied "
                f"{event.action} {cut_text(event.target, SAID_TARGET_CHARS)}{why}. Continue "
                f"(the action stays denied): agentsup resume {self.agent_id} --code <TOTP>   "
                f"end it: agentsup kill {self.agent_id}"
            )
        self.on_hold(pending)

    def settle(self, approve: bool, *, uid: int, reason: str, outcome: str) -> str:
        """A person (or the approval timeout) decided every pending action: SIGCONT."""
        if not self.pending:
            raise LookupError(f"agent '{self.agent_id}' has nothing pending")
        for pending in self.pending.values():
            if pending.timer is not None:
                pending.timer.cancel()  # type: ignore[attr-defined]
            if pending.on_settle is not None:
                pending.on_settle(approve)
            else:
                # The reissued syscall meets this answer, once.  A violation's
                # action stays refused whatever the answer (resume continues the
                # agent); its answer goes stale if the syscall was answered before
                # the stop interrupted it, hence the deadline.
                granted = (
                    Response.ALLOW if approve and pending.kind == "approval" else Response.BLOCK
                )
                key = (pending.tid, pending.event.action, pending.event.target)
                self.grants[key] = granted
                self._grant_deadlines[key] = self.clock() + _GRANT_SECONDS
            self.audit.append(
                {
                    "agent": self.agent_id,
                    "pid": self.main_pid,
                    "kind": "approval",
                    "action_type": str(pending.event.action),
                    "target": _shown(pending.event.target),
                    "decision": "allow" if approve and pending.kind == "approval" else "deny",
                    "rule": pending.decision.rule_id,
                    "severity": str(pending.decision.severity),
                    "layer": "supervisor",
                    "outcome": outcome,
                    "uid": uid,
                    "reason": reason,
                    "request_id": pending.request_id,
                    "held": pending.kind,
                }
            )
        self.pending.clear()
        if self._state in _LIFTED_ELSEWHERE:
            # A tampered policy directory or an unwritable audit log stopped the
            # tree meanwhile: a person's answer (or a timeout) settles what was
            # held, and the tree stays stopped until that is mended (red team 36).
            self.covered_stop = None  # answered: nothing else waits for the re-seal
            return outcome
        self.state = AgentState.RUNNING
        self.signal_tree(signal.SIGCONT, f"{outcome} by uid {uid}", uid=uid)
        return outcome

    # -- lifecycle ----------------------------------------------------------------------

    def lifecycle(self, event: str, **extra: object) -> None:
        record: dict[str, object] = {
            "agent": self.agent_id,
            "pid": self.main_pid,
            "kind": "lifecycle",
            "layer": "supervisor",
            "event": event,
            "policy": self.config.policy_name,
        }
        record.update(extra)
        self.audit.append(record)

    def info(self) -> dict[str, object]:
        return {
            "id": self.agent_id,
            "pid": self.main_pid,
            "policy": self.config.policy_name,
            "state": str(self.state),
            "uptime_s": round(self.clock() - self.started, 1),
            "pending": len(self.pending),
            "workspace": self.config.workspace,
        }

    def pending_info(self) -> list[dict[str, object]]:
        now = self.clock()
        return [
            {
                "request_id": p.request_id,
                "agent": self.agent_id,
                "action_type": str(p.event.action),
                "target": _shown(p.event.target),
                "rule": p.decision.rule_id,
                "message": p.decision.message,
                "age_s": round(now - p.since, 1),
                "kind": p.kind,
            }
            for p in self.pending.values()
        ]
