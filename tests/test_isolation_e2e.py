"""The walls under mediation: no privilege, the agent's own namespaces, a broker with its rights.

Each test is an attack from inside a real agent under `strict` (as root),
and checks the host afterwards: its hostname, its network, other processes,
the supervisor's secrets, the invoking terminal and files outside the write
roots are what they were.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AGENTS, Sandbox, agent_reports, locations_root

from agentsup.kernel import fastpath

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

ATTACK = "attack.py"


@pytest.fixture
def attacker(sandbox: Sandbox) -> Sandbox:
    shutil.copy(AGENTS / ATTACK, sandbox.workspace / ATTACK)
    return sandbox


def attack(
    sandbox: Sandbox, *args: str, policy: str = "strict"
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, object]]]:
    result = sandbox.run("python3", ATTACK, *args, policy=policy)
    return result, {str(r["op"]): r for r in agent_reports(result.stdout)}


@pytest.fixture
def victim() -> subprocess.Popen[str]:
    """A process outside the agent's tree, with a marker in its environment and memory."""
    marker = "AGENTSUP_VICTIM_MARKER_4711"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"secret = '{marker}' * 4; import time; time.sleep(60)"],
        env={**os.environ, "VICTIM_MARKER": marker},
        text=True,
    )
    yield proc  # type: ignore[misc]
    proc.kill()
    proc.wait()


def test_the_agent_holds_no_capability(attacker: Sandbox) -> None:
    result = attacker.run("/bin/sh", "-c", "grep -E '^Cap|^NoNewPrivs' /proc/self/status")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(":\t") for line in result.stdout.strip().splitlines())
    for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[name], 16) == 0, (name, fields[name])
    assert fields["NoNewPrivs"] == "1"


def test_a_setuid_program_gives_the_agent_nothing(attacker: Sandbox) -> None:
    # passwd is setuid root: with no_new_privs and locked securebits the agent
    # stays what it was (uid 0 with no capabilities).
    result = attacker.run("/bin/sh", "-c", "grep CapEff /proc/self/status", policy="permissive")
    assert "0000000000000000" in result.stdout, result.stderr


def test_sethostname_leaves_the_hosts_name_alone(attacker: Sandbox) -> None:
    before = socket.gethostname()
    result, reports = attack(attacker, "sethostname", "pwned-by-agent", "then", "hostname")
    assert reports["sethostname"]["result"] == "EPERM", result.stderr
    # Its UTS namespace keeps the host's name (which resolves as on the host):
    # the rename it tried there would have stayed there.
    assert reports["hostname"]["data"] == before
    assert socket.gethostname() == before


def test_netlink_cannot_change_the_hosts_network(attacker: Sandbox) -> None:
    before = Path("/sys/class/net/lo/mtu").read_text()
    result, reports = attack(attacker, "netlink_mtu", "1280")
    assert reports["netlink_mtu"]["result"] != "ok", result.stderr
    assert Path("/sys/class/net/lo/mtu").read_text() == before


def test_packet_sockets_are_refused(attacker: Sandbox) -> None:
    result, reports = attack(attacker, "packet")
    assert reports["packet"]["result"] in ("EPERM", "EACCES"), result.stderr


def test_other_processes_cannot_be_reniced_limited_or_rescheduled(
    attacker: Sandbox, victim: subprocess.Popen[str]
) -> None:
    pid = victim.pid
    before = (os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid))
    import resource

    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    _result, reports = attack(
        attacker,
        *("renice", str(pid), "then", "prlimit", str(pid), "then", "sched_idle", str(pid)),
    )
    for op in ("renice", "prlimit", "sched_idle"):
        assert reports[op]["result"] in ("ESRCH", "EPERM"), reports[op]
    assert (os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid)) == before
    assert resource.prlimit(pid, resource.RLIMIT_NOFILE) == limits


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit(1)")
def test_the_broker_pid_1_cannot_be_limited_or_reniced_by_its_agent(attacker: Sandbox) -> None:
    """Red team 11: its broker is in the agent's PID namespace (PID 1, process
    group 1), with its uid; a tight rlimit or nice there starves every
    syscall the agent makes.  Its own processes stay its to limit."""
    script = (
        "prlimit --pid 1 --nofile=8:8 2>/dev/null || echo refused-prlimit; "
        "renice -n 19 -p 1 >/dev/null 2>&1 || echo refused-renice; "
        "renice -n 19 -g 1 >/dev/null 2>&1 || echo refused-group; "
        "prlimit --pid $$ --nofile=512:512 && echo own-ok; "
        "ls . > /dev/null && echo alive"
    )
    result = attacker.run("sh", "-c", script)
    assert result.stdout.split() == [
        "refused-prlimit", "refused-renice", "refused-group", "own-ok", "alive"
    ], result.stderr  # fmt: skip
    assert (None, "agentsup-outside-tree") in attacker.denials()


