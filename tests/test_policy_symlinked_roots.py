"""A rule that refuses names its files by their real paths too.

Targets are real paths; rules are spelled as the person wrote them.  With
`~/.aws -> dotfiles/aws` (GNU stow), `cat ~/.aws/credentials` reaches
`~/dotfiles/aws/credentials`, a name `{home}/.aws/**` never sees.  A rule
that refuses or holds a path action also matches its pattern with each
literal root replaced by that root's real path; a rule that lets the action
go ahead, and every `except`, keeps its spelling (narrower is safe).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Sandbox

from agentsup.events import ActionType, Verdict
from agentsup.policy.cache import Resolved, compile_policy_cached, resolve_policy_cached
from agentsup.policy.engine import CompiledPolicy, RunContext, compile_policy
from agentsup.policy.loader import load_policy_text
from agentsup.supervision import protected

SECRET = "aws_secret_access_key = c3ltbGlua2VkLXJvb3Q"

SECRETS = """
name: secrets
default: allow
on_violation: block
rules:
  - id: secret-aws
    actions: [file_read, file_write, file_delete, file_move, file_chmod]
    target: "{home}/.aws/**"
    decision: deny
  - id: netrc
    actions: [file_read]
    target: "{home}/.netrc"
    decision: deny
  - id: gcloud
    actions: [file_read]
    target: "{home}/.config/gcloud/**"
    decision: deny
  - id: npmrc
    actions: [file_read]
    pattern: '^{home}/\\.npmrc\\Z'
    decision: deny
  - id: aws-credentials-regex
    actions: [file_chmod]
    pattern: '^{home}/\\.aws/credentials?(?:\\.bak)?$'
    decision: deny
    priority: 1
