"""The broker's native path: the same decisions as the Python path, answered without it.

The native path answers only what the supervisor's judge allows without a
record (its allow cache, mirrored into the broker, or the broker's own copy
of the judge), on the path the broker itself resolved, and forwards
everything else.  So:

- one agent opening the same list of paths twice gives the same results,
  byte for byte, with the native path on and off (`AGENTSUP_FASTPATH=0`),
  and the same refusals reach the audit log;
- a plainly allowed open is answered while the supervisor itself is stopped
  (the broker asks its own copy of the judge); a refusal, which must be
  recorded, waits for the supervisor.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import (
    AGENTS,
    Sandbox,
    both_paths,
    fastpath_env,
    read_for,
    readlane_available,
    reads_around_a_reload,
    run_again,
    supervisor_stopped,
)

from agentsup.kernel import fastpath
from agentsup.supervision import readlane

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]
needs_native = pytest.mark.skipif(not fastpath.enabled(), reason=fastpath.status()[1])


def test_the_native_path_is_built_wherever_a_compiler_and_headers_are() -> None:
    """The extension is optional, so a failed build would only skip the tests below."""
    compiler = shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc")
    headers = Path(sysconfig.get_paths()["include"], "Python.h").exists()
    if not (compiler and headers):
        pytest.skip("no C compiler or no Python headers here: the Python path runs")
    assert fastpath.native is not None, "the C extension did not build"


OPENS = "opens.py"

POLICY = """
name: differential
extends: [strict]
rules:
  - id: refused-file
    actions: [file_read, file_write, file_delete]
    target: "{workspace}/refused*"
    decision: deny
    priority: 1
    on_violation: block
  - id: refused-command
    actions: [shell_execute]
    pattern: "^/bin/echo refused"
    decision: deny
    priority: 1
    on_violation: block
  - id: refused-missing-command
    actions: [shell_execute]
    pattern: "^/nowhere/refused"
    decision: deny
    priority: 1
    on_violation: block
  - id: refused-missing-program
    actions: [process_spawn]
    target: "/nowhere/forbidden"
    decision: deny
    priority: 1
    on_violation: block
  - id: refused-chmod
    actions: [file_chmod]
    target: "{workspace}/stay*"
    decision: deny
    priority: 1
    on_violation: block
  - id: refused-move
    actions: [file_move]
    target: "{workspace}/stay*"
    decision: deny
    priority: 1
    on_violation: block
  - id: refused-inside
    actions: [file_read, file_write, file_delete]
    target: "{workspace}/sub/refused*"
    decision: deny
    priority: 1
    on_violation: block
  - id: gone-refused
    actions: [file_write]
    target: "{workspace}/gone/**"
    decision: deny
    priority: 1
    on_violation: block
  - id: read-only-file
    actions: [file_write]
    target: "{workspace}/read-only.txt"
    decision: deny
    priority: 1
    on_violation: block