def test_fanotify_is_refused(attacker: Sandbox) -> None:
    _result, reports = attack(attacker, "fanotify")
    assert reports["fanotify"]["result"] == "EPERM"


def test_proc_shows_only_the_agents_own_tree(
    attacker: Sandbox, victim: subprocess.Popen[str]
) -> None:
    marker = "AGENTSUP_VICTIM_MARKER_4711"
    time.sleep(0.2)  # the victim is running
    assert marker.encode() in Path(f"/proc/{victim.pid}/environ").read_bytes()
    half = len(marker) // 2  # in two pieces: the agent's own argv must not match
    result, reports = attack(
        attacker,
        *("find_marker", marker[:half], marker[half:]),
        *("then", "proc_read", f"/proc/{victim.pid}/environ", marker[:half], marker[half:]),
    )
    assert reports["find_marker"]["result"] == "not_found", reports["find_marker"]
    assert reports["proc_read"]["result"] != "found", result.stderr
    visible = attacker.run("/bin/sh", "-c", "ls /proc | grep -c '^[0-9]'")
    assert int(visible.stdout.strip()) < 10, visible.stdout  # init, shell, ls, grep


def test_the_supervisors_secrets_stay_out_of_reach(attacker: Sandbox) -> None:
    attacker.agentsup("totp", "init")  # a TOTP secret and an audit key exist now
    secrets = [p for p in attacker.state_dir.rglob("*") if p.is_file()]
    assert secrets
    for secret in secrets:
        result = attacker.run("cat", str(secret), policy="permissive")
        assert result.returncode != 0
        assert result.stdout == ""


def test_tiocsti_puts_nothing_into_the_invoking_terminal(attacker: Sandbox) -> None:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            attacker.command("python3", ATTACK, "tiocsti", "echo INJECTED\n"),
            env=attacker.env,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = proc.communicate(timeout=60)
        reports = {r["op"]: r for r in agent_reports(out)}
        assert reports["tiocsti"]["result"] in ("EPERM", "EIO", "ENOTTY"), err
        # What a shell reading this terminal would get next: nothing.
        os.set_blocking(slave, False)
        with pytest.raises(BlockingIOError):
            os.read(slave, 100)
    finally:
        os.close(master)
        os.close(slave)


LINKER = """
name: linker
extends: [strict]
rules:
  - id: read-home
    actions: [file_read]
    target: "{home}/**"
    decision: allow
    priority: 5
"""


def test_a_hard_link_cannot_change_a_file_outside_the_write_roots(attacker: Sandbox) -> None:
    policy = attacker.policy("linker", LINKER)
    outside = attacker.home / "notes.txt"
    outside.write_text("the original\n")
    os.chmod(outside, 0o644)
    before = os.stat(outside)
    link = attacker.workspace / "mine.txt"
    result = attacker.run(
        "python3", "try_syscall.py", "link", str(outside), str(link), policy=policy
    )
    (report,) = agent_reports(result.stdout)
    assert report["result"] == "EXDEV", report  # Landlock: a link cannot gain rights
    # Whatever the agent does to that name now, the file outside is not it.
    attacker.run("python3", "try_syscall.py", "write", str(link), "changed", policy=policy)
    attacker.run("python3", "try_syscall.py", "chmod", str(link), "0777", policy=policy)
    attack(
        attacker,
        *("setxattr", str(link), "then", "utime", str(link), "then", "chown", str(link), "1"),
        policy=policy,
    )
    after = os.stat(outside)
    assert outside.read_text() == "the original\n"
    assert (after.st_mode, after.st_uid, after.st_mtime_ns, after.st_nlink) == (
        before.st_mode,
        before.st_uid,
        before.st_mtime_ns,
        before.st_nlink,
    )
    assert os.listxattr(outside) == []


