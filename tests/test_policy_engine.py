"""The compiler and the pure evaluator: which rule decides an event, and why."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentsup.events import (
    DEFAULT_RULE_ID,
    PATH_ACTIONS,
    ActionType,
    AuditLevel,
    Decision,
    Event,
    RateLimit,
    Severity,
    Verdict,
    ViolationMode,
)
from agentsup.policy import (
    CompiledPolicy,
    RateLimiter,
    RunContext,
    compile_policy,
    engine,
    normalise_path,
    resolve_policy,
)
from agentsup.policy.linear import PatternError
from agentsup.policy.loader import load_policy_text

A = ActionType
WORKSPACE = "/w"
CTX = RunContext(workspace=WORKSPACE, home="/home/u", agent_id="agent-1", python_prefixes=("/py",))


def compiled(text: str, ctx: RunContext = CTX) -> CompiledPolicy:
    return compile_policy(load_policy_text(textwrap.dedent(text), "test.yaml", Path("/")), ctx)


def one_rule(matcher: str, actions: str = "[file_read]", **extra: str) -> CompiledPolicy:
    fields = "".join(f"\n    {key}: {value}" for key, value in extra.items())
    return compiled(
        f"name: t\nrules:\n  - id: r\n    actions: {actions}\n    {matcher}\n"
        f"    decision: allow{fields}\n"
    )


def decide(policy: CompiledPolicy, action: ActionType, target: str) -> str:
    """The id of the deciding rule."""
    return policy.evaluate(Event(action, target)).rule_id


# ---------------------------------------------------------------- first match wins


def test_the_first_rule_in_priority_order_decides() -> None:
    policy = compiled(
        """
        name: t
        rules:
          - {id: late, actions: [file_read], target: "/data/**", decision: allow, priority: 200}
          - {id: same-a, actions: [file_read], target: "/data/x/**", decision: deny}
          - {id: same-b, actions: [file_read], target: "/data/**", decision: warn}
          - {id: early, actions: [file_read], target: "/data/x/secret", decision: log, priority: 1}
        """
    )
    assert decide(policy, A.FILE_READ, "/data/x/secret") == "early"
    assert decide(policy, A.FILE_READ, "/data/x/other") == "same-a"  # file order at equal priority
    assert decide(policy, A.FILE_READ, "/data/y") == "same-b"
    assert decide(policy, A.FILE_READ, "/elsewhere") == DEFAULT_RULE_ID


def test_the_decision_carries_the_rule_and_the_policy_on_violation() -> None:
    policy = compiled(
        """
        name: t
        on_violation: sigstop
        rules:
          - id: keys
            actions: [file_read]
            target: "/keys/**"
            decision: deny
            severity: critical
            message: no keys
          - id: soft
            actions: [file_read]
            target: "/soft/**"
            decision: deny
            on_violation: block
            rate_limit: {max: 3, per_seconds: 10}
        """
    )
    keys = policy.evaluate(Event(A.FILE_READ, "/keys/a"))
    assert keys.verdict is Verdict.DENY
    assert (keys.rule_id, keys.severity, keys.message) == ("keys", Severity.CRITICAL, "no keys")
    assert keys.on_violation is ViolationMode.SIGSTOP  # inherited from the policy
    assert "glob '/keys/**'" in keys.reason
    soft = policy.evaluate(Event(A.FILE_READ, "/soft/a"))
    assert soft.on_violation is ViolationMode.BLOCK
    assert soft.severity is Severity.MEDIUM
    assert soft.rate_limit == RateLimit(3, 10.0)


def test_no_match_gives_the_policy_default() -> None:
    policy = compiled("name: t\ndefault: warn\non_violation: block\n")
    decision = policy.evaluate(Event(A.SHELL_EXECUTE, "ls"))
    assert decision.is_default
    assert (decision.verdict, decision.on_violation) == (Verdict.WARN, ViolationMode.BLOCK)
    assert (policy.default, policy.on_violation) == (Verdict.WARN, ViolationMode.BLOCK)
    deny = compiled("name: t\n").evaluate(Event(A.FILE_READ, "/x"))
    assert (deny.verdict, deny.severity, deny.rule_id) == (
        Verdict.DENY,
        Severity.MEDIUM,
        "<default>",
    )


def test_evaluate_returns_the_precomputed_decision() -> None:
    policy = one_rule('target: "/x/**"')
    first = policy.evaluate(Event(A.FILE_READ, "/x/1"))
    assert policy.evaluate(Event(A.FILE_READ, "/x/2")) is first
    assert policy.evaluate(Event(A.FILE_READ, "/y")) is policy.evaluate(Event(A.FILE_READ, "/z"))


# ---------------------------------------------------------------- action types

TARGETS = {
    A.FILE_READ: ("/w/a.txt", "/v/a.txt"),
    A.FILE_WRITE: ("/w/out/b", "/w2/b"),
    A.FILE_DELETE: ("/w/c", "/c"),
    A.FILE_MOVE: ("/w/d", "/d/w"),
    A.FILE_CHMOD: ("/w/e", "/e"),
    A.SHELL_EXECUTE: ("git status", "gitk"),
    A.PROCESS_SPAWN: ("/usr/bin/git", "/usr/local/bin/git"),
    A.NETWORK_CONNECT: ("10.0.0.1:443", "10.0.0.1:80"),
    A.NETWORK_REQUEST: ("GET https://api.github.com/x/y", "POST https://api.github.com/x"),
    A.ENV_READ: ("AWS_KEY", "AWS_REGION"),
    A.ENV_WRITE: ("MY_VAR", "OTHER"),
    A.DATABASE_READ: ("SELECT * FROM t", "PRAGMA x"),
    A.DATABASE_WRITE: ("INSERT INTO t VALUES (1)", "UPDATE t SET a = 1"),
    A.DATABASE_DELETE: ("DELETE FROM t", "delete from t"),
    A.DATABASE_EXECUTE: ("DROP TABLE t", "CREATE TABLE t (a)"),
    A.MEMORY_ACCESS: ("/dev/shm/agent-1", "/dev/shm/other"),
}
GLOBS = {
    A.FILE_READ: "/w/**",
    A.FILE_WRITE: "/w/**",
    A.FILE_DELETE: "/w/*",
    A.FILE_MOVE: "/w/*",
    A.FILE_CHMOD: "/w/?",
    A.SHELL_EXECUTE: "git *",
    A.PROCESS_SPAWN: "/usr/bin/*",
    A.NETWORK_CONNECT: "10.*:443",
    A.NETWORK_REQUEST: "GET https://api.github.com/**",
    A.ENV_READ: "*_KEY",
    A.ENV_WRITE: "MY_*",
    A.DATABASE_READ: "SELECT **",
    A.DATABASE_WRITE: "INSERT **",
    A.DATABASE_DELETE: "DELETE **",
    A.DATABASE_EXECUTE: "DROP **",
    A.MEMORY_ACCESS: "/dev/shm/{agent_id}",
}


@pytest.mark.parametrize("action", list(ActionType), ids=[a.value for a in ActionType])
def test_every_action_type_is_matched_by_its_own_rules_only(action: ActionType) -> None:
    policy = one_rule(f"target: '{GLOBS[action]}'", actions=f"[{action.value}]")
    hit, miss = TARGETS[action]
    assert decide(policy, action, hit) == "r"
    assert decide(policy, action, miss) == DEFAULT_RULE_ID
    for other in ActionType:
        if other is not action:
            assert decide(policy, other, hit) == DEFAULT_RULE_ID


def test_star_actions_cover_every_action_type() -> None:
    policy = one_rule("target: '**'", actions='"*"')
    for action in ActionType:
        assert decide(policy, action, TARGETS[action][0]) == "r"


# ---------------------------------------------------------------- glob semantics

GLOB_CASES = [
    # glob, target, matches
    ("/w/*", "/w/a", True),
    ("/w/*", "/w/a/b", False),  # `*` never crosses `/`
    ("/w/*.py", "/w/x.py", True),
    ("/w/*.py", "/w/sub/x.py", False),
    ("/w/?", "/w/a", True),
    ("/w/?", "/w/ab", False),
    ("/w/**", "/w/a/b/c", True),  # `**` crosses segments
    ("/w/**", "/w", True),  # a trailing `/**` also matches the directory itself
    ("/w/**", "/wx", False),
    ("/w/**", "/wx/y", False),
    ("/a/**/b", "/a/b", True),  # `/**/` matches zero segments ...
    ("/a/**/b", "/a/x/y/b", True),  # ... or more
    ("/a/**/b", "/a/xb", False),
    ("**/*.pem", "/etc/ssl/key.pem", True),
    ("**/*.pem", "/key.pem", True),
    ("**/*.pem", "/etc/key.pem/x", False),
    ("**/.env", "/w/.env", True),
    ("**/.env", "/w/x.env", False),
    ("/w/[ab].txt", "/w/a.txt", True),
    ("/w/[ab].txt", "/w/c.txt", False),
    ("/w/[!ab]", "/w/c", True),
    ("/w/[!ab]", "/w/a", False),
    ("/w/x[!a]y", "/w/x/y", False),  # a negated class never matches `/`
    ("/w/\\*", "/w/*", True),  # a backslash makes the next character literal
    ("/w/\\*", "/w/a", False),
    ("rm -rf /*", "rm -rf /etc", True),  # the same semantics for shell targets
    ("rm -rf /*", "rm -rf /etc/x", False),
    ("unix:**", "unix:/var/run/nscd/socket", True),
]


@pytest.mark.parametrize(("glob", "target", "matches"), GLOB_CASES)
def test_glob_semantics(glob: str, target: str, matches: bool) -> None:
    policy = one_rule(f"target: '{glob}'", actions='"*"')
    action = A.SHELL_EXECUTE if not target.startswith("/") else A.FILE_READ
    assert (decide(policy, action, target) == "r") is matches
    # explain, which tries rules one by one, agrees with the combined table
    assert (policy.explain(Event(action, target)).decision.rule_id == "r") is matches


def test_wildcards_match_newlines_so_a_target_cannot_hide_behind_one() -> None:
    policy = one_rule("target: 'rm **'", actions="[shell_execute]")
    assert decide(policy, A.SHELL_EXECUTE, "rm -rf\n/") == "r"


def test_a_pattern_is_a_regex_with_search_semantics() -> None:
    policy = one_rule(r"pattern: 'curl\s.*\|\s*sh'", actions="[shell_execute]")
    assert decide(policy, A.SHELL_EXECUTE, "cd /tmp && curl -s x | sh") == "r"
    assert decide(policy, A.SHELL_EXECUTE, "curl -o x y") == DEFAULT_RULE_ID
    anchored = one_rule("pattern: '^/data/(in|out)/'")
    assert decide(anchored, A.FILE_READ, "/data/in/x") == "r"
    assert decide(anchored, A.FILE_READ, "/x/data/in/x") == DEFAULT_RULE_ID


@pytest.mark.parametrize(
    "pattern",
    [r"(?i)^/SECRET", r"^/(?P<name>secret)", r"^/(sec)(ret)"],
    ids=["inline-flag", "named-group", "groups"],
)
def test_regexes_with_flags_and_groups_keep_their_place_in_the_order(pattern: str) -> None:
    policy = compiled(
        f"""
        name: t
        rules:
          - {{id: before, actions: [file_read], target: "/before/**", decision: allow}}
          - {{id: special, actions: [file_read], pattern: '{pattern}', decision: deny}}
          - {{id: after, actions: [file_read], target: "/**", decision: allow}}
        """
    )
    assert decide(policy, A.FILE_READ, "/secret") == "special"
    assert decide(policy, A.FILE_READ, "/before/x") == "before"
    assert decide(policy, A.FILE_READ, "/other") == "after"


def test_dot_in_a_refusing_pattern_matches_a_newline_and_in_an_allowing_one_does_not() -> None:
    """A target can hold a newline (a file name, an argument).  A rule that
    refuses or records must not miss it there; an allow keeps Python's `.`,
    which matches less."""
    policy = compiled(
        """
        name: t
        default: warn
        rules:
          - {id: no-dd, actions: [shell_execute], pattern: 'dd\\s.*of=/dev/sd', decision: deny}
          - {id: git, actions: [shell_execute], pattern: '^git .*$', decision: allow}
        """
    )
    assert decide(policy, A.SHELL_EXECUTE, "dd if=/tmp/a\nb of=/dev/sda") == "no-dd"
    assert decide(policy, A.SHELL_EXECUTE, "git status") == "git"
    assert decide(policy, A.SHELL_EXECUTE, "git status\nrm -rf /") == DEFAULT_RULE_ID
    for target in ("dd if=/tmp/a\nb of=/dev/sda", "git status\nrm -rf /"):
        event = Event(A.SHELL_EXECUTE, target)
        assert policy.explain(event).decision is policy.evaluate(event)


def test_except_excludes_targets_from_a_rule() -> None:
    policy = compiled(
        """
        name: t
        rules:
          - id: ws
            actions: [file_read]
            target: "{workspace}/**"
            except: ["{workspace}/.git/**", "**/*.key"]
            decision: allow
          - {id: regex, actions: [file_read], pattern: '^/data/', except: ["/data/private/**"],
             decision: log}
        """
    )
    assert decide(policy, A.FILE_READ, "/w/src/a.py") == "ws"
    assert decide(policy, A.FILE_READ, "/w/.git/config") == DEFAULT_RULE_ID
    assert decide(policy, A.FILE_READ, "/w/tls/server.key") == DEFAULT_RULE_ID
    assert decide(policy, A.FILE_READ, "/data/x") == "regex"
    assert decide(policy, A.FILE_READ, "/data/private/x") == DEFAULT_RULE_ID


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/a/b/../c", "/a/c"),
        ("/a/./b", "/a/b"),
        ("//etc//shadow", "/etc/shadow"),
        ("/a/b/..", "/a"),
        ("/a/b/.", "/a/b"),
        ("/../etc", "/etc"),
        ("/w/.hidden/x", "/w/.hidden/x"),
        ("/w/..x/y", "/w/..x/y"),
    ],
)
def test_paths_are_normalised_lexically(raw: str, normal: str) -> None:
    assert normalise_path(raw) == normal


def test_path_targets_are_normalised_before_matching() -> None:
    policy = compiled(
        """
        name: t
        rules:
          - {id: secret, actions: [file_read, process_spawn], target: "/etc/shadow", decision: deny}
          - {id: ws, actions: "*", target: "/w/**", decision: allow}
        """
    )
    for target in ("/w/../etc/shadow", "//etc/shadow", "/etc/./shadow", "/w/x/../../etc/shadow"):
        assert decide(policy, A.FILE_READ, target) == "secret", target
    assert decide(policy, A.PROCESS_SPAWN, "/w/../etc/shadow") == "secret"
    assert decide(policy, A.FILE_READ, "/w/a/../b") == "ws"
    # Only path targets are normalised: a command line is matched as it is.
    assert decide(policy, A.SHELL_EXECUTE, "/w/../etc/shadow") == "ws"
    assert {A.FILE_READ, A.PROCESS_SPAWN} <= PATH_ACTIONS


# ---------------------------------------------------------------- placeholders and agents


def test_placeholders_expand_to_the_run_values() -> None:
    policy = compiled(
        """
        name: t
        rules:
          - {id: home, actions: [file_read], target: "{home}/notes/*", decision: allow}
          - {id: mine, actions: [memory_access], target: "{agent_id}-*", decision: allow}
          - {id: py, actions: [file_read], target: "{python}/lib/**", decision: allow}
        """,
        RunContext("/w", "/home/u", "agent-1", python_prefixes=("/opt/py", "/venv")),
    )
    assert decide(policy, A.FILE_READ, "/home/u/notes/a") == "home"
    assert decide(policy, A.MEMORY_ACCESS, "agent-1-shm") == "mine"
    assert decide(policy, A.MEMORY_ACCESS, "agent-2-shm") == DEFAULT_RULE_ID
    # A placeholder with several values matches any of them.
    assert decide(policy, A.FILE_READ, "/opt/py/lib/os.py") == "py"
    assert decide(policy, A.FILE_READ, "/venv/lib/x.py") == "py"
    assert decide(policy, A.FILE_READ, "/usr/lib/x.py") == DEFAULT_RULE_ID


def test_placeholder_values_are_escaped_for_globs_and_regexes() -> None:
    workspace = "/tmp/a+b (c)[d]*.?{e}"
    policy = compiled(
        r"""
        name: t
        rules:
          - {id: glob, actions: [file_read], target: "{workspace}/*.txt", decision: allow}
          - {id: regex, actions: [file_write], pattern: '^{workspace}/out/\w+\Z', decision: allow}
        """,
        RunContext(workspace, "/home/u", "a"),
    )
    assert decide(policy, A.FILE_READ, f"{workspace}/x.txt") == "glob"
    assert decide(policy, A.FILE_READ, "/tmp/aab (c)d/x.txt") == DEFAULT_RULE_ID
    assert decide(policy, A.FILE_READ, "/tmp/a+b (c)[d]xx.?{e}/x.txt") == DEFAULT_RULE_ID
    assert decide(policy, A.FILE_WRITE, f"{workspace}/out/result") == "regex"
    assert decide(policy, A.FILE_WRITE, "/tmp/aab (c)d/out/result") == DEFAULT_RULE_ID


def test_a_workspace_with_a_trailing_slash_still_works() -> None:
    policy = one_rule('target: "{workspace}/**"')
    ctx = RunContext("/w/", "/home/u", "a")
    assert compile_policy(policy.policy, ctx).evaluate(Event(A.FILE_READ, "/w/x")).rule_id == "r"


def test_agent_scoped_rules_apply_only_to_matching_agent_ids() -> None:
    text = """
        name: t
        rules:
          - {id: analysts, actions: [file_read], target: "/data/**", decision: allow,
             agents: ["analyst-*", "lead"]}
          - {id: others, actions: [file_read], target: "/data/**", decision: deny}
        """
    analyst = compiled(text, RunContext("/w", "/h", "analyst-7"))
    lead = compiled(text, RunContext("/w", "/h", "lead"))
    builder = compiled(text, RunContext("/w", "/h", "builder"))
    assert decide(analyst, A.FILE_READ, "/data/x") == "analysts"
    assert decide(lead, A.FILE_READ, "/data/x") == "analysts"
    assert decide(builder, A.FILE_READ, "/data/x") == "others"
    explanation = builder.explain(Event(A.FILE_READ, "/data/x"))
    assert [(a.rule.id, a.reason) for a in explanation.tried] == [
        ("analysts", "wrong agent (rule is for analyst-*, lead)")
    ]


# ---------------------------------------------------------------- explain


def test_explain_lists_the_rules_tried_before_the_decision_and_why_they_missed() -> None:
    policy = compiled(
        """
        name: t
        rules:
          - {id: other-action, actions: [file_write], target: "/x", decision: deny, priority: 1}
          - {id: no-match, actions: [file_read], target: "/etc/**", decision: deny, priority: 2}
          - {id: excepted, actions: [file_read], target: "/w/**", except: ["/w/keep/**"],
             decision: deny, priority: 3}
          - {id: winner, actions: [file_read], pattern: '^/w/', decision: allow, priority: 4}
          - {id: later, actions: [file_read], target: "**", decision: deny, priority: 5}
        """
    )
    explanation = policy.explain(Event(A.FILE_READ, "/w/./keep/x"))
    assert explanation.target == "/w/keep/x"
    assert explanation.decision is policy.evaluate(Event(A.FILE_READ, "/w/keep/x"))
    assert explanation.rule is not None and explanation.rule.id == "winner"
    assert [(a.rule.id, a.reason) for a in explanation.tried] == [
        ("no-match", "target did not match glob '/etc/**'"),
        ("excepted", "excluded by except glob '/w/keep/**'"),
    ]
    default = policy.explain(Event(A.FILE_CHMOD, "/w/x"))
    assert default.rule is None and default.decision.is_default and default.tried == ()


def test_explain_and_evaluate_agree_on_the_strict_template() -> None:
    policy = compile_policy(resolve_policy("strict", Path("/nonexistent")), CTX)
    events = [
        Event(action, target)
        for action in ActionType
        for target in (
            "/home/u/.ssh/id_rsa",
            "/w/src/x.py",
            "/w/../etc/shadow",
            "/etc/hosts",
            "/usr/bin/sudo",
            "/tmp/x",
            "/dev/null",
            "/dev/pts/0",
            "/",
            "/proc/1/mem",
            "/var/log/syslog",
            "rm -rf /",
            "sudo ls",
            "ls -la",
            "127.0.0.1:9",
            "unix:/run/x",
            "netlink:0",
            "HOME",
            "AWS_SECRET_KEY",
            "DELETE FROM t",
            "/py/lib/os.py",
            "/w/.env",
            "/w/a.pem",
        )
    ]
    for event in events:
        assert policy.explain(event).decision is policy.evaluate(event), event


MIXED_RULES = """
    name: mixed
    default: deny
    rules:
      - {id: keys, actions: [file_read, file_write], target: "**/*.key", decision: deny}
      - id: src
        actions: [file_read, file_write, file_delete]
        target: "{workspace}/**"
        except: ["{workspace}/frozen/**", "**/*.lock"]
        decision: allow
      - {id: frozen, actions: [file_read], target: "{workspace}/frozen/**", decision: allow}
      - {id: run, actions: [process_spawn, file_read], pattern: "^/usr/s?bin/", decision: allow}
      - {id: moves, actions: [file_move, file_chmod], target: "/tmp/**", decision: allow}
