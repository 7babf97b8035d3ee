"""Compiling a policy for one run, and the pure evaluator.

`compile_policy(policy, ctx)` fills in the placeholders, keeps only the rules
for this agent id, and builds, per action type, one RE2 set of all its rules'
patterns (plus their `except` globs).  One linear pass over the target
reports every rule that matches; the lowest index is the first rule in
priority order, and `evaluate` returns that rule's precomputed `Decision`.
No target can make a rule backtrack (see `linear.py`), and a target longer
than MAX_TARGET_LENGTH is refused before any rule sees it.

The default decision (no rule matched) has rule id DEFAULT_RULE_ID, severity
medium when the default is deny and low otherwise, and the policy's
`on_violation`.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..events import (
    DEFAULT_RULE_ID,
    FILE_ACTIONS,
    PATH_ACTIONS,
    ActionType,
    AuditLevel,
    Decision,
    Event,
    Response,
    Severity,
    Verdict,
    ViolationMode,
    response_for,
)
from . import linear, matchers
from .linear import LinearRegex, PatternError, encode_target
from .matchers import GlobMatcher, Matcher, PlaceholderValues
from .model import Approval, Limits, Policy, PolicyError, Rule

# The longest target any rule is run on.  Matching is linear, so this bounds
# one evaluation (about a millisecond); 128 KiB is Linux's MAX_ARG_STRLEN and
# GNU xargs' default command buffer, so no command line xargs builds is refused.
MAX_TARGET_LENGTH = 128 * 1024
TARGET_TOO_LONG_RULE = "agentsup-target-too-long"

# Verdicts (and, for deny, violation modes) under which the action goes ahead.
_PROCEEDING_VERDICTS = frozenset(
    {Verdict.ALLOW, Verdict.WARN, Verdict.LOG, Verdict.REQUIRE_APPROVAL}
)
_PROCEEDING_DENY_MODES = frozenset({ViolationMode.SIGWARN, ViolationMode.LOG_ONLY})


def _python_prefixes() -> tuple[str, ...]:
    return tuple(dict.fromkeys((sys.base_prefix, sys.prefix)))


def invoking_home() -> str:
    """`{home}` for a run as the user running agentsup: `$HOME`, else the password file's."""
    return os.environ.get("HOME") or os.path.expanduser("~")


# agentsup's own code: a launch binds it back, read-only, into a private /tmp
# that covers it (an editable checkout under /tmp).
_AGENTSUP_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def beneath(path: str, root: str) -> bool:
    """Whether `path` is `root` or lies beneath it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class RunContext:
    """What is fixed for one run: the values of the placeholders, and the agent id."""

    workspace: str
    home: str
    agent_id: str
    python_prefixes: tuple[str, ...] = field(default_factory=_python_prefixes)
    # The home's real path, where a symlink leads to it: targets are real
    # paths, so `{home}` stands for both (else `{home}/.ssh/**` never matches).
    home_real: str = ""
    # Facts of the run the policy cannot be fooled about, each false unless
    # the launch guarantees it (`own_socket_facts`): the directories that are
    # a tmpfs of the agent's own (`{private_tmp}`), and whether its abstract
    # unix sockets are its own (`{private_abstract}`).
    private_tmp: tuple[str, ...] = ()
    private_abstract: bool = False
    # Other host files the launch binds back into a private /tmp that covers
    # them (the program and its executable): `{own_tmp}` has no value then.
    tmp_binds: tuple[str, ...] = ()

    @classmethod
    def for_run(
        cls,
        workspace: str,
        home: str,
        agent_id: str,
        *,
        realpath: Callable[[str], str] = os.path.realpath,
        sockets: OwnSockets | None = None,
    ) -> RunContext:
        """The context of a run, as `agentsup run` and `policy explain`/`suggest` fill it.

        The one place it is built, so that what `explain` decides is what a
        run decides.  File targets are real paths: `{workspace}` is the
        workspace's real path, and `{home}` stands for the home as given and
        its real path (a symlinked home or workspace must not lose a rule).
        `sockets` are the launch's facts (kernel/namespaces.py
        `own_sockets_here`); none, when not given.
        """
        facts = sockets or OwnSockets((), False)
        return cls(
            realpath(workspace),
            home,
            agent_id,
            home_real=realpath(home),
            private_tmp=facts.private_tmp,
            private_abstract=facts.private_abstract,
        )

    @property
    def own_tmp(self) -> tuple[str, ...]:
        """`{own_tmp}`: the private /tmp and /var/tmp when everything in them is
        the agent's own making, as nothing of the host's is bound back in
        beneath them (a workspace, a home, a Python, agentsup or the program
        under /tmp).  No value otherwise."""
        host = (
            self.workspace,
            self.home,
            self.home_real,
            *self.python_prefixes,
            _AGENTSUP_ROOT,
            *self.tmp_binds,
        )
        if any(beneath(path, root) for root in self.private_tmp for path in host if path):
            return ()
        return self.private_tmp

    def placeholder_values(self) -> dict[str, tuple[str, ...]]:
        raw = {
            "workspace": (self.workspace,),
            "home": (self.home, self.home_real) if self.home_real else (self.home,),
            "agent_id": (self.agent_id,),
            "python": self.python_prefixes,
            "private_tmp": self.private_tmp,
            "own_tmp": self.own_tmp,
            # The prefix of an abstract socket's target (`unix:@name`).
            "private_abstract": ("@",) if self.private_abstract else (),
        }
        return {
            name: tuple(dict.fromkeys(matchers.placeholder_value(name, v) for v in values))
            for name, values in raw.items()
        }


class OwnSockets(NamedTuple):
    """Which unix sockets only the agent itself can have made: `RunContext`'s facts."""

    private_tmp: tuple[str, ...]
    private_abstract: bool


