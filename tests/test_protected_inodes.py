"""Hard links to protected files: the walk that finds them, and what waits for it.

The walk runs in a child process from the launch on; a lookup waits for its
answer, a child that died is replaced by the walk in the supervisor, and one
that never answers fails the lookup (EIO, on record), never lets it through.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TRY, Sandbox, agent_reports, reads_around_a_reload, supervisor_stopped

from agentsup.kernel import fastpath
from agentsup.policy.engine import CompiledPolicy, RunContext, compile_policy
from agentsup.policy.loader import load_policy_text
from agentsup.supervision import protected

HOME_SECRETS = """
name: home-secrets
default: allow
rules:
  - id: ssh
    actions: [file_read]
    target: "{home}/.ssh/**"
    decision: deny
  - id: tokens
    actions: [file_read]
    target: "{home}/.netrc"
    decision: deny
  - id: shadow
    actions: [file_read]
    target: /etc/shadow
    decision: deny
  - id: histories
    actions: [file_read]
    pattern: '^{home}/\\.(?:bash|zsh)_history\\Z'
    decision: deny
  - id: allowed
    actions: [file_read]
    target: "{home}/**"
    decision: allow
"""


def _policy(tmp_path: Path, home: Path) -> CompiledPolicy:
    return compile_policy(load_policy_text(HOME_SECRETS), RunContext(str(tmp_path), str(home), "t"))


def _inode(path: Path) -> tuple[int, int]:
    st = os.stat(path, follow_symlinks=False)
    return st.st_dev, st.st_ino


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".ssh" / "deep").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("key")
    (home / ".ssh" / "deep" / "other").write_text("key")
    (home / ".ssh" / "link").symlink_to("/etc/passwd")
    (home / ".netrc").write_text("machine x")
    (home / ".bash_history").write_text("ls")
    (home / "notes.txt").write_text("not a secret")
    (home / "caf\udce9").write_text("not a secret either")  # not UTF-8
    return home


def test_the_walk_finds_every_protected_file_and_nothing_else(tmp_path: Path, home: Path) -> None:
    found = protected.protected_inodes(_policy(tmp_path, home))
    names = set(found.values())
    for secret in (".ssh/id_rsa", ".ssh/deep/other", ".ssh/link", ".netrc", ".bash_history"):
        assert str(home / secret) in names, names
        assert found[_inode(home / secret)] == str(home / secret)
    assert _inode(home / "notes.txt") not in found
    assert not any(name.startswith(str(home / "caf")) for name in names)


def test_a_large_root_does_not_use_up_the_budget_of_the_others(tmp_path: Path) -> None:
    """The roots take turns: the home directory's many files cannot crowd out .ssh."""
    home = tmp_path / "home"
    for i in range(40):
        (home / "aaa" / f"d{i}").mkdir(parents=True)
        (home / "aaa" / f"d{i}" / "f").write_text("")
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text("key")
    found = protected.protected_inodes(_policy(tmp_path, home), budget=20)
    assert found.get(_inode(home / ".ssh" / "id_rsa")) == str(home / ".ssh" / "id_rsa")


def test_a_root_below_another_walks_on_a_budget_of_its_own(tmp_path: Path) -> None:
    """Red team 31: 20,000 files at the workspace's top spent the whole budget
    in the workspace's first turn, and the home directory was never listed:
    a hard link to `~/.netrc` read it.  Each root has its own budget now."""
    home = tmp_path / "home"
    workspace = home / "workspace"
    workspace.mkdir(parents=True)
    for i in range(300):
        (workspace / f"f{i}").write_text("")
    (home / ".netrc").mkdir()  # (a directory: found by listing the home, not as a root file)
    (home / ".netrc" / "token").write_text("machine x")
    text = HOME_SECRETS.replace(
        "rules:\n",
        'rules:\n  - id: keys\n    actions: [file_read]\n    target: "{home}/workspace/**/*.pem"\n'
        "    decision: deny\n",
        1,
    ).replace('target: "{home}/.netrc"', "pattern: '^{home}/\\.netrc/'")
    policy = compile_policy(load_policy_text(text), RunContext(str(tmp_path), str(home), "t"))
    found = protected.protected_inodes(policy, budget=100)
    assert found.get(_inode(home / ".netrc" / "token")) == str(home / ".netrc" / "token")


