"""Load policy YAML into frozen `Policy` values, validating everything.

Reading one file's YAML is `yaml_file.py` (imported only when a file is
parsed: a run whose compiled policy comes from the cache never loads
PyYAML).  The YAML is read with `yaml.compose`, so every node keeps its line
and column, and every error names `FILE:LINE:COL`.  A policy is rejected whole on
its first error, never half-loaded; all errors come from `_fail`.  Finding
and reading the files (`--policy` values, names and paths in `extends`) is
`sources.py`.  Bounds: MAX_POLICY_BYTES per file, MAX_YAML_DEPTH levels of
nesting, MAX_EXTENDS_DEPTH files in one extends chain; each file is parsed
and resolved once however often a diamond of `extends` reaches it.

Inheritance: the effective rules are the child's rules, then each parent's
effective rules in `extends` order (a parent reached twice through a diamond
counts once), stably sorted by priority.  Each top-level section (`default`,
`on_violation`, `limits`, `approval`, `audit`, `network`, `description`,
`version`) is
taken whole from the child if it sets it, else from the first parent that
does, else the built-in default; keys missing inside a section take their
built-in defaults.

`env` is the exception: its lists merge.  For each of `env.pass` and
`env.deny`, the inherited list is the union of the parents' effective lists
(in `extends` order, each entry once), or the built-in default for a policy
that extends nothing.  A child that writes the list adds its entries to the
inherited ones; a child that also names the list in `env.replace`
(`replace: [pass]`, `[deny]` or `[pass, deny]`) replaces them instead.  A
child that does not write the list inherits it.  So a child cannot drop a
parent's `deny` entry without saying `replace: [deny]`.

Warnings (`Policy.warnings`, one `FILE:LINE:COL: warning: ...` line each)
do not reject a policy: an `env.pass` entry that an `env.deny` glob also
matches (the variable is never passed); under `network: direct`, a connect
rule that lets a host name through (connects are then seen as IP:PORT only,
so it never matches).

Extension beyond DESIGN.md: an optional rule key `except: [glob, ...]`; the
rule does not match targets matching any of those globs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..events import ActionType, Verdict
from .matchers import env_glob_matches
from .model import (
    DEFAULT_ENV_DENY,
    DEFAULT_ENV_PASS,
    EnvPolicy,
    Policy,
    PolicyError,
    Rule,
    SourceLocation,
    connects_to_an_ip_literal,
)
from .sources import (
    PolicySource,
    builtin_templates,
    find_policy,
    is_path_reference,
    read_policy_file,
)

if TYPE_CHECKING:
    import yaml

    from .yaml_file import PolicyFile

# Bounds on what one policy may be, so that bad input is refused at once.
MAX_EXTENDS_DEPTH = 32  # files in one extends chain, the policy itself included
MAX_YAML_DEPTH = 64  # nested mappings and lists; a policy needs five


def _fail(path: str, node: yaml.Node, message: str, rule_id: str | None = None) -> NoReturn:
    mark = node.start_mark
    raise PolicyError(path, mark.line + 1, mark.column + 1, message, rule_id)


# ---------------------------------------------------------------- extends


@dataclass(frozen=True)
class Lookup:
    """One `find_policy(reference, policy_dir, relative_to, from_key)` the loader made.

    The effective policy is a function of the answers to these calls (and of
    agentsup's code): the cache asks them again and compares the answers.
    """

    reference: str
    relative_to: Path | None
    from_key: str | None
    source: PolicySource


@dataclass
class _Resolver:
    """Parses each file once and resolves each file's ancestry once (diamonds stay cheap)."""

    policy_dir: Path
    lookups: list[Lookup] = field(default_factory=list)
    cache: dict[str, PolicyFile] = field(default_factory=dict)
    chains: dict[str, tuple[PolicyFile, ...]] = field(default_factory=dict)
    heights: dict[str, int] = field(default_factory=dict)  # longest extends chain from a file
    parents: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def parse(self, source: PolicySource) -> PolicyFile:
        if source.key not in self.cache:
            from .yaml_file import parse_file  # PyYAML only now: a cache hit never gets here

            self.cache[source.key] = parse_file(
                source.text, source.path, source.key, source.directory
            )
        return self.cache[source.key]

    def locate(self, file: PolicyFile, reference: str, node: yaml.Node) -> PolicySource:
        try:
            source = find_policy(reference, self.policy_dir, file.directory, file.key)
        except PolicyError as error:
            _fail(file.path, node, f"cannot use '{reference}' in extends: {error.message}")
        if source is not None:
            self.lookups.append(Lookup(reference, file.directory, file.key, source))
        if source is None:
            _fail(
                file.path,
                node,
                f"unknown policy '{reference}' in extends (expected a file, or a name in "
                f"{self.policy_dir} or among the built-in templates: "
                f"{', '.join(builtin_templates())})",
            )
        return source

    def effective(self, file: PolicyFile, stack: tuple[str, ...] = ()) -> tuple[PolicyFile, ...]:
        """`file` and its ancestors, each once, depth first in `extends` order."""
        known = self.chains.get(file.key)
        if known is not None:
            return known
        chain = {file.key: file}  # insertion-ordered; a diamond's shared parent stays first
        parents: list[str] = []
        height = 1
        for reference, node in file.extends:
            source = self.locate(file, reference, node)
            if source.key in (*stack, file.key):
                names = [self.cache[k].name for k in (*stack, file.key) if k in self.cache]
                cycle = " -> ".join([*names, self.parse(source).name])
                _fail(file.path, node, f"extends cycle: {cycle}")
            if len(stack) + 2 > MAX_EXTENDS_DEPTH:  # before recursing: the stack stays bounded
                self._too_deep(file, node)
            parent = self.parse(source)
            for ancestor in self.effective(parent, (*stack, file.key)):
                chain.setdefault(ancestor.key, ancestor)
            # A parent resolved earlier by a shorter path may still be too deep from here.
            if len(stack) + 1 + self.heights[parent.key] > MAX_EXTENDS_DEPTH:
                self._too_deep(file, node)
            height = max(height, 1 + self.heights[parent.key])
            parents.append(parent.key)
        self.heights[file.key] = height
        self.parents[file.key] = tuple(parents)
        self.chains[file.key] = tuple(chain.values())
        return self.chains[file.key]

    def _too_deep(self, file: PolicyFile, node: yaml.Node) -> NoReturn:
        _fail(
            file.path,
            node,
            f"extends chain of more than {MAX_EXTENDS_DEPTH} policies (a policy, its parent, "
            "its parent's parent, ...); flatten it",
        )

    def env(self, key: str, merged: dict[str, _MergedEnv]) -> _MergedEnv:
        """The effective env lists of a resolved file, with where each entry was written."""
        if key in merged:
            return merged[key]
        inherited = [self.env(parent, merged) for parent in self.parents[key]]
        own = self.cache[key].env
        lists: dict[str, tuple[tuple[str, SourceLocation | None], ...]] = {}
        for name, default in (("pass", DEFAULT_ENV_PASS), ("deny", DEFAULT_ENV_DENY)):
            written = None if own is None else (own.pass_ if name == "pass" else own.deny)
            if inherited:
                base = _union(*(env.pass_ if name == "pass" else env.deny for env in inherited))
            else:
                base = tuple((entry, None) for entry in default)
            if written is None:
                lists[name] = base
            elif not inherited or (own is not None and name in own.replace):
                lists[name] = tuple(written)
            else:
                lists[name] = _union(base, tuple(written))
        merged[key] = _MergedEnv(lists["pass"], lists["deny"])
        return merged[key]


@dataclass(frozen=True)
class _MergedEnv:
    """A policy's env.pass and env.deny, merged along its `extends` chain."""

    # Entries with where they were written; None for a built-in default.
    pass_: tuple[tuple[str, SourceLocation | None], ...]
    deny: tuple[tuple[str, SourceLocation | None], ...]


def _union(
    *lists: tuple[tuple[str, SourceLocation | None], ...],
) -> tuple[tuple[str, SourceLocation | None], ...]:
    """The entries of all lists in order, each glob once (where it first appears)."""
    seen: dict[str, SourceLocation | None] = {}
    for entries in lists:
        for glob, where in entries:
            seen.setdefault(glob, where)
    return tuple(seen.items())


def _env_warnings(env: _MergedEnv, root: PolicyFile) -> tuple[str, ...]:
    """A `pass` entry that a `deny` glob matches is never passed: say so, naming both.

    The line points at whichever of the two the loaded file itself wrote
    (the pass entry first), else at the pass entry.
    """
    found: list[str] = []
    for entry, entry_at in env.pass_:
        for glob, glob_at in env.deny:
            if not env_glob_matches(glob, entry):
                continue
            written = [at for at in (entry_at, glob_at) if at is not None]
            here = [at for at in written if at.path == root.path]
            where = (here or written or [SourceLocation(root.path, 1, 1)])[0]
            found.append(
                f"{where}: warning: env.pass entry '{entry}'{_elsewhere(entry_at, where)} is "
                f"also matched by env.deny '{glob}'{_elsewhere(glob_at, where)}, so it is "
                "never passed"
            )
            break
    return tuple(found)


_SOCKET_TARGETS = ("unix:", "netlink:", "packet:", "raw:", "{")


def _network_warnings(network: str | None, rules: list[Rule]) -> tuple[str, ...]:
    """Under `network: direct`, a connect rule written for a host name never matches.

    Direct connects are judged per syscall by `IP:PORT`; names are seen only
    by the egress proxy.  A rule whose target starts with a letter names a host.
    Without the key, a rule allowing an IP literal makes the network `direct`:
    said, since it gives the agent the host's network (new user 17 allowed
    `127.0.0.1:8765` for the agent's own server and reached the host's).
    """
    if network is None:
        for rule in rules:
            if rule.decision is not Verdict.DENY and connects_to_an_ip_literal(rule):
                text = (rule.target or rule.pattern or "")[:60]
                return (
                    f"{rule.source}: warning: rule '{rule.id}' allows connects to an address "
                    f"({text}), so with no `network:` key the agent shares the host's network "
                    "(network: direct) and reaches what listens there, the host's loopback "
                    "included; for the agent's own servers only, set network: proxy (its "
                    "loopback is then its own); network: direct says this is meant",
                )
        return ()
    if network != "direct":
        return ()
    found: list[str] = []
    for rule in rules:
        if ActionType.NETWORK_CONNECT not in rule.actions or rule.decision is Verdict.DENY:
            continue
        text = (rule.target or rule.pattern or "").lstrip("^(")
        # unix:, netlink:, packet: and raw: targets name sockets, not hosts.
        if text[:1].isalpha() and not text.startswith(_SOCKET_TARGETS):
            found.append(
                f"{rule.source}: warning: rule '{rule.id}' names a host ({text[:60]}), but "
                "under network: direct connects are judged by IP:PORT, so it never matches "
                "a connect (host names need network: proxy)"
            )
    return tuple(found)


def _elsewhere(at: SourceLocation | None, where: SourceLocation) -> str:
    if at == where:
        return ""
    return f" ({at})" if at is not None else " (built-in default)"


def _rules_of(files: tuple[PolicyFile, ...]) -> Iterator[Rule]:
    for file in files:
        yield from file.rules  # `effective` lists each file once


def _first(files: tuple[PolicyFile, ...], attribute: str) -> Any:
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
            "limits",
            "approval",
            "audit_level",
            "network",
        )
        if (value := _first(files, attribute)) is not None
    }
    env = resolver.env(root.key, {})
    warnings = _env_warnings(env, root) + _network_warnings(sections.get("network"), rules)
    return Policy(
        name=root.name,
        rules=tuple(rules),
        extends=tuple(reference for reference, _ in root.extends),
        source=root.path,
        env=EnvPolicy(
            tuple(entry for entry, _ in env.pass_), tuple(entry for entry, _ in env.deny)
        ),
        warnings=warnings,
        **sections,
    )


