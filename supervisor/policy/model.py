"""The policy as frozen values: what the loader builds and the compiler reads.

A `Policy` is always the *effective* policy: `extends` has been applied, the
rules are in evaluation order (stable sort by priority, child before parent at
equal priority) and every section has its value, inherited or built in.
Nothing here does I/O.

The values are named tuples: immutable, compared and hashed by value, and
made at import for a fraction of what a frozen dataclass costs (every
`agentsup run` imports this module before its agent starts).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from ..events import ActionType, AuditLevel, RateLimit, Severity, Verdict, ViolationMode

ApprovalTimeoutAction = Literal["deny", "kill"]
# How an agent that may connect reaches the network (policy key `network`):
# through the egress proxy, by name, or straight out, judged per syscall by IP:PORT.
NetworkMode = Literal["proxy", "direct"]

DEFAULT_PRIORITY = 100
DEFAULT_SEVERITY = Severity.MEDIUM
DEFAULT_VERDICT = Verdict.DENY
DEFAULT_ON_VIOLATION = ViolationMode.SIGKILL
# What the agent's programs need and no secret: the terminal, the user's
# editor, build and toolchain settings, CA bundles, commit identity.  Not
# PIP_* (index URLs can carry credentials), SSH_AUTH_SOCK, cloud or CI
# credentials.  README ("The environment") lists it for users.
DEFAULT_ENV_PASS: tuple[str, ...] = (
    *("PATH", "HOME", "LANG", "LC_*", "TERM", "USER", "LOGNAME", "SHELL", "TMPDIR", "TZ"),
    *("COLUMNS", "LINES", "COLORTERM", "NO_COLOR", "FORCE_COLOR", "CLICOLOR"),
    *("EDITOR", "VISUAL", "PAGER", "LESS"),
    *("CC", "CXX", "CPP", "LD", "AR", "RANLIB", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS"),
    *("LDLIBS", "MAKEFLAGS", "PKG_CONFIG_PATH", "CMAKE_*", "*SAN_OPTIONS"),
    *("PYTHONPATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING"),
    *("PYTHONUTF8", "PYTHONHASHSEED", "PYTHONWARNINGS", "VIRTUAL_ENV"),
    *("RUST_BACKTRACE", "RUST_LOG", "RUSTFLAGS", "CARGO_HOME", "RUSTUP_HOME"),
    *("CARGO_TERM_COLOR", "CARGO_BUILD_JOBS"),
    *("GOPATH", "GOROOT", "GOFLAGS", "GO111MODULE", "CGO_ENABLED", "JAVA_HOME"),
    *("NODE_ENV", "NODE_PATH", "NODE_OPTIONS", "NVM_DIR"),
    *("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
    "NODE_EXTRA_CA_CERTS",
    *("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"),
    *("GIT_EDITOR", "GIT_PAGER", "CI", "DEBIAN_FRONTEND"),
)
DEFAULT_ENV_DENY: tuple[str, ...] = ("*_KEY", "*TOKEN*", "*SECRET*", "*PASSWORD*")
DEFAULT_APPROVAL_TIMEOUT = 300.0
DEFAULT_AUDIT_LEVEL = AuditLevel.DECISIONS


class PolicyError(ValueError):
    """A policy file that cannot be used; the whole policy is rejected.

    `str()` is `FILE:LINE:COL: rule 'ID': MESSAGE`, without the rule part
    when the error is not inside a rule.  Line and column are 1-based.
    """

    def __init__(
        self, path: str, line: int, column: int, message: str, rule_id: str | None = None
    ) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.message = message
        self.rule_id = rule_id
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{_one_line(self.path)}:{self.line}:{self.column}: "
        if self.rule_id is not None:
            where += f"rule '{_one_line(self.rule_id)}': "
        return where + _one_line(self.message)


def _one_line(text: str) -> str:
    """`text` with control characters escaped, so that an error stays one line."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class SourceLocation(NamedTuple):
    """Where in a policy file something was written."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


class Rule(NamedTuple):
    """One rule as written; `target` (a glob) or `pattern` (a regex), never both.

    `except_globs` is an extension beyond DESIGN.md: targets matching any of
    them are not matched by the rule.  `on_violation` is None when the rule
    leaves it to the policy.
    """

    id: str
    actions: frozenset[ActionType]
    decision: Verdict
    target: str | None = None
    pattern: str | None = None
    except_globs: tuple[str, ...] = ()
    priority: int = DEFAULT_PRIORITY
    severity: Severity = DEFAULT_SEVERITY
    message: str = ""
    on_violation: ViolationMode | None = None
    agents: tuple[str, ...] | None = None
    rate_limit: RateLimit | None = None
    source: SourceLocation = SourceLocation("<memory>", 1, 1)


def connects_to_an_ip_literal(rule: Rule) -> bool:
    """Whether `rule` names connects by address (`127.0.0.1:8080`, `[::1]:80`),
    not by host name: without a `network:` key such a rule means the host's
    network (`direct`).  A bind to an ephemeral port (`:0`) is not a way out."""
    text = (rule.target or rule.pattern or "").lstrip("^")
    if ActionType.NETWORK_CONNECT not in rule.actions or text.endswith(":0"):
        return False
    return text[:1].isdigit() or text.startswith(("[", "\\["))


class EnvPolicy(NamedTuple):
    """Which variables the agent receives: listed in `pass_` and not in `deny`.

    Effective lists: a child's lists add to its parents' unless it names them
    in `env.replace` (the loader's docstring has the exact rule).
    """

    pass_: tuple[str, ...] = DEFAULT_ENV_PASS
    deny: tuple[str, ...] = DEFAULT_ENV_DENY


class Limits(NamedTuple):
    """Resource limits; None means no limit."""

    max_runtime_seconds: int | None = None
    memory_mb: int | None = None
    max_processes: int | None = None


class Approval(NamedTuple):
    """What happens to an action held for a person (`approval:`)."""

    timeout_seconds: float = DEFAULT_APPROVAL_TIMEOUT
    on_timeout: ApprovalTimeoutAction = "deny"


class Policy(NamedTuple):
    """One effective policy (see the module's docstring)."""

    name: str
    rules: tuple[Rule, ...] = ()
    description: str = ""
    version: str = ""
    extends: tuple[str, ...] = ()
    default: Verdict = DEFAULT_VERDICT
    on_violation: ViolationMode = DEFAULT_ON_VIOLATION
    env: EnvPolicy = EnvPolicy()
    limits: Limits = Limits()
    approval: Approval = Approval()
    audit_level: AuditLevel = DEFAULT_AUDIT_LEVEL
    # None: chosen from the rules (an IP-literal connect rule means direct).
    network: NetworkMode | None = None
    source: str = "<memory>"
    # `FILE:LINE:COL: warning: ...` lines: legal, but probably not what was meant.
    warnings: tuple[str, ...] = ()
