"""agentsup needs no root: seccomp notification and Landlock work for any user.

The test runs the supervisor itself as `nobody`, with the system Python and
a private copy of agentsup and its pure-Python dependencies (the test
Python's own install may not be readable by other users).  Without a
writable cgroup the supervisor says so in one line and tracks the tree as
its subreaper; everything else works as for root.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAKE_KEY

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
    pytest.mark.skipif(
        not os.path.exists(SYSTEM_PYTHON) or not shutil.which("setpriv"),
        reason="needs a system python3 and setpriv",
    ),
]


def _system_python_version() -> str:
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture
def unprivileged_home() -> Iterator[Path]:
    if _system_python_version() != "{}.{}".format(*sys.version_info[:2]):
        pytest.skip("the system python3 is another minor version than the test's")
    root = Path(tempfile.mkdtemp(prefix="agentsup-nobody-"))
    try:
        lib = root / "lib"
        package = lib / "agentsup"
        shutil.copytree(ROOT / "supervisor", package, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(
            ROOT / "hooks", package / "hooks", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copytree(
            ROOT / "policies", package / "policies", ignore=shutil.ignore_patterns("__pycache__")
        )
        for name in ("pyseccomp", "yaml", "pyotp", "inotify_simple", "re2", "psutil", "h11"):
            origin = Path(importlib.import_module(name).__file__ or "")
            if origin.name == "__init__.py":
                shutil.copytree(
                    origin.parent, lib / name, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy(origin, lib / origin.name)
        home = root / "home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "id_rsa").write_text(FAKE_KEY)
        (root / "workspace").mkdir()
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
        subprocess.run(
            ["chown", "-R", f"{NOBODY}:{NOBODY}", str(home), str(root / "workspace")], check=True
        )
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def nobody_env(root: Path) -> dict[str, str]:
    """The environment of an agentsup of `nobody`'s, with its locations in its home."""
    home = root / "home"
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": str(root / "lib"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AGENTSUP_POLICY_DIR": str(home / "policies"),
        "AGENTSUP_AUDIT_LOG": str(home / "log" / "audit.jsonl"),
        "AGENTSUP_STATE_DIR": str(home / "state"),
        "AGENTSUP_RUNTIME_DIR": str(home / "run"),
    }


def run_as_nobody(root: Path, *program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            SYSTEM_PYTHON,
            "-m",
            "agentsup",
            "run",
            "--workspace",
            str(root / "workspace"),
            "--",
            *program,
        ],
        env=nobody_env(root),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_ordinary_user_supervises_and_kills(unprivileged_home: Path) -> None:
    listing = run_as_nobody(unprivileged_home, "ls", "-la")
    assert listing.returncode == 0, listing.stderr
    # No cgroup for a user: the PID namespace holds the tree, and each run
    # does not say so again (new user 18; `doctor` does).
    assert "no cgroup" not in listing.stderr

    key = unprivileged_home / "home" / ".ssh" / "id_rsa"
    stolen = run_as_nobody(unprivileged_home, "cat", str(key))
    assert stolen.returncode == 137, stolen.stderr
    assert "rule 'secret-ssh' denied file_read" in stolen.stderr
    assert "c2VjcmV0" not in stolen.stdout


def test_an_ordinary_users_agent_gets_the_same_walls(unprivileged_home: Path) -> None:
    """Through a user namespace: no capability, its own PID view, hostname and /tmp."""
    before = Path("/proc/sys/kernel/hostname").read_text()
    marker = f"agentsup-nobody-{os.getpid()}"
    # A process of the same user outside the agent's tree: out of its reach.
    neighbour = subprocess.Popen([*AS_NOBODY, "sleep", "60"])
    try:
        time.sleep(0.2)
        script = (
            "grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status; "
            "ls /proc | grep -c '^[0-9]'; "
            f"echo x > /tmp/{marker}; "
            "hostname pwned 2>/dev/null && echo renamed || echo refused; "
            f"renice -n 19 -p {neighbour.pid} >/dev/null 2>&1 && echo reniced || echo untouched"
        )
        result = run_as_nobody(unprivileged_home, "/bin/sh", "-c", script)
        assert os.getpriority(os.PRIO_PROCESS, neighbour.pid) == 0
    finally:
        neighbour.kill()
        neighbour.wait()
    assert "untouched" in result.stdout
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    caps = [line.split()[1] for line in lines if line.startswith("Cap")]
    assert caps and all(int(value, 16) == 0 for value in caps), result.stdout
    processes = next(line for line in lines if line.isdigit())
    assert int(processes) < 10  # its init, the shell and its children
    assert "refused" in result.stdout
    assert Path("/proc/sys/kernel/hostname").read_text() == before
    assert not Path(f"/tmp/{marker}").exists()


def test_the_demo_works_for_an_ordinary_user(unprivileged_home: Path) -> None:
    home = unprivileged_home / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "PYTHONPATH": str(unprivileged_home / "lib"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "XDG_RUNTIME_DIR": str(home / "run"),
    }
    result = subprocess.run(
        [*AS_NOBODY, SYSTEM_PYTHON, "-m", "agentsup", "demo"],
        env=env,
        cwd=str(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo passed" in result.stdout


def test_an_ordinary_users_inherited_tmpdir_is_made_in_its_private_tmp(
    unprivileged_home: Path,
) -> None:
    """A TMPDIR under /var/tmp: made in the agent's private /var/tmp (through
    its user namespace), empty, mode 0700 and the user's own.  (Not /tmp/user/UID
    here: this test's home, agentsup's state in it, lies in /tmp, and the
    kernel floor lets nothing new be made at the top of a /tmp that holds it.)"""
    tmpdir = f"/var/tmp/agentsup-test-{os.getpid()}/{NOBODY}"
    result = subprocess.run(
        [
            *AS_NOBODY,
            SYSTEM_PYTHON,
            "-m",
            "agentsup",
            "run",
            "--workspace",
            str(unprivileged_home / "workspace"),
            "--",
            "sh",
            "-c",
            'stat -c "%a %u" "$TMPDIR"; ls -A "$TMPDIR" | wc -l; mktemp',
        ],
        env={**nobody_env(unprivileged_home), "TMPDIR": tmpdir},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    mode, empty, made = result.stdout.split("\n")[:3]
    assert (mode, empty) == (f"700 {NOBODY}", "0")
    assert made.startswith(f"{tmpdir}/tmp.")
