"""Red-team tests for the broker's native metadata answers and relative paths.

The native path (supervisor/kernel/_fastpath.c) now answers, on its own:
utimensat and chmod/fchmodat by name (`serve_utimensat`, `serve_chmod`, via
`pin_object`), fchmod/fchown/futimens on an fd the agent holds
(`serve_fd_op`), relative names made absolute from one readlink of the
agent's cwd or dirfd (`absolute_from`), and ENOENT for an exec of a missing
program (`missing_program`).  The Python path (AGENTSUP_FASTPATH=0) is the
reference.  Each attack runs on both paths and checks the real outcome: the
file untouched, the agent killed, the refusal on record, the errno the kernel
gives.

- chmod/utime of the planted key through a symlink, a hard link planted in the
  workspace, and an fd to it handed to the agent as its stdin;
- set-ID bits through chmod and fchmod (dropped), on files and directories;
- a system file, agentsup's own policy file and the ~/.ssh directory, named
  relative to a cwd or dirfd there;
- a cwd or a dirfd swapped by another thread between the broker's readlink
  and its open, between a workspace directory and one the policy locks;
- a dirfd that is a regular file (or an O_PATH fd of one) with the name ".":
  the kernel says ENOTDIR;
- FIFOs, sockets, O_PATH and deleted-file fds: nothing blocks the broker, and
  both paths give the same answers;
- an exec of a missing program whose command line is refused;
- a hard link the agent makes to a file whose chmod the policy refuses.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, fastpath_env

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

# The attacking agent: `python3 meta.py MODE ARGS...`.  Prints JSON lines
# {"case": ..., "result": "ok" | ERRNO, ...} and "survived" at the end.
AGENT = textwrap.dedent(
    r'''
    import ctypes, errno, json, os, sys, threading, time

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    WS = os.path.dirname(os.path.abspath(__file__))
    MODE, ARGS = sys.argv[1], sys.argv[2:]
    SYS_FCHMODAT2 = 452


    def report(case, **fields):
        print(json.dumps({"case": case, **fields}), flush=True)


    def hammer(cases):
        """Each call again and again for ARGS[0] seconds: how often each outcome came."""
        results = {}
        deadline = time.monotonic() + float(ARGS[0])
        while time.monotonic() < deadline:
            for case, fn in cases:
                try:
                    fn()
                    key = case + " ok"
                except OSError as exc:
                    key = case + " " + errno.errorcode[exc.errno]
                results[key] = results.get(key, 0) + 1
        return results

    def attempt(case, fn, **extra):
        try:
            value = fn()
            result = "ok"
            if isinstance(value, int) and value < 0:
                result = errno.errorcode.get(ctypes.get_errno(), "?")
            elif isinstance(value, int) and not isinstance(value, bool) and case.startswith("open"):
                os.close(value)
        except OSError as exc:
            result = errno.errorcode.get(exc.errno, str(exc.errno))
        report(case, result=result, **extra)
        return result


    def mode_of(path):
        try:
            return oct(os.lstat(path).st_mode)
        except OSError as exc:
            return errno.errorcode[exc.errno]


    if MODE == "chmod-path":  # ARGS: path, [cwd]
        if len(ARGS) > 1:
            os.chdir(ARGS[1])
        attempt("chmod", lambda: os.chmod(ARGS[0], 0o777))
    elif MODE == "utime-path":
        if len(ARGS) > 1:
            os.chdir(ARGS[1])
        attempt("utime", lambda: os.utime(ARGS[0], (1, 1)))
    elif MODE == "chmod-at":  # ARGS: directory, name: fchmodat on an fd of the directory
        fd = os.open(ARGS[0], os.O_RDONLY | os.O_DIRECTORY)
        attempt("fchmodat", lambda: os.chmod(ARGS[1], 0o777, dir_fd=fd))
    elif MODE == "utime-at":
        fd = os.open(ARGS[0], os.O_RDONLY | os.O_DIRECTORY)
        attempt("utimensat", lambda: os.utime(ARGS[1], (1, 1), dir_fd=fd))
    elif MODE == "chmod-same":  # ARGS: directory, name, mode: chmod to the mode it has
        os.chdir(ARGS[0])
        attempt("chmod", lambda: os.chmod(ARGS[1], int(ARGS[2], 8)))
    elif MODE == "fd0":  # stdin is the victim: fchmod, futimens, fchown
        op = ARGS[0]
        if op == "fchmod":
            attempt(op, lambda: os.fchmod(0, 0o777))
        elif op == "futimens":
            attempt(op, lambda: os.utime(0, (1, 1)))
        else:
            attempt(op, lambda: os.fchown(0, 0, 0))
    elif MODE == "setid":
        for name in ("by-name", "by-fd", "relative", "dir-sgid", "dir-suid"):
            path = os.path.join(WS, name)
            if name.startswith("dir"):
                os.mkdir(path, 0o755)
            else:
                with open(path, "w") as f:
                    f.write("#!/bin/sh\n")
        attempt("chmod 6755", lambda: os.chmod(os.path.join(WS, "by-name"), 0o6755))
        os.chdir(WS)
        attempt("chmod 4755 relative", lambda: os.chmod("relative", 0o4755))
        fd = os.open(os.path.join(WS, "by-fd"), os.O_RDONLY)
        attempt("fchmod 6755", lambda: os.fchmod(fd, 0o6755))
        attempt("chmod dir 3775", lambda: os.chmod("dir-sgid", 0o3775))
        attempt("chmod dir 4775", lambda: os.chmod("dir-suid", 0o4775))
        for name in ("by-name", "by-fd", "relative", "dir-sgid", "dir-suid"):
            report("mode " + name, mode=mode_of(os.path.join(WS, name)))
    elif MODE == "file-dirfd":
        # A dirfd that is no directory, with the name ".": ENOTDIR from the kernel.
        target = os.path.join(WS, "plain")
        for label, flags in (("fd", os.O_RDONLY), ("O_PATH fd", os.O_PATH)):
            with open(target, "w") as f:
                f.write("plain\n")
            os.chmod(target, 0o600)
            os.utime(target, (1000, 1000))
            fd = os.open(target, flags)
            attempt(f"fchmodat {label} .", lambda: os.chmod(".", 0o705, dir_fd=fd))
            attempt(f"fchmodat2 {label} .", lambda: libc.syscall(SYS_FCHMODAT2, fd, b".", 0o705, 0))
            attempt(f"utimensat {label} .", lambda: os.utime(".", (5, 5), dir_fd=fd))
            attempt(f"open {label} .", lambda: os.open(".", os.O_RDONLY, dir_fd=fd))
            attempt(f"open for writing {label} .",
                    lambda: os.open(".", os.O_WRONLY | os.O_TRUNC, dir_fd=fd))
            st = os.stat(target)
            with open(target) as f:
                data = f.read()
            report(f"after {label}", mode=oct(st.st_mode), mtime=int(st.st_mtime), data=data)
            os.close(fd)
            os.unlink(target)
    elif MODE == "odd-objects":
        # FIFOs, sockets, O_PATH and removed files: answered, never waited on.
        os.chdir(WS)
        os.mkfifo("fifo", 0o600)
        # "sock" is bound by the test before the run (bind is refused to the agent)
        os.symlink("fifo", "to-fifo")
        for name in ("fifo", "sock", "to-fifo"):
            attempt(f"chmod {name}", lambda: os.chmod(name, 0o640))
            attempt(f"utime {name}", lambda: os.utime(name, (7, 7)))
        attempt("utime nofollow to-fifo",
                lambda: os.utime("to-fifo", (8, 8), follow_symlinks=False))
        fifo = os.open("fifo", os.O_RDWR | os.O_NONBLOCK)
        attempt("fchmod fifo", lambda: os.fchmod(fifo, 0o604))
        attempt("futimens fifo", lambda: os.utime(fifo, (9, 9)))
        with open("plain", "w") as f:
            f.write("x")
        opath = os.open("plain", os.O_PATH)
        attempt("fchmod O_PATH", lambda: os.fchmod(opath, 0o700))
        attempt("futimens O_PATH", lambda: os.utime(opath, (3, 3)))
        attempt("fchown O_PATH", lambda: os.fchown(opath, 0, 0))
        with open("gone", "w") as f:
            f.write("x")
        held = os.open("gone", os.O_RDWR)
        os.unlink("gone")
        attempt("fchmod removed", lambda: os.fchmod(held, 0o640))
        attempt("futimens removed", lambda: os.utime(held, (4, 4)))
        attempt("fstat removed", lambda: None, mode=oct(os.fstat(held).st_mode),
                mtime=int(os.fstat(held).st_mtime))
        for name in ("fifo", "sock", "to-fifo", "plain"):
            st = os.lstat(name)
            report(f"after {name}", mode=oct(st.st_mode), mtime=int(st.st_mtime))
        os.mkdir("gone-dir")
        os.chdir("gone-dir")
        os.rmdir(os.path.join(WS, "gone-dir"))
        attempt("chmod . in a removed cwd", lambda: os.chmod(".", 0o700))
        attempt("utime . in a removed cwd", lambda: os.utime(".", (2, 2)))
        attempt("chmod name in a removed cwd", lambda: os.chmod("x", 0o700))
    elif MODE == "race-cwd":
        # One thread keeps changing directory between a workspace directory and
        # a locked one; the other changes a mode and times by a relative name.
        opened, locked = os.path.join(WS, "open"), os.path.join(WS, "locked")
        done = [False]
        def swap():
            while not done[0]:
                os.chdir(opened)
                os.chdir(locked)
        os.chdir(opened)
        threading.Thread(target=swap, daemon=True).start()
        results = hammer((("chmod", lambda: os.chmod("f", 0o777)),
                          ("utime", lambda: os.utime("f", (1, 1)))))
        done[0] = True
        report("race-cwd", results=results)
    elif MODE == "race-dirfd":
        # The same with a dirfd that another thread dup2s between the two directories.
        a = os.open(os.path.join(WS, "open"), os.O_RDONLY | os.O_DIRECTORY)
        b = os.open(os.path.join(WS, "locked"), os.O_RDONLY | os.O_DIRECTORY)
        slot = os.dup(a)
        done = [False]
        def swap():
            while not done[0]:
                os.dup2(b, slot)
                os.dup2(a, slot)
        threading.Thread(target=swap, daemon=True).start()
        results = hammer((("fchmodat", lambda: os.chmod("f", 0o777, dir_fd=slot)),
                          ("utimensat", lambda: os.utime("f", (1, 1), dir_fd=slot))))
        done[0] = True
        report("race-dirfd", results=results)
    elif MODE == "race-symlinked-cwd":
        # The cwd is reached through a symlink to the locked directory.
        os.symlink("locked", os.path.join(WS, "via"))
        os.chdir(os.path.join(WS, "via"))
        attempt("chmod through a symlinked cwd", lambda: os.chmod("f", 0o777))
        attempt("utime through a symlinked cwd", lambda: os.utime("f", (1, 1)))
        attempt("chmod . through a symlinked cwd", lambda: os.chmod(".", 0o777))
    elif MODE == "hard-link-chmod":
        # A second name, made by the agent, for a file whose chmod is refused.
        os.chdir(WS)
        attempt("link", lambda: os.link("stay.txt", "alias"))
        attempt("chmod alias", lambda: os.chmod("alias", 0o777))
        attempt("utime alias", lambda: os.utime("alias", (1, 1)))
        attempt("fchmod alias", lambda: os.fchmod(os.open("alias", os.O_RDONLY), 0o757))
    elif MODE == "exec-missing":
        # ARGS: program path, then its argv.
        os.chdir(WS)
        pid = os.fork()
        if pid == 0:
            try:
                os.execv(ARGS[0], ARGS[1:])
            except OSError as exc:
                os._exit(100 + exc.errno)
            os._exit(99)
        _, status = os.waitpid(pid, 0)
        report("exec-missing", status=os.waitstatus_to_exitcode(status))
    print("survived", flush=True)
    '''
)

LOCKED = """
name: locked
extends: [strict]
rules:
  - id: locked-contents
    actions: [file_write, file_delete, file_move, file_chmod]
    target: "{workspace}/locked/**"
    decision: deny
    priority: 1
    on_violation: block
    message: the locked directory is read-only
  - id: locked-itself
    actions: [file_delete, file_move, file_chmod, file_write]
    target: "{workspace}/locked"
    decision: deny
    priority: 1
    on_violation: block
