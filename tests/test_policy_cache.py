"""The compiled-policy cache in the state directory never changes a decision.

An entry is used only when every policy file the loader read answers with
the same bytes; an edited parent is a miss, and a real agent sees the new
rule at once.  Corrupt, foreign or open entries are ignored and written again.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agentsup.events import PATH_ACTIONS, ActionType, Event, Verdict
from agentsup.policy import RunContext, compile_policy, resolve_policy
from agentsup.policy.cache import (
    Resolved,
    compile_policy_cached,
    decode,
    encode,
    resolve_policy_cached,
)
from agentsup.policy.cachefiles import CACHE_DIR_NAME, BadEntry, read_entry, write_entry
from agentsup.policy.model import Policy

PARENT = """\
name: parent
extends: [strict]
rules:
  - id: notes
    actions: [file_read]
    target: "{workspace}/notes.txt"
    decision: DECISION
    priority: 1
"""

CHILD = """\
name: child
extends: [parent.yaml]
description: a child with every kind of field
on_violation: block
env:
  pass: [PATH, "LC_*"]
  replace: [pass]
limits: {max_runtime_seconds: 60, memory_mb: 512}
approval: {timeout_seconds: 2.5, on_timeout: kill}
audit: {level: all}
rules:
  - id: scoped
    actions: [file_write, file_delete]
    target: "{workspace}/out/**"
    except: ["{workspace}/out/keep/**"]
    decision: allow
    severity: low
    message: scoped writes
    on_violation: sigstop
    agents: ["bench-*"]
    rate_limit: {max: 5, per_seconds: 10}
  - id: by-id
    actions: [shell_execute]
    pattern: '^echo {agent_id}\\Z'
    decision: warn
