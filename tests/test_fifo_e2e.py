"""Named pipes under agentsup meet as they meet bare: each run on both paths.

open(2) of a FIFO without O_NONBLOCK, for reading or for writing, waits
until the other end opens.  The broker opens every file for the agent and
must never wait itself, so such an open waits in a helper it forks, while it
serves the other end's open; the helper hands the agent a blocking fd.  So:

- a reader that comes first and a writer that comes first both meet the
  other and pass data, as bare;
- O_RDWR never waits, an O_NONBLOCK reader opens at once and reads nothing,
  an O_NONBLOCK writer with no reader fails with ENXIO, as bare;
- a waiting open interrupted by a signal runs the agent's handler and fails
  with EINTR (or restarts, with SA_RESTART), and no reader is left behind
  (a writer then still gets ENXIO), as bare;
- an agent killed while it waits ends the run at once;
- at most MAX_WAITING_OPENS opens wait at a time; one more fails with EAGAIN;
- the broker keeps no fd and no helper of an open that is over;
- make -j2 and shell pipelines through FIFOs work.

Each script runs bare too where it can, and the two must agree.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, fastpath_env

from agentsup.supervision import broker as _broker

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]


def _both(sandbox: Sandbox, native: bool, *program: str, timeout: float = 60) -> tuple[str, str]:
    """`program` run supervised and bare, each in a fresh copy of the workspace's
    state (no FIFO left over): both stdouts."""
    for entry in sandbox.workspace.glob("ff*"):
        entry.unlink()
    supervised = sandbox.run(*program, timeout=timeout, env=fastpath_env(native))
    assert supervised.returncode == 0, supervised.stderr
    for entry in sandbox.workspace.glob("ff*"):
        entry.unlink()
    bare = subprocess.run(
        program, cwd=sandbox.workspace, capture_output=True, text=True, timeout=timeout
    )
    assert bare.returncode == 0, bare.stderr
    return supervised.stdout, bare.stdout


@both_paths
@pytest.mark.parametrize(
    "script",
    [
        "mkfifo ff; (sleep .5; echo hi > ff) & cat ff; wait",  # the reader first
        "mkfifo ff; (sleep .5; cat ff) & echo hi > ff; wait",  # the writer first
    ],
    ids=["reader-first", "writer-first"],
)
def test_a_reader_and_a_writer_meet_whichever_comes_first(
    sandbox: Sandbox, native: bool, script: str
) -> None:
    supervised, bare = _both(sandbox, native, "bash", "-c", script)
    assert supervised == bare == "hi\n"


OPENS = textwrap.dedent(
    """
    import errno, json, os, time
    os.mkfifo("ff")
    def attempt(case, open_it):
        started = time.monotonic()
        try:
            fd = open_it()
        except OSError as exc:
            print(json.dumps({"case": case, "error": errno.errorcode[exc.errno]}))
            return
        try:
            data = os.read(fd, 10) if case != "writer" else b""
        except OSError as exc:
            data = errno.errorcode[exc.errno].encode()
        blocking = os.get_blocking(fd)
        os.close(fd)
        quick = time.monotonic() - started < 5
        result = {"case": case, "data": data.decode(), "blocking": blocking, "quick": quick}
        print(json.dumps(result))
    attempt("nonblocking reader", lambda: os.open("ff", os.O_RDONLY | os.O_NONBLOCK))
    attempt("nonblocking writer", lambda: os.open("ff", os.O_WRONLY | os.O_NONBLOCK))
    attempt("nonblocking creat", lambda: os.open("ff", os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK))
    attempt("read-write", lambda: os.open("ff", os.O_RDWR | os.O_NONBLOCK))
    # O_RDWR without O_NONBLOCK never waits either (the read would: not made).
    fd = os.open("ff", os.O_RDWR)
    print(json.dumps({"case": "blocking read-write", "blocking": os.get_blocking(fd)}))
    # A writer with a reader already there opens at once, and blocking.
    reader = os.open("ff", os.O_RDONLY | os.O_NONBLOCK)
    attempt("writer", lambda: os.open("ff", os.O_WRONLY))
    os.close(reader)
    os.close(fd)
    """
)


@both_paths
def test_what_never_waits_answers_as_bare(sandbox: Sandbox, native: bool) -> None:
    """O_NONBLOCK opens and O_RDWR: at once, with the kernel's own answers."""
    (sandbox.workspace / "opens.py").write_text(OPENS)
    supervised, bare = _both(sandbox, native, "python3", "opens.py")
    assert supervised == bare
    results = {r["case"]: r for r in map(json.loads, supervised.splitlines())}
    assert results["nonblocking reader"] == {
        "case": "nonblocking reader", "data": "", "blocking": False, "quick": True
    }  # fmt: skip
    assert results["nonblocking writer"]["error"] == "ENXIO"
    assert results["nonblocking creat"]["error"] == "ENXIO"
    assert results["read-write"]["blocking"] is False
    assert results["blocking read-write"]["blocking"] is True
    assert results["writer"] == {"case": "writer", "data": "", "blocking": True, "quick": True}


