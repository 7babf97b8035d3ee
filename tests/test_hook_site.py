"""hooks/site/sitecustomize.py: the hook in every Python the agent runs.

Foreign interpreters (pyenv builds, Debian's /usr/bin/python3) with only the
site directory on PYTHONPATH, against a real HookServer in a thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_hook_e2e import Policy, ServedHooks

from agentsup.hooks import bootstrap

PYENV = Path.home() / ".pyenv" / "versions"


def _interpreters() -> list[str]:
    found = [sys.executable, "/usr/bin/python3"]
    found += sorted(str(p) for p in PYENV.glob("3.*/bin/python3"))
    return [p for p in dict.fromkeys(found) if os.access(p, os.X_OK)]


def _version(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    major, minor = out.split()
    return int(major), int(minor)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Policy], ServedHooks]]:
    served: list[ServedHooks] = []

    def start(allows: Policy) -> ServedHooks:
        served.append(ServedHooks(tmp_path / "hook.sock", allows))
        return served[-1]

    yield start
    for item in served:
        item.close()


def run_foreign(
    tmp_path: Path, script: str, *path: str, python: str = "/usr/bin/python3"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-c", script],
        env=foreign_env(tmp_path, *path),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def foreign_env(tmp_path: Path, *path: str) -> dict[str, str]:
    # Nothing of agentsup's own interpreter: no .pth, only the site directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYENV"))}
    env.update(bootstrap.environment(tmp_path / "hook.sock", "agent-1"))
    env["PYTHONPATH"] = os.pathsep.join([bootstrap.SITE_DIR, *path])
    return env


READ_HOME = """
import os
try:
    os.environ.get("HOME")
    print("read HOME")
except PermissionError as exc:
    print("refused:", exc)
"""


@pytest.mark.parametrize("python", _interpreters())
def test_any_python_3_8_or_later_is_hooked(
    python: str, tmp_path: Path, serve: Callable[[Policy], ServedHooks]
) -> None:
    served = serve(lambda r: r.target != "HOME")
    result = run_foreign(tmp_path, READ_HOME, python=python)
    if _version(python) < (3, 8):
        # No audit hooks in this Python: it says so and runs unhooked.
        assert "has no audit hooks" in result.stderr
        assert result.stdout.strip() == "read HOME"
        return
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:"), result.stdout + result.stderr
    assert [r.target for r in served.checks("env_read")] == ["HOME"]
    assert served.tampers == []


def test_an_existing_sitecustomize_still_runs(
    tmp_path: Path, serve: Callable[[Policy], ServedHooks]
) -> None:
    served = serve(lambda r: True)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nSEEN = os.getpid()\n")
    script = "import sitecustomize, os; print(sitecustomize.SEEN == os.getpid(), os.getenv('X'))"
    result = run_foreign(tmp_path, script, str(theirs))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "None"]
    assert [r.target for r in served.checks("env_read")] == ["X"]


def test_agentsups_own_python_gets_one_hook(
    tmp_path: Path, serve: Callable[[Policy], ServedHooks]
) -> None:
    # The .pth installs first; sitecustomize and the bootstrap must not add another.
    served = serve(lambda r: True)
    env = {**os.environ, **foreign_env(tmp_path)}
    agent = tmp_path / "agent.py"
    agent.write_text("import os\nos.environ.get('X')\n")
    result = subprocess.run(
        bootstrap.command(agent), env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert [r.target for r in served.checks("env_read")] == ["X"]


def test_explicit_env_of_a_child_keeps_the_site_directory(
    tmp_path: Path, serve: Callable[[Policy], ServedHooks]
) -> None:
    served = serve(lambda r: r.target != "HOME")
    parent = (
        "import subprocess, sys\n"
        'child = \'import os\\ntry:\\n os.environ.get("HOME")\\nexcept PermissionError:\\n'
        ' print("child refused")\'\n'
        "subprocess.run(['/usr/bin/python3', '-c', child], env={'PATH': '/usr/bin'})\n"
    )
    result = run_foreign(tmp_path, parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "child refused"
    assert [r.target for r in served.checks("env_read")] == ["HOME"]


def test_other_modules_may_change_their_own_class(
    tmp_path: Path, serve: Callable[[Policy], ServedHooks]
) -> None:
    # importlib creates modules as type(sys)(name): they share the guarded class.
    served = serve(lambda r: True)
    script = (
        "import importlib.util, sys, types\n"
        "lazy = importlib.util.module_from_spec(importlib.util.spec_from_loader('lazy', None))\n"
        "class Deprecating(type(lazy)): pass\n"
        "lazy.__class__ = Deprecating\n"
        "lazy.audit = 1\n"
        "try:\n"
        "    sys.__class__ = types.ModuleType\n"
        "except PermissionError:\n"
        "    print('sys guarded')\n"
        "print(type(lazy).__name__)\n"
    )
    result = run_foreign(tmp_path, script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sys", "guarded", "Deprecating"]
    assert len(served.tampers) == 1
