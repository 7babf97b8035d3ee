"""The install path: README commands, install.sh, the systemd unit, CI and the Vagrantfile."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "agentsup.service"


def readme_commands() -> list[str]:
    """The commands of the README's "Two commands" block, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_readme_has_an_install_and_a_test_command() -> None:
    install, test = readme_commands()
    assert install == "./install.sh && agentsup demo"
    assert test.startswith("./install.sh --test && ") and "-m pytest" in test


def test_ci_and_the_vagrantfile_run_the_readme_test_command_verbatim() -> None:
    _install, test = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
    vagrant = (ROOT / "Vagrantfile").read_text()
    assert test in [line.strip() for line in vagrant.splitlines()]
    for text in (ci, vagrant):
        assert "|| true" not in text
    assert "reboot: true" in vagrant
    assert "set -euxo pipefail" in vagrant


def test_the_unit_runs_what_install_sh_installs() -> None:
    install = (ROOT / "install.sh").read_text()
    prefix = re.search(r"PREFIX=\$\{PREFIX:-(/[^}]+)\}", install)
    assert prefix is not None
    exec_start = re.search(r"^ExecStart=(\S+) daemon$", UNIT.read_text(), re.MULTILINE)
    assert exec_start is not None
    assert exec_start.group(1) == f"{prefix.group(1)}/bin/agentsup"
    _install, test = readme_commands()
    assert f'PATH="{prefix.group(1)}/bin:$PATH" python -m pytest' in test


def test_install_sh_is_valid_sh() -> None:
    result = subprocess.run(["sh", "-n", str(ROOT / "install.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", str(ROOT / "install.sh")], capture_output=True)
        assert checked.returncode == 0, checked.stdout


def _analyzable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an agentsup that exists here."""
    unit = tmp_path / "agentsup.service"
    here = Path(sys.executable).parent / "agentsup"
    target = str(here) if here.exists() else shutil.which("true") or "/bin/true"
    unit.write_text(UNIT.read_text().replace("/opt/agentsup/bin/agentsup", target))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(_analyzable_unit(tmp_path))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "agentsup.service" not in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_scores_ok_or_better(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(_analyzable_unit(tmp_path))],
        capture_output=True,
        text=True,
    )
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip("systemd-analyze is older than 250 (no --offline)")
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) < 5.0 and match.group(2) in ("OK", "SAFE", "PERFECT")


def test_the_unit_keeps_what_the_daemon_needs() -> None:
    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and line[0].isupper()
    )
    assert settings["Type"] == "notify"
    assert settings["Delegate"] == "yes"
    for forbidden in (
        "RestrictNamespaces",
        "ProtectControlGroups",
        "ProtectHostname",
        "MemoryDenyWriteExecute",
        "PrivateNetwork",
        "User",
        "DynamicUser",
        "ProcSubset",
        "IPAddressDeny",
    ):
        assert forbidden not in settings, forbidden
    for capability in ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_KILL", "CAP_SETPCAP"):
        assert capability in settings["CapabilityBoundingSet"]
    denied = settings["SystemCallFilter"]
    assert denied.startswith("~") and not {"@mount", "@debug", "@privileged"} & set(denied.split())


# A Python for install.sh that makes a stub environment: its python and
# agentsup log how they are called, and do nothing else.
STUB_PYTHON = """#!/bin/sh
echo "python $*" >> "$STUB_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin"
    for tool in python agentsup; do
        printf '#!/bin/sh\\necho "%s $*" >> "%s"\\ncat >/dev/null 2>&1 </dev/null\\n' \\
            "$tool" "$STUB_LOG" > "$3/bin/$tool"
        chmod +x "$3/bin/$tool"
    done
fi
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1)")
def test_a_prefix_given_as_root_is_a_private_installation(tmp_path: Path) -> None:
    """New user 17: `PREFIX=... BINDIR=... ./install.sh` as root still wrote
    /etc/agentsup, the completions and the systemd unit, repointing the
    host's service at the new environment.  Run in a mount namespace of its
    own, over empty system directories, so a regression writes nothing real."""
    import os

    if os.geteuid() != 0:
        pytest.skip("install.sh's system installation is root's")
    stub = tmp_path / "python3"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    covered = ["/etc", "/usr/share/bash-completion", "/usr/local/share"]
    mounts = "; ".join(f"mount -t tmpfs none {path}" for path in covered if os.path.isdir(path))
    script = f"{mounts}; cd {ROOT} && ./install.sh && find /etc /usr/local/share -mindepth 1"
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        env={
            "PATH": os.environ["PATH"],
            "PYTHON": str(stub),
            "PREFIX": str(tmp_path / "venv"),
            "BINDIR": str(tmp_path / "bin"),
            "STUB_LOG": str(log),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no systemd unit, completion or /etc/agentsup installed" in done.stdout
    listed = done.stdout.split("install.sh: done:")[-1].split()
    assert listed == [], listed  # nothing written in /etc or /usr/local/share
    assert (tmp_path / "bin" / "agentsup").is_symlink()
    assert "agentsup completion" not in log.read_text()
