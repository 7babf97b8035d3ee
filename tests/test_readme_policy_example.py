"""The README's "A policy" example, as written there, does what its comments say.

The block is read out of README.md, so the README cannot drift from what is
tested.  (Its first GitHub rule once named an IP and a URL that the egress
proxy never asks about: the first API call was killed by strict's no-network.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentsup.events import ActionType, Event, Verdict
from agentsup.policy import CompiledPolicy, RunContext, compile_policy, load_policy_text

README = Path(__file__).resolve().parents[1] / "README.md"
WORKSPACE = "/srv/project"


def example_block(readme: str) -> str:
    start = readme.index("```yaml\nname: data-analyst") + len("```yaml\n")
    return readme[start : readme.index("```", start)]


@pytest.fixture
def example(tmp_path: Path) -> CompiledPolicy:
    block = example_block(README.read_text(encoding="utf-8"))
    policy = load_policy_text(block, source="README example", policy_dir=tmp_path)
    assert policy.warnings == ()
    return compile_policy(policy, RunContext(WORKSPACE, "/home/u", "t"))


@pytest.mark.parametrize(
    ("action", "target", "verdict", "rule"),
    [
        # what the egress proxy asks of an HTTPS call to the API
        (ActionType.NETWORK_CONNECT, "api.github.com:443", Verdict.ALLOW, "github-api"),
        (ActionType.NETWORK_REQUEST, "CONNECT api.github.com:443", Verdict.ALLOW, "github-api"),
        (ActionType.NETWORK_CONNECT, "example.com:443", Verdict.DENY, "no-network"),
        (ActionType.FILE_READ, "/data/in/2024/sales.csv", Verdict.ALLOW, "data-in"),
        (ActionType.FILE_WRITE, "/data/in/2024/sales.csv", Verdict.DENY, "<default>"),
        (
            ActionType.FILE_DELETE,
            f"{WORKSPACE}/report.csv",
            Verdict.REQUIRE_APPROVAL,
            "deletes-need-a-person",
        ),
        (ActionType.DATABASE_EXECUTE, "DROP TABLE sales", Verdict.DENY, "no-ddl"),
    ],
)
def test_the_example_does_what_its_comments_say(
    example: CompiledPolicy, action: ActionType, target: str, verdict: Verdict, rule: str
) -> None:
    decision = example.evaluate(Event(action, target))
    assert (decision.verdict, decision.rule_id) == (verdict, rule)


def test_its_environment_adds_to_stricts(example: CompiledPolicy) -> None:
    passed = example.filter_environ(
        {"DATA_DIR": "/data", "CC": "gcc", "PATH": "/usr/bin", "AWS_SECRET_KEY": "x"}
    )
    assert passed == {"DATA_DIR": "/data", "CC": "gcc", "PATH": "/usr/bin"}
