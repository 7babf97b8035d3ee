"""Red-team tests: content a policy refuses under its name, reached under another.

A custom policy (layered on strict) refuses one action on some names: only
file_read of files in a directory called "private", only file_write of a
"frozen" directory's files, only file_chmod (and file_delete) of one literal
file.  The attacking agent gives the content another name, or reaches it
another way, and the test checks the real outcome: the file's content and
mode unchanged, the refused content never printed.  Every attack runs on the
broker's native path and on the Python path alone (AGENTSUP_FASTPATH=0),
which must agree.

- renaming (or exchanging) the *directory* above a file a rule names by a
  directory segment: `**/private/*`, `{workspace}/**/private/*`, a regex
  `.*/frozen/[^/]+`;
- rename over (replacing) a file whose chmod and delete are refused;
- renameat2 with RENAME_WHITEOUT, RENAME_EXCHANGE between directories;
- linkat with AT_SYMLINK_FOLLOW through a symlink and through
  /proc/self/fd/N, linkat with AT_EMPTY_PATH on an O_PATH fd;
- O_PATH fds and read-only fds reopened for writing through /proc/self/fd/N;
- symlinks to a refused file, then open/truncate/chmod/utime/setxattr
  through them;
- ftruncate, fallocate, pwrite and a shared writable mmap on a read-only fd;
- open_by_handle_at and mount (refused for every policy).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, deny_rule, fastpath_env

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

# The attacking agent: `python3 escape.py STEPS_JSON`, each step
# [case, op, *args] with paths relative to the workspace (its cwd).  Prints
# {"case": ..., "result": "ok" | ERRNO, "data": ...} lines, then "survived".
AGENT = textwrap.dedent(
    r'''
    import ctypes, errno, json, mmap, os, sys

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    WS = os.path.dirname(os.path.abspath(__file__))
    os.chdir(WS)
    RENAME_EXCHANGE, RENAME_WHITEOUT = 2, 4
    AT_FDCWD, AT_SYMLINK_FOLLOW, AT_EMPTY_PATH = -100, 0x400, 0x1000
    SYS_RENAMEAT2, SYS_NAME_TO_HANDLE_AT, SYS_OPEN_BY_HANDLE_AT = 316, 303, 304
    FDS = {}


    def check(value):
        if value < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return value


    def renameat2(a, b, flags):
        return check(libc.syscall(SYS_RENAMEAT2, AT_FDCWD, a.encode(), AT_FDCWD, b.encode(),
                                  flags))


    def linkat(olddirfd, old, new, flags):
        return check(libc.linkat(olddirfd, old.encode(), AT_FDCWD, new.encode(), flags))


    def read(path):
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")


    def write(path, data):
        with open(path, "w") as f:
            f.write(data)


    def reopen(name, flags):
        """Open /proc/self/fd/N of a held fd again, with `flags`, and write through it."""
        fd = os.open(f"/proc/self/fd/{FDS[name]}", flags)
        try:
            os.write(fd, b"reopened\n")
        finally:
            os.close(fd)


    def by_handle(path):
        handle = ctypes.create_string_buffer(8 + 128)
        ctypes.c_uint.from_buffer(handle).value = 128
        mount_id = ctypes.c_int()
        check(libc.syscall(SYS_NAME_TO_HANDLE_AT, AT_FDCWD, path.encode(), handle,
                           ctypes.byref(mount_id), 0))
        root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        fd = check(libc.syscall(SYS_OPEN_BY_HANDLE_AT, root, handle, os.O_RDONLY))
        return os.read(fd, 4096).decode(errors="replace")


    def mmap_write(name):
        m = mmap.mmap(FDS[name], 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[:1] = b"X"
        m.close()


    def foreign_fds():
        """Symlinks to /proc/self/fd/N for fds N this process does not hold, opened."""
        reached = []
        for n in range(3, 32):
            try:
                os.fstat(n)
                continue
            except OSError:
                pass
            os.symlink(f"/proc/self/fd/{n}", f"fd-link-{n}")
            try:
                os.close(os.open(f"fd-link-{n}", os.O_RDONLY))
                reached.append(n)
            except OSError:
                pass
        return json.dumps(reached)


    def mount(source, target):
        return check(libc.mount(source.encode(), target.encode(), None, 4096, None))  # MS_BIND


    OPS = {
        "read": read,
        "write": write,
        "rename": os.rename,
        "exchange": lambda a, b: renameat2(a, b, RENAME_EXCHANGE),
        "whiteout": lambda a, b: renameat2(a, b, RENAME_WHITEOUT),
        "link": os.link,
        "link-follow": lambda a, b: linkat(AT_FDCWD, a, b, AT_SYMLINK_FOLLOW),
        "link-fd-follow": lambda n, b: linkat(AT_FDCWD, f"/proc/self/fd/{FDS[n]}", b,
                                              AT_SYMLINK_FOLLOW),
        "link-empty": lambda n, b: linkat(FDS[n], "", b, AT_EMPTY_PATH),
        "symlink": os.symlink,
        "unlink": os.unlink,
        "mkdir": os.mkdir,
        "chmod": lambda p, m: os.chmod(p, int(m, 8)),
        "utime": lambda p: os.utime(p, (1, 1)),
        "truncate": lambda p: os.truncate(p, 0),
        "setxattr": lambda p: os.setxattr(p, "user.agentsup-test", b"x"),
        "open-wr": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC)),
        "hold": lambda n, p, how: FDS.__setitem__(
            n, os.open(p, {"ro": os.O_RDONLY, "path": os.O_PATH}[how])),
        "reopen-rdwr": lambda n: reopen(n, os.O_RDWR),
        "reopen-trunc": lambda n: reopen(n, os.O_WRONLY | os.O_TRUNC),
        "ftruncate": lambda n: os.ftruncate(FDS[n], 0),
        "fallocate-punch": lambda n: check(libc.fallocate(FDS[n], 3, ctypes.c_long(0),
                                                          ctypes.c_long(4))),
        "pwrite": lambda n: os.pwrite(FDS[n], b"X", 0),
        "mmap-write": mmap_write,
        "by-handle": by_handle,
        "mount": mount,
        "symlink-fd": lambda n, link: os.symlink(f"/proc/self/fd/{FDS[n]}", link),
        "foreign-fds": foreign_fds,
    }

    for case, op, *args in json.loads(sys.argv[1]):
        try:
            value = OPS[op](*args)
            report = {"case": case, "result": "ok"}
            if isinstance(value, str):
                report["data"] = value
        except OSError as exc:
            report = {"case": case, "result": errno.errorcode.get(exc.errno, str(exc.errno))}
        print(json.dumps(report), flush=True)
    print("survived", flush=True)
    '''
)

SECRET = "the private content\n"


def _run(
    sandbox: Sandbox, native: bool, policy: str, steps: list[list[str]]
) -> subprocess.CompletedProcess[str]:
    script = sandbox.workspace / "escape.py"
    script.write_text(AGENT)
    return subprocess.run(
        sandbox.command("python3", str(script), json.dumps(steps), policy=policy),
        env={**sandbox.env, **fastpath_env(native)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )


def _outcome(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    reports = (json.loads(t) for t in result.stdout.splitlines() if t.startswith("{"))
    return {r["case"]: r["result"] for r in reports}


def _everything_under(root: Path) -> dict[str, tuple[int, str]]:
    """Every file beneath `root` (its escape.py aside): (mode, content)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != "escape.py":
            found[str(path.relative_to(root))] = (path.stat().st_mode, path.read_text())
    return found


