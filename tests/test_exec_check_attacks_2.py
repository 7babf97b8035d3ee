"""Red-team tests, second round, for the exec check's thread rules (8d8411b).

A thread's exec is decided and CONTINUEd; its process's new image is held to
what was allowed at its first trapped call.  While the exec'ing thread lives
the leader's calls are the old image's, and a trapped call of that thread
itself means its exec failed: the check is dropped.  The supervisor (and the
broker) keep one pending check per process, keyed by its tgid.

The attacks, each with the native path on and off, under the policy of
test_exec_forge_attack (touch and "forbidden" refused):

Found by red-teaming (closed: an exec while another thread's exec in the
same process may still be in flight fails with EAGAIN; one whose other
thread is elsewhere resolves that exec's check first):

- two execs in flight in one process: a slow one (many environment strings,
  which the kernel copies after the CONTINUE and before argv), and a second
  allowed exec by another of its threads that fails after its CONTINUE (a
  bad envp: EFAULT).  The second decision replaces the first's pending check;
  the failed exec's next trapped call spends (or drops) it; the slow exec's
  argv is then swapped for a refused one, which runs unjudged;
- controls: the same with nothing swapped runs as allowed; ordinary execs
  from threads (Python's threading, posix_spawn from a thread, execveat with
  AT_EMPTY_PATH, two threads exec'ing at once, a thread whose exec failed
  and that exited) run unpunished.
"""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
from conftest import AGENTS, Sandbox, both_paths, fastpath_env
from test_exec_forge_attack import POLICY  # the same refusals: touch, and "forbidden"

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

# The attacking agent.  Each try forks a child; prints one JSON line: the
# children's exit statuses, and how many refused and allowed commands ran.
AGENT = textwrap.dedent(
    r'''
    import ctypes, json, mmap, os, resource, sys, threading, time

    from exec_race import cstrings, libc, syscall_of, wait_in_exec

    WS = os.path.dirname(os.path.abspath(__file__))
    MODE = sys.argv[1]


    def trapped():
        os.close(os.open(__file__, os.O_RDONLY))


    def failing_exec():
        """An allowed exec that fails after its CONTINUE: envp is a bad pointer."""
        keep, argv = cstrings(b"/bin/sh", b"-c", b"echo other")
        libc.execve(ctypes.addressof(keep[0]), argv, ctypes.c_void_p(8))
        return ctypes.get_errno()


    def slow_env(count=550_000):
        """Empty strings, each on an untouched page: the kernel faults each
        in as it copies the environment (about half a second)."""
        blob = mmap.mmap(-1, count << 12, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)
        base = ctypes.addressof(ctypes.c_char.from_buffer(blob))
        return blob, (ctypes.c_void_p * (count + 1))(*range(base, base + (count << 12), 4096))


    def child(i):
        resource.setrlimit(resource.RLIMIT_STACK, (64 << 20, resource.RLIM_INFINITY))
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
        keep, argv = cstrings(b"/bin/sh", b"-c", f"echo allowed__ > {WS}/proof{i}".encode())
        swap = lambda: ctypes.memmove(keep[2], b"echo forbidden", 14)
        if MODE.endswith("benign"):
            swap = lambda: None
        blob, envp = slow_env()
        if MODE.startswith("leader-execs"):
            # The leader execs; once that was decided, a second thread's
            # allowed exec fails, the thread makes a trapped call and swaps.
            leader, ready = syscall_of(threading.get_native_id()), threading.Event()
            def other():
                ready.set()
                wait_in_exec(leader, running=True)
                failing_exec()
                trapped()
                swap()
            threading.Thread(target=other, daemon=True).start()
            ready.wait()
            libc.execve(ctypes.addressof(keep[0]), argv, envp)
            os._exit(100 + ctypes.get_errno())
        tid, go = [], threading.Event()
        def execer():
            tid.append(threading.get_native_id())
            go.wait()
            libc.execve(ctypes.addressof(keep[0]), argv, envp)
            os._exit(100 + ctypes.get_errno())
        threading.Thread(target=execer, daemon=True).start()
        while not tid:
            time.sleep(0.001)
        execer_syscall = syscall_of(tid[0])
        go.set()
        wait_in_exec(execer_syscall)
        trapped()  # after the thread's exec was decided
        if MODE.startswith("leader-fails"):
            # The leader's own allowed exec replaces the thread's pending
            # check; it fails, and the leader's next trapped call spends it.
            failing_exec()
            trapped()
        else:
            # Another thread's allowed exec replaces it; it fails, and that
            # thread's next trapped call drops it (its exec failed).
            def other():
                failing_exec()
                trapped()
            t = threading.Thread(target=other, daemon=True)
            t.start()
            t.join()
        swap()
        time.sleep(10)  # the exec's de_thread kills us
        os._exit(91)


    def main(tries):
        # The agent starts pinned to the supervisor's CPU; take them all.
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        outcomes = {}
        for i in range(tries):
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    child(i)
                finally:
                    os._exit(92)
            _, status = os.waitpid(pid, 0)
            key = str(os.waitstatus_to_exitcode(status))
            outcomes[key] = outcomes.get(key, 0) + 1
        refused = allowed = 0
        for i in range(tries):
            try:
                with open(f"{WS}/proof{i}") as f:
                    text = f.read()
            except OSError:
                continue
            refused += "forbidden" in text
            allowed += "allowed__" in text
        print(json.dumps({"outcomes": outcomes, "refused_ran": refused, "allowed_ran": allowed}))


    main(int(sys.argv[2]))
    '''
)