"""


def _plant(ws: Path) -> None:
    (ws / "plain.txt").write_text("plain contents\n")
    (ws / "scratch.txt").write_text("scratch\n")
    (ws / "log.txt").write_text("log\n")
    (ws / "refused.txt").write_text("refused\n")
    (ws / "read-only.txt").write_text("read only\n")
    (ws / "stay.txt").write_text("stay\n")
    (ws / "sub").mkdir()
    (ws / "full").mkdir()
    (ws / "full" / "inside").write_text("")
    (ws / "dangling").symlink_to("missing-target")
    (ws / "link-to-plain").symlink_to("plain.txt")
    (ws / "link-to-refused").symlink_to("refused.txt")
    # Two names of one file (made before the run, as a `cp -al` would): read
    # as any file, never changed (agentsup-hard-linked).
    (ws / "twice.txt").write_text("twice\n")
    os.link(ws / "twice.txt", ws / "linked.txt")
    (ws / "linkable.txt").write_text("linkable\n")
    (ws / "link-to-linkable").symlink_to("linkable.txt")
    (ws / "sub" / "inside.txt").write_text("inside\n")
    (ws / "sub" / "refused.txt").write_text("refused inside\n")
    (ws / "link-to-sub").symlink_to("sub")
    os.mkfifo(ws / "fifo")


def _outcomes(
    sandbox: Sandbox, native: bool, lane: bool = False
) -> tuple[list[dict[str, object]], list[str]]:
    for entry in sandbox.workspace.iterdir():
        if entry.name != OPENS:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    _plant(sandbox.workspace)
    if sandbox.audit_log.exists():
        sandbox.audit_log.unlink()
    policy = sandbox.policy("differential", POLICY)
    result = sandbox.run(
        "python3",
        str(sandbox.workspace / OPENS),
        str(sandbox.workspace),
        policy=policy,
        env={**fastpath_env(native), readlane.ENV_SWITCH: "1" if lane else "0"},
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    refusals = sorted(
        f"{r.get('action_type')} {r.get('target')} {r.get('rule')}"
        for r in sandbox.audit_records()
        if r.get("decision") == "deny"
    )
    return lines, refusals


@pytest.fixture
def opener(sandbox: Sandbox) -> Sandbox:
    shutil.copy(AGENTS / OPENS, sandbox.workspace / OPENS)
    return sandbox


@needs_native
@pytest.mark.skipif(not readlane_available(), reason="no read lane on this host")
def test_the_read_lane_gives_the_same_results_and_refusals_but_eperm(opener: Sandbox) -> None:
    """With the read lane, a refused read fails with EPERM (all fanotify can
    say), where the broker says EACCES; everything else is the same."""
    lane, lane_refusals = _outcomes(opener, native=True, lane=True)
    native, native_refusals = _outcomes(opener, native=True)
    assert len(lane) == len(native)
    differ = []
    for ours, theirs in zip(lane, native, strict=True):
        if ours != theirs:
            assert (ours.get("error"), theirs.get("error")) == ("EPERM", "EACCES"), (ours, theirs)
            assert {**ours, "error": "EACCES"} == theirs
            differ.append(ours["case"])
    assert lane_refusals == native_refusals
    assert "refused" in differ and "read a refused file through a symlinked directory" in differ
    assert "write refused" not in differ and "unlink refused" not in differ


@needs_native
def test_both_paths_give_the_same_results_and_refusals(opener: Sandbox) -> None:
    native, native_refusals = _outcomes(opener, native=True)
    python, python_refusals = _outcomes(opener, native=False)
    assert len(native) == len(python) == 2 * (38 + 41 + 28 + 13 + 11 + 11)
    for ours, theirs in zip(native, python, strict=True):
        assert ours == theirs
    assert native_refusals == python_refusals
    # The list means something: it saw successes, refusals and absences.
    by_case = {(r["case"], r["pass"]): r for r in native}
    assert by_case[("read", 1)]["data"] == "plain contents\n"
    assert by_case[("refused", 1)] == {"case": "refused", "pass": 1, "error": "EACCES"}
    assert by_case[("write refused", 1)]["error"] == "EACCES"
    assert by_case[("missing", 1)]["error"] == "ENOENT"
    assert by_case[("dev zero", 1)]["kind"] == "other"
    assert by_case[("directory", 1)]["kind"] == "dir"
    assert by_case[("read nonblock", 1)]["flags"] == os.O_NONBLOCK
    assert by_case[("read cloexec", 1)]["cloexec"] is True
    assert any("refused-file" in line for line in native_refusals)
    assert by_case[("create", 1)] == {"case": "create", "pass": 1, "mode": "0o755"}
    assert by_case[("unlink again", 1)]["error"] == "ENOENT"
    assert by_case[("unlink refused", 1)]["error"] == "EACCES"
    assert by_case[("read through a symlinked directory", 1)]["data"] == "inside\n"
    assert by_case[("read a refused file through a symlinked directory", 1)]["error"] == "EACCES"
    for missing in ("", " read-write", " relative"):
        assert by_case[(f"create{missing} in a missing directory", 1)]["error"] == "ENOENT"
    assert by_case[("create refused in a missing directory", 1)]["error"] == "EACCES"
    assert any("gone-refused" in line for line in native_refusals)
    # mkdir keeps the sticky bit only (set-group-ID comes from the parent).
    assert by_case[("mkdir with set-id bits", 1)]["mode"] == "0o1755"
    assert by_case[("mkdir at a dirfd", 1)]["mode"] == "0o755"
    assert by_case[("mkdir existing", 1)]["error"] == "EEXIST"
    assert by_case[("mkdir refused", 1)]["error"] == "EACCES"
    assert by_case[("mkdir in a missing directory", 1)]["error"] == "ENOENT"
    assert by_case[("mkdir refused in a missing directory", 1)]["error"] == "EACCES"
    for case, outcome in [
        ("rename", None),
        ("rename over a file", None),
        ("rename through a symlinked directory", None),
        ("rename a missing file", "ENOENT"),
        ("rename refused to move", "EACCES"),
        ("rename onto a refused name", "EACCES"),
        ("rename no-replace onto a file", "EEXIST"),
        ("rename at dirfds", None),
        ("link", None),
        ("link again", "EEXIST"),
        ("link refused to read", "EACCES"),
        ("link onto a refused name", "EACCES"),
        ("link a directory", "EPERM"),
        ("link relative", None),
        ("link at dirfds", None),
    ]:
        assert by_case[(case, 1)].get("error") == outcome, (case, by_case[(case, 1)])
    assert any("refused-move" in line for line in native_refusals)
    # What each left (its modification time or mode), or its error.
    given = (1_000_000_001 + 1) * 10**9 + 456  # the second pass's modification time
    for case, left, outcome in [
        ("utime", "mtime", given),
        ("utime relative", "mtime", given),
        ("utime at a dirfd", "mtime", given),
        ("utime through a symlink", "mtime", given),
        ("utime a symlink itself", "mtime", given),
        ("utime a hard link", "mtime", "EACCES"),
        ("utime a directory", "mtime", given),
        ("utime now", "mtime", None),
        ("utime omitting both", "mtime", None),
        ("utime refused", "mtime", "EACCES"),
        ("utime missing", "mtime", "ENOENT"),
        ("utime refused and missing", "mtime", "EACCES"),
        ("utime nanoseconds out of range", "mtime", "EINVAL"),
        ("fchmod", "mode", "0o640"),
        ("fchmod set-id bits", "mode", "0o755"),  # dropped, as the supervisor drops them
        ("fchmod a hard link", "mode", "EACCES"),
        ("fchmod a directory", "mode", "0o750"),
        ("fchmod a bad fd", "mode", "EBADF"),
        ("futimens refused", "mode", "EACCES"),
        ("fchmod refused", "mode", "EACCES"),
        ("chmod", "mode", "0o600"),
        ("chmod relative", "mode", "0o640"),
        ("chmod at a dirfd", "mode", "0o604"),
        ("chmod set-id bits", "mode", "0o755"),
        ("chmod a directory with set-id bits", "mode", "0o2775"),  # set-group-ID stays
        ("chmod a hard link", "mode", "EACCES"),
        ("chmod through a symlink", "mode", "0o644"),
        ("chmod missing", "mode", "ENOENT"),
        ("chmod refused", "mode", "EACCES"),
        ("chmod refused and missing", "mode", "EACCES"),
    ]:
        got = by_case[(case, 1)]
        assert got.get(left, got.get("error")) == outcome, (case, got)
    assert by_case[("futimens", 1)]["mtime"] == (1_000_000_100 + 1) * 10**9
    assert by_case[("fchown leaving both", 1)].get("ok") is True
    assert by_case[("rmdir with a trailing slash", 1)] == {
        "case": "rmdir with a trailing slash",
        "pass": 1,
        "ok": True,
    }


def _stopped_supervisor_opens(
    sandbox: Sandbox,
    native: bool,
    mode: str = "r",
    names: tuple[str, ...] = ("allowed.txt", "refused.txt"),
) -> tuple[str, str]:
    """Open an allowed file, then a refused one, while the supervisor is stopped."""
    ws = sandbox.workspace
    (ws / "allowed.txt").write_text("allowed\n")
    (ws / "refused.txt").write_text("refused\n")
    script = ws / "wait_and_open.py"
    script.write_text(
        "import errno, os, subprocess, sys, time\n"
        "mode = sys.argv[1]\n"
        "if mode == 'exec':\n"  # a first exec: shared libraries' inodes are judged by then
        "    subprocess.run(['/bin/true'], check=True)\n"
        "    time.sleep(0.3)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"  # the test stops the supervisor meanwhile
        "for path in sys.argv[2:]:\n"
        "    try:\n"
        "        if mode == 'exec':\n"  # 'PROGRAM ARG...'
        "            subprocess.run(path.split(), check=True, stdout=subprocess.DEVNULL)\n"
        "            print('ran', path.split()[0], flush=True)\n"
        "            continue\n"
        "        if mode in ('rename', 'link'):\n"  # 'DIR/old>new': new in DIR too
        "            old, new = path.split('>')\n"
        "            getattr(os, mode)(old, os.path.join(os.path.dirname(old), new))\n"
        "            print(mode, 'done', flush=True)\n"
        "            continue\n"
        "        if mode == 'held':\n"  # tar restores a file's mode, owner and times by fd
        "            fd = os.open(path, os.O_RDONLY)\n"
        "            try:\n"
        "                os.fchmod(fd, 0o640)\n"
        "                os.fchown(fd, -1, -1)\n"
        "                os.utime(fd, ns=(10**9, 10**9))\n"
        "            finally:\n"
        "                os.close(fd)\n"
        "            print('changed', flush=True)\n"
        "            continue\n"
        "        if mode == 'chmod':\n"
        "            os.chmod(path, 0o640)\n"
        "            print('changed', flush=True)\n"
        "            continue\n"
        "        if mode == 'utime':\n"
        "            os.utime(path, ns=(10**9, 10**9))\n"
        "            print('touched', flush=True)\n"
        "            continue\n"
        "        if mode == 'mkdir':\n"
        "            os.mkdir(path)\n"
        "            print('made', flush=True)\n"
        "            continue\n"
        "        with open(path, mode) as opened:\n"
        "            print(opened.read().strip() if mode == 'r' else 'created', flush=True)\n"
        "    except OSError as exc:\n"
        "        kind = 'refused' if exc.errno == errno.EACCES else 'failed'\n"
        "        print(kind, errno.errorcode[exc.errno], flush=True)\n"
    )
    policy = sandbox.policy("differential", POLICY)
    command = sandbox.command(
        # A name starting with "+" is passed as it is, relative to the agent's cwd (ws).
        "python3",
        str(script),
        mode,
        *(name[1:] if name.startswith("+") else str(ws / name) for name in names),
        policy=policy,
    )
    env = {**sandbox.env, fastpath.ENV_SWITCH: "1" if native else "0"}
    proc = subprocess.Popen(
        command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    out = proc.stdout.fileno()
    try:
        assert proc.stdout.readline().strip() == b"ready"
        with supervisor_stopped(proc):
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            seen = read_for(out, 3)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    seen_text = seen.decode()
    return seen_text, seen_text + rest.decode()


@needs_native
def test_a_plainly_allowed_open_is_answered_while_the_supervisor_is_stopped(
    opener: Sandbox,
) -> None:
    while_stopped, everything = _stopped_supervisor_opens(opener, native=True)
    # The broker decided the allowed file on its own; the refusal, which is
    # recorded, waited for the supervisor.
    assert while_stopped == "allowed\n"
    assert everything == "allowed\nrefused EACCES\n"
    refusals = [r for r in opener.audit_records() if r.get("rule") == "refused-file"]
    assert len(refusals) == 1


@needs_native
def test_a_create_in_a_missing_directory_is_answered_while_the_supervisor_is_stopped(
    opener: Sandbox,
) -> None:
    """ENOENT, where the policy plainly allows the create (the Python path asks it
    first, and answers ENOENT with no record); a refused one waits, and is recorded."""
    names = ("nowhere/new.txt", "+nowhere/relative.txt", "gone/new.txt")
    while_stopped, everything = _stopped_supervisor_opens(opener, True, "w", names)
    assert while_stopped == "failed ENOENT\n" * 2
    assert everything == "failed ENOENT\n" * 2 + "refused EACCES\n"
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "gone-refused"
    ]


@needs_native
def test_a_plainly_allowed_mkdir_is_answered_while_the_supervisor_is_stopped(
    opener: Sandbox,
) -> None:
    """git makes a directory for its objects as it writes them: that is the broker's."""
    names = ("made", "+made-relative", "nowhere/made", "sub/refused-dir")
    while_stopped, everything = _stopped_supervisor_opens(opener, True, "mkdir", names)
    assert while_stopped == "made\n" * 2 + "failed ENOENT\n"
    assert everything == while_stopped + "refused EACCES\n"
    assert (opener.workspace / "made").is_dir() and (opener.workspace / "made-relative").is_dir()
    assert not (opener.workspace / "sub" / "refused-dir").exists()
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "refused-inside"
    ]