"""


@pytest.mark.parametrize("name", ["strict", "permissive", "read_only", "audit", "mixed"])
def test_one_pass_over_every_path_rule_decides_each_action_as_its_own_rules_do(name: str) -> None:
    """Path actions are decided from one match of every path rule at once, and
    a set of hits keeps its decisions: in any order of targets and actions,
    each is what the action's rules, tried one by one, decide."""
    if name == "mixed":
        policy = compiled(MIXED_RULES)
    else:
        policy = compile_policy(resolve_policy(name, Path("/nonexistent")), CTX)
    targets = [
        "/w/src/a.py", "/w/src/b.py", "/w/frozen/a.py", "/w/x.lock", "/w/a.key",
        "/w/frozen/b.key", "/usr/bin/git", "/usr/sbin/x.key", "/tmp/a", "/tmp/b.lock",
        "/home/u/.ssh/id_rsa", "/home/u/.ssh", "/w/.env", "/w//src/../a.pem", "/etc/shadow",
        "/", "/w", "/w/", "/py/lib/os.py", "/proc/self/mem", "/w/new\nline",
    ]  # fmt: skip
    path_actions = sorted(PATH_ACTIONS)
    asked = [(action, target) for target in targets for action in path_actions]
    asked += [(action, target) for action in path_actions for target in reversed(targets)]
    for action, target in asked:
        event = Event(action, target)
        assert policy.evaluate(event) is policy.explain(event).decision, event


