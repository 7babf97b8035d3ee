"""Policy ergonomics: env lists merge along `extends`, warnings, IPv6 brackets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentsup.events import ActionType, Event
from agentsup.policy import (
    EnvPolicy,
    PolicyError,
    RunContext,
    compile_policy,
    load_policy_file,
    resolve_policy,
)
from agentsup.policy.model import DEFAULT_ENV_DENY, DEFAULT_ENV_PASS

CTX = RunContext(workspace="/w", home="/home/u", agent_id="agent", python_prefixes=("/opt/py",))


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# ---------------------------------------------------------------- env merges


def child_env(directory: Path, parent: str, child: str) -> EnvPolicy:
    """The effective env of a child with `env: CHILD` extending a parent with `env: PARENT`."""
    write(directory, "parent.yaml", f"name: parent\nenv: {parent}\n")
    path = write(directory, "child.yaml", f"name: child\nextends: [parent.yaml]\nenv: {child}\n")
    return load_policy_file(path, directory).env


def test_a_childs_env_lists_add_to_its_parents(tmp_path: Path) -> None:
    parent = "{pass: [PATH, HOME], deny: ['*_KEY']}"
    env = child_env(tmp_path, parent, "{pass: [LANG, HOME], deny: ['*TOKEN*']}")
    assert env.pass_ == ("PATH", "HOME", "LANG")
    assert env.deny == ("*_KEY", "*TOKEN*")


def test_a_child_that_writes_no_env_inherits_it(tmp_path: Path) -> None:
    env = child_env(tmp_path, "{pass: [PATH]}", "{deny: [X]}")
    assert env.pass_ == ("PATH",)  # not written: inherited
    assert env.deny == (*DEFAULT_ENV_DENY, "X")  # the parent's deny is the built-in one


def test_replace_names_the_lists_that_replace_the_parents(tmp_path: Path) -> None:
    parent = "{pass: [PATH, HOME], deny: ['*_KEY']}"
    env = child_env(tmp_path, parent, "{pass: [LANG], deny: [X], replace: [pass]}")
    assert env.pass_ == ("LANG",)
    assert env.deny == ("*_KEY", "X")


def test_env_merges_across_several_parents_and_a_diamond(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "name: base\nenv: {pass: [A], deny: [D1]}\n")
    write(tmp_path, "left.yaml", "name: left\nextends: [base.yaml]\nenv: {pass: [L]}\n")
    write(tmp_path, "right.yaml", "name: right\nextends: [base.yaml]\nenv: {deny: [D2]}\n")
    top = write(tmp_path, "top.yaml", "name: top\nextends: [left.yaml, right.yaml]\n")
    env = load_policy_file(top, tmp_path).env
    assert env.pass_ == ("A", "L")
    assert env.deny == ("D1", "D2")


def test_a_policy_without_parents_replaces_the_built_in_lists(tmp_path: Path) -> None:
    policy = load_policy_file(write(tmp_path, "p.yaml", "name: p\nenv: {pass: [X]}\n"), tmp_path)
    assert (policy.env.pass_, policy.env.deny) == (("X",), DEFAULT_ENV_DENY)
    bare = load_policy_file(write(tmp_path, "q.yaml", "name: q\n"), tmp_path)
    assert (bare.env.pass_, bare.env.deny) == (DEFAULT_ENV_PASS, DEFAULT_ENV_DENY)


def test_extending_strict_to_pass_one_more_variable_keeps_strict_s_list(tmp_path: Path) -> None:
    child = write(tmp_path, "c.yaml", "name: c\nextends: [strict]\nenv: {pass: [EDITOR]}\n")
    compiled = compile_policy(load_policy_file(child, tmp_path), CTX)
    assert compiled.env_allowed("EDITOR") and compiled.env_allowed("PATH")
    assert not compiled.env_allowed("OPENAI_API_KEY")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("{replace: [both]}", "unknown list 'both' in 'env.replace'"),
        ("{replace: pass}", "'env.replace' must be a list of strings"),
        ("{pass: ['[z-a]']}", "bad character class"),
    ],
)
def test_a_bad_env_section_is_refused(tmp_path: Path, env: str, message: str) -> None:
    path = write(tmp_path, "p.yaml", f"name: p\nenv: {env}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy_file(path, tmp_path)
    assert caught.value.line == 2
    assert message in caught.value.message


# ---------------------------------------------------------------- warnings


def test_a_pass_entry_a_deny_glob_matches_is_a_warning_naming_both(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        name: p
        env:
          pass: [PATH, GITHUB_TOKEN]
          deny: ["*_KEY", "*TOKEN*"]
        """,
    )
    policy = load_policy_file(path, tmp_path)
    assert policy.warnings == (
        f"{path}:3:16: warning: env.pass entry 'GITHUB_TOKEN' is also matched by env.deny "
        f"'*TOKEN*' ({path}:4:19), so it is never passed",
    )


def test_a_child_deny_that_hides_an_inherited_pass_warns_at_the_deny(tmp_path: Path) -> None:
    child = write(tmp_path, "c.yaml", "name: c\nextends: [strict]\nenv: {deny: ['LANG*']}\n")
    (warning,) = load_policy_file(child, tmp_path).warnings
    # strict passes agentsup's default list: the entry was written nowhere.
    assert warning == (
        f"{child}:3:14: warning: env.pass entry 'LANG' (built-in default) is also matched "
        "by env.deny 'LANG*', so it is never passed"
    )


def test_the_templates_have_no_warnings() -> None:
    for name in ("strict", "permissive", "read_only", "audit"):
        assert resolve_policy(name, Path("/nonexistent-policy-dir")).warnings == ()


# ---------------------------------------------------------------- IPv6 brackets


@pytest.mark.parametrize(
    ("target", "address", "matches"),
    [
        ("[::1]:0", "[::1]:0", True),
        ("[::1]:0", "1:0", False),
        ("[::1]:*", "[::1]:8080", True),
        ("[fe80::*]:22", "[fe80::1]:22", True),
        ("[fe80::*]:22", "[fe81::1]:22", False),
        ("10.0.0.[1-3]:*", "10.0.0.2:80", True),  # one colon or none: still a class
        ("GET http://[::1]:8080/**", "GET http://[::1]:8080/x", True),
    ],
)
def test_a_bracketed_ipv6_address_in_a_glob_is_literal(
    tmp_path: Path, target: str, address: str, matches: bool
) -> None:
    action = "network_request" if target.startswith("GET") else "network_connect"
    rule = f"{{id: r, actions: [{action}], target: '{target}', decision: allow}}"
    path = write(tmp_path, "p.yaml", f"name: p\nrules:\n  - {rule}\n")
    compiled = compile_policy(load_policy_file(path, tmp_path), CTX)
    decided = compiled.evaluate(Event(ActionType(action), address)).rule_id
    assert (decided == "r") is matches
