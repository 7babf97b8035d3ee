"""Compiling a policy for one run, and the pure evaluator.

`compile_policy(policy, ctx)` fills in the placeholders, keeps only the rules
for this agent id, and builds, per action type, one combined regex of all its
rules in priority order:

    (?:(?P<r0>glob0\\Z)|(?P<r1>(?!except\\Z)glob1\\Z)|(?P<r2>(?s:.*?)(?:regex2))|...)

`re.match` tries the alternatives left to right, so the first one that matches
is the first rule in priority order, `m.lastgroup` names it, and `evaluate`
returns that rule's precomputed `Decision`: no allocation on the hot path.
Regexes that would change meaning inside a bigger regex (backreferences,
named groups, global inline flags) are matched on their own, in order.

The default decision (no rule matched) has rule id DEFAULT_RULE_ID, severity
medium when the default is deny and low otherwise, and the policy's
`on_violation`.
"""

from __future__ import annotations

import collections
import fnmatch
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..events import (
    DEFAULT_RULE_ID,
    PATH_ACTIONS,
    ActionType,
    AuditLevel,
    Decision,
    Event,
    Severity,
    Verdict,
    ViolationMode,
)
from . import matchers
from .matchers import GlobMatcher, Matcher, PlaceholderValues
from .model import Approval, Limits, Policy, Rule

# Verdicts (and, for deny, violation modes) under which the action goes ahead.
_PROCEEDING_VERDICTS = frozenset(
    {Verdict.ALLOW, Verdict.WARN, Verdict.LOG, Verdict.REQUIRE_APPROVAL}
)
_PROCEEDING_DENY_MODES = frozenset({ViolationMode.SIGWARN, ViolationMode.LOG_ONLY})


def _python_prefixes() -> tuple[str, ...]:
    return tuple(dict.fromkeys((sys.base_prefix, sys.prefix)))


