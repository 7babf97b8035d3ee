"""Learn a policy from a run: the would-deny and deny records in, policy YAML out.

`agentsup policy suggest` reads the decision records of an agent's last run
(a `run --shadow` one, or an enforced one) and writes the smallest policy
that `extends` the one the run used and lets the recorded actions pass.

Generalisation (only for actions the policy's `default` refused; an action
an explicit rule refused gets an exact rule just before that rule):
- a file in a tool's cache or configuration directory under the home
  directory (`~/.cache/TOOL`, `~/.config/TOOL`, `~/.local/share/TOOL`,
  `~/.TOOL`) becomes `DIR/**`;
- three or more files in one directory (not `/` or the home directory)
  become `DIR/*`;
- a command line stays exact, unless a program ran with three or more
  different command lines: then every command line of that program;
- everything else (a connect, a request, a variable, SQL) stays exact.

Never learned: what the guard refuses.  The guard is every `deny` rule of
the run's policy or of `strict` that is critical, or high and about reading
files, or named `secret-*`: secrets, credentials, histories, destructive and
privilege-raising commands; nor is a command line naming a secret.  When
the policy extended lacks some of strict's guard rules, the suggestion
carries copies of them, so that no generalised rule can reach a secret.
agentsup's own refusals (rules named `agentsup-*`: self-protection, the
kernel floor) are never learned either.

Pure: records and loaded policies in, text out.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..events import DEFAULT_RULE_ID, FILE_ACTIONS, ActionType, Event, Severity, Verdict
from .engine import CompiledPolicy, RunContext, beneath, compile_policy
from .model import Policy, Rule, connects_to_an_ip_literal

GUARD_NAME = "agentsup-shadow-guard"
AGENTSUP_RULE_PREFIX = "agentsup-"
MANY_FILES = 3  # this many files of one directory become `DIR/*`
MANY_COMMANDS = 3  # this many command lines of one program become the program
_TOOL_PARENTS = (".cache", ".config", ".local/share", ".local/state")


def is_guard_rule(rule: Rule) -> bool:
    """Whether a rule refuses something no learning may ever allow."""
    if rule.decision is not Verdict.DENY:
        return False
    if rule.id.startswith("secret-") or rule.severity is Severity.CRITICAL:
        return True
    return rule.severity is Severity.HIGH and ActionType.FILE_READ in rule.actions


def guard_rules(*policies: Policy) -> tuple[Rule, ...]:
    """The guard rules of these policies, each id once, first seen kept."""
    found: dict[str, Rule] = {}
    for policy in policies:
        for rule in policy.rules:
            if is_guard_rule(rule):
                found.setdefault(rule.id, rule)
    return tuple(found.values())


def compile_guard(context: RunContext, *policies: Policy) -> CompiledPolicy:
    """A policy that denies what the guard rules deny and allows the rest."""
    guard = Policy(name=GUARD_NAME, rules=guard_rules(*policies), default=Verdict.ALLOW)
    return compile_policy(guard, context)


def guarded(guard: CompiledPolicy, action: ActionType, target: str) -> str | None:
    """The guard rule that refuses the action, or None."""
    decision = guard.evaluate(Event(action, target))
    return decision.rule_id if decision.verdict is Verdict.DENY else None


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused (or would-be refused) action of the run."""

    action: ActionType
    target: str
    rule: str
    priority: int | None  # the refusing rule's priority; None for the default


@dataclass(slots=True)
class _Draft:
    """A rule `policy suggest` is building: what it lets through, and where it goes."""

    actions: set[ActionType] = field(default_factory=set)
    priority: int = 0
    covers: int = 0  # how many recorded actions it lets through


def last_run(records: Iterable[Mapping[str, object]], agent_id: str) -> list[Mapping[str, object]]:
    """The records of `agent_id`'s most recent run, its start record first ([] if none)."""
    run: list[Mapping[str, object]] = []
    for record in records:
        if record.get("agent") != agent_id:
            continue
        if record.get("kind") == "lifecycle" and record.get("event") == "start":
            run = [record]
        elif run:
            run.append(record)
    return run


