"""The broker's own /proc entry is never the agent's to open.

Found by red team 17 (critical).  The broker is PID 1 of the agent's PID
namespace, so the agent's /proc/1 is the broker.  An absolute /proc name is
the supervisor's, but the native path made a relative name absolute from
the agent's cwd and opened it at once: from "/", "proc/1/environ" gave the
broker's environment (variables `env.deny` kept from the agent), and under
a policy that lets /proc be written, "proc/1/mem" opened read-write gave the
broker's memory, into which the agent wrote code that ran as the broker,
with no seccomp filter and the listener in hand.

Now a name made absolute is held to what an absolute one is (/proc, /dev
and /sys are the supervisor's), and nothing on the agent's procfs is served
by the native path, whatever name reached it.  Both paths refuse.

Red team 18 then reached the same through another procfs mount (a build
chroot's /proc, on both paths): its `self` is whoever reads it.  Every
procfs but the agent's /proc is detached from its mount namespace at
launch, and neither path serves anything on one (C: by the devices in
mountinfo; Python: `Broker._is_mine`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import Sandbox, both_paths, fastpath_env

from agentsup.kernel import namespaces

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]

SECRET = "broker-env-secret-7d1c"

# Each attempt reports what it got: "refused", or the bytes it read.
PROBES = textwrap.dedent(
    """
    import json, os, sys
    mode = os.O_RDWR if sys.argv[1] == "write" else os.O_RDONLY
    results = {}
    def attempt(label, opener):
        try:
            fd = opener()
        except OSError as exc:
            results[label] = "refused " + str(exc.errno)
            return
        try:
            results[label] = os.pread(fd, 200, 0).decode("latin-1") if label != "dir" else "opened"
        except OSError as exc:
            results[label] = "opened, unreadable " + str(exc.errno)
        finally:
            os.close(fd)
    os.chdir("/")
    attempt("environ", lambda: os.open("proc/1/environ", mode))
    attempt("mem", lambda: os.open("proc/1/mem", mode))
    attempt("self", lambda: os.open("proc/self/environ", os.O_RDONLY))
    attempt("dir", lambda: os.open("proc/1", os.O_RDONLY | os.O_DIRECTORY))
    os.chdir("/proc")
    attempt("from-proc", lambda: os.open("1/environ", os.O_RDONLY))
    print(json.dumps(results))
    """
)

# Everything in /proc readable and writable, as an operator might allow it.
PROC_OPEN = """
name: proc-open
extends: [permissive]
rules:
  - {id: proc-rw, actions: [file_read, file_write], target: "/proc/**", decision: allow}
"""


def _probe(sandbox: Sandbox, native: bool, policy: str, mode: str) -> dict[str, str]:
    script = sandbox.workspace / "probe.py"
    script.write_text(PROBES)
    result = sandbox.run(
        "python3",
        str(script),
        mode,
        policy=policy,
        env={**fastpath_env(native), "BROKER_SECRET_TOKEN": SECRET},
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


@both_paths
def test_the_brokers_environment_is_not_read_by_a_relative_name(
    sandbox: Sandbox, native: bool
) -> None:
    """strict keeps *_TOKEN from the agent; the broker, forked before, has it."""
    found = _probe(sandbox, native, "strict", "read")
    assert SECRET not in json.dumps(found), found
    for label in ("environ", "mem", "dir", "from-proc"):
        assert found[label].startswith("refused"), (label, found)


@both_paths
def test_the_brokers_memory_is_not_opened_for_writing(sandbox: Sandbox, native: bool) -> None:
    """Where the policy lets /proc be written, the broker's memory still is not."""
    found = _probe(sandbox, native, sandbox.policy("proc-open", PROC_OPEN), "write")
    assert found["mem"].startswith("refused"), found
    assert found["environ"].startswith("refused"), found
    assert SECRET not in json.dumps(found), found


# -- what a symlink leads to is not opened before the decision ------------------------

SECRET_FIFO_POLICY = """
name: secret-fifo
extends: [strict]
rules:
  - {id: no-secret, actions: [file_read], target: "{workspace}/secret/**", decision: deny,
     priority: 1, on_violation: block}
"""


@both_paths
def test_a_fifo_behind_a_symlink_is_not_opened_before_it_is_refused(
    sandbox: Sandbox, native: bool
) -> None:
    """Opening a device or a FIFO is an act of its own (a watchdog is armed, a
    waiting writer goes on): a read through a symlink is pinned first, as a
    write is, and only opened once allowed.  Here a writer outside the agent
    waits on a FIFO the policy refuses to read; the agent's refused open
    through a symlink must not let it go."""
    secret = sandbox.workspace / "secret"
    secret.mkdir()
    fifo = secret / "fifo"
    os.mkfifo(fifo)
    (sandbox.workspace / "link").symlink_to(fifo)
    opened = threading.Event()

    def writer() -> None:
        with contextlib.suppress(OSError):
            fd = os.open(fifo, os.O_WRONLY)  # waits for a reader
            opened.set()
            os.close(fd)

    threading.Thread(target=writer, daemon=True).start()
    script = sandbox.workspace / "reader.py"
    script.write_text(
        "import os, sys\n"
        "try:\n"
        "    os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK))\n"
        "    print('opened')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    result = sandbox.run(
        "python3",
        str(script),
        str(sandbox.workspace / "link"),
        policy=sandbox.policy("secret-fifo", SECRET_FIFO_POLICY),
        env=fastpath_env(native),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "refused", result.stdout
    assert not opened.wait(0.5), "the waiting writer was let go"
    # Free the writer (a reader of our own), so the thread ends.
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))


