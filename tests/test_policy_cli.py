"""`agentsup policy check | list | explain`, run as a user would run them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentsup.cli.main import main
from agentsup.policy import resolve_policy
from agentsup.policy.sources import MAX_POLICY_BYTES

# strict's own rules, which every child of it counts too.
STRICT_RULES = len(resolve_policy("strict", Path("/nonexistent-policy-dir")).rules)

BAD_DECISION_AT_LINE_12 = """\
# A team policy with a typo in its second rule.
name: team
description: the team's policy
default: deny
rules:
  - id: docs
    actions: [file_read]
    target: "{workspace}/docs/**"
    decision: allow
  - id: ws
    actions: [file_read, file_write]
    decision: alow
    target: "{workspace}/**"
"""


def agentsup(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentsup", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "HOME": "/root"},
    )


@pytest.fixture
def policy_dir(locations: Path) -> Path:
    return locations / "policies"


# ---------------------------------------------------------------- check


def test_check_reports_ok_with_the_rule_count(policy_dir: Path) -> None:
    good = policy_dir / "good.yaml"
    good.write_text("name: good\nextends: [strict]\nrules:\n" + _rule("extra"))
    result = agentsup("policy", "check", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{good}: ok ({STRICT_RULES + 1} rules)\n"


def test_check_takes_a_name_as_run_does(policy_dir: Path) -> None:
    """New user 18: `policy check mine` could not read a file named `mine`."""
    (policy_dir / "mine.yaml").write_text("name: mine\nextends: [strict]\nrules:\n" + _rule("x"))
    result = agentsup("policy", "check", "mine", "strict")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"mine: ok ({STRICT_RULES + 1} rules)",
        f"strict: ok ({STRICT_RULES} rules)",
    ]
    missing = agentsup("policy", "check", "nosuch")
    assert missing.returncode == 1 and "no such policy" in missing.stdout


def test_check_prints_warnings_and_still_passes(policy_dir: Path) -> None:
    shadowed = policy_dir / "shadowed.yaml"
    shadowed.write_text("name: shadowed\nextends: [strict]\nenv: {pass: [GITHUB_TOKEN]}\n")
    result = agentsup("policy", "check", str(shadowed))
    assert result.returncode == 0, result.stderr
    ok, warning = result.stdout.splitlines()
    assert ok == f"{shadowed}: ok ({STRICT_RULES} rules)"
    assert warning.startswith(f"{shadowed}:3:14: warning: env.pass entry 'GITHUB_TOKEN'")
    [report] = json.loads(agentsup("policy", "check", "--json", str(shadowed)).stdout)
    assert report["warnings"] == [warning]


def test_policy_check_dev_zero_answers_at_once_with_one_line() -> None:
    result = agentsup("policy", "check", "/dev/zero")
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1 and "not a regular file" in result.stdout
    assert "Traceback" not in result.stderr


def test_policy_explain_with_a_long_name_is_one_line() -> None:
    result = agentsup("policy", "explain", "--policy", "x" * 300, "file_read", "/x")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_check_names_file_line_and_column_and_fails(tmp_path: Path, policy_dir: Path) -> None:
    bad = tmp_path / "team.yaml"
    bad.write_text(BAD_DECISION_AT_LINE_12)
    good = tmp_path / "good.yaml"
    good.write_text("name: good\n")
    result = agentsup("policy", "check", str(good), str(bad))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{good}: ok (0 rules)",
        f"{bad}:12:15: rule 'ws': unknown decision 'alow' "
        "(expected one of allow, deny, warn, require_approval, log)",
    ]


def test_check_json(tmp_path: Path, policy_dir: Path) -> None:
    bad = tmp_path / "team.yaml"
    bad.write_text(BAD_DECISION_AT_LINE_12)
    result = agentsup("policy", "check", "--json", str(bad))
    assert result.returncode == 1
    [report] = json.loads(result.stdout)
    assert report["ok"] is False
    error = report["error"]
    assert (error["path"], error["line"], error["column"], error["rule"]) == (
        str(bad),
        12,
        15,
        "ws",
    )


def test_every_unreadable_policy_file_is_one_line_with_one_place(tmp_path: Path) -> None:
    """Whatever is wrong with the file itself, `check` names it once: `FILE:1:1:`
    and the problem.  A file over 1 MiB used to print the place twice
    (`big.yaml:1:1: cannot read policy file: big.yaml:1:1: too large ...`),
    and so did a directory, a FIFO and an `extends` of any of them."""
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n# " + "x" * MAX_POLICY_BYTES + "\n")
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"name: p\ndescription: caf\xe9\n")
    shared = tmp_path / "shared.yaml"
    shared.write_text("name: shared\n")
    shared.chmod(0o666)
    child = tmp_path / "child.yaml"
    child.write_text(f"name: child\nextends: [{big}]\n")
    expected = {
        big: f"{big}:1:1: too large: {big.stat().st_size} bytes "
        f"(a policy has at most {MAX_POLICY_BYTES})",
        folder: f"{folder}:1:1: not a regular file (a directory); a policy is a YAML file",
        fifo: f"{fifo}:1:1: not a regular file (a FIFO); a policy is a YAML file",
        tmp_path / "missing.yaml": f"{tmp_path / 'missing.yaml'}:1:1: "
        "cannot read policy file: No such file or directory",
        latin1: f"{latin1}:2:17: not UTF-8 text (invalid continuation byte)",
        shared: f"{shared}:1:1: cannot be trusted: {shared} is writable by anyone",
        child: f"{child}:2:11: cannot use '{big}' in extends: too large: "
        f"{big.stat().st_size} bytes (a policy has at most {MAX_POLICY_BYTES})",
    }
    result = agentsup("policy", "check", *map(str, expected))
    assert result.returncode == 1
    assert result.stdout.splitlines() == list(expected.values())
    for line in result.stdout.splitlines():
        assert len(re.findall(r":\d+:\d+: ", line)) == 1, line
    [report] = json.loads(agentsup("policy", "check", "--json", str(big)).stdout)
    assert report["error"]["message"].startswith("too large: ")


# ---------------------------------------------------------------- list


def test_list_shows_templates_and_local_policies_and_shadowing(policy_dir: Path) -> None:
    (policy_dir / "strict.yaml").write_text(
        "name: strict\ndescription: our own strict\nextends: [strict]\n"
    )
    (policy_dir / "team.yaml").write_text("name: team\ndescription: the team policy\n")
    (policy_dir / "broken.yaml").write_text("name: broken\ndefault: maybe\n")
    result = agentsup("policy", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"policy directory: {policy_dir}"
    assert any(line.startswith("team ") and "the team policy" in line for line in lines)
    assert any(
        line.startswith("strict ") and "our own strict" in line and "shadows" in line
        for line in lines
    )
    assert any(
        line.startswith("strict ") and "built-in" in line and "shadowed by" in line
        for line in lines
    )
    assert any(
        line.startswith("broken ") and "INVALID" in line and ":2:10:" in line for line in lines
    )
    for name in ("audit", "permissive", "read_only"):
        assert any(line.startswith(name + " ") and "built-in" in line for line in lines)

    listed = json.loads(agentsup("policy", "list", "--json").stdout)
    by_origin = {(p["name"], p["origin"]): p for p in listed["policies"]}
    assert by_origin["strict", "built-in"]["shadowed_by"] == str(policy_dir / "strict.yaml")
    assert by_origin["strict", "policy-dir"]["shadows"] == "built-in strict"
    assert by_origin["broken", "policy-dir"]["ok"] is False


# ---------------------------------------------------------------- explain


def test_explain_names_the_deny_rule_for_an_ssh_key_and_exits_1(policy_dir: Path) -> None:
    result = agentsup("policy", "explain", "--policy", "strict", "file_read", "/root/.ssh/id_rsa")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "decision:  deny (response: kill)" in out
    assert "rule:      secret-ssh (priority 10, " in out
    assert "strict.yaml:" in out
    assert "matcher:   glob '/root/.ssh/**'" in out
    assert "severity:  critical" in out
    assert "on_violation: sigkill" in out


def test_explain_lists_the_rules_tried_before_and_exits_0_for_allow(
    tmp_path: Path, policy_dir: Path
) -> None:
    # Beside agentsup's own directories, not above them: the kernel floor
    # reaches a parent of a protected path only through what is in it now.
    workspace = tmp_path / "ws"
    workspace.mkdir()
    result = agentsup(
        "policy",
        "explain",
        "--policy",
        "strict",
        "--workspace",
        str(workspace),
        "file_read",
        f"{workspace}/src/main.py",
    )
    assert result.returncode == 0, result.stderr
    assert "decision:  allow (response: allow)" in result.stdout
    assert "rule:      workspace " in result.stdout
    assert "  secret-ssh (priority 10, " in result.stdout
    assert "target did not match glob '/root/.ssh/**'" in result.stdout


@pytest.mark.requires_landlock
def test_explain_applies_the_kernel_floor_and_says_when_it_decides(policy_dir: Path) -> None:
    # permissive allows writes by default; the floor never reaches agentsup's own files.
    target = str(policy_dir / "strict.yaml")
    result = agentsup("policy", "explain", "--policy", "permissive", "file_write", target)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "decision:  deny (response: block)" in out
    assert "the kernel floor decides; the policy alone says allow" in out
    assert "rule agentsup-kernel-floor" in out
    report = json.loads(
        agentsup(
            "policy", "explain", "--json", "--policy", "permissive", "file_write", target
        ).stdout
    )
    assert report["decision"]["rule"] == "agentsup-kernel-floor"
    assert report["policy_decision"]["verdict"] == "allow"
    assert report["floor"]["decides"] is True
    agrees = agentsup("policy", "explain", "--policy", "strict", "file_read", "/etc/hosts")
    assert "kernel floor: reaches the target" in agrees.stdout


def test_explain_of_a_target_over_the_length_cap_says_why(
    policy_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process: the kernel refuses a single argument this long (E2BIG).
    code = main(["policy", "explain", "--policy", "strict", "shell_execute", "x" * 140_000])
    assert code == 1
    out = capsys.readouterr().out
    assert "rule:      agentsup-target-too-long (the target has 140000 characters" in out


def test_explain_workspace_defaults_to_the_current_directory(tmp_path: Path) -> None:
    result = agentsup(
        "policy", "explain", "--policy", "strict", "file_write", f"{tmp_path}/x", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_explain_exit_codes_follow_the_verdict(policy_dir: Path) -> None:
    (policy_dir / "codes.yaml").write_text(
        "name: codes\ndefault: deny\nrules:\n"
        + _rule("ok", "allow", "/ok")
        + _rule("logged", "log", "/log")
        + _rule("warned", "warn", "/warn")
        + _rule("asks", "require_approval", "/ask")
        + _rule("scoped", "allow", "/scoped", agents='["analyst-*"]')
    )

    def code(target: str, *extra: str) -> int:
        return agentsup(
            "policy", "explain", "--policy", "codes", *extra, "file_read", target
        ).returncode

    assert [code("/ok"), code("/log"), code("/warn"), code("/ask"), code("/none")] == [
        0,
        0,
        0,
        2,
        1,
    ]
    assert code("/scoped") == 1
    assert code("/scoped", "--id", "analyst-1") == 0


def test_explain_json(policy_dir: Path) -> None:
    result = agentsup(
        "policy", "explain", "--json", "--policy", "strict", "file_read", "/etc/../root/.ssh/id_rsa"
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["normalised_target"] == "/root/.ssh/id_rsa"
    assert report["decision"]["verdict"] == "deny"
    assert report["decision"]["response"] == "kill"
    assert report["rule"]["id"] == "secret-ssh"
    assert report["rule"]["matcher"] == "glob '/root/.ssh/**'"
    # Tried first: the workspace's own key files (priority 9), which this is not.
    assert [rule["id"] for rule in report["tried"]] == ["workspace-key-read"]


MD = "169.254.169.254"  # the cloud metadata address
METADATA = """
name: metadata
default: allow
rules:
  - id: no-metadata
    actions: [network_request]
    target: "* http://169.254.169.254/**"
    decision: deny
  - {id: no-loopback, actions: [network_connect], target: "127.0.0.1:*", decision: deny}