@needs_native
@pytest.mark.parametrize("call", ["rename", "link"])
def test_a_plainly_allowed_rename_or_link_is_answered_while_the_supervisor_is_stopped(
    opener: Sandbox, call: str
) -> None:
    """git links each object it writes into place, and renames its lock files."""
    (opener.workspace / "object.tmp").write_text("object\n")
    names = ("object.tmp>object", "plain.txt>refused-name")
    while_stopped, everything = _stopped_supervisor_opens(opener, True, call, names)
    assert while_stopped == f"{call} done\n"
    assert everything == while_stopped + "refused EACCES\n"
    assert (opener.workspace / "object").read_text() == "object\n"
    assert (opener.workspace / "object.tmp").exists() == (call == "link")
    assert not (opener.workspace / "refused-name").exists()
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "refused-file"
    ]


@needs_native
def test_a_plainly_allowed_utime_is_answered_while_the_supervisor_is_stopped(
    opener: Sandbox,
) -> None:
    """tar, pip and git set times by name: each is decided as a write."""
    (opener.workspace / "relative.txt").write_text("relative\n")
    names = ("allowed.txt", "+relative.txt", "missing.txt", "refused.txt")
    while_stopped, everything = _stopped_supervisor_opens(opener, True, "utime", names)
    assert while_stopped == "touched\n" * 2 + "failed ENOENT\n"
    assert everything == while_stopped + "refused EACCES\n"
    for name in ("allowed.txt", "relative.txt"):
        assert (opener.workspace / name).stat().st_mtime_ns == 10**9
    assert (opener.workspace / "refused.txt").stat().st_mtime_ns != 10**9
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "refused-file"
    ]


