"""Terminals and shared memory: the agent's own, never the host's.

- /dev/tty is the caller's controlling terminal.  The broker opens it for
  the agent, so the broker holds no terminal of its own: /dev/tty is the
  agent's relay pty (the one its stdin is), or ENXIO without one, never the
  user's terminal behind the relay.
- /dev/pts is a devpts instance of the agent's own: /dev/ptmx makes ptys
  (script, pexpect, tmux), and no pty of the host (another session's
  terminal) can be opened.
- /dev/shm is a tmpfs of the agent's own: multiprocessing's semaphores and
  shared memory work, and nothing is left in the host's.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import textwrap

import pytest
from conftest import Sandbox

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

TTY_AGENT = textwrap.dedent(
    """
    import os, select, sys
    fd = os.open("/dev/tty", os.O_RDWR)
    print("same-as-stdin", os.fstat(fd).st_rdev == os.fstat(0).st_rdev, flush=True)
    print("foreground-group", os.tcgetpgrp(fd) == os.getpgrp(), flush=True)
    print("ttyname", os.ttyname(0) == os.ttyname(fd), flush=True)  # `tty`, GPG_TTY=$(tty)
    ready, _, _ = select.select([fd], [], [], 20)
    print("typed", os.read(fd, 100) if ready else b"", flush=True)
    """
)


def _broker_terminals(agent_id: str) -> list[int]:
    """tty_nr of every agentsup-init (broker) running now."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat_file:
                text = stat_file.read()
        except OSError:
            continue
        if b"(agentsup-init)" in text:
            found.append(int(text.rpartition(b")")[2].split()[4]))
    return found


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
def test_dev_tty_is_the_agents_relay_pty_and_the_broker_holds_no_terminal(
    sandbox: Sandbox,
) -> None:
    (sandbox.workspace / "tty_agent.py").write_text(TTY_AGENT)
    inner = " ".join(sandbox.command("python3", "tty_agent.py"))
    # script(1) gives `run` a terminal, as a user's shell would.
    proc = subprocess.Popen(
        ["script", "-qefc", inner, "/dev/null"],
        env=sandbox.env,
        cwd=sandbox.workspace,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        seen = b""
        while b"foreground-group" not in seen:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, seen
            seen += chunk
        assert all(terminal == 0 for terminal in _broker_terminals("t")), seen
        proc.stdin.write(b"typed-by-user\r")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    seen += out
    assert b"same-as-stdin True" in seen
    assert b"foreground-group True" in seen
    assert b"ttyname True" in seen
    assert b"typed-by-user" in seen.partition(b"typed ")[2]


def test_without_a_terminal_dev_tty_is_enxio_as_for_any_process_without_one(
    sandbox: Sandbox,
) -> None:
    script = "import os\ntry: os.open('/dev/tty', os.O_RDWR)\nexcept OSError as e: print(e.errno)"
    bare = subprocess.run(
        ["setsid", "python3", "-c", script],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    result = sandbox.run("python3", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == bare.stdout.strip() == str(errno.ENXIO)


def test_the_agent_makes_ptys_of_its_own_and_reaches_none_of_the_hosts(sandbox: Sandbox) -> None:
    master, slave = os.openpty()  # a terminal of the host's, with something waiting in it
    try:
        os.write(master, b"host-secret\n")
        agent = textwrap.dedent(
            """
            import os, pty
            master, slave = pty.openpty()
            os.write(master, b"own\\n")
            print("own-pty", os.read(slave, 100))
            for name in sorted(os.listdir("/dev/pts")):
                if name == "ptmx":
                    continue
                try:
                    fd = os.open("/dev/pts/" + name, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
                    print("read", name, os.read(fd, 100))
                except OSError as e:
                    print("refused", name, e.errno)
            """
        )
        result = sandbox.run("python3", "-c", agent)
        assert result.returncode == 0, result.stderr
        assert "own-pty b'own\\n'" in result.stdout
        assert "host-secret" not in result.stdout
        assert os.read(slave, 100) == b"host-secret\n"  # still there: nothing read it
    finally:
        os.close(master)
        os.close(slave)


def test_multiprocessing_works_and_leaves_nothing_in_the_hosts_dev_shm(sandbox: Sandbox) -> None:
    before = set(os.listdir("/dev/shm"))
    agent = textwrap.dedent(
        """
        import multiprocessing
        from multiprocessing import shared_memory
        lock, queue = multiprocessing.Lock(), multiprocessing.Queue()
        with lock:
            queue.put(41)
        with multiprocessing.Pool(2) as pool:
            print(pool.map(abs, [-1, -2]), queue.get() + 1)
        memory = shared_memory.SharedMemory(create=True, size=16)
        memory.close()
        memory.unlink()
        open("/dev/shm/left-by-the-agent", "w").close()  # the host never sees it
        print("done")
        """
    )
    result = sandbox.run("python3", "-c", agent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[1,", "2]", "42", "done"]
    assert set(os.listdir("/dev/shm")) == before
    assert sandbox.denials() == []
