"""The kernel floor as `policy explain` applies it: planned from a compiled policy, pure."""

from __future__ import annotations

from pathlib import Path

from agentsup.events import ActionType, Event, Verdict, ViolationMode
from agentsup.policy import CompiledPolicy, RunContext, compile_policy, resolve_policy
from agentsup.policy.floor import (
    FLOOR_RULE,
    FS_READ_FILE,
    FS_WRITE_FILE,
    FloorCheck,
    floor_verdict,
    plan_policy_floor,
)

A = ActionType
CTX = RunContext(workspace="/w", home="/home/u", agent_id="agent", python_prefixes=("/opt/py",))
TREE = {"/": ["etc", "usr", "w", "var"], "/etc": ["agentsup", "passwd"], "/var": ["lib"]}


def listdir(path: str) -> list[str]:
    if path in TREE:
        return TREE[path]
    raise NotADirectoryError(path)


def check(name: str) -> tuple[FloorCheck, CompiledPolicy]:
    policy = compile_policy(resolve_policy(name, Path("/nonexistent-policy-dir")), CTX)
    plan = plan_policy_floor(
        policy,
        no_write=["/etc/agentsup"],
        no_read=["/var/lib/agentsup"],
        abi=4,
        listdir=listdir,
        realpath=lambda path: path,
    )
    return FloorCheck(plan), policy


def test_the_plan_grants_what_the_policy_can_allow_and_no_more() -> None:
    floor, _ = check("strict")
    assert floor.allows("/w/src/a.py", FS_WRITE_FILE)
    assert floor.allows("/usr/lib/x", FS_READ_FILE)
    assert not floor.allows("/usr/lib/x", FS_WRITE_FILE)
    assert not floor.allows("/srv/x", FS_READ_FILE)


def test_the_floor_overrules_an_allow_it_does_not_reach() -> None:
    floor, policy = check("permissive")
    event = Event(A.FILE_WRITE, "/etc/agentsup/policies/strict.yaml")
    decision = policy.evaluate(event)
    assert decision.verdict is not Verdict.DENY  # the policy alone lets it through
    final = floor_verdict(floor, event.action, event.target, decision)
    assert (final.verdict, final.rule_id) == (Verdict.DENY, FLOOR_RULE)
    assert final.on_violation is ViolationMode.BLOCK
    assert decision.rule_id in final.reason


def test_the_floor_leaves_decisions_it_reaches_or_that_deny() -> None:
    floor, policy = check("strict")
    inside = Event(A.FILE_WRITE, "/w/x")
    assert floor_verdict(floor, inside.action, inside.target, policy.evaluate(inside)).rule_id == (
        "workspace"
    )
    secret = Event(A.FILE_READ, "/home/u/.ssh/id_rsa")
    decided = policy.evaluate(secret)
    assert floor_verdict(floor, secret.action, secret.target, decided) is decided
    shell = Event(A.SHELL_EXECUTE, "ls")
    decided = policy.evaluate(shell)
    assert floor_verdict(floor, shell.action, shell.target, decided) is decided