# -- another procfs in the agent's mount namespace -------------------------------------

CHROOT_POLICY = """
name: chroot-open
extends: [strict]
rules:
  - {id: chroot, actions: [file_read, file_write], target: "CHROOT/**", decision: allow,
     priority: 1}
"""

FOREIGN_PROBES = textwrap.dedent(
    """
    import json, os, sys
    proc = sys.argv[1]
    results = {}
    for label, name, mode in (
        ("environ", "self/environ", os.O_RDONLY),
        ("mem", "self/mem", os.O_RDWR),
        ("status", "1/status", os.O_RDONLY),
    ):
        try:
            fd = os.open(os.path.join(proc, name), mode)
        except OSError as exc:
            results[label] = "refused " + str(exc.errno)
            continue
        try:
            results[label] = os.pread(fd, 300, 0).decode("latin-1")
        except OSError as exc:
            results[label] = "opened, unreadable " + str(exc.errno)
        os.close(fd)
    print(json.dumps(results))
    """
)


def _probe_foreign_procfs(
    sandbox: Sandbox, native: bool, names: tuple[str, ...], mounts: int
) -> dict[str, str]:
    """FOREIGN_PROBES on a procfs the host mounted `mounts` times at
    /srv/<new>/`names` before the run, under a policy that lets it be read
    and written."""
    # Outside /tmp, which the agent has a private one of.
    chroot = Path(tempfile.mkdtemp(prefix="agentsup-chroot-", dir="/srv"))
    proc = chroot.joinpath(*names)
    proc.mkdir(parents=True)
    for _ in range(mounts):
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        script = sandbox.workspace / "foreign.py"
        script.write_text(FOREIGN_PROBES)
        policy = sandbox.policy("chroot-open", CHROOT_POLICY.replace("CHROOT", str(chroot)))
        result = sandbox.run(
            "python3",
            str(script),
            str(proc),
            policy=policy,
            env={**fastpath_env(native), "BROKER_SECRET_TOKEN": SECRET},
        )
    finally:
        for _ in range(mounts):
            subprocess.run(["umount", "-l", str(proc)], check=False)
        shutil.rmtree(chroot, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    found: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


@both_paths
def test_another_procfs_is_not_the_brokers_window(sandbox: Sandbox, native: bool) -> None:
    """Found by red team 18 (critical, both paths): a procfs mounted elsewhere
    (a build chroot's) resolves `self` for its reader, the broker, which
    opened its own environment and memory for the agent.  Every procfs but
    the agent's /proc is detached from its mount namespace at launch."""
    found = _probe_foreign_procfs(sandbox, native, ("proc",), mounts=1)
    assert SECRET not in json.dumps(found), found
    assert "agentsup-init" not in json.dumps(found), found
    for label in ("environ", "mem", "status"):
        assert found[label].startswith("refused"), (label, found)


def test_every_procfs_but_the_agents_is_found_in_mountinfo() -> None:
    mountinfo = (
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "40 30 0:52 / /srv/build\\040root/proc rw - proc proc rw\n"
        "41 40 0:53 / /srv/build\\040root/proc/sys/fs/binfmt_misc rw - binfmt_misc none rw\n"
        "42 30 0:54 / /host/proc rw shared:7 master:1 - proc none rw\n"
        "43 30 254:0 / /srv rw - ext4 /dev/vda rw\n"
    )
    assert namespaces.procfs_mounts(mountinfo) == [
        ("/proc", os.makedev(0, 21)),
        ("/srv/build root/proc", os.makedev(0, 52)),
        ("/host/proc", os.makedev(0, 54)),
    ]
    assert namespaces.other_procfs(mountinfo) == ["/srv/build root/proc", "/host/proc"]


def test_only_what_a_path_reaches_is_detached_and_stacks_are_seen_through() -> None:
    mountinfo = (
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "50 30 0:60 / /srv/c/proc rw - proc proc rw\n"  # stacked: 51 on top of 50
        "51 50 0:61 / /srv/c/proc rw - proc proc rw\n"
        "60 30 0:62 / /srv/d rw - proc proc rw\n"  # covered by a tmpfs: out of reach
        "61 60 0:63 / /srv/d rw - tmpfs tmpfs rw\n"
    )
    mounts = namespaces.parse_mountinfo(mountinfo)
    assert [m.id for m in namespaces.visible(mounts)] == [22, 51, 61]
    assert namespaces.other_procfs(mountinfo) == ["/srv/c/proc"]
    long_point = "/srv/" + "\\040" * 2100 + "x"
    long_line = f"70 30 0:64 / {long_point} rw - proc proc rw\n"
    assert namespaces.other_procfs(mountinfo + long_line) == [
        "/srv/c/proc",
        "/srv/" + " " * 2100 + "x",
    ]


@both_paths
def test_procfs_stacked_twice_under_a_long_name_is_detached_whole(
    sandbox: Sandbox, native: bool
) -> None:
    """Found by red team 19 (critical, native path): procfs mounted twice at one
    point, under a name of 2,100 spaces (a mountinfo line past 8 KiB).  The
    hiding detached the point once (the lower mount stayed) and the broker's C
    read mountinfo in 8 KiB pieces (that line's device was missed)."""
    names = (*[" " * 210] * 10, "proc")  # 2,100 spaces, each escaped in mountinfo
    found = _probe_foreign_procfs(sandbox, native, names, mounts=2)
    assert SECRET not in json.dumps(found), found
    for label in ("environ", "mem", "status"):
        assert found[label].startswith("refused"), (label, found)


KERNEL_MOUNTS = {"sysfs": "sysfs", "cgroup2": "cgroup2", "binfmt_misc": "binfmt_misc"}


def test_kernel_interfaces_mounted_anywhere_are_read_only(sandbox: Sandbox) -> None:
    """Found by red team 19 (critical, both paths): a sysfs, cgroup2 or
    binfmt_misc the host mounted outside /sys let a root agent under
    `permissive` register a binfmt handler (run outside any sandbox by the
    host), leave agentsup's cgroup and write kernel tunables.  Wherever one is
    mounted, the agent gets it read-only."""
    base = Path(tempfile.mkdtemp(prefix="agentsup-kfs-", dir="/srv"))
    points = {}
    for fstype in KERNEL_MOUNTS:
        point = base / fstype
        point.mkdir()
        subprocess.run(["mount", "-t", fstype, fstype, str(point)], check=True)
        points[fstype] = str(point)
    try:
        script = sandbox.workspace / "mounts.py"
        script.write_text(
            "import json, sys\n"
            "wanted = set(sys.argv[1:])\n"
            "options = {}\n"
            "for line in open('/proc/self/mountinfo'):\n"
            "    fields = line.split()\n"
            "    if fields[4] in wanted:\n"
            "        options[fields[4]] = fields[5].split(',')\n"
            "print(json.dumps(options))\n"
        )
        result = sandbox.run("python3", str(script), *points.values(), policy="permissive")
    finally:
        for point in points.values():
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(base, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    options: dict[str, list[str]] = json.loads(result.stdout.strip().splitlines()[-1])
    for fstype, point in points.items():
        assert "ro" in options[point], (fstype, options)


def test_the_hosts_dev_entries_and_message_queues_are_not_the_agents(sandbox: Sandbox) -> None:
    """Found by red team 20 (high, both paths, under `permissive`): the agent's
    /dev was the host's devtmpfs, writable: it replaced /dev/log with a socket
    of its own and had the host's syslog.  And an mqueue the host mounted
    anywhere showed the host's queues, whose messages a read takes.  Now /dev
    is read-only by itself (its devices are written through it all the same,
    and what the launch mounts beneath it, ptys and /dev/shm, stays the
    agent's), and every mqueue the host mounted is detached."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mq_open.restype = ctypes.c_int
    queue = f"/agentsup-test-{os.getpid()}".encode()
    descriptor = libc.mq_open(queue, os.O_CREAT | os.O_RDWR, 0o600, None)
    assert descriptor >= 0, os.strerror(ctypes.get_errno())
    base = Path(tempfile.mkdtemp(prefix="agentsup-mq-", dir="/srv"))
    subprocess.run(["mount", "-t", "mqueue", "mqueue", str(base)], check=True)
    try:
        assert (base / queue.decode().lstrip("/")).exists()  # the host's queue, there
        script = sandbox.workspace / "dev.py"
        script.write_text(
            "import json, os, sys\n"
            "found = {'queues': sorted(os.listdir(sys.argv[1]))}\n"
            "null = lambda: os.write(os.open('/dev/null', os.O_WRONLY), b'x')\n"
            "for label, act in (('mkdir', lambda: os.mkdir('/dev/agentsup-probe')),\n"
            "                   ('null', null),\n"
            "                   ('shm', lambda: open('/dev/shm/probe', 'w').close())):\n"
            "    try:\n"
            "        act()\n"
            "        found[label] = 'done'\n"
            "    except OSError as exc:\n"
            "        found[label] = exc.errno\n"
            "print(json.dumps(found))\n"
        )
        result = sandbox.run("python3", str(script), str(base), policy="permissive")
    finally:
        subprocess.run(["umount", "-l", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)
        os.close(descriptor)
        libc.mq_unlink(queue)
        with contextlib.suppress(OSError):
            os.rmdir("/dev/agentsup-probe")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["queues"] == [], found
    assert found["mkdir"] == 30, found  # EROFS
    assert found["null"] == "done", found
    assert found["shm"] == "done", found