"""


def _agent(sandbox: Sandbox) -> Path:
    script = sandbox.workspace / "meta.py"
    script.write_text(AGENT)
    return script


def _run(
    sandbox: Sandbox,
    native: bool,
    *args: str,
    policy: str = "strict",
    stdin: int | None = None,
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    script = _agent(sandbox)
    return subprocess.run(
        sandbox.command("python3", str(script), *args, policy=policy),
        env={**sandbox.env, **fastpath_env(native)},
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _reports(stdout: str) -> dict[str, dict[str, object]]:
    return {
        line["case"]: line
        for line in (json.loads(text) for text in stdout.splitlines() if text.startswith("{"))
    }


def _rules(sandbox: Sandbox) -> list[str]:
    return [str(r.get("rule")) for r in sandbox.audit_records() if r.get("decision") == "deny"]


def _times_and_mode(path: Path) -> tuple[int, int]:
    """The mode and modification time (the access time moves with every read)."""
    st = os.lstat(path)
    return st.st_mode, st.st_mtime_ns


def _bind_socket(directory: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(directory / "sock"))
    sock.close()


# -- the planted key -------------------------------------------------------------------


@both_paths
@pytest.mark.parametrize("op", ["chmod-path", "utime-path"])
@pytest.mark.parametrize("how", ["symlink", "hard link", "relative hard link"])
def test_the_key_through_another_name_in_the_workspace_is_never_changed(
    sandbox: Sandbox, native: bool, op: str, how: str
) -> None:
    """chmod or utime of ~/.ssh/id_rsa through a workspace symlink to it, or a
    hard link to it planted in the workspace before the run (by absolute path,
    and by a relative name from the workspace as cwd: `absolute_from`).

    A symlink makes `open_exact` say ELOOP (forwarded); a hard link has two
    names (`own_name`: forwarded until the protected walk answers, then known
    as the key's inode).  The Python path judges it as the key: killed."""
    key = sandbox.key
    key.chmod(0o600)
    os.utime(key, ns=(1_000_000_000, 1_000_000_000))
    before = _times_and_mode(key)
    other = sandbox.workspace / "notes"
    if how == "symlink":
        other.symlink_to(key)
    else:
        os.link(key, other)
    args = ("notes", str(sandbox.workspace)) if how.startswith("relative") else (str(other),)
    result = _run(sandbox, native, op, *args)
    assert _times_and_mode(key) == before
    assert result.returncode == 137, (result.stdout, result.stderr[-2000:])
    assert "survived" not in result.stdout
    assert "secret-ssh" in _rules(sandbox) or "secret-id-rsa" in _rules(sandbox)


@both_paths
@pytest.mark.parametrize("op", ["fchmod", "futimens", "fchown"])
def test_the_key_held_as_stdin_is_never_changed(sandbox: Sandbox, native: bool, op: str) -> None:
    """The agent's stdin is the key (`agentsup run ... < ~/.ssh/id_rsa`):
    fchmod, futimens or fchown on fd 0 (`serve_fd_op`: pidfd_getfd copy, its
    real path judged) must be judged as the key: killed, the key unchanged."""
    key = sandbox.key
    key.chmod(0o600)
    os.utime(key, ns=(1_000_000_000, 1_000_000_000))
    before = _times_and_mode(key)
    with open(key, "rb") as held:
        result = _run(sandbox, native, "fd0", op, stdin=held.fileno())
    assert _times_and_mode(key) == before
    assert result.returncode == 137, (result.stdout, result.stderr[-2000:])
    assert "survived" not in result.stdout
    assert "secret-ssh" in _rules(sandbox) or "secret-id-rsa" in _rules(sandbox)


@both_paths
@pytest.mark.parametrize("op", ["chmod-path", "utime-path"])
def test_the_ssh_directory_above_the_key_is_never_changed(
    sandbox: Sandbox, native: bool, op: str
) -> None:
    """chmod 777 / utime of ~/.ssh itself (a directory: `pin_object` takes any
    directory, with no link count check), by its absolute name and as "."
    with ~/.ssh as the cwd (`absolute_from` with "." is the directory itself)."""
    ssh = sandbox.key.parent
    ssh.chmod(0o700)
    os.utime(ssh, ns=(1_000_000_000, 1_000_000_000))
    before = _times_and_mode(ssh)
    for args in ((str(ssh),), (".", str(ssh))):
        result = _run(sandbox, native, op, *args)
        assert _times_and_mode(ssh) == before, args
        reports = _reports(result.stdout)
        case = "chmod" if op == "chmod-path" else "utime"
        # Refused (strict's default deny) or killed: never done.
        assert result.returncode == 137 or reports[case]["result"] == "EACCES", result.stdout


# -- set-ID bits -----------------------------------------------------------------------


@both_paths
def test_set_id_bits_never_survive_chmod_or_fchmod(sandbox: Sandbox, native: bool) -> None:
    """chmod 6755 by absolute and relative name, fchmod 6755 on an fd, chmod
    3775 and 4775 of directories: a file loses both set-ID bits, a directory
    set-user-ID only (`kept_mode`, as the supervisor's `_chmod`)."""
    result = _run(sandbox, native, "setid")
    assert result.returncode == 0, result.stderr[-2000:]
    reports = _reports(result.stdout)
    calls = ("chmod 6755", "chmod 4755 relative", "fchmod 6755", "chmod dir 3775", "chmod dir 4775")
    for case in calls:
        assert reports[case]["result"] == "ok", reports[case]
    names = ("by-name", "by-fd", "relative", "dir-sgid", "dir-suid")
    modes = {name: reports[f"mode {name}"]["mode"] for name in names}
    assert modes == {
        "by-name": oct(stat.S_IFREG | 0o755),
        "by-fd": oct(stat.S_IFREG | 0o755),
        "relative": oct(stat.S_IFREG | 0o755),
        "dir-sgid": oct(stat.S_IFDIR | 0o3775),
        "dir-suid": oct(stat.S_IFDIR | 0o775),
    }
    for path in sandbox.workspace.iterdir():
        assert not path.stat().st_mode & stat.S_ISUID, path


# -- refused files named relative to a cwd or dirfd there -------------------------------


@both_paths
@pytest.mark.parametrize("mode", ["chmod-same", "chmod-at", "utime-at"])
def test_a_system_file_named_from_a_cwd_or_dirfd_in_etc_is_refused(
    sandbox: Sandbox, native: bool, mode: str
) -> None:
    """chmod of /etc/passwd (to the mode it already has: harmless if it went
    through) as "passwd" from a cwd of /etc, and fchmodat / utimensat on a
    dirfd of /etc: `absolute_from` makes "/etc/passwd", judged file_chmod /
    file_write: system-write, killed; its times unchanged."""
    passwd = Path("/etc/passwd")
    before = _times_and_mode(passwd)
    if mode == "chmod-same":
        args: tuple[str, ...] = ("/etc", "passwd", oct(before[0] & 0o7777)[2:])
    else:
        args = ("/etc", "passwd")
    result = _run(sandbox, native, mode, *args)
    assert _times_and_mode(passwd) == before
    assert result.returncode == 137, (result.stdout, result.stderr[-2000:])
    assert "system-write" in _rules(sandbox)


@both_paths
@pytest.mark.parametrize("mode", ["chmod-same", "utime-path"])
def test_agentsups_own_policy_file_named_from_its_directory_is_refused(
    sandbox: Sandbox, native: bool, mode: str
) -> None:
    """The policy in force, chmod-ed (to its own mode) and touched by a name
    relative to a cwd in agentsup's policy directory (chdir is not mediated;
    a dirfd there cannot be opened): self-protection, in the broker's copy of
    the judge too: killed, unchanged."""
    policy = Path(sandbox.policy("mine", "name: mine\nextends: [strict]\n"))
    before = _times_and_mode(policy)
    if mode == "chmod-same":
        args: tuple[str, ...] = (str(policy.parent), policy.name, oct(before[0] & 0o7777)[2:])
    else:
        args = (policy.name, str(policy.parent))
    result = _run(sandbox, native, mode, *args, policy=str(policy))
    assert _times_and_mode(policy) == before
    assert result.returncode == 137, (result.stdout, result.stderr[-2000:])
    assert "agentsup-self-protection" in _rules(sandbox)


# -- races: a cwd or dirfd swapped under the broker ---------------------------------------


def _locked(sandbox: Sandbox) -> tuple[str, Path]:
    ws = sandbox.workspace
    (ws / "open").mkdir()
    (ws / "locked").mkdir()
    for directory in ("open", "locked"):
        (ws / directory / "f").write_text(directory)
        (ws / directory / "f").chmod(0o600)
        os.utime(ws / directory / "f", ns=(1_000_000_000, 1_000_000_000))
    return sandbox.policy("locked", LOCKED), ws / "locked" / "f"


@both_paths
@pytest.mark.parametrize("mode", ["race-cwd", "race-dirfd"])
def test_a_cwd_or_dirfd_swapped_under_the_broker_never_reaches_a_locked_file(
    sandbox: Sandbox, native: bool, mode: str
) -> None:
    """One thread keeps switching the (shared) cwd, or dup2-ing a dirfd,
    between workspace/open and workspace/locked (chmod and writes refused
    there, without a signal); another chmods 777 and touches "f" relative to
    it.  The broker reads the cwd once (`absolute_from`) and opens the joined
    path exactly: whatever it reaches is judged by the path it opened, so the
    locked file keeps its mode and times, and some attempts are refused."""
    policy, locked = _locked(sandbox)
    before = _times_and_mode(locked)
    result = _run(sandbox, native, mode, "4", policy=policy)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _times_and_mode(locked) == before
    results = _reports(result.stdout)[mode]["results"]
    assert isinstance(results, dict)
    assert any(key.endswith(" ok") for key in results), results
    assert any(key.endswith(" EACCES") for key in results), results


@both_paths
def test_a_cwd_reached_through_a_symlink_is_judged_where_it_is(
    sandbox: Sandbox, native: bool
) -> None:
    """chdir through workspace/via -> locked: /proc/PID/cwd reads the real
    directory, so "f" and "." are judged in locked: refused, unchanged."""
    policy, locked = _locked(sandbox)
    before = _times_and_mode(locked)
    before_dir = _times_and_mode(locked.parent)
    result = _run(sandbox, native, "race-symlinked-cwd", policy=policy)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _times_and_mode(locked) == before
    assert _times_and_mode(locked.parent)[0] == before_dir[0]
    reports = _reports(result.stdout)
    for case in (
        "chmod through a symlinked cwd",
        "utime through a symlinked cwd",
        "chmod . through a symlinked cwd",
    ):
        assert reports[case]["result"] == "EACCES", reports[case]


# -- a dirfd that is no directory ----------------------------------------------------------


@both_paths
def test_a_dirfd_that_is_a_file_with_the_name_dot_is_not_a_directory(
    sandbox: Sandbox, native: bool
) -> None:
    """fchmodat, fchmodat2, utimensat and openat on (a regular file's fd, ".")
    and (an O_PATH fd of it, "."): the kernel fails each with ENOTDIR (a
    lookup of "." needs a directory), and so does the Python path (the broker
    resolves "." from the file).  The file keeps its mode and times."""
    result = _run(sandbox, native, "file-dirfd")
    assert result.returncode == 0, result.stderr[-2000:]
    reports = _reports(result.stdout)
    outcome = {case: r.get("result") for case, r in reports.items() if "result" in r}
    for label in ("fd", "O_PATH fd"):
        for call in ("fchmodat", "fchmodat2", "utimensat", "open", "open for writing"):
            assert outcome[f"{call} {label} ."] == "ENOTDIR", outcome
        assert reports[f"after {label}"]["mode"] == oct(stat.S_IFREG | 0o600), reports
        assert reports[f"after {label}"]["mtime"] == 1000, reports
        assert reports[f"after {label}"]["data"] == "plain\n", reports


# -- odd objects, and the same answers on both paths ---------------------------------------


@both_paths
def test_fifos_sockets_opath_and_removed_files_never_block_and_answer_as_the_kernel(
    sandbox: Sandbox, native: bool
) -> None:
    """chmod/utime of a FIFO, a socket and a symlink to the FIFO by name;
    fchmod/futimens of a FIFO fd; fchmod/futimens/fchown of an O_PATH fd (the
    kernel's EBADF); fchmod/futimens of a removed file; chmod/utime of a
    removed cwd.  None of them may hang the broker."""
    _bind_socket(sandbox.workspace)
    result = _run(sandbox, native, "odd-objects", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.endswith("survived\n")
    outcome = {case: r.get("result") for case, r in _reports(result.stdout).items()}
    expected = {
        "chmod fifo": "ok",
        "utime fifo": "ok",
        "chmod sock": "ok",
        "utime sock": "ok",
        "chmod to-fifo": "ok",
        "utime to-fifo": "ok",
        "utime nofollow to-fifo": "ok",
        "fchmod fifo": "ok",
        "futimens fifo": "ok",
        "fchmod O_PATH": "EBADF",
        "futimens O_PATH": "EBADF",
        "fchown O_PATH": "EBADF",
        "fchmod removed": "ok",
        "futimens removed": "ok",
    }
    assert {case: outcome.get(case) for case in expected} == expected
    reports = _reports(result.stdout)
    assert reports["after fifo"] == {
        "case": "after fifo", "mode": oct(stat.S_IFIFO | 0o604), "mtime": 9
    }
    assert reports["fstat removed"]["mode"] == oct(stat.S_IFREG | 0o640)
    assert reports["fstat removed"]["mtime"] == 4


@both_paths
def test_odd_objects_give_the_same_answers_on_both_paths(sandbox: Sandbox, native: bool) -> None:
    """The removed cwd cases, compared with what the kernel itself says
    outside agentsup (the reference for an allowed call)."""
    script = _agent(sandbox)
    _bind_socket(sandbox.workspace)
    plain = subprocess.run(
        ["python3", str(script), "odd-objects"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=sandbox.workspace,
    )
    assert plain.returncode == 0, plain.stderr
    reports = _reports(plain.stdout)
    reference = {c: r.get("result") for c, r in reports.items() if "removed cwd" in c}
    for entry in sandbox.workspace.iterdir():
        if entry.name not in ("meta.py",) and not entry.is_dir():
            entry.unlink()
    _bind_socket(sandbox.workspace)
    result = _run(sandbox, native, "odd-objects", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    ours = {c: r.get("result") for c, r in _reports(result.stdout).items() if "removed cwd" in c}
    assert ours == reference


# -- an exec of a missing program -----------------------------------------------------------


@both_paths
def test_a_missing_program_with_a_refused_command_line_is_still_refused(
    sandbox: Sandbox, native: bool
) -> None:
    """execv("/nowhere/x", ["sudo", "-i"]): nothing to run, but the command
    line is judged (`missing_program` asks the judge for shell_execute; a miss
    is the supervisor's): privilege-command, killed."""
    result = _run(sandbox, native, "exec-missing", "/nowhere/x", "sudo", "-i")
    assert "privilege-command" in _rules(sandbox), (result.stdout, result.stderr[-2000:])
    assert "survived" not in result.stdout or '"status": -9' in result.stdout


@both_paths
def test_a_missing_program_with_an_allowed_command_line_is_enoent(
    sandbox: Sandbox, native: bool
) -> None:
    """A relative missing program (made absolute from the cwd) and a program
    under a refused root (~/.ssh): ENOENT, no record, the agent lives on."""
    for program in ("missing-tool", str(sandbox.key.parent / "tool")):
        result = _run(sandbox, native, "exec-missing", program, "tool", "--version")
        assert result.returncode == 0, result.stderr[-2000:]
        assert _reports(result.stdout)["exec-missing"]["status"] == 100 + 2, result.stdout
    assert _rules(sandbox) == []


STAY = """
name: stay
extends: [strict]
rules:
  - id: refused-chmod
    actions: [file_chmod, file_move]
    target: "{workspace}/stay*"
    decision: deny
    priority: 1
    on_violation: block
"""


@both_paths
def test_a_hard_link_never_escapes_a_chmod_refusal(sandbox: Sandbox, native: bool) -> None:
    """workspace/stay.txt may be read and written, never chmod-ed (nor moved).
    The agent links it as "alias" and chmods / touches / fchmods the alias.

    Found by red-teaming (both paths): a link was judged as file_read at the
    old name and file_write at the new, so a file refused only chmod (or
    write) was changed through its new name (the protected inodes a hard link
    is judged by come from the read-deny rules only).  Now a link is judged
    at the old name as everything the new name would allow: read, write and
    chmod.  The refused file keeps its mode, and the link is recorded."""
    stay = sandbox.workspace / "stay.txt"
    stay.write_text("stay\n")
    stay.chmod(0o600)
    policy = sandbox.policy("stay", STAY)
    result = _run(sandbox, native, "hard-link-chmod", policy=policy)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = {case: r.get("result") for case, r in _reports(result.stdout).items()}
    assert stat.S_IMODE(_times_and_mode(stay)[0]) == 0o600, outcome
    assert outcome["link"] == "EACCES", outcome
    assert not (sandbox.workspace / "alias").exists()
    refusals = [r for r in sandbox.audit_records() if r.get("decision") == "deny"]
    assert [(r.get("action_type"), r.get("rule")) for r in refusals][:1] == [
        ("file_chmod", "refused-chmod")
    ], refusals


READ_ONLY_DENY = """
name: unread
extends: [strict]
rules:
  - id: unread-secrets
    actions: [file_read]
    target: "**/*.secret"
    decision: deny
    priority: 1
    on_violation: block
"""

RENAMER = r"""
import ctypes, errno, os, sys
os.chdir(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def attempt(case, fn):
    try:
        fn()
        print(case, "ok", flush=True)
    except OSError as exc:
        print(case, errno.errorcode[exc.errno], flush=True)
def exchange(a, b):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:  # RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), "renameat2")
attempt("rename", lambda: os.rename("data.secret", "data.txt"))
attempt("read", lambda: open("data.txt").read())
attempt("exchange", lambda: exchange("plain.txt", "data.secret"))
attempt("control", lambda: os.rename("plain.txt", "moved.txt"))
"""


@both_paths
def test_a_move_never_makes_a_refused_read_readable(sandbox: Sandbox, native: bool) -> None:
    """A policy refuses only file_read of `**/*.secret` (a pattern, no literal
    root).  `mv data.secret data.txt`, then read data.txt; or exchange it with
    a readable file.

    Found by red-teaming (both paths): a rename was judged as file_move at the
    old name and file_write at the new, so the content left the names the
    rule refuses, and was read.  Now a move is a read of the old name too."""
    ws = sandbox.workspace
    (ws / "data.secret").write_text("the secret\n")
    (ws / "plain.txt").write_text("plain\n")
    (ws / "renamer.py").write_text(RENAMER)
    policy = sandbox.policy("unread", READ_ONLY_DENY)
    result = sandbox.run(
        "python3", str(ws / "renamer.py"), str(ws), policy=policy, env=fastpath_env(native)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "rename EACCES",
        "read ENOENT",
        "exchange EACCES",
        "control ok",
    ]
    assert (ws / "data.secret").read_text() == "the secret\n"
    assert [r.get("rule") for r in sandbox.audit_records() if r.get("decision") == "deny"] == [
        "unread-secrets",
        "unread-secrets",
    ]