def test_a_policy_whose_path_rules_re2_cannot_hold_as_one_set_decides_each_action_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = compiled(MIXED_RULES)
    monkeypatch.setattr(engine, "_PathRules", _refused_by_re2)
    for action in PATH_ACTIONS:
        for target in ("/w/src/a.py", "/w/frozen/a.py", "/w/a.key", "/tmp/a"):
            event = Event(action, target)
            assert policy.evaluate(event) is policy.explain(event).decision, event
    assert vars(policy)["_path_rules"] is None


def _refused_by_re2(*_args: object) -> None:
    raise PatternError("RE2 cannot compile 9 patterns as one: out of memory", 0)


# ---------------------------------------------------------------- rate limits


def test_the_rate_limiter_denies_over_the_limit_in_a_sliding_window() -> None:
    policy = one_rule('target: "/api/**"', rate_limit="{max: 2, per_seconds: 10}")
    decision = policy.evaluate(Event(A.FILE_READ, "/api/x"))
    limiter = RateLimiter()
    assert limiter.check(decision, now=100.0) is decision
    assert limiter.check(decision, now=101.0) is decision
    over = limiter.check(decision, now=105.0)
    assert over.verdict is Verdict.DENY
    assert over.rule_id == "r"
    assert over.on_violation is decision.on_violation
    assert "rate limit exceeded" in over.reason
    assert limiter.check(decision, now=109.9).verdict is Verdict.DENY  # denials do not count
    assert limiter.check(decision, now=110.0) is decision  # the call at 100.0 left the window
    assert limiter.check(decision, now=110.5).verdict is Verdict.DENY
    assert limiter.check(decision, now=111.0) is decision