# Ordinary programs that exec from a thread.  Each case forks a child that
# must print its word into the workspace and exit 0.
BENIGN = textwrap.dedent(
    r'''
    import ctypes, json, os, sys, threading, time

    libc = ctypes.CDLL(None, use_errno=True)
    WS = os.path.dirname(os.path.abspath(__file__))
    AT_EMPTY_PATH = 0x1000


    def busy_leader():
        """The leader keeps making trapped calls (while its threads exec)."""
        for _ in range(400):
            os.close(os.open(__file__, os.O_RDONLY))
        time.sleep(10)
        os._exit(91)


    def sh(word):
        return ["/bin/sh", "-c", f"echo {word} > {WS}/{word}"]


    def case(name):
        if name == "python-thread":
            threading.Thread(target=lambda: os.execv("/bin/sh", sh(name))).start()
            busy_leader()
        if name == "execveat-thread":
            def run():
                fd = os.open("/bin/sh", os.O_PATH)
                args = [a.encode() for a in sh(name)]
                argv = (ctypes.c_char_p * 4)(*args, None)
                envp = (ctypes.c_char_p * 1)(None)
                libc.syscall(322, fd, b"", argv, envp, AT_EMPTY_PATH)
                os._exit(100 + ctypes.get_errno())
            threading.Thread(target=run).start()
            busy_leader()
        if name == "two-threads":
            for word in (name, name):
                threading.Thread(target=lambda w=word: os.execv("/bin/sh", sh(w))).start()
            busy_leader()
        if name == "spawn-from-thread":
            done = []
            def run():
                pid = os.posix_spawn("/bin/sh", sh(name), {})
                done.append(os.waitpid(pid, 0)[1])
                try:
                    os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "echo forbidden"], {})
                    done.append("refused one ran")
                except OSError:
                    pass
            t = threading.Thread(target=run)
            t.start()
            t.join()
            os._exit(0 if done == [0] else 93)
        if name in ("failed-then-exited", "failed-then-exited-norandom"):
            if name.endswith("norandom"):
                libc.personality(0x0040000)
                os.execv(sys.executable, [sys.executable, __file__, "failed-then-exited"])
            def run():
                keep = [ctypes.create_string_buffer(a.encode()) for a in sh("never")]
                argv = (ctypes.c_void_p * 4)(*[ctypes.addressof(k) for k in keep], None)
                libc.execve(ctypes.addressof(keep[0]), argv, ctypes.c_void_p(8))  # EFAULT
            t = threading.Thread(target=run)
            t.start()
            t.join()  # it exited without a trapped call of its own
            for _ in range(50):
                os.close(os.open(__file__, os.O_RDONLY))
            os.execv("/bin/sh", sh("failed-then-exited"))


    if len(sys.argv) > 2:
        case(sys.argv[2])  # re-exec'd without randomization
    outcomes = {}
    for name in sys.argv[1].split(","):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                case(name)
            finally:
                os._exit(92)
        _, status = os.waitpid(pid, 0)
        ran = os.path.exists(f"{WS}/{name.removesuffix('-norandom')}")
        outcomes[name] = [os.waitstatus_to_exitcode(status), ran]
    print(json.dumps(outcomes))
    '''
)


