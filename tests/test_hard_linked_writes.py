"""A file with other names is read as usual, but never changed.

A hard link has no name of its own: a change through the workspace's name of
a file changes every other name of it, wherever that lies.  Such links are
not rare: `git clone --local` (and a plain `git clone /path`) hard-links the
operator's objects into the clone, pnpm and uv install from their caches by
hard link.  Red team 34 rewrote an object of the operator's repository
through the clone in the workspace, and the operator's next checkout ran the
agent's code.  Landlock cannot see it (its rights follow the path used), so
the mediation refuses every change to a regular file with more than one
name: its content, size, mode, owner, times and attributes, on record
(`agentsup-hard-linked`).  Reading it, moving or removing the workspace's
name, and making a new file there are unaffected.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, fastpath_env

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

CHANGES = """
import ctypes, errno, json, os, sys
path = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)

def attempt(name, call):
    try:
        call()
        print(json.dumps({"op": name, "result": "ok"}), flush=True)
    except OSError as exc:
        print(json.dumps({"op": name, "result": errno.errorcode[exc.errno]}), flush=True)

def opened(flags):
    os.close(os.open(path, flags))

def by_fd(call):
    fd = os.open(path, os.O_RDONLY)
    try:
        call(fd)
    finally:
        os.close(fd)

attempt("read", lambda: open(path).read())
attempt("create-existing", lambda: opened(os.O_RDONLY | os.O_CREAT))  # changes nothing
attempt("append", lambda: opened(os.O_WRONLY | os.O_APPEND))
attempt("read-write", lambda: opened(os.O_RDWR))
attempt("trunc", lambda: opened(os.O_RDONLY | os.O_TRUNC))
attempt("truncate", lambda: os.truncate(path, 0))
attempt("chmod", lambda: os.chmod(path, 0o777))
attempt("fchmod", lambda: by_fd(lambda fd: os.fchmod(fd, 0o777)))
attempt("utime", lambda: os.utime(path, (1, 1)))
attempt("futimens", lambda: by_fd(lambda fd: os.utime(fd, (1, 1))))
attempt("setxattr", lambda: os.setxattr(path, "user.agent", b"1"))
attempt("chown", lambda: os.chown(path, 1, 1))
"""


@pytest.fixture
def linked(sandbox: Sandbox) -> tuple[Path, Path]:
    """An object of the operator's repository, outside the workspace, and its
    other name in the agent's clone."""
    repo = sandbox.root / "operator-repo" / "objects"
    repo.mkdir(parents=True)
    original = repo / "ab12"
    original.write_text("the operator's code\n")
    original.chmod(0o444)
    os.utime(original, (1_000_000, 1_000_000))
    clone = sandbox.workspace / "clone" / "objects"
    clone.mkdir(parents=True)
    os.link(original, clone / "ab12")
    return original, clone / "ab12"


def _results(stdout: str) -> dict[str, str]:
    return {r["op"]: r["result"] for r in map(json.loads, stdout.splitlines())}


@both_paths
def test_a_file_with_a_name_outside_the_workspace_is_read_but_never_changed(
    sandbox: Sandbox, linked: tuple[Path, Path], native: bool
) -> None:
    original, clone = linked
    before = os.stat(original)
    script = sandbox.workspace / "changes.py"
    script.write_text(CHANGES)
    result = sandbox.run("python3", str(script), str(clone), env=fastpath_env(native))
    assert result.returncode == 0, result.stderr
    results = _results(result.stdout)
    assert (results.pop("read"), results.pop("create-existing")) == ("ok", "ok")
    assert results == dict.fromkeys(results, "EACCES"), results
    after = os.stat(original)
    assert original.read_text() == "the operator's code\n"
    assert (after.st_mode, after.st_mtime_ns, after.st_uid) == (
        before.st_mode,
        before.st_mtime_ns,
        before.st_uid,
    )
    assert os.listxattr(original) == []
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "agentsup-hard-linked"]
    assert {r["target"] for r in refused} == {str(clone)}
    assert len(refused) == len(results)


