"""Loading policy YAML: validation with exact FILE:LINE:COL errors, defaults, extends."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentsup.events import ActionType, AuditLevel, RateLimit, Severity, Verdict, ViolationMode
from agentsup.policy import PolicyError, load_policy_file, resolve_policy
from agentsup.policy.model import DEFAULT_ENV_DENY, DEFAULT_ENV_PASS


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, text: str, name: str = "p.yaml") -> object:
    return load_policy_file(write(tmp_path, name, text), tmp_path / "policy-dir")


# ---------------------------------------------------------------- what a policy becomes


def test_a_minimal_policy_gets_the_built_in_defaults(tmp_path: Path) -> None:
    policy = load_policy_file(write(tmp_path, "p.yaml", "name: minimal\n"), tmp_path)
    assert policy.name == "minimal"
    assert policy.rules == ()
    assert policy.default is Verdict.DENY
    assert policy.on_violation is ViolationMode.SIGKILL
    assert policy.env.pass_ == DEFAULT_ENV_PASS
    assert policy.env.deny == DEFAULT_ENV_DENY
    assert (policy.limits.max_runtime_seconds, policy.limits.memory_mb) == (None, None)
    assert policy.limits.max_processes is None
    assert policy.approval.timeout_seconds == 300
    assert policy.approval.on_timeout == "deny"
    assert policy.audit_level is AuditLevel.DECISIONS


def test_every_documented_key_is_read(tmp_path: Path) -> None:
    policy = load_policy_file(
        write(
            tmp_path,
            "full.yaml",
            """
            name: data-analyst
            description: Policy for data analysis agents
            version: 1.0
            default: warn
            on_violation: sigstop
            rules:
              - id: workspace-rw
                actions: [file_read, file_write, file_delete]
                target: "{workspace}/**"
                except: ["{workspace}/.git/**"]
                decision: allow
                priority: 5
                severity: low
                message: normal work
                on_violation: block
                agents: ["analyst-*"]
                rate_limit: {max: 100, per_seconds: 60}
              - id: data
                actions: "*"
                pattern: '^/data/(in|out)/.*'
                decision: require_approval
            env:
              pass: [PATH, HOME]
              deny: ["*_KEY"]
            limits: {max_runtime_seconds: 3600, memory_mb: 2048, max_processes: 128}
            approval: {timeout_seconds: 1.5, on_timeout: kill}
            audit: {level: all}
            """,
        ),
        tmp_path,
    )
    assert policy.description == "Policy for data analysis agents"
    assert policy.version == "1.0"  # kept as written, not the float 1.0
    assert (policy.default, policy.on_violation) == (Verdict.WARN, ViolationMode.SIGSTOP)
    first, second = policy.rules
    assert first.id == "workspace-rw"
    assert first.actions == {ActionType.FILE_READ, ActionType.FILE_WRITE, ActionType.FILE_DELETE}
    assert (first.target, first.pattern) == ("{workspace}/**", None)
    assert first.except_globs == ("{workspace}/.git/**",)
    assert (first.priority, first.severity, first.message) == (5, Severity.LOW, "normal work")
    assert first.on_violation is ViolationMode.BLOCK
    assert first.agents == ("analyst-*",)
    assert first.rate_limit == RateLimit(max=100, per_seconds=60.0)
    assert (first.source.line, first.source.column) == (7, 5)
    assert second.actions == frozenset(ActionType)
    assert second.pattern == "^/data/(in|out)/.*"
    assert (second.priority, second.severity, second.on_violation) == (100, Severity.MEDIUM, None)
    assert second.agents is None
    assert policy.env.pass_ == ("PATH", "HOME")
    assert policy.env.deny == ("*_KEY",)
    assert (policy.limits.max_runtime_seconds, policy.limits.memory_mb) == (3600, 2048)
    assert policy.limits.max_processes == 128
    assert (policy.approval.timeout_seconds, policy.approval.on_timeout) == (1.5, "kill")
    assert policy.audit_level is AuditLevel.ALL


def test_rules_are_stably_sorted_by_priority(tmp_path: Path) -> None:
    policy = load_policy_file(
        write(
            tmp_path,
            "p.yaml",
            """
            name: order
            rules:
              - {id: c, actions: [file_read], target: /c, decision: allow, priority: 20}
              - {id: a, actions: [file_read], target: /a, decision: allow}
              - {id: b, actions: [file_read], target: /b, decision: allow, priority: 20}
              - {id: first, actions: [file_read], target: /f, decision: allow, priority: -5}
            """,
        ),
        tmp_path,
    )
    assert [rule.id for rule in policy.rules] == ["first", "c", "b", "a"]


# ---------------------------------------------------------------- validation errors

# Each case: the policy text, then the expected (line, column, rule id, message).
ERRORS: dict[str, tuple[str, tuple[int, int, str | None, str]]] = {
    "unknown top-level key": (
        "name: x\nnmae: y\n",
        (2, 1, None, "unknown key 'nmae' in the policy (expected one of name, description,"),
    ),
    "duplicate top-level key": ("name: x\nname: y\n", (2, 1, None, "duplicate key 'name'")),
    "missing name": ("default: deny\n", (1, 1, None, "missing required key 'name'")),
    "empty name": ("name: ''\n", (1, 7, None, "'name' must not be empty")),
    "empty file": ("", (1, 1, None, "empty policy")),
    "not a mapping": ("- a\n- b\n", (1, 1, None, "the policy must be a mapping, got a list")),
    "invalid yaml": ("name: x\nrules: [\n", (3, 1, None, "invalid YAML")),
    "unknown default": (
        "name: x\ndefault: alow\n",
        (2, 10, None, "unknown default 'alow' (expected one of allow, deny, warn)"),
    ),
    "require_approval is not a default": (
        "name: x\ndefault: require_approval\n",
        (2, 10, None, "unknown default 'require_approval'"),
    ),
    "unknown on_violation": (
        "name: x\non_violation: kill\n",
        (2, 15, None, "unknown on_violation 'kill' (expected one of sigkill, sigstop, block,"),
    ),
    "rules not a list": ("name: x\nrules: {}\n", (2, 8, None, "'rules' must be a list")),
    "unknown rule key": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    tagret: /x\n",
        (5, 5, "r1", "unknown key 'tagret' in a rule (expected one of id, actions, target,"),
    ),
    "duplicate key in a rule": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    target: /y\n    decision: allow\n",
        (6, 5, "r1", "duplicate key 'target' in a rule"),
    ),
    "missing id": (
        "name: x\nrules:\n  - actions: [file_read]\n    target: /x\n    decision: allow\n",
        (3, 5, None, "missing required key 'id'"),
    ),
    "missing actions": (
        "name: x\nrules:\n  - id: r1\n    target: /x\n    decision: allow\n",
        (3, 5, "r1", "missing required key 'actions'"),
    ),
    "missing decision": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n",
        (3, 5, "r1", "missing required key 'decision'"),
    ),
    "both target and pattern": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    pattern: x\n    decision: allow\n",
        (3, 5, "r1", "a rule needs exactly one of 'target' (glob) or 'pattern' (regex), got both"),
    ),
    "neither target nor pattern": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    decision: allow\n",
        (3, 5, "r1", "got neither"),
    ),
    "unknown action type": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read, file_raed]\n    target: /x\n"
        "    decision: allow\n",
        (4, 26, "r1", "unknown action type 'file_raed' (expected one of file_read, file_write,"),
    ),
    "no action types": (
        "name: x\nrules:\n  - id: r1\n    actions: []\n    target: /x\n    decision: allow\n",
        (4, 14, "r1", "'actions' must list at least one action type"),
    ),
    "unknown decision": (
        "name: x\nrules:\n  - id: ws\n    actions: [file_read]\n    target: /x\n"
        "    decision: alow\n",
        (
            6,
            15,
            "ws",
            "unknown decision 'alow' (expected one of allow, deny, warn, require_approval, log)",
        ),
    ),
    "unknown severity": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    decision: deny\n    severity: huge\n",
        (7, 15, "r1", "unknown severity 'huge' (expected one of low, medium, high, critical)"),
    ),
    "unknown rule on_violation": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    decision: deny\n    on_violation: stop\n",
        (7, 19, "r1", "unknown on_violation 'stop'"),
    ),
    "priority must be an int": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    decision: deny\n    priority: high\n",
        (7, 15, "r1", "'priority' must be an integer, got str 'high'"),
    ),
    "priority must not be a bool": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    decision: deny\n    priority: true\n",
        (7, 15, "r1", "'priority' must be an integer, got bool 'true'"),
    ),
    "rate limit max must be > 0": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    decision: allow\n    rate_limit: {max: 0, per_seconds: 60}\n",
        (7, 23, "r1", "'rate_limit.max' must be an integer > 0, got 0"),
    ),
    "rate limit per_seconds must be an int": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    decision: allow\n    rate_limit: {max: 5, per_seconds: soon}\n",
        (7, 39, "r1", "'rate_limit.per_seconds' must be an integer, got str 'soon'"),
    ),
    "rate limit needs per_seconds": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    decision: allow\n    rate_limit: {max: 5}\n",
        (7, 17, "r1", "missing required key 'per_seconds' in 'rate_limit'"),
    ),
    "bad regex": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    pattern: '^/data/(in'\n"
        "    decision: allow\n",
        (5, 22, "r1", "bad regex: missing ), unterminated subpattern"),
    ),
    "unbalanced bracket in a glob": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /data/[abc\n"
        "    decision: allow\n",
        (5, 19, "r1", "unbalanced '[' in glob (expected a closing ']')"),
    ),
    "unbalanced bracket in except": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /data/**\n"
        "    except: ['/data/[x']\n    decision: allow\n",
        (6, 21, "r1", "unbalanced '['"),
    ),
    "unknown placeholder": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: '{workspce}/**'\n"
        "    decision: allow\n",
        (5, 14, "r1", "unknown placeholder '{workspce}' (expected one of {workspace}, {home},"),
    ),
    "unknown placeholder in a regex": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    pattern: '^{hom}/x'\n"
        "    decision: allow\n",
        (5, 16, "r1", "unknown placeholder '{hom}'"),
    ),
    "agents must be a list": (
        "name: x\nrules:\n  - id: r1\n    actions: [file_read]\n    target: /x\n"
        "    decision: allow\n    agents: analyst\n",
        (7, 13, "r1", "'agents' must be a list of strings, got str 'analyst'"),
    ),
    "duplicate rule id": (
        "name: x\nrules:\n  - {id: r1, actions: [file_read], target: /x, decision: allow}\n"
        "  - {id: r1, actions: [file_read], target: /y, decision: allow}\n",
        (4, 10, "r1", "duplicate rule id 'r1' (first defined at line 3)"),
    ),
    "env pass must be a list": (
        "name: x\nenv:\n  pass: PATH\n",
        (3, 9, None, "'env.pass' must be a list of strings, got str 'PATH'"),
    ),
    "unknown env key": ("name: x\nenv:\n  allow: [PATH]\n", (3, 3, None, "unknown key 'allow'")),
    "limits must be positive ints": (
        "name: x\nlimits:\n  memory_mb: -1\n",
        (3, 14, None, "'limits.memory_mb' must be an integer > 0, got -1"),
    ),
    "unknown limit": (
        "name: x\nlimits:\n  cpu: 2\n",
        (3, 3, None, "unknown key 'cpu' in 'limits' (expected one of max_runtime_seconds,"),
    ),
    "unknown approval on_timeout": (
        "name: x\napproval:\n  on_timeout: allow\n",
        (3, 15, None, "unknown approval.on_timeout 'allow' (expected one of deny, kill)"),
    ),
    "approval timeout must be positive": (
        "name: x\napproval:\n  timeout_seconds: 0\n",
        (3, 20, None, "'approval.timeout_seconds' must be a number > 0, got 0"),
    ),
    "unknown audit level": (
        "name: x\naudit:\n  level: everything\n",
        (3, 10, None, "unknown audit level 'everything' (expected one of violations, decisions,"),
    ),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_a_bad_policy_is_rejected_with_file_line_and_column(tmp_path: Path, case: str) -> None:
    text, (line, column, rule_id, message) = ERRORS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        load_policy_file(path, tmp_path)
    error = caught.value
    assert (error.path, error.line, error.column, error.rule_id) == (
        str(path),
        line,
        column,
        rule_id,
    ), str(error)
    assert message in error.message, str(error)
    where = f"{path}:{line}:{column}: " + (f"rule '{rule_id}': " if rule_id else "")
    assert str(error) == where + error.message


def test_the_error_line_reads_as_documented(tmp_path: Path) -> None:
    path = tmp_path / "team.yaml"
    path.write_text(
        "name: team\nrules:\n  - id: ws\n    actions: [file_read]\n    target: /x\n"
        "    decision: alow\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy_file(path, tmp_path)
    assert str(caught.value) == (
        f"{path}:6:15: rule 'ws': unknown decision 'alow' "
        "(expected one of allow, deny, warn, require_approval, log)"
    )


def test_an_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy_file(tmp_path / "missing.yaml", tmp_path)


# ---------------------------------------------------------------- extends


RULE = "  - {{id: {id}, actions: [file_read], target: /{id}, decision: allow{extra}}}\n"


def rules(*ids: str, priority: int | None = None) -> str:
    extra = f", priority: {priority}" if priority is not None else ""
    return "rules:\n" + "".join(RULE.format(id=i, extra=extra) for i in ids)


def test_child_rules_come_before_parent_rules_at_equal_priority(tmp_path: Path) -> None:
    write(tmp_path, "parent.yaml", "name: parent\n" + rules("p1", "p2"))
    write(tmp_path, "early.yaml", "name: early\n" + rules("e1", priority=50))
    child = write(
        tmp_path, "child.yaml", "name: child\nextends: [parent.yaml, early.yaml]\n" + rules("c1")
    )
    policy = load_policy_file(child, tmp_path)
    assert [rule.id for rule in policy.rules] == ["e1", "c1", "p1", "p2"]
    assert policy.extends == ("parent.yaml", "early.yaml")
    assert policy.rules[2].source.path == str(tmp_path / "parent.yaml")


def test_sections_come_from_the_child_else_the_first_parent_that_sets_them(
    tmp_path: Path,
) -> None:
    write(tmp_path, "a.yaml", "name: a\ndefault: allow\nlimits: {memory_mb: 10}\n")
    write(tmp_path, "b.yaml", "name: b\ndefault: warn\non_violation: block\naudit: {level: all}\n")
    child = write(
        tmp_path, "c.yaml", "name: c\nextends: [a.yaml, b.yaml]\nlimits: {max_processes: 5}\n"
    )
    policy = load_policy_file(child, tmp_path)
    assert policy.name == "c"
    assert policy.default is Verdict.ALLOW  # a is the first parent setting it
    assert policy.on_violation is ViolationMode.BLOCK  # only b sets it
    assert policy.audit_level is AuditLevel.ALL
    # A section is taken whole: the child's limits, the rest built in.
    assert (policy.limits.max_processes, policy.limits.memory_mb) == (5, None)


def test_a_diamond_includes_the_shared_parent_once(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "name: base\n" + rules("shared"))
    write(tmp_path, "left.yaml", "name: left\nextends: [base.yaml]\n" + rules("l"))
    write(tmp_path, "right.yaml", "name: right\nextends: [base.yaml]\n" + rules("r"))
    top = write(tmp_path, "top.yaml", "name: top\nextends: [left.yaml, right.yaml]\n")
    assert [rule.id for rule in load_policy_file(top, tmp_path).rules] == ["l", "shared", "r"]


def test_a_rule_id_defined_in_child_and_parent_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "parent.yaml", "name: parent\n" + rules("dup"))
    child = write(tmp_path, "child.yaml", "name: child\nextends: [parent.yaml]\n" + rules("dup"))
    with pytest.raises(PolicyError) as caught:
        load_policy_file(child, tmp_path)
    error = caught.value
    assert (error.path, error.line, error.column, error.rule_id) == (str(child), 4, 10, "dup")
    assert f"also defined at {tmp_path / 'parent.yaml'}:3:5" in error.message


def test_an_extends_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "name: a\nextends: [b.yaml]\n")
    write(tmp_path, "b.yaml", "name: b\nextends:\n  - a.yaml\n")
    with pytest.raises(PolicyError) as caught:
        load_policy_file(tmp_path / "a.yaml", tmp_path)
    assert str(caught.value) == f"{tmp_path / 'b.yaml'}:3:5: extends cycle: a -> b -> a"


def test_extending_itself_is_a_cycle(tmp_path: Path) -> None:
    path = write(tmp_path, "self.yaml", "name: self\nextends: [self.yaml]\n")
    with pytest.raises(PolicyError, match="extends cycle: self -> self"):
        load_policy_file(path, tmp_path)


def test_an_unknown_parent_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nextends: [strict, nosuch]\n")
    with pytest.raises(PolicyError) as caught:
        load_policy_file(path, tmp_path)
    assert (caught.value.line, caught.value.column) == (2, 19)
    assert "unknown policy 'nosuch' in extends" in caught.value.message


def test_an_error_in_a_parent_names_the_parent_file(tmp_path: Path) -> None:
    write(tmp_path, "parent.yaml", "name: parent\ndefault: nope\n")
    child = write(tmp_path, "child.yaml", "name: child\nextends: [parent.yaml]\n")
    with pytest.raises(PolicyError) as caught:
        load_policy_file(child, tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'parent.yaml'}:2:10: unknown default")


def test_extends_names_resolve_in_the_policy_dir_before_the_built_ins(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    write(policy_dir, "team.yaml", "name: team\n" + rules("team-rule"))
    child = write(tmp_path, "child.yaml", "name: child\nextends: [team, audit]\n")
    policy = load_policy_file(child, policy_dir)
    assert [rule.id for rule in policy.rules] == ["team-rule", "log-everything"]


def test_a_policy_dir_file_may_extend_the_built_in_it_shadows(tmp_path: Path) -> None:
    write(tmp_path, "strict.yaml", "name: strict\nextends: [strict]\n" + rules("local", priority=1))
    policy = resolve_policy("strict", tmp_path)
    assert policy.source == str(tmp_path / "strict.yaml")
    assert policy.rules[0].id == "local"
    assert "secret-ssh" in {rule.id for rule in policy.rules}


# ---------------------------------------------------------------- --policy values


def test_a_name_is_looked_up_in_the_policy_dir_then_the_built_ins(tmp_path: Path) -> None:
    assert resolve_policy("read_only", tmp_path).name == "read_only"
    write(tmp_path, "read_only.yaml", "name: mine\n")
    assert resolve_policy("read_only", tmp_path).name == "mine"


def test_a_value_with_a_slash_or_yaml_suffix_is_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "strict.yaml", "name: local-file\n")
    monkeypatch.chdir(tmp_path)
    empty_dir = tmp_path / "empty"
    assert resolve_policy("strict.yaml", empty_dir).name == "local-file"
    assert resolve_policy("./strict.yaml", empty_dir).name == "local-file"
    assert resolve_policy("strict", empty_dir).name == "strict"  # the built-in


def test_an_unknown_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such policy"):
        resolve_policy("nosuch", tmp_path)
    with pytest.raises(PolicyError, match="no such file"):
        resolve_policy(str(tmp_path / "nosuch.yaml"), tmp_path)
