"""Red-team tests: /proc/self inside names the broker resolves, and moves.

The broker resolves the agent's names with RESOLVE_NO_MAGICLINKS; a name
that meets a magic link, or lands in the broker's own /proc entry, is
walked a component at a time as the agent's (`agentpath.open_as_agent`),
and an fd reached through a symlink to the agent's own /proc/self/fd/N is
`held` (no path rule for a pipe or socket).  Moves: from a LIST to the
move the broker's native path answers nothing (`Broker.quiesced`), and a
name is moved only if it still holds the object judged.

The attacking agent tries to get the broker to hand over its own objects
(its seccomp listener, channel, status pipe, pidfd, /proc entry), to get
another process's pipe with no path rule, to race symlink swaps and deep
chains, to escape its own Landlock domain, to create files the policy
refuses, and to stall the supervisor through a move.  Where agentsup's
answer should be the kernel's, the agent is also run without agentsup (the
reference) and the two compared.

Every attack runs on the broker's native path and on the Python path alone
(AGENTSUP_FASTPATH=0).  Holes still open are marked xfail(strict): the
test states the correct outcome and fails until the hole is closed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, deny_rule
from steps import assert_survived, run_steps, run_steps_bare, step_reports

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

# The attacking agent: `python3 walker.py STEPS_JSON`, each step [case, op,
# *args], paths relative to its cwd (the workspace).  An argument with
# "{name}" in it is formatted with the fds and pids held so far.  Prints
# {"case": ..., "result": "ok" | ERRNO | "exit N", "data": ...} lines, then
# "survived".
AGENT = textwrap.dedent(
    r'''
    import atexit, ctypes, errno, json, os, signal, stat, struct, subprocess, sys
    import threading, time

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    WS = os.path.dirname(os.path.abspath(__file__))
    os.chdir(WS)
    FDS = {"pid": os.getpid()}
    CHILDREN = []
    SYS_OPENAT2, SYS_LL_CREATE, SYS_LL_RESTRICT = 437, 444, 446
    FLAGS = {"ro": os.O_RDONLY, "wo": os.O_WRONLY, "dir": os.O_DIRECTORY,
             "nofollow": os.O_NOFOLLOW, "nonblock": os.O_NONBLOCK, "path": os.O_PATH}


    @atexit.register
    def _reap():
        for pid in CHILDREN:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


    def check(value):
        if value < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return value


    def flags_of(names):
        value = 0
        for name in names.split(","):
            if name:
                value |= FLAGS[name]
        return value


    def content(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            return "<dir>"
        return os.read(fd, 4096).decode(errors="replace")


    def read(path, flags=""):
        fd = os.open(path, os.O_RDONLY | flags_of(flags))
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
        FDS[name] = os.open(path, flags_of(flags))


    def dup(name, number):
        os.dup2(FDS[name], int(number))
        FDS[name] = int(number)


    def pipe(name):
        FDS[name + "_r"], FDS[name + "_w"] = os.pipe()


    def child_pipe(name):
        """A child process with a pipe of its own (the parent does not hold it)."""
        told_r, told_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            r, w = os.pipe()
            os.write(told_w, f"{r} {w}".encode())
            time.sleep(30)
            os._exit(0)
        os.close(told_w)
        r, w = map(int, os.read(told_r, 64).split())
        os.close(told_r)
        CHILDREN.append(pid)
        FDS[name + "_pid"], FDS[name + "_r"], FDS[name + "_w"] = pid, r, w


    def openat2_fd(path, flags, resolve):
        how = struct.pack("QQQ", flags, 0, resolve)
        return check(libc.syscall(SYS_OPENAT2, -100, os.fsencode(path), how, len(how)))


    def openat2(path, resolve):
        fd = openat2_fd(path, os.O_RDONLY, int(resolve, 16))
        try:
            return content(fd)
        finally:
            os.close(fd)


    def create(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


    def mknod(path, kind):
        mode = {"file": stat.S_IFREG, "fifo": stat.S_IFIFO}[kind]
        os.mknod(path, mode | 0o755)


    def landlock_nothing():
        """Restrict this process itself: no file may be read or written."""
        handled = (1 << 1) | (1 << 2) | (1 << 3)  # WRITE_FILE, READ_FILE, READ_DIR
        attr = struct.pack("QQQ", handled, 0, 0)
        ruleset = check(libc.syscall(SYS_LL_CREATE, attr, 8, 0))
        check(libc.prctl(38, 1, 0, 0, 0))  # PR_SET_NO_NEW_PRIVS
        check(libc.syscall(SYS_LL_RESTRICT, ruleset, 0))


    def undumpable():
        check(libc.prctl(4, 0, 0, 0, 0))  # PR_SET_DUMPABLE: 0, as ssh-agent does


    def pid_line(path):
        return [line for line in read(path).splitlines() if line.startswith("Pid:")][0]


    def chain(name, target, length):
        """name0 -> target, nameI -> name(I-1): `length` symlinks."""
        os.symlink(target, f"{name}0")
        for i in range(1, int(length)):
            os.symlink(f"{name}{i - 1}", f"{name}{i}")


    def broker_probe(routes):
        """Every route to the broker's fds 0..24 and its /proc entry, opened for
        reading and for writing: what was opened, and whatever was not the
        agent's own (a socket, anon inode, pidfd, another pipe, /proc/1/...)."""
        own = set()
        for fd in (0, 1, 2):
            st = os.fstat(fd)
            own.add((st.st_dev, st.st_ino))
        os.symlink("/proc/self/cwd", "probe-here")
        os.symlink("/proc/1", "probe-one")
        for n in range(25):
            os.symlink(f"/proc/self/fd/{n}", f"probe-self-{n}")
            os.symlink(f"/proc/1/fd/{n}", f"probe-one-{n}")
        names = []
        for n in range(25):
            names += [
                ("proc1", f"/proc/1/fd/{n}"),
                ("proc1", f"/proc/1/task/1/fd/{n}"),
                ("root", f"/proc/self/root/proc/1/fd/{n}"),
                ("dotdot", f"/proc/{os.getpid()}/../1/fd/{n}"),
                ("under-proc", f"/proc/self/cwd/probe-self-{n}"),
                ("under-proc", f"/proc/thread-self/cwd/probe-self-{n}"),
                ("cached", f"probe-self-{n}"),
                ("link", f"probe-one-{n}"),
                ("link", f"probe-one/fd/{n}"),
                ("cwd-in-broker", f"fd/{n}"),
                ("cwd-in-broker", f"{WS}/probe-here/fd/{n}"),
            ]
        for what in ("environ", "mem", "cwd/.", "root/.", "maps", "status"):
            names += [("proc1", f"/proc/1/{what}"), ("link", f"probe-one/{what}"),
                      ("cwd-in-broker", what), ("cwd-in-broker", f"{WS}/probe-here/{what}")]
        opened, leaks = 0, []
        for route, path in names:
            if route not in routes:
                continue
            if route == "cwd-in-broker":
                os.chdir("/proc/1")
            try:
                for how in (os.O_RDONLY, os.O_WRONLY):
                    try:
                        if route == "cached":  # openat2 with RESOLVE_CACHED only
                            fd = openat2_fd(path, how | os.O_NONBLOCK | os.O_NOCTTY, 0x20)
                        else:
                            fd = os.open(path, how | os.O_NONBLOCK | os.O_NOCTTY)
                    except OSError:
                        continue
                    opened += 1
                    st = os.fstat(fd)
                    where = os.readlink(f"/proc/self/fd/{fd}")
                    os.close(fd)
                    plain = stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
                    if (st.st_dev, st.st_ino) in own or (plain and not where.startswith("/proc/1")):
                        continue
                    leaks.append([path, how, where])
            finally:
                os.chdir(WS)
        return json.dumps({"opened": opened, "leaks": leaks})


    def flip_race(link, path, first, second, seconds):
        """Open `path` again and again while a thread points symlink `link`
        at `first` and `second` in turn: every answer seen."""
        stop = threading.Event()

        def flipper():
            while not stop.is_set():
                for target in (first, second):
                    try:
                        os.symlink(target, link + ".new")
                        os.rename(link + ".new", link)
                    except OSError:
                        pass

        thread = threading.Thread(target=flipper)
        thread.start()
        seen = {}
        deadline = time.monotonic() + float(seconds)
        try:
            while time.monotonic() < deadline:
                try:
                    answer = read(path)
                except OSError as exc:
                    answer = errno.errorcode.get(exc.errno, "?")
                seen[answer] = seen.get(answer, 0) + 1
        finally:
            stop.set()
            thread.join()
        return json.dumps(seen)


    def stall_probe(moves):
        """The given renames (each refused or failing) while a second thread
        opens a file in a loop: the longest the second thread waited, and
        what each rename answered."""
        stop = threading.Event()
        longest = [0.0]

        def prober():
            while not stop.is_set():
                started = time.monotonic()
                os.close(os.open("probe.txt", os.O_RDONLY))
                longest[0] = max(longest[0], time.monotonic() - started)

        thread = threading.Thread(target=prober)
        thread.start()
        answers = []
        try:
            for old, new in moves:
                try:
                    os.rename(old, new)
                    answers.append("ok")
                except OSError as exc:
                    answers.append(errno.errorcode.get(exc.errno, "?"))
                time.sleep(0.2)
        finally:
            stop.set()
            thread.join()
        return json.dumps({"longest": longest[0], "answers": answers})


    def atomic_replace(writers, rounds):
        """`writers` threads each write tmp.K and rename it over `target`: the errnos seen."""
        errors = []

        def writer(k):
            for i in range(int(rounds)):
                tmp = f"tmp.{k}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, str(i).encode())
                os.close(fd)
                try:
                    os.rename(tmp, "target")
                except OSError as exc:
                    errors.append(errno.errorcode.get(exc.errno, "?"))

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(int(writers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return json.dumps(sorted(set(errors)))


    def run(*argv):
        env = dict(os.environ, GIT_AUTHOR_NAME="a", GIT_AUTHOR_EMAIL="a@example.org",
                   GIT_COMMITTER_NAME="a", GIT_COMMITTER_EMAIL="a@example.org",
                   PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1")
        done = subprocess.run(list(argv), capture_output=True, text=True, errors="replace",
                              env=env)
        if done.returncode:
            raise SystemError(f"exit {done.returncode}", (done.stdout + done.stderr)[-600:])
        return (done.stdout + done.stderr)[-400:]


    OPS = {
        "read": read,
        "write": write,
        "hold": hold,
        "dup": dup,
        "pipe": pipe,
        "child-pipe": child_pipe,
        "os-read": lambda name: os.read(FDS[name], 4096).decode(errors="replace"),
        "symlink": os.symlink,
        "rename": os.rename,
        "mkdir": os.mkdir,
        "chdir": os.chdir,
        "openat2": openat2,
        "create": create,
        "mknod": mknod,
        "landlock": landlock_nothing,
        "undumpable": undumpable,
        "pid-line": pid_line,
        "chain": chain,
        "broker-probe": lambda *routes: broker_probe(set(routes)),
        "flip-race": flip_race,
        "stall-probe": lambda *moves: stall_probe([m.split(">") for m in moves]),
        "atomic-replace": atomic_replace,
        "exists": lambda p: "yes" if os.path.lexists(p) else "no",
        "run": run,
    }

    for case, op, *args in json.loads(sys.argv[1]):
        try:
            args = [a.format(**FDS) if isinstance(a, str) and "{" in a else a for a in args]
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
OWN = "own content\n"


def _run(
    sandbox: Sandbox, native: bool, policy: str, steps: list[list[str]], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return run_steps(sandbox, native, AGENT, "walker.py", policy, steps, timeout)


def _reference(
    root: Path, setup: Callable[[Path], None], steps: list[list[str]]
) -> dict[str, dict[str, str]]:
    """The same steps without agentsup, in a workspace of their own made by
    `setup`: what the kernel answers the agent itself."""
    workspace = root / "reference"
    workspace.mkdir()
    setup(workspace)
    return step_reports(run_steps_bare(workspace, AGENT, "walker.py", steps))


def _outcome(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {case: r["result"] for case, r in step_reports(result).items()}


def _answers(reports: dict[str, dict[str, str]]) -> dict[str, str]:
    """What each step answered: its data when it had some, else its result."""
    return {case: r.get("data", r["result"]) for case, r in reports.items()}


def _own_file(workspace: Path) -> None:
    (workspace / "own.txt").write_text(OWN)


# -- the broker's own objects ------------------------------------------------------------


@both_paths
def test_the_broker_never_hands_over_its_own_objects(sandbox: Sandbox, native: bool) -> None:
    """The broker is PID 1 of the agent's namespace and may open its own
    /proc entry without the ptrace check the agent gets.  The agent tries
    every route to the broker's fds 0..24 (its seccomp listener, channel,
    forward socket, status pipe, pidfd, /proc/1/fd directory) and to
    /proc/1/{environ,mem,maps,status,cwd,root}, opened for reading and for
    writing:

    /proc/1/fd/N and /proc/1/task/1/fd/N named directly; through
    /proc/self/root/proc/1 and /proc/2/../1 (names under /proc are opened
    as they are); /proc/self/cwd/L with L -> /proc/self/fd/N (the broker's
    self, past the first components); L opened by openat2 with
    RESOLVE_CACHED alone (the broker's self too); symlinks to /proc/1/fd/N
    and to /proc/1 (walked as the agent's: the broker's entry is never entered);
    with the agent's cwd in /proc/1 itself, relative names and a symlink to
    /proc/self/cwd (the walk follows the agent's cwd into the broker's
    entry).

    Correct outcome: nothing opened is the broker's: every fd the agent
    gets is a file or directory outside /proc/1 (judged by its path), or
    /dev/null or the stdout/stderr pipe it holds itself."""
    routes = ["proc1", "root", "dotdot", "under-proc", "cached", "link", "cwd-in-broker"]
    steps = [["probe", "broker-probe", *routes]]
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    report = step_reports(result)["probe"]
    assert report["result"] == "ok", report
    probe = json.loads(report["data"])
    assert probe["leaks"] == [], probe
    # The routes were taken (the agent's own stdio and plain paths open).
    assert probe["opened"] > 0, probe


# -- held: the agent's own fd, no path rule ------------------------------------------------


NO_PIPES = textwrap.dedent(
    """
    name: no-pipes
    extends: [strict]
    rules:
      - id: no-pipes
        actions: [file_read, file_write]
        pattern: '^pipe:'
        decision: deny
        priority: 1
        on_violation: block
      - id: frozen-tree
        actions: [file_write]
        target: "{workspace}/frozen/**"
        decision: deny
        priority: 1
        on_violation: block
    """
)


def _frozen(workspace: Path) -> None:
    (workspace / "frozen").mkdir()
    (workspace / "frozen" / "f").write_text("frozen\n")


@both_paths
def test_held_is_only_ever_the_agents_own_fd(sandbox: Sandbox, native: bool) -> None:
    """Pipes are refused by a path rule (`^pipe:`), and writes under
    frozen/.  A pipe the agent holds, reached through a symlink to
    /proc/self/fd/N, is its own (`held`): no rule applies.  The agent then
    tries to make `held` true for what is not its own fd: a child's pipe
    through a symlink to /proc/CHILD/fd/N and named directly; a read-only
    fd of frozen/f (a regular file) reopened for writing through a symlink
    to its /proc/self/fd/N.

    Correct outcome: its own pipe works through the link; the child's pipe
    is refused (EACCES, rule no-pipes) both ways; frozen/f is judged as the
    file and refused writing (EACCES), and keeps its content."""
    _frozen(sandbox.workspace)
    steps = [
        ["pipe", "pipe", "own"],
        ["own link", "symlink", "/proc/self/fd/{own_w}", "mine"],
        ["own pipe through link", "write", "mine", "through the link\n"],
        ["own pipe read", "os-read", "own_r"],
        ["child", "child-pipe", "kid"],
        ["child link", "symlink", "/proc/{kid_pid}/fd/{kid_w}", "theirs"],
        ["child pipe through link", "write", "theirs", "x"],
        ["child pipe direct", "write", "/proc/{kid_pid}/fd/{kid_w}", "x"],
        ["hold file", "hold", "ro", "frozen/f", "ro"],
        ["file link", "symlink", "/proc/self/fd/{ro}", "filefd"],
        ["file through link, writing", "write", "filefd", "changed\n"],
        ["file through link, reading", "read", "filefd"],
    ]
    result = _run(sandbox, native, sandbox.policy("no-pipes", NO_PIPES), steps)
    assert_survived(result)
    answers = _answers(step_reports(result))
    assert answers["own pipe through link"] == "ok", answers
    assert answers["own pipe read"] == "through the link\n", answers
    assert answers["child pipe through link"] == "EACCES", answers
    assert answers["child pipe direct"] == "EACCES", answers
    assert answers["file through link, writing"] == "EACCES", answers
    assert answers["file through link, reading"] == "frozen\n", answers
    assert (sandbox.workspace / "frozen" / "f").read_text() == "frozen\n"
    assert ("file_write", "no-pipes") in sandbox.denials()
    assert ("file_write", "frozen-tree") in sandbox.denials()


@both_paths
def test_a_name_starting_with_an_own_fd_is_not_the_agents_own_object(
    sandbox: Sandbox, native: bool
) -> None:
    """Pipes are refused by a path rule (`^pipe:`).  A child process holds a
    pipe of its own.  The agent holds a directory fd D of /proc and names
    /proc/self/fd/D/CHILD/fd/W (and /dev/fd/D/CHILD/fd/W): the name starts
    like one of its own fds, but D is a directory and the name goes on, to
    the child's pipe.  Not reached through the agent's own fd/N (`held` is
    False), so the pipe rule applies.

    Found: `own_object` in `Mediator._open` is also true when
    `_names_own_fd(raw)` (a prefix test of the raw name): the child's pipe
    is written and read with no rule asked.  Correct outcome: EACCES, rule
    no-pipes, nothing injected into the child's pipe."""
    steps = [
        ["child", "child-pipe", "kid"],
        ["proc dir", "hold", "proc", "/proc", "ro,dir"],
        ["through /proc/self/fd", "write", "/proc/self/fd/{proc}/{kid_pid}/fd/{kid_w}", "in\n"],
        ["through /dev/fd", "write", "/dev/fd/{proc}/{kid_pid}/fd/{kid_w}", "in\n"],
        ["read it back", "read", "/proc/self/fd/{proc}/{kid_pid}/fd/{kid_r}", "nonblock"],
    ]
    result = _run(sandbox, native, sandbox.policy("no-pipes", NO_PIPES), steps)
    assert_survived(result)
    outcome = _outcome(result)
    assert outcome == {
        "child": "ok",
        "proc dir": "ok",
        "through /proc/self/fd": "EACCES",
        "through /dev/fd": "EACCES",
        "read it back": "EACCES",
    }, _answers(step_reports(result))


# -- the agent's own /proc entry, as the kernel would give it ------------------------------


@both_paths
def test_a_link_to_an_own_fd_the_broker_does_not_hold_opens(
    tmp_path: Path, sandbox: Sandbox, native: bool
) -> None:
    """The agent holds own.txt at fd 40 (and its cwd at fd 41) and makes
    symlinks to /proc/self/fd/40, /dev/fd/40 and /proc/self/fd (a
    directory, then fd/40 beneath it), and opens them: a correct program,
    which works without agentsup.

    The broker resolves first with RESOLVE_NO_MAGICLINKS, as itself: its
    /proc/self/fd/40 does not exist, ENOENT comes before any magic link,
    and `_open_at` falls back to the agent's walk only on ELOOP.  (The
    same with fd numbers the broker happens to hold works: those are magic
    links, ELOOP.)  Correct outcome: as without agentsup, own.txt's
    content each time."""
    steps = [
        ["hold", "hold", "own", "own.txt", "ro"],
        ["dup", "dup", "own", "40"],
        ["link", "symlink", "/proc/self/fd/40", "hi"],
        ["dev fd link", "symlink", "/dev/fd/40", "dev-hi"],
        ["dir link", "symlink", "/proc/self/fd", "fds"],
        ["through link", "read", "hi"],
        ["through dev fd link", "read", "dev-hi"],
        ["through dir link", "read", "fds/40"],
    ]
    _own_file(sandbox.workspace)
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    expected = _answers(_reference(tmp_path, _own_file, steps))
    assert expected["through link"] == OWN, expected
    assert _answers(step_reports(result)) == expected


@both_paths
def test_proc_self_past_the_start_of_a_name_under_proc_is_the_agents(
    tmp_path: Path, sandbox: Sandbox, native: bool
) -> None:
    """Symlinks mine -> /proc/self/fd/N (own.txt), status ->
    /proc/thread-self/status and here -> /proc/self/cwd, reached by names
    that start in /proc: /proc/self/cwd/mine, /proc/self/cwd/status,
    /proc/self/root/WORKSPACE/here/own.txt; and /proc/2/../self/status.

    The supervisor rewrites the leading /proc/self to the agent's
    /proc/PID, and the broker opens such a name as it is: every /proc/self
    past that is the broker's own (its fd N is its seccomp listener:
    ENXIO; its status: EACCES, as the broker's; its cwd: where `agentsup
    run` was started).  Correct outcome: as without agentsup, the agent's
    own file, status and cwd."""
    ws = sandbox.workspace
    steps = [
        ["own pid", "pid-line", "/proc/self/status"],
        ["hold", "hold", "own", "own.txt", "ro"],
        ["link", "symlink", "/proc/self/fd/{own}", "mine"],
        ["status link", "symlink", "/proc/thread-self/status", "status"],
        ["cwd link", "symlink", "/proc/self/cwd", "here"],
        ["own fd under proc", "read", "/proc/self/cwd/mine"],
        ["status under proc", "pid-line", "/proc/self/cwd/status"],
        ["cwd under proc", "read", f"/proc/self/root{ws}/here/own.txt"],
        ["dotdot self", "pid-line", "/proc/{pid}/../self/status"],
    ]
    _own_file(ws)
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    expected = _answers(_reference(tmp_path, _own_file, steps))
    assert expected["own fd under proc"] == OWN, expected
    assert expected["status under proc"] == expected["dotdot self"] == expected["own pid"]
    answers = _answers(step_reports(result))
    # (The reference's workspace has another path, and its process another pid.)
    expected["cwd under proc"] = OWN
    for case in ("own pid", "status under proc", "dotdot self"):
        expected[case] = answers["own pid"]
    assert answers == expected


@both_paths
def test_openat2_resolve_flags_never_make_proc_self_the_brokers(
    tmp_path: Path, sandbox: Sandbox, native: bool
) -> None:
    """openat2 of `status` -> /proc/thread-self/status with RESOLVE_CACHED
    (0x20: no magic link barred, only a warm dcache asked for): the broker
    resolves with the agent's RESOLVE_* flags alone, and /proc/thread-self
    is its own (refused: EACCES, the broker's entry).  Correct outcome: as
    without agentsup, the agent's own status."""
    steps = [
        ["status link", "symlink", "/proc/thread-self/status", "status"],
        ["warm", "pid-line", "status"],
        ["cached", "openat2", "status", "0x20"],
    ]
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    answers = _answers(step_reports(result))
    # The kernel itself may say EAGAIN (RESOLVE_CACHED: /proc entries are not
    # always resolvable from the dcache alone); never the broker's entry.
    expected = _answers(_reference(tmp_path, lambda _ws: None, steps))
    assert expected["cached"] == "EAGAIN" or expected["cached"].startswith("Name:"), expected
    assert answers["cached"].startswith("Name:"), answers
    assert [line for line in answers["cached"].splitlines() if line.startswith("Pid:")] == [
        answers["warm"]
    ], answers


@both_paths
def test_the_walk_keeps_the_kernels_trailing_slash_and_dot(
    tmp_path: Path, sandbox: Sandbox, native: bool
) -> None:
    """here -> /proc/self/cwd and mine -> /proc/self/fd/N (a file).

    `here/.` opened O_DIRECTORY|O_NOFOLLOW is the agent's cwd to the
    kernel (the "." makes `here` a directory on the way, followed); the
    walk drops ".", and `here` becomes the last component, not followed:
    ENOTDIR.  `mine/` is ENOTDIR to the kernel (a file is no directory);
    the walk, at a magic link, forgets the slash and opens the file.
    Correct outcome: the kernel's answers."""
    steps = [
        ["hold", "hold", "own", "own.txt", "ro"],
        ["cwd link", "symlink", "/proc/self/cwd", "here"],
        ["fd link", "symlink", "/proc/self/fd/{own}", "mine"],
        ["dot", "read", "here/.", "dir,nofollow"],
        ["slash", "read", "mine/"],
    ]
    _own_file(sandbox.workspace)
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    expected = _answers(_reference(tmp_path, _own_file, steps))
    assert expected["dot"] == "<dir>" and expected["slash"] == "ENOTDIR", expected
    assert _answers(step_reports(result)) == expected


def _assert_as_without_agentsup(
    tmp_path: Path, sandbox: Sandbox, native: bool, steps: list[list[str]]
) -> None:
    """Each step's result under agentsup (strict) is the kernel's alone."""
    _own_file(sandbox.workspace)
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    outcome = _outcome(result)
    expected = _reference(tmp_path, _own_file, steps)
    assert {case: r["result"] for case, r in expected.items()} == outcome, (expected, outcome)


@both_paths
def test_a_non_dumpable_agent_still_reaches_its_own_fds_by_name(
    tmp_path: Path, sandbox: Sandbox, native: bool
) -> None:
    """The agent marks itself non-dumpable (prctl(PR_SET_DUMPABLE, 0), as
    ssh-agent and gpg-agent do, and as any exec of an unreadable binary
    does), then opens its own fd through /proc/self/fd/N and /dev/fd/N: a
    process may always reach its own.  The broker, another process, is
    refused at /proc/PID; for a name that is exactly an fd of the agent's,
    the supervisor takes what the fd names and the broker opens that.
    Correct outcome: as without agentsup."""
    steps = [
        ["hold", "hold", "own", "own.txt", "ro"],
        ["undumpable", "undumpable"],
        ["proc self fd", "read", "/proc/self/fd/{own}"],
        ["dev fd", "read", "/dev/fd/{own}"],
        ["missing fd", "read", "/dev/fd/99"],
    ]
    _assert_as_without_agentsup(tmp_path, sandbox, native, steps)


@both_paths
@pytest.mark.xfail(
    strict=True,
    reason="open divergence: a non-dumpable agent's own fds through a symlink, and its "
    "/proc/self/environ, are reached by the broker as another process (EACCES)",
)
def test_a_non_dumpable_agent_still_reaches_its_own_fds_through_a_link(
    tmp_path: Path, sandbox: Sandbox, native: bool
) -> None:
    """As above, through a symlink mine -> /proc/self/fd/N, and
    /proc/self/environ.  The walk follows the agent's magic link from the
    broker, which a non-dumpable process closes to anyone without
    CAP_SYS_PTRACE.  Correct outcome: as without agentsup."""
    steps = [
        ["hold", "hold", "own", "own.txt", "ro"],
        ["link", "symlink", "/proc/self/fd/{own}", "mine"],
        ["undumpable", "undumpable"],
        ["through link", "read", "mine"],
        ["environ", "read", "/proc/self/environ"],
    ]
    _assert_as_without_agentsup(tmp_path, sandbox, native, steps)


# -- the agent's own Landlock domain -------------------------------------------------------


@both_paths
def test_the_agents_own_landlock_domain_holds_through_the_broker(
    tmp_path: Path, sandbox: Sandbox, native: bool
) -> None:
    """The agent (or a sandboxing tool it runs for untrusted code) restricts
    itself with Landlock: a new domain handling READ_FILE, READ_DIR and
    WRITE_FILE with no rule, so it may read and write nothing.  Then it
    reads own.txt, /etc/hostname and lists the workspace, and writes
    own.txt.

    Without agentsup each is EACCES.  The broker, which does the open, has
    the Landlock domain the agent had when it started, not the one it
    nested since.  Correct outcome: EACCES each time (or the restriction
    itself refused, so the program knows it is not sandboxed), own.txt
    unchanged."""
    steps = [
        ["restrict", "landlock"],
        ["read own", "read", "own.txt"],
        ["read system", "read", "/etc/hostname"],
        ["list", "read", ".", "dir"],
        ["write own", "write", "own.txt", "overwritten\n"],
    ]
    _own_file(sandbox.workspace)
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    outcome = _outcome(result)
    expected = {case: r["result"] for case, r in _reference(tmp_path, _own_file, steps).items()}
    assert expected == {
        "restrict": "ok",
        "read own": "EACCES",
        "read system": "EACCES",
        "list": "EACCES",
        "write own": "EACCES",
    }, expected
    if outcome.get("restrict") == "ok":
        assert outcome == expected, outcome
        assert (sandbox.workspace / "own.txt").read_text() == OWN
    else:  # refused: the program knows it is not sandboxed (and may carry on)
        assert outcome["restrict"] == "ENOSYS", outcome


# -- races, deep chains, long names --------------------------------------------------------


UNREAD_PRIVATE = deny_rule("unread-private", "file_read", 'target: "**/private/*"')


def _private(workspace: Path) -> None:
    _own_file(workspace)
    (workspace / "private").mkdir()
    (workspace / "private" / "data").write_text(SECRET)


@both_paths
def test_symlink_swaps_and_deep_chains_never_reach_a_refused_file(
    sandbox: Sandbox, native: bool
) -> None:
    """Reads of `**/private/*` are refused.  A thread swaps `x` between
    -> /proc/self/fd/N (own.txt, which the walk follows) and
    -> private/data, and `d` between -> /proc/self/fd/D (a directory fd of
    private/) and a plain directory, while the agent opens x and d/data
    again and again for 1.5 s each: the walk's component-at-a-time lookups
    race the swap.  Then a chain of 30 symlinks ending at /proc/self/fd/N,
    one of 45 (past the kernel's 40), and one of 30 ending at
    /proc/self/fd/D whose last step is `data`.

    Correct outcome: the secret never read (refused: EACCES, or ENOENT in
    a swap's gap), own.txt read through x; the 30-link chain reads own.txt,
    the 45-link chain is ELOOP, the chain into private/ is refused; the
    broker answers throughout (the agent survives)."""
    ws = sandbox.workspace
    _private(ws)
    (ws / "plain").mkdir()
    (ws / "plain" / "data").write_text("plain\n")
    steps = [
        ["hold", "hold", "own", "own.txt", "ro"],
        ["hold private", "hold", "priv", "private", "ro,dir"],
        ["x", "symlink", "own.txt", "x"],
        ["d", "symlink", "plain", "d"],
        ["race file", "flip-race", "x", "x", "/proc/self/fd/{own}", "private/data", "1.5"],
        ["race dir", "flip-race", "d", "d/data", "/proc/self/fd/{priv}", "plain", "1.5"],
        ["chain 30", "chain", "a", "/proc/self/fd/{own}", "30"],
        ["chain 45", "chain", "b", "/proc/self/fd/{own}", "45"],
        ["chain private", "chain", "c", "/proc/self/fd/{priv}", "30"],
        ["read 30", "read", "a29"],
        ["read 45", "read", "b44"],
        ["read private", "read", "c29/data"],
    ]
    result = _run(sandbox, native, sandbox.policy("unread", UNREAD_PRIVATE), steps)
    assert_survived(result)
    assert "private content" not in result.stdout, result.stdout[-2000:]
    answers = _answers(step_reports(result))
    race = json.loads(answers["race file"])
    assert set(race) <= {OWN, "EACCES", "ENOENT"}, race
    assert race.get(OWN), race
    race = json.loads(answers["race dir"])
    assert set(race) <= {"plain\n", "EACCES", "ENOENT"}, race
    assert race.get("plain\n"), race
    assert answers["read 30"] == OWN, answers
    assert answers["read 45"] == "ELOOP", answers
    assert answers["read private"] == "EACCES", answers
    assert ("file_read", "unread-private") in sandbox.denials()


# -- files made where the policy refuses them ----------------------------------------------


FROZEN_CFG = deny_rule("frozen-cfg", "file_write", 'target: "**/frozen/*.cfg"')


@both_paths
def test_mknod_never_makes_a_file_the_policy_refuses(sandbox: Sandbox, native: bool) -> None:
    """Writes of `**/frozen/*.cfg` are refused, and strict refuses every
    write of `**/.env` (sigkill).  open(O_CREAT) of frozen/a.cfg is refused;
    the agent then makes frozen/b.cfg (a regular file, 0755) and
    frozen/c.cfg (a FIFO, where a reader would get whatever the agent
    writes) with mknod, which needs no capability, and .env.

    mknod was no mediated call: the kernel made the names at once, with no
    rule asked and no record, even while the broker was quiesced for a
    move.  Now it is a create like open(O_CREAT): file_write of the new
    name.  Correct outcome: the two under frozen/ refused (EACCES), the
    agent killed for .env (strict's sigkill rule, as for any write of
    it); nothing under frozen/, no .env."""
    ws = sandbox.workspace
    (ws / "frozen").mkdir()
    steps = [
        ["create", "create", "frozen/a.cfg"],
        ["mknod file", "mknod", "frozen/b.cfg", "file"],
        ["mknod fifo", "mknod", "frozen/c.cfg", "fifo"],
        ["mknod dotenv", "mknod", ".env", "file"],
    ]
    result = _run(sandbox, native, sandbox.policy("frozen", FROZEN_CFG), steps)
    outcome = _outcome(result)
    assert outcome.get("create") == "EACCES", (outcome, result.stderr[-2000:])
    assert sorted(os.listdir(ws / "frozen")) == [], outcome
    assert not (ws / ".env").exists(), outcome
    assert outcome == {
        "create": "EACCES",
        "mknod file": "EACCES",
        "mknod fifo": "EACCES",
    }, outcome
    assert result.returncode == 137, result.stderr[-2000:]
    assert ("file_write", "secret-dotenv") in sandbox.denials()


@both_paths
def test_mknod_of_an_allowed_name_makes_it_as_the_kernel_would(
    sandbox: Sandbox, native: bool
) -> None:
    """The control: mknod of a regular file and a FIFO in the workspace (as
    `mkfifo` does) goes ahead, with the agent's umask (022) applied and the
    kind asked for; mknod over an existing name is EEXIST before any rule."""
    ws = sandbox.workspace
    steps = [
        ["file", "mknod", "made.file", "file"],
        ["fifo", "mknod", "made.fifo", "fifo"],
        ["again", "mknod", "made.fifo", "fifo"],
    ]
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    assert _outcome(result) == {"file": "ok", "fifo": "ok", "again": "EEXIST"}
    made_file, made_fifo = (ws / "made.file").lstat(), (ws / "made.fifo").lstat()
    assert stat.S_ISREG(made_file.st_mode) and stat.S_IMODE(made_file.st_mode) == 0o755 & ~0o022
    assert stat.S_ISFIFO(made_fifo.st_mode) and stat.S_IMODE(made_fifo.st_mode) == 0o755 & ~0o022


# -- moves: the quiesce, and ordinary tools ------------------------------------------------


@both_paths
def test_a_refused_or_failed_move_never_stalls_the_agent(sandbox: Sandbox, native: bool) -> None:
    """From a LIST to the following request the broker's native path
    answers nothing; a LIST with no request after it would stall every
    other syscall of the agent until the broker gives up (REPLY_TIMEOUT,
    10 s).  The agent makes the supervisor list trees and then not move
    them, three ways each, while a second thread opens a file in a loop:
    a move refused by a rule beneath it (`**/private/*`), one whose tree
    cannot be listed (a directory of another owner, mode 0: EIO), and one
    into itself (EINVAL).

    Correct outcome: each answered as said, and the second thread never
    waits long (under 3 s): every path out of a listed move sends the
    broker another request."""
    ws = sandbox.workspace
    _private(ws)
    (ws / "probe.txt").write_text("probe\n")
    (ws / "x" / "private" / "locked").mkdir(parents=True)
    (ws / "x" / "private" / "data").write_text(SECRET)
    os.chown(ws / "x" / "private" / "locked", 12345, 12345)
    (ws / "x" / "private" / "locked").chmod(0)
    (ws / "a" / "private").mkdir(parents=True)
    (ws / "a" / "private" / "data").write_text(SECRET)
    moves = ["a/private>a/public", "x/private>x/public", "a>a/private/a"] * 3
    steps = [["probe", "stall-probe", *moves]]
    result = _run(sandbox, native, sandbox.policy("unread", UNREAD_PRIVATE), steps)
    assert_survived(result)
    probe = json.loads(step_reports(result)["probe"]["data"])
    assert probe["answers"] == ["EACCES", "EIO", "EINVAL"] * 3, probe
    assert probe["longest"] < 3.0, probe
    assert (ws / "a" / "private" / "data").read_text() == SECRET


def _wheel(workspace: Path) -> str:
    """A pure-Python wheel to install, made here (no network, no build)."""
    name = "mypkg-1.0-py3-none-any.whl"
    files = {
        "mypkg/__init__.py": "VALUE = 1\n",
        "mypkg/sub/__init__.py": "",
        "mypkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: mypkg\nVersion: 1.0\n",
        "mypkg-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},,\n" for path in files) + "mypkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(workspace / name, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
        wheel.writestr("mypkg-1.0.dist-info/RECORD", record)
    return name


@both_paths
def test_ordinary_moves_never_fail_spuriously(sandbox: Sandbox, native: bool) -> None:
    """The broker moves a name only if it still holds the object judged
    (else EAGAIN, which no program expects of rename).  Ordinary tools
    that rename a lot: git (commits, a branch, git mv, gc), mv of files and
    directories, pip installing a wheel (its temporary trees moved into
    place), four threads replacing one file by rename 100 times each, and
    renames through a symlink to /proc/self/cwd and through /dev/fd/N of a
    directory fd (the walk resolves both names, and the identity check
    must see the same objects).

    Correct outcome: everything succeeds, no EAGAIN anywhere."""
    ws = sandbox.workspace
    wheel = _wheel(ws)
    script = (
        "set -e; git init -q repo; cd repo; "
        "for i in 1 2 3 4 5 6 7 8; do echo $i > f$i; git add f$i; git commit -qm c$i; done; "
        "git checkout -qb side; git mv f1 g1; git commit -qm mv; git gc -q; git status --short"
    )
    steps = [
        ["git", "run", "sh", "-c", script],
        ["mv", "run", "sh", "-c", "mkdir -p d1/s && touch d1/s/x && mv d1 d2 && mv d2/s/x d2/y"],
        [
            "pip",
            "run",
            "python3",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--target",
            "site",
            wheel,
        ],
        ["installed", "exists", "site/mypkg/sub/__init__.py"],
        ["atomic", "atomic-replace", "4", "100"],
        ["here", "symlink", "/proc/self/cwd", "here"],
        ["mkdir", "mkdir", "m1"],
        ["through cwd link", "rename", "here/m1", "here/m2"],
        ["hold dir", "hold", "wsdir", ".", "ro,dir"],
        ["through dev fd", "rename", "/dev/fd/{wsdir}/m2", "/dev/fd/{wsdir}/m3"],
        ["moved", "exists", "m3"],
    ]
    result = _run(sandbox, native, "strict", steps)
    assert_survived(result)
    answers = _answers(step_reports(result))
    outcome = _outcome(result)
    for case in ("git", "mv", "pip", "through cwd link", "through dev fd"):
        assert outcome[case] == "ok", (case, answers[case])
    assert answers["installed"] == "yes", answers
    assert answers["atomic"] == "[]", answers
    assert answers["moved"] == "yes", answers
