"""Linear-time matching: no target, however long or crafted, stalls the evaluator.

Rule patterns and globs are matched by RE2, whose time is linear in the
target; Python-regex features RE2 lacks are refused at load with
FILE:LINE:COL; a target longer than MAX_TARGET_LENGTH is a deny, decided at once.
"""

from __future__ import annotations

import random
import textwrap
import time
from pathlib import Path

import pytest

from agentsup.events import DEFAULT_RULE_ID, ActionType, Event, Verdict, ViolationMode
from agentsup.policy import (
    MAX_TARGET_LENGTH,
    TARGET_TOO_LONG_RULE,
    CompiledPolicy,
    PolicyError,
    RunContext,
    compile_policy,
    load_policy_text,
    resolve_policy,
)
from agentsup.policy.linear import (
    LinearRegex,
    alternatives,
    encode_target,
    match_range,
    match_ranges,
)

A = ActionType
CTX = RunContext(workspace="/w", home="/home/u", agent_id="agent", python_prefixes=("/opt/py",))
# Generous: each evaluation below takes well under a millisecond with RE2, and
# minutes (or for ever) with a backtracking engine.
STALL_SECONDS = 0.5


def compiled(text: str) -> CompiledPolicy:
    return compile_policy(load_policy_text(textwrap.dedent(text), "t.yaml"), CTX)


def one_pattern(pattern: str, action: str) -> CompiledPolicy:
    """A policy of one rule `r` that allows `action` on targets matching `pattern`."""
    rule = f"{{id: r, actions: [{action}], pattern: '{pattern}', decision: allow}}"
    return compiled(f"name: t\ndefault: deny\nrules:\n  - {rule}\n")


def strict() -> CompiledPolicy:
    return compile_policy(resolve_policy("strict", Path("/nonexistent-policy-dir")), CTX)


def timed(policy: CompiledPolicy, action: ActionType, target: str) -> tuple[str, float]:
    start = time.perf_counter()
    decision = policy.evaluate(Event(action, target))
    return decision.rule_id, time.perf_counter() - start


def load_error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(textwrap.dedent(text).lstrip("\n"), "p.yaml")
    return caught.value


# ---------------------------------------------------------------- linear time


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"^(a|a)*$", r"(a*)*b", r"(\w+\s?)*!"])
def test_a_nested_quantifier_is_evaluated_in_linear_time(pattern: str) -> None:
    policy = one_pattern(pattern, "shell_execute")
    rule, elapsed = timed(policy, A.SHELL_EXECUTE, "a" * 50_000 + "\x00")
    assert rule == DEFAULT_RULE_ID
    assert elapsed < STALL_SECONDS


@pytest.mark.parametrize(
    ("command", "rule"),
    [
        ("rm -rf " + "x" * 60_000 + " /", "rm-rf-root"),
        ("rm " + "-v " * 20_000 + "-rf /", "rm-rf-root"),
        ("rm -rf " + "a/ " * 20_000, "run-programs"),
        ("rm " + " " * 60_000, "run-programs"),
        ("echo " + "rm -r " * 10_000, "run-programs"),
        ("rm -f " + "/a " * 33_000, "run-programs"),
    ],
    ids=["flag-then-root", "many-flags", "many-dirs", "spaces", "many-rm", "just-under-cap"],
)
def test_strict_decides_a_long_command_line_at_once(command: str, rule: str) -> None:
    assert len(command) <= MAX_TARGET_LENGTH
    decided, elapsed = timed(strict(), A.SHELL_EXECUTE, command)
    assert decided == rule
    assert elapsed < STALL_SECONDS


@pytest.mark.parametrize(
    "command",
    [
        "rm -rf /",
        "rm -rf /*",
        "rm -fr ~",
        "rm -r -f /root",
        "rm / -rf",
        "rm --recursive --force /usr/",
        "cd / && rm -rf /usr",
        "/bin/rm -rf /etc",
        "rm -rf /home/u",
        "rm -rf /home/u/*",
        "rm -Rf ~/",
        "rm -rf /\n",
    ],
)
def test_strict_rm_rf_root_still_catches_what_it_did(command: str) -> None:
    assert strict().evaluate(Event(A.SHELL_EXECUTE, command)).rule_id == "rm-rf-root"