"""


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def _entries(state: Path, kind: str) -> list[Path]:
    return sorted((state / CACHE_DIR_NAME).glob(f"{kind}-*"))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    policies, state = tmp_path / "policies", tmp_path / "state"
    policies.mkdir()
    state.mkdir(mode=0o700)
    _write(policies, "parent.yaml", PARENT.replace("DECISION", "allow"))
    _write(policies, "child.yaml", CHILD)
    return policies, state


def test_a_second_load_comes_from_the_cache_and_equals_the_loader(dirs: tuple[Path, Path]) -> None:
    policies, state = dirs
    first = resolve_policy_cached("child", policies, state)
    second = resolve_policy_cached("child", policies, state)
    assert (first.cached, second.cached) == (False, True)
    assert second.policy == first.policy == resolve_policy("child", policies)
    assert second.identity == first.identity is not None
    directory = state / CACHE_DIR_NAME
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in directory.iterdir())


def test_every_field_survives_the_codec(dirs: tuple[Path, Path]) -> None:
    policy = resolve_policy("child", dirs[0])
    data = json.loads(json.dumps(encode(policy)))
    assert decode(Policy, data) == policy
    scoped = next(rule for rule in policy.rules if rule.id == "scoped")
    assert scoped.rate_limit is not None and scoped.agents == ("bench-*",)


def test_decode_refuses_what_does_not_fit(dirs: tuple[Path, Path]) -> None:
    data = encode(resolve_policy("child", dirs[0]))
    for broken in (
        {**data, "default": "maybe"},
        {**data, "extra": 1},
        {**data, "rules": [{**data["rules"][0], "priority": "1"}]},
        {**data, "approval": {**data["approval"], "on_timeout": "explode"}},
    ):
        with pytest.raises(BadEntry):
            decode(Policy, broken)


def test_an_edited_parent_is_a_miss(dirs: tuple[Path, Path]) -> None:
    policies, state = dirs
    context = RunContext("/w", "/h", "a")
    resolve_policy_cached("child", policies, state)
    _write(policies, "parent.yaml", PARENT.replace("DECISION", "deny"))
    again = resolve_policy_cached("child", policies, state)
    assert not again.cached
    decision = compile_policy_cached(again, context, state).evaluate(
        Event(ActionType.FILE_READ, "/w/notes.txt")
    )
    assert decision.verdict is Verdict.DENY and decision.rule_id == "notes"


def test_a_local_file_shadowing_a_builtin_is_a_miss(dirs: tuple[Path, Path]) -> None:
    policies, state = dirs
    resolve_policy_cached("child", policies, state)
    # `strict` in the policy directory now answers the lookup the parent made.
    _write(policies, "strict.yaml", "name: strict\ndefault: allow\n")
    again = resolve_policy_cached("child", policies, state)
    assert not again.cached and again.policy.default is Verdict.ALLOW


@pytest.mark.parametrize(
    "spoil",
    [
        lambda path: path.write_bytes(path.read_bytes()[:-7]),  # truncated
        lambda path: path.write_bytes(path.read_bytes().replace(b'"deny"', b'"allow"', 1)),
        lambda path: path.chmod(0o644),  # open to others
        lambda path: path.write_bytes(b"not an entry"),
    ],
    ids=["truncated", "altered", "open-to-others", "garbage"],
)
def test_a_bad_entry_is_ignored_and_written_again(dirs: tuple[Path, Path], spoil: object) -> None:
    policies, state = dirs
    resolve_policy_cached("child", policies, state)
    [entry] = _entries(state, "policy")
    spoil(entry)  # type: ignore[operator]
    with pytest.raises(BadEntry):
        read_entry(entry)
    again = resolve_policy_cached("child", policies, state)
    assert not again.cached and again.policy == resolve_policy("child", policies)
    assert resolve_policy_cached("child", policies, state).cached  # rewritten, whole


def test_an_entry_of_the_right_shape_but_other_lookups_is_a_miss(dirs: tuple[Path, Path]) -> None:
    policies, state = dirs
    resolve_policy_cached("child", policies, state)
    [entry] = _entries(state, "policy")
    document = read_entry(entry)
    document["lookups"][1][5] = "0" * 64  # the parent's text hash
    write_entry(entry.parent, entry.name, document)
    assert not resolve_policy_cached("child", policies, state).cached


def test_a_cache_dir_open_to_others_is_not_used(dirs: tuple[Path, Path]) -> None:
    policies, state = dirs
    resolve_policy_cached("child", policies, state)
    (state / CACHE_DIR_NAME).chmod(0o755)
    assert not resolve_policy_cached("child", policies, state).cached


def test_no_state_dir_no_cache(dirs: tuple[Path, Path]) -> None:
    resolved = resolve_policy_cached("child", dirs[0], None)
    files = tuple(str((dirs[0] / name).resolve()) for name in ("child.yaml", "parent.yaml"))
    assert resolved == Resolved(resolve_policy("child", dirs[0]), files=files)


def test_a_cached_policy_names_the_files_it_was_read_from(dirs: tuple[Path, Path]) -> None:
    """What a run guards against the agent's writes (Agent.prepare)."""
    policies, state = dirs
    missed = resolve_policy_cached("child", policies, state)
    hit = resolve_policy_cached("child", policies, state)
    assert hit.cached and not missed.cached
    expected = {str((policies / name).resolve()) for name in ("child.yaml", "parent.yaml")}
    assert set(hit.files) == set(missed.files) == expected


def test_the_compiled_entry_gives_the_same_matchers(dirs: tuple[Path, Path]) -> None:
    policies, state = dirs
    context = RunContext("/w", "/h", "bench-1")
    resolved = resolve_policy_cached("child", policies, state)
    compile_policy_cached(resolved, context, state)
    assert len(_entries(state, "compiled")) == 1
    cached = compile_policy_cached(resolve_policy_cached("child", policies, state), context, state)
    fresh = compile_policy(resolved.policy, context)

    def shape(compiled: object) -> list[object]:
        return [
            (r.rule, r.matcher, r.matcher.roots, r.excepts, r.decision, r.applies)
            for r in compiled.rules  # type: ignore[attr-defined]
        ]

    assert shape(cached) == shape(fresh)
    # Another agent id: `agents:` is decided again, {agent_id} is filled again.
    other = RunContext("/w", "/h", "other")
    for_other = compile_policy_cached(resolve_policy_cached("child", policies, state), other, state)
    assert shape(for_other) == shape(compile_policy(resolved.policy, other))
    assert for_other.evaluate(Event(ActionType.SHELL_EXECUTE, "echo other")).rule_id == "by-id"


