"""The plain values every layer shares: action types, events and decisions.

Nothing here does I/O.  The seccomp layer, the in-agent hook and the CLI all
turn what they see into an `Event`; the policy engine turns an `Event` into a
`Decision`; `response_for` says what the supervisor then does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class ActionType(str, enum.Enum):
    FILE_READ = "file_read"
    FILE_WRITE = "file_write"
    FILE_DELETE = "file_delete"
    FILE_MOVE = "file_move"
    FILE_CHMOD = "file_chmod"
    SHELL_EXECUTE = "shell_execute"
    PROCESS_SPAWN = "process_spawn"
    NETWORK_CONNECT = "network_connect"
    NETWORK_REQUEST = "network_request"
    ENV_READ = "env_read"
    ENV_WRITE = "env_write"
    DATABASE_READ = "database_read"
    DATABASE_WRITE = "database_write"
    DATABASE_DELETE = "database_delete"
    DATABASE_EXECUTE = "database_execute"
    MEMORY_ACCESS = "memory_access"

    def __str__(self) -> str:
        return self.value


# The actions on files.
FILE_ACTIONS: frozenset[ActionType] = frozenset(
    {
        ActionType.FILE_READ,
        ActionType.FILE_WRITE,
        ActionType.FILE_DELETE,
        ActionType.FILE_MOVE,
        ActionType.FILE_CHMOD,
    }
)
# Action types whose target is a filesystem path.  Their targets are
# normalised lexically (`/a/b/../c` -> `/a/c`) before rules see them.
PATH_ACTIONS: frozenset[ActionType] = FILE_ACTIONS | {ActionType.PROCESS_SPAWN}


class Verdict(str, enum.Enum):
    """What a rule (or the policy default) says about an action."""

    ALLOW = "allow"
    DENY = "deny"
    WARN = "warn"
    REQUIRE_APPROVAL = "require_approval"
    LOG = "log"

    def __str__(self) -> str:
        return self.value


class ViolationMode(str, enum.Enum):
    """What a deny does to the agent (`on_violation`)."""

    SIGKILL = "sigkill"
    SIGSTOP = "sigstop"
    BLOCK = "block"
    SIGWARN = "sigwarn"
    LOG_ONLY = "log_only"

    def __str__(self) -> str:
        return self.value


class Severity(str, enum.Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    def __str__(self) -> str:
        return self.value


class Layer(str, enum.Enum):
    """Which part of agentsup saw the action (the audit `layer` field)."""

    SECCOMP = "seccomp"
    FANOTIFY = "fanotify"  # a read the kernel asked about (the read lane)
    LANDLOCK = "landlock"
    HOOK = "hook"
    PROXY = "proxy"
    SUPERVISOR = "supervisor"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Event:
    """One action an agent attempted.

    `target` is the string rules match (DESIGN.md 1.2): an absolute real path
    for file actions, the command line for shell_execute, `IP:PORT` for
    network_connect, `METHOD URL` for network_request, and so on.
    """

    action: ActionType
    target: str
    agent_id: str = ""
    pid: int = 0
    layer: Layer = Layer.SECCOMP
    syscall: str = ""


class RateLimit(NamedTuple):
    """At most `max` actions a rule lets go ahead in any `per_seconds` window."""

    max: int
    per_seconds: float


DEFAULT_RULE_ID = "<default>"


class Decision(NamedTuple):
    """The engine's answer for one event.

    `rule_id` is DEFAULT_RULE_ID when no rule matched and the policy's
    `default` decided.  `reason` says in words why the rule matched.
    """

    verdict: Verdict
    rule_id: str
    severity: Severity
    message: str
    on_violation: ViolationMode
    reason: str
    rate_limit: RateLimit | None = None

    @property
    def is_default(self) -> bool:
        return self.rule_id == DEFAULT_RULE_ID


class Response(str, enum.Enum):
    """What the supervisor does about a decision."""

    ALLOW = "allow"  # let it happen
    LOG = "log"  # let it happen, record it
    WARN = "warn"  # let it happen, record it, report a warning
    BLOCK = "block"  # fail the action, the agent carries on
    KILL = "kill"  # fail the action, SIGKILL the whole tree
    STOP = "stop"  # fail the action, SIGSTOP the whole tree
    HOLD = "hold"  # hold the action and stop the tree until a person decides

    def __str__(self) -> str:
        return self.value

    @property
    def proceeds(self) -> bool:
        """True when the action itself goes ahead."""
        return self in (Response.ALLOW, Response.LOG, Response.WARN)


_DENY_RESPONSES = {
    ViolationMode.SIGKILL: Response.KILL,
    ViolationMode.SIGSTOP: Response.STOP,
    ViolationMode.BLOCK: Response.BLOCK,
    ViolationMode.SIGWARN: Response.WARN,
    ViolationMode.LOG_ONLY: Response.LOG,
}

_VERDICT_RESPONSES = {
    Verdict.ALLOW: Response.ALLOW,
    Verdict.LOG: Response.LOG,
    Verdict.WARN: Response.WARN,
    Verdict.REQUIRE_APPROVAL: Response.HOLD,
}


def response_for(decision: Decision) -> Response:
    """Map a decision to the supervisor's response (DESIGN.md 1.3)."""
    if decision.verdict is Verdict.DENY:
        return _DENY_RESPONSES[decision.on_violation]
    return _VERDICT_RESPONSES[decision.verdict]


class AuditLevel(str, enum.Enum):
    """`audit.level`: which decisions reach the audit log.

    violations: deny, warn and require_approval decisions.
    decisions:  those plus `log` decisions: everything but plain allows.
    all:        every decision, plain allows included.
    Signals, approvals, lifecycle, policy and tamper records are always kept.
    """

    VIOLATIONS = "violations"
    DECISIONS = "decisions"
    ALL = "all"

    def __str__(self) -> str:
        return self.value


def should_audit(decision: Decision, level: AuditLevel) -> bool:
    verdict = decision.verdict
    if level is AuditLevel.ALL:
        return True
    if verdict in (Verdict.DENY, Verdict.WARN, Verdict.REQUIRE_APPROVAL):
        return True
    return level is AuditLevel.DECISIONS and verdict is Verdict.LOG


def signal_name(number: int) -> str:
    """`SIGKILL`, and a name for every number Python's enum has none for
    (`SIGRTMIN+6`, `SIG70`): an agent may end by any signal it likes."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
            return f"SIGRTMIN+{number - signal.SIGRTMIN}"
        return f"SIG{number}"