# -- a directory renamed under a rule that names a directory segment -----------------


UNREAD_PRIVATE_ROOTLESS = deny_rule("unread-private", "file_read", 'target: "**/private/*"')
UNREAD_PRIVATE_ROOTED = deny_rule(
    "unread-private", "file_read", 'target: "{workspace}/**/private/*"'
)


@both_paths
@pytest.mark.parametrize("how", ["rename", "exchange"])
@pytest.mark.parametrize("rooted", [False, True], ids=["rootless", "rooted"])
def test_renaming_the_directory_never_makes_a_refused_read_readable(
    sandbox: Sandbox, native: bool, how: str, rooted: bool
) -> None:
    """Only file_read of `**/private/*` (a glob with no literal root) or of
    `{workspace}/**/private/*` (literal root: the workspace) is refused.  The
    agent reads a/private/data (refused), then renames the directory
    a/private to a/public (or exchanges it with an empty a/public) and reads
    a/public/data.

    Neither directory's own name matches `.../private/*`, and the rule's
    literal root (none, or the whole workspace) is not moved: only the
    names of what the directory holds tell the two apart.  The broker lists
    the tree and the policy compares each entry under both names
    (`moved_escape`): a/private/data is readable only under its old name, so
    the move is refused as that read, by the rule that names it."""
    ws = sandbox.workspace
    (ws / "a" / "private").mkdir(parents=True)
    (ws / "a" / "private" / "data").write_text(SECRET)
    if how == "exchange":
        (ws / "a" / "public").mkdir()
    policy = sandbox.policy(
        "unread-private", UNREAD_PRIVATE_ROOTED if rooted else UNREAD_PRIVATE_ROOTLESS
    )
    steps = [
        ["direct read", "read", "a/private/data"],
        ["move directory", how, "a/private", "a/public"],
        ["read moved", "read", "a/public/data"],
    ]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome["direct read"] == "EACCES", outcome
    assert "private content" not in result.stdout, outcome
    assert outcome["move directory"] == "EACCES", outcome
    assert (ws / "a" / "private" / "data").read_text() == SECRET
    moved = [
        r
        for r in sandbox.audit_records()
        if r.get("decision") == "deny"
        and str(r.get("target", "")).endswith("/a/private/data")
        and r.get("syscall") in ("rename", "renameat2")
    ]
    assert moved and moved[0]["rule"] == "unread-private", moved