INTERRUPTED = textwrap.dedent(
    """
    import ctypes, errno, json, os, signal, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    restart = sys.argv[1] == "restart"
    handled = []
    signal.signal(signal.SIGALRM, lambda *_: handled.append(time.monotonic()))
    signal.siginterrupt(signal.SIGALRM, not restart)
    os.mkfifo("ff")
    if restart and os.fork() == 0:  # a writer, well after the signal
        time.sleep(1.5)
        fd = os.open("ff", os.O_WRONLY)
        os.write(fd, b"hi")
        os._exit(0)
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    fd = libc.open(b"ff", os.O_RDONLY)  # libc's: Python's own would retry on EINTR
    err = ctypes.get_errno()
    ended = time.monotonic()
    result = {"handled": len(handled), "handler_first": bool(handled) and handled[0] < ended}
    if fd < 0:
        result["error"] = errno.errorcode[err]
        result["quick"] = ended - started < 1.2
        # At once (red team 11): nothing is left waiting to read, so a writer
        # finds no reader, as bare.
        try:
            os.close(os.open("ff", os.O_WRONLY | os.O_NONBLOCK))
            result["writer"] = "opened"
        except OSError as exc:
            result["writer"] = errno.errorcode[exc.errno]
    else:
        result["data"] = os.read(fd, 10).decode()
        result["waited"] = ended - started > 1.2
        os.close(fd)
        os.wait()
    print(json.dumps(result, sort_keys=True))
    """
)


@both_paths
@pytest.mark.parametrize("how", ["eintr", "restart"])
def test_a_waiting_open_interrupted_by_a_signal_answers_as_bare(
    sandbox: Sandbox, native: bool, how: str
) -> None:
    """The handler runs while the open waits; the open fails with EINTR, or,
    with SA_RESTART, waits on and meets the writer.  An open given up leaves
    no reader behind: its helper is ended, not left to meet a writer."""
    (sandbox.workspace / "interrupted.py").write_text(INTERRUPTED)
    supervised, bare = _both(sandbox, native, "python3", "interrupted.py", how)
    assert supervised == bare
    result = json.loads(supervised)
    if how == "eintr":
        assert result == {
            "error": "EINTR", "handled": 1, "handler_first": True, "quick": True,
            "writer": "ENXIO",
        }  # fmt: skip
    else:
        assert result == {"data": "hi", "handled": 1, "handler_first": True, "waited": True}


