"""A supervised path syscall has the bare kernel's effect and errno, never more.

Each case below is one syscall (or one shell command) made by a small agent
in a directory prepared the same way every time (`_prepare`).  It runs
without agentsup (the reference: what the kernel itself answers) and under
`agentsup run`, with the broker's native path and with the Python path
alone (AGENTSUP_FASTPATH=0), under `strict` and, for the names a policy
could mistake for another path (empty, `.`, `..`), under `permissive`
too.  Each run must give the same errno (or exit status) and leave the
directory in the same state, and the run leaves no decision in the audit
log: every name here is in the workspace, where both policies plainly allow.

The rules the cases hold agentsup to:

- A trailing slash means "this must be a directory" to the kernel.  The
  policy judges the name without it (`f/` is the file f), but the syscall
  the broker makes keeps it, so the kernel applies its own rule: `rm f/`
  fails with ENOTDIR and leaves f, `ln -s x y/` fails with ENOENT.
- An empty name is ENOENT at once: no rule is asked, nothing is recorded
  (it is not `/`, nor the working directory).  With AT_EMPTY_PATH the
  object is the fd itself, judged by what it is.
- `open(O_CREAT)` through a symlink leading nowhere creates the file where
  the symlink leads (the kernel follows a final symlink unless O_EXCL or
  O_NOFOLLOW): judged as that path, made there with O_EXCL by the broker.
- A last component `.` or `..` (or `/` itself) never names a new entry: the
  kernel's own errno for each syscall (rmdir("..") is ENOTEMPTY), after the
  directory it is in is looked up, with no rule asked.

Further tests show the symlink case stays judged by where it leads (a
refused place, a secret), even while the agent swaps the symlink; that
AT_EMPTY_PATH is judged as the fd's file; and that cmake's mkdir("")
survives a policy whose every refusal kills.
"""

from __future__ import annotations

import functools
import json
import os
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

# The agent: `python3 agent.py CALL`, in the directory `play` beside it.  CALL
# is a Python expression over the wrappers below (each returns "ok" or the
# errno's name; `creat(path, flags)` is open(path, O_WRONLY | O_CREAT | flags,
# 0o644)), or "sh: COMMAND", whose exit status is the result.
AGENT = textwrap.dedent(
    r'''
    import ctypes, errno, json, os, subprocess, sys

    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "play"))


    def fchmodat2(*args):
        return libc.syscall(452, *args)  # SYS_fchmodat2 (x86_64, aarch64)


    def wrap(name):
        function = fchmodat2 if name == "fchmodat2" else getattr(libc, name)

        def call(*args):
            ctypes.set_errno(0)
            result = function(*(a.encode() if isinstance(a, str) else a for a in args))
            if result < 0:
                return errno.errorcode[ctypes.get_errno()]
            if name == "open":
                os.close(result)
            return "ok"

        return call


    def fd(path):
        """An fd of `path`, opened for reading (kept open)."""
        return os.open(path, os.O_RDONLY)


    def creat(path, flags=0):
        """open(path, O_WRONLY | O_CREAT | flags, 0o644)."""
        return CALLS["open"](path, os.O_WRONLY | os.O_CREAT | flags, 0o644)


    CALLS = {
        name: wrap(name)
        for name in ("open", "unlink", "unlinkat", "rmdir", "mkdir", "mknod", "mkfifo",
                     "symlink", "link", "linkat", "rename", "renameat2", "chmod", "fchmodat2",
                     "fchownat", "truncate")
    }
    CONSTANTS = {
        "O_WRONLY": os.O_WRONLY, "O_CREAT": os.O_CREAT, "O_EXCL": os.O_EXCL,
        "O_TRUNC": os.O_TRUNC, "O_NOFOLLOW": os.O_NOFOLLOW, "S_IFREG": 0o100000,
        "CWD": -100, "AT_REMOVEDIR": 0x200, "AT_EMPTY_PATH": 0x1000,  # CWD: AT_FDCWD
        "RENAME_NOREPLACE": 1,
    }
    call = sys.argv[1]
    if call.startswith("sh:"):
        done = subprocess.run(["sh", "-c", call[3:]], stderr=subprocess.DEVNULL)
        result = "exit %d" % done.returncode
    else:
        result = eval(call, {**CALLS, **CONSTANTS, "fd": fd, "creat": creat})
    print(json.dumps({"result": result}), flush=True)
    '''
)


