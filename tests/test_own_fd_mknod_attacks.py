"""Red-team tests: a non-dumpable agent's own fds by exact name, and mknod.

A non-dumpable agent's /proc entry is closed to its broker; for a name that
is exactly /proc/self/fd/N, /proc/thread-self/fd/N, /dev/fd/N or /dev/std*,
the supervisor (root) opens /proc/TID/fd/N with O_PATH and the broker
reopens that through its own /proc/self/fd (`Mediator._pin_own_fd`,
`broker.ANCHOR_ITSELF`).  The agent tries to get through it what it could
not open itself: a file the policy refuses writing, an fd swapped under the
name meanwhile (dup2), a thread with an fd table of its own, the broker's
/proc entry and fds.  mknod and mknodat are creates (`Mediator._mknod`,
`Broker._mknod`): the agent tries mode bits, odd file types, dirfds,
own-fd names and dangling symlinks.  Where agentsup's answer should be the
kernel's, the same steps run without agentsup (the reference).

Every attack runs on the broker's native path and on the Python path alone
(AGENTSUP_FASTPATH=0).
"""

from __future__ import annotations

import json
import stat
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, deny_rule, fastpath_env
from steps import assert_survived, run_steps, run_steps_bare, step_reports

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

# The attacking agent: `python3 agent.py STEPS_JSON`, each step [case, op,
# *args], paths relative to its cwd (the workspace); "{name}" in an argument
# is formatted with the fds held so far.  Prints {"case", "result": "ok" |
# ERRNO, "data"} lines, then "survived".
AGENT = textwrap.dedent(
    r'''
    import ctypes, errno, json, os, socket, stat, struct, sys, threading, time

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    WS = os.path.dirname(os.path.abspath(__file__))
    os.chdir(WS)
    FDS = {"pid": os.getpid()}
    SYS_MKNODAT, SYS_PIDFD_OPEN, SYS_UNSHARE = 259, 434, 272


    def check(value):
        if value < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return value


    def content(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return "<dir>"
        if stat.S_ISREG(st.st_mode):
            return os.pread(fd, 4096, 0).decode(errors="replace")
        return "<" + stat.filemode(st.st_mode)[0] + ">"


    def read(path, flags=0):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | int(flags))
        try:
            return content(fd)
        finally:
            os.close(fd)


    def write(path, data):
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)


    def hold(name, path, flags):
        FDS[name] = os.open(path, int(flags))


    def dup(name, number):
        os.dup2(FDS[name], int(number))
        FDS[name] = int(number)


    def objects():
        FDS["pipe_r"], FDS["pipe_w"] = os.pipe()
        FDS["memfd"] = os.memfd_create("mine")
        os.write(FDS["memfd"], b"memfd content\n")
        FDS["eventfd"] = os.eventfd(0)
        FDS["pidfd"] = check(libc.syscall(SYS_PIDFD_OPEN, os.getpid(), 0))
        FDS["pidfd1"] = check(libc.syscall(SYS_PIDFD_OPEN, 1, 0))
        a, b = socket.socketpair()
        FDS["sock"] = a.detach()
        b.detach()


    def opath(name, path, nofollow="0"):
        FDS[name] = os.open(path, os.O_PATH | (os.O_NOFOLLOW if nofollow == "1" else 0))


    def mknod(path, mode, dev=0, dirfd="-100"):
        d = FDS[dirfd] if dirfd in FDS else int(dirfd)
        dev = int(dev, 0) if isinstance(dev, str) else dev
        check(libc.syscall(ctypes.c_long(SYS_MKNODAT), ctypes.c_long(d), os.fsencode(path),
                           ctypes.c_ulong(int(mode, 8)), ctypes.c_ulong(dev)))


    def mode(path):
        return oct(os.lstat(path).st_mode)


    def umask(value):
        os.umask(int(value, 8))


    def undumpable():
        check(libc.prctl(4, 0, 0, 0, 0))


    def dup_race(number, first, second, path, how, seconds):
        """A thread dup2s `first` and `second` onto `number` in turn while `path`
        is opened (how: r or w) again and again: each answer seen."""
        stop = threading.Event()
        a, b, n = FDS[first], FDS[second], int(number)

        def flipper():
            while not stop.is_set():
                os.dup2(a, n)
                os.dup2(b, n)

        thread = threading.Thread(target=flipper)
        thread.start()
        seen = {}
        deadline = time.monotonic() + float(seconds)
        try:
            while time.monotonic() < deadline:
                try:
                    if how == "w":
                        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                        os.write(fd, b"raced\n")
                        os.close(fd)
                        answer = "written"
                    else:
                        answer = read(path)
                except OSError as exc:
                    answer = errno.errorcode.get(exc.errno, "?")
                seen[answer] = seen.get(answer, 0) + 1
        finally:
            stop.set()
            thread.join()
        return json.dumps(sorted(seen))


    def thread_unshared(number, other, path):
        """A thread unshares its fd table, dup2s `other` onto `number` there (the
        leader keeps its own fd `number`), and reads `path`."""
        out = {}

        def run():
            try:
                check(libc.syscall(SYS_UNSHARE, 0x400))  # CLONE_FILES
            except OSError as exc:
                out["r"] = "unshare " + errno.errorcode.get(exc.errno, "?")
                return
            os.dup2(FDS[other], int(number))
            try:
                out["r"] = read(path)
            except OSError as exc:
                out["r"] = errno.errorcode.get(exc.errno, "?")

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return out["r"]


    OPS = {"read": read, "write": write, "hold": hold, "dup": dup, "objects": objects,
           "opath": opath,
           "readlink": os.readlink,
           "mknod": mknod, "mode": mode, "umask": umask, "undumpable": undumpable,
           "dup-race": dup_race, "thread-unshared": thread_unshared, "symlink": os.symlink,
           "mkdir": os.mkdir, "rename": os.rename,
           "exists": lambda p: "yes" if os.path.lexists(p) else "no",
           "listdir": lambda p: json.dumps(sorted(os.listdir(p)))}

    for case, op, *args in json.loads(sys.argv[1]):
        try:
            args = [a.format(**FDS) if isinstance(a, str) and "{" in a else a for a in args]
            value = OPS[op](*args)
            report = {"case": case, "result": "ok"}
            if isinstance(value, str):
                report["data"] = value[:80]
        except OSError as exc:
            report = {"case": case, "result": errno.errorcode.get(exc.errno, str(exc.errno))}
        print(json.dumps(report), flush=True)
    print("survived", flush=True)
    '''
)