@both_paths
def test_git_works_in_a_local_clone_of_a_repository_outside_the_workspace(
    sandbox: Sandbox, native: bool
) -> None:
    """The clone shares its objects with the operator's repository: git only
    reads them, and writes new files (objects, the index, refs)."""
    origin = sandbox.root / "origin"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", "init", "-q", str(origin)], check=True, env=env)
    (origin / "a.txt").write_text("one\n")
    subprocess.run(["git", "-C", str(origin), "add", "a.txt"], check=True, env=env)
    subprocess.run(["git", "-C", str(origin), "commit", "-qm", "one"], check=True, env=env)
    clone = sandbox.workspace / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, env=env)
    shared = [p for p in (clone / ".git" / "objects").rglob("*") if p.is_file()]
    assert any(p.stat().st_nlink > 1 for p in shared)  # hard links, as git makes them
    job = (
        "cd clone && git status --short && echo two >> a.txt && git commit -qam two "
        "&& git log --oneline | wc -l && git gc -q && git fsck --no-progress && echo fine"
    )
    result = sandbox.run("sh", "-c", job, env={**fastpath_env(native), **_git_identity()})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "fine"], result.stdout
    log = subprocess.run(["git", "-C", str(origin), "log", "--oneline"], capture_output=True,
                         text=True, check=True, env=env)  # fmt: skip
    assert len(log.stdout.splitlines()) == 1  # the operator's repository is as it was
    fsck = subprocess.run(["git", "-C", str(origin), "fsck", "--no-progress"], env=env)
    assert fsck.returncode == 0


def _git_identity() -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": "agent",
        "GIT_AUTHOR_EMAIL": "agent@example.com",
        "GIT_COMMITTER_NAME": "agent",
        "GIT_COMMITTER_EMAIL": "agent@example.com",
    }


@both_paths
def test_the_times_of_a_symlink_with_a_name_outside_are_not_changed(
    sandbox: Sandbox, native: bool
) -> None:
    """Red team 35: a symlink's times are shared by its names too."""
    outside = sandbox.root / "operator"
    outside.mkdir()
    link = outside / "latest"
    link.symlink_to("v1")
    os.utime(link, (1_000_000, 1_000_000), follow_symlinks=False)
    inside = sandbox.workspace / "latest"
    os.link(link, inside, follow_symlinks=False)
    script = "import os, sys; os.utime(sys.argv[1], (1, 1), follow_symlinks=False)"
    result = sandbox.run("python3", "-c", script, str(inside), env=fastpath_env(native))
    assert "PermissionError" in result.stderr, result.stderr
    assert os.lstat(link).st_mtime == 1_000_000


RACE = """
import os, sys, threading, time
linked, racing, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
done = False
def relink():
    while not done:
        try:
            os.link(linked, racing)
            os.unlink(racing)
        except OSError:
            pass
thread = threading.Thread(target=relink)
thread.start()
won, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        fd = os.open(racing, os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError:
        continue
    if os.fstat(fd).st_ino == os.stat(linked).st_ino:
        won += 1
        os.pwrite(fd, b"agent was here", 0)
    os.close(fd)
    try:
        os.unlink(racing)
    except OSError:
        pass
done = True
thread.join()
print("won", won)
"""


@both_paths
def test_a_name_linked_while_it_is_created_is_not_opened_for_writing(
    sandbox: Sandbox, native: bool
) -> None:
    """Red team 35: an open(O_CREAT) of a missing name, raced by a thread that
    links a file with an outside name there, got the broker to open that file
    for writing (its fallback for a name made meanwhile), and rewrote the
    operator's file (7 of 7 runs, within a few hundred opens)."""
    operator = sandbox.root / "operator"
    operator.mkdir()
    original = operator / "mod.py"
    original.write_text("print('the operator')\n")
    linked = sandbox.workspace / "mod.py"
    os.link(original, linked)
    script = sandbox.workspace / "race.py"
    script.write_text(RACE)
    racing = sandbox.workspace / "x.py"
    result = sandbox.run(
        "python3", str(script), str(linked), str(racing), "4", env=fastpath_env(native)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "won 0\n"
    assert original.read_text() == "print('the operator')\n"
