"""One supervised agent: how it is set up, started, judged and ended.

An `Agent` belongs to a `Supervisor` (supervise.py), whose single event
loop drives every fd the run registers: its seccomp listener, its pidfd, its
trampoline status pipe and its hook socket.

Exit codes (DESIGN.md 1.4): the agent's own code; 128+N when it died by
signal N (137 when the policy or a person killed it); 125 when agentsup
failed before the agent started; 126 when the program cannot be executed;
127 when it is not found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import importlib
import operator
import os
import select
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..control.endpoint import close_listener, listen_unix
from ..events import ActionType, AuditLevel, Decision, Response, response_for, signal_name
from ..hooks import _protocol as hook_protocol
from ..hooks import bootstrap
from ..kernel import fastpath
from ..kernel import namespaces as kernel_namespaces
from ..kernel.cgroup import AgentCgroup, CgroupUnavailable
from ..kernel.landlock import landlock_abi
from ..kernel.namespaces import own_sockets_here
from ..kernel.privileges import UserSpec, lookup_user
from ..kernel.seccomp import filter_program
from ..paths import Locations, own_import_path, own_user_site, symlinks_on_the_way
from ..policy import floor
from ..policy.cache import compile_policy_cached, resolve_policy_cached
from ..policy.engine import (
    CompiledPolicy,
    PlainEntry,
    RunContext,
    compile_policy,
    invoking_home,
)
from ..policy.model import Policy, PolicyError
from ..policy.sources import builtin_source, is_path_reference
from ..visible import cut_text, visible
from . import launch, protected, readlane
from .broker import BrokerClient
from .judge import AgentState, Judge, JudgeConfig, Pending, ProcessTree
from .protected import ProtectedInodes
from .syscalls import ALWAYS_REFUSED, FORCED_ENOSYS, MEDIATED
from .trampoline import Isolation

if TYPE_CHECKING:
    import socket
    import subprocess

    from . import egress, placement
    from .hookserver import HookReply, HookRequest, HookServer
    from .loop import Timer
    from .mediator import Mediator
    from .supervisor import Supervisor
    from .terminal import PtyRelay

EXIT_SETUP_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

# What a run may import once its agent runs (a hold, the placement samples,
# the watchdog), imported while the agent is set up: an import opens files,
# and an agent that used up the supervisor's fds must not make one fail.  Not
# earlier either: `agentsup run` starts without them.  (A policy reload
# imports the loader when it comes: if that fails, the old rules stay.)
_IMPORTED_FOR_THE_RUN = (
    "..control.notify",
    ".hookserver",
    ".mediator",  # (the filter's lists are `syscalls`': the mediator serves them)
    ".placement",
    ".watchdog",
)


class SetupError(Exception):
    """agentsup could not start the agent; `exit_code` says how `run` exits."""

    def __init__(self, message: str, exit_code: int = EXIT_SETUP_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(repr=False, eq=False)  # a record: fewer generated methods to compile at import
class RunRequest:
    """What `agentsup run` (or the daemon) asks for: one agent."""

    program: str
    args: list[str]
    policy: str = "strict"
    workspace: str = "."
    agent_id: str | None = None
    json_status: str | None = None  # written by the foreground run (foreground.py)
    allow_degraded: Sequence[str] = ()
    cpus: str = "auto"  # auto | all | shared (placement.py)
    user: str | None = None  # run the agent as this user (root only)
    terminal: bool = False  # relay a pty: the agent never holds the user's terminal
    shadow: bool = False  # record what the policy would refuse, refuse only the guard
    # The caller's directory (`run`'s): the agent starts there when it lies in
    # the workspace.  None (the daemon): at the workspace's root.
    cwd: str | None = None


def say(text: str) -> None:
    """One line to the operator on stderr, the agent's text in it made `visible`."""
    print(f"agentsup: {visible(text)}", file=sys.stderr, flush=True)


def _has_seccomp_notify() -> bool:
    try:
        return "user_notif" in Path("/proc/sys/kernel/seccomp/actions_avail").read_text().split()
    except OSError:
        return False


