"""Red-team tests: a move that gives refused content another name.

A custom policy (layered on strict) refuses one action on some names: the
file_read of files in a directory called "private" (`**/private/*`, no
literal root), or the file_write of files directly in a directory called
"frozen" (a regex, `^.*/frozen/[^/]+$`).  Under the rule that a move is
judged by what it renames (`CompiledPolicy.moved_escape`, the broker's
listing of the moved tree), the agent tries to get the private content under
a name no rule refuses, or to plant content under frozen/, by moving
directories every way it can: rename, renameat2 (NOREPLACE, EXCHANGE both
ways, WHITEOUT), dirfds and O_PATH fds, /proc/self/fd/N and /proc/self/cwd
paths, trailing slashes, symlinks, hard links, names with newlines and
bytes that are not UTF-8, unlistable directories, `mv` and `cp -al`, the
workspace itself.  Three got through once, and are closed:

- a directory whose real path is longer than PATH_MAX while its parent's
  is not: the look at what the name holds failed, and the move was not
  judged by its tree at all (now: not moved, EIO);
- the native path served other syscalls between the broker's listing and
  the rename: a file made in the listed tree in that window arrived under
  frozen/ (now: the broker answers nothing else from a LIST to the move,
  and moves a name only if it still holds the object judged);
- a person's approval of the first held entry of a moved tree let the
  whole move go, whatever else it carried (now: a refusal comes first,
  and one approval never stands for several held names).

Every attack runs on the broker's native path and on the Python path alone
(AGENTSUP_FASTPATH=0).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, deny_rule
from steps import run_steps, step_reports, steps_command

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

# The attacking agent: `python3 mover.py STEPS_JSON`, each step [case, op,
# *args] with paths relative to its cwd (the workspace, until a "chdir").
# Prints {"case": ..., "result": "ok" | ERRNO | "exit N", "data": ...} lines,
# then "survived".
AGENT = textwrap.dedent(
    r'''
    import ctypes, errno, json, os, subprocess, sys, threading, time

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    WS = os.path.dirname(os.path.abspath(__file__))
    os.chdir(WS)
    RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
    AT_FDCWD = -100
    SYS_RENAMEAT2 = 316
    FDS = {"cwd": AT_FDCWD}


    def check(value):
        if value < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return value


    def renameat2(olddir, a, newdir, b, flags):
        return check(libc.syscall(SYS_RENAMEAT2, FDS[olddir], os.fsencode(a), FDS[newdir],
                                  os.fsencode(b), flags))


    def read(path):
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")


    def write(path, data):
        with open(path, "w") as f:
            f.write(data)


    def hold(name, path, how):
        flags = {"path": os.O_PATH | os.O_DIRECTORY, "ro": os.O_RDONLY | os.O_DIRECTORY}[how]
        FDS[name] = os.open(path, flags)


    def run(*argv):
        done = subprocess.run(list(argv), capture_output=True, text=True, errors="replace")
        if done.returncode:
            raise SystemError(f"exit {done.returncode}", (done.stdout + done.stderr)[-400:])
        return (done.stdout + done.stderr)[-400:]


    def listing(path):
        return json.dumps(sorted(os.listdir(path)))


    def plant_race(staging, frozen, seconds):
        """Rename `staging` to `frozen` while a second thread makes and
        removes staging/f.cfg; stop once frozen/f.cfg exists."""
        stop = threading.Event()

        def planter():
            while not stop.is_set():
                try:
                    fd = os.open(staging + "/f.cfg", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                except OSError:
                    continue
                os.write(fd, b"planted\n")
                os.close(fd)
                try:
                    os.unlink(staging + "/f.cfg")
                except OSError:
                    pass

        thread = threading.Thread(target=planter)
        thread.start()
        tries, refused, won, errors = 0, 0, False, {}
        deadline = time.monotonic() + float(seconds)
        try:
            while time.monotonic() < deadline:
                tries += 1
                try:
                    os.rename(staging, frozen)
                except OSError as exc:
                    refused += 1
                    errors[errno.errorcode.get(exc.errno, "?")] = errors.get(
                        errno.errorcode.get(exc.errno, "?"), 0) + 1
                    continue
                if os.path.lexists(frozen + "/f.cfg"):
                    won = True
                    break
                os.rename(frozen, staging)
        finally:
            stop.set()
            thread.join()
        return json.dumps({"tries": tries, "refused": refused, "won": won, "errors": errors})


    OPS = {
        "read": read,
        "write": write,
        "rename": os.rename,
        "noreplace": lambda a, b: renameat2("cwd", a, "cwd", b, RENAME_NOREPLACE),
        "exchange": lambda a, b: renameat2("cwd", a, "cwd", b, RENAME_EXCHANGE),
        "whiteout": lambda a, b: renameat2("cwd", a, "cwd", b, RENAME_WHITEOUT),
        "renameat": lambda d1, a, d2, b: renameat2(d1, a, d2, b, 0),
        "hold": hold,
        "fd-path": lambda name, rest: f"/proc/self/fd/{FDS[name]}/{rest}",
        "mkdir": os.mkdir,
        "rmdir": os.rmdir,
        "symlink": os.symlink,
        "link": os.link,
        "chdir": os.chdir,
        "chmod": lambda p, m: os.chmod(p, int(m, 8)),
        "run": run,
        "list": listing,
        "exists": lambda p: "yes" if os.path.lexists(p) else "no",
        "plant-race": plant_race,
    }

    for case, op, *args in json.loads(sys.argv[1]):
        # An argument "@fd:NAME:REST" is /proc/self/fd/N/REST of held fd NAME.
        args = [
            f"/proc/self/fd/{FDS[a.split(':')[1]]}/{a.split(':', 2)[2]}"
            if isinstance(a, str) and a.startswith("@fd:") else a
            for a in args
        ]
        try:
            value = OPS[op](*args)
            report = {"case": case, "result": "ok"}
            if isinstance(value, str):
                report["data"] = value
        except OSError as exc:
            report = {"case": case, "result": errno.errorcode.get(exc.errno, str(exc.errno))}
        except SystemError as exc:
            report = {"case": case, "result": exc.args[0], "data": exc.args[1]}
        print(json.dumps(report), flush=True)
    print("survived", flush=True)
    '''
)

SECRET = "the private content\n"
PLANTED = "planted\n"


def _command(sandbox: Sandbox, policy: str, steps: list[list[str]]) -> list[str]:
    return steps_command(sandbox, AGENT, "mover.py", policy, steps)


def _run(
    sandbox: Sandbox, native: bool, policy: str, steps: list[list[str]]
) -> subprocess.CompletedProcess[str]:
    return run_steps(sandbox, native, AGENT, "mover.py", policy, steps)


def _outcome(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {case: r["result"] for case, r in step_reports(result).items()}


UNREAD_PRIVATE = deny_rule("unread-private", "file_read", 'target: "**/private/*"')
FROZEN_REGEX = deny_rule("frozen-files", "file_write", 'pattern: "^.*/frozen/[^/]+$"')
FROZEN_CFG = deny_rule("frozen-cfg", "file_write", 'target: "**/frozen/*.cfg"')


def _file_tree(root: Path) -> dict[str, str]:
    """Every regular file beneath `root` (its mover.py aside), with its content."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or name == "mover.py":
                continue
            try:
                found[str(path.relative_to(root))] = path.read_text(errors="replace")
            except OSError:
                found[str(path.relative_to(root))] = "<unreadable>"
    return found