def test_setuid_and_setgid_bits_never_take_effect(attacker: Sandbox) -> None:
    program = attacker.workspace / "tool"
    result = attacker.run(
        "/bin/sh",
        "-c",
        "cp /bin/true tool && chmod 6755 tool; python3 -c "
        "\"import os; os.close(os.open('made', os.O_CREAT | os.O_WRONLY, 0o6755))\"",
    )
    assert result.returncode == 0, result.stderr
    for path in (program, attacker.workspace / "made"):
        mode = os.stat(path).st_mode
        assert not mode & (stat.S_ISUID | stat.S_ISGID), oct(mode)


def test_tmp_is_private_and_tools_that_use_it_work(attacker: Sandbox) -> None:
    name = f"agentsup-private-{os.getpid()}"
    script = (
        f"echo secret > /tmp/{name} && echo also > /var/tmp/{name} && "
        "f=$(mktemp) && echo ok > $f && cat $f && cat /tmp/" + name
    )
    result = attacker.run("/bin/sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "secret"]
    assert not Path(f"/tmp/{name}").exists()
    assert not Path(f"/var/tmp/{name}").exists()


MESSAGE_QUEUES = """
import ctypes, json, os, sys
rt = ctypes.CDLL("librt.so.1", use_errno=True)
rt.mq_open.restype = ctypes.c_int
found = {}
host = rt.mq_open(sys.argv[1].encode(), os.O_RDWR, 0, None)
found["host"] = "opened" if host >= 0 else os.strerror(ctypes.get_errno())
own = rt.mq_open(b"/own", os.O_CREAT | os.O_RDWR, 0o600, None)
if own < 0:
    found["own"] = os.strerror(ctypes.get_errno())
else:
    rt.mq_send(own, b"ping", 4, 0)
    buffer = ctypes.create_string_buffer(8192)
    size = rt.mq_receive(own, buffer, 8192, None)
    found["own"] = buffer.raw[:size].decode()
    rt.mq_unlink(b"/own")
print(json.dumps(found))
"""


@pytest.mark.parametrize("policy", ["strict", "permissive"])
def test_posix_message_queues_work_and_are_the_agents_own(attacker: Sandbox, policy: str) -> None:
    """mq_open walks the kernel's own mount of the IPC namespace's queues,
    which lies under no Landlock rule: every queue was refused (EACCES).  The
    queues of the agent's own IPC namespace are granted by their root; the
    host's stay out of sight."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mq_open.restype = ctypes.c_int
    queue = f"/agentsup-host-{os.getpid()}".encode()
    descriptor = libc.mq_open(queue, os.O_CREAT | os.O_RDWR, 0o600, None)
    assert descriptor >= 0, os.strerror(ctypes.get_errno())
    try:
        (attacker.workspace / "queues.py").write_text(MESSAGE_QUEUES)
        result = attacker.run("python3", "queues.py", queue.decode(), policy=policy)
    finally:
        os.close(descriptor)
        libc.mq_unlink(queue)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"host": "No such file or directory", "own": "ping"}


@pytest.mark.parametrize("locations", ["elsewhere", "under /tmp"])
def test_a_home_that_is_tmp_is_the_agents_private_tmp(
    attacker: Sandbox, tmp_path: Path, locations: str
) -> None:
    """Some containers set HOME=/tmp: the agent's home is then its private /tmp,
    where it writes and lists as anywhere in /tmp; the host's /tmp stays out of
    sight.  (agentsup's own files under /tmp once made the floor refuse it all.)"""
    if locations == "elsewhere":
        sandbox = attacker
    else:
        (tmp_path / "under-tmp").mkdir()
        sandbox = Sandbox(tmp_path / "under-tmp")
    host_file = Path(f"/tmp/agentsup-host-{os.getpid()}")
    host_file.write_text("the host's\n")
    mine = f"agentsup-mine-{os.getpid()}"
    try:
        script = f"echo mine > /tmp/{mine} && cat /tmp/{mine} && cat ~/{mine} && ls /tmp"
        result = sandbox.run("/bin/sh", "-c", script, env={"HOME": "/tmp"})
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[:2] == ["mine", "mine"]
        assert host_file.name not in result.stdout
        assert not Path("/tmp", mine).exists()
    finally:
        host_file.unlink()
        Path("/tmp", mine).unlink(missing_ok=True)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_gcc_builds_through_its_private_tmp(attacker: Sandbox) -> None:
    (attacker.workspace / "hello.c").write_text(
        '#include <stdio.h>\nint main(void) { puts("hello from gcc"); return 0; }\n'
    )
    result = attacker.run("/bin/sh", "-c", "gcc -o hello hello.c && ./hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from gcc"


def test_the_agent_is_pid_one_of_nothing_and_dies_with_its_tree(attacker: Sandbox) -> None:
    # A background child the agent leaves behind ends with it.
    # An odd duration: the check below looks machine-wide for this very command.
    result = attacker.run("/bin/sh", "-c", "sleep 300.417 & echo $!")
    assert result.returncode == 0, result.stderr
    inner = int(result.stdout.strip())
    assert inner < 100  # numbered by the agent's own PID namespace
    leftovers = subprocess.run(["pgrep", "-f", "^sleep 300.417$"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
    assert json.loads(attacker.agentsup("ps", "--json").stdout or "[]") == []


def test_the_audit_start_record_names_the_layers_of_the_run(attacker: Sandbox) -> None:
    result = attacker.run("true")
    assert result.returncode == 0, result.stderr
    start = next(r for r in attacker.audit_records() if r.get("event") == "start")
    layers = start["layers"]
    assert isinstance(layers, dict)
    assert set(layers["namespaces"]) == {"mount", "pid", "uts", "ipc", "net"}
    assert layers["capabilities"] == "none" and layers["broker"] is True
    assert layers["landlock_abi"] >= 1
    assert layers["hot_path"] == ("native" if fastpath.enabled() else "python")


def test_the_broker_acts_with_the_agents_own_rights(attacker: Sandbox) -> None:
    """Even when the policy allows it, --user nobody cannot read root's private file."""
    private = attacker.workspace / "root-only.txt"
    private.write_text("root's\n")
    os.chmod(private, 0o600)
    os.chmod(attacker.workspace, 0o755)
    os.chmod(attacker.root, 0o755)
    result = attacker.run(
        "/bin/sh", "-c", "id -u; cat root-only.txt", policy="permissive", extra=["--user", "nobody"]
    )
    lines = result.stdout.split()
    assert lines[:1] == [str(pwd_uid("nobody"))], result.stderr
    assert "root's" not in result.stdout
    assert "Permission denied" in result.stderr


def pwd_uid(name: str) -> int:
    import pwd

    return pwd.getpwnam(name).pw_uid


def test_another_supervisor_and_the_audit_log_are_out_of_reach(attacker: Sandbox) -> None:
    """Its memory cannot be read and a forged record cannot be appended."""
    other = subprocess.Popen(
        attacker.command("sleep", "30", agent_id="other"),
        env=attacker.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not attacker.audit_records():
            time.sleep(0.05)
        forged = json.dumps({"seq": 999, "agent": "other", "kind": "decision", "mac": "0" * 64})
        script = (
            f"cat /proc/{other.pid}/environ /proc/{other.pid}/mem 2>/dev/null | head -c 64; "
            f"echo '{forged}' >> {attacker.audit_log}; echo tried"
        )
        result = attacker.run("/bin/sh", "-c", script, policy="permissive", agent_id="attacker")
        assert result.stdout.strip().endswith("tried") or result.returncode == 137
        assert "AGENTSUP" not in result.stdout
    finally:
        other.kill()
        other.wait()
    assert not [r for r in attacker.audit_records() if r.get("mac") == "0" * 64]
    verify = attacker.agentsup("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_brokers_own_files_are_not_the_agents(attacker: Sandbox) -> None:
    """The broker is PID 1 of the agent's namespace: its maps, fds and listener stay its own."""
    script = (
        "for f in maps environ status fd/3 fd/4 fd/5 fd/6 fd/7 task/1/maps; do "
        "  if cat /proc/1/$f >/dev/null 2>&1; then echo got $f; fi; "
        "done; ls /proc/1/fd >/dev/null 2>&1 && echo listed; echo done"
    )
    result = attacker.run("/bin/sh", "-c", script, policy="permissive")
    assert result.stdout.split() == ["done"], result.stdout + result.stderr


def test_new_files_in_tmp_work_even_when_agentsups_files_live_under_tmp(tmp_path: Path) -> None:
    """The private /tmp hides agentsup's files there: no holes punched into the floor."""
    sandbox = Sandbox(tmp_path)  # locations under /tmp, as a test or a custom setup may have
    result = sandbox.run("/bin/sh", "-c", "f=$(mktemp) && echo fresh > $f && cat $f")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fresh"


@contextlib.contextmanager
def virtualenv_under_tmp(where: Path = Path("/tmp")) -> Iterator[Path]:
    """A virtualenv (under the host's /tmp unless `where`) that sees this
    environment's packages, agentsup among them."""
    venv = where / f"agentsup-venv-{os.getpid()}"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
        site = subprocess.run(
            [venv / "bin" / "python", "-c", purelib], check=True, capture_output=True, text=True
        ).stdout.strip()
        outer = [p for p in sys.path if p.endswith("-packages")]
        Path(site, "outer.pth").write_text(f"import site; list(map(site.addsitedir, {outer!r}))\n")
        yield venv
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def test_a_python_agent_runs_from_a_virtualenv_under_tmp(attacker: Sandbox) -> None:
    """agentsup installed in a virtualenv under /tmp: the private /tmp keeps the
    venv's root (its pyvenv.cfg and bin/python, a symlink), not only the file
    that python leads to, so a Python agent still starts."""
    with virtualenv_under_tmp() as venv:
        (attacker.workspace / "where.py").write_text("import sys; print(sys.prefix)\n")
        command = attacker.command(str(attacker.workspace / "where.py"))
        command[0] = str(venv / "bin" / "python")
        result = subprocess.run(
            command, env=attacker.env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(venv)


@pytest.mark.parametrize("policy", ["strict", "permissive"])
def test_the_agent_cannot_write_into_a_virtualenv_under_tmp(attacker: Sandbox, policy: str) -> None:
    """The venv is the host's, bound back into the private /tmp: a .pth file
    written there would run in the next agentsup started from it, as root.
    strict refuses the write; under a policy that allows it (permissive), the
    kernel does: the venv is bound back read-only."""
    with virtualenv_under_tmp() as venv:
        planted = venv / "lib" / "zz-planted.pth"
        script = attacker.workspace / "plant.py"
        script.write_text(f"open({str(planted)!r}, 'w').write('import os')\n")
        command = attacker.command(str(script), policy=policy)
        command[0] = str(venv / "bin" / "python")
        result = subprocess.run(
            command, env=attacker.env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0
        assert not planted.exists()


def test_the_agent_cannot_write_into_agentsups_own_venv_in_its_workspace(
    attacker: Sandbox,
) -> None:
    """A project's .venv with agentsup in it, inside the workspace (outside
    /tmp): the workspace is the agent's to write, its Python is not (the
    next agentsup from it would run what the agent wrote, as root).  The
    kernel keeps it read-only: EROFS, whatever the policy allows."""
    project = locations_root()
    try:
        workspace = project / "ws"
        workspace.mkdir()
        with virtualenv_under_tmp(workspace) as venv:
            planted = venv / "lib" / "zz-planted.pth"
            script = workspace / "plant.py"
            script.write_text(
                f"open({str(workspace / 'mine.txt')!r}, 'w').write('ok')\n"
                f"open({str(planted)!r}, 'w').write('import os')\n"
            )
            command = attacker.command(str(script))
            command[command.index("--workspace") + 1] = str(workspace)
            command[0] = str(venv / "bin" / "python")
            result = subprocess.run(
                command, env=attacker.env, capture_output=True, text=True, timeout=60
            )
            assert "Read-only file system" in result.stderr, result.stderr[-2000:]
            assert (workspace / "mine.txt").read_text() == "ok"
            assert not planted.exists()
    finally:
        shutil.rmtree(project, ignore_errors=True)


def test_an_interpreter_only_the_host_has_is_named_when_an_exec_fails(attacker: Sandbox) -> None:
    """A script whose interpreter lives in the host's /tmp: the agent's /tmp is
    its own, so the exec fails, and the message names what is missing."""
    interpreter = Path("/tmp") / f"agentsup-sh-{os.getpid()}"
    shutil.copy("/bin/sh", interpreter)
    script = attacker.workspace / "tool"
    script.write_text(f"#!{interpreter}\necho ran\n")
    script.chmod(0o755)
    try:
        assert subprocess.run([script], capture_output=True, text=True).stdout == "ran\n"
        result = attacker.run(str(script))
    finally:
        interpreter.unlink()
    assert result.returncode == 127
    assert (
        f"cannot execute {script}: {interpreter} is not in the agent's view "
        "(the agent's /tmp is its own)" in result.stderr
    ), result.stderr


def test_a_device_node_outside_dev_cannot_be_opened_at_all(attacker: Sandbox) -> None:
    """Every mount of the agent's but /dev is nodev: a device node anywhere else
    (made by the host in a workspace, or a copy of /dev in a build chroot) is
    not opened, not even by the broker, which opens a name to look at it
    before it decides (opening a device is an act of its own)."""
    node = attacker.workspace / "null-copy"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    script = attacker.workspace / "devices.py"
    script.write_text(
        "import json, os, sys\n"
        "found = {}\n"
        "for name in (sys.argv[1], '/dev/null'):\n"
        "    try:\n"
        "        os.close(os.open(name, os.O_RDONLY))\n"
        "        found[name] = 'opened'\n"
        "    except OSError as exc:\n"
        "        found[name] = exc.errno\n"
        "with open('/proc/self/mountinfo') as mounts:\n"
        "    fields = [line.split() for line in mounts]\n"
        "found['with devices'] = sorted(\n"
        "    {f[4] for f in fields if 'nodev' not in f[5].split(',')})\n"
        "print(json.dumps(found))\n"
    )
    result = attacker.run("python3", str(script), str(node))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found[str(node)] == 13, found  # EACCES
    assert found["/dev/null"] == "opened", found
    assert all(point == "/dev" or point.startswith("/dev/") for point in found["with devices"]), (
        found
    )


@pytest.mark.parametrize("policy", ["strict", "permissive"])
def test_a_raw_disk_or_loop_control_is_not_opened_for_reading(
    attacker: Sandbox, policy: str
) -> None:
    """Found by red team 21: strict let the agent read every device, and
    permissive every disk.  A raw disk holds every file the rules refuse; a
    loop device or /dev/loop-control opened for reading takes ioctls that
    change the host (LOOP_SET_FD, LOOP_CTL_ADD).  The devices programs read
    stay readable."""
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control on this host")
    script = attacker.workspace / "devread.py"
    script.write_text(
        "import json, os\n"
        "found = {}\n"
        "for name in ('/dev/loop-control', '/dev/urandom', '/dev/null'):\n"
        "    try:\n"
        "        os.close(os.open(name, os.O_RDONLY))\n"
        "        found[name] = 'opened'\n"
        "    except OSError as exc:\n"
        "        found[name] = exc.errno\n"
        "print(json.dumps(found))\n"
    )
    result = attacker.run("python3", str(script), policy=policy)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["/dev/loop-control"] == 13, found  # EACCES
    assert found["/dev/urandom"] == "opened", found
    assert found["/dev/null"] == "opened", found


@pytest.mark.parametrize("policy", ["strict", "permissive"])
def test_devices_that_act_on_the_host_and_its_logs_are_refused(
    attacker: Sandbox, policy: str
) -> None:
    """Found by red team 21 under permissive: a root agent, the owner of
    root's devices, wrote a line into the host's kernel log (/dev/kmsg) and
    opened the console's screen and the CPU's wake-up latency; and
    /dev/userfaultfd is the syscall the filter refuses, by another door.
    Each is refused, with no signal, and the kernel log holds no line of the
    agent's."""
    devices = [
        name
        for name in ("/dev/userfaultfd", "/dev/vcs", "/dev/tty1", "/dev/cpu_dma_latency")
        if os.path.exists(name)
    ]
    marker = f"agentsup-forged-{os.getpid()}"
    script = attacker.workspace / "host_devices.py"
    script.write_text(
        "import json, os, sys\n"
        "found = {}\n"
        "def attempt(name, flags, data=b''):\n"
        "    try:\n"
        "        fd = os.open(name, flags)\n"
        "        if data:\n"
        "            os.write(fd, data)\n"
        "        os.close(fd)\n"
        "        found[name] = 'opened'\n"
        "    except OSError as exc:\n"
        "        found[name] = exc.errno\n"
        "attempt('/dev/kmsg', os.O_WRONLY, sys.argv[1].encode() + b'\\n')\n"
        "for name in sys.argv[2:]:\n"
        "    attempt(name, os.O_RDONLY)\n"
        "attempt('/dev/null', os.O_WRONLY, b'x')\n"
        "print(json.dumps(found))\n"
    )
    result = attacker.run("python3", str(script), marker, *devices, policy=policy)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"/dev/kmsg": 13, **dict.fromkeys(devices, 13), "/dev/null": "opened"}
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    assert marker not in log