FROZEN_REGEX = deny_rule("frozen-files", "file_write", 'pattern: "^.*/frozen/[^/]+$"')


@both_paths
def test_renaming_the_directory_never_makes_a_refused_write_writable(
    sandbox: Sandbox, native: bool
) -> None:
    """Only file_write of files directly in a directory called "frozen" is
    refused (a regex, `^.*/frozen/[^/]+$`).  The agent renames frozen to
    thawed (judged at `frozen` and `thawed`, which the regex does not
    match), overwrites thawed/f, and renames it back: frozen/f would have new
    content that was never written under a name the rule refuses.  The
    move is refused as a write of frozen/f, which thawed/f would allow."""
    ws = sandbox.workspace
    (ws / "frozen").mkdir()
    (ws / "frozen" / "f").write_text("frozen\n")
    policy = sandbox.policy("frozen", FROZEN_REGEX)
    steps = [
        ["direct write", "write", "frozen/f", "changed\n"],
        ["move directory", "rename", "frozen", "thawed"],
        ["write moved", "write", "thawed/f", "changed\n"],
        ["move back", "rename", "thawed", "frozen"],
    ]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome["direct write"] == "EACCES", outcome
    assert (ws / "frozen" / "f").read_text() == "frozen\n", outcome
    assert outcome["move directory"] == "EACCES", outcome


VAULT_TOKENS = deny_rule("vault-tokens", "file_read", 'target: "{workspace}/vault/**/*.token"')