"""


@pytest.mark.parametrize(
    ("action", "typed", "judged", "rule"),
    [
        ("network_request", "delete http://2852039166/x", f"DELETE http://{MD}/x", "no-metadata"),
        ("network_request", "GET http://169.254.43518/", f"GET http://{MD}/", "no-metadata"),
        ("network_connect", "0x7f.1:80", "127.0.0.1:80", "no-loopback"),
        ("network_connect", "[::ffff:127.0.0.1]:22", "127.0.0.1:22", "no-loopback"),
    ],
)  # fmt: skip
def test_explain_judges_a_network_target_as_the_run_spells_it(
    policy_dir: Path, action: str, typed: str, judged: str, rule: str
) -> None:
    """`127.1`, `2130706433` and `delete` are what the hook, the proxy and
    the seccomp layer judge as 127.0.0.1 and DELETE: explain says so."""
    (policy_dir / "metadata.yaml").write_text(METADATA)
    result = agentsup("policy", "explain", "--json", "--policy", "metadata", action, typed)
    report = json.loads(result.stdout)
    assert (report["target"], report["normalised_target"]) == (typed, judged)
    assert report["rule"]["id"] == rule and result.returncode == 1


def test_explain_with_a_bad_policy_prints_the_error_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "team.yaml"
    bad.write_text(BAD_DECISION_AT_LINE_12)
    result = agentsup("policy", "explain", "--policy", str(bad), "file_read", "/x")
    assert result.returncode == 1
    assert f"{bad}:12:15: rule 'ws': unknown decision 'alow'" in result.stderr


def test_an_unknown_action_type_is_a_usage_error(policy_dir: Path) -> None:
    result = agentsup("policy", "explain", "--policy", "strict", "file_raed", "/x")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert agentsup("policy").returncode == 2


def _rule(rule_id: str, decision: str = "allow", target: str = "/x", agents: str = "") -> str:
    scoped = f", agents: {agents}" if agents else ""
    return (
        f"  - {{id: {rule_id}, actions: [file_read], target: '{target}', "
        f"decision: {decision}{scoped}}}\n"
    )


# ---------------------------------------------------------------- the run's context


def _explained(*args: str) -> tuple[int, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "agentsup", "policy", "explain", "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": os.environ["HOME"]},
    )
    report = json.loads(result.stdout)
    decision = report["decision"]
    assert isinstance(decision, dict)
    return result.returncode, decision


def test_explain_fills_home_and_workspace_as_run_does(
    tmp_path: Path, policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Targets are real paths.  With a symlinked home and workspace, `run`
    matches `{home}` and `{workspace}` by their real paths too: so must explain."""
    real_home, real_ws = tmp_path / "disk" / "home", tmp_path / "disk" / "ws"
    real_home.mkdir(parents=True)
    real_ws.mkdir()
    (tmp_path / "home").symlink_to(real_home)
    (tmp_path / "ws").symlink_to(real_ws)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, decision = _explained("--policy", "strict", "file_read", f"{real_home}/.ssh/config")
    assert (code, decision["rule"]) == (1, "secret-ssh")
    code, decision = _explained(
        "--policy", "strict", "--workspace", str(tmp_path / "ws"), "file_write", f"{real_ws}/x"
    )
    assert (code, decision["rule"]) == (0, "workspace")


