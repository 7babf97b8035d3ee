"""The README's `no-push` example, as written there, against the spellings of `git push`.

The rule is read out of README.md (the "GitHub read-only" policy block), so
the README cannot drift from what is tested.  git takes global options before
its subcommand (`git -c k=v push`, `git -C dir push`, `git --git-dir x push`),
and git is git by any path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agentsup.events import ActionType, Event, Verdict
from agentsup.policy import CompiledPolicy, RunContext, compile_policy, load_policy_text

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "# GitHub read-only"

PUSHES = [
    "git push",
    "git push origin main",
    "git -c k=v push",
    "git -c user.name=x -c credential.helper= push origin main",
    "git -C dir push",
    "git -C /w/repo -c k=v push -f",
    "git --git-dir=x push",
    "git --git-dir x push",
    "git --git-dir x --work-tree y push",
    "git --no-pager --bare push",
    "git  push",
    "/usr/bin/git push",
    "/usr/bin/git -C repo push --tags",
    "git push\n",
]
NOT_PUSHES = [
    "git pull",
    "git status",
    "git -C dir pull",
    "git -c k=v status",
    "git pushd",
    "git commit -m push",
    "git log --grep=push",
    "git clone https://github.com/o/r push",
    "gitk push",
    "legit push",
]


def no_push_block(readme: str) -> str:
    """The README's YAML block that holds the `no-push` rule."""
    start = readme.index(f"```yaml\n{HEADING}") + len("```yaml\n")
    block = readme[start : readme.index("```", start)]
    assert "- id: no-push" in block
    return block


def compiled(block: str, tmp_path: Path) -> CompiledPolicy:
    policy = load_policy_text(block, source="README no-push", policy_dir=tmp_path)
    assert policy.warnings == ()
    return compile_policy(policy, RunContext(str(tmp_path), "/home/u", "t"))


@pytest.fixture
def readme_policy(tmp_path: Path) -> CompiledPolicy:
    return compiled(no_push_block(README.read_text(encoding="utf-8")), tmp_path)


@pytest.mark.parametrize("command", PUSHES)
def test_every_spelling_of_git_push_is_refused(readme_policy: CompiledPolicy, command: str) -> None:
    decision = readme_policy.evaluate(Event(ActionType.SHELL_EXECUTE, command))
    assert (decision.verdict, decision.rule_id) == (Verdict.DENY, "no-push")


@pytest.mark.parametrize("command", NOT_PUSHES)
def test_other_git_commands_run(readme_policy: CompiledPolicy, command: str) -> None:
    decision = readme_policy.evaluate(Event(ActionType.SHELL_EXECUTE, command))
    assert decision.verdict is Verdict.ALLOW, decision.rule_id


def test_the_readme_says_the_rule_is_a_tripwire() -> None:
    """Next to the rule: a pattern is no guard; withheld credentials are."""
    block = no_push_block(README.read_text(encoding="utf-8"))
    assert "tripwire" in block
    assert "no credentials reach the agent" in block