def test_the_rate_limiter_counts_each_rule_separately_and_ignores_unlimited_ones() -> None:
    limit = RateLimit(1, 60.0)
    a = Decision(Verdict.ALLOW, "a", Severity.LOW, "", ViolationMode.BLOCK, "", limit)
    b = Decision(Verdict.ALLOW, "b", Severity.LOW, "", ViolationMode.BLOCK, "", limit)
    free = Decision(Verdict.ALLOW, "free", Severity.LOW, "", ViolationMode.BLOCK, "")
    limiter = RateLimiter()
    assert limiter.check(a, 0.0) is a
    assert limiter.check(b, 0.0) is b
    assert limiter.check(a, 1.0).verdict is Verdict.DENY
    assert all(limiter.check(free, 0.0) is free for _ in range(100))


# ---------------------------------------------------------------- environment, limits, floor


def test_environment_filtering() -> None:
    policy = compiled(
        'name: t\nenv:\n  pass: [PATH, "LC_*", "MY_*"]\n  deny: ["*_KEY", "*TOKEN*"]\n'
    )
    assert policy.env_allowed("PATH")
    assert policy.env_allowed("LC_ALL")
    assert not policy.env_allowed("lc_all")  # case-sensitive
    assert not policy.env_allowed("MY_API_KEY")  # deny wins over pass
    assert not policy.env_allowed("HOME")  # not listed
    environ = {"PATH": "/bin", "MY_TOKENS": "x", "MY_X": "1", "SHELL": "/bin/sh"}
    assert policy.filter_environ(environ) == {"PATH": "/bin", "MY_X": "1"}