@pytest.mark.parametrize(
    "command",
    ["rm -rf build", "rm -rf /tmp/x", "rm /", "rm -i /etc/x", "rm -rf ./usr", "farm -rf /"],
)
def test_strict_rm_rf_root_leaves_ordinary_removals_alone(command: str) -> None:
    assert strict().evaluate(Event(A.SHELL_EXECUTE, command)).rule_id == "run-programs"


def test_a_long_path_with_many_segments_is_decided_at_once() -> None:
    target = "/srv" + "/x" * 40_000 + ".pem"
    decided, elapsed = timed(strict(), A.FILE_READ, target)
    assert decided == "secret-pem"
    assert elapsed < STALL_SECONDS


# ---------------------------------------------------------------- the cap


def test_a_target_longer_than_the_cap_is_denied_with_a_reason() -> None:
    policy = compiled(
        """
        name: t
        default: allow
        on_violation: sigkill
        rules:
          - {id: any, actions: ["*"], target: "**", decision: allow}
        """
    )
    at_cap = policy.evaluate(Event(A.SHELL_EXECUTE, "x" * MAX_TARGET_LENGTH))
    assert at_cap.rule_id == "any"
    over = policy.evaluate(Event(A.SHELL_EXECUTE, "x" * (MAX_TARGET_LENGTH + 1)))
    assert (over.verdict, over.rule_id) == (Verdict.DENY, TARGET_TOO_LONG_RULE)
    assert str(MAX_TARGET_LENGTH) in over.reason and "too long" in over.message
    # Refused, not killed: a long xargs line is not an attack by itself.
    assert over.on_violation is ViolationMode.BLOCK
    explained = policy.explain(Event(A.FILE_READ, "/" + "x" * MAX_TARGET_LENGTH))
    assert explained.decision.rule_id == TARGET_TOO_LONG_RULE


def test_an_observing_policy_only_logs_a_long_target() -> None:
    policy = compiled("name: t\ndefault: allow\non_violation: log_only\n")
    over = policy.evaluate(Event(A.DATABASE_WRITE, "x" * (MAX_TARGET_LENGTH + 1)))
    assert (over.verdict, over.on_violation) == (Verdict.DENY, ViolationMode.LOG_ONLY)


@pytest.mark.parametrize(
    "refusal", ["decision: deny, on_violation: sigkill", "decision: require_approval"]
)
def test_a_long_target_is_refused_where_an_observing_policy_refuses_or_holds_that_action(
    refusal: str,
) -> None:
    """Padding a command line past the cap must not get past the one rule that
    refuses it: no rule is run on it, so it is refused, not observed."""
    policy = compiled(
        f"""
        name: t
        default: allow
        on_violation: log_only
        rules:
          - {{id: no-rm-rf, actions: [shell_execute], pattern: 'rm\\s+-rf\\s', {refusal}}}
        """
    )
    padded = "rm -rf /w/important " + "x" * MAX_TARGET_LENGTH
    over = policy.evaluate(Event(A.SHELL_EXECUTE, padded))
    assert (over.rule_id, over.on_violation) == (TARGET_TOO_LONG_RULE, ViolationMode.BLOCK)
    # Another action, which only the observing default decides, is still observed.
    read = policy.evaluate(Event(A.FILE_READ, "/" + "x" * MAX_TARGET_LENGTH))
    assert (read.rule_id, read.on_violation) == (TARGET_TOO_LONG_RULE, ViolationMode.LOG_ONLY)


def test_a_huge_target_is_refused_at_once() -> None:
    decided, elapsed = timed(strict(), A.SHELL_EXECUTE, "rm -rf " + "y" * 2_000_000 + " /")
    assert decided == TARGET_TOO_LONG_RULE
    assert elapsed < STALL_SECONDS