@needs_native
def test_a_plainly_allowed_chmod_is_answered_while_the_supervisor_is_stopped(
    opener: Sandbox,
) -> None:
    """pip sets every file's mode by name: decided as file_chmod on the object."""
    for name in ("relative.txt", "stay.txt"):
        (opener.workspace / name).write_text(f"{name}\n")
    names = ("allowed.txt", "+relative.txt", "missing.txt", "stay.txt")
    while_stopped, everything = _stopped_supervisor_opens(opener, True, "chmod", names)
    assert while_stopped == "changed\n" * 2 + "failed ENOENT\n"
    assert everything == while_stopped + "refused EACCES\n"
    for name, mode in (("allowed.txt", 0o640), ("relative.txt", 0o640), ("stay.txt", 0o644)):
        assert (opener.workspace / name).stat().st_mode & 0o777 == mode
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "refused-chmod"
    ]


@needs_native
def test_fchmod_fchown_and_futimens_are_answered_while_the_supervisor_is_stopped(
    opener: Sandbox,
) -> None:
    """Decided on the real path of the agent's fd; a refused one waits, and is recorded."""
    (opener.workspace / "read-only.txt").write_text("read only\n")
    names = ("allowed.txt", "read-only.txt")
    while_stopped, everything = _stopped_supervisor_opens(opener, True, "held", names)
    assert while_stopped == "changed\n"
    assert everything == while_stopped + "refused EACCES\n"
    allowed = (opener.workspace / "allowed.txt").stat()
    assert (allowed.st_mode & 0o777, allowed.st_mtime_ns) == (0o640, 10**9)
    assert (opener.workspace / "read-only.txt").stat().st_mtime_ns != 10**9
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "read-only-file"
    ]


