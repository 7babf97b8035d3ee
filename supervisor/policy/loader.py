"""Load policy YAML into frozen `Policy` values, validating everything.

The YAML is read with `yaml.compose`, so every node keeps its line and
column, and every error names `FILE:LINE:COL`.  A policy is rejected whole on
its first error, never half-loaded; all errors come from `_fail`.

`--policy` values (DESIGN.md 1.4): a value containing `/` or ending in
`.yaml` is a path; anything else is a name, looked up as `<name>.yaml` in the
policy directory, then among the built-in templates.  Names in `extends`
resolve the same way, and a relative path in `extends` is relative to the
extending file.  A policy in the policy directory may extend the built-in
template it shadows (`strict.yaml` with `extends: [strict]`).

Inheritance: the effective rules are the child's rules, then each parent's
effective rules in `extends` order (a parent reached twice through a diamond
counts once), stably sorted by priority.  Each top-level section (`default`,
`on_violation`, `env`, `limits`, `approval`, `audit`, `description`,
`version`) is taken whole from the child if it sets it, else from the first
parent that does, else the built-in default; keys missing inside a section
take their built-in defaults.

Extension beyond DESIGN.md: an optional rule key `except: [glob, ...]`; the
rule does not match targets matching any of those globs.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ..events import ActionType, AuditLevel, RateLimit, Severity, Verdict, ViolationMode
from .linear import PatternError
from .matchers import parse_glob, parse_regex
from .model import (
    DEFAULT_PRIORITY,
    DEFAULT_SEVERITY,
    Approval,
    ApprovalTimeoutAction,
    EnvPolicy,
    Limits,
    Policy,
    PolicyError,
    Rule,
    SourceLocation,
)

_TOP_KEYS = (
    "name",
    "description",
    "version",
    "extends",
    "default",
    "on_violation",
    "rules",
    "env",
    "limits",
    "approval",
    "audit",
)
_RULE_KEYS = (
    "id",
    "actions",
    "target",
    "pattern",
    "except",
    "decision",
    "priority",
    "severity",
    "message",
    "on_violation",
    "agents",
    "rate_limit",
)
_DEFAULT_VERDICTS = (Verdict.ALLOW, Verdict.DENY, Verdict.WARN)
_ON_TIMEOUT: tuple[ApprovalTimeoutAction, ...] = ("deny", "kill")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"

# libyaml's composer is ~10x faster than the pure-Python one and keeps the
# same line/column marks; fall back where PyYAML was built without it.
_COMPOSE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _fail(path: str, node: yaml.Node, message: str, rule_id: str | None = None) -> NoReturn:
    mark = node.start_mark
    raise PolicyError(path, mark.line + 1, mark.column + 1, message, rule_id)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.rsplit(":", 1)[-1]
    return f"{kind} {node.value!r}" if kind != "null" else "nothing"


@dataclass
class _Reader:
    """Typed access to the nodes of one file; `rule_id` names the rule being read."""

    path: str
    rule_id: str | None = None

    def fail(self, node: yaml.Node, message: str) -> NoReturn:
        _fail(self.path, node, message, self.rule_id)

    def mapping(self, node: yaml.Node, allowed: tuple[str, ...], what: str) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, f"{what} must be a mapping, got {_describe(node)}")
        result: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                self.fail(key_node, f"keys in {what} must be strings, got {_describe(key_node)}")
            key = key_node.value
            if key in result:
                self.fail(key_node, f"duplicate key '{key}' in {what}")
            if key not in allowed:
                self.fail(
                    key_node,
                    f"unknown key '{key}' in {what} (expected one of {', '.join(allowed)})",
                )
            result[key] = value_node
        return result

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            self.fail(node, f"{what} must be a string, got {_describe(node)}")
        value: str = node.value
        return value

    def nonempty_string(self, node: yaml.Node, what: str) -> str:
        value = self.string(node, what)
        if not value:
            self.fail(node, f"{what} must not be empty")
        return value

    def text(self, node: yaml.Node, what: str) -> str:
        """A string, or a number kept as written (`version: 1.0` is "1.0")."""
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_STR, _INT, _FLOAT):
            self.fail(node, f"{what} must be a string, got {_describe(node)}")
        value: str = node.value
        return value

    def integer(self, node: yaml.Node, what: str, *, positive: bool = False) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            self.fail(node, f"{what} must be an integer, got {_describe(node)}")
        value = yaml.SafeLoader("").construct_object(node)
        assert isinstance(value, int)
        if positive and value <= 0:
            self.fail(node, f"{what} must be an integer > 0, got {value}")
        return value

    def number(self, node: yaml.Node, what: str) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _FLOAT):
            self.fail(node, f"{what} must be a number, got {_describe(node)}")
        value = float(yaml.SafeLoader("").construct_object(node))
        if not value > 0 or value == float("inf"):
            self.fail(node, f"{what} must be a number > 0, got {node.value}")
        return value

    def strings(self, node: yaml.Node, what: str) -> tuple[tuple[str, yaml.Node], ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, f"{what} must be a list of strings, got {_describe(node)}")
        return tuple(
            (self.nonempty_string(item, f"each item of {what}"), item) for item in node.value
        )

    def choice(self, node: yaml.Node, what: str, options: tuple[str, ...]) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR or node.value not in options:
            shown = f"'{node.value}'" if isinstance(node, yaml.ScalarNode) else _describe(node)
            self.fail(node, f"unknown {what} {shown} (expected one of {', '.join(options)})")
        value: str = node.value
        return value


# ---------------------------------------------------------------- one file


@dataclass(frozen=True)
class _PolicyFile:
    """One file as written: None means "not set here, inherit"."""

    key: str  # identity, for cycles and diamonds
    path: str  # as shown in errors
    directory: Path | None  # for relative paths in extends; None for built-ins
    name: str
    extends: tuple[tuple[str, yaml.Node], ...]
    rules: tuple[Rule, ...]
    rule_id_nodes: dict[str, yaml.Node] = field(compare=False)
    description: str | None = None
    version: str | None = None
    default: Verdict | None = None
    on_violation: ViolationMode | None = None
    env: EnvPolicy | None = None
    limits: Limits | None = None
    approval: Approval | None = None
    audit_level: AuditLevel | None = None


def _parse_file(text: str, path: str, key: str, directory: Path | None) -> _PolicyFile:
    try:
        root = yaml.compose(text, Loader=_COMPOSE_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError(path, line, column, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(path, 1, 1, f"invalid YAML: {exc}") from None
    if root is None:
        raise PolicyError(path, 1, 1, "empty policy (expected a mapping with at least 'name')")
    reader = _Reader(path)
    top = reader.mapping(root, _TOP_KEYS, "the policy")
    if "name" not in top:
        reader.fail(root, "missing required key 'name'")
    values: dict[str, Any] = {}
    if "description" in top:
        values["description"] = reader.string(top["description"], "'description'")
    if "version" in top:
        values["version"] = reader.text(top["version"], "'version'")
    if "default" in top:
        options = tuple(v.value for v in _DEFAULT_VERDICTS)
        values["default"] = Verdict(reader.choice(top["default"], "default", options))
    if "on_violation" in top:
        values["on_violation"] = ViolationMode(
            reader.choice(top["on_violation"], "on_violation", _values(ViolationMode))
        )
    if "env" in top:
        values["env"] = _parse_env(reader, top["env"])
    if "limits" in top:
        values["limits"] = _parse_limits(reader, top["limits"])
    if "approval" in top:
        values["approval"] = _parse_approval(reader, top["approval"])
    if "audit" in top:
        audit = reader.mapping(top["audit"], ("level",), "'audit'")
        if "level" in audit:
            values["audit_level"] = AuditLevel(
                reader.choice(audit["level"], "audit level", _values(AuditLevel))
            )
        else:
            values["audit_level"] = AuditLevel.DECISIONS
    extends: tuple[tuple[str, yaml.Node], ...] = ()
    if "extends" in top:
        node = top["extends"]
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            extends = ((reader.nonempty_string(node, "'extends'"), node),)
        else:
            extends = reader.strings(node, "'extends'")
    rules: list[Rule] = []
    rule_id_nodes: dict[str, yaml.Node] = {}
    if "rules" in top:
        rules_node = top["rules"]
        if not isinstance(rules_node, yaml.SequenceNode):
            reader.fail(rules_node, f"'rules' must be a list, got {_describe(rules_node)}")
        for rule_node in rules_node.value:
            rule, id_node = _parse_rule(path, rule_node)
            if rule.id in rule_id_nodes:
                first = rule_id_nodes[rule.id].start_mark
                _fail(
                    path,
                    id_node,
                    f"duplicate rule id '{rule.id}' (first defined at line {first.line + 1})",
                    rule.id,
                )
            rule_id_nodes[rule.id] = id_node
            rules.append(rule)
    return _PolicyFile(
        key=key,
        path=path,
        directory=directory,
        name=reader.nonempty_string(top["name"], "'name'"),
        extends=extends,
        rules=tuple(rules),
        rule_id_nodes=rule_id_nodes,
        **values,
    )


def _values(enum_type: type[ViolationMode] | type[AuditLevel] | type[Severity]) -> tuple[str, ...]:
    return tuple(member.value for member in enum_type)


def _parse_env(reader: _Reader, node: yaml.Node) -> EnvPolicy:
    env = reader.mapping(node, ("pass", "deny"), "'env'")
    result = EnvPolicy()
    if "pass" in env:
        result = EnvPolicy(
            tuple(s for s, _ in reader.strings(env["pass"], "'env.pass'")), result.deny
        )
    if "deny" in env:
        result = EnvPolicy(
            result.pass_, tuple(s for s, _ in reader.strings(env["deny"], "'env.deny'"))
        )
    return result


def _parse_limits(reader: _Reader, node: yaml.Node) -> Limits:
    keys = ("max_runtime_seconds", "memory_mb", "max_processes")
    limits = reader.mapping(node, keys, "'limits'")
    values = {k: reader.integer(v, f"'limits.{k}'", positive=True) for k, v in limits.items()}
    return Limits(**values)


def _parse_approval(reader: _Reader, node: yaml.Node) -> Approval:
    approval = reader.mapping(node, ("timeout_seconds", "on_timeout"), "'approval'")
    result = Approval()
    if "timeout_seconds" in approval:
        timeout = reader.number(approval["timeout_seconds"], "'approval.timeout_seconds'")
        result = Approval(timeout, result.on_timeout)
    if "on_timeout" in approval:
        on_timeout = reader.choice(approval["on_timeout"], "approval.on_timeout", _ON_TIMEOUT)
        result = Approval(result.timeout_seconds, "kill" if on_timeout == "kill" else "deny")
    return result


def _parse_rule(path: str, node: yaml.Node) -> tuple[Rule, yaml.Node]:
    reader = _Reader(path)
    if isinstance(node, yaml.MappingNode):
        # Name the rule in errors about its other keys as early as possible.
        for key_node, value_node in node.value:
            if getattr(key_node, "value", None) == "id" and isinstance(value_node, yaml.ScalarNode):
                reader.rule_id = str(value_node.value)
    fields = reader.mapping(node, _RULE_KEYS, "a rule")
    for required in ("id", "actions", "decision"):
        if required not in fields:
            reader.fail(node, f"missing required key '{required}'")
    rule_id = reader.nonempty_string(fields["id"], "'id'")
    has_target, has_pattern = "target" in fields, "pattern" in fields
    if has_target == has_pattern:
        problem = "both" if has_target else "neither"
        reader.fail(
            node, f"a rule needs exactly one of 'target' (glob) or 'pattern' (regex), got {problem}"
        )
    target = pattern = None
    if has_target:
        target = reader.nonempty_string(fields["target"], "'target'")
        _check_matcher(reader, fields["target"], parse_glob, target)
    else:
        pattern = reader.nonempty_string(fields["pattern"], "'pattern'")
        _check_matcher(reader, fields["pattern"], parse_regex, pattern)
    except_globs: tuple[str, ...] = ()
    if "except" in fields:
        items = reader.strings(fields["except"], "'except'")
        for glob, item in items:
            _check_matcher(reader, item, parse_glob, glob)
        except_globs = tuple(glob for glob, _ in items)
    decision = Verdict(
        reader.choice(fields["decision"], "decision", tuple(v.value for v in Verdict))
    )
    on_violation = None
    if "on_violation" in fields:
        on_violation = ViolationMode(
            reader.choice(fields["on_violation"], "on_violation", _values(ViolationMode))
        )
    agents = None
    if "agents" in fields:
        agents = tuple(s for s, _ in reader.strings(fields["agents"], "'agents'"))
    mark = node.start_mark
    rule = Rule(
        id=rule_id,
        actions=_parse_actions(reader, fields["actions"]),
        decision=decision,
        target=target,
        pattern=pattern,
        except_globs=except_globs,
        priority=(
            reader.integer(fields["priority"], "'priority'")
            if "priority" in fields
            else DEFAULT_PRIORITY
        ),
        severity=(
            Severity(reader.choice(fields["severity"], "severity", _values(Severity)))
            if "severity" in fields
            else DEFAULT_SEVERITY
        ),
        message=reader.string(fields["message"], "'message'") if "message" in fields else "",
        on_violation=on_violation,
        agents=agents,
        rate_limit=_parse_rate_limit(reader, fields["rate_limit"])
        if "rate_limit" in fields
        else None,
        source=SourceLocation(path, mark.line + 1, mark.column + 1),
    )
    return rule, fields["id"]


def _check_matcher(
    reader: _Reader, node: yaml.Node, parse: Callable[[str], object], text: str
) -> None:
    try:
        parse(text)
    except PatternError as exc:
        mark = node.start_mark
        column = mark.column + 1
        # Point at the offending character when the scalar is written as-is on
        # one line: no escapes (a backslash is literal in single quotes).
        style = getattr(node, "style", None)
        if node.end_mark.line == mark.line:
            single = style == "'" and "'" not in text
            double = style == '"' and "\\" not in text and '"' not in text
            if single or double:
                column += 1 + exc.index
            elif not style:  # plain: None (pure) or "" (libyaml)
                column += exc.index
        raise PolicyError(reader.path, mark.line + 1, column, exc.message, reader.rule_id) from None


def _parse_actions(reader: _Reader, node: yaml.Node) -> frozenset[ActionType]:
    options = ", ".join(a.value for a in ActionType)
    if isinstance(node, yaml.ScalarNode):
        items: tuple[tuple[str, yaml.Node], ...] = ((reader.string(node, "'actions'"), node),)
    else:
        items = reader.strings(node, "'actions'")
    if not items:
        reader.fail(node, f"'actions' must list at least one action type (or \"*\"): {options}")
    actions: set[ActionType] = set()
    for name, item in items:
        if name == "*":
            actions.update(ActionType)
            continue
        try:
            actions.add(ActionType(name))
        except ValueError:
            reader.fail(item, f"unknown action type '{name}' (expected one of {options}, or \"*\")")
    return frozenset(actions)


def _parse_rate_limit(reader: _Reader, node: yaml.Node) -> RateLimit:
    fields = reader.mapping(node, ("max", "per_seconds"), "'rate_limit'")
    for required in ("max", "per_seconds"):
        if required not in fields:
            reader.fail(node, f"missing required key '{required}' in 'rate_limit'")
    return RateLimit(
        max=reader.integer(fields["max"], "'rate_limit.max'", positive=True),
        per_seconds=float(
            reader.integer(fields["per_seconds"], "'rate_limit.per_seconds'", positive=True)
        ),
    )


# ---------------------------------------------------------------- finding files


def is_path_reference(name_or_path: str) -> bool:
    """True when a `--policy` or `extends` value is a path rather than a name."""
    return "/" in name_or_path or name_or_path.endswith(".yaml")


def builtin_templates() -> dict[str, Traversable]:
    """The templates shipped in `agentsup.policies`, by name."""
    package = importlib.resources.files("agentsup.policies")
    found = {
        entry.name.removesuffix(".yaml"): entry
        for entry in package.iterdir()
        if entry.name.endswith(".yaml") and entry.is_file()
    }
    return dict(sorted(found.items()))


def builtin_names() -> tuple[str, ...]:
    """Names of the built-in templates, sorted."""
    return tuple(builtin_templates())


@dataclass(frozen=True)
class PolicySource:
    """The text of one policy file and where it came from.

    `key` identifies the file (its real path, or `<builtin>/NAME`) for
    cycle and diamond detection; `path` is how errors name it; `directory`
    anchors relative paths in its `extends` (None for built-ins).
    """

    key: str
    path: str
    directory: Path | None
    text: str


def _file_source(path: Path, shown: str) -> PolicySource:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(shown, 1, 1, f"cannot read policy file: {reason}") from None
    return PolicySource(os.path.realpath(path), shown, path.parent, text)


def builtin_source(name: str) -> PolicySource | None:
    """The built-in template `name`, or None."""
    entry = builtin_templates().get(name)
    if entry is None:
        return None
    return PolicySource(f"<builtin>/{name}", str(entry), None, entry.read_text(encoding="utf-8"))


def find_policy(
    reference: str,
    policy_dir: Path,
    relative_to: Path | None = None,
    from_key: str | None = None,
) -> PolicySource | None:
    """Find a `--policy`/`extends` value: a path, or `<name>.yaml` in `policy_dir`, or a built-in.

    `relative_to` anchors relative paths (the extending file's directory).
    `from_key` is the extending file: a file in the policy dir that extends
    its own name gets the built-in template it shadows.
    """
    if is_path_reference(reference):
        path = Path(reference)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        return _file_source(path, str(path)) if path.is_file() else None
    candidate = policy_dir / f"{reference}.yaml"
    if candidate.is_file() and os.path.realpath(candidate) != from_key:
        return _file_source(candidate, str(candidate))
    return builtin_source(reference)


# ---------------------------------------------------------------- extends


@dataclass
class _Resolver:
    policy_dir: Path
    cache: dict[str, _PolicyFile] = field(default_factory=dict)

    def parse(self, source: PolicySource) -> _PolicyFile:
        if source.key not in self.cache:
            self.cache[source.key] = _parse_file(
                source.text, source.path, source.key, source.directory
            )
        return self.cache[source.key]

    def effective(self, file: _PolicyFile, stack: tuple[str, ...] = ()) -> list[_PolicyFile]:
        """`file` and its ancestors, depth first in `extends` order (for section lookup)."""
        chain = [file]
        for reference, node in file.extends:
            source = find_policy(reference, self.policy_dir, file.directory, file.key)
            if source is None:
                _fail(
                    file.path,
                    node,
                    f"unknown policy '{reference}' in extends (expected a file, or a name in "
                    f"{self.policy_dir} or among the built-in templates: "
                    f"{', '.join(builtin_templates())})",
                )
            if source.key in (*stack, file.key):
                names = [self.cache[k].name for k in (*stack, file.key) if k in self.cache]
                cycle = " -> ".join([*names, self.parse(source).name])
                _fail(file.path, node, f"extends cycle: {cycle}")
            chain.extend(self.effective(self.parse(source), (*stack, file.key)))
        return chain


def _rules_of(files: list[_PolicyFile]) -> Iterator[Rule]:
    seen: set[str] = set()
    for file in files:
        # A parent reached twice (a diamond) contributes its rules once.
        if file.key not in seen:
            seen.add(file.key)
            yield from file.rules


def _first(files: list[_PolicyFile], attribute: str) -> Any:
    for file in files:
        value = getattr(file, attribute)
        if value is not None:
            return value
    return None


def _build(resolver: _Resolver, source: PolicySource) -> Policy:
    root = resolver.parse(source)
    files = resolver.effective(root)
    rules = list(_rules_of(files))
    defined: dict[str, Rule] = {}
    for rule in rules:
        if rule.id in defined:
            first = defined[rule.id]
            owner = next(f for f in files if first in f.rules)
            raise PolicyError(
                first.source.path,
                owner.rule_id_nodes[first.id].start_mark.line + 1,
                owner.rule_id_nodes[first.id].start_mark.column + 1,
                f"duplicate rule id '{rule.id}' in the effective policy "
                f"(also defined at {rule.source})",
                rule.id,
            )
        defined[rule.id] = rule
    rules.sort(key=lambda r: r.priority)  # stable: child first at equal priority
    sections = {
        attribute: value
        for attribute in (
            "description",
            "version",
            "default",
            "on_violation",
            "env",
            "limits",
            "approval",
            "audit_level",
        )
        if (value := _first(files, attribute)) is not None
    }
    return Policy(
        name=root.name,
        rules=tuple(rules),
        extends=tuple(reference for reference, _ in root.extends),
        source=root.path,
        **sections,
    )


def load_source(source: PolicySource, policy_dir: Path) -> Policy:
    """Load an already found policy source, applying `extends`; raises PolicyError."""
    return _build(_Resolver(policy_dir), source)


def load_policy_file(path: str | Path, policy_dir: Path | None = None) -> Policy:
    """Load the policy at `path`, applying `extends`; raises PolicyError."""
    directory = policy_dir if policy_dir is not None else _default_policy_dir()
    return _build(_Resolver(directory), _file_source(Path(path), str(path)))


def load_policy_text(text: str, source: str = "<string>", policy_dir: Path | None = None) -> Policy:
    """Load a policy from YAML text; relative `extends` paths are relative to the cwd."""
    directory = policy_dir if policy_dir is not None else _default_policy_dir()
    return _build(_Resolver(directory), PolicySource(source, source, Path.cwd(), text))


def resolve_policy(name_or_path: str, policy_dir: Path) -> Policy:
    """Load a `--policy` value: a path, or a name in `policy_dir`, then a built-in template."""
    source = find_policy(name_or_path, policy_dir, None, None)
    if source is None:
        kind = "file" if is_path_reference(name_or_path) else "policy"
        raise PolicyError(
            name_or_path,
            1,
            1,
            f"no such {kind} (expected a path, or a name in {policy_dir} or among the "
            f"built-in templates: {', '.join(builtin_templates())})",
        )
    return _build(_Resolver(policy_dir), source)


def _default_policy_dir() -> Path:
    from ..paths import default_locations

    return default_locations().policy_dir