def test_explain_and_suggest_share_the_runs_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentsup.cli.policy import run_context
    from agentsup.policy import builtin_source, load_policy_text, load_source
    from agentsup.policy.suggest import suggest

    real_home, real_ws = tmp_path / "disk" / "home", tmp_path / "disk" / "ws"
    real_home.mkdir(parents=True)
    real_ws.mkdir()
    (tmp_path / "home").symlink_to(real_home)
    (tmp_path / "ws").symlink_to(real_ws)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    context = run_context(str(tmp_path / "ws"), "a")
    assert (context.workspace, context.home, context.home_real) == (
        str(real_ws),
        str(tmp_path / "home"),
        str(real_home),
    )
    # suggest writes a file under the real home with `{home}`, as a rule names it.
    parent = load_policy_text("name: parent\ndefault: deny\n", "parent.yaml")
    strict_source = builtin_source("strict")
    assert strict_source is not None
    strict = load_source(strict_source, Path("/nonexistent"))
    record = {"agent": "a", "kind": "decision", "decision": "deny", "rule": "<default>"}
    run = [
        {"agent": "a", "kind": "lifecycle", "event": "start", "policy": "parent"},
        {**record, "action_type": "file_write", "target": f"{real_home}/.cache/pip/x/1"},
        *({**record, "action_type": "file_read", "target": f"{real_home}/n{n}"} for n in range(3)),
    ]
    text = suggest(run, parent, strict, context, extends="parent", name="learned")
    assert "target: '{home}/.cache/pip/**'" in text
    # Three files of the home directory itself stay exact: never `{home}/*`.
    assert "target: '{home}/n0'" in text and "{home}/*'" not in text
    assert str(real_home) not in text


