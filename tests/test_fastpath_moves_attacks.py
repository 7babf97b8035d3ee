"""Attacks on rename, link and mkdir, each run with the native path on and off.

The broker's native path answers rename/renameat/renameat2 (no flags or
RENAME_NOREPLACE), link/linkat (no flags) and mkdir/mkdirat itself when the
policy plainly allows them; the Python path (`AGENTSUP_FASTPATH=0`) is the
reference: file_move at the old name and file_write at the new for a rename,
file_read at the old name (judged as the protected file it is another name
of, if the protected-inode walk found one) and file_write at the new for a
link, file_write for a mkdir.  An agent tries to get a name into or out of a
refused subtree, or onto a secret's name, by every spelling of a path (a
symlinked parent, "..", "//", a dirfd, /proc/self/cwd, /proc/self/fd) and by
racing a parent directory against a symlink; each must end the same way on
both paths.

Holes these tests found, closed since (the tests failed before the fixes):

- a link of a file with one name was judged by its real path on the native
  path, but the Python path judged it as the protected file the walk found:
  where the home directory is reached through a symlink (HOME=/home/u with
  /home -> var/home, as on Fedora's atomic desktops) and the agent works in
  it, the native path linked ~/.aws/credentials, the Python path killed;
- with such a home, strict's rules for {home}/.ssh, {home}/.aws, ... did not
  match the real paths the agent's opens are judged by, on either path
  (`{home}` now stands for its real path too);
- a rename of a directory above a refused subtree was judged as a move of
  that directory only, on either path: the subtree's files left the rule
  (a move now gets the decision of a refusing rule rooted at or beneath it).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, fastpath_env

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

POLICY = """
name: moves
extends: [strict]
rules:
  - id: refused-subtree
    actions: [file_read, file_write, file_delete, file_move, file_chmod]
    target: "{workspace}/secret/**"
    decision: deny
    priority: 1
    on_violation: block
  - id: refused-file
    actions: [file_read, file_write, file_delete, file_move]
    target: "{workspace}/refused*"
    decision: deny
    priority: 1
    on_violation: block