@both_paths
@pytest.mark.parametrize(
    "script",
    [
        "mkfifo ff; (sleep 1; kill -9 $$) & exec cat ff",  # the waiting process itself
        "mkfifo ff; cat ff & cat ff & sleep 1; jobs -r | wc -l > running; kill -9 $$",
    ],
    ids=["waiting-process", "waiting-children"],
)
def test_an_agent_killed_while_an_open_waits_ends_the_run_at_once(
    sandbox: Sandbox, native: bool, script: str
) -> None:
    """The supervisor and the broker exit, and no helper keeps them waiting."""
    started = time.monotonic()
    result = sandbox.run("bash", "-c", script, timeout=30, env=fastpath_env(native))
    assert result.returncode == 128 + 9, result.stderr
    assert time.monotonic() - started < 10
    if "running" in script:  # both children still waited when it was killed
        assert (sandbox.workspace / "running").read_text().strip() == "2"


MANY = textwrap.dedent(
    """
    import errno, os, sys, threading, time
    os.mkfifo("ff")
    count = int(sys.argv[1])
    got = []
    def read():
        fd = os.open("ff", os.O_RDONLY)
        got.append(os.read(fd, 10))
        os.close(fd)
    readers = [threading.Thread(target=read) for _ in range(count)]
    for reader in readers:
        reader.start()
    time.sleep(3)  # every reader waits
    try:
        os.close(os.open("ff", os.O_RDONLY))
        print("one more: opened")
    except OSError as exc:
        print("one more:", errno.errorcode[exc.errno])
    os.close(os.open("ff", os.O_WRONLY))  # every reader meets it, and reads its end
    for reader in readers:
        reader.join()
    print("readers:", len(got), set(got))
    time.sleep(0.5)
    pid = os.fork()
    if pid == 0:
        time.sleep(0.3)
        os.close(os.open("ff", os.O_WRONLY))
        os._exit(0)
    os.close(os.open("ff", os.O_RDONLY))  # waits again, as before
    os.waitpid(pid, 0)
    print("then: opened")
    """
)


@both_paths
def test_at_most_so_many_opens_wait_at_once(sandbox: Sandbox, native: bool) -> None:
    """One open more than MAX_WAITING_OPENS fails with EAGAIN (bare has no such
    bound: the broker forks a helper for each); once they are over, opens wait again."""
    (sandbox.workspace / "many.py").write_text(MANY)
    waiting = str(_broker.MAX_WAITING_OPENS)
    result = sandbox.run("python3", "many.py", waiting, env=fastpath_env(native), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "one more: EAGAIN",
        f"readers: {_broker.MAX_WAITING_OPENS} {{b''}}",
        "then: opened",
    ]


CYCLES = textwrap.dedent(
    """
    import os, sys
    os.mkfifo("ff")
    def cycles(count):
        for i in range(count):
            if os.fork() == 0:
                fd = os.open("ff", os.O_WRONLY)
                os.write(fd, b"%d" % i)
                os._exit(0)
            fd = os.open("ff", os.O_RDONLY)
            assert os.read(fd, 10) == b"%d" % i
            os.close(fd)
            os.wait()
    cycles(2)
    print("warm", flush=True)
    sys.stdin.readline()
    cycles(20)
    print("done", flush=True)
    sys.stdin.readline()
    """
)


def _count(pid: int) -> tuple[int, int]:
    """How many fds `pid` holds, and how many children it has."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return len(os.listdir(f"/proc/{pid}/fd")), len(children)


@both_paths
def test_the_broker_keeps_no_fd_and_no_helper_of_an_open_that_is_over(
    sandbox: Sandbox, native: bool
) -> None:
    script = sandbox.workspace / "cycles.py"
    script.write_text(CYCLES)
    proc = sandbox.start("python3", str(script), env=fastpath_env(native))
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == "warm\n"
        broker = _broker_of(str(script))
        time.sleep(0.5)
        before = _count(broker)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"
        time.sleep(0.5)
        after = _count(broker)
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert after == before
    assert before[1] == 1  # the agent alone: no helper left


def _broker_of(script: str) -> int:
    """The host pid of the broker: the parent of the agent running `script`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if script.encode() in argv:
                status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        else:
            if script.encode() in argv:
                return int(status.split("PPid:")[1].split()[0])
    raise AssertionError("no agent found")