# ---------------------------------------------------------------- what RE2 cannot do


@pytest.mark.parametrize(
    ("pattern", "offset", "what"),
    [
        (r"^/a(?=b)", 3, "lookahead"),
        (r"^/a(?!b)", 3, "lookahead"),
        (r"(?<=/)secret", 0, "lookbehind"),
        (r"(?<!x)secret", 0, "lookbehind"),
        (r"^/(a)\1", 5, "backreference"),
        (r"^/(?P<n>a)(?P=n)", 10, "backreference"),
        (r"^/a*+", 4, "possessive"),
        (r"^/(?>a)", 2, "atomic group"),
        (r"^/(a)?(?(1)b|c)", 6, "conditional"),
        (r"(?x)^/a", 0, "inline flag"),
    ],
)
def test_a_feature_re2_lacks_is_refused_at_load_with_its_position(
    pattern: str, offset: int, what: str
) -> None:
    error = load_error(
        f"""
        name: x
        rules:
          - id: r1
            actions: [file_read]
            pattern: '{pattern}'
            decision: deny
        """
    )
    assert (error.path, error.line, error.rule_id) == ("p.yaml", 5, "r1")
    assert error.column == len("    pattern: '") + 1 + offset
    assert what in error.message and "linear" in error.message


def test_a_regex_too_big_for_re2_is_refused_at_load() -> None:
    error = load_error(
        "name: x\nrules:\n"
        "  - {id: r1, actions: [file_read], pattern: '(a{1000}){1000}', decision: deny}\n"
    )
    assert (error.line, error.rule_id) == (3, "r1")


@pytest.mark.parametrize(
    ("pattern", "target", "matches"),
    [
        (r"^/srv/x\Z", "/srv/x", True),
        (r"^/srv/x\Z", "/srv/xy", False),
        (r"^/a{,2}\Z", "/aa", True),
        (r"^/a{,2}\Z", "/aaa", False),
        (r"^/\101\Z", "/A", True),
        (r"^/[\1]\Z", "/\x01", True),
        (r"^/\u00e9\Z", "/é", True),
        (r"^/\N{LATIN SMALL LETTER E WITH ACUTE}\Z", "/é", True),
        (r"(?i)^/SECRET", "/secret", True),
        (r"^/(?P<name>secret)", "/secret", True),
        (r"^/[\b]\Z", "/\b", True),
        (r"^/a(?#comment)b", "/ab", True),
    ],
)
def test_python_regex_syntax_keeps_its_meaning(pattern: str, target: str, matches: bool) -> None:
    decided = one_pattern(pattern, "file_read").evaluate(Event(A.FILE_READ, target)).rule_id
    assert (decided == "r") is matches


def test_a_target_that_is_not_utf8_is_still_matched() -> None:
    # os.fsdecode turns undecodable bytes into lone surrogates.
    policy = strict()
    assert policy.evaluate(Event(A.FILE_READ, "/srv/\udcff.pem")).rule_id == "secret-pem"
    assert policy.evaluate(Event(A.FILE_READ, "/w/\udcff/x")).rule_id == "workspace"
    assert policy.evaluate(Event(A.FILE_READ, "/home/u/.ssh/\udc80")).rule_id == "secret-ssh"


def test_when_the_set_gives_up_each_rule_decides_on_its_own() -> None:
    # RE2's set reports None when its DFA runs out of memory; the rules are
    # then tried one by one (each RE2 regex falls back to its NFA: still linear).
    policy = strict()
    events = [
        Event(A.FILE_READ, "/w/src/a.py"),
        Event(A.FILE_READ, "/srv/tls/server.pem"),
        Event(A.FILE_READ, "/etc/ssl/certs/ca.pem"),
        Event(A.FILE_WRITE, "/usr/lib/x/__pycache__/m.pyc"),
        Event(A.FILE_WRITE, "/w/__pycache__/m.pyc"),
        Event(A.SHELL_EXECUTE, "rm -rf /"),
        Event(A.NETWORK_CONNECT, "10.0.0.1:443"),
        Event(A.FILE_READ, "/srv/nothing"),
    ]
    expected = [policy.evaluate(event).rule_id for event in events]
    for table in policy._tables.values():
        table.match = lambda data: None
    assert [policy.evaluate(event).rule_id for event in events] == expected
    assert expected[1:5] == ["secret-pem", "read-etc", "pycache-write", "workspace"]