def refusals(
    run: Sequence[Mapping[str, object]], parent: Policy, guard: CompiledPolicy
) -> list[Refusal]:
    """The refused actions of a run a policy could allow: deduplicated, guard excluded."""
    priorities = {rule.id: rule.priority for rule in parent.rules}
    seen: set[tuple[ActionType, str]] = set()
    found: list[Refusal] = []
    for record in run:
        if record.get("kind") != "decision" or record.get("decision") != "deny":
            continue
        rule, action_name, target = (
            record.get("rule"),
            record.get("action_type"),
            record.get("target"),
        )
        if not isinstance(rule, str) or not isinstance(target, str):
            continue
        if rule.startswith(AGENTSUP_RULE_PREFIX) or not isinstance(action_name, str):
            continue
        try:
            action = ActionType(action_name)
        except ValueError:
            continue
        if (action, target) in seen or guarded(guard, action, target):
            continue
        if action is ActionType.SHELL_EXECUTE and _names_a_secret(guard, target):
            continue  # the read itself stays refused; a rule for the command would invite it
        if rule != DEFAULT_RULE_ID and rule not in priorities:
            continue  # a rule the policy no longer has (reloaded): nothing to place
        seen.add((action, target))
        found.append(Refusal(action, target, rule, priorities.get(rule)))
    return found


def _names_a_secret(guard: CompiledPolicy, command_line: str) -> bool:
    return any(
        guarded(guard, ActionType.FILE_READ, word)
        for word in command_line.split(" ")
        if word.startswith("/")
    )


def _glob_literal(text: str) -> str:
    return re.sub(r"([\\*?\[{])", r"\\\1", text)


def _regex_literal(text: str) -> str:
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


class _Templater:
    """Paths written with `{workspace}` and `{home}` where they apply."""

    def __init__(self, context: RunContext) -> None:
        roots = [("{workspace}", context.workspace)]
        roots += [("{home}", home) for home in _homes(context)]
        self.roots = [(name, value.rstrip("/") or "/") for name, value in roots if value]

    def glob(self, path: str, tail: str = "") -> str:
        for name, root in self.roots:
            if root != "/" and beneath(path, root):
                return name + _glob_literal(path[len(root) :]) + tail
        return _glob_literal(path) + tail


def _homes(context: RunContext) -> tuple[str, ...]:
    """The home as named and its real path: targets are real paths, `{home}` is both."""
    return tuple(dict.fromkeys(home for home in (context.home, context.home_real) if home))


def _tool_dir_of(path: str, context: RunContext) -> str | None:
    for home in _homes(context):
        if (tool := _tool_dir(path, home)) is not None:
            return tool
    return None


def _tool_dir(path: str, home: str) -> str | None:
    """The cache or configuration directory of one tool that `path` lies in, or None."""
    if not home or home == "/" or not path.startswith(home.rstrip("/") + "/"):
        return None
    rest = path[len(home.rstrip("/")) + 1 :]
    for parent in _TOOL_PARENTS:
        if rest.startswith(parent + "/"):
            return f"{home}/{parent}/{rest[len(parent) + 1 :].split('/')[0]}"
    first, _, below = rest.partition("/")
    if first.startswith(".") and below and first not in (".", ".."):
        return f"{home}/{first}"
    return None


def _dir_is_safe(guard: CompiledPolicy, directory: str) -> bool:
    """Whether a directory, as far as one probe can tell, holds nothing the guard refuses."""
    return not any(
        guarded(guard, action, probe)
        for probe in (directory, directory + "/agentsup-probe")
        for action in (ActionType.FILE_READ, ActionType.FILE_WRITE)
    )


def _program(command_line: str) -> str:
    return command_line.split(" ", 1)[0]