MAKEFILE = textwrap.dedent(
    """
    all: reader writer
    reader:
    \tcat ff > got
    writer:
    \tsleep 0.3; echo through the fifo > ff
    """
)


@both_paths
@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_make_j2_passes_data_through_a_fifo(sandbox: Sandbox, native: bool) -> None:
    (sandbox.workspace / "Makefile").write_text(MAKEFILE)
    script = "mkfifo ff; make -s -j2; cat got; rm got"
    supervised, bare = _both(sandbox, native, "bash", "-c", script)
    assert supervised == bare == "through the fifo\n"


@both_paths
def test_a_shell_pipeline_through_fifos(sandbox: Sandbox, native: bool) -> None:
    # Each writer opens first, and waits for its reader.
    script = (
        "mkfifo ff1 ff2; seq 1 20000 > ff1 & (sleep .3; tr 0-9 a-j < ff1 > ff2) & "
        "(sleep .6; sort < ff2) | uniq | wc -l; wait"
    )
    supervised, bare = _both(sandbox, native, "bash", "-c", script)
    assert supervised.strip() == bare.strip() == "20000"


# -- the broker's create of a name a FIFO took meanwhile (no kernel filter needed)


class _Recorder(_broker.Broker):
    """A broker whose answers are recorded instead of sent."""

    def __init__(self) -> None:
        channel, self._peer = socket.socketpair()
        super().__init__(channel, -1)
        self.answers: list[tuple[str, object]] = []

    def _inject_fd(self, notif_id: int, fd: int, cloexec: bool) -> None:
        self.answers.append(("fd", os.fstat(fd).st_mode))
        self.answers.append(("blocking", os.get_blocking(fd)))
        os.close(fd)

    def _rendezvous(self, notif_id: int, path_fd: int, flags: int, cloexec: bool) -> None:
        self.answers.append(("waits", flags))


@pytest.mark.parametrize(
    "flags, answers",
    [
        (os.O_WRONLY, [("waits", os.O_WRONLY | os.O_CREAT)]),
        (os.O_RDONLY, [("waits", os.O_RDONLY | os.O_CREAT)]),
        (os.O_RDONLY | os.O_NONBLOCK, [("fd", stat.S_IFIFO | 0o600), ("blocking", False)]),
        (os.O_RDWR, [("fd", stat.S_IFIFO | 0o600), ("blocking", True)]),
        (os.O_WRONLY | os.O_NONBLOCK, "ENXIO"),
        (os.O_WRONLY | os.O_EXCL, "EEXIST"),
    ],
    ids=["writer", "reader", "nonblocking-reader", "read-write", "nonblocking-writer", "excl"],
)
def test_a_create_that_meets_a_fifo_opens_it_as_the_kernel_would(
    tmp_path: Path, flags: int, answers: object
) -> None:
    """A FIFO made under the name after it was found missing (a racing
    mkfifo): the create opens it as open(O_CREAT) of that FIFO would."""
    os.mkfifo(tmp_path / "ff", 0o600)
    recorder = _Recorder()
    directory = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        args: list[object] = [directory, b"ff", flags | os.O_CREAT, 0o644, False]
        try:
            recorder._create(1, [directory], args, [])
        except OSError as exc:
            assert answers == errno.errorcode[exc.errno or 0]
        else:
            assert recorder.answers == answers
    finally:
        os.close(directory)
        recorder.channel.close()
        recorder._peer.close()


def test_a_create_that_meets_a_directory_fails_with_eisdir(tmp_path: Path) -> None:
    """As open(O_CREAT) of a directory does, even for reading."""
    (tmp_path / "dd").mkdir()
    recorder = _Recorder()
    directory = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(IsADirectoryError):
            recorder._create(1, [directory], [directory, b"dd", os.O_CREAT, 0o644, False], [])
        assert recorder.answers == []
    finally:
        os.close(directory)
        recorder.channel.close()
        recorder._peer.close()