"""

SECRET = "secret contents\n"


def _plant(ws: Path) -> None:
    (ws / "secret" / "sub").mkdir(parents=True)
    (ws / "secret" / "x.txt").write_text(SECRET)
    (ws / "refused.txt").write_text("refused\n")
    (ws / "d").mkdir()
    (ws / "e").mkdir()
    for name in ("a.txt", "b.txt", "d/f.txt"):
        (ws / name).write_text(name + "\n")
    (ws / "lnk-secret").symlink_to("secret")
    (ws / "link-to-refused").symlink_to("refused.txt")


def _untouched(ws: Path, decoy: str | None = None) -> None:
    """The refused subtree is as planted: nothing moved, linked or made in or out of it
    (what left the workspace's own directories, if anything, is the `decoy`)."""
    assert sorted(p.name for p in (ws / "secret").iterdir()) == ["sub", "x.txt"]
    assert list((ws / "secret" / "sub").iterdir()) == []
    assert (ws / "secret" / "x.txt").read_text() == SECRET
    assert os.stat(ws / "secret" / "x.txt").st_nlink == 1
    assert (ws / "refused.txt").read_text() == "refused\n"
    assert os.stat(ws / "refused.txt").st_nlink == 1
    left = [p for p in ws.iterdir() if p.name.startswith(("out", "copy"))]
    assert [p.name for p in left if decoy is None or p.read_text() != decoy] == []


SPELLINGS = textwrap.dedent(
    """
    import ctypes, errno, json, os, sys
    ws = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)
    AT_FDCWD, RENAME_NOREPLACE, RENAME_EXCHANGE, AT_SYMLINK_FOLLOW = -100, 1, 2, 0x400
    def call(name, *args):
        if getattr(libc, name)(*args) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    def renameat2(od, old, nd, new, flags):
        call("renameat2", od, os.fsencode(old), nd, os.fsencode(new), ctypes.c_uint(flags))
    def linkat(od, old, nd, new, flags):
        call("linkat", od, os.fsencode(old), nd, os.fsencode(new), flags)
    def mkdirat(d, name):
        call("mkdirat", d, os.fsencode(name), 0o755)
    W = lambda name: os.path.join(ws, name)
    os.chdir(ws)
    top = os.open(ws, os.O_PATH | os.O_DIRECTORY)
    proc_self = os.open("/proc/self", os.O_PATH | os.O_DIRECTORY)
    own_fds = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY)
    b_fd = os.open(W("b.txt"), os.O_RDONLY)
    cases = {
        "rename onto a refused name": lambda: os.rename(W("a.txt"), W("refused2")),
        "rename a refused file out": lambda: os.rename(W("refused.txt"), W("out1")),
        "rename out of the subtree": lambda: os.rename(W("secret/x.txt"), W("out2")),
        "rename the subtree itself": lambda: os.rename(W("secret"), W("out3")),
        "rename the subtree with a slash": lambda: os.rename(W("secret/"), W("out4/")),
        "rename a directory into it": lambda: os.rename(W("d"), W("secret/d")),
        "rename into it by a symlink": lambda: os.rename(W("a.txt"), W("lnk-secret/a.txt")),
        "rename out of it by a symlink": lambda: os.rename(W("lnk-secret/x.txt"), W("out5")),
        "rename out by dotdot": lambda: os.rename(W("d/../secret/x.txt"), W("out6")),
        "rename out by double slash": lambda: os.rename("/" + W("secret//x.txt"), W("out7")),
        "rename out relative": lambda: os.rename("secret/x.txt", "out8"),
        "rename out at a dirfd": lambda: renameat2(top, "secret/x.txt", top, "out9", 0),
        "rename out by proc self cwd": lambda: os.rename("/proc/self/cwd/secret/x.txt", W("out10")),
        "rename out at proc self": lambda: renameat2(
            proc_self, "cwd/secret/x.txt", AT_FDCWD, W("out11"), 0),
        "rename no-replace into it": lambda: renameat2(
            AT_FDCWD, W("a.txt"), AT_FDCWD, W("secret/a.txt"), RENAME_NOREPLACE),
        "rename exchange with a refused file": lambda: renameat2(
            AT_FDCWD, W("b.txt"), AT_FDCWD, W("refused.txt"), RENAME_EXCHANGE),
        "rename exchange with the subtree": lambda: renameat2(
            AT_FDCWD, W("e"), AT_FDCWD, W("secret"), RENAME_EXCHANGE),
        "link a refused file": lambda: os.link(W("refused.txt"), W("copy1")),
        "link out of the subtree": lambda: os.link(W("secret/x.txt"), W("copy2")),
        "link out of it by a symlink": lambda: os.link(W("lnk-secret/x.txt"), W("copy3")),
        "link out by dotdot": lambda: os.link(W("d/../secret/x.txt"), W("copy4")),
        "link out relative": lambda: os.link("secret/x.txt", "copy5"),
        "link out at a dirfd": lambda: linkat(top, "secret/x.txt", top, "copy6", 0),
        "link out at proc self": lambda: linkat(
            proc_self, "cwd/secret/x.txt", AT_FDCWD, W("copy7"), 0),
        "link out by proc self cwd": lambda: os.link("/proc/self/cwd/secret/x.txt", W("copy8")),
        "link following a symlink to a refused file": lambda: linkat(
            AT_FDCWD, W("link-to-refused"), AT_FDCWD, W("copy9"), AT_SYMLINK_FOLLOW),
        "link into the subtree": lambda: os.link(W("a.txt"), W("secret/a.txt")),
        "link into it by a symlink": lambda: os.link(W("a.txt"), W("lnk-secret/a.txt")),
        "link an fd into it": lambda: linkat(
            own_fds, str(b_fd), AT_FDCWD, W("secret/b.txt"), AT_SYMLINK_FOLLOW),
        "mkdir in the subtree": lambda: os.mkdir(W("secret/new")),
        "mkdir in it by a symlink": lambda: os.mkdir(W("lnk-secret/new")),
        "mkdir in it by dotdot": lambda: os.mkdir(W("d/../secret/new")),
        "mkdir in it at a dirfd": lambda: mkdirat(top, "secret/new"),
        "mkdir in it relative": lambda: os.mkdir("secret/sub/new"),
        "mkdir a refused name": lambda: os.mkdir(W("refused-dir")),
    }
    # From inside the subtree (chdir is not judged): its names are still its own.
    inside = {
        "rename out from inside": lambda: os.rename("x.txt", "../out12"),
        "link out from inside": lambda: os.link("x.txt", "../copy10"),
        "mkdir from inside": lambda: os.mkdir("new"),
    }
    for table, where in ((cases, ws), (inside, W("secret"))):
        os.chdir(where)
        for case, act in table.items():
            try:
                act()
                outcome = "done"
            except OSError as exc:
                outcome = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            print(json.dumps({"case": case, "outcome": outcome}), flush=True)
    """
)


@both_paths
def test_no_spelling_of_a_path_moves_links_or_makes_a_name_across_a_refusal(
    sandbox: Sandbox, native: bool
) -> None:
    ws = sandbox.workspace
    _plant(ws)
    script = ws / "spellings.py"
    script.write_text(SPELLINGS)
    policy = sandbox.policy("moves", POLICY)
    result = sandbox.run("python3", str(script), str(ws), policy=policy, env=fastpath_env(native))
    assert result.returncode == 0, result.stderr
    outcomes = {r["case"]: r["outcome"] for r in map(json.loads, result.stdout.splitlines())}
    assert len(outcomes) == 38, result.stdout
    assert {case: o for case, o in outcomes.items() if o != "EACCES"} == {}
    _untouched(ws)
    refused = {
        (r.get("action_type"), r.get("rule"))
        for r in sandbox.audit_records()
        if r.get("decision") == "deny"
    }
    for expected in [
        ("file_move", "refused-subtree"),
        ("file_write", "refused-subtree"),
        ("file_read", "refused-subtree"),
        ("file_move", "refused-file"),
        ("file_write", "refused-file"),
        ("file_read", "refused-file"),
    ]:
        assert expected in refused, refused


SECRET_NAMES = textwrap.dedent(
    """
    import os, sys
    ws, home, case = sys.argv[1:]
    W = lambda name: os.path.join(ws, name)
    acts = {
        "rename onto .env": lambda: os.rename(W("a.txt"), W(".env")),
        "rename .env out": lambda: os.rename(W("planted.env/.env"), W("plain")),
        "link onto a .pem": lambda: os.link(W("a.txt"), home + "/server.pem"),
        "mkdir .env.local": lambda: os.mkdir(W(".env.local")),
        "link the ssh key": lambda: os.link(home + "/.ssh/id_rsa", W("key-copy")),
        "link a hard link to the ssh key": lambda: os.link(W("hard"), W("key-copy")),
        "rename into ~/.ssh": lambda: os.rename(W("a.txt"), home + "/.ssh/authorized_keys"),
        "link into ~/.ssh": lambda: os.link(W("a.txt"), home + "/.ssh/authorized_keys"),
        "mkdir in ~/.ssh": lambda: os.mkdir(home + "/.ssh/new"),
    }
    try:
        acts[case]()
    except OSError as exc:
        print("refused", exc.errno, flush=True)
    else:
        print("done", flush=True)
    """
)


@both_paths
@pytest.mark.parametrize(
    ("case", "rule"),
    [
        ("rename onto .env", "secret-dotenv"),
        ("rename .env out", "secret-dotenv"),
        ("link onto a .pem", "secret-pem"),
        ("mkdir .env.local", "secret-dotenv-variants"),
        ("link the ssh key", "secret-ssh"),
        ("link a hard link to the ssh key", "secret-ssh"),
        ("rename into ~/.ssh", "secret-ssh"),
        ("link into ~/.ssh", "secret-ssh"),
        ("mkdir in ~/.ssh", "secret-ssh"),
    ],
)
def test_a_move_link_or_mkdir_onto_or_from_a_secret_kills(
    sandbox: Sandbox, native: bool, case: str, rule: str
) -> None:
    ws = sandbox.workspace
    (ws / "a.txt").write_text("a\n")
    (ws / "planted.env").mkdir()
    (ws / "planted.env" / ".env").write_text("TOKEN=1\n")
    os.link(sandbox.key, ws / "hard")  # the user's own hard link: nlink 2
    script = ws / "secret_names.py"
    script.write_text(SECRET_NAMES)
    before = sorted(p.name for p in ws.iterdir())
    result = sandbox.run(
        "python3", str(script), str(ws), str(sandbox.home), case, env=fastpath_env(native)
    )
    assert result.returncode == 137, (result.stdout, result.stderr)
    assert f"rule '{rule}'" in result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in ws.iterdir()) == before
    assert sorted(p.name for p in sandbox.key.parent.iterdir()) == ["id_rsa"]
    assert os.stat(sandbox.key).st_nlink == 2