def suggest(
    run: Sequence[Mapping[str, object]],
    parent: Policy,
    strict: Policy,
    context: RunContext,
    *,
    extends: str,
    name: str,
) -> str:
    """The YAML text of the smallest policy extending `extends` that lets `run` pass."""
    guard = compile_guard(context, parent, strict)
    found = refusals(run, parent, guard)
    templater = _Templater(context)
    # Learned allows come after every rule of the policy extended, so its
    # denies (the guard among them) keep deciding whatever they match.
    after_all = max([100, *(rule.priority for rule in parent.rules)]) + 1
    globs: dict[tuple[str, str], _Draft] = defaultdict(_Draft)  # (kind, text) -> draft

    def add(kind: str, text: str, action: ActionType, priority: int) -> None:
        draft = globs[(kind, text)]
        draft.actions.add(action)
        draft.priority = max(draft.priority, priority)
        draft.covers += 1

    default_files = [r for r in found if r.rule == DEFAULT_RULE_ID and r.action in FILE_ACTIONS]
    by_dir = Counter(os.path.dirname(r.target) for r in default_files)
    lines_of = defaultdict(set)
    for refusal in found:
        if refusal.rule == DEFAULT_RULE_ID and refusal.action is ActionType.SHELL_EXECUTE:
            lines_of[_program(refusal.target)].add(refusal.target)
    for refusal in found:
        action, target = refusal.action, refusal.target
        if refusal.rule != DEFAULT_RULE_ID:
            # Just before the rule that refused it, and exactly this target.
            assert refusal.priority is not None
            exact = templater.glob(target) if action in FILE_ACTIONS else _glob_literal(target)
            add("target", exact, action, refusal.priority)
            continue
        if action in FILE_ACTIONS:
            tool = _tool_dir_of(target, context)
            directory = os.path.dirname(target)
            if tool is not None and _dir_is_safe(guard, tool):
                add("target", templater.glob(tool, "/**"), action, after_all)
            elif (
                by_dir[directory] >= MANY_FILES
                and directory not in ("/", *(home.rstrip("/") for home in _homes(context)))
                and _dir_is_safe(guard, directory)
            ):
                add("target", templater.glob(directory, "/*"), action, after_all)
            else:
                add("target", templater.glob(target), action, after_all)
        elif (
            action is ActionType.SHELL_EXECUTE and len(lines_of[_program(target)]) >= MANY_COMMANDS
        ):
            program = _regex_literal(_program(target))
            add("pattern", f"^{program}(?:\\s|\\Z)", action, after_all)
        else:
            add("target", _glob_literal(target), action, after_all)

    have = {rule.id for rule in parent.rules}
    missing_guard = [rule for rule in guard_rules(strict) if rule.id not in have]
    rules: list[dict[str, object]] = [_rule_yaml(rule) for rule in missing_guard] if globs else []
    used = set(have) | {rule.id for rule in missing_guard}
    for (kind, text), draft in sorted(globs.items(), key=lambda item: item[1].priority):
        rule_id = _rule_id(text, draft.actions, used)
        rules.append(
            {
                "id": rule_id,
                "actions": sorted(str(action) for action in draft.actions),
                kind: text,
                "decision": "allow",
                "priority": draft.priority,
            }
        )
    document: dict[str, object] = {
        "name": name,
        "description": f"{extends} plus what agent '{context.agent_id}' needed "
        f"({len(found)} refused action(s) learned by agentsup policy suggest)",
        "version": "1.0",
        "extends": [extends],
        **_network_key(globs, parent),
        "rules": rules,
    }
    header = (
        f"# Suggested by `agentsup policy suggest --agent {context.agent_id}`: the rules its\n"
        f"# last run needed on top of {extends}. Read them before using them.\n"
    )
    if missing_guard and globs:
        header += (
            f"# {len(missing_guard)} rule(s) copied from strict keep secrets and destructive\n"
            f"# commands refused whatever the learned rules say.\n"
        )
    import yaml  # here, not at the top: the run path imports this module, not PyYAML

    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1000)


def _network_key(globs: Mapping[tuple[str, str], _Draft], parent: Policy) -> dict[str, str]:
    """`network:` for learned connects to addresses, said rather than left to the
    rules (an address rule alone means the host's network, and `check` warns
    of it; new user 18): `proxy` where they are all loopback (the agent's own
    servers, in its own namespace during the run), `direct` where one is not."""
    if parent.network is not None:
        return {}
    addresses = [
        text.lstrip("\\")
        for (kind, text), draft in globs.items()
        if connects_to_an_ip_literal(
            Rule(
                "learned",
                frozenset(draft.actions),
                Verdict.ALLOW,
                target=text if kind == "target" else None,
                pattern=text if kind == "pattern" else None,
            )
        )
    ]
    if not addresses:
        return {}
    loopback = all(text.startswith(("127.", "[::1]")) for text in addresses)
    return {"network": "proxy" if loopback else "direct"}


def _rule_yaml(rule: Rule) -> dict[str, object]:
    """A rule as it would be written in a policy file."""
    entry: dict[str, object] = {
        "id": rule.id,
        "actions": sorted(str(action) for action in rule.actions),
    }
    if rule.target is not None:
        entry["target"] = rule.target
    else:
        entry["pattern"] = rule.pattern
    if rule.except_globs:
        entry["except"] = list(rule.except_globs)
    entry.update(decision=str(rule.decision), priority=rule.priority, severity=str(rule.severity))
    if rule.on_violation is not None:
        entry["on_violation"] = str(rule.on_violation)
    if rule.message:
        entry["message"] = rule.message
    return entry


def _rule_id(text: str, actions: set[ActionType], used: set[str]) -> str:
    """`learned-<what>-<where>`, unique among `used` (which it joins)."""
    kinds = sorted({str(action).split("_")[0] for action in actions})
    words = re.findall(r"[A-Za-z0-9]+", text.replace("{workspace}", "ws").replace("{home}", "home"))
    # A path's last names; an address whole (`127-0-0-1-9`, not `0-1-9`).
    named = words if ActionType.NETWORK_CONNECT in actions else words[-3:]
    tail = "-".join(named).lower()[:40] or "any"
    base = f"learned-{'-'.join(kinds)}-{tail}"
    candidate, number = base, 2
    while candidate in used:
        candidate, number = f"{base}-{number}", number + 1
    used.add(candidate)
    return candidate