"""


def _home(tmp_path: Path) -> Path:
    """A home whose `.aws`, `.netrc`, `.npmrc` and `.config` are symlinks into `dotfiles`."""
    home = tmp_path / "home"
    (home / "dotfiles" / "aws").mkdir(parents=True)
    (home / "dotfiles" / "aws" / "credentials").write_text(SECRET)
    (home / "dotfiles" / "config").mkdir()
    (home / "dotfiles" / "netrc").write_text("machine x password y\n")
    (home / "dotfiles" / "npmrc").write_text("//registry/:_authToken=z\n")
    (home / ".aws").symlink_to("dotfiles/aws")
    (home / ".netrc").symlink_to("dotfiles/netrc")
    (home / ".npmrc").symlink_to(home / "dotfiles" / "npmrc")  # absolute, as stow can make
    (home / ".config").symlink_to("dotfiles/config")
    return home


def _compiled(text: str, home: Path, *, home_real: str = "") -> CompiledPolicy:
    policy = load_policy_text(textwrap.dedent(text), "test.yaml", Path("/"))
    return compile_policy(policy, RunContext("/w", str(home), "t", home_real=home_real))


def _rule(action: ActionType, policy: CompiledPolicy, target: Path | str) -> str:
    decision = policy.evaluate_target(action, str(target))
    return f"{decision.verdict.value}:{decision.rule_id}"


def test_a_symlinked_root_is_refused_by_its_real_path(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(SECRETS, home)
    real = home / "dotfiles" / "aws" / "credentials"
    for action in (ActionType.FILE_READ, ActionType.FILE_WRITE, ActionType.FILE_DELETE):
        assert _rule(action, policy, real) == "deny:secret-aws"
    assert _rule(ActionType.FILE_READ, policy, home / ".aws" / "credentials") == "deny:secret-aws"
    assert _rule(ActionType.FILE_READ, policy, home / "dotfiles" / "aws") == "deny:secret-aws"
    # Only where the root leads: a neighbour of the real directory stays the default's.
    assert _rule(ActionType.FILE_READ, policy, home / "dotfiles" / "awsx") == "allow:<default>"
    assert _rule(ActionType.FILE_READ, policy, home / "dotfiles" / "config") == "allow:<default>"


def test_a_root_that_is_a_symlink_to_a_file_is_refused_by_the_file(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(SECRETS, home)
    assert _rule(ActionType.FILE_READ, policy, home / "dotfiles" / "netrc") == "deny:netrc"
    # A regex whose literal prefix is the whole path (`\Z`), the link absolute.
    assert _rule(ActionType.FILE_READ, policy, home / "dotfiles" / "npmrc") == "deny:npmrc"
    assert _rule(ActionType.FILE_READ, policy, home / "dotfiles" / "npmrcx") == "allow:<default>"


def test_a_symlink_above_the_root_is_resolved_too(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(SECRETS, home)
    # `.config` is the link; `gcloud` beneath it does not even exist yet.
    target = home / "dotfiles" / "config" / "gcloud" / "credentials.db"
    assert _rule(ActionType.FILE_READ, policy, target) == "deny:gcloud"


def test_a_regex_keeps_what_follows_its_prefix(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(SECRETS, home)
    aws = home / "dotfiles" / "aws"
    for name in ("credentials", "credential", "credentials.bak", "credentials\n"):
        assert _rule(ActionType.FILE_CHMOD, policy, f"{aws}/{name}") == (
            "deny:aws-credentials-regex"
        ), name
    rule = next(r for r in policy.rules if r.id == "aws-credentials-regex")
    assert not rule.matcher.matches(f"{aws}/credentialsX")
    assert not rule.matcher.matches(f"{aws}/config")
    assert rule.matcher.roots == (str(home / ".aws"), str(aws))


def test_a_symlinked_home_and_a_symlinked_root_beneath_it(tmp_path: Path) -> None:
    real_home = _home(tmp_path)
    home = tmp_path / "link-home"
    home.symlink_to(real_home)
    policy = _compiled(SECRETS, home, home_real=str(real_home))
    assert _rule(ActionType.FILE_READ, policy, real_home / "dotfiles/aws/x") == "deny:secret-aws"
    rule = next(r for r in policy.rules if r.id == "secret-aws")
    # `{home}` has two spellings, both leading to one real root: one more alternative.
    assert [r.real for r in rule.matcher.respelled] == [str(real_home / "dotfiles" / "aws")]


def test_a_rule_that_lets_the_action_go_ahead_is_not_widened(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(
        """
        name: narrow
        default: deny
        on_violation: block
        rules:
          - id: aws-read
            actions: [file_read]
            target: "{home}/.aws/**"
            decision: allow
          - id: aws-warn
            actions: [file_write]
            target: "{home}/.aws/**"
            decision: warn
            priority: 1
          - id: aws-logged
            actions: [file_delete]
            target: "{home}/.aws/**"
            decision: deny
            on_violation: log_only
          - id: dotfiles
            actions: [file_write]
            target: "{home}/dotfiles/**"
            decision: deny
            priority: 2
        """,
        home,
    )
    real = home / "dotfiles" / "aws" / "credentials"
    assert _rule(ActionType.FILE_READ, policy, real) == "deny:<default>"
    # A warn matching the real path would let the write past the deny below it.
    assert _rule(ActionType.FILE_WRITE, policy, real) == "deny:dotfiles"
    assert _rule(ActionType.FILE_DELETE, policy, real) == "deny:<default>"
    assert policy.floor_roots((ActionType.FILE_READ,)) == (str(home / ".aws"),)


def test_an_except_is_not_widened(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(
        """
        name: except
        default: allow
        rules:
          - id: aws
            actions: [file_read]
            target: "{home}/.aws/**"
            except: ["{home}/.aws/config"]
            decision: deny
        """,
        home,
    )
    assert _rule(ActionType.FILE_READ, policy, home / ".aws" / "config") == "allow:<default>"
    assert _rule(ActionType.FILE_READ, policy, home / "dotfiles/aws/config") == "deny:aws"


def test_a_hold_for_approval_follows_the_real_root(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(
        """
        name: hold
        default: allow
        rules:
          - id: aws
            actions: [file_read]
            target: "{home}/.aws/**"
            decision: require_approval
        """,
        home,
    )
    decision = policy.evaluate_target(ActionType.FILE_READ, str(home / "dotfiles/aws/x"))
    assert decision.verdict is Verdict.REQUIRE_APPROVAL


def test_moving_the_real_directory_is_refused(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(SECRETS, home)
    refused = policy.refused_beneath(str(home / "dotfiles"))
    assert refused is not None and refused.rule_id in ("aws-credentials-regex", "secret-aws")


def test_the_protected_inode_walk_follows_the_real_root(tmp_path: Path) -> None:
    home = _home(tmp_path)
    policy = _compiled(SECRETS, home)
    real = home / "dotfiles" / "aws" / "credentials"
    link = tmp_path / "innocent"
    os.link(real, link)
    netrc = home / "dotfiles" / "netrc"  # `~/.netrc` is a symlink to it
    os.link(netrc, tmp_path / "innocent-too")
    found = protected.protected_inodes(policy)
    for path, name in ((link, real), (tmp_path / "innocent-too", netrc)):
        st = os.stat(path)
        assert found.get((st.st_dev, st.st_ino)) == str(name)


def _cached(resolved: Resolved, home: Path, state: Path) -> CompiledPolicy:
    context = RunContext("/w", str(home), "t", home_real=str(home))
    return compile_policy_cached(resolved, context, state)


def test_the_cache_does_not_keep_an_old_symlink(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / "vault" / "aws").mkdir(parents=True)
    policies, state = tmp_path / "policies", tmp_path / "state"
    policies.mkdir()
    state.mkdir(mode=0o700)
    (policies / "secrets.yaml").write_text(textwrap.dedent(SECRETS))
    resolved = resolve_policy_cached("secrets", policies, state)
    old, new = home / "dotfiles/aws/credentials", home / "vault/aws/credentials"

    first = _cached(resolved, home, state)
    assert _rule(ActionType.FILE_READ, first, old) == "deny:secret-aws"
    again = _cached(resolve_policy_cached("secrets", policies, state), home, state)
    assert _rule(ActionType.FILE_READ, again, old) == "deny:secret-aws"  # from the entry

    (home / ".aws").unlink()
    (home / ".aws").symlink_to("vault/aws")
    moved = _cached(resolve_policy_cached("secrets", policies, state), home, state)
    assert _rule(ActionType.FILE_READ, moved, new) == "deny:secret-aws"
    assert _rule(ActionType.FILE_READ, moved, old) == "allow:<default>"
    # The entry written for the new link is used as it is.
    assert _rule(ActionType.FILE_READ, _cached(resolved, home, state), new) == "deny:secret-aws"

    (home / ".aws").unlink()
    (home / ".aws").mkdir()  # no link at all any more
    plain = _cached(resolve_policy_cached("secrets", policies, state), home, state)
    assert _rule(ActionType.FILE_READ, plain, new) == "allow:<default>"
    assert _rule(ActionType.FILE_READ, plain, home / ".aws/credentials") == "deny:secret-aws"


def test_explain_shows_the_real_spelling(tmp_path: Path) -> None:
    home = _home(tmp_path)
    target = str(home / "dotfiles" / "aws" / "credentials")
    env = {**os.environ, "HOME": str(home), "AGENTSUP_POLICY_DIR": str(tmp_path / "none")}
    command = [sys.executable, "-m", "agentsup", "policy", "explain", "--policy", "permissive"]
    text = subprocess.run(
        [*command, "file_read", target], env=env, capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 1, text.stderr
    assert "rule:      secret-aws" in text.stdout
    assert f"matched by the real path of {home}/.aws: '{home}/dotfiles/aws/**'" in text.stdout
    document = subprocess.run(
        [*command, "--json", "file_read", target], env=env, capture_output=True, text=True
    )
    real_root = json.loads(document.stdout)["real_root"]
    assert real_root["root"] == str(home / ".aws")
    assert real_root["real"] == str(home / "dotfiles" / "aws")


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_cat_through_a_symlinked_aws_is_killed(sandbox: Sandbox) -> None:
    dotfiles = sandbox.home / "dotfiles" / "aws"
    dotfiles.mkdir(parents=True)
    (dotfiles / "credentials").write_text(SECRET + "\n")
    (sandbox.home / ".aws").symlink_to("dotfiles/aws")
    result = sandbox.run("cat", str(sandbox.home / ".aws" / "credentials"), policy="permissive")
    assert SECRET not in result.stdout and SECRET not in result.stderr
    assert result.returncode == 137, result.stderr
    assert ("file_read", "secret-aws") in sandbox.denials()