def test_directories_spend_the_budget_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Red team 31: 1.4 million directories, which the budget did not count,
    held the walk (and the supervisor's loop, waiting for it) for 30 s."""
    root = tmp_path / "root"
    for i in range(400):
        (root / f"d{i}").mkdir(parents=True)
    listed: list[object] = []
    scandir = os.scandir

    def counting(path: bytes) -> object:
        listed.append(path)
        return scandir(path)

    monkeypatch.setattr(protected.os, "scandir", counting)
    cut: list[str] = []
    assert protected._walk_files([str(root)], budget=50, cut=cut) == []
    assert len(listed) <= 51, len(listed)
    assert cut == [str(root)]  # said (an audit record), as the walk did not reach its end
    whole: list[str] = []
    protected._walk_files([str(root)], budget=1000, cut=whole)
    assert whole == []


def test_the_walk_enters_no_directory_where_no_rule_could_match(tmp_path: Path) -> None:
    """A rule anchored at the home directory (`^{home}/\\.config/gh/`) can match
    nothing in `~/workspace`: a repository there costs the walk one entry."""
    home = tmp_path / "home"
    repository = home / "workspace" / "src"
    repository.mkdir(parents=True)
    for i in range(500):
        (repository / f"f{i}.c").write_text("")
    token = home / ".config" / "gh" / "hosts.yml"
    token.parent.mkdir(parents=True)
    token.write_text("oauth_token: x")
    text = HOME_SECRETS.replace(
        "rules:\n",
        "rules:\n  - id: gh\n    actions: [file_read]\n    pattern: '^{home}/\\.config/gh/'\n"
        "    decision: deny\n",
        1,
    )
    policy = compile_policy(load_policy_text(text), RunContext(str(tmp_path), str(home), "t"))
    found = protected.protected_inodes(policy, budget=100)
    assert found.get(_inode(token)) == str(token)
    scopes = protected._Scopes(protected._walked_matchers(policy))
    assert not scopes.enters(os.fsencode(home / "workspace"))
    assert scopes.enters(os.fsencode(home / ".config" / "gh" / "hosts.d"))  # its own root
    assert scopes.enters(os.fsencode(home / ".ssh" / "deep"))  # `{home}/.ssh/**`


def test_a_toolchain_in_the_home_directory_costs_its_walk_one_entry(
    tmp_path: Path, home: Path
) -> None:
    """Each alternative of a rule has a range of its own: `\\.(?:bash|zsh)_history`
    is two names, not everything from `.bash_history` to `.zsh_history`, where
    `~/.pyenv` lies (120,000 files on the development machine: they spent the
    home's budget, and a link beyond it was missed)."""
    toolchain = home / ".pyenv" / "versions"
    toolchain.mkdir(parents=True)
    for i in range(300):
        (toolchain / f"f{i}.py").write_text("")
    history = home / ".zsh_history"
    history.write_text("export TOKEN=x")
    policy = compile_policy(
        load_policy_text(HOME_SECRETS), RunContext(str(tmp_path), str(home), "t")
    )
    cut: list[str] = []
    found = protected.protected_inodes(policy, budget=100, cut=cut)
    assert found.get(_inode(history)) == str(history)
    assert cut == []
    assert not protected._Scopes(protected._walked_matchers(policy)).enters(
        os.fsencode(home / ".pyenv")
    )


def test_a_regex_protects_the_names_below_what_it_spans(tmp_path: Path, home: Path) -> None:
    """Red team 32: `^{home}/vault/` spans only that text, and RE2's range for
    it ended there, so the walk never entered `vault/prod`; a hard link to
    `vault/prod/db-password` read it.  A regex matches every name that starts
    with a match, and the range is that of the regex followed by anything."""
    secret = home / "vault" / "prod" / "db-password"
    secret.parent.mkdir(parents=True)
    secret.write_text("hunter2")
    for pattern in ("^{home}/vault/", "^{home}/vault\\b"):  # (red team 34: `\b`)
        vault = f"  - {{id: vault, actions: [file_read], pattern: '{pattern}', decision: deny}}\n"
        text = HOME_SECRETS.replace("rules:\n", "rules:\n" + vault, 1)
        policy = compile_policy(load_policy_text(text), RunContext(str(tmp_path), str(home), "t"))
        assert protected.protected_inodes(policy).get(_inode(secret)) == str(secret), pattern


def test_a_name_the_policy_allows_never_stands_for_a_protected_file(tmp_path: Path) -> None:
    """Red team 32: strict's key rule matches `*.pem` but excepts
    `fullchain.pem`; a hard link of a protected file by that name, found
    first, became the file's protected name, and the file was read through
    both names.  Only a name the policy refuses stands for the file."""
    workspace, home = tmp_path / "ws", tmp_path / "home"
    (workspace / "sec" / "prod").mkdir(parents=True)
    home.mkdir()
    secret = workspace / "sec" / "prod" / "data"
    secret.write_text("a secret")
    os.link(secret, workspace / "fullchain.pem")
    text = "name: t\nextends: [strict]\nrules:\n"
    text += "  - {id: sec, actions: [file_read], target: '{workspace}/sec/**', decision: deny}\n"
    loaded = load_policy_text(text)
    policy = compile_policy(loaded, RunContext(str(workspace), str(home), "t"))
    assert protected.protected_inodes(policy).get(_inode(secret)) == str(secret)


@contextlib.contextmanager
def _procfs_in(directory: Path) -> Iterator[Path]:
    """A procfs mounted at `directory/proc`, as in a build chroot."""
    point = directory / "proc"
    point.mkdir(parents=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.mark.requires_root
def test_a_procfs_below_a_root_is_not_walked(tmp_path: Path, home: Path) -> None:
    """Found in session 11: a build chroot's /proc in a walked root made the
    walk fail (a procfs directory refuses its listing halfway), and every
    multiply-linked file (libc) was refused before the agent started.  A
    procfs holds no one's files, and its `PID/root` is the whole host: the
    walk does not enter it, and spends none of its budget there."""
    with _procfs_in(home / "chroot") as proc:
        found = protected.protected_inodes(_policy(tmp_path, home), budget=50)
        files = protected._walk_files([str(home)], budget=10_000)
    assert found.get(_inode(home / ".ssh" / "id_rsa")) == str(home / ".ssh" / "id_rsa")
    assert not [path for path in files if path.startswith(os.fsencode(proc))]


@pytest.mark.requires_root
def test_what_is_mounted_on_a_kernel_tree_below_a_root_is_walked(
    tmp_path: Path, home: Path
) -> None:
    """Red team 24: a directory holding a key, mounted on a sysfs under the
    home, was skipped with the sysfs, and a hard link to that key read it."""
    keys = tmp_path / "keys"
    (keys / ".ssh").mkdir(parents=True)
    key = keys / ".ssh" / "id_ed25519"
    key.write_text("key")
    sysfs = home / "sys"
    sysfs.mkdir()
    subprocess.run(["mount", "-t", "sysfs", "sysfs", str(sysfs)], check=True)
    try:
        point = sysfs / "firmware"
        subprocess.run(["mount", "--bind", str(keys), str(point)], check=True)
        try:
            files = protected._walk_files([str(home)], budget=10_000)
        finally:
            subprocess.run(["umount", "-l", str(point)], check=False)
    finally:
        subprocess.run(["umount", "-l", str(sysfs)], check=False)
    assert os.fsencode(point / ".ssh" / "id_ed25519") in files
    assert not [path for path in files if path.startswith(os.fsencode(sysfs / "kernel"))]


@contextlib.contextmanager
def _walking(policy: CompiledPolicy) -> Iterator[protected.ProtectedInodes]:
    inodes = protected.ProtectedInodes(policy)
    try:
        yield inodes
    finally:
        inodes.close()
    assert inodes._child == [-1, -1]


def test_the_child_answers_what_the_walk_here_would(tmp_path: Path, home: Path) -> None:
    policy = _policy(tmp_path, home)
    with _walking(policy) as inodes:
        assert inodes.get(_inode(home / ".ssh" / "id_rsa")) == str(home / ".ssh" / "id_rsa")
        assert inodes._found == protected.protected_inodes(policy)


def test_a_child_that_died_is_replaced_by_the_walk_here(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies(*_args: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(protected, "_walk_in_child", dies)
    with _walking(_policy(tmp_path, home)) as inodes:
        assert inodes.get(_inode(home / ".netrc")) == str(home / ".netrc")


def test_a_walk_that_does_not_finish_fails_every_lookup_and_is_stopped(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hangs(*_args: object) -> None:
        time.sleep(60)

    monkeypatch.setattr(protected, "_walk_in_child", hangs)
    monkeypatch.setattr(protected, "WALK_TIMEOUT", 0.2)
    with _walking(_policy(tmp_path, home)) as inodes:
        for _ in range(2):
            with pytest.raises(protected.WalkFailed):
                inodes.get(_inode(home / ".netrc"))
        # The child was killed: it can be waited for (it would sleep a minute).
        assert os.waitid(os.P_PIDFD, inodes._child[1], os.WEXITED) is not None


# -- end to end ------------------------------------------------------------------------

both_paths = pytest.mark.parametrize(
    "native",
    [
        pytest.param(
            "1",
            id="native",
            marks=pytest.mark.skipif(not fastpath.enabled(), reason=fastpath.status()[1]),
        ),
        pytest.param("0", id="python"),
    ],
)

# `agentsup run` with its walk held back (AGENTSUP_TEST_WALK_DELAY seconds before
# it starts) and, with AGENTSUP_TEST_WALK_TIMEOUT, a shorter wait for it.
SLOW_WALK = """
import os, time
from agentsup.supervision import protected
walk = protected._walk_in_child
def slow(*args):
    time.sleep(float(os.environ["AGENTSUP_TEST_WALK_DELAY"]))
    walk(*args)
protected._walk_in_child = slow
protected.WALK_TIMEOUT = float(os.environ.get("AGENTSUP_TEST_WALK_TIMEOUT", "30"))
from agentsup.cli.main import main
raise SystemExit(main())
"""


def _slow_walk_run(
    sandbox: Sandbox, native: str, delay: float, *program: str, timeout: str = "30"
) -> subprocess.CompletedProcess[str]:
    command = sandbox.command(*program)
    assert command[1:3] == ["-m", "agentsup"]
    return subprocess.run(
        [sys.executable, "-c", SLOW_WALK, *command[3:]],
        env={
            **sandbox.env,
            fastpath.ENV_SWITCH: native,
            "AGENTSUP_TEST_WALK_DELAY": str(delay),
            "AGENTSUP_TEST_WALK_TIMEOUT": timeout,
        },
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@both_paths
def test_a_planted_hard_link_read_before_the_walk_is_done_is_killed(
    sandbox: Sandbox, native: str
) -> None:
    """The lookup waits for the walk: it never takes "not found yet" for "not protected"."""
    link = sandbox.workspace / "innocent.txt"
    os.link(sandbox.key, link)
    result = _slow_walk_run(sandbox, native, 1.0, "python3", TRY, "read", str(link))
    assert result.returncode == 137, result.stderr[-2000:]
    assert "rule 'secret-ssh' denied file_read" in result.stderr, result.stderr[-2000:]
    assert not [r for r in agent_reports(result.stdout) if r.get("result") == "ok"]


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@both_paths
def test_a_crowded_workspace_does_not_hide_the_keys_in_the_home_directory(
    sandbox: Sandbox, native: str
) -> None:
    """Red team 31: with more files at the workspace's top than the walk's
    whole budget, the home directory was never listed, and a hard link there
    to `~/.git-credentials` read it.  Each root walks on a budget of its own."""
    credentials = sandbox.home / ".git-credentials"
    credentials.write_text("https://user:c2VjcmV0@example.com\n")
    crowd = sandbox.workspace
    for i in range(protected.BUDGET + 1):
        (crowd / f"f{i}").touch()
    link = crowd / "f0.txt"
    os.link(credentials, link)
    result = sandbox.run("python3", TRY, "read", str(link), env={fastpath.ENV_SWITCH: native})
    assert result.returncode == 137, result.stdout + result.stderr[-2000:]
    assert "rule 'token-files' denied file_read" in result.stderr, result.stderr[-2000:]
    assert "c2VjcmV0" not in result.stdout + result.stderr
    # The workspace's own walk ran out of budget: the log says so.
    [cut] = [r for r in sandbox.audit_records() if r.get("event") == "protected_walk_cut"]
    assert cut["roots"] == [str(sandbox.workspace)], cut


SECRETS_DIRECTORY = """
name: sec
extends: [strict]
rules:
  - id: sec
    actions: [file_read]
    target: "{workspace}/sec/**"
    decision: deny
    priority: 1
    on_violation: sigkill
"""


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@both_paths
def test_an_allowed_other_name_does_not_unlock_a_protected_file(
    sandbox: Sandbox, native: str
) -> None:
    """Red team 32: with a hard link named `fullchain.pem` beside it (strict's
    key rule matches `*.pem` and excepts that name), the file was judged
    under the allowed name and read, by either name."""
    secret = sandbox.workspace / "sec" / "prod" / "data"
    secret.parent.mkdir(parents=True)
    secret.write_text("c2VjcmV0\n")
    os.link(secret, sandbox.workspace / "fullchain.pem")
    policy = sandbox.policy("sec", SECRETS_DIRECTORY)
    for name in (secret, sandbox.workspace / "fullchain.pem"):
        result = sandbox.run(
            "python3", TRY, "read", str(name), policy=policy, env={fastpath.ENV_SWITCH: native}
        )
        assert result.returncode == 137, result.stdout + result.stderr[-2000:]
        assert "rule 'sec' denied file_read" in result.stderr, result.stderr[-2000:]
        assert "c2VjcmV0" not in result.stdout + result.stderr


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@both_paths
def test_a_walk_that_never_answers_fails_closed_and_says_so(sandbox: Sandbox, native: str) -> None:
    """No answer in time: a multiply-linked file cannot be judged, so it is not opened."""
    link = sandbox.workspace / "innocent.txt"
    os.link(sandbox.key, link)
    result = _slow_walk_run(sandbox, native, 60.0, "python3", TRY, "read", str(link), timeout="0.5")
    assert '"result": "EIO"' in result.stdout, result.stdout + result.stderr[-2000:]
    assert "c2VjcmV0" not in result.stdout + result.stderr
    failed = [
        r
        for r in sandbox.audit_records()
        if r.get("rule") == "agentsup-mediation-error" and "walk" in str(r.get("message"))
    ]
    assert failed, sandbox.audit_records()


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@both_paths
def test_linking_another_name_of_the_key_is_judged_as_reading_the_key(
    sandbox: Sandbox, native: str
) -> None:
    """link(2) of a planted hard link: the new name would be the key's, so it is a read of it."""
    planted = sandbox.workspace / "innocent.txt"
    os.link(sandbox.key, planted)
    copy = sandbox.workspace / "copy"
    result = sandbox.run(
        "python3", TRY, "link", str(planted), str(copy), env={fastpath.ENV_SWITCH: native}
    )
    assert result.returncode == 137, result.stderr[-2000:]
    assert "rule 'secret-ssh' denied file_read" in result.stderr, result.stderr[-2000:]
    assert not copy.exists()


AFTER_THE_WALK = """
import os, sys, time
ws, key_link = sys.argv[1], sys.argv[2]
def read(path):
    try:
        with open(path) as opened:
            return opened.read().strip()
    except OSError as exc:
        return f"error {exc.errno}"
print("first", read(f"{ws}/harmless"), flush=True)  # the walk answers for this one
time.sleep(0.5)  # (its answer reaches the broker meanwhile)
print("ready", flush=True)
sys.stdin.readline()  # the supervisor is stopped now
print("other", read(f"{ws}/other"), flush=True)
print("key", read(key_link), flush=True)
"""


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.skipif(not fastpath.enabled(), reason=fastpath.status()[1])
def test_once_the_walk_answered_the_broker_judges_other_hard_links_but_not_the_keys(
    sandbox: Sandbox,
) -> None:
    """Shared libraries and git's commands have several names: after the walk's
    answer the broker opens those itself; another name of the key still waits
    for the supervisor, and is killed as a read of the key."""
    ws = sandbox.workspace
    for name in ("harmless", "other"):
        (ws / name).write_text(f"{name} text\n")
        os.link(ws / name, ws / f"{name}.2")
    planted = ws / "innocent.txt"
    os.link(sandbox.key, planted)
    script = ws / "after_the_walk.py"
    script.write_text(AFTER_THE_WALK)
    program = ("python3", str(script), str(ws), str(planted))
    proc = sandbox.start(*program, env={fastpath.ENV_SWITCH: "1"})
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert proc.stdout.readline() == "first harmless text\n"
        assert proc.stdout.readline() == "ready\n"
        with supervisor_stopped(proc):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            # Answered by the broker alone: the supervisor is stopped.
            ready, _, _ = select.select([proc.stdout], [], [], 5.0)
            while_stopped = proc.stdout.readline() if ready else ""
            time.sleep(1.0)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert while_stopped == "other other text\n", (while_stopped, rest, err[-2000:])
    assert proc.returncode == 137, err[-2000:]
    assert "rule 'secret-ssh' denied file_read" in err, err[-2000:]
    assert "key" not in rest and "c2VjcmV0" not in rest


@pytest.mark.requires_root
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.parametrize("native", ["1", "0"])
def test_an_agent_starts_with_a_procfs_mounted_in_its_workspace(
    sandbox: Sandbox, native: str
) -> None:
    """The same chroot under `strict`: the agent's programs load their
    multiply-linked libraries, whose check waits for the walk."""
    with _procfs_in(sandbox.workspace / "chroot"):
        result = sandbox.run("/bin/echo", "ran", env={"AGENTSUP_FASTPATH": native})
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr


NEEDS_NATIVE = pytest.mark.skipif(not fastpath.enabled(), reason=fastpath.status()[1])

SECRETS_NOW = """
name: reloaded
extends: [strict]
rules:
  - id: now-secret
    actions: [file_read]
    target: "{workspace}/sec/**"
    decision: deny
    priority: 1
    on_violation: block
"""


@pytest.mark.parametrize(
    ("native", "lane"),
    [
        pytest.param("1", "0", id="native", marks=NEEDS_NATIVE),
        pytest.param("0", "0", id="python"),
        pytest.param("1", "1", id="lane", marks=NEEDS_NATIVE),
    ],
)
def test_a_reload_finds_the_other_names_of_the_files_it_now_refuses(
    sandbox: Sandbox, native: str, lane: str
) -> None:
    """Found by red-teaming (red team 31): the walk for protected inodes ran
    once, at launch, so a hard link made while its file was allowed still
    read it after a reload refused the file.  A reload walks anew."""
    from agentsup.supervision import readlane

    ws = sandbox.workspace
    (ws / "sec").mkdir()
    (ws / "sec" / "data").write_text("not yet a secret\n")
    (ws / "pub").mkdir()
    os.link(ws / "sec" / "data", ws / "pub" / "mine")
    env = {fastpath.ENV_SWITCH: native, readlane.ENV_SWITCH: lane}

    def the_file_holds_a_secret_now() -> None:
        (ws / "sec" / "data").write_text("a secret now\n")  # the same inode

    reads = reads_around_a_reload(
        sandbox, ws / "pub" / "mine", SECRETS_NOW, env, the_file_holds_a_secret_now
    )
    assert reads == ("not yet a secret", "refused")
    refusals = [r for r in sandbox.audit_records() if r.get("rule") == "now-secret"]
    assert refusals and refusals[0]["target"] == str(ws / "sec" / "data"), refusals