PARENT_RACE = textwrap.dedent(
    """
    import os, sys, threading, time
    ws = sys.argv[1]
    W = lambda name: os.path.join(ws, name)
    stop = time.monotonic() + 2.0
    def swap():  # d: a directory of our own, then a symlink to the refused subtree
        while time.monotonic() < stop:
            try:
                os.rename(W("d"), W("d.real"))
                os.symlink("secret", W("d"))
                os.unlink(W("d"))
                os.rename(W("d.real"), W("d"))
            except OSError:
                pass
    def attack(i):
        top = os.open(ws, os.O_PATH | os.O_DIRECTORY)
        acts = [
            lambda: os.rename(W("d/x.txt"), W(f"out{i}")),
            lambda: os.rename("d/x.txt", f"out-rel{i}", src_dir_fd=top, dst_dir_fd=top),
            lambda: os.link(W("d/x.txt"), W(f"copy{i}")),
            lambda: os.link(W("e/../d/x.txt"), W(f"copy-dotdot{i}")),
            lambda: os.rename(W(f"mine{i}"), W(f"d/planted{i}")),
            lambda: os.link(W("a.txt"), W(f"d/linked{i}")),
            lambda: os.mkdir(W(f"d/made{i}")),
        ]
        while time.monotonic() < stop:
            open(W(f"mine{i}"), "w").close()
            for act in acts:
                try:
                    act()
                except OSError:
                    pass
            for name in (f"out{i}", f"out-rel{i}", f"copy{i}", f"copy-dotdot{i}"):
                try:
                    os.rename(W(name), W("d/x.txt"))  # only ever the decoy: put it back
                except OSError:
                    pass
            for name in (f"d/planted{i}", f"d/linked{i}"):
                try:
                    os.unlink(W(name))
                except OSError:
                    pass
            try:
                os.rmdir(W(f"d/made{i}"))
            except OSError:
                pass
    threads = [threading.Thread(target=swap)]
    threads += [threading.Thread(target=attack, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("finished", flush=True)
    """
)