def _run(sandbox: Sandbox, native: bool, script: str, *args: str) -> dict[str, object]:
    agent = sandbox.workspace / "exec_attack_2.py"
    agent.write_text(script)
    shutil.copy(AGENTS / "exec_race.py", sandbox.workspace)
    result = sandbox.run(
        "python3",
        str(agent),
        *args,
        policy=sandbox.policy("forge", POLICY),
        env=fastpath_env(native),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _refusals(sandbox: Sandbox, rule: str) -> int:
    return sum(1 for r in sandbox.audit_records() if r.get("rule") == rule)


# -- a second exec in flight, failed, replaces the first's pending check ------------


@both_paths
def test_a_leaders_failed_exec_does_not_spend_a_threads_pending_check(
    sandbox: Sandbox, native: bool
) -> None:
    """Found by red-teaming, closed (both paths; 1 to 3 tries of 3 in testing before the fix).

    A non-leader thread execs `/bin/sh -c 'echo allowed__ > F'` with an
    environment slow to copy; it is decided and CONTINUEd (`_execs[tgid]`
    holds it, `thread` = its tid).  The leader's trapped call meanwhile is
    held to the old image (the thread lives), as meant.  Then the leader
    execs an allowed `/bin/sh -c 'echo other'` with envp = 8: `_exec` ->
    `_exec_done(tgid)` -> `_drop_exec(tgid)` throws the thread's pending
    check away and records the leader's own (natively, `watch` overwrites the
    slot's exec_tid and `forget_expected`).  The kernel fails it with EFAULT;
    the leader's next trapped open finds its old image (`before`), takes the
    exec for failed and spends the check.  The leader then writes
    `forbidden` over the thread's argv, which the kernel has not copied yet:
    `sh -c 'echo forbidden > F'` runs with nothing left to check it and no
    record."""
    report = _run(sandbox, native, AGENT, "leader-fails", "3")
    assert report["refused_ran"] == 0, report


@both_paths
def test_another_threads_failed_exec_does_not_drop_a_threads_pending_check(
    sandbox: Sandbox, native: bool
) -> None:
    """Found by red-teaming, closed (both paths; 2 or 3 tries of 3 in testing before the fix).

    The same, the failing exec made by a third thread: its decision replaces
    the pending check (`_exec_threads` now names the third thread), and its
    trapped call after EFAULT is "a call of the thread that called exec"
    (`exec_thread_slot` natively): the check is dropped, the swapped argv of
    the first thread's exec runs unjudged."""
    report = _run(sandbox, native, AGENT, "thread-fails", "3")
    assert report["refused_ran"] == 0, report


@both_paths
def test_a_threads_failed_exec_does_not_drop_the_leaders_pending_check(
    sandbox: Sandbox, native: bool
) -> None:
    """Found by red-teaming, closed (both paths; 3 tries of 3 in testing before the fix).

    The leader execs (slow environment; natively the broker decides and
    CONTINUEs it at once); a second thread then makes an allowed exec that
    fails (EFAULT), a trapped call (which drops the check its decision put in
    place of the leader's), and swaps the leader's argv: the refused command
    runs unjudged.  Before 8d8411b the same swap by a thread was caught (a
    single pending check per process, but a thread's call did not drop it)."""
    report = _run(sandbox, native, AGENT, "leader-execs", "3")
    assert report["refused_ran"] == 0, report


@both_paths
@pytest.mark.parametrize("mode", ["leader-fails-benign", "thread-fails-benign"])
def test_two_execs_in_flight_with_nothing_swapped_run_unpunished(
    sandbox: Sandbox, native: bool, mode: str
) -> None:
    """No false kill: the same two execs in flight, nothing swapped."""
    report = _run(sandbox, native, AGENT, mode, "2")
    assert report == {"outcomes": {"0": 2}, "refused_ran": 0, "allowed_ran": 2}, report
    assert _refusals(sandbox, "no-forbidden-word") == 0


# -- ordinary execs from threads -----------------------------------------------------


@both_paths
def test_ordinary_execs_from_threads_run_unpunished(sandbox: Sandbox, native: bool) -> None:
    """No false kill: Python's threading + os.execv beside a busy leader,
    execveat(AT_EMPTY_PATH) from a thread, two threads exec'ing at once,
    posix_spawn (vfork) from a thread (a refused one refused), a thread whose
    exec failed and that exited before the leader's calls and exec (with
    and without randomization)."""
    cases = [
        "python-thread",
        "execveat-thread",
        "two-threads",
        "spawn-from-thread",
        "failed-then-exited",
        "failed-then-exited-norandom",
    ]
    report = _run(sandbox, native, BENIGN, ",".join(cases))
    assert report == {name: [0, True] for name in cases}, report