def _prepare(play: Path) -> None:
    """The directory every case starts from."""
    play.mkdir()
    (play / "f").write_text("f\n")  # a file
    (play / "d").mkdir()  # an empty directory
    (play / "sub").mkdir()
    (play / "sub" / "file").write_text("s\n")
    (play / "lf").symlink_to("f")  # a symlink to a file
    (play / "ld").symlink_to("d")  # a symlink to a directory
    (play / "dang").symlink_to("nowhere")  # a symlink leading nowhere
    (play / "dang1").symlink_to("dang2")  # ... through another one, into sub/
    (play / "dang2").symlink_to("sub/x")
    (play / "sub" / "up").symlink_to("../made")  # relative to the symlink's own directory
    (play / "dangabs").symlink_to(play / "absolute")  # an absolute one
    (play / "dangmissing").symlink_to("nodir/x")  # into a directory that is not there
    (play / "dangslash").symlink_to("nowhere/")


def _state(play: Path) -> dict[str, object]:
    """What the directory (itself: ".") holds: each entry's kind and mode, a
    file's text and link count, and a symlink's text."""
    found: dict[str, object] = {}
    for path in [play, *sorted(play.rglob("*"))]:
        name = str(path.relative_to(play))
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            found[name] = ("symlink", os.readlink(path).replace(str(play), "{play}"))
        elif stat.S_ISREG(info.st_mode):
            found[name] = (stat.filemode(info.st_mode), path.read_text(), info.st_nlink)
        else:
            found[name] = (stat.filemode(info.st_mode),)
    return found


# (what it shows, the call, what the kernel answers)
TRAILING_SLASH = [
    ("rm of a file named with a slash", "sh: rm f/", "exit 1"),
    ("unlink of a file named with a slash", 'unlink("f/")', "ENOTDIR"),
    ("unlinkat of a file named with a slash", 'unlinkat(CWD, "f/", 0)', "ENOTDIR"),
    ("unlink of a symlink to a file, with a slash", 'unlink("lf/")', "ENOTDIR"),
    ("unlink of a symlink to a directory, with a slash", 'unlink("ld/")', "ENOTDIR"),
    ("rmdir of a symlink to a directory, with a slash", 'rmdir("ld/")', "ENOTDIR"),
    ("rmdir of a directory, with a slash", 'rmdir("d/")', "ok"),
    ("rmdir of a directory, with two slashes", 'rmdir("d//")', "ok"),
    ("mv of a file to a name with a slash", "sh: mv f x/", "exit 1"),
    ("rename of a file to a name with a slash", 'rename("f", "x/")', "ENOTDIR"),
    ("rename of a file named with a slash", 'rename("f/", "x")', "ENOTDIR"),
    ("rename of a symlink to a directory, with a slash", 'rename("ld/", "x")', "ENOTDIR"),
    ("rename of a directory to a name with a slash", 'rename("d", "x/")', "ok"),
    ("rename of a directory named with a slash", 'rename("d/", "x")', "ok"),
    ("ln -s to a name with a slash", "sh: ln -s x y/", "exit 1"),
    ("symlink to a name with a slash", 'symlink("x", "y/")', "ENOENT"),
    ("link to a name with a slash", 'link("f", "x/")', "ENOENT"),
    ("link of a file named with a slash", 'link("f/", "x")', "ENOTDIR"),
    ("mkfifo of a name with a slash", 'mkfifo("x/", 0o644)', "ENOENT"),
    ("mknod of a name with a slash", 'mknod("x/", S_IFREG | 0o644, 0)', "ENOENT"),
    ("mkdir of a name with a slash", 'mkdir("x/", 0o755)', "ok"),
    ("mkdir of a dangling symlink, with a slash", 'mkdir("dang/", 0o755)', "EEXIST"),
    ("creating open of a file named with a slash", 'creat("f/")', "EISDIR"),
    ("creating open of a new name with a slash", 'creat("x/")', "EISDIR"),
    ("creating open of a dangling symlink, with a slash", 'creat("dang/")', "EISDIR"),
    ("creating open of a directory, with a slash", 'creat("d/")', "EISDIR"),
]  # fmt: skip

