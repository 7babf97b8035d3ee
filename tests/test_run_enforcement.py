"""`agentsup run` enforces the policy on a real agent process tree.

Each test starts a real agent, lets it try one thing, and checks what really
happened: the file on disk, the errno the agent saw, the process state, the
exit status and the audit record.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TRY, Sandbox, agent_reports, deny_rule, host_pids

from agentsup.kernel.proc import process_state

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

BLOCKING = """
name: blocking
extends: [strict]
on_violation: block
rules:
  - id: etc-writes-blocked
    actions: [file_write, file_delete, file_move, file_chmod]
    target: "/etc/**"
    decision: deny
    priority: 1
    on_violation: block
  - id: outside-blocked
    actions: [file_write, file_delete, file_move]
    target: "{home}/**"
    decision: deny
    priority: 1
    on_violation: block
"""


def test_a_write_outside_the_workspace_fails_and_the_file_is_unchanged(sandbox: Sandbox) -> None:
    outside = sandbox.home / "outside.txt"
    outside.write_text("original")
    policy = sandbox.policy("blocking", BLOCKING)
    result = sandbox.run(
        "python3", TRY, "write", str(outside), "then", "append", str(outside), policy=policy
    )
    assert result.returncode == 0, result.stderr
    reports = agent_reports(result.stdout)
    assert [r["result"] for r in reports] == ["EACCES", "EACCES"]
    assert outside.read_text() == "original"
    denied = [r for r in sandbox.audit_records() if r.get("decision") == "deny"]
    assert denied and denied[0]["rule"] == "outside-blocked"
    assert denied[0]["response"] == "block"


def test_a_rename_of_a_workspace_file_over_a_protected_path_is_caught(sandbox: Sandbox) -> None:
    victim = sandbox.home / "important.txt"
    victim.write_text("keep me")
    mine = sandbox.workspace / "mine.txt"
    mine.write_text("overwrite")
    policy = sandbox.policy("blocking", BLOCKING)
    result = sandbox.run("python3", TRY, "rename", str(mine), str(victim), policy=policy)
    assert agent_reports(result.stdout)[0]["result"] == "EACCES"
    assert victim.read_text() == "keep me"
    assert mine.read_text() == "overwrite"


def test_workspace_file_operations_work_as_usual(sandbox: Sandbox) -> None:
    ws = sandbox.workspace
    result = sandbox.run(
        "python3",
        TRY,
        "write",
        f"{ws}/a",
        "then",
        "mkdir",
        f"{ws}/d",
        "then",
        "rename",
        f"{ws}/a",
        f"{ws}/d/b",
        "then",
        "symlink",
        "d/b",
        f"{ws}/link",
        "then",
        "read",
        f"{ws}/link",
        "then",
        "chmod",
        f"{ws}/d/b",
        "600",
        "then",
        "unlink",
        f"{ws}/link",
    )
    assert result.returncode == 0, result.stderr
    results = [r["result"] for r in agent_reports(result.stdout)]
    assert results == ["ok"] * 7
    assert (ws / "d" / "b").read_text() == "written by agent"
    assert (ws / "d" / "b").stat().st_mode & 0o777 == 0o600
    # mkdir honours the agent's umask (022): 0777 & ~022
    assert (ws / "d").stat().st_mode & 0o777 == 0o755
    assert not (ws / "link").exists()


def test_openat2_resolve_flags_are_honoured(sandbox: Sandbox) -> None:
    (sandbox.workspace / "sub").mkdir()
    (sandbox.workspace / "sub" / "inside.txt").write_text("inside")
    ws = str(sandbox.workspace)
    result = sandbox.run(
        "python3",
        TRY,
        "openat2_beneath",
        ws,
        "sub/inside.txt",
        "then",
        "openat2_beneath",
        f"{ws}/sub",
        "../try_syscall.py",
    )
    assert result.returncode == 0, result.stderr
    first, second = agent_reports(result.stdout)
    assert (first["result"], first["data"]) == ("ok", "inside")
    assert second["result"] == "EXDEV"  # RESOLVE_BENEATH refuses the `..` escape


def test_rm_rf_root_is_killed_and_ls_runs(sandbox: Sandbox) -> None:
    listing = sandbox.run("ls", "-la")
    assert listing.returncode == 0, listing.stderr
    # GNU rm refuses `rm -rf /` by itself, so this test cannot hurt the machine
    # even if enforcement were broken.
    result = sandbox.run("rm", "-rf", "/")
    assert result.returncode == 137, result.stderr
    assert "denied shell_execute rm -rf /" in result.stderr


def test_naming_sudo_is_not_running_it(sandbox: Sandbox) -> None:
    """Found by a new user: `grep -rn sudo .` killed the agent, as strict's
    privilege rule matched the word anywhere on a command line.  It matches
    the program run, and every exec is judged: a `sudo` run from a shell
    line is killed at its own exec."""
    (sandbox.workspace / "install.sh").write_text("sudo apt-get install -y make\n")
    fake = sandbox.workspace / "sudo"
    fake.write_text("#!/bin/sh\necho ran as root\n")
    fake.chmod(0o755)
    named = sandbox.run("sh", "-c", "grep -c sudo install.sh; git --version > /dev/null")
    assert (named.returncode, named.stdout) == (0, "1\n"), named.stderr
    run = sandbox.run("sh", "-c", f"echo first; {fake} -n true")
    assert run.returncode == 137, run.stderr
    assert "rule 'privilege-command' denied shell_execute" in run.stderr
    assert "ran as root" not in run.stdout


@pytest.mark.parametrize(
    ("command", "rule"),
    [
        (["busybox", "su", "-c", "true", "root"], "privilege-command"),
        (["bash", "-c", "exec -a fmt mkfs.ext4 -q -F img 1M"], "mkfs-program"),
    ],
    ids=["busybox-su", "mkfs-renamed"],
)
def test_a_privileged_program_is_known_by_its_applet_or_its_file(
    sandbox: Sandbox, command: list[str], rule: str
) -> None:
    """Red team 34: `busybox su` ran su's applet, and `exec -a fmt mkfs.ext4`
    made a file system, with no kill: the command rules read argv[0] only."""
    program = "busybox" if command[0] == "busybox" else "mkfs.ext4"
    if shutil.which(program) is None:
        pytest.skip(f"no {program} on this host")
    result = sandbox.run(*command)
    assert result.returncode == 137, result.stderr
    assert f"rule '{rule}' denied" in result.stderr
    assert not (sandbox.workspace / "img").exists()


def test_a_newline_in_an_argument_does_not_hide_a_command_from_a_deny_pattern(
    sandbox: Sandbox,
) -> None:
    """`.` in a pattern that refuses matches a newline too: an argument holding
    one (a file name can) does not split the command line away from the rule."""
    policy = sandbox.policy(
        "no-forbidden",
        deny_rule("echo-forbidden", "shell_execute", "pattern: '^/bin/echo .*--forbidden'"),
    )
    script = '/bin/echo "$1" --forbidden > said.txt'
    result = sandbox.run("sh", "-c", script, "sh", "line\nbreak", policy=policy)
    assert result.returncode != 0
    assert not (sandbox.workspace / "said.txt").read_text()
    assert ("shell_execute", "echo-forbidden") in sandbox.denials()


def test_a_trailing_newline_does_not_hide_a_command_from_a_dollar_anchored_deny_pattern(
    sandbox: Sandbox,
) -> None:
    """A refusing pattern's `$` is Python's: the end, or just before a final
    newline (RE2's alone is only the very end, and `...forbidden\\n` ran)."""
    policy = sandbox.policy(
        "no-forbidden",
        deny_rule("echo-forbidden", "shell_execute", "pattern: '^/bin/echo forbidden$'"),
    )
    script = '/bin/echo "$1" > said.txt'
    result = sandbox.run("sh", "-c", script, "sh", "forbidden\n", policy=policy)
    assert result.returncode != 0
    assert not (sandbox.workspace / "said.txt").read_text()
    assert ("shell_execute", "echo-forbidden") in sandbox.denials()


@pytest.mark.parametrize(
    ("command", "rule"),
    [
        ("rm -rf //usr", "rm-rf-root"),
        ("rm -rf /./usr/", "rm-rf-root"),
        ("rm -r -f $HOME//", "rm-rf-root"),
        ("dd if=/dev/zero of=/dev//sda", "dd-to-disk"),
        ("dd if=/dev/zero of=//dev/./sda", "dd-to-disk"),
        ("dd if=/dev/zero of=/dev//mapper/vg0-root", "dd-to-disk"),
    ],
)
@pytest.mark.parametrize("policy", ["strict", "permissive"])
def test_another_spelling_of_a_path_does_not_get_a_command_past_a_killing_rule(
    sandbox: Sandbox, policy: str, command: str, rule: str
) -> None:
    """`rm -rf //usr` is `rm -rf /usr`.  /bin/echo stands in for the command:
    the rule reads the command line, and nothing is removed or written."""
    (sandbox.workspace / "job.sh").write_text(f"/bin/echo {command}\necho survived\n")
    result = sandbox.run("sh", "job.sh", policy=policy)
    assert result.returncode == 137, result.stdout + result.stderr
    assert "survived" not in result.stdout
    assert ("shell_execute", rule) in sandbox.denials()


def _a_loop_device() -> str:
    for n in range(8):
        device = f"/dev/loop{n}"
        with contextlib.suppress(OSError):
            if stat.S_ISBLK(os.stat(device).st_mode):
                return device
    pytest.skip("no loop block device here")


def test_permissive_kills_an_open_of_a_loop_device_through_a_symlink(sandbox: Sandbox) -> None:
    """The rule reads the real path the open reaches, not the name the agent
    gave: a symlink in the workspace leads to the device.  The agent only
    opens it for writing and writes nothing, so it cannot hurt the device even
    if enforcement were broken."""
    device = _a_loop_device()
    (sandbox.workspace / "disk").symlink_to(device)
    script = "import os\nos.close(os.open('disk', os.O_WRONLY))\nprint('survived')\n"
    result = sandbox.run(sys.executable, "-c", script, policy="permissive")
    assert result.returncode == 137, result.stdout + result.stderr
    assert "survived" not in result.stdout
    assert ("file_write", "whole-disk-write") in sandbox.denials()
    assert any(r.get("target") == device for r in sandbox.audit_records())


OBSERVING_BUT_NO_RM = """
name: observing
default: allow
on_violation: log_only
rules:
  - id: no-rm-rf
    actions: [shell_execute]
    pattern: 'rm\\s+-rf\\s'
    decision: deny
    on_violation: sigkill
"""


def test_padding_a_command_line_past_the_cap_does_not_get_past_a_killing_rule(
    sandbox: Sandbox,
) -> None:
    """Under a policy that only observes, save one killing rule, a command line
    too long for any rule to be run on is refused, not observed."""
    important = sandbox.workspace / "important"
    important.mkdir()
    (important / "data").write_text("keep")
    policy = sandbox.policy("observing", OBSERVING_BUT_NO_RM)
    # Three padding arguments, each under the kernel's own cap for one.
    script = (
        "import subprocess, sys\n"
        "try: subprocess.run(['/bin/rm', '-rf', sys.argv[1]] + ['x' * 50_000] * 3)\n"
        "except PermissionError as refused: print(refused)\n"
    )
    result = sandbox.run(sys.executable, "-c", script, str(important), policy=policy)
    assert (important / "data").read_text() == "keep"
    assert ("shell_execute", "agentsup-target-too-long") in sandbox.denials()
    assert result.returncode == 0, result.stderr  # refused: the agent carried on


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def _greet_once(listener: socket.socket, greeting: bytes) -> None:
    """Accept one connection in the background and send it `greeting`."""

    def greet() -> None:
        conn, _ = listener.accept()
        conn.sendall(greeting)
        conn.close()

    threading.Thread(target=greet, daemon=True).start()


NET_ONE_PORT = """
name: one-port
extends: [strict]
rules:
  - id: local-api
    actions: [network_connect]
    target: "127.0.0.1:{port}"
    decision: allow
    priority: 1
  - id: everything-else
    actions: [network_connect]
    target: "**"
    decision: deny
    priority: 2
    on_violation: block
"""


def test_network_connect_is_decided_by_ip_and_port(sandbox: Sandbox) -> None:
    allowed, denied = _listener(), _listener()
    allowed_port = allowed.getsockname()[1]
    denied_port = denied.getsockname()[1]
    _greet_once(allowed, b"hello agent")
    policy = sandbox.policy("net", NET_ONE_PORT.replace("{port}", str(allowed_port)))
    result = sandbox.run(
        "python3",
        TRY,
        "connect",
        "127.0.0.1",
        str(allowed_port),
        "then",
        "connect",
        "127.0.0.1",
        str(denied_port),
        policy=policy,
    )
    allowed.close()
    denied.close()
    assert result.returncode == 0, result.stderr
    first, second = agent_reports(result.stdout)
    assert (first["result"], first["data"]) == ("ok", "hello agent")
    assert second["result"] == "EPERM"
    record = next(r for r in sandbox.audit_records() if r.get("rule") == "everything-else")
    assert record["target"] == f"127.0.0.1:{denied_port}"


def test_a_blocking_connect_completes_through_the_supervisor(sandbox: Sandbox) -> None:
    allowed = _listener()
    port = allowed.getsockname()[1]
    _greet_once(allowed, b"hi")
    policy = sandbox.policy("one", NET_ONE_PORT.replace("{port}", str(port)))
    result = sandbox.run("python3", TRY, "connect_blocking", "127.0.0.1", str(port), policy=policy)
    allowed.close()
    assert agent_reports(result.stdout)[0] == {
        "op": "connect_blocking",
        "result": "ok",
        "data": "hi",
    }


@pytest.mark.slow
def test_a_thread_flipping_the_address_never_reaches_the_denied_port(sandbox: Sandbox) -> None:
    allowed, denied = _listener(), _listener()
    allowed_port, denied_port = allowed.getsockname()[1], denied.getsockname()[1]
    stop = threading.Event()

    def drain(listener: socket.socket, counts: list[int]) -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            counts.append(1)
            conn.close()

    allowed_hits: list[int] = []
    denied_hits: list[int] = []
    threads = [
        threading.Thread(target=drain, args=(allowed, allowed_hits), daemon=True),
        threading.Thread(target=drain, args=(denied, denied_hits), daemon=True),
    ]
    for thread in threads:
        thread.start()
    policy = sandbox.policy("one", NET_ONE_PORT.replace("{port}", str(allowed_port)))
    result = sandbox.run(
        "python3",
        TRY,
        "connect_race",
        str(allowed_port),
        str(denied_port),
        "2000",
        policy=policy,
        timeout=240,
    )
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    allowed.close()
    denied.close()
    assert result.returncode == 0, result.stderr
    report = agent_reports(result.stdout)[0]["data"]
    assert report["connected"] > 0
    assert denied_hits == []
    assert len(allowed_hits) == report["connected"]


@pytest.mark.slow
def test_a_thread_flipping_a_datagrams_address_never_reaches_the_denied_port(
    sandbox: Sandbox,
) -> None:
    receivers = []
    for _ in range(2):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 2**20)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        receivers.append(receiver)
    allowed, denied = receivers
    allowed_port, denied_port = allowed.getsockname()[1], denied.getsockname()[1]
    policy = sandbox.policy("one", NET_ONE_PORT.replace("{port}", str(allowed_port)))
    result = sandbox.run(
        "python3",
        TRY,
        "sendto_race",
        str(allowed_port),
        str(denied_port),
        "2000",
        policy=policy,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr

    def drain(receiver: socket.socket) -> int:
        count = 0
        while True:
            try:
                receiver.recv(64)
            except BlockingIOError:
                return count
            count += 1

    delivered, leaked = drain(allowed), drain(denied)
    allowed.close()
    denied.close()
    report = agent_reports(result.stdout)[0]["data"]
    assert report["sent"] > 0
    assert delivered > 0
    assert leaked == 0


@pytest.mark.slow
def test_an_exec_whose_argv_is_swapped_after_the_check_never_runs(sandbox: Sandbox) -> None:
    policy = sandbox.policy(
        "noforbidden",
        """
name: noforbidden
extends: [strict]
rules:
  - id: no-forbidden-word
    actions: [shell_execute]
    pattern: "forbidden"
    decision: deny
    on_violation: block
    priority: 1
""",
    )
    result = sandbox.run("python3", TRY, "exec_race", "300", policy=policy, timeout=240)
    assert result.returncode == 0, result.stderr
    printed = [line for line in result.stdout.splitlines() if not line.startswith("{")]
    assert "forbidden" not in printed
    assert "allowed" in printed
    outcomes = agent_reports(result.stdout)[0]["data"]
    assert sum(outcomes.values()) == 300


def test_strict_kills_an_agent_that_connects_out(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "connect", "127.0.0.1", "9")
    assert result.returncode == 137
    assert "network_connect 127.0.0.1:9" in result.stderr


def test_denied_environment_variables_never_reach_the_agent(sandbox: Sandbox) -> None:
    env = {"OPENAI_API_KEY": "sk-leak", "GITHUB_TOKEN": "ghp-leak", "LANG": "C.UTF-8"}
    result = sandbox.run("python3", TRY, "env", "OPENAI_API_KEY", "GITHUB_TOKEN", "LANG", env=env)
    assert result.returncode == 0, result.stderr
    seen = agent_reports(result.stdout)[0]["data"]
    assert seen == {"OPENAI_API_KEY": None, "GITHUB_TOKEN": None, "LANG": "C.UTF-8"}


@pytest.mark.parametrize("op", ["io_uring", "ptrace"])
def test_always_refused_syscalls_fail_and_are_logged_critical(sandbox: Sandbox, op: str) -> None:
    result = sandbox.run("python3", TRY, op, policy="permissive")
    assert result.returncode == 0, result.stderr
    assert agent_reports(result.stdout)[0]["result"] == "EPERM"
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "agentsup-always-refused"]
    assert refused and refused[0]["severity"] == "critical"
    assert refused[0]["target"] in ("io_uring_setup", "ptrace")