def own_socket_facts(
    namespaces: Collection[str], may_lack: Collection[str], *, tmp_dirs: Sequence[str]
) -> OwnSockets:
    """The facts for a launch with `namespaces`, any of `may_lack` allowed to go missing.

    A namespace counts only when the run cannot start without it.
    - `tmp_dirs` (/tmp, /var/tmp) are a tmpfs of the agent's own when it
      surely has its own mount namespace: no one else can make a socket
      there.  (What the launch binds back in, such as a home under /tmp, is
      the host's: rules on `{private_tmp}` must except it.)
    - Abstract sockets are the agent's own when it surely has its own network
      namespace: they live in one.  Landlock's abstract scope (ABI 6) is not
      enough: it keeps the agent's connects in, but a host process can still
      connect to a name the agent bound, and take it for a host service's.
    Fails closed: anything not sure is no fact.
    """

    def sure(name: str) -> bool:
        return name in namespaces and name not in may_lack

    return OwnSockets(
        private_tmp=tuple(tmp_dirs) if sure("mount") else (),
        private_abstract=sure("net"),
    )


def unix_sockets_only(rule: Rule) -> bool:
    """True when every target `rule` can match is a unix socket's (`unix:...`).

    Only a target glob with that literal start, or a `^`/`\\A`-anchored
    pattern with it and no alternative beside it at the top level, counts.
    """
    if rule.target is not None:
        return rule.target.startswith("unix:")
    pattern = rule.pattern or ""
    for anchor in ("^unix:", "\\Aunix:"):
        if pattern.startswith(anchor):
            return not matchers.has_top_level_alternation(pattern)
    return False


class CompiledRule(NamedTuple):
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


class Attempt(NamedTuple):
    """A rule tried before the deciding one, and why it did not match."""

    rule: CompiledRule
    reason: str


class Explanation(NamedTuple):
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