EMPTY = [
    ("mkdir of an empty name (cmake does it)", 'mkdir("", 0o755)', "ENOENT"),
    ("creating open of an empty name", 'creat("")', "ENOENT"),
    ("unlink of an empty name", 'unlink("")', "ENOENT"),
    ("rmdir of an empty name", 'rmdir("")', "ENOENT"),
    ("rename from an empty name", 'rename("", "x")', "ENOENT"),
    ("rename to an empty name", 'rename("f", "")', "ENOENT"),
    ("symlink named empty", 'symlink("x", "")', "ENOENT"),
    ("symlink holding an empty name", 'symlink("", "y")', "ENOENT"),
    ("link from an empty name", 'link("", "y")', "ENOENT"),
    ("link to an empty name", 'link("f", "")', "ENOENT"),
    ("mkfifo of an empty name", 'mkfifo("", 0o644)', "ENOENT"),
    ("chmod of an empty name", 'chmod("", 0o600)', "ENOENT"),
    ("linkat of an empty name", 'linkat(CWD, "", CWD, "g", 0)', "ENOENT"),
    ("linkat of an fd, AT_EMPTY_PATH", 'linkat(fd("f"), "", CWD, "g", AT_EMPTY_PATH)', "ok"),
    ("linkat of the cwd, AT_EMPTY_PATH", 'linkat(CWD, "", CWD, "g", AT_EMPTY_PATH)', "EPERM"),
    ("chmod of the cwd, AT_EMPTY_PATH", 'fchmodat2(CWD, "", 0o700, AT_EMPTY_PATH)', "ok"),
    ("chown of the cwd, AT_EMPTY_PATH", 'fchownat(CWD, "", -1, -1, AT_EMPTY_PATH)', "ok"),
    # AT_EMPTY_PATH with a name: the name, from the dirfd (not the dirfd itself).
    ("chmod of a name, AT_EMPTY_PATH", 'fchmodat2(fd("sub"), "file", 0o600, AT_EMPTY_PATH)', "ok"),
    ("chown of a name, AT_EMPTY_PATH", 'fchownat(CWD, "f", -1, -1, AT_EMPTY_PATH)', "ok"),
]  # fmt: skip

DANGLING = [
    ("echo into a symlink leading nowhere", "sh: echo hi > dang", "exit 0"),
    ("creating open through a symlink leading nowhere", 'creat("dang", O_TRUNC)', "ok"),
    ("... with O_EXCL", 'creat("dang", O_EXCL)', "EEXIST"),
    ("... with O_NOFOLLOW", 'creat("dang", O_NOFOLLOW)', "ELOOP"),
    ("... through two symlinks", 'creat("dang1")', "ok"),
    ("... a relative one, from its own directory", 'creat("sub/up")', "ok"),
    ("... an absolute one", 'creat("dangabs")', "ok"),
    ("... into a missing directory", 'creat("dangmissing")', "ENOENT"),
    ("... leading to a name with a slash", 'creat("dangslash")', "EISDIR"),
]  # fmt: skip

DOTS = [
    ("rmdir of ..", 'rmdir("..")', "ENOTEMPTY"),
    ("rmdir of d/..", 'rmdir("d/..")', "ENOTEMPTY"),
    ("rmdir of .", 'rmdir(".")', "EINVAL"),
    ("rmdir of /", 'rmdir("/")', "EBUSY"),
    ("rmdir of nodir/..", 'rmdir("nodir/..")', "ENOENT"),
    ("rmdir of f/..", 'rmdir("f/..")', "ENOTDIR"),
    ("unlink of ..", 'unlink("..")', "EISDIR"),
    ("mkdir of nodir/..", 'mkdir("nodir/..", 0o755)', "ENOENT"),
    ("mkfifo of ..", 'mkfifo("..", 0o644)', "EEXIST"),
    ("symlink named ..", 'symlink("x", "..")', "EEXIST"),
    ("link to d/..", 'link("f", "d/..")', "EEXIST"),
    ("link of .", 'link(".", "x")', "EPERM"),
    ("rename of d/..", 'rename("d/..", "x")', "EBUSY"),
    ("rename to ..", 'rename("f", "..")', "EBUSY"),
    ("rename to .., no replacing", 'renameat2(CWD, "f", CWD, "..", RENAME_NOREPLACE)', "EEXIST"),
    ("rename of nodir/..", 'rename("nodir/..", "x")', "ENOENT"),
    ("creating open of nodir/..", 'creat("nodir/..")', "ENOENT"),
]  # fmt: skip


