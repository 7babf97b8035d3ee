"""agentsup's own Python never runs code the agent could write.

The supervisor runs as root on the host, often from the agent's workspace,
and starts helpers in its own Python while the agent runs: the watchdog,
the egress proxy's name resolver.  Red team 37: the watchdog was started
with `-m` from the workspace, so a package the agent wrote there
(`./agentsup/__init__.py`) ran as root outside every wall; the resolver with
`-c`, the same; and a `.pth` in the user's site-packages ran in both.  Each
helper starts isolated (`-I`: no current directory, PYTHONPATH or user
site on its path) and from `/`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Sandbox

from agentsup.paths import own_python
from agentsup.supervision import resolver, watchdog

PLANT = """\
mkdir -p agentsup concurrent
for package in agentsup concurrent; do
  printf 'open("%s", "w").write("ran as root")\\n' "$1" > "$package/__init__.py"
done
sleep 1.5
"""


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_package_the_agent_plants_in_the_workspace_is_never_imported_by_agentsup(
    sandbox: Sandbox,
) -> None:
    """The watchdog starts 0.3 s into the run, with the supervisor's current
    directory the workspace (`cd repo && agentsup run ...`)."""
    escaped = sandbox.root / "escaped"
    result = sandbox.run("/bin/sh", "-c", PLANT, "plant", str(escaped), cwd=sandbox.workspace)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (sandbox.workspace / "agentsup" / "__init__.py").exists()  # planted
    assert not escaped.exists()


def test_the_helpers_start_isolated_from_the_root_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[list[str], dict[str, Any]]] = []

    class Started:
        def __init__(self, command: list[str], **options: Any) -> None:
            started.append((command, options))
            self.stdout = open(os.devnull, "rb")  # noqa: SIM115  (closed below)

    class Group:
        paths = ["/sys/fs/cgroup/none"]

    class Loop:
        def add_reader(self, fd: int, callback: object) -> None:
            pass

    monkeypatch.setattr(subprocess, "Popen", Started)
    watchdog.spawn_watchdog(1, Group()).stdout.close()  # type: ignore[arg-type, union-attr]
    resolver.Resolver(Loop())._start().stdout.close()  # type: ignore[arg-type, union-attr]
    assert len(started) == 2
    for command, options in started:
        assert command[:2] == [sys.executable, "-I"], command
        assert options.get("cwd") == "/"
    assert own_python("-c", "pass") == [sys.executable, "-I", "-c", "pass"]


def test_an_isolated_python_ignores_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text("raise SystemExit('planted')\n")
    done = subprocess.run(
        [*own_python("-c", "import json"), "x"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


PTH = """\
mkdir -p "$1" && printf 'import os; open(%s, "w").write("ran")\\n' "'$2'" > "$1/planted.pth"
echo "exit $?"
"""


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_pth_file_the_agent_writes_never_runs_in_the_next_agentsup(sandbox: Sandbox) -> None:
    """Red team 37 F1: under `permissive` the agent may write its home, and
    `~/.local/lib/pythonX.Y/site-packages/*.pth` runs in every Python that
    reads the user's site-packages: the next `agentsup`, as root.  Where
    agentsup's Python reads it, writing there is refused (and it is
    read-only where it exists); in a virtual environment it is never read."""
    user_site = subprocess.run(
        [sys.executable, "-c", "import site; print(site.getusersitepackages())"],
        env=sandbox.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert user_site.startswith(str(sandbox.home))
    escaped = sandbox.root / "escaped"
    result = sandbox.run(
        "/bin/sh", "-c", PTH, "plant", user_site, str(escaped), policy="permissive"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sandbox.agentsup("--version").returncode == 0  # the next agentsup
    assert not escaped.exists()
    if _reads_user_site(sandbox):
        assert not Path(user_site, "planted.pth").exists()
        refused = [
            r for r in sandbox.audit_records() if r.get("rule") == "agentsup-self-protection"
        ]
        assert refused and "imports from here" in str(refused[0].get("message")), refused


DETOUR = """\
mkdir -p fake/lib/python3.11/site-packages
printf 'import os; open(%s, "w").write("ran")\\n' "'$2'" > fake/lib/python3.11/site-packages/z.pth
mv "$HOME/.local" "$HOME/.local.old" 2>/dev/null
rm -rf "$HOME/.local" 2>/dev/null
ln -s "$PWD/fake" "$HOME/.local" 2>/dev/null
exit 0
"""


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_no_detour_above_the_user_site_packages_reaches_the_next_agentsup(
    sandbox: Sandbox,
) -> None:
    """Red team 38 F2: with no ~/.local, the agent made `~/.local` a symlink to
    a directory of its own holding `lib/python3.11/site-packages/z.pth`, and
    the next agentsup ran it.  The user site-packages is made (and bound
    read-only) before the agent runs, so nothing above it can be swapped."""
    escaped = sandbox.root / "escaped"
    result = sandbox.run(
        "/bin/sh", "-c", DETOUR, "detour", str(escaped), policy="permissive", cwd=sandbox.workspace
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sandbox.agentsup("--version").returncode == 0
    assert not escaped.exists()
    if _reads_user_site(sandbox):  # else (a virtual environment) nothing reads it
        assert not (sandbox.home / ".local").is_symlink()


def test_a_missing_directory_on_agentsups_import_path_stops_the_run(sandbox: Sandbox) -> None:
    """Red team 38 F2: a PYTHONPATH entry that did not exist was made by the
    agent, with a sitecustomize.py the next agentsup ran as root."""
    missing = sandbox.home / "pylib"
    result = sandbox.run("true", env={"PYTHONPATH": str(missing)})
    assert result.returncode == 125
    assert f"agentsup's import path names {missing}, which does not exist" in result.stderr


def _reads_user_site(sandbox: Sandbox) -> bool:
    """Whether agentsup's Python reads the user's site-packages (not a venv's)."""
    done = subprocess.run(
        [sys.executable, "-c", "import site, sys; sys.exit(not site.ENABLE_USER_SITE)"],
        env=sandbox.env,
    )
    return done.returncode == 0