def load_source(source: PolicySource, policy_dir: Path) -> Policy:
    """Load an already found policy source, applying `extends`; raises PolicyError."""
    return _build(_Resolver(policy_dir), source)


def load_policy_file(path: str | Path, policy_dir: Path | None = None) -> Policy:
    """Load the policy at `path`, applying `extends`; raises PolicyError."""
    directory = policy_dir if policy_dir is not None else _default_policy_dir()
    return _build(_Resolver(directory), read_policy_file(Path(path), str(path)))


def load_policy_text(text: str, source: str = "<string>", policy_dir: Path | None = None) -> Policy:
    """Load a policy from YAML text; relative `extends` paths are relative to the cwd."""
    directory = policy_dir if policy_dir is not None else _default_policy_dir()
    return _build(_Resolver(directory), PolicySource(source, source, Path.cwd(), text))


def resolve_policy(name_or_path: str, policy_dir: Path) -> Policy:
    """Load a `--policy` value: a path, or a name in `policy_dir`, then a built-in template."""
    return resolve_policy_lookups(name_or_path, policy_dir)[0]


def resolve_policy_lookups(
    name_or_path: str, policy_dir: Path
) -> tuple[Policy, tuple[Lookup, ...]]:
    """`resolve_policy`, and every lookup of a policy file it made, the `--policy` value first."""
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
    resolver = _Resolver(policy_dir, [Lookup(name_or_path, None, None, source)])
    return _build(resolver, source), tuple(resolver.lookups)


def _default_policy_dir() -> Path:
    from ..paths import default_locations

    return default_locations().policy_dir