def test_limits_approval_and_audit_level_are_exposed() -> None:
    policy = compiled(
        "name: t\nlimits: {memory_mb: 64}\napproval: {timeout_seconds: 5, on_timeout: kill}\n"
        "audit: {level: violations}\n"
    )
    assert (policy.limits.memory_mb, policy.limits.max_processes) == (64, None)
    assert (policy.approval.timeout_seconds, policy.approval.on_timeout) == (5.0, "kill")
    assert policy.audit_level is AuditLevel.VIOLATIONS
    assert policy.name == "t"


FLOOR_POLICY = """
    name: t
    rules:
      - {id: secret, actions: [file_read], target: "{home}/.ssh/**", decision: deny}
      - {id: ws, actions: [file_read, file_write], target: "{workspace}/**", decision: allow}
      - {id: ws-sub, actions: [file_read], target: "{workspace}/sub/*.txt", decision: allow}
      - {id: hosts, actions: [file_read], target: "/etc/hosts", decision: log}
      - {id: data, actions: [file_read], pattern: '^/data/(in|out)/', decision: warn}
      - {id: exact, actions: [file_read], pattern: '^/srv/x\\Z', decision: allow}
      - {id: soft, actions: [file_write], target: "/var/log/**", decision: deny,
         on_violation: log_only}
      - {id: ask, actions: [file_write], target: "/outbox/*", decision: require_approval}
      - {id: blocked, actions: [file_write], target: "/etc/**", decision: deny, on_violation: block}
      - {id: other-agent, actions: [file_read], target: "/other/**", decision: allow,
         agents: [someone-else]}
"""