@dataclass(frozen=True, slots=True)
class RunContext:
    """What is fixed for one run: the values of the placeholders, and the agent id."""

    workspace: str
    home: str
    agent_id: str
    python_prefixes: tuple[str, ...] = field(default_factory=_python_prefixes)

    def placeholder_values(self) -> dict[str, tuple[str, ...]]:
        raw = {
            "workspace": (self.workspace,),
            "home": (self.home,),
            "agent_id": (self.agent_id,),
            "python": self.python_prefixes,
        }
        return {
            name: tuple(dict.fromkeys(matchers.placeholder_value(name, v) for v in values))
            for name, values in raw.items()
        }


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its matchers built for this run.

    `applies` is False when the rule's `agents` do not include this run's
    agent id; such rules are kept only so that `explain` can say so.
    """

    rule: Rule
    matcher: Matcher
    excepts: tuple[GlobMatcher, ...]
    decision: Decision
    applies: bool

    @property
    def id(self) -> str:
        return self.rule.id

    def miss_reason(self, target: str) -> str | None:
        """Why this rule does not match `target`, or None when it does."""
        if not self.applies:
            return "wrong agent (rule is for " + ", ".join(self.rule.agents or ()) + ")"
        if not self.matcher.matches(target):
            return f"target did not match {self.matcher}"
        for excepted in self.excepts:
            if excepted.matches(target):
                return f"excluded by except {excepted}"
        return None

    def branch(self) -> str:
        """This rule as one alternative of the combined regex."""
        if not self.excepts:
            return self.matcher.branch()
        # The matcher first (as a lookahead), so that the `except` globs are
        # only tried for the few targets the rule matches.
        excepted = "|".join(e.branch() for e in self.excepts)
        return f"(?={self.matcher.branch()})(?!{excepted})"


@dataclass(frozen=True, slots=True)
class Attempt:
    """A rule tried before the deciding one, and why it did not match."""

    rule: CompiledRule
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    event: Event
    target: str  # after normalisation
    decision: Decision
    rule: CompiledRule | None  # None: the policy default decided
    tried: tuple[Attempt, ...]


class RateLimiter:
    """Sliding-window counters per rule id; `now` is injected (seconds).

    Only actions that go ahead are counted.  Over the limit, the answer is a
    deny with the same rule id and the rule's `on_violation`.
    """

    def __init__(self) -> None:
        self._windows: dict[str, collections.deque[float]] = {}

    def check(self, decision: Decision, now: float) -> Decision:
        limit = decision.rate_limit
        if limit is None or decision.verdict is Verdict.DENY:
            return decision
        window = self._windows.setdefault(decision.rule_id, collections.deque())
        while window and window[0] <= now - limit.per_seconds:
            window.popleft()
        if len(window) >= limit.max:
            reason = f"rate limit exceeded: more than {limit.max} per {limit.per_seconds:g}s"
            return Decision(
                verdict=Verdict.DENY,
                rule_id=decision.rule_id,
                severity=decision.severity,
                message=reason,
                on_violation=decision.on_violation,
                reason=reason,
                rate_limit=limit,
            )
        window.append(now)
        return decision


# One step of an action's table: a matcher over the target, and the decision
# for each group name it can report as `lastgroup`.
_Step = tuple[Callable[[str], re.Match[str] | None], Mapping[str | None, Decision]]


class _GuardedSearch:
    """A rule matched on its own (not combinable), with its `except` globs."""

    def __init__(self, compiled: CompiledRule) -> None:
        self._rule = compiled

    def __call__(self, target: str) -> re.Match[str] | None:
        matcher = self._rule.matcher
        if isinstance(matcher, GlobMatcher):
            found = matcher.compiled.match(target)
        else:
            found = matcher.compiled.search(target)
        if found is None or any(e.matches(target) for e in self._rule.excepts):
            return None
        return found


def _group(index: int) -> str:
    return f"r{index}"


def _build_table(rules: list[tuple[int, CompiledRule]]) -> tuple[_Step, ...]:
    steps: list[_Step] = []
    batch: list[tuple[int, CompiledRule]] = []

    def flush() -> None:
        if batch:
            alternatives = "|".join(f"(?P<{_group(i)}>{rule.branch()})" for i, rule in batch)
            combined = re.compile("(?:" + alternatives + ")")
            steps.append((combined.match, {_group(i): rule.decision for i, rule in batch}))
            batch.clear()

    for index, rule in rules:
        if rule.matcher.combinable:
            batch.append((index, rule))
            continue
        flush()
        # Any group name the rule's own regex may report maps to its decision.
        names: list[str | None] = [None, *rule.matcher.compiled.groupindex]
        steps.append((_GuardedSearch(rule), dict.fromkeys(names, rule.decision)))
    flush()
    return tuple(steps)


def _first_segment(root: str) -> str | None:
    """`/usr/lib` -> `/usr`; None for `/`, under which anything lies."""
    if root == "/":
        return None
    cut = root.find("/", 1)
    return root[:cut] if cut > 0 else root


def _build_path_tables(
    rules: list[tuple[int, CompiledRule]],
) -> tuple[dict[str, tuple[_Step, ...]], tuple[_Step, ...]]:
    """Tables for path targets, one per first path segment, plus one for any other segment.

    A rule whose matches all lie beneath known roots (`/usr/**`, `^/dev/`) is
    only tried for targets in those roots' first segments; a rule that may
    match anywhere (`**/*.pem`, `/`, an unanchored regex) is tried for every
    target.  Each table keeps priority order, so the first match is the same
    as in the full table: this only skips rules that cannot match.
    """
    segments_of: list[frozenset[str] | None] = []
    for _, rule in rules:
        roots = rule.matcher.roots
        segments = None if roots is None else [_first_segment(root) for root in roots]
        if segments is None or None in segments:
            segments_of.append(None)
        else:
            segments_of.append(frozenset(s for s in segments if s is not None))
    keys = set().union(*(s for s in segments_of if s is not None))
    by_segment = {
        key: _build_table(
            [
                entry
                for entry, segs in zip(rules, segments_of, strict=True)
                if segs is None or key in segs
            ]
        )
        for key in keys
    }
    anywhere = _build_table(
        [entry for entry, segs in zip(rules, segments_of, strict=True) if segs is None]
    )
    return by_segment, anywhere


class CompiledPolicy:
    """A policy ready to decide events for one run.  `evaluate` is pure."""

    def __init__(self, policy: Policy, ctx: RunContext) -> None:
        self.policy = policy
        self.context = ctx
        self.name = policy.name
        self.default: Verdict = policy.default
        self.on_violation: ViolationMode = policy.on_violation
        self.limits: Limits = policy.limits
        self.approval: Approval = policy.approval
        self.audit_level: AuditLevel = policy.audit_level
        values = ctx.placeholder_values()
        self.rules: tuple[CompiledRule, ...] = tuple(
            _compile_rule(rule, policy, ctx.agent_id, values) for rule in policy.rules
        )
        self.default_decision = Decision(
            verdict=policy.default,
            rule_id=DEFAULT_RULE_ID,
            severity=Severity.MEDIUM if policy.default is Verdict.DENY else Severity.LOW,
            message=f"no rule matched; the policy default is {policy.default}",
            on_violation=policy.on_violation,
            reason="no rule matched",
        )
        # Per action type: for path actions, a table per first path segment and
        # one for targets in any other segment; otherwise None and one table.
        self._action_tables: dict[
            ActionType, tuple[dict[str, tuple[_Step, ...]] | None, tuple[_Step, ...]]
        ] = {}
        for action in ActionType:
            applicable = [
                (index, rule)
                for index, rule in enumerate(self.rules)
                if rule.applies and action in rule.rule.actions
            ]
            if action in PATH_ACTIONS:
                self._action_tables[action] = _build_path_tables(applicable)
            else:
                self._action_tables[action] = (None, _build_table(applicable))
        self._env_pass = _any_glob(policy.env.pass_)
        self._env_deny = _any_glob(policy.env.deny)

    def __repr__(self) -> str:
        applied = sum(rule.applies for rule in self.rules)
        return f"<CompiledPolicy {self.name!r}: {applied} rules, default {self.default}>"

    # --- decisions ---

    def evaluate(self, event: Event) -> Decision:
        """The decision for `event`: first matching rule in priority order, else the default."""
        target = event.target
        by_segment, steps = self._action_tables[event.action]
        if by_segment is not None:
            if (
                "//" in target
                or target[-1:] == "/"
                or ("/." in target and matchers.needs_normalising(target))
            ):
                target = matchers.normalise_path(target)
            # Only the rules that can match at or below the target's first segment.
            cut = target.find("/", 1)
            steps = by_segment.get(target[:cut] if cut > 0 else target, steps)
        for match, decisions in steps:
            found = match(target)
            if found is not None:
                return decisions[found.lastgroup]
        return self.default_decision

    def explain(self, event: Event) -> Explanation:
        """The decision for `event`, with every rule tried before it and why it missed."""
        target = event.target
        if event.action in PATH_ACTIONS and matchers.needs_normalising(target):
            target = matchers.normalise_path(target)
        tried: list[Attempt] = []
        for rule in self.rules:
            if event.action not in rule.rule.actions:
                continue
            reason = rule.miss_reason(target)
            if reason is None:
                return Explanation(event, target, rule.decision, rule, tuple(tried))
            tried.append(Attempt(rule, reason))
        return Explanation(event, target, self.default_decision, None, tuple(tried))

    # --- environment ---

    def env_allowed(self, name: str) -> bool:
        """True when `name` is in `env.pass` and not in `env.deny` (case-sensitive globs)."""
        return self._env_pass.match(name) is not None and self._env_deny.match(name) is None

    def filter_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {name: value for name, value in environ.items() if self.env_allowed(name)}

    # --- the kernel floor ---

    def floor_roots(self, actions: Iterable[ActionType]) -> tuple[str, ...] | None:
        """The fewest paths such that any target a rule lets go ahead lies at or beneath one.

        For building a Landlock floor.  None when no such restriction is
        possible: the default lets actions go ahead, or a rule that does could
        match anything (`**`, an unanchored regex).  `except` is ignored: the
        roots only need to cover a superset.
        """
        if self.default_decision.verdict is not Verdict.DENY or _proceeds(self.default_decision):
            return None
        wanted = frozenset(actions)
        roots: set[str] = set()
        for rule in self.rules:
            if not rule.applies or not (rule.rule.actions & wanted):
                continue
            if not _proceeds(rule.decision):
                if wanted <= rule.rule.actions and _matches_everything(rule):
                    break  # a catch-all deny: no later rule is ever reached
                continue
            if rule.matcher.roots is None:
                return None
            roots.update(rule.matcher.roots)
        if "/" in roots:
            return None
        kept: list[str] = []
        for root in sorted(roots):
            if not any(root == k or root.startswith(k + "/") for k in kept):
                kept.append(root)
        return tuple(kept)


def _matches_everything(rule: CompiledRule) -> bool:
    """True for a rule whose target is `**` with no `except`."""
    matcher = rule.matcher
    return isinstance(matcher, GlobMatcher) and matcher.glob == "**" and not rule.excepts


def _proceeds(decision: Decision) -> bool:
    if decision.verdict is Verdict.DENY:
        return decision.on_violation in _PROCEEDING_DENY_MODES
    return decision.verdict in _PROCEEDING_VERDICTS


def _any_glob(patterns: tuple[str, ...]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _compile_rule(
    rule: Rule, policy: Policy, agent_id: str, values: PlaceholderValues
) -> CompiledRule:
    matcher: Matcher
    if rule.target is not None:
        matcher = matchers.compile_glob(matchers.parse_glob(rule.target), values)
    else:
        assert rule.pattern is not None
        matcher = matchers.compile_regex(matchers.parse_regex(rule.pattern), values)
    excepts = tuple(
        matchers.compile_glob(matchers.parse_glob(glob), values) for glob in rule.except_globs
    )
    applies = rule.agents is None or any(
        fnmatch.fnmatchcase(agent_id, pattern) for pattern in rule.agents
    )
    decision = Decision(
        verdict=rule.decision,
        rule_id=rule.id,
        severity=rule.severity,
        message=rule.message or f"{rule.decision} by policy rule '{rule.id}'",
        on_violation=rule.on_violation or policy.on_violation,
        reason=f"matched {matcher} (rule '{rule.id}', priority {rule.priority})",
        rate_limit=rule.rate_limit,
    )
    return CompiledRule(rule, matcher, excepts, decision, applies)


def compile_policy(policy: Policy, ctx: RunContext) -> CompiledPolicy:
    """Fill in placeholders and agent scoping, and build the fast tables."""
    return CompiledPolicy(policy, ctx)