class _ContextBuilt(Exception):
    """Raised where a run compiles its policy: the run's context is made by then."""


def test_explain_and_a_run_build_the_same_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`policy explain` and `agentsup run` fill the placeholders alike for the
    same workspace, home and agent id (symlinked, where they could differ)."""
    from typing import cast

    from agentsup.cli.policy import run_context
    from agentsup.kernel.cgroup import AgentCgroup, CgroupUnavailable
    from agentsup.paths import Locations
    from agentsup.supervision import agent as agent_module
    from agentsup.supervision.supervisor import Supervisor

    real_home, real_ws = tmp_path / "disk" / "home", tmp_path / "disk" / "ws"
    real_home.mkdir(parents=True)
    real_ws.mkdir()
    (tmp_path / "home").symlink_to(real_home)
    (tmp_path / "ws").symlink_to(real_ws)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def no_cgroup(name: str) -> AgentCgroup:
        raise CgroupUnavailable("not in this test")

    def stop_at_compile(resolved: object, ctx: object, state_dir: Path) -> None:
        raise _ContextBuilt

    monkeypatch.setattr(AgentCgroup, "create", no_cgroup)
    monkeypatch.setattr(agent_module, "compile_policy_cached", stop_at_compile)
    own = tmp_path / "agentsup"
    locations = Locations(own / "policies", own / "audit.jsonl", own / "state", own / "run")
    supervisor = cast(Supervisor, _FakeSupervisor(locations))
    request = agent_module.RunRequest("true", [], workspace=str(tmp_path / "ws"), agent_id="a")
    agent = agent_module.Agent(request, supervisor)
    with pytest.raises(_ContextBuilt):
        agent.prepare()
    assert agent._context == run_context(str(tmp_path / "ws"), "a")
    assert agent._context is not None
    assert (agent._context.workspace, agent._context.home_real) == (str(real_ws), str(real_home))


class _FakeSupervisor:
    """What `Agent` reads of its supervisor before it starts anything."""

    def __init__(self, locations: object) -> None:
        self.locations = locations
        self.loop = None
        self.audit = None


def test_a_runs_context_is_built_from_the_paths_it_is_given() -> None:
    """`RunContext.for_run` asks only the `realpath` it is handed: pure."""
    from agentsup.policy import RunContext

    context = RunContext.for_run("/w", "/home/u", "a", realpath=lambda path: "/real" + path)
    assert (context.workspace, context.home, context.home_real, context.agent_id) == (
        "/real/w",
        "/home/u",
        "/real/home/u",
        "a",
    )


AGENTSUP = [sys.executable, "-m", "agentsup"]


def test_explain_with_no_such_policy_is_the_json_failure_envelope(tmp_path: Path) -> None:
    result = subprocess.run(
        [*AGENTSUP, "policy", "explain", "--json", "--policy", "nosuch", "file_read", "/x"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "AGENTSUP_POLICY_DIR": str(tmp_path)},
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert (report["ok"], report["exit_code"]) == (False, 1)
    assert report["error"].startswith("nosuch:1:1: no such policy")
    assert report["at"]["line"] == 1