def test_the_compiled_entry_does_not_cross_workspaces(dirs: tuple[Path, Path]) -> None:
    policies, state = dirs
    for workspace in ("/w1", "/w2"):
        resolved = resolve_policy_cached("child", policies, state)
        compiled = compile_policy_cached(resolved, RunContext(workspace, "/h", "a"), state)
        decision = compiled.evaluate(Event(ActionType.FILE_READ, f"{workspace}/notes.txt"))
        assert decision.rule_id == "notes"
    assert len(_entries(state, "compiled")) == 2


EVENTS = [
    Event(ActionType.FILE_READ, "/w/notes.txt"),
    Event(ActionType.FILE_READ, "/h/.ssh/id_rsa"),
    Event(ActionType.FILE_READ, "/etc/hosts"),
    Event(ActionType.FILE_WRITE, "/w/out/x"),
    Event(ActionType.FILE_WRITE, "/w/out/keep/x"),
    Event(ActionType.FILE_DELETE, "/etc/passwd"),
    Event(ActionType.SHELL_EXECUTE, "echo bench-1"),
    Event(ActionType.SHELL_EXECUTE, "rm -rf /"),
    Event(ActionType.PROCESS_SPAWN, "/usr/bin/true"),
    Event(ActionType.NETWORK_CONNECT, "10.0.0.1:443"),
    Event(ActionType.ENV_READ, "HOME"),
]


def test_a_cached_policy_builds_its_regexes_when_first_needed(dirs: tuple[Path, Path]) -> None:
    """From the cache, each set and regex is compiled when first used: the same decisions."""
    policies, state = dirs
    context = RunContext("/w", "/h", "bench-1")
    resolved = resolve_policy_cached("child", policies, state)
    compile_policy_cached(resolved, context, state)
    cached = compile_policy_cached(resolve_policy_cached("child", policies, state), context, state)
    fresh = compile_policy(resolved.policy, context)
    assert cached._tables == {}  # nothing compiled yet
    assert "_path_rules" not in vars(cached)
    assert [cached.evaluate(e) for e in EVENTS] == [fresh.evaluate(e) for e in EVENTS]
    explained = [cached.explain(e).decision for e in EVENTS]  # each rule's own regex
    assert explained == [fresh.explain(e).decision for e in EVENTS]
    # Path actions share one set of every path rule; each other action has its own.
    assert set(cached._tables) == {event.action for event in EVENTS} - PATH_ACTIONS
    assert vars(cached)["_path_rules"] is not None


def test_a_cached_set_re2_cannot_hold_is_matched_rule_by_rule(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rules scoped to another agent made the stored sets: the same decisions, one by one."""
    from agentsup.policy import PolicyError, linear

    policies, state = dirs
    context = RunContext("/w", "/h", "bench-1")
    resolved = resolve_policy_cached("child", policies, state)
    fresh = compile_policy(resolved.policy, context)
    compile_policy_cached(resolved, context, state)

    def refused(_patterns: object) -> None:
        raise linear.PatternError("RE2 cannot compile the set", 0)

    monkeypatch.setattr(linear, "PatternSet", refused)
    cached = compile_policy_cached(resolve_policy_cached("child", policies, state), context, state)
    assert [cached.evaluate(e) for e in EVENTS] == [fresh.evaluate(e) for e in EVENTS]
    with pytest.raises(PolicyError, match="RE2 cannot compile the set"):
        compile_policy(resolved.policy, context)  # without the cache: refused, as ever
