"""One policy file's YAML, read into a `PolicyFile`: what it sets, with positions.

The YAML is read with `yaml.compose`, so every node keeps its line and
column, and every error names `FILE:LINE:COL` (through `loader._fail`).
Applying `extends` and merging sections is `loader.py`, which imports this
module only when it has a file to parse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml

from ..events import ActionType, AuditLevel, RateLimit, Severity, Verdict, ViolationMode
from .linear import PatternError
from .loader import MAX_YAML_DEPTH, _fail
from .matchers import env_glob_regex, parse_glob, parse_regex
from .model import (
    DEFAULT_PRIORITY,
    DEFAULT_SEVERITY,
    Approval,
    ApprovalTimeoutAction,
    Limits,
    NetworkMode,
    PolicyError,
    Rule,
    SourceLocation,
)

_NETWORK_MODES: tuple[NetworkMode, ...] = ("proxy", "direct")
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
    "network",
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

_MAX_INTEGER = 2**63 - 1  # priorities, limits and rates are 64-bit values to the kernel too

_DEFAULT_VERDICTS = (Verdict.ALLOW, Verdict.DENY, Verdict.WARN)
_ON_TIMEOUT: tuple[ApprovalTimeoutAction, ...] = ("deny", "kill")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"

# libyaml's composer is ~10x faster than the pure-Python one and keeps the
# same line/column marks; fall back where PyYAML was built without it.
_COMPOSE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


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

    def _construct(self, node: yaml.ScalarNode, what: str, kind: str) -> object:
        # An explicit tag (`!!int abc`) or a number too long for Python is
        # refused here, not raised from inside PyYAML.
        try:
            return yaml.SafeLoader("").construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError):
            shown = node.value if len(node.value) <= 40 else node.value[:40] + "..."
            self.fail(node, f"{what} must be {kind}, got {shown!r}")

    def integer(self, node: yaml.Node, what: str, *, positive: bool = False) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            self.fail(node, f"{what} must be an integer, got {_describe(node)}")
        value = self._construct(node, what, "an integer")
        if not isinstance(value, int):
            self.fail(node, f"{what} must be an integer, got {_describe(node)}")
        if abs(value) > _MAX_INTEGER:
            self.fail(node, f"{what} is out of range (at most {_MAX_INTEGER})")
        if positive and value <= 0:
            self.fail(node, f"{what} must be an integer > 0, got {value}")
        return value

    def number(self, node: yaml.Node, what: str) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (_INT, _FLOAT):
            self.fail(node, f"{what} must be a number, got {_describe(node)}")
        value = self._construct(node, what, "a number")
        if not isinstance(value, int | float):
            self.fail(node, f"{what} must be a number, got {_describe(node)}")
        if isinstance(value, int) and abs(value) > _MAX_INTEGER:
            self.fail(node, f"{what} is out of range (at most {_MAX_INTEGER})")
        number = float(value)
        if not number > 0 or number == float("inf"):
            self.fail(node, f"{what} must be a number > 0, got {node.value}")
        return number

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
class PolicyFile:
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
    env: _EnvSection | None = None
    limits: Limits | None = None
    approval: Approval | None = None
    audit_level: AuditLevel | None = None
    network: NetworkMode | None = None


_OPENING_EVENTS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSING_EVENTS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def check_nesting(text: str, path: str) -> None:
    """Refuse nesting deeper than MAX_YAML_DEPTH before composing.

    PyYAML composes recursively: libyaml's composer crashed the process
    (SIGSEGV) on 100,000 `[`, the Python one raises RecursionError.  The
    event stream is flat, and reading stops at the first level too deep.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_COMPOSE_LOADER):
        if isinstance(event, _OPENING_EVENTS):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                mark = event.start_mark
                line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
                raise PolicyError(
                    path,
                    line,
                    column,
                    f"nested more than {MAX_YAML_DEPTH} levels deep (a policy needs a few)",
                )
        elif isinstance(event, _CLOSING_EVENTS):
            depth -= 1


def _compose(text: str, path: str) -> yaml.Node | None:
    try:
        check_nesting(text, path)
        node: yaml.Node | None = yaml.compose(text, Loader=_COMPOSE_LOADER)
    except yaml.YAMLError as exc:
        line, column, problem = yaml_error_place(exc, text)
        raise PolicyError(path, line, column, f"invalid YAML: {problem}") from None
    except UnicodeError as exc:  # text that is not valid Unicode (lone surrogates)
        raise PolicyError(path, 1, 1, f"not valid text: {exc}") from None
    return node


def yaml_error_place(exc: yaml.YAMLError, text: str) -> tuple[int, int, str]:
    """(line, column, problem) of a PyYAML error in `text`, for one `FILE:LINE:COL:` line
    (PyYAML's own message spans several lines, with a caret drawing)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return line, column, exc.problem or exc.context or "invalid YAML"
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML forbids: a position
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return line, column, str(exc.reason)
    return 1, 1, str(exc).splitlines()[0] if str(exc) else "invalid YAML"


def parse_file(text: str, path: str, key: str, directory: Path | None) -> PolicyFile:
    root = _compose(text, path)
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
    if "network" in top:
        values["network"] = reader.choice(top["network"], "network", _NETWORK_MODES)
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
    return PolicyFile(
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


_ENV_LISTS = ("pass", "deny")


@dataclass(frozen=True)
class _EnvSection:
    """`env` as one file writes it: None for a list it does not write."""

    pass_: tuple[tuple[str, SourceLocation], ...] | None
    deny: tuple[tuple[str, SourceLocation], ...] | None
    replace: frozenset[str]


def _parse_env(reader: _Reader, node: yaml.Node) -> _EnvSection:
    env = reader.mapping(node, (*_ENV_LISTS, "replace"), "'env'")
    lists: dict[str, tuple[tuple[str, SourceLocation], ...]] = {}
    for name in _ENV_LISTS:
        if name in env:
            entries = reader.strings(env[name], f"'env.{name}'")
            for glob, item in entries:
                _check_matcher(reader, item, env_glob_regex, glob)
            lists[name] = tuple((glob, _location(reader.path, item)) for glob, item in entries)
    replace: set[str] = set()
    if "replace" in env:
        for name, item in reader.strings(env["replace"], "'env.replace'"):
            if name not in _ENV_LISTS:
                reader.fail(item, f"unknown list '{name}' in 'env.replace' (expected pass, deny)")
            replace.add(name)
    return _EnvSection(lists.get("pass"), lists.get("deny"), frozenset(replace))


def _location(path: str, node: yaml.Node) -> SourceLocation:
    return SourceLocation(path, node.start_mark.line + 1, node.start_mark.column + 1)


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
        items = reader.strings(fields["agents"], "'agents'")
        for glob, item in items:
            _check_matcher(reader, item, env_glob_regex, glob)
        agents = tuple(glob for glob, _ in items)
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