OWN = "own content\n"
FROZEN = "frozen\n"
# Writes anywhere under frozen/ are refused.
FROZEN_TREE = deny_rule("frozen-tree", "file_write", 'target: "**/frozen/**"')


def _setup(workspace: Path) -> None:
    (workspace / "own.txt").write_text(OWN)
    (workspace / "frozen").mkdir()
    (workspace / "frozen" / "f").write_text(FROZEN)


def _run(
    sandbox: Sandbox, native: bool, policy: str, steps: list[list[str]]
) -> subprocess.CompletedProcess[str]:
    _setup(sandbox.workspace)
    return run_steps(sandbox, native, AGENT, "agent.py", policy, steps)


def _reference(
    root: Path, steps: list[list[str]], setup: Callable[[Path], None] = _setup
) -> dict[str, str]:
    """The same steps without agentsup: what the kernel answers the agent itself."""
    workspace = root / "reference"
    workspace.mkdir()
    setup(workspace)
    return _answers(run_steps_bare(workspace, AGENT, "agent.py", steps))


def _answers(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """What each step answered: its data when it had some, else its result."""
    return {case: r.get("data", r["result"]) for case, r in step_reports(result).items()}


def _survived(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert_survived(result)
    return _answers(result)


# -- own fds of a non-dumpable agent, named exactly ------------------------------------------


@both_paths
def test_own_fd_names_of_a_non_dumpable_agent_are_still_judged(
    sandbox: Sandbox, native: bool
) -> None:
    """Writes under frozen/ are refused.  The agent holds frozen/f read-only
    (allowed), own.txt and a pipe, marks itself non-dumpable, and reopens
    frozen/f for writing by /proc/self/fd/N, /dev/fd/N and
    /proc/thread-self/fd/N: the broker is refused at the agent's /proc
    entry, the supervisor takes the fd as root, the broker reopens it.

    Correct outcome: the object taken is judged by its real path: each
    write of frozen/f refused (EACCES, rule frozen-tree), its content
    unchanged; own.txt, the pipe and stdin, its own, reopen."""
    steps = [
        ["hold frozen", "hold", "fz", "frozen/f", "0"],
        ["hold own", "hold", "own", "own.txt", "0"],
        ["objects", "objects"],
        ["undumpable", "undumpable"],
        ["proc self fd", "write", "/proc/self/fd/{fz}", "x"],
        ["dev fd", "write", "/dev/fd/{fz}", "x"],
        ["thread-self fd", "write", "/proc/thread-self/fd/{fz}", "x"],
        ["own", "read", "/proc/self/fd/{own}"],
        ["own by dev fd", "read", "/dev/fd/{own}"],
        ["pipe", "write", "/proc/self/fd/{pipe_w}", "p"],
        ["pipe back", "read", "/dev/fd/{pipe_r}"],
        ["stdin", "read", "/dev/stdin"],
        ["eventfd", "read", "/dev/fd/{eventfd}"],
        ["socket", "read", "/proc/self/fd/{sock}"],
    ]
    result = _run(sandbox, native, sandbox.policy("frozen", FROZEN_TREE), steps)
    answers = _survived(result)
    assert answers == {
        "hold frozen": "ok",
        "hold own": "ok",
        "objects": "ok",
        "undumpable": "ok",
        "proc self fd": "EACCES",
        "dev fd": "EACCES",
        "thread-self fd": "EACCES",
        "own": OWN,
        "own by dev fd": OWN,
        "pipe": "ok",
        "pipe back": "<p>",
        "stdin": "<c>",
        "eventfd": "ENXIO",
        "socket": "ENXIO",
    }, answers
    assert (sandbox.workspace / "frozen" / "f").read_text() == FROZEN
    assert ("file_write", "frozen-tree") in sandbox.denials()


@both_paths
def test_a_dup2_race_on_the_named_fd_never_writes_a_refused_file(
    sandbox: Sandbox, native: bool
) -> None:
    """Writes under frozen/ are refused.  A non-dumpable agent's thread
    dup2s own.txt and frozen/f (read-only) onto fd 50 in turn, while the
    agent opens /proc/self/fd/50 for appending again and again for 1.5 s:
    between the broker's refusal and the supervisor's open of
    /proc/TID/fd/50, fd 50 changes.

    Correct outcome: whatever fd 50 is when the supervisor takes it is what
    is judged: own.txt written, frozen/f refused (EACCES; ENOENT in a gap
    of the native path), never changed."""
    steps = [
        ["hold frozen", "hold", "fz", "frozen/f", "0"],
        ["hold own", "hold", "own", "own.txt", "1"],
        ["undumpable", "undumpable"],
        ["race", "dup-race", "50", "own", "fz", "/proc/self/fd/50", "w", "1.5"],
    ]
    result = _run(sandbox, native, sandbox.policy("frozen", FROZEN_TREE), steps)
    answers = _survived(result)
    seen = set(json.loads(answers["race"]))
    assert "written" in seen and seen <= {"written", "EACCES", "ENOENT"}, seen
    assert (sandbox.workspace / "frozen" / "f").read_text() == FROZEN
    assert "raced" in (sandbox.workspace / "own.txt").read_text()


@both_paths
def test_own_fd_names_never_reach_the_brokers_objects(sandbox: Sandbox, native: bool) -> None:
    """The agent tries to hold something of the broker's (PID 1) and then
    reopen it by its own fd name once non-dumpable: O_PATH of /proc/1 and
    of the magic link /proc/1/fd/3 itself (O_NOFOLLOW; the kernel gives
    both to the agent, and the supervisor would take either as root); a
    thread with an fd table of its own (unshare(CLONE_FILES)), which
    /proc/self/fd and /proc/TID/fd tell apart.

    Correct outcome: the O_PATH opens refused (EACCES: the broker's entry),
    unshare refused (EPERM), so nothing of the broker's is ever named;
    /proc/self/fd/3 is whatever the agent's own fd 3 is, never the
    broker's (its listener): ENOENT or the agent's."""
    steps = [
        ["proc1", "opath", "proc1", "/proc/1"],
        ["proc1 fd3", "opath", "p1fd", "/proc/1/fd/3", "1"],
        ["hold own", "hold", "own", "own.txt", "0"],
        ["undumpable", "undumpable"],
        ["unshared", "thread-unshared", "{own}", "own", "/proc/self/fd/{own}"],
        ["fd 3", "readlink", "/proc/self/fd/3"],
        ["fd 3 open", "read", "/proc/self/fd/3"],
    ]
    result = _run(sandbox, native, "strict", steps)
    answers = _survived(result)
    assert answers["proc1"] == answers["proc1 fd3"] == "EACCES", answers
    assert answers["unshared"] == "unshare EPERM", answers
    if answers["fd 3"] == "ENOENT":
        assert answers["fd 3 open"] == "ENOENT", answers
    else:
        assert answers["fd 3 open"] == OWN, answers  # (fd 3: the agent's own.txt)


# -- mknod and mknodat ---------------------------------------------------------------------


@both_paths
def test_mknod_modes_and_kinds_are_the_kernels_or_safer(sandbox: Sandbox, native: bool) -> None:
    """mknod in the workspace with umask 0: a regular file 0666, one
    setuid|setgid 06777, one with no file type (a regular file), a socket;
    a symlink type and a type of all bits (EINVAL to the kernel); then
    umask 077 and a regular file 0666 (the umask the agent has now, not a
    remembered one); mknod over a dangling symlink into frozen/ (EEXIST:
    mknod never follows).

    Correct outcome: the kernel's modes, except that setuid and setgid are
    never set (as for open(O_CREAT)); nothing under frozen/."""
    steps = [
        ["umask 0", "umask", "0"],
        ["regular", "mknod", "a", "100666"],
        ["mode a", "mode", "a"],
        ["setid", "mknod", "b", "106777"],
        ["mode b", "mode", "b"],
        ["no type", "mknod", "c", "0644"],
        ["mode c", "mode", "c"],
        ["socket", "mknod", "d", "140644"],
        ["mode d", "mode", "d"],
        ["symlink type", "mknod", "e", "120777"],
        ["all type bits", "mknod", "f", "170777"],
        ["umask 077", "umask", "077"],
        ["after umask", "mknod", "g", "100666"],
        ["mode g", "mode", "g"],
        ["dangling", "symlink", "frozen/x.cfg", "dl"],
        ["over dangling", "mknod", "dl", "100644"],
    ]
    result = _run(sandbox, native, sandbox.policy("frozen", FROZEN_TREE), steps)
    answers = _survived(result)
    assert answers == {
        "umask 0": "ok",
        "regular": "ok",
        "mode a": oct(stat.S_IFREG | 0o666),
        "setid": "ok",
        "mode b": oct(stat.S_IFREG | 0o777),
        "no type": "ok",
        "mode c": oct(stat.S_IFREG | 0o644),
        "socket": "ok",
        "mode d": oct(stat.S_IFSOCK | 0o644),
        "symlink type": "EINVAL",
        "all type bits": "EINVAL",
        "umask 077": "ok",
        "after umask": "ok",
        "mode g": oct(stat.S_IFREG | 0o600),
        "dangling": "ok",
        "over dangling": "EEXIST",
    }, answers
    assert sorted(p.name for p in (sandbox.workspace / "frozen").iterdir()) == ["f"]


@both_paths
def test_mknodat_through_dirfds_and_own_fd_names_is_judged(sandbox: Sandbox, native: bool) -> None:
    """Writes under frozen/ are refused.  The agent holds a directory fd D
    of frozen/ and makes frozen/NAME with mknodat(D, NAME), with
    mknod(/proc/self/fd/D/NAME) and mknod(/dev/fd/D/NAME) (a FIFO), then,
    non-dumpable, mknod(/proc/self/fd/D/NAME) again and mknod of the exact
    name /proc/self/fd/D.

    Correct outcome: each refused (EACCES; the exact own-fd name is there:
    EEXIST); nothing made under frozen/."""
    steps = [
        ["hold dir", "hold", "fzd", "frozen", "65536"],
        ["dirfd", "mknod", "y", "100644", "0", "fzd"],
        ["proc self fd", "mknod", "/proc/self/fd/{fzd}/z", "100644"],
        ["dev fd fifo", "mknod", "/dev/fd/{fzd}/w", "10644"],
        ["undumpable", "undumpable"],
        ["non-dumpable", "mknod", "/proc/self/fd/{fzd}/v", "100644"],
        ["exact own fd", "mknod", "/proc/self/fd/{fzd}", "100644"],
    ]
    result = _run(sandbox, native, sandbox.policy("frozen", FROZEN_TREE), steps)
    answers = _survived(result)
    assert answers == {
        "hold dir": "ok",
        "dirfd": "EACCES",
        "proc self fd": "EACCES",
        "dev fd fifo": "EACCES",
        "undumpable": "ok",
        "non-dumpable": "EACCES",
        "exact own fd": "EEXIST",
    }, answers
    assert sorted(p.name for p in (sandbox.workspace / "frozen").iterdir()) == ["f"]
    assert ("file_write", "frozen-tree") in sandbox.denials()


@both_paths
def test_mknod_answers_odd_arguments_as_the_kernel(
    tmp_path: Path, sandbox: Sandbox, native: bool
) -> None:
    """mknod(S_IFDIR) is EPERM to the kernel (`may_mknod`), not EINVAL.  The
    mknod and mknodat syscalls take dev as a 32-bit unsigned int: a caller
    whose dev register holds garbage above bit 31 (a raw syscall with no
    dev, as for a FIFO) gets its file.  (agentsup once answered EINVAL to
    both: every other kind, and all 64 bits passed to glibc's mknodat.)
    Correct outcome: as without agentsup."""
    steps = [
        ["directory type", "mknod", "d", "40755"],
        ["regular, high dev", "mknod", "k", "100644", "0x100000000"],
        ["fifo, high dev", "mknod", "l", "10644", "0xffffffff00000000"],
    ]
    result = _run(sandbox, native, "strict", steps)
    answers = _survived(result)
    expected = _reference(tmp_path, steps)
    assert expected == {
        "directory type": "EPERM",
        "regular, high dev": "ok",
        "fifo, high dev": "ok",
    }, expected
    assert answers == expected


# -- Landlock is ENOSYS in the agent -------------------------------------------------------


@both_paths
def test_ordinary_tools_run_with_landlock_enosys(sandbox: Sandbox, native: bool) -> None:
    """The Landlock syscalls fail with ENOSYS in the agent (a nested domain
    would bind only the agent, never its broker).  Ordinary tools never
    use them, and a program probing for Landlock is told it is absent.
    Correct outcome: cp -a, tar, find and mkfifo work; the probe says ENOSYS."""
    script = (
        "set -e; mkdir -p t/d; echo hi > t/d/f; cp -a t t2; tar czf t.tgz t2; "
        "tar xzf t.tgz -C t; find t -type f | sort; mkfifo ff; test -p ff; "
        "python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); "
        "print(l.syscall(444, None, 0, 1), ctypes.get_errno())'"
    )
    result = subprocess.run(
        sandbox.command("sh", "-c", script),
        env={**sandbox.env, **fastpath_env(native)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=sandbox.workspace,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["t/d/f", "t/t2/d/f", "-1", "38"], result.stdout