# ---------------------------------------------------------------- `$` as Python reads it

DOLLAR_PATTERNS = [
    r"(?i)^delete from \w+;?$",
    r"^git status$",
    r"a$|^b",
    r"(a$)",
    r"(?:x|a)$",
    r"[$]b",
    r"\$$",
    r"a\$",
    r"(?#$)a$",
    r"(?m)^a$",
    r"(?m:a$)",
    r"(?m:a$)|c$",
    r"(?m:(a)$)x?$",
    r"(?m)(?-m:a$)",
    r"(?i-m:A$)",
    r"^{home}$",
    r"(?m:^{home}$)",
    r"(?m:{home}/(x|y)$)|^{home}$",
]
DOLLAR_TARGETS = [
    "DELETE FROM users",
    "DELETE FROM users\n",
    "DELETE FROM users\n\n",
    "DELETE FROM users;\nDROP TABLE t",
    "git status",
    "git status\n",
    "git status\nrm -rf /",
    "a",
    "a\n",
    "a\nx",
    "a\n\n",
    "xa\nb",
    "b",
    "$b",
    "$",
    "$\n",
    "a$",
    "c\n",
    "/home/u",
    "/home/u\n",
    "/home/u\n/etc",
    "/home/u/x\n/home/u/y",
    "/home/u/x\nz",
]


def test_a_refusing_pattern_reads_dollar_as_python_does() -> None:
    """Python's `$` (no `m`) also matches before a final newline; RE2's only at
    the very end.  A rule that refuses must decide as the Python regex it was
    written as: `DELETE FROM users\\n` ran, and `...;?$` must see it."""
    import re

    from agentsup.policy import matchers

    values = {"home": ("/home/u",), "workspace": ("/w",), "agent_id": ("a",), "python": ("/p",)}
    for pattern in DOLLAR_PATTERNS:
        tokens = matchers.parse_regex(pattern)
        refusing = matchers.compile_regex(tokens, values, dot_all=True, python_dollar=True)
        python = re.compile(pattern.replace("{home}", "/home/u"), re.DOTALL)
        for target in DOLLAR_TARGETS:
            expected = python.search(target) is not None
            assert refusing.matches(target) is expected, (pattern, target, refusing.regex)


def test_an_allowing_pattern_keeps_re2s_stricter_dollar() -> None:
    policy = compiled(
        r"""
        name: t
        default: warn
        rules:
          - {id: no-delete, actions: [database_delete], pattern: '(?i)^delete from \w+;?$',
             decision: deny}
          - {id: git, actions: [shell_execute], pattern: '^git status$', decision: allow}
          - {id: lines, actions: [shell_execute], pattern: '(?m)^ls$', decision: log}
        """
    )
    assert policy.evaluate(Event(A.DATABASE_DELETE, "DELETE FROM users\n")).rule_id == "no-delete"
    assert policy.evaluate(Event(A.DATABASE_DELETE, "DELETE FROM users;")).rule_id == "no-delete"
    assert policy.evaluate(Event(A.SHELL_EXECUTE, "git status")).rule_id == "git"
    # Narrower is safe for an allow: the trailing newline falls through to the default.
    assert policy.evaluate(Event(A.SHELL_EXECUTE, "git status\n")).rule_id == DEFAULT_RULE_ID
    assert policy.evaluate(Event(A.SHELL_EXECUTE, "echo\nls\nx")).rule_id == "lines"
    for target in ("DELETE FROM users\n", "git status\n"):
        action = A.DATABASE_DELETE if target.startswith("DELETE") else A.SHELL_EXECUTE
        event = Event(action, target)
        assert policy.explain(event).decision is policy.evaluate(event)