@both_paths
def test_a_directory_moved_out_of_a_rooted_rule_takes_nothing_with_it(
    sandbox: Sandbox, native: bool
) -> None:
    """Reads of `{workspace}/vault/**/*.token` are refused: a basename rule,
    but only beneath its root.  The agent moves vault/team (holding
    team/deploy.token) out to the workspace's top and reads it there: the
    move is refused, as the read of vault/team/deploy.token it would allow."""
    ws = sandbox.workspace
    (ws / "vault" / "team").mkdir(parents=True)
    (ws / "vault" / "team" / "deploy.token").write_text(SECRET)
    steps = [
        ["move directory", "rename", "vault/team", "team"],
        ["read moved", "read", "team/deploy.token"],
    ]
    result = _run(sandbox, native, sandbox.policy("vault", VAULT_TOKENS), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome["move directory"] == "EACCES", outcome
    assert "private content" not in result.stdout, outcome
    assert (ws / "vault" / "team" / "deploy.token").read_text() == SECRET
    assert ("file_read", "vault-tokens") in sandbox.denials()


@both_paths
def test_a_tree_never_arrives_under_names_whose_writes_are_refused(
    sandbox: Sandbox, native: bool
) -> None:
    """Writes of files directly in a directory called "frozen" are refused.
    The agent fills staging/ (allowed) and renames it to frozen: the
    directory's own name is no file a rule names, but staging/f would
    become frozen/f, written where writes are refused.  The move is refused
    as that write; nothing named frozen appears."""
    ws = sandbox.workspace
    steps = [
        ["make staging", "mkdir", "staging"],
        ["fill staging", "write", "staging/f", "planted\n"],
        ["move in", "rename", "staging", "frozen"],
    ]
    result = _run(sandbox, native, sandbox.policy("frozen", FROZEN_REGEX), steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome == {"make staging": "ok", "fill staging": "ok", "move in": "EACCES"}
    assert not (ws / "frozen").exists()
    assert ("file_write", "frozen-files") in sandbox.denials()


@both_paths
def test_a_renamed_file_keeps_every_refusal_of_its_name(sandbox: Sandbox, native: bool) -> None:
    """Only file_chmod of any stay.txt (`**/stay.txt`: no literal root,
    whose move `refused_beneath` would refuse) is refused: not its move,
    read or write.  A rename to moved.txt would let the mode change go ahead
    under the new name, so the rename is refused as that chmod; stay.txt
    keeps its name and its mode."""
    ws = sandbox.workspace
    (ws / "stay.txt").write_text("stay\n")
    (ws / "stay.txt").chmod(0o644)
    steps = [
        ["rename", "rename", "stay.txt", "moved.txt"],
        ["chmod moved", "chmod", "moved.txt", "777"],
    ]
    policy = sandbox.policy(
        "stay", deny_rule("refused-chmod", "file_chmod", 'target: "**/stay.txt"')
    )
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome == {"rename": "EACCES", "chmod moved": "ENOENT"}
    assert stat.S_IMODE((ws / "stay.txt").stat().st_mode) == 0o644
    assert ("file_chmod", "refused-chmod") in sandbox.denials()


@both_paths
def test_a_directory_holding_secrets_moves_when_they_stay_refused(
    sandbox: Sandbox, native: bool
) -> None:
    """The control, under strict alone: a project directory holding a .env,
    a key and a __pycache__ is renamed within the workspace (as tools do).
    Every rule names each entry alike under both names (strict's secrets by
    their base names), so the move goes ahead."""
    ws = sandbox.workspace
    (ws / "proj" / "__pycache__").mkdir(parents=True)
    (ws / "proj" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"pyc")
    (ws / "proj" / ".env").write_text(SECRET)
    (ws / "proj" / "deploy.key").write_text(SECRET)
    (ws / "proj" / "src").mkdir()
    (ws / "proj" / "src" / "main.py").write_text("print()\n")
    steps = [
        ["move project", "rename", "proj", "renamed"],
        ["read source", "read", "renamed/src/main.py"],
        ["move back", "rename", "renamed", "proj"],
    ]
    result = _run(sandbox, native, "strict", steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome == {
        "move project": "ok",
        "read source": "ok",
        "move back": "ok",
    }
    assert (ws / "proj" / ".env").read_text() == SECRET


@both_paths
def test_a_tree_the_agent_cannot_list_is_not_moved(sandbox: Sandbox, native: bool) -> None:
    """a/private holds a directory the agent may not read (mode 0, another
    owner's).  Its entries cannot be judged, so the move fails closed (EIO)
    and says why in the audit log."""
    ws = sandbox.workspace
    (ws / "a" / "private" / "locked").mkdir(parents=True)
    (ws / "a" / "private" / "locked" / "data").write_text(SECRET)
    os.chown(ws / "a" / "private" / "locked", 12345, 12345)
    (ws / "a" / "private" / "locked").chmod(0)
    policy = sandbox.policy("unread-private", UNREAD_PRIVATE_ROOTLESS)
    steps = [["move directory", "rename", "a/private", "a/public"]]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _outcome(result) == {"move directory": "EIO"}
    assert (ws / "a" / "private" / "locked").is_dir()
    failures = [r for r in sandbox.audit_records() if "could not be listed" in json.dumps(r)]
    assert failures, sandbox.audit_records()[-3:]


@both_paths
def test_a_rooted_directory_rule_keeps_its_directory_in_place(
    sandbox: Sandbox, native: bool
) -> None:
    """The control: file_write of `{workspace}/frozen/**` refused.  Renaming
    `frozen` (the rule's literal root) is refused by `refused_beneath`, and so
    is renaming the workspace's parent path components the agent can reach;
    frozen/f keeps its content."""
    ws = sandbox.workspace
    (ws / "frozen" / "sub").mkdir(parents=True)
    (ws / "frozen" / "sub" / "f").write_text("frozen\n")
    policy = sandbox.policy(
        "frozen", deny_rule("frozen-tree", "file_write", 'target: "{workspace}/frozen/**"')
    )
    steps = [
        ["move root", "rename", "frozen", "thawed"],
        ["exchange root", "exchange", "frozen", "escape.py"],
        ["write", "write", "frozen/sub/f", "changed\n"],
    ]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome == {
        "move root": "EACCES",
        "exchange root": "EACCES",
        "write": "EACCES",
    }
    assert (ws / "frozen" / "sub" / "f").read_text() == "frozen\n"


@both_paths
def test_renaming_dot_or_dotdot_is_the_kernels_ebusy_never_a_rule(
    sandbox: Sandbox, native: bool
) -> None:
    """rename("..", x) from the workspace names no directory a rule should
    judge: the kernel answers EBUSY for ".", ".." and "/" before anything.
    Judged by its lexical path (the workspace's parent, which holds the
    home's secrets under strict), it once killed the agent."""
    steps = [
        ["dotdot", "rename", "..", "x"],
        ["dot", "rename", ".", "x"],
        ["onto dotdot", "rename", "escape.py", ".."],
        ["root", "rename", "/", "x"],
    ]
    result = _run(sandbox, native, "strict", steps)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _outcome(result) == {
        "dotdot": "EBUSY",
        "dot": "EBUSY",
        "onto dotdot": "EBUSY",
        "root": "EBUSY",
    }
    assert not sandbox.denials()


# -- a file replaced by a rename over it ---------------------------------------------------


KEEP = """
name: keep
extends: [strict]
rules:
  - id: keep-file
    actions: [file_chmod, file_delete, file_move]
    target: "{workspace}/keep.sh"
    decision: deny
    priority: 1
    on_violation: block
"""


@both_paths
def test_a_rename_over_a_file_never_deletes_it_nor_changes_its_mode(
    sandbox: Sandbox, native: bool
) -> None:
    """workspace/keep.sh may be read and written, never chmod-ed, deleted or
    moved.  The agent chmods it 755 and removes it (refused), then makes
    `evil` (0755) and renames it over keep.sh.

    A rename that replaces its destination unlinks the file there (the
    kernel asks the same rights as unlink), and the name keep.sh then has
    another mode.  Found by red-teaming (both paths): the rename was judged
    as file_move + file_read at `evil` and file_write at `keep.sh` only.  Now
    a destination that holds a file is also a file_delete and a file_chmod.
    keep.sh must stay the same file, 0600."""
    ws = sandbox.workspace
    keep = ws / "keep.sh"
    keep.write_text("echo kept\n")
    keep.chmod(0o600)
    inode = keep.stat().st_ino
    policy = sandbox.policy("keep", KEEP)
    steps = [
        ["chmod", "chmod", "keep.sh", "755"],
        ["unlink", "unlink", "keep.sh"],
        ["make", "write", "evil", "echo replaced\n"],
        ["chmod evil", "chmod", "evil", "755"],
        ["rename over", "rename", "evil", "keep.sh"],
    ]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome["chmod"] == "EACCES", outcome
    assert outcome["unlink"] == "EACCES", outcome
    assert outcome["chmod evil"] == "ok", outcome
    assert keep.stat().st_ino == inode, outcome
    assert stat.S_IMODE(keep.stat().st_mode) == 0o600, outcome
    assert keep.read_text() == "echo kept\n", outcome
    assert outcome["rename over"] == "EACCES", outcome


@both_paths
def test_renameat2_whiteout_and_exchange_of_directories_are_judged(
    sandbox: Sandbox, native: bool
) -> None:
    """renameat2(RENAME_WHITEOUT) of a file refused reading (needs CAP_MKNOD:
    the broker, with the agent's rights, gets EPERM; the native path hands
    it to the supervisor); RENAME_EXCHANGE of the directory holding it with
    another (`{workspace}/private/**` has a literal root: `refused_beneath`),
    and of an unrelated directory pair (allowed, the control)."""
    ws = sandbox.workspace
    (ws / "private").mkdir()
    (ws / "private" / "data").write_text(SECRET)
    (ws / "other").mkdir()
    (ws / "x").mkdir()
    (ws / "y").mkdir()
    (ws / "x" / "in-x").write_text("x\n")
    policy = sandbox.policy(
        "unread", deny_rule("unread-private", "file_read", 'target: "{workspace}/private/**"')
    )
    steps = [
        ["whiteout", "whiteout", "private/data", "data"],
        ["exchange", "exchange", "private", "other"],
        ["read", "read", "other/data"],
        ["control", "exchange", "x", "y"],
        ["control read", "read", "y/in-x"],
    ]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome["whiteout"] in ("EACCES", "EPERM", "EINVAL"), outcome
    assert outcome["exchange"] == "EACCES", outcome
    assert outcome["read"] == "ENOENT", outcome
    assert outcome["control"] == "ok", outcome
    assert outcome["control read"] == "ok", outcome
    assert "private content" not in result.stdout
    assert (ws / "private" / "data").read_text() == SECRET
    assert not (ws / "data").exists()


# -- hard links made through symlinks, magic links and O_PATH fds ---------------------------


STAY = deny_rule("refused-chmod", "file_chmod", 'target: "{workspace}/stay.txt"')


@both_paths
def test_a_hard_link_made_another_way_never_escapes_a_chmod_refusal(
    sandbox: Sandbox, native: bool
) -> None:
    """stay.txt may be read and written, never chmod-ed.  The agent links it
    through a symlink with AT_SYMLINK_FOLLOW, through /proc/self/fd/N of a
    read-only fd and of an O_PATH fd (AT_SYMLINK_FOLLOW), and with
    linkat(fd, "", AT_EMPTY_PATH) on an O_PATH fd; then chmods every name it
    got.  Each link is judged at the real path of the object (file_chmod at
    stay.txt): refused, and stay.txt keeps its mode."""
    ws = sandbox.workspace
    stay = ws / "stay.txt"
    stay.write_text("stay\n")
    stay.chmod(0o600)
    (ws / "via").symlink_to("stay.txt")
    policy = sandbox.policy("stay", STAY)
    steps = [
        ["link through symlink", "link-follow", "via", "a1"],
        ["hold ro", "hold", "ro", "stay.txt", "ro"],
        ["hold path", "hold", "opath", "stay.txt", "path"],
        ["link /proc/self/fd ro", "link-fd-follow", "ro", "a2"],
        ["link /proc/self/fd O_PATH", "link-fd-follow", "opath", "a3"],
        ["link AT_EMPTY_PATH", "link-empty", "opath", "a4"],
    ]
    for name in ("a1", "a2", "a3", "a4"):
        steps.append([f"chmod {name}", "chmod", name, "777"])
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert stat.S_IMODE(stay.stat().st_mode) == 0o600, outcome
    assert stay.stat().st_nlink == 1, outcome
    for case in ("link through symlink", "link /proc/self/fd ro", "link /proc/self/fd O_PATH"):
        assert outcome[case] == "EACCES", outcome
    # No capability to link an fd by itself, or refused: never linked.
    assert outcome["link AT_EMPTY_PATH"] in ("EACCES", "ENOENT", "EPERM"), outcome


FROZEN_TREE = deny_rule("frozen-tree", "file_write", 'target: "{workspace}/frozen/**"')


@both_paths
def test_a_file_moved_out_never_writes_its_other_name_in_a_frozen_tree(
    sandbox: Sandbox, native: bool
) -> None:
    """Only file_write of `{workspace}/frozen/**` is refused; frozen/f and
    frozen/g are two names of one file (as pnpm's store or a `cp -l` make).
    Moving frozen/f out is allowed (a move of a file is no write; and it
    leaves frozen/ like a delete would).  The agent writes the moved name:
    frozen/g's content changes, though no name under frozen/ was ever
    written.  Found by red-teaming (both paths): a multiply-linked file is
    matched by inode only against the read-refused (protected) inodes.  Now
    a move of a file with other names is judged as a link is: a file_write
    and a file_chmod of the old name too."""
    ws = sandbox.workspace
    (ws / "frozen").mkdir()
    (ws / "frozen" / "f").write_text("frozen\n")
    os.link(ws / "frozen" / "f", ws / "frozen" / "g")
    policy = sandbox.policy("frozen", FROZEN_TREE)
    steps = [
        ["direct write", "write", "frozen/g", "changed\n"],
        ["move out", "rename", "frozen/f", "moved"],
        ["write moved", "write", "moved", "changed\n"],
    ]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert outcome["direct write"] == "EACCES", outcome
    assert (ws / "frozen" / "g").read_text() == "frozen\n", outcome


# -- fds reopened through /proc/self/fd, and symlinks --------------------------------------


@both_paths
def test_a_held_fd_is_never_reopened_for_writing(sandbox: Sandbox, native: bool) -> None:
    """frozen/f (writes refused) opened read-only and O_PATH, then
    /proc/self/fd/N opened O_RDWR and O_WRONLY|O_TRUNC: the broker follows
    the magic link to the real path, judged file_write: refused.  And on the
    read-only fd: ftruncate, fallocate(PUNCH_HOLE), pwrite and a shared
    writable mmap fail in the kernel (EBADF/EINVAL/EACCES).  Nothing changes."""
    ws = sandbox.workspace
    (ws / "frozen").mkdir()
    frozen = ws / "frozen" / "f"
    frozen.write_text("frozen content\n")
    policy = sandbox.policy("frozen", FROZEN_TREE)
    steps = [
        ["hold ro", "hold", "ro", "frozen/f", "ro"],
        ["hold path", "hold", "opath", "frozen/f", "path"],
        ["reopen ro rdwr", "reopen-rdwr", "ro"],
        ["reopen ro trunc", "reopen-trunc", "ro"],
        ["reopen path rdwr", "reopen-rdwr", "opath"],
        ["reopen path trunc", "reopen-trunc", "opath"],
        ["ftruncate", "ftruncate", "ro"],
        ["punch hole", "fallocate-punch", "ro"],
        ["pwrite", "pwrite", "ro"],
        ["mmap", "mmap-write", "ro"],
    ]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    assert frozen.read_text() == "frozen content\n", outcome
    assert outcome["hold ro"] == outcome["hold path"] == "ok", outcome
    for case in ("reopen ro rdwr", "reopen ro trunc", "reopen path rdwr", "reopen path trunc"):
        assert outcome[case] == "EACCES", outcome
    for case in ("ftruncate", "punch hole", "pwrite", "mmap"):
        assert outcome[case] in ("EBADF", "EINVAL", "EACCES"), outcome
    assert ("file_write", "frozen-tree") in sandbox.denials()


FROZEN_AND_STAY = """
name: both
extends: [strict]
rules:
  - id: frozen-tree
    actions: [file_write]
    target: "{workspace}/frozen/**"
    decision: deny
    priority: 1
    on_violation: block
  - id: refused-chmod
    actions: [file_chmod]
    target: "{workspace}/stay.txt"
    decision: deny
    priority: 1
    on_violation: block
"""


@both_paths
def test_a_symlink_to_a_refused_file_is_judged_as_the_file(sandbox: Sandbox, native: bool) -> None:
    """The agent makes symlinks (relative, absolute, and through
    /proc/self/cwd) to frozen/f (writes refused) and to stay.txt (chmod
    refused), then opens for writing, truncates, touches, chmods and sets an
    extended attribute through them: each judged at the real path, refused;
    nothing changes."""
    ws = sandbox.workspace
    (ws / "frozen").mkdir()
    frozen = ws / "frozen" / "f"
    frozen.write_text("frozen content\n")
    stay = ws / "stay.txt"
    stay.write_text("stay\n")
    stay.chmod(0o600)
    policy = sandbox.policy("both", FROZEN_AND_STAY)
    before = {
        name: (p.stat().st_mode, p.stat().st_mtime_ns)
        for name, p in (("frozen", frozen), ("stay", stay))
    }
    steps = [
        ["symlink rel", "symlink", "frozen/f", "s1"],
        ["symlink abs", "symlink", str(frozen), "s2"],
        ["symlink dotdot", "symlink", "frozen/../frozen/./f", "s3"],
        ["symlink stay", "symlink", "stay.txt", "s4"],
    ]
    for name in ("s1", "s2", "s3"):
        steps += [
            [f"open-wr {name}", "open-wr", name],
            [f"truncate {name}", "truncate", name],
            [f"utime {name}", "utime", name],
        ]
    steps += [
        ["chmod s4", "chmod", "s4", "777"],
        ["setxattr s4", "setxattr", "s4"],
    ]
    result = _run(sandbox, native, policy, steps)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = _outcome(result)
    after = {
        name: (p.stat().st_mode, p.stat().st_mtime_ns)
        for name, p in (("frozen", frozen), ("stay", stay))
    }
    assert after == before, outcome
    assert frozen.read_text() == "frozen content\n"
    assert os.listxattr(stay) == [], outcome
    for case, result_ in outcome.items():
        if case.startswith("symlink"):
            assert result_ == "ok", outcome
        else:
            assert result_ == "EACCES", outcome


# -- calls refused for every policy -----------------------------------------------------------


@both_paths
def test_open_by_handle_and_mount_never_reach_a_refused_file(
    sandbox: Sandbox, native: bool
) -> None:
    """name_to_handle_at of private/data (allowed: no content), then
    open_by_handle_at, which opens by inode with no path to judge: refused
    for every policy (`ALWAYS_REFUSED`, the agent killed).  A bind mount of
    private/ elsewhere: refused as well.  The content is never printed."""
    ws = sandbox.workspace
    (ws / "private").mkdir()
    (ws / "private" / "data").write_text(SECRET)
    (ws / "elsewhere").mkdir()
    policy = sandbox.policy(
        "unread", deny_rule("unread-private", "file_read", 'target: "{workspace}/private/**"')
    )
    for steps in (
        [["mount", "mount", "private", "elsewhere"], ["read", "read", "elsewhere/data"]],
        [["by handle", "by-handle", "private/data"]],
    ):
        result = _run(sandbox, native, policy, steps)
        assert "private content" not in result.stdout, result.stdout
        outcome = _outcome(result)
        assert result.returncode == 137 or all(
            r in ("EPERM", "EACCES", "ENOENT", "ENOSYS") for r in outcome.values()
        ), (result.stdout, result.stderr[-2000:])
    rules = [rule for _, rule in sandbox.denials()]
    assert "agentsup-always-refused" in rules, rules


# -- /proc/self inside a symlink ---------------------------------------------------------------


@both_paths
def test_proc_self_inside_a_symlink_means_the_agent_never_the_broker(
    sandbox: Sandbox, native: bool
) -> None:
    """Symlinks the agent makes to /proc/self/cwd, to /proc/self/fd/N of a
    file it holds, to /proc/self/fd/N for fds it does not hold, to
    /proc/thread-self/status, to /proc/mounts (itself a symlink to
    self/mounts) and to /dev/stdout (a pipe); opened.

    Without agentsup (the reference) each resolves in the agent: its cwd,
    its own fd, ENOENT for an fd it does not hold, its own status, its own
    stdout; and /proc/mounts and /proc/net/dev named directly (each a
    symlink into /proc/self).  The broker resolves for the agent, where /proc/self is the
    broker's: so it refuses magic links on the way (RESOLVE_NO_MAGICLINKS),
    and a name that meets one, or lands in the broker's own /proc entry, is
    walked as the agent's (`agentpath.open_as_agent`)."""
    ws = sandbox.workspace
    (ws / "own.txt").write_text("own\n")
    steps = [
        ["cwd link", "symlink", "/proc/self/cwd", "here"],
        ["through cwd link", "read", "here/own.txt"],
        ["hold", "hold", "own", "other.txt", "ro"],
        ["fd link", "symlink-fd", "own", "mine"],
        ["through fd link", "read", "mine"],
        ["foreign fds", "foreign-fds"],
        ["status link", "symlink", "/proc/thread-self/status", "status"],
        ["through status link", "read", "status"],
        ["mounts link", "symlink", "/proc/mounts", "mounts"],
        ["through mounts link", "read", "mounts"],
        ["stdout link", "symlink", "/dev/stdout", "out"],
        ["through stdout link", "write", "out", "written through the link\n"],
        ["mounts", "read", "/proc/mounts"],
        ["net dev", "read", "/proc/net/dev"],
    ]
    (ws / "other.txt").write_text("other\n")
    result = _run(sandbox, native, "strict", steps)
    assert result.returncode == 0, result.stderr[-2000:]
    reports = {
        r["case"]: r for r in (json.loads(t) for t in result.stdout.splitlines() if t[:1] == "{")
    }
    assert reports["through cwd link"].get("data") == "own\n", reports
    assert reports["through fd link"].get("data") == "other\n", reports
    assert reports["foreign fds"].get("data") == "[]", reports
    assert "Name:\tpython3\n" in reports["through status link"].get("data", ""), reports
    assert " / " in reports["through mounts link"].get("data", ""), reports
    assert reports["through stdout link"]["result"] == "ok", reports
    # /proc/mounts and /proc/net are symlinks into /proc/self: once refused
    # as the broker's own entry (EACCES), they are the agent's.
    assert " / " in reports["mounts"].get("data", ""), reports
    assert "Receive" in reports["net dev"].get("data", ""), reports
    assert "written through the link\n" in result.stdout