# Flags the kernel refuses before it looks at any name: nothing is done.
FLAGS = [
    ("unlinkat with an unknown flag", 'unlinkat(CWD, "f", 1)', "EINVAL"),
    ("linkat with an unknown flag", 'linkat(CWD, "f", CWD, "g", 1)', "EINVAL"),
    ("renameat2 with an unknown flag", 'renameat2(CWD, "f", CWD, "g", 0x80)', "EINVAL"),
    ("renameat2, RENAME_EXCHANGE | NOREPLACE", 'renameat2(CWD, "f", CWD, "g", 3)', "EINVAL"),
]


def _cases(table: list[tuple[str, str, str]], policies: tuple[str, ...]) -> list[object]:
    return [
        pytest.param(call, expected, policy, id=f"{policy}: {what}")
        for what, call, expected in table
        for policy in policies
    ]


CASES = [
    *_cases(TRAILING_SLASH, ("strict",)),
    *_cases(EMPTY, ("strict", "permissive")),
    *_cases(DANGLING, ("strict",)),
    *_cases(DOTS, ("strict", "permissive")),
    *_cases(FLAGS, ("strict",)),
]


def _result(done: subprocess.CompletedProcess[str]) -> str:
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and len(reports) == 1, (done.returncode, done.stderr[-2000:])
    return str(reports[0]["result"])