# An operator's own rules: a regex matches every name that starts with a match
# (red team 32: `^{home}/vault/` spans only itself, and protects what is below).
OPERATOR_RULES = """
    name: operator
    extends: [strict]
    rules:
      - {id: vault, actions: [file_read], pattern: '^{home}/vault/', decision: deny}
      - id: stores
        actions: [file_read]
        pattern: '^{home}/(?:vault|\\.password-store)(?:/|\\Z)'
        decision: deny
      - {id: secrets, actions: [file_read], pattern: '^{home}/secrets', decision: deny}
      - {id: keys, actions: [file_read], target: '{home}/keys/**', decision: deny}
      - {id: word, actions: [file_read], pattern: '^{home}/vault\\b', decision: deny}
"""


def test_every_path_an_anchored_rule_matches_lies_in_its_match_range() -> None:
    """The protected-inode walk skips a directory whose names all fall outside
    every rule's range (`match_range`): that must never skip a match."""
    policy = compiled(OPERATOR_RULES)
    anchored = [rule for rule in policy.rules if rule.matcher.roots is not None]
    assert len(anchored) > 14
    words = ["", "/", ".", "home", "u", ".ssh", "id_rsa", ".config", "gh", "hosts.yml", "w"]
    words += [".git-credentials", "etc", "shadow", "key.pem", "\udce9", "é", "Z", "\x7f", ".aws"]
    words += ["vault", "prod", ".password-store", "secrets", "secrets.d", "keys"]
    chooser = random.Random(15)
    targets = ["/home/u/.config/gh/hosts.yml", "/home/u/.git-credentials", "/w/a/key.pem"]
    targets += ["/home/u/vault/prod/db", "/home/u/secrets.d/x", "/home/u/.password-store/a/b"]
    for _ in range(4000):
        targets.append("/" + "/".join(chooser.choices(words, k=chooser.randint(1, 6))))
    checked = 0
    unbounded = []
    for rule in anchored:
        matcher = rule.matcher
        bounds = match_range(matcher.regex)
        if bounds is None:  # RE2 cannot bound it (`\b`, red team 34): nothing is skipped
            unbounded.append(rule.rule.id)
            continue
        low, high = bounds
        pattern = LinearRegex(matcher.regex)
        for target in targets:
            if pattern.search(encode_target(target)):
                checked += 1
                assert low <= encode_target(target) <= high, (matcher.regex, target)
    assert checked > 20
    assert "word" in unbounded


# Regexes to take apart, tricky ones too: classes holding `|` and `(`, a POSIX
# class, escapes, flag groups, repeated groups, `?`-groups and lazy ones.
SPLIT_REGEXES = (
    r"^/h/\.(?:azure|pulumi)(?:/|\z)",
    r"(?s:^/h/(?:a|b)c|d)",
    r"^/h/a(?:b|c)??d",
    r"^/h/(x|y)+z",
    r"^/h/[|(]a|b",
    r"^/h/[]|]a(?:1|2)",
    r"^/h/[^]|(]a(?:1|2)",
    r"^/h/[[:alpha:]|]x(?:1|2)",
    r"^/h/\x{41}(?:a|b)",
    r"^/h/\(a|b\)",
    r"^/h/\\(?:a|b)",
    r"^/h/a{2}(?:b|c)*",
    r"^/h/(?:a|(?:b|c)d)e",
    r"^/h/(?i)a|b",
    r"^/h/(?i:a|b)x",
    r"^/h/(?:a|b){0,1}c",
    r"^/h/(?:a|)(?:|b)c",
    r"^/h/\pL(?:1|\p{Greek})",
)