# -- every route to move a read-refused tree ----------------------------------------------


@both_paths
def test_every_route_to_move_a_private_directory_is_refused(sandbox: Sandbox, native: bool) -> None:
    """Only file_read of `**/private/*` is refused.  a/private/data holds the
    secret; the agent tries to give it a name outside the rule by moving the
    directory (or its name's holder) every way it has:

    rename, renameat2 RENAME_NOREPLACE, RENAME_EXCHANGE with an empty
    directory (the private one as the old name, and as the new name: the
    check must run both ways), RENAME_EXCHANGE with a plain file,
    RENAME_WHITEOUT; renameat from an O_PATH dirfd and from an O_RDONLY
    dirfd; /proc/self/fd/N/private and /proc/self/cwd/a/private; a trailing
    slash; the symlink `plink -> a/private` renamed (the directory stays,
    the read through it is judged at the real path); `mv` within the
    workspace and to the agent's /tmp (another mount: it copies, and the
    copy reads); `cp -al` (hard links, each a read) and `cp -a`; a move into
    its own subtree (EINVAL).  Then the same for private directories whose
    own names hold a newline and a byte that is not UTF-8, and whose entry
    has such a name; and one holding a directory the agent may not list
    (0311, another owner's: not moved, EIO).  And the control: moving `a`
    itself (private/data stays beneath a `private`) goes ahead.

    Correct outcome: every move that would give data a name outside the rule
    is refused (EACCES, EIO for the unlistable tree, EINVAL or EPERM where the
    kernel refuses first), the secret is never printed, and every file keeps
    its place."""
    ws = sandbox.workspace
    (ws / "a" / "private").mkdir(parents=True)
    (ws / "a" / "private" / "data").write_text(SECRET)
    (ws / "a" / "private" / "link-out").symlink_to("../../elsewhere")
    (ws / "a" / "empty").mkdir()
    (ws / "a" / "plain").write_text("plain\n")
    (ws / "plink").symlink_to("a/private")
    odd = os.fsdecode(b"we\nird\xff")
    (ws / odd / "private").mkdir(parents=True)
    (ws / odd / "private" / os.fsdecode(b"da\nta\xfe")).write_text(SECRET)
    (ws / "x" / "private" / "locked").mkdir(parents=True)
    (ws / "x" / "private" / "data").write_text(SECRET)
    os.chown(ws / "x" / "private" / "locked", 12345, 12345)
    (ws / "x" / "private" / "locked").chmod(0o311)
    before = _file_tree(ws)
    steps = [
        ["direct read", "read", "a/private/data"],
        ["rename", "rename", "a/private", "a/public"],
        ["noreplace", "noreplace", "a/private", "a/public"],
        ["exchange as old", "exchange", "a/private", "a/empty"],
        ["exchange as new", "exchange", "a/empty", "a/private"],
        ["exchange with file", "exchange", "a/plain", "a/private"],
        ["whiteout", "whiteout", "a/private", "a/public"],
        ["hold O_PATH", "hold", "opath", "a", "path"],
        ["hold O_RDONLY", "hold", "ro", "a", "ro"],
        ["renameat O_PATH", "renameat", "opath", "private", "opath", "public"],
        ["renameat O_RDONLY", "renameat", "ro", "private", "cwd", "public"],
        ["proc fd", "rename", "@fd:ro:private", "@fd:ro:public"],
        ["proc cwd", "rename", "/proc/self/cwd/a/private", "/proc/self/cwd/a/public"],
        ["trailing slash", "rename", "a/private/", "a/public/"],
        ["into itself", "rename", "a", "a/private/a"],
        ["symlink moved", "rename", "plink", "q"],
        ["read through symlink", "read", "q/data"],
        ["mv", "run", "mv", "a/private", "a/public"],
        ["mv to tmp", "run", "mv", "a/private", "/tmp/public"],
        ["read tmp", "read", "/tmp/public/data"],
        ["cp -al", "run", "cp", "-al", "a/private", "a/linked"],
        ["read linked", "read", "a/linked/data"],
        ["cp -a", "run", "cp", "-a", "a/private", "a/copied"],
        ["read copied", "read", "a/copied/data"],
        ["odd names", "rename", f"{odd}/private", f"{odd}/public"],
        ["unlistable", "rename", "x/private", "x/public"],
        ["control: move a", "rename", "a", "b"],
        ["read under moved a", "read", "b/private/data"],
        ["control: move back", "rename", "b", "a"],
    ]
    result = _run(sandbox, native, sandbox.policy("unread-private", UNREAD_PRIVATE), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "private content" not in result.stdout, result.stdout
    outcome = _outcome(result)
    refused = {
        "direct read": {"EACCES"},
        "rename": {"EACCES"},
        "noreplace": {"EACCES"},
        "exchange as old": {"EACCES"},
        "exchange as new": {"EACCES"},
        "exchange with file": {"EACCES"},
        "whiteout": {"EACCES", "EPERM", "EINVAL"},
        "renameat O_PATH": {"EACCES"},
        "renameat O_RDONLY": {"EACCES"},
        "proc fd": {"EACCES"},
        "proc cwd": {"EACCES"},
        "trailing slash": {"EACCES"},
        "into itself": {"EINVAL"},
        "read through symlink": {"EACCES"},
        "mv": {"exit 1"},
        "mv to tmp": {"exit 1"},
        "read tmp": {"ENOENT"},
        "cp -al": {"exit 1"},
        "read linked": {"ENOENT"},
        "cp -a": {"exit 1"},
        "read copied": {"ENOENT", "EACCES"},
        "odd names": {"EACCES"},
        "unlistable": {"EIO"},
    }
    for case, expected in refused.items():
        assert outcome.get(case) in expected, (case, outcome)
    for case in ("symlink moved", "control: move a", "control: move back"):
        assert outcome[case] == "ok", (case, outcome)
    assert outcome["read under moved a"] == "EACCES", outcome
    assert _file_tree(ws) == before
    assert ("file_read", "unread-private") in sandbox.denials()


# -- every route to bring a tree under write-refused names --------------------------------


@both_paths
def test_every_route_to_move_a_tree_into_frozen_is_refused(sandbox: Sandbox, native: bool) -> None:
    """Only file_write of files directly in a directory called "frozen" is
    refused (`^.*/frozen/[^/]+$`).  The agent fills staging/ (a file, a
    file with a newline and a non-UTF-8 byte in its name, and a hard link
    to a file outside it) and brings it under the name frozen: rename,
    RENAME_NOREPLACE, RENAME_EXCHANGE with an existing empty frozen/ (both
    ways round), renameat from a dirfd, /proc/self/fd/N paths, `mv`, `cp -al`
    (each link a write under frozen/), `cp -a`; and frozen/ itself (empty,
    then a directory holding a file) moved to where it is named frozen
    again beneath another directory.

    Correct outcome: every move refused (EACCES) as the file_write of a
    name under frozen/, no file under a frozen/ directory ever has the
    planted content, and an empty staging/ (the control) may still be
    renamed to frozen."""
    ws = sandbox.workspace
    (ws / "staging").mkdir()
    (ws / "staging" / "f").write_text(PLANTED)
    (ws / "staging" / os.fsdecode(b"o\ndd\xff")).write_text(PLANTED)
    (ws / "outside").write_text(PLANTED)
    os.link(ws / "outside", ws / "staging" / "linked")
    (ws / "exchange").mkdir()
    (ws / "exchange" / "frozen").mkdir()
    (ws / "deeper").mkdir()
    steps = [
        ["direct write", "write", "exchange/frozen/f", PLANTED],
        ["rename", "rename", "staging", "frozen"],
        ["noreplace", "noreplace", "staging", "frozen"],
        ["exchange as old", "exchange", "staging", "exchange/frozen"],
        ["exchange as new", "exchange", "exchange/frozen", "staging"],
        ["hold", "hold", "ws", ".", "path"],
        ["renameat", "renameat", "ws", "staging", "ws", "frozen"],
        ["proc fd", "rename", "@fd:ws:staging", "@fd:ws:frozen"],
        ["mv", "run", "mv", "staging", "frozen"],
        ["cp -al", "run", "cp", "-al", "staging", "deeper/frozen"],
        ["cp -a", "run", "cp", "-a", "staging", "exchange/frozen/sub"],
        ["cp -a into frozen", "run", "cp", "-a", "staging/f", "exchange/frozen/f"],
        ["control: empty", "mkdir", "empty"],
        ["control: empty to frozen", "rename", "empty", "frozen"],
        ["write into moved", "write", "frozen/f", PLANTED],
        ["control: frozen back", "rename", "frozen", "empty"],
    ]
    result = _run(sandbox, native, sandbox.policy("frozen", FROZEN_REGEX), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    for case in ("direct write", "rename", "noreplace", "exchange as old", "exchange as new"):
        assert outcome[case] == "EACCES", (case, outcome)
    for case in ("renameat", "proc fd", "write into moved"):
        assert outcome[case] == "EACCES", (case, outcome)
    for case in ("mv", "cp -al", "cp -a into frozen"):
        assert outcome[case].startswith("exit"), (case, outcome)
    for case in ("control: empty", "control: empty to frozen", "control: frozen back"):
        assert outcome[case] == "ok", (case, outcome)
    planted = {
        name: content
        for name, content in _file_tree(ws).items()
        if "frozen/" in name and "/" not in name.rsplit("frozen/", 1)[1]
    }
    assert planted == {}, (planted, outcome)
    assert ("file_write", "frozen-files") in sandbox.denials()


WATCHED_WRITES = textwrap.dedent(
    """
    name: watched
    extends: [strict]
    rules:
      - id: watched-writes
        actions: [file_write]
        target: "**/watched/*"
        decision: warn
        priority: 1
    """
)


@both_paths
def test_a_whiteout_is_a_write_of_the_old_name(sandbox: Sandbox, native: bool) -> None:
    """renameat2 RENAME_WHITEOUT moves a file and leaves a new entry (a 0/0
    character device) at its old name.  (A name whose writes are refused
    cannot move at all: its move would carry the file to where they are
    not.)  Writes under watched/ are let through with a warning: moving
    watched/f out with a whiteout writes watched/f, and is judged so.

    Correct outcome: the move goes ahead (a whiteout is nothing the kernel
    refuses the agent), the whiteout stands at watched/f, and the audit log
    holds the warning for the file_write of watched/f."""
    ws = sandbox.workspace
    (ws / "watched").mkdir()
    (ws / "watched" / "f").write_text(PLANTED)
    steps = [["whiteout out of watched", "whiteout", "watched/f", "out"]]
    result = _run(sandbox, native, sandbox.policy("watched", WATCHED_WRITES), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _outcome(result) == {"whiteout out of watched": "ok"}
    assert (ws / "watched" / "f").is_char_device()
    assert (ws / "out").read_text() == PLANTED
    warned = [
        r.get("target")
        for r in sandbox.audit_records()
        if r.get("rule") == "watched-writes" and r.get("action_type") == "file_write"
    ]
    assert warned == [str(ws / "watched" / "f")], sandbox.audit_records()[-5:]


@both_paths
def test_except_globs_and_the_workspace_itself(sandbox: Sandbox, native: bool) -> None:
    """file_read of `**/private/*` is refused except `**/private/*.pub`.  A
    private directory holding only key.pub moves (nothing in it is refused
    under its old name); one holding key.pub and key is refused as the read
    of key.  The workspace itself does not move (out, or into itself).

    Correct outcome: the first move ok, the second EACCES (rule
    unread-private), the workspace renames refused (EACCES, EBUSY or
    EINVAL), the key never printed."""
    ws = sandbox.workspace
    (ws / "pubonly" / "private").mkdir(parents=True)
    (ws / "pubonly" / "private" / "key.pub").write_text("public\n")
    (ws / "mixed" / "private").mkdir(parents=True)
    (ws / "mixed" / "private" / "key.pub").write_text("public\n")
    (ws / "mixed" / "private" / "key").write_text(SECRET)
    policy = textwrap.dedent(
        """
        name: except
        extends: [strict]
        rules:
          - id: unread-private
            actions: [file_read]
            target: "**/private/*"
            except: ["**/private/*.pub"]
            decision: deny
            priority: 1
            on_violation: block
        """
    )
    steps = [
        ["pub only", "rename", "pubonly/private", "pubonly/public"],
        ["mixed", "rename", "mixed/private", "mixed/public"],
        ["read mixed", "read", "mixed/public/key"],
        ["workspace", "rename", str(ws), f"{ws}-moved"],
        ["workspace inside", "rename", str(ws), f"{ws}/inside"],
    ]
    result = _run(sandbox, native, sandbox.policy("except", policy), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "private content" not in result.stdout
    outcome = _outcome(result)
    assert outcome["pub only"] == "ok", outcome
    assert outcome["mixed"] == "EACCES", outcome
    assert outcome["read mixed"] == "ENOENT", outcome
    for case in ("workspace", "workspace inside"):
        assert outcome[case] in ("EACCES", "EBUSY", "EINVAL", "EXDEV"), (case, outcome)
    assert (ws / "mixed" / "private" / "key").read_text() == SECRET
    assert ws.is_dir() and not Path(f"{ws}-moved").exists()
    assert ("file_read", "unread-private") in sandbox.denials()


# -- holes -------------------------------------------------------------------------------


def _deep_parent(ws: Path, length: int) -> str:
    """A directory beneath `ws` whose absolute path is exactly `length` bytes,
    made through dirfds (its path is too long for most calls)."""
    path = str(ws)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(path) < length:
            remaining = length - len(path)  # the slash and the name
            size = remaining - 1 if remaining <= 201 else (200 if remaining > 203 else 150)
            name = "d" * size
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
            path += "/" + name
        return path
    finally:
        os.close(fd)


def _make_at(parent: str, relative: str, content: str | None) -> None:
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if content is None:
            os.mkdir(relative, dir_fd=fd)
        else:
            out = os.open(relative, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(out, content.encode())
            os.close(out)
    finally:
        os.close(fd)


@both_paths
def test_a_directory_whose_path_is_too_long_is_still_judged_by_its_tree(
    sandbox: Sandbox, native: bool
) -> None:
    """The agent's cwd is a directory D whose real path is 4090 bytes (under
    PATH_MAX); D/private (4098 bytes) holds data, refused reading by
    `**/private/*`, D/staging holds f, and D/stay.txt may not be chmod-ed
    (`**/stay.txt`).  The agent renames `private` to WORKSPACE/out,
    `staging` to WORKSPACE/frozen (writes of `^.*/frozen/[^/]+$` refused)
    and stay.txt to WORKSPACE/moved.txt (relative old names, short absolute
    new ones), then reads out/data and chmods moved.txt.

    The mediator pins each parent (D: fine) and looks at what the old name
    holds; that look reads the object's real path back from /proc/self/fd,
    which fails with ENAMETOOLONG past 4095 bytes.  A name whose object
    cannot be looked at is not moved (`_decide_carried`; it once skipped
    it as "nothing moves", and the rename went ahead unjudged).

    Correct outcome: every move refused (EACCES, as the read of
    D/private/data, the write of WORKSPACE/frozen/f, the chmod of
    D/stay.txt; or EIO, not judged), the secret never printed, nothing
    under frozen/."""
    ws = sandbox.workspace
    deep = _deep_parent(ws, 4090)
    _make_at(deep, "private", None)
    _make_at(deep, "private/data", SECRET)
    _make_at(deep, "staging", None)
    _make_at(deep, "staging/f", PLANTED)
    _make_at(deep, "stay.txt", "stay\n")
    steps = [
        ["chdir deep", "chdir", deep],
        ["direct read", "read", "private/data"],
        ["move private out", "rename", "private", f"{ws}/out"],
        ["move staging in", "rename", "staging", f"{ws}/frozen"],
        ["move stay.txt out", "rename", "stay.txt", f"{ws}/moved.txt"],
        ["chdir back", "chdir", str(ws)],
        ["read moved", "read", "out/data"],
        ["chmod moved", "chmod", "moved.txt", "777"],
    ]
    policy = textwrap.dedent(
        """
        name: both
        extends: [strict]
        rules:
          - id: unread-private
            actions: [file_read]
            target: "**/private/*"
            decision: deny
            priority: 1
            on_violation: block
          - id: frozen-files
            actions: [file_write]
            pattern: "^.*/frozen/[^/]+$"
            decision: deny
            priority: 1
            on_violation: block
          - id: refused-chmod
            actions: [file_chmod]
            target: "**/stay.txt"
            decision: deny
            priority: 1
            on_violation: block
        """
    )
    result = _run(sandbox, native, sandbox.policy("all", policy), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome["chdir deep"] == "ok", outcome
    assert outcome["direct read"] != "ok", outcome
    assert not (ws / "frozen" / "f").exists(), outcome
    assert "private content" not in result.stdout, outcome
    assert outcome["move private out"] in ("EACCES", "EIO"), outcome
    assert outcome["move staging in"] in ("EACCES", "EIO"), outcome
    assert outcome["move stay.txt out"] in ("EACCES", "EIO"), outcome


@both_paths
def test_a_file_made_between_the_listing_and_the_rename_never_arrives_frozen(
    sandbox: Sandbox, native: bool
) -> None:
    """Writes of files directly in a "frozen" directory are refused.  The
    agent renames staging/ (holding only sub/, 4000 files: a listing and a
    comparison that take a while) to frozen, again and again, while a second
    thread makes staging/f (content "planted"), and removes it, in a loop.

    The supervisor lists the tree through the broker, compares it, and then
    has the broker rename it; with the native path the broker once served
    the second thread's open(O_CREAT) of staging/f in between (it is
    plainly allowed), and f moved with a tree listed without it.  Now the
    broker answers nothing else from the LIST to the move (`quiesced`).
    The Python path alone serves one notification at a time.

    Correct outcome: no rename ever moves a file into frozen/ (frozen/f
    never exists), on either path."""
    ws = sandbox.workspace
    (ws / "staging" / "sub").mkdir(parents=True)
    for i in range(2000):
        (ws / "staging" / "sub" / str(i)).write_bytes(b"")
    steps = [["race", "plant-race", "staging", "frozen", "4"]]
    result = _run(sandbox, native, sandbox.policy("frozen", FROZEN_CFG), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    report = step_reports(result)["race"]
    assert report["result"] == "ok", report
    race = json.loads(report["data"])
    assert race["tries"] > 1, race
    assert not race["won"], race
    assert not (ws / "frozen" / "f.cfg").exists(), race


HELD_AND_REFUSED = textwrap.dedent(
    """
    name: held
    extends: [strict]
    approval:
      timeout_seconds: 60
      on_timeout: deny
    rules:
      - id: ask-box-notes
        actions: [file_read]
        target: "**/box/notes.txt"
        decision: require_approval
        priority: 1
        message: reading a box's notes needs a person
      - id: unread-vault-key
        actions: [file_read]
        target: "**/vault/key.txt"
        decision: deny
        priority: 1
        on_violation: block
    """
)


@both_paths
def test_a_refused_entry_is_never_held_for_approval(sandbox: Sandbox, native: bool) -> None:
    """Reading `**/box/notes.txt` needs a person's approval; reading
    `**/vault/key.txt` is refused outright.  The agent exchanges a/box
    (holding notes.txt) with a/vault (holding key.txt): notes.txt would
    leave its held name, and key.txt its refused one.

    A person approves one name, never the move of another the policy
    refuses: the exchange is refused at once as the read of
    a/vault/key.txt, with nothing held (once, `moved_escape` answered the
    first entry it met, the held one, and the approved exchange moved the
    key out)."""
    ws = sandbox.workspace
    (ws / "a" / "box").mkdir(parents=True)
    (ws / "a" / "box" / "notes.txt").write_text("notes\n")
    (ws / "a" / "vault").mkdir()
    (ws / "a" / "vault" / "key.txt").write_text(SECRET)
    steps = [
        ["direct read", "read", "a/vault/key.txt"],
        ["exchange", "exchange", "a/box", "a/vault"],
        ["read moved key", "read", "a/box/key.txt"],
    ]
    result = _run(sandbox, native, sandbox.policy("held", HELD_AND_REFUSED), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = {r["case"]: r["result"] for r in step_reports(result).values()}
    assert outcome == {
        "direct read": "EACCES",
        "exchange": "EACCES",
        "read moved key": "ENOENT",
    }, outcome
    assert "private content" not in result.stdout
    assert (ws / "a" / "vault" / "key.txt").read_text() == SECRET
    refused = [
        r
        for r in sandbox.audit_records()
        if r.get("rule") == "unread-vault-key" and r.get("syscall") == "renameat2"
    ]
    assert refused and str(refused[0]["target"]).endswith("/a/vault/key.txt"), refused
    assert not [r for r in sandbox.audit_records() if r.get("kind") == "approval"]


HELD_TWICE = textwrap.dedent(
    """
    name: held
    extends: [strict]
    approval:
      timeout_seconds: 60
      on_timeout: deny
    rules:
      - id: ask-box
        actions: [file_read]
        target: "**/box/*.txt"
        decision: require_approval
        priority: 1
    """
)


@both_paths
def test_one_approval_never_stands_for_several_held_names(sandbox: Sandbox, native: bool) -> None:
    """Reading any `**/box/*.txt` needs a person's approval; a/box holds two
    such files.  Renaming a/box to a/crate would take both out of the rule:
    one approval (of one name) cannot stand for the other, so the move is
    not made (EIO) and the audit log says why; nothing waits for a person."""
    ws = sandbox.workspace
    (ws / "a" / "box").mkdir(parents=True)
    (ws / "a" / "box" / "one.txt").write_text("one\n")
    (ws / "a" / "box" / "two.txt").write_text("two\n")
    steps = [["move", "rename", "a/box", "a/crate"]]
    result = _run(sandbox, native, sandbox.policy("held", HELD_TWICE), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {r["case"]: r["result"] for r in step_reports(result).values()} == {"move": "EIO"}
    assert (ws / "a" / "box" / "two.txt").exists()
    said = [r for r in sandbox.audit_records() if "one at a time" in json.dumps(r)]
    assert said, sandbox.audit_records()[-3:]
