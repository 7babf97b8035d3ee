"""A stop that could not reach the agent's processes is said, and the agent
still cannot act.

Red team 14 held the supervisor at its fd limit; a tampered policy then
marked the agent stopped, but the SIGSTOP sweep could open neither
cgroup.procs nor pidfds and reached no one, silently: the agent worked on.
Now the sweep says what it could not do (`ProcessTree.missed`), the judge
records and says it, and an agent stopped for a violation, a tamper or by
a person has every mediated action refused until it is resumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil
import pytest
from conftest import locations_in, out_of_fds

from agentsup.events import ActionType, Event, Layer, Response
from agentsup.kernel import cgroup
from agentsup.policy import RunContext, compile_policy, load_policy_text
from agentsup.supervision.judge import (
    STOPPED_RULE,
    AgentState,
    Judge,
    JudgeConfig,
    ProcessTree,
)


@pytest.fixture
def tree() -> Iterator[tuple[ProcessTree, int]]:
    """A root, its child (where the broker would be: a SIGSTOP spares it) and
    a grandchild (the agent), as a ProcessTree without a cgroup."""
    code = "import subprocess; subprocess.run(['sh', '-c', 'sleep 60; true'])"
    root = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 5
    while len(psutil.Process(root.pid).children(recursive=True)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    [child] = psutil.Process(root.pid).children()[0].children()
    yield ProcessTree(None, root.pid), child.pid
    for process in psutil.Process(root.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    root.kill()
    root.wait()


def _stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def test_a_sweep_out_of_fds_says_what_it_missed(tree: tuple[ProcessTree, int]) -> None:
    processes, child = tree
    with out_of_fds():
        reached = processes.signal_all(signal.SIGSTOP)
    assert reached == set()  # none was signalled, and none is said to be
    assert processes.missed, "the sweep missed every process, silently"
    assert not _stopped(child)
    reached = processes.signal_all(signal.SIGSTOP)
    assert processes.missed == []
    assert child in reached and _stopped(child)
    processes.signal_all(signal.SIGCONT)


def test_a_group_that_cannot_be_listed_is_not_taken_for_an_empty_one(tmp_path: Path) -> None:
    group = tmp_path / "group"
    (group / "nested").mkdir(parents=True)
    (group / "cgroup.procs").write_text("11\n")
    (group / "nested" / "cgroup.procs").write_text("12\n")
    assert cgroup.members([str(group)], strict=True) == {11, 12}
    assert cgroup.members([str(tmp_path / "gone")], strict=True) == set()
    with out_of_fds():
        with pytest.raises(OSError):
            cgroup.members([str(group)], strict=True)
        assert cgroup.members([str(group)]) == set()  # what the old sweep saw


class Audit:
    def __init__(self) -> None:
        self.records: list[Mapping[str, object]] = []

    def append(self, record: Mapping[str, object]) -> Mapping[str, object]:
        self.records.append(record)
        return record


def _judge(tmp_path: Path) -> tuple[Judge, Audit, io.StringIO]:
    text = (
        "name: m\ndefault: deny\non_violation: block\nrules:\n"
        "  - {id: ws, actions: [file_read], target: '{workspace}/**', decision: allow}\n"
    )
    policy = compile_policy(
        load_policy_text(text, policy_dir=tmp_path), RunContext(str(tmp_path), "/root", "t")
    )
    root = tmp_path / "agentsup"
    locations = locations_in(root)
    said = io.StringIO()
    config = JudgeConfig("t", policy, "m", str(tmp_path), locations, stderr=said)
    audit = Audit()
    return Judge(config, audit), audit, said


def _read(tmp_path: Path) -> Event:
    return Event(ActionType.FILE_READ, str(tmp_path / "a.txt"), "t", 1, Layer.SECCOMP, "openat")


@pytest.mark.parametrize(
    "state",
    [AgentState.STOPPED_TAMPER, AgentState.STOPPED_VIOLATION, AgentState.STOPPED_OPERATOR],
)
def test_a_stopped_agent_has_every_action_refused(tmp_path: Path, state: AgentState) -> None:
    judge, audit, _said = _judge(tmp_path)
    mirrored: list[tuple[ActionType | None, str]] = []
    judge.allow_mirror = lambda action, target: mirrored.append((action, target))
    judge.state = AgentState.RUNNING
    assert judge.judge(_read(tmp_path), 1) is Response.ALLOW
    assert (ActionType.FILE_READ, str(tmp_path / "a.txt")) in judge.allow_cache
    judge.state = state
    assert judge.allow_cache == set()  # the mediator asks its cache first
    # The broker drops its cache and its own copy of the judge (which knows
    # nothing of the stop): every miss comes to this judge.
    assert mirrored[-1] == (None, "policy")
    # A syscall is left unanswered (new user 18): the stop interrupts it and the
    # kernel reissues it after SIGCONT, judged then; nothing is on record yet.
    recorded = len(audit.records)
    decision, response = judge.judge_event(_read(tmp_path), 1)
    assert response is Response.HOLD and decision.rule_id == STOPPED_RULE
    assert len(audit.records) == recorded
    # What the hook asks is answered: refused, on record.
    hooked = dataclasses.replace(_read(tmp_path), layer=Layer.HOOK)
    decision, response = judge.judge_event(hooked, 1)
    assert response is Response.BLOCK and decision.rule_id == STOPPED_RULE
    assert audit.records[-1]["rule"] == STOPPED_RULE
    judge.state = AgentState.RUNNING  # resumed
    assert judge.judge(_read(tmp_path), 1) is Response.ALLOW


def test_a_stop_that_reached_no_process_is_recorded_and_said(
    tmp_path: Path, tree: tuple[ProcessTree, int]
) -> None:
    judge, audit, said = _judge(tmp_path)
    judge.tree, _child = tree
    judge.state = AgentState.STOPPED_TAMPER
    with out_of_fds():
        judge.signal_tree(signal.SIGSTOP, "policy directory tampered: x")
    [record] = [r for r in audit.records if r.get("kind") == "signal"]
    assert record["confirmed"] is False and record["missed"], record
    assert "SIGSTOP may not have reached every process of agent 't'" in said.getvalue()
    assert "refused until it is resumed" in said.getvalue()
    # Nothing would interrupt an unreached process's syscall: it is refused.
    decision, response = judge.judge_event(_read(tmp_path), 1)
    assert response is Response.BLOCK and decision.rule_id == STOPPED_RULE


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("b\udcffd", "b\\xffd"),  # a byte that is not UTF-8, as os.fsdecode gives it
        ("b\ud800d", "b\\ud800d"),  # a lone surrogate no byte decodes to (the hook's text)
    ],
)
def test_a_refused_target_the_log_cannot_hold_is_recorded_escaped(
    tmp_path: Path, name: str, shown: str
) -> None:
    """A denied target is recorded whatever text it holds: the record shows
    what UTF-8 cannot hold escaped, and the decision is made on the name."""
    judge, audit, _said = _judge(tmp_path)
    outside = Event(ActionType.FILE_READ, f"/elsewhere/{name}", "t", 1, Layer.SECCOMP, "openat")
    assert judge.judge(outside, 1) is Response.BLOCK
    assert audit.records[-1]["target"] == f"/elsewhere/{shown}"


def test_what_the_refusal_summary_keeps_is_bounded(tmp_path: Path) -> None:
    """An agent makes refusals at will, each target up to 128 KiB: the summary
    counts every one, but keeps a bounded number of targets, each cut."""
    judge, _audit, _said = _judge(tmp_path)
    for index in range(5000):
        target = f"/elsewhere/{index}-" + "x" * 4000
        outside = Event(ActionType.FILE_READ, target, "t", 1, Layer.SECCOMP, "openat")
        assert judge.judge(outside, 1) is Response.BLOCK
    assert sum(judge.refused.values()) == 5000
    assert len(judge.refused) <= 4097
    assert max(len(what) for what in judge.refused) < 700
    assert all(len(line) < 800 for line in judge.refusal_summary())


def test_a_resumed_violation_refuses_its_reissued_syscall_once_and_not_later(
    tmp_path: Path,
) -> None:
    """New user 17: the stop interrupts the violating syscall and the kernel
    reissues it after SIGCONT: without an answer waiting for it, it was judged
    and stopped again at every resume.  It meets a refusal, once, and only
    soon after the resume (one answered before the stop leaves none behind)."""
    judge, _audit, _said = _judge(tmp_path)
    now = [100.0]
    judge.clock = lambda: now[0]
    outside = Event(ActionType.FILE_READ, "/elsewhere/x", "t", 1, Layer.SECCOMP, "openat")
    judge._hold(outside, 1, judge.decide(outside), kind="violation")
    judge.settle(True, uid=0, reason="", outcome="approved")
    assert judge._grant(1, outside) is Response.BLOCK  # refused, with no new stop
    assert judge._grant(1, outside) is None  # taken once
    judge._hold(outside, 1, judge.decide(outside), kind="violation")
    judge.settle(True, uid=0, reason="", outcome="approved")
    now[0] += 60  # never reissued: the grant has gone stale
    assert judge._grant(1, outside) is None
