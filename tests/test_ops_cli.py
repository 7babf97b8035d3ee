"""Command-line conventions: --help, --json (errors included), completion, one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentsup.cli.main import build_parser


def agentsup(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentsup", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def test_every_subcommand_has_a_help_description() -> None:
    missing = [
        " ".join(path) for path, parser in _walk(build_parser()) if path and not parser.description
    ]
    assert missing == []


def test_every_printing_command_takes_json() -> None:
    # Commands that print a result (not a program's output, a script or a stream of screens).
    exempt = {("run",), ("daemon",), ("demo",), ("completion",)}
    missing = []
    for path, parser in _walk(build_parser()):
        if not path or path in exempt:
            continue
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue
        if "--json" not in parser._option_string_actions:
            missing.append(" ".join(path))
    assert missing == []


@pytest.mark.usefixtures("locations")
def test_a_usage_error_under_json_is_json() -> None:
    result = agentsup("ps", "--json", "--bogus")
    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert error["exit_code"] == 2 and "--bogus" in error["error"]
    assert result.stderr == ""


@pytest.mark.usefixtures("locations")
def test_a_refusal_under_json_is_json() -> None:
    result = agentsup("kill", "nobody", "--json")
    assert result.returncode == 1
    error = json.loads(result.stdout)
    assert error == {"ok": False, "error": error["error"], "exit_code": 1}
    assert "no agent 'nobody'" in error["error"]


@pytest.mark.usefixtures("locations")
def test_totp_init_and_seal_print_json() -> None:
    result = agentsup("totp", "init", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["uri"].startswith("otpauth://totp/") and "secret=" in document["uri"]
    refused = agentsup("policy", "seal", "--code", "000000", "--json")
    assert refused.returncode == 1
    assert "error" in json.loads(refused.stdout)
    unseal = agentsup("policy", "unseal", "--code", "12ab56", "--json")
    assert unseal.returncode == 2
    assert "6 digits" in json.loads(unseal.stdout)["error"]


@pytest.mark.usefixtures("locations")
def test_a_non_numeric_totp_code_is_refused_before_it_costs_an_attempt() -> None:
    result = agentsup("resume", "someone", "--code", "abcdef")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "6 digits" in result.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_are_generated_from_the_parser(shell: str) -> None:
    result = agentsup("completion", shell)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for word in ("run", "ps", "pending", "resume", "policy", "seal", "--agents-dir", "--cpus"):
        assert word in script
    if shutil.which(shell) is not None:
        checked = subprocess.run([shell, "-n"], input=script, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("agentsup ", {"run", "ps", "policy", "completion"}),
        ("agentsup pol", {"policy"}),
        ("agentsup policy ", {"check", "seal", "explain"}),
        ("agentsup run --cpus ", {"auto", "all", "shared"}),
        ("agentsup run --policy strict --c", {"--cpus"}),
        ("agentsup completion ", {"bash", "zsh"}),
        ("agentsup logs -", {"--follow", "--json"}),
    ],
)
def test_bash_completion_completes(line: str, expected: set[str]) -> None:
    script = agentsup("completion", "bash").stdout
    words = line.split(" ")
    probe = (
        f"{script}\n"
        f"COMP_WORDS=({' '.join(repr(w) if w else repr('') for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={line!r}\nCOMP_POINT={len(line)}\n"
        "_agentsup agentsup\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "-c", probe], text=True, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert expected <= set(result.stdout.split()), result.stdout


@pytest.mark.usefixtures("locations")
def test_an_unexpected_error_is_one_line(tmp_path: Path) -> None:
    # An audit log path under a file: whatever the command, no traceback.
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = dict(os.environ, AGENTSUP_RUNTIME_DIR=str(blocker / "run"))
    result = agentsup("ps", env=env)
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 1)


def test_python_m_agentsup_never_imports_a_module_left_in_the_current_directory(
    tmp_path: Path,
) -> None:
    """`python -m` puts the current directory first on sys.path, and the
    supervisor runs as root, often in the agent's workspace: a module the agent
    left there (`tty.py`, `json.py`) must not be imported in the stdlib's place."""
    marker = tmp_path / "imported"
    for name in ("json", "tty", "socket"):
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r})\n")
    # An empty PYTHONPATH entry (`export PYTHONPATH=$PYTHONPATH:/x`) names it again.
    for python_path in (None, "/nonexistent:", ":/nonexistent", "."):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if python_path is not None:
            env["PYTHONPATH"] = python_path
        result = subprocess.run(
            [sys.executable, "-m", "agentsup", "policy", "list"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert not marker.exists(), python_path


def test_an_option_is_never_a_prefix_of_another() -> None:
    """New user 18: `run --json` was taken for `--json-status` (argparse's
    abbreviations), and wanted the next word as its file."""
    for path, parser in _walk(build_parser()):
        assert parser.allow_abbrev is False, path
    result = agentsup("run", "--json", "--policy", "nope", "--", "true")
    assert result.returncode == 125
    assert "unrecognized arguments: --json" in result.stderr