@functools.cache
def _bare(call: str, root: Path) -> tuple[str, dict[str, object]]:
    """The call without agentsup: its result and the state it leaves."""
    root.mkdir(parents=True)
    _prepare(root / "play")
    (root / "agent.py").write_text(AGENT)
    done = subprocess.run(
        ["python3", str(root / "agent.py"), call],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return _result(done), _state(root / "play")


def _run(
    sandbox: Sandbox, native: bool, call: str, policy: str = "strict"
) -> subprocess.CompletedProcess[str]:
    """The agent (in the workspace, beside `play`) under agentsup."""
    agent = sandbox.workspace / "agent.py"
    agent.write_text(AGENT)
    return sandbox.run("python3", str(agent), call, policy=policy, env=fastpath_env(native))


def _supervised(
    sandbox: Sandbox, native: bool, policy: str, call: str
) -> tuple[str, dict[str, object]]:
    _prepare(sandbox.workspace / "play")
    return _result(_run(sandbox, native, call, policy)), _state(sandbox.workspace / "play")


def _decisions(sandbox: Sandbox) -> list[tuple[object, ...]]:
    return [
        (r.get("decision"), r.get("action_type"), r.get("target"), r.get("rule"))
        for r in sandbox.audit_records()
        if r.get("kind") in ("decision", "signal")
    ]


@both_paths
@pytest.mark.parametrize(("call", "expected", "policy"), CASES)
def test_the_kernels_answer_and_effect(
    sandbox: Sandbox,
    native: bool,
    call: str,
    expected: str,
    policy: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    reference = tmp_path_factory.getbasetemp() / "bare" / call.encode().hex()
    bare_result, bare_state = _bare(call, reference)
    assert bare_result == expected, "the kernel's own answer (this table documents it)"
    result, state = _supervised(sandbox, native, policy, call)
    assert (result, state) == (bare_result, bare_state)
    assert _decisions(sandbox) == []


# -- where a symlink leading nowhere leads is what is judged ---------------------------------


LOCKED = textwrap.dedent(
    """
    name: locked
    extends: [strict]
    rules:
      - id: locked
        actions: [file_write]
        target: "{workspace}/play/locked/**"
        decision: deny
        priority: 1
        on_violation: block
    """
)


def _locked(sandbox: Sandbox) -> str:
    _prepare(sandbox.workspace / "play")
    (sandbox.workspace / "play" / "locked").mkdir()
    (sandbox.workspace / "play" / "locked" / "kept").write_text("kept\n")
    return sandbox.policy("locked", LOCKED)


@both_paths
def test_a_create_through_a_symlink_is_judged_where_it_leads(
    sandbox: Sandbox, native: bool
) -> None:
    """`open(dang, O_CREAT)` with dang -> locked/new, where writes are refused:
    refused (EACCES) as file_write of locked/new itself, and nothing made."""
    policy = _locked(sandbox)
    play = sandbox.workspace / "play"
    (play / "dang").unlink()
    (play / "dang").symlink_to("locked/new")
    assert _result(_run(sandbox, native, 'creat("dang")', policy)) == "EACCES"
    assert not (play / "locked" / "new").exists()
    assert _decisions(sandbox) == [("deny", "file_write", str(play / "locked" / "new"), "locked")]


@both_paths
def test_a_create_through_a_symlink_is_judged_where_it_leads_into_a_secret(
    sandbox: Sandbox, native: bool
) -> None:
    """dang -> ~/.ssh/planted, which is not there: the kernel would make it;
    strict kills the agent for the file_write of ~/.ssh/planted, and nothing is made."""
    _prepare(sandbox.workspace / "play")
    planted = sandbox.home / ".ssh" / "planted"
    (sandbox.workspace / "play" / "dang").unlink()
    (sandbox.workspace / "play" / "dang").symlink_to(planted)
    done = _run(sandbox, native, 'creat("dang")')
    assert done.returncode == 137, done.stderr[-2000:]
    assert f"file_write {planted}" in done.stderr
    assert not planted.exists()


# The agent swaps `dang` (-> flip/new) between flip -> ok and flip -> locked
# in a thread, while it creates through dang again and again.
SWAPPER = textwrap.dedent(
    r"""
    import json, os, threading
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "play"))
    running = True

    def swap():
        while running:
            for where in ("ok", "locked"):
                try:
                    os.symlink(where, "flip.new")
                    os.rename("flip.new", "flip")
                except OSError:
                    pass

    thread = threading.Thread(target=swap)
    thread.start()
    made, refused, other = 0, 0, {}
    for _ in range(300):
        try:
            os.close(os.open("dang", os.O_WRONLY | os.O_CREAT, 0o644))
            made += 1
        except PermissionError:
            refused += 1
        except OSError as exc:
            other[exc.strerror] = other.get(exc.strerror, 0) + 1
        try:
            os.unlink("ok/new")
        except OSError:
            pass
    running = False
    thread.join()
    print(json.dumps({"made": made, "refused": refused, "other": other}), flush=True)
    """
)


@both_paths
def test_a_create_through_a_swapped_symlink_never_lands_where_it_is_refused(
    sandbox: Sandbox, native: bool
) -> None:
    """dang -> flip/new, and a thread swaps flip between ok/ and locked/
    (writes refused) all along: each create is made where it was judged, with
    O_EXCL, so nothing ever appears in locked/."""
    policy = _locked(sandbox)
    play = sandbox.workspace / "play"
    (play / "ok").mkdir()
    (play / "flip").symlink_to("ok")
    (play / "dang").unlink()
    (play / "dang").symlink_to("flip/new")
    (sandbox.workspace / "swapper.py").write_text(SWAPPER)
    done = sandbox.run(
        "python3", str(sandbox.workspace / "swapper.py"), policy=policy, env=fastpath_env(native)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(os.listdir(play / "locked")) == ["kept"]
    counts = json.loads(done.stdout.splitlines()[-1])
    assert counts["made"] > 0 and counts["refused"] > 0, counts  # the race ran both ways
    denied = {target for _, _, target, _ in _decisions(sandbox)}
    assert denied <= {str(play / "locked" / "new"), None}, denied


# -- AT_EMPTY_PATH: the fd is the object -------------------------------------------------------


@both_paths
def test_linkat_of_an_fd_is_judged_as_the_fds_file(sandbox: Sandbox, native: bool) -> None:
    """linkat(fd, "", AT_FDCWD, "g", AT_EMPTY_PATH) with fd a read-only fd of
    locked/kept: a new name for a file whose writes are refused is refused
    as the file_write of locked/kept (not of "/"), and g is not made."""
    policy = _locked(sandbox)
    play = sandbox.workspace / "play"
    call = 'linkat(fd("locked/kept"), "", CWD, "g", AT_EMPTY_PATH)'
    assert _result(_run(sandbox, native, call, policy)) == "EACCES"
    assert not (play / "g").exists()
    assert _decisions(sandbox) == [("deny", "file_write", str(play / "locked" / "kept"), "locked")]


KILLS_BY_DEFAULT = textwrap.dedent(
    """
    name: kills-by-default
    extends: [strict]
    default: deny
    on_violation: sigkill
    """
)


@both_paths
def test_cmake_survives_mkdir_of_an_empty_name_where_every_refusal_kills(
    sandbox: Sandbox, native: bool
) -> None:
    """cmake calls mkdir("") at every configure: ENOENT, with no rule asked,
    even under a policy whose every refusal kills."""
    _prepare(sandbox.workspace / "play")
    policy = sandbox.policy("kills-by-default", KILLS_BY_DEFAULT)
    assert _result(_run(sandbox, native, 'mkdir("", 0o755)', policy)) == "ENOENT"
    assert _decisions(sandbox) == []