@both_paths
def test_a_parent_swapped_for_a_symlink_never_moves_a_name_across_a_refusal(
    sandbox: Sandbox, native: bool
) -> None:
    """One thread swaps d between a directory of the agent's and a symlink to
    the refused subtree; others rename, link and mkdir through d meanwhile.
    Whatever the timing, what lands is in the real d, and only the decoy
    (d/x.txt) ever leaves it."""
    ws = sandbox.workspace
    _plant(ws)
    (ws / "d" / "x.txt").write_text("decoy\n")
    script = ws / "parent_race.py"
    script.write_text(PARENT_RACE)
    policy = sandbox.policy("moves", POLICY)
    result = sandbox.run("python3", str(script), str(ws), policy=policy, env=fastpath_env(native))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "finished\n"
    _untouched(ws, decoy="decoy\n")


# -- holes ---------------------------------------------------------------------------

SYMLINKED_HOME = textwrap.dedent(
    """
    import errno, os, sys
    home, case = sys.argv[1:]
    try:
        if case == "link":
            os.link(home + "/.aws/credentials", home + "/copied")
            print("linked", flush=True)
        else:
            print(open(home + "/.ssh/config").read().strip(), flush=True)
    except OSError as exc:
        print(errno.errorcode.get(exc.errno or 0), flush=True)
    """
)