def test_sigstop_leaves_every_process_of_the_tree_stopped(sandbox: Sandbox) -> None:
    policy = sandbox.policy(
        "stopper",
        """
name: stopper
extends: [strict]
rules:
  - id: no-secrets-file
    actions: [file_write]
    target: "{workspace}/forbidden.txt"
    decision: deny
    priority: 1
    on_violation: sigstop
""",
    )
    forbidden = sandbox.workspace / "forbidden.txt"
    proc = subprocess.Popen(
        sandbox.command("python3", TRY, "tree_then", "write", str(forbidden), policy=policy),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        inner = json.loads(proc.stdout.readline())["tree"]
        (agent,) = json.loads(sandbox.agentsup("ps", "--json").stdout)
        tree = host_pids(int(agent["pid"]), inner)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(process_state(pid) == "T" for pid in tree):
                break
            time.sleep(0.05)
        assert [process_state(pid) for pid in tree] == ["T"] * len(tree)
        assert not forbidden.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    for pid in tree:
        assert process_state(pid) in ("", "Z")


def test_the_supervisors_fds_do_not_leak_into_the_agent(sandbox: Sandbox) -> None:
    result = sandbox.run("python3", TRY, "fds")
    assert result.returncode == 0, result.stderr
    fds = agent_reports(result.stdout)[0]["data"]
    # 0, 1, 2 and the fd listdir itself holds open.
    assert fds == [0, 1, 2, 3]


def test_killing_the_supervisor_kills_the_agent_and_fails_closed(sandbox: Sandbox) -> None:
    heartbeat = sandbox.workspace / "heartbeat"
    proc = subprocess.Popen(
        sandbox.command("python3", TRY, "heartbeat", str(heartbeat)),
        env=sandbox.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while not heartbeat.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert heartbeat.exists()
    proc.kill()
    proc.wait()
    time.sleep(1.0)
    beat = heartbeat.read_text()
    time.sleep(1.0)
    assert heartbeat.read_text() == beat, "the agent kept working without its supervisor"
    out = subprocess.run(["pgrep", "-f", f"heartbeat {heartbeat}"], capture_output=True)
    assert out.stdout == b""


def test_a_fork_bomb_ends_at_the_process_limit(sandbox: Sandbox) -> None:
    policy = sandbox.policy(
        "limited",
        """
name: limited
extends: [strict]
limits:
  max_processes: 20
""",
    )
    result = sandbox.run("python3", TRY, "forkbomb", "200", policy=policy)
    assert result.returncode == 0, result.stderr
    report = agent_reports(result.stdout)[0]
    assert report["result"] == "EAGAIN"
    assert report["data"] < 20


@pytest.mark.requires_root
def test_the_memory_limit_stops_a_hungry_agent(sandbox: Sandbox) -> None:
    policy = sandbox.policy(
        "small",
        """
name: small
extends: [strict]
limits:
  memory_mb: 64
""",
    )
    hog = "b = bytearray(512 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('allocated')"
    result = sandbox.run("python3", "-c", hog, policy=policy)
    assert result.returncode in (137, 1), result.stderr  # OOM-killed, or MemoryError
    assert "allocated" not in result.stdout


def test_the_runtime_limit_kills_the_agent(sandbox: Sandbox) -> None:
    policy = sandbox.policy(
        "short",
        """
name: short
extends: [strict]
limits:
  max_runtime_seconds: 1
""",
    )
    started = time.monotonic()
    result = sandbox.run("python3", TRY, "sleep", "30", policy=policy)
    assert result.returncode == 137
    assert time.monotonic() - started < 10
    assert "limits.max_runtime_seconds" in result.stderr


def test_exit_codes(sandbox: Sandbox, tmp_path: Path) -> None:
    assert sandbox.run("python3", "-c", "raise SystemExit(7)").returncode == 7
    assert sandbox.run("no-such-program-anywhere").returncode == 127
    not_executable = tmp_path / "plain.txt"
    not_executable.write_text("data")
    assert sandbox.run(str(not_executable)).returncode == 126
    bad = sandbox.policy("bad", "name: bad\nrules:\n  - id: x\n    decision: alow\n")
    result = sandbox.run("true", policy=bad)
    assert result.returncode == 125
    assert "bad.yaml:" in result.stderr
    assert sandbox.run("python3", "-c", "import os; os.kill(os.getpid(), 15)").returncode == 143


def test_json_status_names_the_killing_rule(sandbox: Sandbox, tmp_path: Path) -> None:
    status_file = tmp_path / "status.json"
    result = sandbox.run("cat", str(sandbox.key), extra=["--json-status", str(status_file)])
    assert result.returncode == 137
    status = json.loads(status_file.read_text())
    assert status["exit_code"] == 137
    assert status["signal"] == "SIGKILL"
    assert status["killed_by"]["rule"] == "secret-ssh"
    assert status["killed_by"]["action"] == "file_read"


def test_run_needs_a_program(sandbox: Sandbox) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentsup", "run"], env=sandbox.env, capture_output=True, text=True
    )
    assert result.returncode == 125
    assert len(result.stderr.strip().splitlines()) == 1


CONT_LOOPS = """
exec 3>ticks.txt
( i=0; while :; do i=$((i+1)); [ $((i % 20000)) = 0 ] && echo "tick $i" >&3; done ) &
for i in 1 2 3 4; do ( while :; do ( kill -CONT -1 ) ; done ) & done
wait
"""


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_the_agent_cannot_undo_a_stop_with_its_own_sigcont(sandbox: Sandbox) -> None:
    """Red team 38 F3: processes forked to send `kill -CONT -1` while the stop
    went out one process at a time resumed those already stopped (a third of
    the tries).  The stop goes out again until no process of the tree runs."""
    proc = sandbox.start("sh", "-c", CONT_LOOPS, policy="permissive")
    try:
        time.sleep(1.0)
        assert sandbox.agentsup("stop", "t").returncode == 0
        time.sleep(0.5)
        ticks = sandbox.workspace / "ticks.txt"
        before = ticks.read_text().count("tick")
        time.sleep(1.5)
        assert ticks.read_text().count("tick") == before
    finally:
        proc.kill()
        proc.communicate()