class _Table:
    """The rules of one action type as one RE2 set; index i is the i-th rule in priority order.

    Each rule's `except` globs follow the rules in the set: rule i's are the
    indices `except_ranges[i]` (an empty range for most rules).  `paths`
    says whether targets are paths, to be normalised first.
    """

    __slots__ = ("decisions", "except_ranges", "match", "paths", "rules", "size")

    def __init__(self, rules: list[CompiledRule], paths: bool, *, fallback: bool = False) -> None:
        """PatternError when RE2 cannot hold the set; with `fallback`, every
        target is matched rule by rule instead (the same decisions, slower)."""
        patterns = [rule.matcher.regex for rule in rules]
        ranges: list[tuple[int, int]] = []
        for rule in rules:
            first = len(patterns)
            patterns.extend(excepted.regex for excepted in rule.excepts)
            ranges.append((first, len(patterns)))
        try:
            self.match = linear.PatternSet(patterns).raw_match
        except PatternError:
            if not fallback:
                raise
            self.match = _no_set
        self.size = len(rules)
        self.decisions = tuple(rule.decision for rule in rules)
        self.except_ranges = tuple(ranges)
        self.rules = tuple(rules)
        self.paths = paths

    def plain_table(
        self,
    ) -> tuple[Callable[[bytes], list[int] | None] | None, int, tuple[PlainEntry, ...]]:
        """As `_PathRules.plain_table`: rule i is pattern i (None: no set, rule by rule)."""
        entries = tuple(
            PlainEntry(frozenset(rule.rule.actions), index, low, high, plain_flags(decision))
            for index, (rule, (low, high), decision) in enumerate(
                zip(self.rules, self.except_ranges, self.decisions, strict=True)
            )
        )
        patterns = entries[-1].except_high if entries else 0
        return (None if self.match is _no_set else self.match), patterns, entries

    def resolve(self, hits: list[int], default: Decision) -> Decision:
        """The first rule among `hits` that none of its own `except` globs excludes."""
        for index in sorted(hit for hit in hits if hit < self.size):
            low, high = self.except_ranges[index]
            if not any(low <= hit < high for hit in hits):
                return self.decisions[index]
        return default

    def one_by_one(self, data: bytes, default: Decision) -> Decision:
        """Each rule on its own: for when the set's DFA gave up.  Still linear."""
        for rule in self.rules:
            if rule.matcher.compiled.search(data) and not any(
                excepted.compiled.search(data) for excepted in rule.excepts
            ):
                return rule.decision
        return default


# What a decision is to the broker's native path (`CompiledPolicy.plain_tables`).
PLAIN = 1  # an allow with no rate limit: asked for no record
PROCEEDS = 2  # the action goes ahead (an allow, log or warn; a deny that only warns or logs)


def plain_flags(decision: Decision) -> int:
    plain = decision.verdict is Verdict.ALLOW and decision.rate_limit is None
    return (PLAIN if plain else 0) | (PROCEEDS if response_for(decision).proceeds else 0)


class PlainEntry(NamedTuple):
    """One rule of a set, for the native path: the actions it decides, the
    index of its pattern, its `except` globs' indices (from low, to before
    high) and its decision's `plain_flags`."""

    actions: frozenset[ActionType]
    pattern: int
    except_low: int
    except_high: int
    flags: int


class PlainTables(NamedTuple):
    """The policy as the broker's native path decides with it (`CompiledPolicy.plain_tables`).

    Each set is RE2's own match, reporting a catch-all at index `patterns`
    (an empty answer: its DFA gave up, and the judge decides).  A path
    action's decision is its first entry, in order, whose pattern matched and
    whose `except` globs did not; shell_execute's the same over its own set.
    """

    path_match: Callable[[bytes], list[int] | None] | None
    path_patterns: int
    path_entries: tuple[PlainEntry, ...]
    shell_match: Callable[[bytes], list[int] | None] | None
    shell_patterns: int
    shell_entries: tuple[PlainEntry, ...]
    default_flags: int
    refusing_roots: tuple[str, ...]  # `refused_beneath`'s roots
    max_length: int


def _no_set(_data: bytes) -> None:
    """A set that always gives up: `evaluate` then goes rule by rule."""
    return None


