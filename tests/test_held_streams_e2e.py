"""The agent's standard streams, named as files: /dev/stdout, /dev/stderr, /dev/fd/N.

`agentsup run ... > build.log 2>&1` hands the agent a log file that may lie
outside every root the policy grants (here /run, which strict neither lets
the agent read nor write).  Reopening its own stream by name
(`echo x > /dev/stderr`, `tee /dev/stdout`) gives the agent nothing its fd
does not give it already: it works as it does without agentsup, with no rule
asked.  Asking for more than the fd allows (reading a write-only stdout) is
judged as any open of that file is.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AGENTS, Sandbox, fastpath_env

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

SCRIPT = (
    "echo to-stderr > /dev/stderr; "
    "echo to-stdout | tee /dev/stdout > /dev/null; "
    "echo appended >> /dev/fd/1; "
    "echo last"
)


@pytest.fixture
def log_dir() -> Iterator[Path]:
    """A directory outside every root strict grants."""
    where = Path(tempfile.mkdtemp(prefix="agentsup-log-", dir="/var/lib"))
    yield where
    shutil.rmtree(where, ignore_errors=True)


def _run_logged(command: list[str], log: Path, env: dict[str, str]) -> int:
    with log.open("w") as output:
        return subprocess.run(command, stdout=output, stderr=output, env=env, timeout=60).returncode


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_a_log_file_outside_every_root_is_reopened_through_the_agents_own_streams(
    sandbox: Sandbox, log_dir: Path, native: bool
) -> None:
    bare_log, supervised_log = log_dir / "bare.log", log_dir / "supervised.log"
    assert _run_logged(["sh", "-c", SCRIPT], bare_log, sandbox.env) == 0
    env = {**sandbox.env, "AGENTSUP_FASTPATH": "1" if native else "0"}
    code = _run_logged(sandbox.command("sh", "-c", SCRIPT), supervised_log, env)
    assert code == 0, supervised_log.read_text()
    assert supervised_log.read_text() == bare_log.read_text()
    assert sandbox.denials() == []


def test_reading_a_write_only_stream_is_judged_as_reading_its_file(
    sandbox: Sandbox, log_dir: Path
) -> None:
    log = log_dir / "build.log"
    code = _run_logged(
        sandbox.command("sh", "-c", "cat /dev/fd/9 9>&1 > /dev/null || echo refused >&2"),
        log,
        sandbox.env,
    )
    assert code == 0
    assert "refused" in log.read_text()
    assert ("file_read", "default") in [
        (a, r if r != "<default>" else "default") for a, r in sandbox.denials()
    ]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the racing agent")
def test_an_o_path_fd_won_by_a_race_gives_no_read_of_what_it_names(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Red team 10: the held fd's access bits read O_RDONLY for an O_PATH fd."""
    binary = sandbox.workspace / "opath_race"
    subprocess.run(
        ["gcc", "-O2", "-pthread", "-o", str(binary), str(AGENTS / "opath_race.c")], check=True
    )
    secret = sandbox.workspace / "deploy.key"  # strict: a key, never read
    secret.write_text("PRIVATE-KEY-MATERIAL\n")
    (sandbox.workspace / "ok.txt").write_text("fine\n")
    for delay in ("60", "75", "90"):
        result = sandbox.run(str(binary), str(secret), delay, timeout=120)
        assert "PRIVATE-KEY-MATERIAL" not in result.stderr + result.stdout, delay


def test_more_than_the_fd_gives_of_a_file_outside_the_agents_view_is_refused(
    tmp_path: Path,
) -> None:
    """Red team 10: a log under the host's /tmp has a name that means the
    agent's private /tmp for the agent.  Reading its write-only stdout must
    not be judged by that name (strict lets /tmp/** be read): it is refused,
    and the record says why.  (agentsup's own files under /tmp too, as in a
    user's run: with them elsewhere the Landlock floor refuses it first.)"""
    box = Sandbox(tmp_path)  # agentsup's locations inside, under /tmp
    where = Path(tempfile.mkdtemp(prefix="agentsup-log-", dir="/tmp"))
    try:
        log = where / "shared.log"
        log.write_text("EARLIER-JOB: export TOKEN=ghp_secret\n")
        script = (
            "try: print(open('/dev/stdout').read())\n"
            "except OSError as refused: print('refused', refused.errno)\n"
        )
        with log.open("a") as output:
            command = box.command("python3", "-c", script)
            code = subprocess.run(command, stdout=output, env=box.env, timeout=60).returncode
        assert code == 0
        assert log.read_text().splitlines()[1:] == ["refused 13"]
        assert (None, "agentsup-outside-view") in box.denials()
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_an_fd_of_a_file_outside_the_agents_view_is_not_changed_by_its_name(
    tmp_path: Path, native: bool
) -> None:
    """Red team 27: a host file under the host's /tmp handed in as stdin was
    chmod-ed and its times set, judged by a name that means the agent's own
    private /tmp (where strict lets it, and a key's name is its own).  Each
    change through such an fd is refused, and the record says why."""
    box = Sandbox(tmp_path)
    where = Path(tempfile.mkdtemp(prefix="agentsup-key-", dir="/tmp"))
    try:
        key = where / "server.key"
        key.write_text("-----BEGIN PRIVATE KEY-----\n")
        key.chmod(0o600)
        before = key.stat()
        script = (
            "import os\n"
            "for change in (lambda: os.fchmod(0, 0o644), lambda: os.utime(0, (0, 0)),\n"
            "               lambda: os.chown(0, os.getuid(), os.getgid())):\n"
            "    try: change(); print('changed')\n"
            "    except OSError as refused: print('refused', refused.errno)\n"
        )
        with key.open() as stdin:
            done = subprocess.run(
                box.command("python3", "-c", script),
                stdin=stdin,
                capture_output=True,
                text=True,
                env={**box.env, **fastpath_env(native)},
                timeout=60,
            )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.splitlines() == ["refused 13"] * 3, done.stdout
        after = key.stat()
        assert (after.st_mode, after.st_mtime) == (before.st_mode, before.st_mtime)
        assert (None, "agentsup-outside-view") in box.denials()
    finally:
        shutil.rmtree(where, ignore_errors=True)