def test_floor_roots_cover_every_target_a_rule_lets_through() -> None:
    policy = compiled(FLOOR_POLICY)
    assert policy.floor_roots([A.FILE_READ]) == ("/data", "/etc/hosts", "/srv/x", "/w")
    assert policy.floor_roots([A.FILE_WRITE]) == ("/outbox", "/var/log", "/w")
    assert policy.floor_roots([A.FILE_READ, A.FILE_WRITE]) == (
        "/data",
        "/etc/hosts",
        "/outbox",
        "/srv/x",
        "/var/log",
        "/w",
    )
    assert policy.floor_roots([A.FILE_DELETE]) == ()


@pytest.mark.parametrize(
    "extra",
    [
        '- {id: any, actions: [file_read], target: "**", decision: allow}',
        '- {id: suffix, actions: [file_read], target: "**/*.txt", decision: allow}',
        "- {id: unanchored, actions: [file_read], pattern: 'data', decision: allow}",
        "- {id: alternation, actions: [file_read], pattern: '^/a|/b', decision: allow}",
    ],
)
def test_floor_roots_is_none_when_a_rule_could_match_anything(extra: str) -> None:
    policy = compiled(textwrap.dedent(FLOOR_POLICY) + "  " + extra + "\n")
    assert policy.floor_roots([A.FILE_READ]) is None
    assert policy.floor_roots([A.FILE_WRITE]) is not None


