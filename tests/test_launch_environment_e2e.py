"""What the agent finds around it at start: its host's name, its TMPDIR, its working directory.

A program run under agentsup should find these as it would bare, wherever
the sandbox does not have to differ:

- its hostname is the host's (in a UTS namespace of its own, so that no
  rename reaches the host), and so resolves as on the host: a name of
  agentsup's own was in no /etc/hosts, and Java's getLocalHost() failed;
- an inherited TMPDIR under its private /tmp or /var/tmp (a
  `TMPDIR=/var/tmp/x`, pam_tmpdir's /tmp/user/UID) is made there, empty and
  its own, before it starts; one where the policy refuses its writes is not
  passed on (one line says so), so that its tools use /tmp;
- run from a directory in the workspace (`cd repo && agentsup run -- git
  status`), it starts there, as `docker run -w` and bubblewrap's --chdir;
  from anywhere else, at the workspace's root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Sandbox, locations_root

from agentsup.policy import CompiledPolicy, RunContext, compile_policy, resolve_policy
from agentsup.supervision.agent import starting_directory, tmpdir_fate


def start_record(sandbox: Sandbox) -> dict[str, object]:
    return next(r for r in sandbox.audit_records() if r.get("event") == "start")


# -- its host's name --------------------------------------------------------------

RESOLVE = "import socket; name = socket.gethostname(); print(name, socket.gethostbyname(name))"


def _named_in_etc_hosts(name: str) -> bool:
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return False
    return any(name in line.split("#")[0].split()[1:] for line in lines)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_the_agents_hostname_is_the_hosts_and_resolves_as_it_does_bare(sandbox: Sandbox) -> None:
    """gethostbyname(gethostname()) answers in the agent as it does bare: under
    strict, in a network namespace of its own, from /etc/hosts where that
    names the host (an address nss-myhostname gives may be another there)."""
    bare = subprocess.run(["python3", "-c", RESOLVE], capture_output=True, text=True)
    if bare.returncode != 0:
        pytest.skip("the host's own name does not resolve here, bare")
    name, address = bare.stdout.split()
    result = sandbox.run("python3", "-c", RESOLVE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == name
    if _named_in_etc_hosts(name):
        assert result.stdout.split() == [name, address]


# -- its TMPDIR -----------------------------------------------------------------------

STRICT = compile_policy(
    resolve_policy("strict", Path("/nonexistent")), RunContext("/srv/project", "/home/u", "t")
)
PRIVATE = ("/tmp", "/var/tmp", "/run")


def fate(tmpdir: str, policy: CompiledPolicy = STRICT, kept: tuple[str, ...] = ()) -> str:
    return tmpdir_fate(policy, tmpdir, PRIVATE, kept)[0]


def test_a_tmpdir_in_a_tmpfs_the_agent_gets_fresh_is_made_there() -> None:
    assert tmpdir_fate(STRICT, "/var/tmp/x", PRIVATE, ()) == ("make", "/var/tmp/x")
    assert fate("/tmp/user/0") == "make"  # pam_tmpdir's
    assert fate("/var/tmp/x/../y/") == "make"


def test_a_tmpdir_that_is_there_for_the_agent_already_is_passed_as_it_is() -> None:
    assert fate("/tmp") == "pass"  # the private /tmp itself
    assert fate("/srv/project/.tmp") == "pass"  # in the workspace: the host's, writable
    # Beneath what the launch binds back into the private /tmp (a workspace
    # there): the host's directory, not the agent's to make.
    assert fate("/tmp/ws/.tmp", kept=("/tmp/ws",)) == "pass"
    assert fate("relative") == "pass"  # its tools take that as they do


def test_a_tmpdir_where_the_policy_refuses_the_agents_writes_is_dropped() -> None:
    assert fate("/srv/other") == "drop"
    assert fate("/home/u/tmp") == "drop"
    # Under /run, which strict gives the agent no writes in.
    assert fate("/run/user/0") == "drop"


@pytest.mark.parametrize("tmpdir", ["/var/tmp/agentsup-test-{pid}/x", "/tmp/user/{uid}"])
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_an_inherited_tmpdir_under_the_private_tmp_is_made_empty_and_the_agents_own(
    sandbox: Sandbox, tmpdir: str
) -> None:
    tmpdir = tmpdir.format(pid=os.getpid(), uid=os.getuid())
    was_on_host = os.path.lexists(tmpdir)
    script = (
        'stat -c "%a %u" "$TMPDIR"; ls -A "$TMPDIR" | wc -l; '
        "seq 1 20 | sort -S1K | tail -n 1; mktemp"
    )
    result = sandbox.run("sh", "-c", script, env={"TMPDIR": tmpdir})
    assert result.returncode == 0, result.stderr[-2000:]
    mode, empty, sorted_last, made = result.stdout.split("\n")[:4]
    assert (mode, empty, sorted_last) == (f"700 {os.getuid()}", "0", "9")
    assert made.startswith(tmpdir + "/tmp.")
    assert "TMPDIR" not in result.stderr
    if not was_on_host:
        assert not os.path.lexists(tmpdir)  # made in the agent's tmpfs, not the host's
    assert start_record(sandbox)["tmpdir_made"] == tmpdir


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_an_inherited_tmpdir_the_policy_refuses_is_not_passed_on(sandbox: Sandbox) -> None:
    """A TMPDIR outside the workspace, where strict refuses writes: mktemp, sort
    and gcc would fail on it ("Cannot create temporary file"); without it they
    use the agent's own /tmp."""
    outside = locations_root()
    try:
        script = 'echo "TMPDIR=${TMPDIR-unset}"; seq 1 20 | sort -S1K | tail -n 1; mktemp'
        result = sandbox.run("sh", "-c", script, env={"TMPDIR": str(outside)})
        assert list(outside.iterdir()) == []
    finally:
        shutil.rmtree(outside)
    assert result.returncode == 0, result.stderr[-2000:]
    unset, sorted_last, made = result.stdout.split("\n")[:3]
    assert (unset, sorted_last) == ("TMPDIR=unset", "9")
    assert made.startswith("/tmp/tmp.")
    said = [line for line in result.stderr.splitlines() if "TMPDIR" in line]
    assert said == [
        f"agentsup: TMPDIR={outside} not passed to the agent: the policy refuses its "
        "writes there (its temporary files go to /tmp)"
    ]
    record = start_record(sandbox)
    assert record["tmpdir_not_passed"] == str(outside)
    assert record["tmpdir_made"] is None