@needs_native
def test_a_plainly_allowed_exec_is_let_through_while_the_supervisor_is_stopped(
    opener: Sandbox,
) -> None:
    """An agent runs many short commands: the broker lets an allowed exec
    through and checks the new image's first syscall itself; a refused one
    waits for the supervisor, which records it."""
    names = ("+/bin/true", "+/bin/echo allowed", "+/bin/echo refused-command")
    while_stopped, everything = _stopped_supervisor_opens(opener, True, "exec", names)
    assert while_stopped == "ran /bin/true\nran /bin/echo\n"
    assert everything == while_stopped + "refused EACCES\n"
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "refused-command"
    ]


@needs_native
def test_an_exec_of_a_missing_program_fails_while_the_supervisor_is_stopped(
    opener: Sandbox,
) -> None:
    """A shell or execvp tries each PATH entry in turn: every missing one is an
    exec that fails with ENOENT, inside the floor or not.  Where its command
    line is plainly allowed, the broker gives that answer itself; a refused
    command line waits, and is recorded."""
    names = (
        "+/nowhere/true",
        "nowhere/true",
        "+/nowhere/refused-command",
        "+/nowhere/forbidden",
    )
    while_stopped, everything = _stopped_supervisor_opens(opener, True, "exec", names)
    assert while_stopped == "failed ENOENT\n" * 2
    assert everything == while_stopped + "refused EACCES\nfailed ENOENT\n"
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "refused-missing-command"
    ]