def test_floor_roots_is_none_when_the_default_lets_actions_through() -> None:
    assert compiled("name: t\ndefault: allow\n").floor_roots([A.FILE_READ]) is None
    assert compiled("name: t\non_violation: log_only\n").floor_roots([A.FILE_READ]) is None
    assert compiled("name: t\n").floor_roots([A.FILE_READ]) == ()


def test_floor_roots_collapse_paths_beneath_another() -> None:
    policy = compiled(
        """
        name: t
        rules:
          - {id: a, actions: [file_read], target: "/usr/lib/**", decision: allow}
          - {id: b, actions: [file_read], target: "/usr/**", decision: allow}
          - {id: c, actions: [file_read], target: "/usr/local/bin/x", decision: allow}
          - {id: d, actions: [file_read], target: "/usrx/*", decision: allow}
        """
    )
    assert policy.floor_roots([A.FILE_READ]) == ("/usr", "/usrx")


MOVES = """
    name: moves
    default: allow
    rules:
      - id: nested-secret
        actions: [file_read]
        target: "{workspace}/project/secret/**"
        decision: deny
      - id: keys
        actions: [file_read]
        target: "**/*.pem"
        decision: deny
      - id: only-logged
        actions: [file_read]
        target: "{workspace}/logged/**"
        decision: log
"""