def _on_path(program: str, search_path: str) -> str | None:
    """`shutil.which(program, path=search_path)`, for a name without a slash.

    Spelt out: importing shutil (and the bz2 and lzma it imports) would cost
    every `agentsup run` ~2 ms before its agent starts, for this loop.
    """
    seen: set[str] = set()
    for directory in search_path.split(os.pathsep) if search_path else ():
        if directory in seen:
            continue
        seen.add(directory)
        candidate = os.path.join(directory, program)
        if os.access(candidate, os.F_OK | os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


# Tools that fail outright when their cache in the home cannot be written
# (`npm pack`: EACCES, then advice to chown the home as root): the variable
# that moves each, where the cache is by default, and its private name.
TOOL_CACHES = (
    ("npm_config_cache", ".npm", "npm"),
    ("GOCACHE", ".cache/go-build", "go-build"),
    ("YARN_CACHE_FOLDER", ".cache/yarn", "yarn"),
    # pip builds an sdist's wheel into its cache: EACCES there fails the install.
    ("PIP_CACHE_DIR", ".cache/pip", "pip"),
)
PRIVATE_CACHES = "/tmp/agentsup-caches"


def moved_caches(
    policy: CompiledPolicy, home: str, env: Mapping[str, str], private_tmp: Sequence[str]
) -> dict[str, str]:
    """Tool caches in the home the policy refuses to write: each moved into the
    agent's private /tmp (variable -> path), where it is the agent's alone.

    A cache the agent could write in the home would poison the user's later
    installs; a cache it cannot write fails the tool.  Only with a private
    /tmp, and never over a variable already set: the user's choice stands.
    """
    if "/tmp" not in private_tmp:
        return {}
    moved = {}
    for variable, default, name in TOOL_CACHES:
        probe = os.path.join(home, default, "agentsup-probe")
        if (
            variable in env
            or response_for(policy.evaluate_target(ActionType.FILE_WRITE, probe)).proceeds
        ):
            continue
        moved[variable] = f"{PRIVATE_CACHES}/{name}"
    return moved


def _waits_for_a_person(policy: CompiledPolicy) -> str:
    """The id of the first rule (or the default) that stops the agent for a
    person (`sigstop`, `require_approval`), or ""."""
    waiting = (Response.STOP, Response.HOLD)
    for rule in policy.rules:
        if rule.applies and response_for(rule.decision) in waiting:
            return rule.rule.id
    return "default" if response_for(policy.default_decision) in waiting else ""


def starting_directory(workspace: str, cwd: str | None) -> str:
    """Where the agent starts: the caller's directory when it lies in the
    workspace (`cd repo && agentsup run -- git status`, as `docker run -w`
    and bubblewrap's --chdir), else the workspace's root.  `workspace` is a
    real path."""
    if cwd:
        real = os.path.realpath(cwd)
        if os.path.commonpath((real, workspace)) == workspace:
            return real
    return workspace


def tmpdir_fate(
    policy: CompiledPolicy, tmpdir: str, private: Sequence[str], kept: Sequence[str]
) -> tuple[Literal["pass", "make", "drop"], str]:
    """What becomes of an inherited TMPDIR: ("drop", "") where the policy
    refuses the agent's writes there (mktemp, sort and gcc fail on it: the
    agent goes without, and uses /tmp); ("make", the real path) where it lies
    in a tmpfs the agent gets fresh (`private`: /tmp, /var/tmp, /run), beneath
    nothing of the host's bound back in (`kept`), where it must be made (as
    pam_tmpdir's /tmp/user/UID); ("pass", "") otherwise.

    Pure but for the real paths of the host's directories.  A relative
    TMPDIR is the agent's tools' to take as they do.
    """
    if not tmpdir.startswith("/"):
        return "pass", ""
    spelled = "/" + os.path.normpath(tmpdir).lstrip("/")
    root = next((r for r in private if spelled != r and kernel_namespaces.under(spelled, [r])), "")
    fresh = bool(root) and not kernel_namespaces.under(spelled, kept)
    # Within the fresh tmpfs nothing is a symlink: only its root may be one.
    real = os.path.realpath(root) + spelled[len(root) :] if fresh else os.path.realpath(spelled)
    probe = os.path.join(real, "agentsup-probe")
    if not response_for(policy.evaluate_target(ActionType.FILE_WRITE, probe)).proceeds:
        return "drop", ""
    return ("make", real) if fresh else ("pass", "")


# Tools that retry a failed fetch for a minute or more (npm: 10 s, then 60 s):
# with no way out, the first failure is the answer.
NETWORK_RETRIES = (
    ("npm_config_fetch_retries", "0"),
    ("PIP_RETRIES", "0"),
    ("CARGO_NET_RETRY", "0"),
)


def no_retries_offline(
    policy: CompiledPolicy, env: Mapping[str, str], egress_port: int | None
) -> dict[str, str]:
    """Retry settings that make tools fail at once where no connect can succeed.

    Only when no rule of the policy reaches the network and there is no
    egress proxy; never over a variable already set.  npm waited 71 s for a
    lookup strict refuses (EAI_AGAIN, which it takes for a passing failure).
    """
    if egress_port or policy.floor_roots([ActionType.NETWORK_CONNECT]) != ():
        return {}
    return {variable: value for variable, value in NETWORK_RETRIES if variable not in env}


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def missing_for_agent(executable: str) -> str | None:
    """Why an exec of `executable`, there on the host, found nothing for the agent.

    The agent's view is not the host's: a private /tmp, the kernel floor.
    Names what is missing (the file, or a script's interpreter); None when
    the host has no such file either.
    """
    try:
        with open(executable, "rb") as file:
            first = file.readline(256)
    except OSError:
        return None
    needed = executable
    if first.startswith(b"#!"):
        words = first[2:].split()
        needed = os.fsdecode(words[0]) if words else executable
    where = ""
    if needed.startswith(("/tmp/", "/var/tmp/")):
        where = " (the agent's /tmp is its own)"
    elif needed.startswith(("/run/", "/var/run/")):
        where = " (the agent's /run is its own)"
    return f"{needed} is not in the agent's view{where}"


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
        found = _on_path(program, env_path)
        if found is None:
            raise SetupError(f"{program}: command not found", EXIT_NOT_FOUND)
        path = found
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise SetupError(f"{program}: cannot execute (not an executable file)", EXIT_CANNOT_EXECUTE)
    return path, [program, *args]


NOTE_TARGET = 4096  # a hook note's target, as recorded, in characters at the most
NOTE_KEYS = 32  # its detail: this many keys,
NOTE_ITEMS = 16  # items of a list,
NOTE_TEXT = 512  # and characters of a text


def bounded_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """Pure: a hook note's detail cut to size for the audit log.  The agent
    writes it, and a padded note (red team 23: 60 KB each) is as much of the
    log's room as a thousand plain ones (integrity/shares.py)."""

    def cut(value: Any) -> Any:
        if isinstance(value, str):
            return cut_text(value, NOTE_TEXT)
        if isinstance(value, list):
            return [cut(item) for item in value[:NOTE_ITEMS]]
        return value

    kept = dict(list(detail.items())[:NOTE_KEYS])
    return {key[:NOTE_TEXT]: cut(value) for key, value in kept.items()}


def plan_landlock(
    policy: CompiledPolicy,
    locations: Locations,
    shadow: bool = False,
    private_tmp: bool = False,
    kept: Sequence[str] = (),
    unread: Sequence[str] = (),
) -> floor.FloorPlan:
    """The kernel floor for this policy: the roots any proceeding rule could reach.

    In shadow mode nothing the policy refuses may be refused by the floor
    first (it would never be recorded): the floor is only agentsup's holes.
    `private_tmp`: the agent surely gets its private /tmp and /run, where the
    launch binds back only `kept` (the workspace, the home) and what it names.
    `unread`: files no read may open, their directories still listable (the
    read lane's devices and write-only streams).
    """
    no_write = _outside_private_tmp(locations.protected_paths(), private_tmp, kept)
    no_read = _outside_private_tmp(locations.secret_paths(), private_tmp, kept)
    if shadow:
        return floor.plan_floor(
            read_roots=None,
            write_roots=None,
            exec_roots=None,
            connect_ports=None,
            bind_ports=None,
            no_write=no_write,
            no_read=no_read,
            abi=landlock_abi(),
        )
    return floor.plan_policy_floor(
        policy, no_write=no_write, no_read=no_read, abi=landlock_abi(), unread=unread
    )


def _outside_private_tmp(
    paths: Iterable[Path], private_tmp: bool, kept: Sequence[str] = ()
) -> list[str]:
    """Real paths to punch out of the floor, less those a private /tmp or /run hides anyway.

    Holes are punched by listing directories; in a private /tmp or /run the
    entries listed do not exist, and the punched /tmp would refuse every new
    file.  What lies in a directory the launch binds back in (`kept`) is the
    host's, there too: its hole stays.
    """
    real = [os.path.realpath(path) for path in paths]
    if not private_tmp:
        return real
    private = (*kernel_namespaces.PRIVATE_TMP, *kernel_namespaces.private_run_dirs())
    hidden = tuple(tmp + "/" for tmp in private)
    shown = tuple(os.path.realpath(path) for path in kept if path)
    return [
        path for path in real if not path.startswith(hidden) or kernel_namespaces.under(path, shown)
    ]


def policy_reference(value: str) -> str:
    """A `--policy` value that still finds the same policy from another directory."""
    return os.path.abspath(value) if is_path_reference(value) else value


def shadow_guard(policy: Policy, context: RunContext, locations: Locations) -> CompiledPolicy:
    """What `run --shadow` still refuses: the policy's and built-in strict's guard rules."""
    from ..policy.loader import load_source
    from ..policy.suggest import compile_guard  # only for --shadow

    strict = builtin_source("strict")
    assert strict is not None  # shipped with the package
    return compile_guard(context, policy, load_source(strict, locations.policy_dir))


def _site_directories() -> set[str]:
    import site

    found = [*site.getsitepackages(), site.getusersitepackages()]
    return {os.path.realpath(path) for path in found}


def _egress_port(policy: CompiledPolicy) -> int:
    """The egress proxy's port when the agent reaches the network through it, else 0."""
    if policy.floor_roots((ActionType.NETWORK_CONNECT,)) == ():
        return 0  # nothing connects: no proxy, and its module (h11, a resolver) stays unloaded
    from . import egress

    return egress.DEFAULT_PORT if egress.network_mode(policy) == "proxy" else 0


_ALWAYS_WANTED = frozenset({"mount", "pid", "uts", "ipc"})


def wanted_namespaces(
    policy: CompiledPolicy, request: RunRequest, egress_port: int = 0
) -> frozenset[str]:
    """The namespaces `plan_isolation` asks for."""
    wanted = set(_ALWAYS_WANTED)
    no_connect = policy.floor_roots((ActionType.NETWORK_CONNECT,)) == () and not request.shadow
    if egress_port or no_connect:
        wanted.add("net")  # nothing may connect out directly: only loopback inside
    if os.geteuid() != 0:
        wanted.add("user")
    return frozenset(wanted)


# Variables a shell keeps for itself, which no tool reads from its environment.
_SHELLS_OWN = frozenset({"_", "OLDPWD", "PWD", "SHLVL", "MAIL", "COLUMNS", "LINES", "PS1"})


def may_lack(request: RunRequest) -> frozenset[str]:
    """The namespaces `--allow-degraded` lets go missing."""
    degraded = set(request.allow_degraded)
    if "namespaces" in degraded:
        degraded |= set(kernel_namespaces.FLAGS)
    return frozenset(degraded & set(kernel_namespaces.FLAGS))


def spellings(paths: Sequence[str]) -> tuple[str, ...]:
    """Each path as spelled (made absolute) and where it leads: a symlink's
    own place and its target's are both the host's."""
    return tuple(
        dict.fromkeys(
            spelling
            for path in paths
            if path
            for spelling in (os.path.realpath(path), os.path.abspath(path))
        )
    )


def plan_isolation(
    policy: CompiledPolicy,
    request: RunRequest,
    user: UserSpec | None,
    keep: Sequence[str],
    egress_port: int = 0,
    read_only: Sequence[str] = (),
    own_dirs: Sequence[str] = (),
) -> Isolation:
    """The namespaces the agent gets: all of them, and a network only when it may connect.

    With `egress_port` (egress.network_mode "proxy") the network namespace
    has loopback and the egress proxy's listener on that port: its one way out.

    A normal user gets them through a user namespace.  `--allow-degraded
    namespaces` (or one namespace's name) lets a refused namespace go with a
    warning instead of refusing to run.

    `keep` (host paths under /tmp or /run) are bound back into the private
    ones, as spelled and where they lead (a symlink's own place must be there
    too); those of `read_only` (a Python, agentsup itself) read-only: a .pth
    file written into a venv under /tmp would run in the next agentsup.
    `own_dirs` are made in them, the agent's own (an inherited TMPDIR).

    The UTS namespace keeps the host's name: it resolves there as on the host
    (a name of agentsup's own is in no /etc/hosts: Java's getLocalHost()
    failed), and no rename of the agent's reaches the host (as bubblewrap's
    --unshare-uts without --hostname).
    """

    return Isolation(
        namespaces=wanted_namespaces(policy, request, egress_port),
        allow_degraded=may_lack(request),
        user=user,
        keep=spellings([*keep, *read_only]),
        keep_read_only=spellings(read_only),
        own_dirs=tuple(own_dirs),
        egress_port=egress_port,
        # With the mount namespace: a tmpfs over the host's /run (its daemons'
        # sockets), with only `keep` and what tools need bound back in.
        private_run=tuple(kernel_namespaces.private_run_dirs()),
    )


def own_sockets_record(context: RunContext | None) -> dict[str, object]:
    """The run's facts on its own unix sockets, for the audit start record."""
    return {
        "private_tmp": list(context.private_tmp) if context else [],
        "private_abstract": bool(context and context.private_abstract),
    }


def active_layers(
    plan: launch.LaunchPlan, launched: launch.Launched, cgroup: bool, relay: PtyRelay | None
) -> dict[str, object]:
    """What this run has, for the audit start record and `--json-status`."""
    skipped = {
        name
        for name in plan.isolation.namespaces
        for note in launched.degraded
        if note.startswith(f"{name} namespace")
    }
    egress_kind = "none" if "net" in plan.isolation.namespaces else "direct"
    if launched.egress is not None:
        egress_kind = "proxy"
    entered = plan.isolation.namespaces - skipped
    return {
        "seccomp_notify": True,
        "landlock_abi": plan.landlock.abi if plan.landlock is not None else 0,
        "landlock_scoped": floor.scope_names(plan.landlock.scoped) if plan.landlock else [],
        "namespaces": sorted(entered),
        # The runtime directories the agent has a tmpfs of its own on (the
        # host's sockets under /run out of its sight); none without the
        # mount namespace.
        "private_run": list(plan.isolation.private_run) if "mount" in entered else [],
        "degraded": launched.degraded,
        "capabilities": "none",
        "user": plan.isolation.user.name if plan.isolation.user else None,
        "broker": True,
        "pty": relay is not None,
        "cgroup": cgroup,
        "hot_path": "native" if launched.forward is not None else "python",
        "read_lane": launched.read_group >= 0,
        "egress": egress_kind,
    }


def _status_code(raw_status: int) -> tuple[int, int | None]:
    if os.WIFSIGNALED(raw_status):
        sig = os.WTERMSIG(raw_status)
        return 128 + sig, sig
    return os.waitstatus_to_exitcode(raw_status), None


_FIRST_DECIDED = (ActionType.SHELL_EXECUTE, ActionType.PROCESS_SPAWN, ActionType.FILE_READ)

# How long an agent in its own PID namespace runs before its watchdog starts.
_WATCHDOG_AFTER = 0.3

# The file actions the native path answers, as its cache's bits.
_NATIVE_BITS = {
    ActionType.FILE_READ: fastpath.ALLOW_READ,
    ActionType.FILE_WRITE: fastpath.ALLOW_WRITE,
    ActionType.FILE_DELETE: fastpath.ALLOW_DELETE,
    ActionType.FILE_MOVE: fastpath.ALLOW_MOVE,
    ActionType.PROCESS_SPAWN: fastpath.ALLOW_SPAWN,
    ActionType.SHELL_EXECUTE: fastpath.ALLOW_SHELL,
    ActionType.FILE_CHMOD: fastpath.ALLOW_CHMOD,
}
_ALL_NATIVE_BITS = functools.reduce(operator.or_, _NATIVE_BITS.values())


def _mirror_to(broker: BrokerClient) -> Callable[[ActionType | None, str], None]:
    """The judge's allow cache, mirrored into the broker's native path.

    `None` means the cache was cleared; with target "policy", by a reload.
    """

    def mirror(action: ActionType | None, target: str) -> None:
        if action is None:
            broker.forget(policy_changed=target == "policy")
        elif action in _NATIVE_BITS and target.startswith("/"):
            broker.allow(os.fsencode(target), _NATIVE_BITS[action])

    return mirror


def native_decider(judge: Judge) -> Callable[[bytes, int], int]:
    """What the broker asks on a miss: which of the actions its judge plainly allows.

    Runs in the broker, on the copy of the judge it was forked with: the
    same compiled policy, floor and self-protection, without the audit log.
    """

    # (action, bit) pairs for each `wanted`, built once.
    pairs = {
        wanted: tuple((action, bit) for action, bit in _NATIVE_BITS.items() if wanted & bit)
        for wanted in range(_ALL_NATIVE_BITS + 1)
    }
    bits_of = judge.plainly_allowed_bits

    def decide(path: bytes, wanted: int) -> int:
        return bits_of(os.fsdecode(path), pairs[wanted & _ALL_NATIVE_BITS])

    return decide


def native_program(judge: Judge) -> tuple[object, ...] | None:
    """`judge.plain_program` in the layout `_fastpath.set_program` takes:
    actions as the native cache's bits, text as bytes."""
    program = judge.plain_program(_NATIVE_BITS)
    if program is None:
        return None
    tables = program.tables

    def bits(actions: Iterable[ActionType]) -> int:
        return functools.reduce(operator.or_, (_NATIVE_BITS.get(a, 0) for a in actions), 0)

    def entries(rows: Iterable[PlainEntry]) -> tuple[tuple[int, ...], ...]:
        return tuple(
            (bits(row.actions), row.pattern, row.except_low, row.except_high, row.flags)
            for row in rows
        )

    def texts(items: Iterable[str]) -> tuple[bytes, ...]:
        return tuple(os.fsencode(item) for item in items)

    # The floor's prefixes in the order of the bits (bit i: slot i).
    by_bit = {bit: action for action, bit in _NATIVE_BITS.items()}
    floor = tuple(
        None if (prefixes := program.floor.get(by_bit[1 << slot])) is None else texts(prefixes)
        for slot in range(len(_NATIVE_BITS))
    )
    return (
        tables.path_match,
        tables.path_patterns,
        entries(tables.path_entries),
        tables.shell_match,
        tables.shell_patterns,
        entries(tables.shell_entries),
        tables.default_flags,
        texts(tables.refusing_roots),
        texts(program.write_guards),
        texts(program.read_guards),
        texts(program.code_dirs),
        floor,
        tables.max_length,
    )


def _prepare_native(judge: Judge) -> None:
    """In the broker, before it serves: the tables its misses are decided
    with built, and handed to the native path."""
    judge.policy.prepare(tuple(_NATIVE_BITS))
    if fastpath.native is not None:
        fastpath.native.set_program(native_program(judge))


class Agent:
    """Everything one supervised agent owns: judge, listener, cgroup, hook socket."""

    def __init__(self, request: RunRequest, supervisor: Supervisor) -> None:
        self.request = request
        self.supervisor = supervisor
        self.locations: Locations = supervisor.locations
        self.loop = supervisor.loop
        self.audit = supervisor.audit
        self.judge: Judge | None = None
        self._policy_files: tuple[str, ...] = ()  # read from outside the policy directory
        self._import_dirs: tuple[str, ...] = ()  # agentsup's own import path, read-only
        self._env_dropped: list[str] = []  # variable names env.pass kept from the agent
        self._caches_moved: dict[str, str] = {}  # tool cache variable -> its private place
        self._retries_off: dict[str, str] = {}  # retry settings of tools with no way out
        self._tmpdir_made: str | None = None  # the inherited TMPDIR, made in its private tmpfs
        self.read_lane = ""  # readlane.status's word on this run
        self._tmpdir_dropped: str | None = None  # the inherited TMPDIR the policy refuses
        self.launched: launch.Launched | None = None
        self.mediator: Mediator | None = None
        self.group: AgentCgroup | None = None
        self.hooks: HookServer | None = None
        self._hook_socket: tuple[socket.socket, Path] | None = None  # bound, not served yet
        self.egress: egress.EgressProxy | None = None
        self.exec_error: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._context: RunContext | None = None
        self._plan: launch.LaunchPlan | None = None
        self._closed = False
        self.relay: PtyRelay | None = None
        self.layers: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"<Agent {self.judge!r}>"

    @property
    def agent_id(self) -> str:
        assert self.judge is not None
        return self.judge.agent_id

    @property
    def exited(self) -> bool:
        return self.judge is None or self.judge.state is AgentState.EXITED

    # -- setup ---------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything that can fail before the agent exists; raises SetupError."""
        request = self.request
        workspace = os.path.realpath(request.workspace)
        if not os.path.isdir(workspace):
            raise SetupError(f"workspace {request.workspace} is not a directory")
        agent_id = request.agent_id or f"agent-{os.getpid()}"
        # The cgroup first: the trampoline's move into it waits less when an
        # earlier move is under way (launch.warm_cgroup_moves).  Its failure is
        # reported where it always was, after the policy's.
        try:
            self.group = AgentCgroup.create(f"{agent_id}-{os.getpid()}")
        except CgroupUnavailable as exc:
            no_cgroup: CgroupUnavailable | None = exc
        else:
            no_cgroup = None
            launch.warm_cgroup_moves(self.group.paths[0])
        try:
            # Cached in the state directory, keyed on every file read along `extends`.
            resolved = resolve_policy_cached(
                request.policy, self.locations.policy_dir, self.locations.state_dir
            )
            policy = resolved.policy
            # Read again by a reload (red team 36 F1: the agent rewrote its
            # `--policy ./pol.yaml` before one): never the agent's to change.
            inside = self.locations.policy_dir.resolve()
            files = list(resolved.files)
            if is_path_reference(request.policy):
                # The path as given and every symlink on it (red team 38: the agent
                # re-pointed `./pol.yaml -> conf/real.yaml`, and the reload read its own).
                spelled = os.path.abspath(request.policy)
                files += [spelled, *symlinks_on_the_way(spelled)]
            self._policy_files = tuple(
                dict.fromkeys(p for p in files if not kernel_namespaces.under(p, [str(inside)]))
            )
        except PolicyError as exc:
            raise SetupError(str(exc)) from exc
        except OSError as exc:
            raise SetupError(f"cannot read policy {request.policy}: {exc.strerror}") from exc
        user = None
        if request.user is not None:
            if os.geteuid() != 0:
                raise SetupError("--user needs root")
            try:
                user = lookup_user(request.user)
            except KeyError as exc:
                raise SetupError(f"--user {request.user}: no such user") from exc
        home = user.home if user else invoking_home()
        owner = os.stat(workspace).st_uid
        if user is None and os.geteuid() == 0 and owner != 0:
            # Root without capabilities is an ordinary user that happens to be
            # uid 0: another user's files are as closed to it as to anyone.
            name = _user_name(owner)
            say(
                f"warning: the workspace belongs to {name}, and the agent runs as root with "
                f"no capabilities: their files are closed to it as to any other user "
                f"(to work as {name}: --user {name})"
            )
        # As `policy explain`'s; whether it has a network namespace of its own
        # is not known before the policy is (below).
        lacking = may_lack(request)
        self._context = RunContext.for_run(
            workspace, home, agent_id, sockets=own_sockets_here(lacking)
        )
        compiled = compile_policy_cached(resolved, self._context, self.locations.state_dir)
        for warning in policy.warnings:
            say(warning)  # already "file:line:col: warning: ..."
        waiting = _waits_for_a_person(compiled)
        if waiting and not self.locations.totp_secret.exists():
            # Said now, not when someone first tries to resume (new user 17).
            say(
                f"warning: rule '{waiting}' can stop the agent until a person resumes it, "
                "and there is no TOTP secret yet: `agentsup resume` cannot work until "
                "`agentsup totp init`"
            )

        if not _has_seccomp_notify():
            raise SetupError(
                "this kernel lacks seccomp user notification (Linux 5.5+ needed); "
                "refusing to run the agent unsupervised"
            )
        env = compiled.filter_environ(os.environ)
        # Said, not silent: a tool that misses its PIP_INDEX_URL or CC otherwise
        # fails far from the cause.  On a terminal, and always in the start record.
        self._env_dropped = sorted(
            name for name in set(os.environ) - set(env) if not name.startswith("AGENTSUP_")
        )
        # The shell's own bookkeeping is noise here (new user 18); the start record has all.
        said = [name for name in self._env_dropped if name not in _SHELLS_OWN]
        if said and sys.stderr.isatty():
            say(f"not passed to the agent (the policy's env.pass): {' '.join(said)}")
        self._caches_moved = moved_caches(compiled, home, env, self._context.private_tmp)
        env.update(self._caches_moved)
        egress_port = _egress_port(compiled)
        self._retries_off = no_retries_offline(compiled, env, egress_port)
        env.update(self._retries_off)
        # Now it is, and that makes abstract sockets the agent's own (no rule on
        # unix sockets changes whether it gets one: `floor_roots`).
        own_network = "net" in wanted_namespaces(compiled, request, egress_port)
        facts = own_sockets_here(lacking, own_network=own_network)
        if facts.private_abstract != self._context.private_abstract:
            self._context = dataclasses.replace(
                self._context, private_abstract=facts.private_abstract
            )
            compiled = compile_policy_cached(resolved, self._context, self.locations.state_dir)
        egress_proxy = None
        if egress_port:
            from . import egress

            env.update(egress.proxy_environment(egress_port, env.get("NODE_OPTIONS", "")))
            egress_proxy = f"{egress.PROXY_HOST}:{egress_port}"
        executable, argv = resolve_program(request.program, request.args, env.get("PATH", ""))
        programs = [executable]
        if request.program.endswith(".py"):
            programs.append(os.path.abspath(request.program))
        # Bound back into a private /tmp that covers them, they are the host's
        # files there, not the agent's own making: `{own_tmp}` has no value.
        held = dataclasses.replace(self._context, tmp_binds=spellings(programs))
        if held.own_tmp != self._context.own_tmp:
            self._context = held
            compiled = compile_policy_cached(resolved, self._context, self.locations.state_dir)
        # Every run serves the hook socket: any program (a shell script, make)
        # may start a Python, and hooks/site/sitecustomize.py hooks each one.
        self.locations.runtime_dir.mkdir(parents=True, exist_ok=True)
        hook_socket = os.path.realpath(
            self.locations.runtime_dir / f"hook-{os.getpid()}-{agent_id}.sock"
        )
        env.update(bootstrap.environment(hook_socket, agent_id))
        # Where agentsup is not installed in the interpreter's own site
        # directories (a private copy on PYTHONPATH), the hook must still import.
        package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        package_parent = os.path.dirname(package)
        private_copy = os.path.basename(package) == "agentsup"  # not an editable checkout
        if private_copy and os.path.realpath(package_parent) not in _site_directories():
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, (package_parent, env.get("PYTHONPATH")))
            )
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, (bootstrap.SITE_DIR, env.get("PYTHONPATH")))
        )
        if compiled.audit_level is AuditLevel.ALL:
            env[hook_protocol.ENV_NOTES] = "1"

        landlock_plan: floor.FloorPlan | None = None
        # The agent gets a private /tmp unless the operator let its mount
        # namespace go missing.
        private_tmp = not ({"mount", "namespaces"} & set(request.allow_degraded))
        # A home that is /tmp itself (some containers' HOME) is the private /tmp:
        # bound back, it would bring the host's /tmp in, and its holes with it.
        private_roots = (*kernel_namespaces.PRIVATE_TMP, *kernel_namespaces.PRIVATE_RUN)
        kept_home = "" if os.path.realpath(home) in private_roots else home
        self.judge = Judge(
            JudgeConfig(
                agent_id=agent_id,
                policy=compiled,
                policy_name=policy.name,
                workspace=workspace,
                locations=self.locations,
                hook_socket=hook_socket,
                egress_proxy=egress_proxy,
                shadow_guard=shadow_guard(policy, self._context, self.locations)
                if request.shadow
                else None,
                policy_files=self._policy_files,
                import_dirs=self._own_import_dirs(workspace, kept_home),
            ),
            self.audit,
        )
        # The read lane (readlane.py), decided before the floor: with it, the
        # floor refuses reading the devices the policy does not plainly allow.
        judge = self.judge

        def plainly_reads(name: str) -> bool:
            return judge.plainly_allows(ActionType.FILE_READ, name)

        read_lane, self.read_lane, unread = readlane.status(
            lambda: readlane.policy_answers(
                plainly_reads,
                self.locations.state_dir,
                # The judge decides with its locations too (self-protection).
                f"{compiled.cache_name} {self.locations}" if compiled.cache_name else None,
            ),
            wanted_namespaces(compiled, request, egress_port),
            may_lack(request),
            shadow=request.shadow,
        )
        if read_lane:
            # A file handed in write-only (`run >> build.log`) lies on a mount of
            # the host's, which the kernel asks nothing about: reopened through
            # /proc/self/fd it would be read unjudged (red team 28).
            unread += readlane.write_only_streams(plainly_reads)
        plan = plan_landlock(
            compiled,
            self.locations,
            request.shadow,
            private_tmp,
            kept=(workspace, kept_home),
            unread=unread,
        )
        if plan.abi < 1:
            if "landlock" not in request.allow_degraded:
                raise SetupError(
                    "this kernel has no Landlock, the kernel floor under the policy; "
                    "refusing to run (pass --allow-degraded landlock to run on seccomp alone)"
                )
            say("warning: no Landlock on this kernel; running on the seccomp layer alone")
        else:
            landlock_plan = plan

        if landlock_plan is not None:
            self.judge.floor = floor.FloorCheck(landlock_plan)
        if hook_socket is not None:
            # Bound now: the agent's private /tmp binds it in by name (plan_isolation's
            # `keep`).  Served from the launch on (start).
            try:
                self._hook_socket = listen_unix(Path(hook_socket)), Path(hook_socket)
            except OSError as exc:
                raise SetupError(f"cannot serve the hook socket {hook_socket}: {exc}") from exc
        if no_cgroup is not None:
            if "cgroup" not in request.allow_degraded and os.geteuid() == 0:
                why = f"cannot create a cgroup for the agent: {no_cgroup}"
                raise SetupError(why) from no_cgroup
            if "pid" not in wanted_namespaces(compiled, request, egress_port):
                # With a PID namespace the tree lives and dies with it: no cgroup
                # is the usual case for a user, said by `doctor`, not by every
                # run (new user 18); limits it cannot enforce are still said.
                say(f"warning: no cgroup ({no_cgroup}); tracking the process tree as its subreaper")
        limits = compiled.limits
        rlimits = {"RLIMIT_CORE": 0}  # a core dump would write agent memory to disk
        if self.group is not None:
            for gap in self.group.set_limits(limits.max_processes, limits.memory_mb):
                say(f"warning: cannot enforce {gap}")
        else:
            if limits.memory_mb:
                rlimits["RLIMIT_AS"] = limits.memory_mb * 2**20
            if limits.max_processes:
                rlimits["RLIMIT_NPROC"] = limits.max_processes
        if user is not None:
            env["HOME"], env["USER"], env["LOGNAME"] = user.home, user.name, user.name
        package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        hidden = [os.path.realpath(path) for path in self.locations.secret_paths()]
        for own in (sys.prefix, package):
            if kernel_namespaces.under(os.path.realpath(own), hidden):
                # Every Python agent reads it (its hook, pyvenv.cfg): new user
                # 18's agents were killed at their start.
                raise SetupError(
                    f"agentsup's own Python ({own}) lies in its state directory, which no "
                    "agent may read: install agentsup elsewhere (./install.sh: "
                    "/opt/agentsup as root, ~/.local/lib/agentsup as a user)"
                )
        keep = [workspace, kept_home, hook_socket or ""]
        # agentsup's own Python and code, wherever they are (a project's .venv
        # in the workspace too), and every directory it imports from (the
        # user's site-packages: red team 37): a .pth file written there would
        # run in the next agentsup, as root, before any supervision.  sys.prefix is also
        # a virtualenv's root (pyvenv.cfg, bin/python), which the realpath of
        # its python leaves behind: kept in a private /tmp, it must be there.
        read_only = [sys.executable, package, sys.prefix, sys.base_prefix, *self._import_dirs]
        read_only += [path for path in self._policy_files if os.path.isfile(path)]
        # The program too, read-only, unless it comes with the workspace or the
        # home: bound back into a private /tmp, a host file (a symlink's target
        # anywhere) would be written under a name the policy takes for the
        # agent's scratch (red team 27 rewrote one outside the workspace).
        within = [root for root in (workspace, kept_home) if root]
        for path in programs:
            if not all(kernel_namespaces.under(spelled, within) for spelled in spellings([path])):
                read_only.append(path)
        own_dirs = self._agents_tmpdir(compiled, env, [*keep, *read_only])
        isolation = plan_isolation(compiled, request, user, keep, egress_port, read_only, own_dirs)
        self._plan = launch.LaunchPlan(
            executable=executable,
            argv=argv,
            env=env,
            cwd=starting_directory(workspace, request.cwd),
            seccomp=filter_program(
                MEDIATED + ALWAYS_REFUSED,
                FORCED_ENOSYS,
                self.locations.state_dir,
                kernel_reads=read_lane,
            ),
            landlock=landlock_plan,
            rlimits=rlimits,
            isolation=isolation,
            read_lane=read_lane,
            native=fastpath.enabled(),
            native_decider=native_decider(self.judge),
            native_prepare=functools.partial(_prepare_native, self.judge),
            cgroup_procs=tuple(f"{path}/cgroup.procs" for path in self.group.paths)
            if self.group is not None
            else (),
        )

    def _own_import_dirs(self, workspace: str, home: str) -> tuple[str, ...]:
        """The directories agentsup's own Python imports from, each there (the user
        site-packages made if missing): bound read-only and refused to the agent.

        Not one that holds the workspace or the home (`PYTHONPATH=.`): that
        would be the agent's whole workspace.  A missing one could be made by
        the agent, through a symlink at a missing directory above it too (red
        team 38): its user site-packages is made now, and any other missing
        one (a stale PYTHONPATH entry) stops the run.
        """
        user_site = own_user_site()
        if user_site is not None and not os.path.lexists(user_site):
            try:
                os.makedirs(user_site, 0o755)
            except OSError as exc:
                raise SetupError(
                    f"cannot make agentsup's user site-packages {user_site}: {exc.strerror}"
                ) from exc
        found = []
        # Python's own (`lib/python311.zip`) lie in its prefixes, bound read-only.
        prefixes = [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)]
        for path in own_import_path():
            if kernel_namespaces.under(os.path.realpath(path), prefixes):
                continue
            if not os.path.lexists(path):
                raise SetupError(
                    f"agentsup's import path names {path}, which does not exist: an agent "
                    "could make it and plant code the next agentsup runs as root; remove it "
                    "from PYTHONPATH"
                )
            real = os.path.realpath(path)
            roots = [os.path.realpath(root) for root in (workspace, home) if root]
            if os.path.isdir(real) and not any(kernel_namespaces.under(r, [real]) for r in roots):
                found.append(real)
        self._import_dirs = tuple(found)
        return self._import_dirs

    def _agents_tmpdir(
        self, policy: CompiledPolicy, env: dict[str, str], kept: Sequence[str]
    ) -> list[str]:
        """The inherited TMPDIR made usable: the directories to make for it in
        the agent's private tmpfs, or it taken out of `env` (said, and in the
        start record) where the policy refuses the agent's writes there."""
        tmpdir = env.get("TMPDIR")
        if not tmpdir:
            return []
        private = [tmp for tmp in kernel_namespaces.PRIVATE_TMP if os.path.isdir(tmp)]
        private += kernel_namespaces.private_run_dirs()
        fate, real = tmpdir_fate(policy, tmpdir, private, spellings(kept))
        if fate == "drop":
            del env["TMPDIR"]
            self._tmpdir_dropped = tmpdir
            say(
                f"TMPDIR={tmpdir} not passed to the agent: the policy refuses its writes "
                "there (its temporary files go to /tmp)"
            )
            return []
        if fate == "make":
            self._tmpdir_made = tmpdir
            return [real]
        return []

    # -- running -------------------------------------------------------------------

    def start(self, meanwhile: Callable[[], None] = lambda: None) -> None:
        """Fork the trampoline, take its listener, and let it exec the agent.

        `meanwhile` runs while the trampoline sets the agent up (launch.start):
        what must be ready before the agent runs, but not before the fork.
        """
        assert self.judge is not None and self._plan is not None
        judge, plan = self.judge, self._plan
        if self.request.terminal:
            master, slave = os.openpty()
            from .terminal import PtyRelay

            self.relay = PtyRelay(master, 0, 1)
            self.relay.copy_window_size()
            plan.terminal = slave
        walk: list[ProtectedInodes] = []

        def while_the_trampoline_works() -> None:
            # Hard links to protected files: the walk that finds them (a child
            # process) starts now, and runs beside the agent's start.
            walk.append(ProtectedInodes(judge.policy, on_cut=self._walk_cut))
            meanwhile()
            if self.group is not None:
                # What killed supervisors left: none pile up on a host.
                self.group.remove_stale_siblings()
            for name in _IMPORTED_FOR_THE_RUN:
                importlib.import_module(name, __package__)
            self._serve_hooks()
            # What every agent's first syscalls ask (a cached policy builds each
            # action's set when first needed): its exec, and its loader's opens.
            judge.policy.prepare(_FIRST_DECIDED)

        try:
            launched = launch.start(plan, while_the_trampoline_works)
        except BaseException as exc:
            for started in walk:
                started.close()
            if isinstance(exc, launch.LaunchError):
                raise SetupError(str(exc)) from exc
            raise
        finally:
            if plan.terminal >= 0:
                os.close(plan.terminal)  # the agent's copy is all there is: EOF when it goes
                plan.terminal = -1
        self.launched = launched
        if self.relay is not None and launched.pty_master >= 0:
            # The agent's pty was remade in its own devpts: relay that one.
            os.close(self.relay.master)
            self.relay.master = launched.pty_master
            self.relay.copy_window_size()
        elif launched.pty_master >= 0:
            os.close(launched.pty_master)
        for note in launched.degraded:
            say(f"warning: running without {note}")
        if self.group is not None:
            if "pid" in plan.isolation.namespaces and not launched.degraded:
                # Until then the parent-death signals hold: a dead supervisor
                # takes the trampoline, the init and so the whole PID
                # namespace with it.  A short command never needs the watchdog.
                self._call_later(_WATCHDOG_AFTER, self._spawn_watchdog)
            else:
                self._spawn_watchdog()
        if {"pid", "mount"} <= set(plan.isolation.namespaces) and not launched.degraded:
            # The agent's /proc is its own PID namespace's, where the
            # supervisor has no number: /proc/<the supervisor's pid> there is
            # one of the agent's own processes, not the supervisor.
            judge.supervisor_procs = ()
        judge.main_pid = launched.agent_pid
        judge.tree = ProcessTree(self.group, launched.pid)
        from .mediator import Mediator  # imported while the trampoline worked

        self.mediator = Mediator(
            launched.listener,
            judge,
            judge.tgid_of,
            launched.broker,
            judge.agent_id,
            wait_writable=self._wait_writable,
            forward=launched.forward,
            call_later=self._call_later,
        )
        self.mediator.protected_inodes = walk[0]
        if launched.forward is not None:
            judge.allow_mirror = _mirror_to(launched.broker)
        self.loop.add_reader(self._notifications(), self._on_listener, owner=self)
        self.loop.add_reader(launched.pidfd, lambda _events: self.supervisor.reap(), owner=self)
        self.loop.add_reader(launched.status_fd, self._on_status, owner=self)
        if self.hooks is not None:
            self.loop.attach(self.hooks, owner=self)
        if launched.egress is not None:
            from . import egress

            self.egress = egress.EgressProxy(self.loop, launched.egress, judge, self.audit)
        judge.on_hold = self._on_hold
        if self.request.cpus == "auto" and self.group is not None:
            from . import placement

            cpu = placement.CgroupCpu(self.group.tracking)
            if cpu.available():
                self._watch_placement(cpu)
        limits = judge.policy.limits
        if limits.max_runtime_seconds:
            self._call_later(limits.max_runtime_seconds, self._runtime_exceeded)
        self.layers = active_layers(plan, launched, self.group is not None, self.relay)
        entered = self.layers["namespaces"]
        assert isinstance(entered, list)
        judge.lifecycle(
            "start",
            argv=plan.argv,
            workspace=judge.config.workspace,
            cwd=plan.cwd,  # where it started: the caller's directory when in the workspace
            home=self._context.home if self._context else None,
            landlock=plan.landlock is not None,
            cgroup=self.group is not None,
            layers=self.layers,
            policy_source=policy_reference(self.request.policy),  # what `policy suggest` extends
            env_not_passed=self._env_dropped,
            caches_moved=self._caches_moved,
            # Made only in a private /tmp: not where the mount namespace went missing.
            tmpdir_made=self._tmpdir_made if "mount" in entered else None,
            tmpdir_not_passed=self._tmpdir_dropped,
            network_retries_off=sorted(self._retries_off),
            own_sockets=own_sockets_record(self._context),
            read_lane=self.read_lane,  # why the kernel asks the broker about reads, or why not
            **({"shadow": True} if self.request.shadow else {}),
        )
        if judge.state is AgentState.STARTING:  # not stopped meanwhile (its start unaudited)
            judge.state = AgentState.RUNNING
        launched.release()
        if self.relay is not None:
            self.relay.attach(self.loop)

    def _serve_hooks(self) -> None:
        from .hookserver import HookServer

        bound, self._hook_socket = self._hook_socket, None
        if bound is not None:
            listener, path = bound

            def failed(pid: int, error: str) -> None:
                """Judging a hook's request raised: its hook failed closed; say why."""
                from .judge import MEDIATION_ERROR_RULE

                assert self.judge is not None
                self.audit.append(
                    {
                        "agent": self.judge.agent_id,
                        "pid": pid,
                        "kind": "decision",
                        "decision": "deny",
                        "rule": MEDIATION_ERROR_RULE,
                        "severity": "high",
                        "layer": "hook",
                        "response": "block",
                        "message": f"could not judge the hook's request, refused it: {error}",
                    }
                )

            self.hooks = HookServer(
                path,
                self._on_hook_request,
                self._on_tamper,
                cacheable=self._hook_answer_cacheable,
                listener=listener,
                on_error=failed,
            )

    def reload_policy(self) -> None:
        """The policy directory changed legitimately: the next decision uses the new rules."""
        judge = self.judge
        if judge is None or self._context is None or self.exited:
            return
        try:
            from ..policy.loader import resolve_policy

            policy = resolve_policy(self.request.policy, self.locations.policy_dir)
            compiled = compile_policy(policy, self._context)
        except (PolicyError, OSError, ImportError) as exc:
            self.audit.append(
                {
                    "agent": judge.agent_id,
                    "kind": "policy",
                    "layer": "supervisor",
                    "severity": "high",
                    "event": "reload-failed",
                    "reason": str(exc),
                }
            )
            say(f"warning: policy reload failed, keeping the old rules: {exc}")
            return
        judge.set_policy(compiled)
        if self.mediator is not None:
            # Other names of the files the new rules refuse: found anew (red
            # team 31 read one through a link made while the rule was not there).
            self.mediator.walk_anew(ProtectedInodes(judge.policy, on_cut=self._walk_cut))
        if self.hooks is not None:
            self.hooks.invalidate()  # answers the hooks cached came from the old rules
        self.audit.append(
            {
                "agent": judge.agent_id,
                "kind": "policy",
                "layer": "supervisor",
                "event": "reloaded",
                "policy": policy.name,
            }
        )

    # -- the Python hook and the person in the loop -------------------------------

    def _hook_answer_cacheable(self, request: HookRequest, _reply: HookReply) -> bool:
        """A hook may keep an allow the judge itself caches: no record, limit or grant."""
        judge = self.judge
        return judge is not None and (request.action, request.target) in judge.allow_cache

    def _on_hook_request(self, request: HookRequest) -> HookReply | None:
        from .hookserver import HookReply  # imported before the agent ran

        assert self.judge is not None
        judge = self.judge
        event = request.event(judge.agent_id)
        if not request.needs_reply:
            # Notes are telemetry: the syscall layer makes the one decision about
            # files, execs and connects.  They come at audit level `all`, and
            # for ctypes.dlopen always.
            dlopen = request.detail.get("event") == "ctypes.dlopen"
            if dlopen or judge.policy.audit_level is AuditLevel.ALL:
                self.audit.append(
                    {
                        "agent": judge.agent_id,
                        "pid": request.pid,
                        "kind": "decision",
                        "action_type": str(event.action),
                        "target": cut_text(event.target, NOTE_TARGET),
                        "decision": "log",
                        "rule": "agentsup-hook-note",
                        "severity": "medium" if dlopen else "low",
                        "layer": "hook",
                        "note": True,
                        "detail": bounded_detail(request.detail),
                    }
                )
            return None
        hooks = self.hooks
        assert hooks is not None
        token = request.token
        held: list[Decision] = []

        def answer(approved: bool) -> None:
            given = Response.ALLOW if approved else Response.BLOCK
            hooks.reply_later(token, HookReply.from_decision(held[0], given))

        decision, response = judge.judge_event(event, request.pid, on_settle=answer)
        if response is Response.HOLD:
            held.append(decision)
            return None
        return HookReply.from_decision(decision, response)

    def _on_tamper(self, pid: int, reason: str) -> None:
        assert self.judge is not None
        self.audit.append(
            {
                "agent": self.judge.agent_id,
                "pid": pid,
                "kind": "tamper",
                "severity": "critical",
                "layer": "hook",
                "reason": reason,
            }
        )

    def _on_hold(self, pending: Pending) -> None:
        """An agent waits for a person: tell them, and arm the approval timeout."""
        from ..control import notify

        assert self.judge is not None
        self._arm_approval_timeout(pending)  # first: nothing in the notice may keep it off
        command = notify.notify_command()
        if command is not None:
            verb = "waits for approval of" if pending.kind == "approval" else "was stopped for"
            notify.send(
                command,
                f"agentsup: agent '{self.judge.agent_id}' {verb} {pending.event.action} "
                f"{pending.event.target}",
                {
                    "agent": self.judge.agent_id,
                    "request": pending.request_id,
                    "action": str(pending.event.action),
                    "target": pending.event.target,
                    "rule": pending.decision.rule_id,
                    "kind": pending.kind,
                },
                self._call_later,
            )

    def _arm_approval_timeout(self, pending: Pending) -> None:
        assert self.judge is not None
        if pending.kind != "approval":
            return
        judge = self.judge
        approval = judge.policy.approval
        request_id = pending.request_id

        def expire() -> None:
            if request_id not in judge.pending:
                return
            if approval.on_timeout == "kill":
                judge.kill_for_limit(
                    "approval.timeout_seconds",
                    f"no decision on {pending.event.action} {pending.event.target} "
                    f"within {approval.timeout_seconds:g} s",
                )
            else:
                judge.settle(False, uid=-1, reason="approval timed out", outcome="timeout")

        pending.timer = self._call_later(approval.timeout_seconds, expire)

    # -- the agent's fds and its end -----------------------------------------------

    def _wait_writable(
        self,
        fd: int,
        on_ready: Callable[[], None],
        on_timeout: Callable[[], None],
        timeout: float,
    ) -> None:
        """Call `on_ready` when `fd` becomes writable, or `on_timeout` after `timeout` s."""

        def ready(_events: int) -> None:
            timer.cancel()
            self.loop.remove_reader(fd)
            on_ready()

        def expired() -> None:
            self.loop.remove_reader(fd)
            on_timeout()

        timer = self._call_later(timeout, expired)
        self.loop.add_reader(fd, ready, select.EPOLLOUT, owner=self)

    def _spawn_watchdog(self) -> None:
        """The process that kills the agent's groups if this supervisor dies."""
        if self.group is None or self._closed or self.exited or self._watchdog is not None:
            return
        try:
            from .watchdog import spawn_watchdog

            self._watchdog = spawn_watchdog(os.getpid(), self.group)
        except (OSError, ImportError) as exc:
            # Out of fds or processes (subprocess's import too): the parent-death
            # chain still holds.
            say(f"warning: no watchdog for this agent's groups: {exc}")

    def _notifications(self) -> int:
        """Where notifications arrive: the listener, or the broker's forward socket."""
        assert self.launched is not None
        forward = self.launched.forward
        return forward.fileno() if forward is not None else self.launched.listener

    def _on_listener(self, events: int) -> None:
        assert self.mediator is not None and self.launched is not None
        if not self.mediator.on_ready(events):
            self.loop.remove_reader(self._notifications())

    def _on_status(self, _events: int) -> None:
        assert self.launched is not None
        data = os.read(self.launched.status_fd, 256)
        self.loop.remove_reader(self.launched.status_fd)
        if data.startswith(b"E"):
            self.exec_error = int(data[1:].split()[0])

    def forget_process(self, pid: int) -> None:
        if self.mediator is not None:
            self.mediator.forget_process(pid)

    def _call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """This agent's timer: an error in it ends this agent only (loop.Owner)."""
        return self.loop.call_later(delay, callback, owner=self)

    def fail_closed(self, error: Exception) -> None:
        """One of this agent's callbacks raised (loop.Owner): whatever it waits
        for may never be decided, so the agent is killed, on record, and the
        supervisor goes on serving the others."""
        detail = f"{type(error).__name__}: {error}"
        if self.judge is not None and self.judge.tree is not None:
            self.judge.kill_for_error(detail)  # said and recorded, whatever is left killed
            if not self.exited:
                return  # its end comes as any agent's does
        self.close()  # its end was what failed: nothing more comes

    def _walk_cut(self, roots: list[str]) -> None:
        """The protected-inode walk ran out of budget in `roots`: a hard link to
        a file deeper in them is judged under its own name only.  On record."""
        if self.judge is not None:
            self.judge.lifecycle("protected_walk_cut", roots=roots, budget=protected.BUDGET)

    def main_exited(self, status: int) -> None:
        """The agent's main process is gone: whatever it left behind goes with it."""
        assert self.judge is not None
        judge = self.judge
        judge.exit_status = status
        if judge.tree is not None and judge.tree.pids():
            judge.tree.kill()
        judge.state = AgentState.EXITED

    def _watch_placement(self, cpu: placement.CgroupCpu) -> None:
        """Twice a second, put the agent on its supervisor's CPU or on all of them.

        It starts shared: most commands an agent runs are short and make
        mediated syscalls, whose hand-overs cost far less on one CPU; one that
        turns out to compute in parallel is spread at the first sample.
        """
        from . import placement

        every = placement.all_cpus()
        shared_cpus = {max(os.sched_getaffinity(0))}
        native = self.launched is not None and self.launched.forward is not None
        shared, apart = True, placement.supervisor_apart(native, len(every), None)

        def place() -> None:
            assert self.group is not None
            agent = shared_cpus if shared else every
            supervisor = (every - shared_cpus) if shared and apart else agent
            placement.place(self.group.pids(), agent, supervisor)

        place()
        last = (self.loop.clock(), 0, 0, *cpu.read())

        def sample() -> None:
            nonlocal shared, apart, last
            if self.exited or self.mediator is None or self.group is None:
                return
            # Both the supervisor's answers and the broker's own count.
            answered = self.mediator.served - self.mediator.notices
            served = self.mediator.served + (
                self.launched.answered_natively() if self.launched else 0
            )
            now = self.loop.clock()
            used, stalled = cpu.read()
            elapsed = max(now - last[0], 1e-3)
            observed = placement.Sample(
                notifications_per_s=(served - last[1]) / elapsed,
                cores_used=(used - last[3]) / elapsed,
                stalled=(stalled - last[4]) / elapsed,
                answered_per_s=(answered - last[2]) / elapsed,
            )
            last = (now, served, answered, used, stalled)
            wanted = placement.should_share(shared, observed)
            wanted_apart = placement.supervisor_apart(native, len(every), observed)
            if (wanted, wanted_apart) != (shared, apart):
                shared, apart = wanted, wanted_apart
                place()
            self._call_later(placement.SAMPLE_SECONDS, sample)

        self._call_later(placement.SAMPLE_SECONDS, sample)

    def _runtime_exceeded(self) -> None:
        assert self.judge is not None
        if self.judge.state is not AgentState.EXITED:
            limit = self.judge.policy.limits.max_runtime_seconds
            self.judge.kill_for_limit("limits.max_runtime_seconds", f"ran longer than {limit} s")

    def finish(self) -> int:
        """Record the end and return the exit code `run` reports."""
        assert self.judge is not None
        self._release_terminal()
        judge = self.judge
        status = judge.exit_status if judge.exit_status is not None else 0
        code, sig = _status_code(status)
        if self.exec_error is not None:
            missing = self.exec_error in (errno.ENOENT, errno.ENOTDIR)
            code = EXIT_NOT_FOUND if missing else EXIT_CANNOT_EXECUTE
            needed = missing_for_agent(self._plan.executable) if self._plan and missing else None
            if needed:
                say(f"cannot execute {self.request.program}: {needed}")
            else:
                say(f"cannot execute {self.request.program}: {os.strerror(self.exec_error)}")
        report = judge.kill_report
        if report is not None and code == 0:
            # A rule ended the run, though its main process got out first:
            # the run did not end well, whatever that process said.
            code = 128 + signal.SIGKILL
        ended_by = signal_name(sig) if sig else None
        at_limit = self.group.times_at_process_limit() if self.group is not None else 0
        judge.lifecycle(
            "exit",
            exit_code=code,
            signal=ended_by,
            killed_by=report.rule if report else None,
            **({"process_limit_refused": at_limit} if at_limit else {}),
        )
        if at_limit:
            # The kernel says EAGAIN and nothing more: "can't start new thread".
            limit = judge.policy.limits.max_processes
            say(
                f"the policy's max_processes ({limit}) refused {at_limit} fork(s) or new "
                "thread(s): threads count as processes (limits.max_processes)"
            )
        if self.request.shadow:
            for line in judge.shadow_summary():
                say(line)
        elif code != 0 and report is None:
            # A job that failed may have failed on these; one that ended well
            # (npm without ~/.npmrc, cargo without its home's lock) is left
            # alone, and a kill has said its line.
            for line in judge.refusal_summary():
                say(line)
        return code

    def _release_terminal(self) -> None:
        """Pass on the agent's last output and give the user's terminal back as it was."""
        relay, self.relay = self.relay, None
        if relay is not None:
            relay.detach()
            os.close(relay.master)

    def close(self) -> None:
        """Release everything the run holds; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._release_terminal()
        if self.judge is not None and self.judge.state is not AgentState.EXITED:
            self.judge.signal_tree(signal.SIGKILL, "supervisor shutting down")
        if self.mediator is not None:
            self.mediator.close()
        if self.launched is not None:
            self.loop.remove_reader(self._notifications())
            for fd in (self.launched.listener, self.launched.pidfd, self.launched.status_fd):
                self.loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
            if self.launched.forward is not None:
                self.launched.forward.close()
            self.launched.broker.close()
            if self.launched.go_fd >= 0:
                os.close(self.launched.go_fd)
        if self.group is not None:
            self.group.kill()
            self.group.wait_empty(2.0)
            self.group.remove()
        if self.launched is not None and self.launched.read_group >= 0:
            # Last: a group whose last fd closes lets every open waiting on it go.
            with contextlib.suppress(OSError):
                os.close(self.launched.read_group)
            self.launched.read_group = -1
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait()
        if self.hooks is not None:
            self.hooks.close()
        elif self._hook_socket is not None:
            close_listener(*self._hook_socket)
        if self.egress is not None:
            self.egress.close()