# -- its working directory ------------------------------------------------------------


def test_the_agent_starts_in_the_callers_directory_only_within_the_workspace() -> None:
    assert starting_directory("/srv/ws", "/srv/ws/repo/src") == "/srv/ws/repo/src"
    assert starting_directory("/srv/ws", "/srv/ws") == "/srv/ws"
    assert starting_directory("/srv/ws", "/srv") == "/srv/ws"
    assert starting_directory("/srv/ws", "/srv/ws-other") == "/srv/ws"  # a name's prefix only
    assert starting_directory("/srv/ws", None) == "/srv/ws"  # the daemon's agents
    assert starting_directory("/", "/srv/x") == "/srv/x"


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_run_from_a_directory_in_the_workspace_starts_the_agent_there(sandbox: Sandbox) -> None:
    """`cd repo && agentsup run --workspace .. -- git status` works on repo."""
    repo = sandbox.workspace / "repo"
    repo.mkdir()
    (repo / "notes.txt").write_text("in the repo\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    result = sandbox.run("sh", "-c", "pwd; cat notes.txt; git status --short", cwd=repo)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [str(repo), "in the repo", "?? notes.txt"]
    assert start_record(sandbox)["cwd"] == str(repo)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_run_from_a_directory_deeper_than_path_max_starts_the_agent_there(
    sandbox: Sandbox,
) -> None:
    """The kernel takes no name that long for a chdir: the agent gets there
    part by part, as the shell that ran agentsup did."""
    level, depth = "d" * 200, 22  # 22 * 201 bytes: past PATH_MAX (4096)
    fd = os.open(sandbox.workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(level, dir_fd=fd)
            fd, parent = os.open(level, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(parent)
        marker = os.open("marker", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(marker, b"deep down\n")
        os.close(marker)
    finally:
        os.close(fd)
    down = (
        "import os, sys\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    os.chdir(sys.argv[2])\n"
        "os.execv(sys.argv[3], sys.argv[3:])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", down, str(depth), level, *sandbox.command("cat", "marker")],
        cwd=sandbox.workspace,
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "deep down\n"


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_run_from_outside_the_workspace_starts_the_agent_at_its_root(sandbox: Sandbox) -> None:
    result = sandbox.run("pwd", cwd=sandbox.root)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [str(sandbox.workspace)]
    assert start_record(sandbox)["cwd"] == str(sandbox.workspace)


# -- a program under /tmp is the host's file ------------------------------------------------


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_a_program_under_tmp_is_bound_back_read_only(sandbox: Sandbox) -> None:
    """A program run by a path under /tmp is bound back into the agent's
    private /tmp, where writes are the agent's scratch: the program was
    bound writable, so a script could rewrite itself, and through a symlink
    (a venv's bin/python) a host file anywhere (red team 27).  It is bound
    read-only now; its target outside /tmp stays as it was.  And a secret's
    name under /tmp is no longer the agent's own there (`{own_tmp}`)."""
    outside = locations_root()  # not under /tmp: strict refuses writing it
    try:
        real = outside / "tool.sh"
        real.write_text('#!/bin/sh\necho ran\necho trojan >> "$0" && echo "wrote $0"\n')
        real.chmod(0o755)
        bindir = sandbox.root / "bin"
        bindir.mkdir()
        (bindir / "tool.sh").symlink_to(real)
        (bindir / "own.sh").write_text(real.read_text())
        (bindir / "own.sh").chmod(0o755)
        for program, host_file in (
            (bindir / "tool.sh", real),
            (bindir / "own.sh", bindir / "own.sh"),
        ):
            before = host_file.read_text()
            result = sandbox.run(str(program))
            assert result.stdout.splitlines()[0] == "ran", result.stderr[-2000:]
            assert "wrote" not in result.stdout, result.stdout
            assert host_file.read_text() == before
    finally:
        shutil.rmtree(outside)