class _PathRules:
    """Every rule on a path action, with its `except` globs, as one RE2 set.

    One pass over a target answers all six path actions: an action's
    decision is its first rule, in priority order, that matched and that
    none of its own excepts excluded (what each action's `_Table` says).
    Targets with the same hits get the same decisions, so those are kept
    per set of hits: a judge asking three actions of a new file name pays
    one match and three lookups.  The last target's hits are kept too,
    since a target is most often asked for several actions in a row.
    """

    __slots__ = ("_decided", "_default", "_entries", "_last", "_match")

    def __init__(self, rules: Sequence[CompiledRule], default: Decision) -> None:
        """PatternError when RE2 cannot hold the set."""
        patterns: list[str] = []
        # (actions, index of the rule's own pattern, its excepts' range, decision)
        entries: list[tuple[frozenset[ActionType], int, range, Decision]] = []
        for rule in rules:
            if not (rule.applies and rule.rule.actions & PATH_ACTIONS):
                continue
            index = len(patterns)
            patterns.append(rule.matcher.regex)
            patterns.extend(excepted.regex for excepted in rule.excepts)
            entries.append(
                (rule.rule.actions, index, range(index + 1, len(patterns)), rule.decision)
            )
        self._match = linear.PatternSet(patterns).raw_match
        self._entries = tuple(entries)
        self._default = default
        self._decided: dict[frozenset[int], dict[ActionType, Decision]] = {}
        self._last: tuple[bytes, frozenset[int] | None] = (b"", None)

    def hits(self, data: bytes) -> frozenset[int] | None:
        """The indices of every pattern `data` matches; None when the DFA gave up."""
        last, hits = self._last
        if data == last and hits is not None:
            return hits
        found = self._match(data)
        hits = frozenset(found) if found else None
        self._last = data, hits
        return hits

    def decision(self, hits: frozenset[int], action: ActionType) -> Decision:
        decided = self._decided.get(hits)
        if decided is None:
            if len(self._decided) >= _DECIDED_HIT_SETS:
                self._decided.clear()
            decided = self._decided[hits] = {}
        decision = decided.get(action)
        if decision is None:
            decision = decided[action] = next(
                (
                    decision
                    for actions, index, excepts, decision in self._entries
                    if action in actions
                    and index in hits
                    and not any(excepted in hits for excepted in excepts)
                ),
                self._default,
            )
        return decision

    def plain_table(
        self,
    ) -> tuple[Callable[[bytes], list[int] | None], int, tuple[PlainEntry, ...]]:
        """The set's match, its number of patterns, and each rule's entry, in priority order."""
        entries = tuple(
            PlainEntry(actions, index, excepts.start, excepts.stop, plain_flags(decision))
            for actions, index, excepts, decision in self._entries
        )
        patterns = entries[-1].except_high if entries else 0
        return self._match, patterns, entries


# Sets of hits whose decisions `_PathRules` keeps: a run sees a few dozen.
_DECIDED_HIT_SETS = 4096


class _LazyTables(dict[ActionType, _Table]):
    """The tables of a cached policy, each built when an action of its type is first
    decided: a run decides a few types, and each table is an RE2 set to compile."""

    def __init__(self, build: Callable[[ActionType], _Table]) -> None:
        super().__init__()
        self._build = build

    def __missing__(self, action: ActionType) -> _Table:
        table = self[action] = self._build(action)
        return table


RuleMatchers = tuple[Matcher, tuple[GlobMatcher, ...]]  # a rule's target and its excepts