def test_a_regexs_alternatives_match_together_what_it_matches() -> None:
    """`alternatives` multiplies a regex's alternations out: what matches the
    regex matches one of them, and nothing else does (the walk for protected
    files prunes by their ranges)."""
    policy = compiled(OPERATOR_RULES)
    regexes = [*SPLIT_REGEXES, *(rule.matcher.regex for rule in policy.rules)]
    letters = ["", "/", "h", "a", "b", "c", "d", "x", "y", "z", "1", "2", "e", "A", "(", ")", "|"]
    letters += ["]", "\\", ".azure", ".pulumi", "\n", "\u03b1", "home", "u", ".ssh", "vault"]
    chooser = random.Random(17)
    targets = [
        "/h/" + "".join(chooser.choices(letters, k=chooser.randint(0, 5))) for _ in range(3000)
    ]
    targets += ["/home/u/" + "/".join(chooser.choices(letters, k=3)) for _ in range(1000)]
    split = 0
    for regex in regexes:
        parts = alternatives(regex)
        split += len(parts) > 1
        whole = LinearRegex(regex)
        each = [LinearRegex(part) for part in parts]
        for target in targets:
            data = encode_target(target)
            expected = whole.search(data)
            assert any(part.search(data) for part in each) is expected, (regex, parts, target)
    assert split > 12
    # What stays whole: flags across a `|`, repeated groups, named groups, \Q.
    for regex in (r"^/h/(?i)a|b", r"^/h/(x|y)+z", r"(?P<n>a|b)", r"^/h/\Q(a|b)\E"):
        assert alternatives(regex) == [regex]
    assert alternatives(r"(?s:^/h/(?:a|b)c|d)") == ["(?s:^/h/ac)", "(?s:^/h/bc)", "(?s:d)"]
    assert len(alternatives("^/h/(?:a|b)(?:c|d)(?:e|f)", limit=4)) == 1  # past the limit


def test_every_path_an_anchored_rule_matches_lies_in_one_of_its_match_ranges() -> None:
    """As above, for the ranges of a rule's alternatives (`match_ranges`)."""
    policy = compiled(OPERATOR_RULES)
    anchored = [rule for rule in policy.rules if rule.matcher.roots is not None]
    words = ["", "/", ".", "home", "u", ".ssh", "id_rsa", ".config", "gh", "hosts.yml", "w"]
    words += [".git-credentials", ".azure", ".pulumi", ".pyenv", ".m2", "settings.xml", "Z"]
    words += ["vault", "prod", ".password-store", "secrets", "keys", "\udce9", "é", ".cargo"]
    words += ["credentials", "credentials.toml", ".npmrc", "etc", "shadow", "key.pem"]
    chooser = random.Random(16)
    targets = ["/home/u/.azure/x", "/home/u/.m2/settings.xml", "/home/u/.cargo/credentials"]
    for _ in range(6000):
        targets.append("/" + "/".join(chooser.choices(words, k=chooser.randint(1, 6))))
    checked = 0
    for rule in anchored:
        ranges = match_ranges(rule.matcher.regex)
        if ranges is None:
            continue
        pattern = LinearRegex(rule.matcher.regex)
        for target in targets:
            data = encode_target(target)
            if pattern.search(data):
                checked += 1
                assert any(low <= data <= high for low, high in ranges), (rule.rule.id, target)
    assert checked > 40


def test_a_class_with_a_bracket_first_hides_no_alternation() -> None:
    """Red team 38 F6: `[^])]` was read as `[^]` and `)]`, so the `|` after it
    was missed and the rule got a root it does not have, while the walk's
    ranges (which read the class right) split there: a branch the walk never
    looked under."""
    from agentsup.policy.matchers import has_top_level_alternation

    assert has_top_level_alternation(r"^/h/\.v[^])]x|/vault\.txt\Z")
    assert has_top_level_alternation(r"^/h/[]]x|/y")
    assert not has_top_level_alternation(r"^/h/[^]|]x")
    assert not has_top_level_alternation(r"^/h/[]|(]x(?:a|b)")