def test_a_move_of_a_directory_above_a_refused_root_gets_that_rules_decision() -> None:
    policy = compiled(MOVES)
    ws = CTX.workspace
    for moved in (f"{ws}/project", f"{ws}/project/secret", ws):
        decision = policy.refused_beneath(moved)
        assert decision is not None and decision.rule_id == "nested-secret", moved
        assert decision.verdict is Verdict.DENY and "out from under it" in decision.reason
    # A sibling, a file beside the root, and rules that name a file wherever it goes or let it be.
    for moved in (f"{ws}/projects", f"{ws}/project/secret.txt", f"{ws}/other", f"{ws}/logged"):
        assert policy.refused_beneath(moved) is None, moved


NAMED_BY_SEGMENT = """
    name: t
    default: allow
    rules:
      - id: unread-private
        actions: [file_read]
        target: "**/private/*"
        decision: deny
      - id: frozen-files
        actions: [file_write]
        pattern: '^.*/frozen/[^/]+$'
        decision: deny
      - id: pem
        actions: [file_read, file_move]
        target: "**/*.pem"
        decision: deny
      - id: approve-vault
        actions: [file_chmod]
        target: "{workspace}/vault/**"
        decision: require_approval
"""


def test_a_move_is_refused_as_what_an_entry_would_escape() -> None:
    policy = compiled(NAMED_BY_SEGMENT)
    ws = CTX.workspace
    # An entry beneath the moved directory, readable only under its new name:
    # the first one found is the check.
    assert policy.moved_escape(f"{ws}/a/private", f"{ws}/a/public", ["notes", "data"]) == (
        A.FILE_READ,
        f"{ws}/a/private/notes",
        0,
    )
    # A move above it keeps every entry's segments: b/private/data is still private/*.
    assert policy.moved_escape(f"{ws}/a", f"{ws}/b", ["private", "private/data"]) is None
    # Content arriving under a name whose writes are refused.
    assert policy.moved_escape(f"{ws}/staging", f"{ws}/frozen", ["f"]) == (
        A.FILE_WRITE,
        f"{ws}/frozen/f",
        0,
    )
    # ...but the moved name itself is left to the rename's own file_write check,
    assert policy.moved_escape(f"{ws}/f", f"{ws}/frozen/f", ()) is None
    # while moving it out would make it writable.
    assert policy.moved_escape(f"{ws}/frozen/f", f"{ws}/f", ()) == (
        A.FILE_WRITE,
        f"{ws}/frozen/f",
        0,
    )
    # Names that rules treat alike: a basename rule follows the file.
    assert policy.moved_escape(f"{ws}/a", f"{ws}/b", ["key.pem", "sub", "sub/x.pem"]) is None


def test_a_hold_for_approval_counts_every_held_name_and_yields_to_a_refusal() -> None:
    policy = compiled(NAMED_BY_SEGMENT)
    ws = CTX.workspace
    # A hold must not vanish with a name: it is the check, with how many are held.
    assert policy.moved_escape(f"{ws}/vault/d", f"{ws}/d", ["k"]) == (
        A.FILE_CHMOD,
        f"{ws}/vault/d",
        2,  # the directory and k
    )
    # A refusal anywhere in the tree comes first: a person approves no refused name.
    assert policy.moved_escape(f"{ws}/vault/private", f"{ws}/open", ["k"]) == (
        A.FILE_READ,
        f"{ws}/vault/private/k",
        0,
    )


def test_only_rules_whose_roots_touch_a_move_make_its_tree_listed() -> None:
    rooted = compiled(
        """
        name: t
        default: allow
        rules:
          - id: etc
            actions: [file_write]
            target: /etc/**
            decision: deny
          - id: vault
            actions: [file_read]
            target: "{workspace}/vault/**/*.token"
            decision: deny
          - id: commands
            actions: [shell_execute]
            target: "**"
            decision: allow
        """
    )
    ws = CTX.workspace
    assert not rooted.names_could_move("/tmp/a", "/tmp/b")  # `**` for commands is no path rule
    assert rooted.names_could_move(f"{ws}/vault/team", f"{ws}/team")
    assert rooted.names_could_move(f"{ws}/team", f"{ws}/vault/team")
    assert rooted.names_could_move("/", "/x")  # above every root
    assert not rooted.names_could_move(f"{ws}/vaulted", f"{ws}/other")
    assert compiled(NAMED_BY_SEGMENT).names_could_move("/tmp/a", "/tmp/b")  # rules with no root


def test_home_stands_for_its_real_path_too() -> None:
    ctx = RunContext("/w", "/home/link", "a", home_real="/real/home")
    assert ctx.placeholder_values()["home"] == ("/home/link", "/real/home")
    assert RunContext("/w", "/home/x", "a").placeholder_values()["home"] == ("/home/x",)