@both_paths
def test_an_exec_of_a_missing_program_judges_its_command_line_only(
    opener: Sandbox, native: bool
) -> None:
    """No file, no process_spawn: not its rules, not the floor (a PATH entry
    outside it would otherwise be recorded as a refusal at every command)."""
    names = ("+/nowhere/true", "+/nowhere/forbidden", "+/nowhere/refused-command")
    _, everything = _stopped_supervisor_opens(opener, native, "exec", names)
    assert everything == "failed ENOENT\n" * 2 + "refused EACCES\n"
    assert [r.get("rule") for r in opener.audit_records() if r.get("decision") == "deny"] == [
        "refused-missing-command"
    ]


def test_without_the_native_path_every_open_waits_for_the_supervisor(opener: Sandbox) -> None:
    while_stopped, everything = _stopped_supervisor_opens(opener, native=False)
    assert while_stopped == ""
    assert everything == "allowed\nrefused EACCES\n"


@needs_native
def test_the_native_cache_takes_only_absolute_paths_and_forgets() -> None:
    native = fastpath.native
    assert native is not None
    native.forget()
    assert native.allow(b"/some/where", fastpath.ALLOW_READ) is True
    assert native.allow(b"/some/where", fastpath.ALLOW_WRITE) is True
    assert native.allowed(b"/some/where") == fastpath.ALLOW_READ | fastpath.ALLOW_WRITE
    assert native.allow(b"relative", fastpath.ALLOW_READ) is False
    assert native.allow(b"/nul\0inside", fastpath.ALLOW_READ) is False
    assert native.allowed(b"/some/where/else") == 0
    native.forget()
    assert native.allowed(b"/some/where") == 0