class CompiledPolicy:
    """A policy ready to decide events for one run.  `evaluate` is pure.

    `built`, when given, are the rules' matchers for `ctx` as `rule_matchers`
    builds them (the policy cache keeps their regexes); else they are built here.
    With `checked`, they are known to compile, each action's rules as one set
    too (the cache stored them once they did): each set is compiled when first
    needed, and one RE2 cannot hold after all (rules scoped to another agent
    made the stored sets) is matched rule by rule, to the same decisions.

    Building them asks `realpath` about the literal roots of the rules that
    refuse or hold a path action (`follows_real_roots`): file targets are
    real paths, so such a rule also matches where its roots really are.
    """

    def __init__(
        self,
        policy: Policy,
        ctx: RunContext,
        built: Sequence[RuleMatchers] | None = None,
        *,
        checked: bool = False,
        realpath: Callable[[str], str] = os.path.realpath,
    ) -> None:
        self.policy = policy
        self.context = ctx
        self.name = policy.name
        self.default: Verdict = policy.default
        self.on_violation: ViolationMode = policy.on_violation
        self.limits: Limits = policy.limits
        self.approval: Approval = policy.approval
        self.audit_level: AuditLevel = policy.audit_level
        # The name of its entry in the state directory's cache (cache.py), when
        # it has one: what keeps derived answers (readlane's) beside it.
        self.cache_name: str | None = None
        if built is None:
            values = ctx.placeholder_values()
            real = functools.cache(realpath)  # `{home}` roots a dozen rules
            built = [
                rule_matchers(rule, values, real if follows_real_roots(rule, policy) else None)
                for rule in policy.rules
            ]
        self.rules: tuple[CompiledRule, ...] = tuple(
            _compile_rule(rule, policy, ctx.agent_id, matcher, excepts)
            for rule, (matcher, excepts) in zip(policy.rules, built, strict=True)
        )
        self.default_decision = Decision(
            verdict=policy.default,
            rule_id=DEFAULT_RULE_ID,
            severity=Severity.MEDIUM if policy.default is Verdict.DENY else Severity.LOW,
            message=f"no rule matched; the policy default is {policy.default}",
            on_violation=policy.on_violation,
            reason="no rule matched",
        )
        self._tables: dict[ActionType, _Table]
        if checked:
            self._tables = _LazyTables(lambda action: self._table(action, fallback=True))
        else:
            try:
                self._tables = {action: self._table(action) for action in ActionType}
            except PatternError as exc:  # too many or too big rules for RE2's memory bound
                raise PolicyError(policy.source, 1, 1, exc.message) from None
        # Refused, not killed: a long xargs line is no attack by itself.  Where
        # the policy only observes an action (log_only, sigwarn), it keeps
        # observing it; one rule that refuses or holds the action makes a target
        # no rule is run on a refusal, or padding would get past that rule.
        self._too_long_modes = {
            action: self.on_violation
            if self.on_violation in _PROCEEDING_DENY_MODES and self._only_observes(action)
            else ViolationMode.BLOCK
            for action in ActionType
        }
        self._env_pass = _any_glob(policy.env.pass_, policy)
        self._env_deny = _any_glob(policy.env.deny, policy)

    def prepare(self, actions: Iterable[ActionType]) -> None:
        """Build the sets that decide `actions` now, not at the first such decision."""
        for action in actions:
            if action not in PATH_ACTIONS or self._path_rules is None:
                _ = self._tables[action]

    def _table(self, action: ActionType, *, fallback: bool = False) -> _Table:
        rules = [rule for rule in self.rules if rule.applies and action in rule.rule.actions]
        return _Table(rules, paths=action in PATH_ACTIONS, fallback=fallback)

    def __repr__(self) -> str:
        applied = sum(rule.applies for rule in self.rules)
        return f"<CompiledPolicy {self.name!r}: {applied} rules, default {self.default}>"

    # --- decisions ---

    def evaluate(self, event: Event) -> Decision:
        """The decision for `event`: first matching rule in priority order, else the default."""
        return self.evaluate_target(event.action, event.target)

    def evaluate_target(self, action: ActionType, target: str) -> Decision:
        """`evaluate` of an event with this action and target (no Event is built)."""
        if len(target) > MAX_TARGET_LENGTH:
            return self.too_long(action, target)
        if action in PATH_ACTIONS:
            if (
                "//" in target
                or target[-1:] == "/"
                or ("/." in target and matchers.needs_normalising(target))
            ):
                target = matchers.normalise_path(target)
            data = target.encode("utf-8", "surrogatepass")  # encode_target, inlined
            paths = self._path_rules
            if paths is not None:
                found = paths.hits(data)
                if found is not None:
                    return paths.decision(found, action)
            return self._in_table(self._tables[action], data)
        return self._in_table(self._tables[action], target.encode("utf-8", "surrogatepass"))

    def _in_table(self, table: _Table, data: bytes) -> Decision:
        """The decision of `table`'s rules alone (one action's) for `data`."""
        hits = table.match(data)
        if not hits:  # the set always reports its catch-all: the DFA gave up
            return table.one_by_one(data, self.default_decision)
        first = min(hits)
        if first >= table.size:
            return self.default_decision  # only the set's catch-all, or an except, matched
        low, high = table.except_ranges[first]
        if low != high:
            for hit in hits:  # a loop, not any(): no generator on the hot path
                if low <= hit < high:
                    return table.resolve(hits, self.default_decision)
        return table.decisions[first]

    def refused_beneath(self, target: str) -> Decision | None:
        """For a move of `target`: the decision of the first rule that refuses a
        file action on something at or beneath it, by the rule's literal root.

        Moving a directory moves all it holds: `project/secret/x` would become
        `elsewhere/secret/x`, which a rule for `{workspace}/project/secret/**`
        no longer names.  (A rule with no literal root, `**/*.pem`, names the
        file wherever it goes.)
        """
        probe = target.rstrip("/") + "/"
        for rule, roots in self._refusing_roots:
            for root in roots:
                if root == target or root.startswith(probe):
                    return rule.decision._replace(
                        reason=f"moving {target} would carry {root}, which this rule "
                        "covers, out from under it"
                    )
        return None

    @functools.cached_property
    def _refusing_roots(self) -> tuple[tuple[CompiledRule, tuple[str, ...]], ...]:
        """Rules that refuse (or hold) a file action, with their literal roots."""
        return tuple(
            (rule, rule.matcher.roots)
            for rule in self.rules
            if rule.applies
            and rule.rule.actions & FILE_ACTIONS
            and not response_for(rule.decision).proceeds
            and rule.matcher.roots is not None
        )

    def plain_tables(self) -> PlainTables:
        """What `evaluate_target` decides with, for the broker's native path:
        the path rules' set and shell_execute's (None where RE2 cannot hold
        one: the judge decides those)."""
        paths = self._path_rules
        path_match, path_patterns, path_entries = (
            paths.plain_table() if paths is not None else (None, 0, ())
        )
        shell_match, shell_patterns, shell_entries = self._tables[
            ActionType.SHELL_EXECUTE
        ].plain_table()
        return PlainTables(
            path_match=path_match,
            path_patterns=path_patterns,
            path_entries=path_entries,
            shell_match=shell_match,
            shell_patterns=shell_patterns,
            shell_entries=shell_entries,
            default_flags=plain_flags(self.default_decision),
            refusing_roots=tuple(root for _rule, roots in self._refusing_roots for root in roots),
            max_length=MAX_TARGET_LENGTH,
        )

    # --- what a move carries with it ---

    def names_could_move(self, old: str, new: str) -> bool:
        """Whether some rule could decide differently on a path beneath `old`
        once it is beneath `new`: then a move of `old` has its tree judged
        (`moved_escape`).  False only when every path rule's literal roots lie
        apart from both: such a rule names nothing beneath either."""
        for roots in self._path_rule_roots:
            if roots is None:
                return True
            for root in roots:
                if _related(root, old) or _related(root, new):
                    return True
        return False

    def moved_escape(self, old: str, new: str, entries: Iterable[str]) -> MoveEscape | None:
        """The check a move of `old` to `new` must also pass, or None.

        `entries` are the paths beneath `old` (relative, as a listing gives
        them); "" is `old` itself, always looked at.  A move gives each entry a
        new name, and the rules follow names: what is refused or held under
        the old name must not go ahead under the new one (`private/key` moved
        to `public/key` under a rule for `**/private/*`), and nothing may
        arrive under a name whose writes are refused (a tree moved into
        `frozen/`).  The answer is that check, (action, name), for the judge
        to refuse: the rule that fired, recorded as it would be for the name.

        A refusal comes before a hold for approval: a person approves one
        name, never the move of another the policy refuses.  A hold counts
        every held entry (`holds`): one approval cannot stand for several.
        """
        hits = self._path_hits
        held: list[tuple[ActionType, str]] = []
        for entry in itertools.chain(("",), entries):
            before = f"{old}/{entry}" if entry else old
            after = f"{new}/{entry}" if entry else new
            if hits(before) == hits(after) is not None:
                continue  # every rule names both alike: every decision is the same
            for action in _MOVED_ACTIONS:
                was = response_for(self.evaluate_target(action, before))
                becomes = response_for(self.evaluate_target(action, after))
                if becomes.proceeds and not was.proceeds:
                    check, refusal = (action, before), was
                elif (
                    was.proceeds
                    and not becomes.proceeds
                    and action is ActionType.FILE_WRITE
                    and entry
                ):
                    check, refusal = (action, after), becomes
                else:
                    continue
                if refusal is not Response.HOLD:
                    return MoveEscape(*check, holds=0)
                held.append(check)
        if not held:
            return None
        return MoveEscape(*held[0], holds=len(held))

    @functools.cached_property
    def _path_rule_roots(self) -> tuple[tuple[str, ...] | None, ...]:
        return tuple(
            rule.matcher.roots
            for rule in self.rules
            if rule.applies and rule.rule.actions & PATH_ACTIONS
        )

    @functools.cached_property
    def _path_rules(self) -> _PathRules | None:
        """Every path rule as one set (`_PathRules`); None when RE2 cannot hold
        it, and each action's own set decides."""
        try:
            return _PathRules(self.rules, self.default_decision)
        except PatternError:
            return None

    def _path_hits(self, path: str) -> frozenset[int] | None:
        """Which path rules (and `except` globs) match a path, as one set of indices.

        Two paths with the same set get the same decision for every path
        action.  None when RE2's DFA gave up: the caller compares decisions.
        """
        paths = self._path_rules
        return None if paths is None else paths.hits(path.encode("utf-8", "surrogatepass"))

    def _only_observes(self, action: ActionType) -> bool:
        """Whether every decision this policy can give `action` lets it go ahead
        at once: no rule for it, nor the default, refuses or holds it."""
        decisions = [self.default_decision]
        decisions += [
            rule.decision for rule in self.rules if rule.applies and action in rule.rule.actions
        ]
        return all(
            decision.verdict is not Verdict.REQUIRE_APPROVAL and _proceeds(decision)
            for decision in decisions
        )

    def too_long(self, action: ActionType, target: str) -> Decision:
        """The deny for a target longer than MAX_TARGET_LENGTH, which no rule is run on."""
        return Decision(
            verdict=Verdict.DENY,
            rule_id=TARGET_TOO_LONG_RULE,
            severity=Severity.HIGH,
            message=f"target too long: more than {MAX_TARGET_LENGTH} characters",
            on_violation=self._too_long_modes[action],
            reason=f"the target has {len(target)} characters; rules are run on at most "
            f"{MAX_TARGET_LENGTH}",
        )

    def explain(self, event: Event, judged: str | None = None) -> Explanation:
        """The decision for `event`, with every rule tried before it and why it missed.

        `judged`: the target as the layers that see the action spell it (a
        network target's one spelling), when that is not as written.
        """
        target = event.target if judged is None else judged
        if len(target) > MAX_TARGET_LENGTH:
            return Explanation(event, target, self.too_long(event.action, target), None, ())
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
        data = encode_target(name)
        return self._env_pass.search(data) and not self._env_deny.search(data)

    def filter_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {name: value for name, value in environ.items() if self.env_allowed(name)}

    # --- the kernel floor ---

    def floor_roots(self, actions: Iterable[ActionType]) -> tuple[str, ...] | None:
        """The fewest paths such that any target a rule lets go ahead lies at or beneath one.

        For building a Landlock floor.  None when no such restriction is
        possible: the default lets actions go ahead, or a rule that does could
        match anything (`**`, an unanchored regex).  `except` is ignored: the
        roots only need to cover a superset.  Rules only for unix sockets
        (`unix_sockets_only`) are left out: `()` for `network_connect` says
        nothing reaches the network.
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
            if unix_sockets_only(rule.rule):
                # A unix socket is reached through the file system, or (an
                # abstract one) in the agent's own network namespace: neither
                # needs the network that namespace and Landlock's TCP rules
                # wall off.  Left out, such a rule keeps the agent both.
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


class MoveEscape(NamedTuple):
    """What a move would let escape: the check to judge (`moved_escape`)."""

    action: ActionType
    target: str
    holds: int  # 0: a refusal; else how many entries a person would have to approve


# The actions a moved name is compared for: each of them follows the name.
_MOVED_ACTIONS = (
    ActionType.FILE_READ,
    ActionType.FILE_WRITE,
    ActionType.FILE_DELETE,
    ActionType.FILE_MOVE,
    ActionType.FILE_CHMOD,
    ActionType.PROCESS_SPAWN,
)


def _related(root: str, path: str) -> bool:
    """True when one of the two is the other or lies beneath it."""
    if root == path or root == "/":
        return True
    return path.startswith(root + "/") or root.startswith(path.rstrip("/") + "/")


def _matches_everything(rule: CompiledRule) -> bool:
    """True for a rule whose target is `**` with no `except`."""
    matcher = rule.matcher
    return isinstance(matcher, GlobMatcher) and matcher.glob == "**" and not rule.excepts


def _proceeds(decision: Decision) -> bool:
    if decision.verdict is Verdict.DENY:
        return decision.on_violation in _PROCEEDING_DENY_MODES
    return decision.verdict in _PROCEEDING_VERDICTS


def _any_glob(patterns: tuple[str, ...], policy: Policy) -> LinearRegex:
    try:
        alternatives = [matchers.env_glob_regex(pattern) for pattern in patterns]
        return LinearRegex("|".join(alternatives) if alternatives else "[^\\x00-\\x{10ffff}]")
    except PatternError as exc:
        raise PolicyError(policy.source, 1, 1, f"bad env glob: {exc.message}") from None


def follows_real_roots(rule: Rule, policy: Policy) -> bool:
    """Whether the rule also names its literal roots by their real paths.

    Targets are real paths: with `~/.aws -> dotfiles/aws`, `{home}/.aws/**`
    must match `{home}/dotfiles/aws/credentials` too.  Only for a rule that
    refuses or holds a path action.  A rule that lets the action go ahead
    (allow, warn, log, a deny that only warns or logs) keeps its spelling:
    matching more, it would also decide targets a later rule refuses, and a
    symlink the agent planted in one run would do that in the next.
    """
    if not rule.actions & PATH_ACTIONS:
        return False
    if rule.decision is Verdict.REQUIRE_APPROVAL:
        return True
    mode = rule.on_violation or policy.on_violation
    return rule.decision is Verdict.DENY and mode not in _PROCEEDING_DENY_MODES


def rule_matchers(
    rule: Rule, values: PlaceholderValues, realpath: Callable[[str], str] | None = None
) -> RuleMatchers:
    """The rule's target matcher and its `except` matchers, placeholders filled in.

    With `realpath`, the target also matches by its literal roots' real paths
    (`matchers.Respelling`); the excepts never do: a wider except refuses less.
    """
    matcher: Matcher
    try:
        if rule.target is not None:
            matcher = matchers.compile_glob(matchers.parse_glob(rule.target), values, realpath)
        else:
            assert rule.pattern is not None
            # A target may hold a newline (a file name, an argument): a rule that
            # refuses or records must not miss it because `.` stops there, nor
            # because RE2's `$` is stricter than Python's (`DELETE FROM t\n`).
            # An allow keeps Python's `.` and RE2's `$`, which match less: narrower is safe.
            refuses = rule.decision is not Verdict.ALLOW
            matcher = matchers.compile_regex(
                matchers.parse_regex(rule.pattern),
                values,
                dot_all=refuses,
                python_dollar=refuses,
                realpath=realpath,
            )
        excepts = tuple(
            matchers.compile_glob(matchers.parse_glob(glob), values) for glob in rule.except_globs
        )
    except PatternError as exc:
        # The loader checked the rule; only a placeholder's value can get here.
        source = rule.source
        raise PolicyError(source.path, source.line, source.column, exc.message, rule.id) from None
    return matcher, excepts


def _compile_rule(
    rule: Rule, policy: Policy, agent_id: str, matcher: Matcher, excepts: tuple[GlobMatcher, ...]
) -> CompiledRule:
    applies = rule.agents is None or any(
        matchers.env_glob_matches(pattern, agent_id) for pattern in rule.agents
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


def compile_policy(
    policy: Policy, ctx: RunContext, *, realpath: Callable[[str], str] = os.path.realpath
) -> CompiledPolicy:
    """Fill in placeholders and agent scoping, and build the fast tables."""
    return CompiledPolicy(policy, ctx, realpath=realpath)