def _symlinked_home(sandbox: Sandbox) -> tuple[Path, dict[str, str]]:
    """A home reached through a symlink (HOME=<root>/home, <root>/home -> real-home),
    the agent's workspace; its real path, and the environment naming it by the link."""
    real = sandbox.root / "real-home"
    (real / ".ssh").mkdir(parents=True)
    (real / ".aws").mkdir()
    (real / ".ssh" / "config").write_text("Host secret-host\n")
    (real / ".aws" / "credentials").write_text("aws_secret_access_key=SECRET\n")
    link = sandbox.root / "linked-home"
    link.symlink_to(real)
    (real / "home_agent.py").write_text(SYMLINKED_HOME)
    sandbox.workspace = link  # --workspace ~, as the user types it
    return real, {"HOME": str(link)}


@both_paths
def test_a_link_of_a_secret_under_a_symlinked_home_is_judged_as_that_secret(
    sandbox: Sandbox, native: bool
) -> None:
    """Found by red-teaming the native link (closed): the walk maps the
    credentials' inode to <root>/linked-home/.aws/credentials, while the
    native path judged a file with one name by its real path
    (<root>/real-home/.aws/credentials, the workspace) and linked it.
    `{home}` now stands for its real path too, so the real path is a secret
    on both paths."""
    real, env = _symlinked_home(sandbox)
    result = sandbox.run(
        "python3",
        str(real / "home_agent.py"),
        str(real),
        "link",
        env={**env, **fastpath_env(native)},
    )
    assert not (real / "copied").exists(), "the credentials got a second name"
    assert result.returncode == 137, (result.stdout, result.stderr)
    assert "rule 'secret-aws'" in result.stderr


@both_paths
def test_secrets_under_a_symlinked_home_are_refused_to_an_agent_working_there(
    sandbox: Sandbox, native: bool
) -> None:
    """Found by red-teaming (closed, both paths): `{workspace}` was expanded to
    its real path and `{home}` was not, so with HOME through a symlink
    strict's {home}/.ssh/** never matched the real paths opens are judged
    by, and the workspace rule let ~/.ssh/config through to an agent
    started with --workspace ~."""
    real, env = _symlinked_home(sandbox)
    result = sandbox.run(
        "python3",
        str(real / "home_agent.py"),
        str(real),
        "read",
        env={**env, **fastpath_env(native)},
    )
    assert "secret-host" not in result.stdout, "~/.ssh/config was read"


ANCESTOR_POLICY = """
name: nested
extends: [strict]
rules:
  - id: nested-secret
    actions: [file_read, file_write, file_delete, file_move, file_chmod]
    target: "{workspace}/project/secret/**"
    decision: deny
    priority: 1
    on_violation: block
"""

ANCESTOR = textwrap.dedent(
    """
    import errno, os, sys
    ws = sys.argv[1]
    def attempt(act):
        try:
            return act()
        except OSError as exc:
            return errno.errorcode.get(exc.errno or 0)
    print(attempt(lambda: open(ws + "/project/secret/x.txt").read().strip()), flush=True)
    print(attempt(lambda: os.rename(ws + "/project", ws + "/elsewhere")), flush=True)
    print(attempt(lambda: open(ws + "/elsewhere/secret/x.txt").read().strip()), flush=True)
    """
)


@both_paths
def test_renaming_a_directory_above_a_refused_subtree_does_not_free_it(
    sandbox: Sandbox, native: bool
) -> None:
    """Found by red-teaming (closed, both paths): the move was judged at the
    directory renamed (project: allowed), so project/secret/x.txt became
    elsewhere/secret/x.txt, which the rule does not name.  A move now gets
    the decision of a refusing rule whose root is at or beneath it."""
    ws = sandbox.workspace
    (ws / "project" / "secret").mkdir(parents=True)
    (ws / "project" / "secret" / "x.txt").write_text("nested secret\n")
    script = ws / "ancestor.py"
    script.write_text(ANCESTOR)
    policy = sandbox.policy("nested", ANCESTOR_POLICY)
    result = sandbox.run("python3", str(script), str(ws), policy=policy, env=fastpath_env(native))
    assert result.stdout.splitlines()[0] == "EACCES", result.stdout
    assert "nested secret" not in result.stdout, "the refused file was read after the rename"