@needs_native
def test_the_red_team_suites_pass_with_the_native_path_off() -> None:
    """The isolation and mediation attacks, again, with the Python path answering."""
    suites = [
        "test_isolation_e2e.py",
        "test_mediation_metadata.py",
        "test_mediation_processes.py",
        "test_mediation_races.py",
        "test_mediation_robust.py",
        "test_mediation_secrets.py",
        "test_mediation_sockets.py",
        "test_run_secrets.py",
        "test_self_protection.py",
    ]
    result = run_again(suites, {fastpath.ENV_SWITCH: "0"})
    assert result.returncode == 0, result.stdout[-4000:]


RELOADED = """
name: reloaded
extends: [strict]
rules:
  - id: now-refused
    actions: [file_read]
    target: "{workspace}/allowed.txt"
    decision: deny
    priority: 1
    on_violation: block
"""


@needs_native
def test_a_policy_reload_reaches_the_native_path(opener: Sandbox) -> None:
    """What the old policy allowed (cached, and decided by the broker's own judge)
    is refused once the reloaded policy refuses it."""
    (opener.workspace / "allowed.txt").write_text("allowed\n")
    reads = reads_around_a_reload(opener, opener.workspace / "allowed.txt", RELOADED)
    assert reads == ("allowed", "refused")
    assert any(r.get("rule") == "now-refused" for r in opener.audit_records())


RETITLE = """
import ctypes, os, sys
ws = sys.argv[1]
open(f"{ws}/plain.txt").close()  # the first syscall after the exec: the image is checked
# Retitle in place, as setproctitle does: argv's own memory, no syscall.  The
# argument strings end where the first environment string starts.
original = b"".join(os.fsencode(arg) + b"\\0" for arg in sys.orig_argv)
arg_end = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")[0]
title = b"retitled worker".ljust(len(original), b"\\0")
ctypes.memmove(arg_end - len(original), title, len(original))
os.symlink("plain.txt", f"{ws}/made-after")  # forwarded: the supervisor sees this process
with open("/proc/self/cmdline", "rb") as cmdline:  # (forwarded too)
    print(cmdline.read().split(b"\\0")[0].decode(), flush=True)
"""


@pytest.mark.parametrize(
    "native", [pytest.param("1", id="native", marks=needs_native), pytest.param("0", id="python")]
)
def test_a_process_that_retitles_itself_after_its_first_syscall_is_not_judged_again(
    sandbox: Sandbox, native: str
) -> None:
    """The exec is checked once, at the first syscall of the new image (by the
    broker, which then tells the supervisor so): a later change of its
    command line, as daemons make, is no new exec."""
    (sandbox.workspace / "plain.txt").write_text("plain\n")
    script = sandbox.workspace / "retitle.py"
    script.write_text(RETITLE)
    policy = sandbox.policy(
        "retitle",
        "name: retitle\nextends: [strict]\nrules:\n"
        "  - id: no-retitled\n    actions: [shell_execute]\n    pattern: retitled\n"
        "    decision: deny\n    priority: 1\n",
    )
    # Run by a shell, so that it is an exec the supervisor decided.
    command = f"{sys.executable} {script} {sandbox.workspace}; true"
    result = sandbox.run("sh", "-c", command, policy=policy, env={fastpath.ENV_SWITCH: native})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "retitled worker\n"
    assert (sandbox.workspace / "made-after").is_symlink()
