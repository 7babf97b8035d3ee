"""The shipped templates against other spellings of what they refuse.

A command line is the argv as typed, not a resolved path: `rm -rf //usr`,
`/./usr` and `/usr//` remove /usr, and `dd of=/dev//sda` writes the disk.
The shell rules must read every such spelling (and stay linear: RE2), and
permissive backs `dd-to-disk` with a rule on the disk's real path.
permissive refuses the same secrets as strict, and neither kills an agent
for reading a committed `.env.example`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentsup.events import ActionType, Event, Verdict, ViolationMode
from agentsup.policy import CompiledPolicy, RunContext, compile_policy, resolve_policy

A = ActionType
TEMPLATES = ["strict", "permissive"]
CTX = RunContext(workspace="/w", home="/home/u", agent_id="agent", python_prefixes=("/opt/py",))
# A symlinked home: `{home}` stands for both names.
LINKED = RunContext(
    workspace="/w",
    home="/home/u",
    agent_id="agent",
    python_prefixes=("/opt/py",),
    home_real="/data/homes/u",
)


def template(name: str, ctx: RunContext = CTX) -> CompiledPolicy:
    return compile_policy(resolve_policy(name, Path("/nonexistent-policy-dir")), ctx)


def kills(policy: CompiledPolicy, action: ActionType, target: str) -> str | None:
    """The id of the rule that kills the agent for this, or None."""
    decision = policy.evaluate(Event(action, target))
    if (decision.verdict, decision.on_violation) == (Verdict.DENY, ViolationMode.SIGKILL):
        return decision.rule_id
    return None


# ---------------------------------------------------------------- rm -rf /

RM_SPELLINGS = [
    "rm -rf //",
    "rm -rf ///",
    "rm -rf /.",
    "rm -rf /./",
    "rm -rf /..",
    "rm -rf //*",
    "rm -rf /./*",
    "rm -rf //usr",
    "rm -rf /./usr",
    "rm -rf /../usr",
    "rm -rf /usr//",
    "rm -rf /usr/.",
    "rm -rf /usr/./",
    "rm -rf /usr/..",
    "rm -rf /usr/*",
    "rm -rf //etc/",
    "rm -rf ///var//",
    "rm //usr -rf",
    "rm /./etc/ -r",
    "rm -rf /home/u//",
    "rm -rf /home/u/.",
    "rm -rf /home/u/./",
    "rm -rf /home/u//*",
    "rm -rf //home/u",
    "rm -rf /./home/u",
    "rm -rf /.//home/u/",
    "rm -rf ~//",
    "rm -rf ~/.",
    "rm -rf ~//*",
    "/bin/rm -rf //usr\n",
]
RM_ORDINARY = [
    "rm -rf /tmp/x",
    "rm -rf //tmp/x",
    "rm -rf ./build",
    "rm -rf build/",
    "rm -rf /usr/local/lib/foo",
    "rm -rf //usr/local/x",
    "rm -rf /usr/./local/x",
    "rm -rf /usr/../tmp/x",
    "rm -rf /var/tmp/*",
    "rm -rf /home/u/project",
    "rm -rf /home/u//project",
    "rm -rf ~/.cache",
    "rm -rf ~/.cache/pip",
    "rm -rf /.cache",
    "rm -f /usrlocal",
]


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("command", RM_SPELLINGS)
def test_rm_rf_root_reads_every_spelling_of_its_paths(name: str, command: str) -> None:
    assert kills(template(name), A.SHELL_EXECUTE, command) == "rm-rf-root"


@pytest.mark.parametrize("name", TEMPLATES)
def test_rm_rf_root_reads_the_real_home_too(name: str) -> None:
    policy = template(name, LINKED)
    for command in ("rm -rf /data/homes/u", "rm -rf //data/homes/u//", "rm -rf /home/u/."):
        assert kills(policy, A.SHELL_EXECUTE, command) == "rm-rf-root", command


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("command", RM_ORDINARY)
def test_rm_rf_root_leaves_other_paths_alone(name: str, command: str) -> None:
    assert kills(template(name), A.SHELL_EXECUTE, command) is None


# ---------------------------------------------------------------- dd to a disk

DD_SPELLINGS = [
    "dd if=/tmp/img of=/dev/sda",
    "dd if=/tmp/img of=//dev/sda",
    "dd if=/tmp/img of=/dev//sda",
    "dd if=/tmp/img of=/dev/./sda",
    "dd if=/tmp/img of=/./dev/sda",
    "dd if=/tmp/img of=/../dev/sda",
    "dd if=/tmp/img of=///dev///./nvme0n1",
    "dd if=/tmp/img of=/dev/mmcblk0p1 bs=4M",
    "/usr/bin/dd if=/tmp/img\nof=//dev/vda",
    # device-mapper, md RAID and loop devices are disks too
    "dd if=/tmp/img of=/dev/dm-0",
    "dd if=/tmp/img of=//dev/./dm-12",
    "dd if=/tmp/img of=/dev/mapper/vg0-root",
    "dd if=/tmp/img of=/dev//mapper//./luks-1234 bs=1M",
    "dd if=/tmp/img of=/dev/md0",
    "dd if=/tmp/img of=/dev/md127",
    "dd if=/tmp/img of=/dev/md/raid1",
    "dd if=/tmp/img of=/dev/loop0",
    "dd if=/tmp/img of=/./dev/loop7p1",
    # network, RAM, persistent-memory, cache, optical, flash and ublk devices
    "dd if=/tmp/img of=/dev/nbd0",
    "dd if=/tmp/img of=/dev/zram0",
    "dd if=/tmp/img of=/dev/rbd3",
    "dd if=/tmp/img of=/dev/drbd1",
    "dd if=/tmp/img of=/dev/sr0",
    "dd if=/tmp/img of=/dev/pmem0",
    "dd if=/tmp/img of=/dev/bcache0",
    "dd if=/tmp/img of=/dev/mtdblock2",
    "dd if=/tmp/img of=/dev/ublkb0",
    "dd if=/tmp/img of=/dev/ram0",
    "dd if=/tmp/img of=/dev/zd0",
    "dd if=/tmp/img of=/dev/sg1",
    "dd if=/tmp/img of=/dev/bsg/0:0:0:0",
    "dd if=/tmp/img of=/dev/ng0n1",
    "dd if=/tmp/img of=/dev/mtd0",
    "dd if=/tmp/img of=/dev/dasda",
    "dd if=/tmp/img of=/dev/etherd/e0.1",
    "dd if=/tmp/img of=/dev/fd0",
]
DD_ORDINARY = [
    "dd if=/dev/sda of=/tmp/img",
    "dd if=/tmp/a of=/dev/null",
    "dd if=/tmp/a of=//dev/null",
    "dd if=/tmp/a of=/tmp/dev/sda",
    "dd if=/tmp/a of=/dev/../tmp/sda",
    "dd if=/dev/mapper/vg0-root of=/tmp/img",
    "dd if=/dev/loop0 of=/tmp/img",
    "dd if=/tmp/a of=/tmp/dev/mapper/x",
    "dd if=/tmp/a of=/tmp/dev/loop0",
    "dd if=/tmp/a of=/dev/shm/md0",
    "dd if=/dev/urandom of=/tmp/random bs=1k count=1",
    "dd if=/dev/zero of=/dev/random",
    "dd if=/tmp/a of=/dev/fd/1",
    "dd if=/tmp/a of=/dev/etherd/discover",
]


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("command", DD_SPELLINGS)
def test_dd_to_disk_reads_every_spelling_of_the_device(name: str, command: str) -> None:
    assert kills(template(name), A.SHELL_EXECUTE, command) == "dd-to-disk"


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("command", DD_ORDINARY)
def test_dd_to_disk_leaves_other_targets_alone(name: str, command: str) -> None:
    assert kills(template(name), A.SHELL_EXECUTE, command) is None


DISKS = [
    "/dev/sda",
    "/dev/sdb1",
    "/dev/hda",
    "/dev/vda",
    "/dev/xvdf",
    "/dev/nvme0n1p2",
    "/dev/mmcblk0p1",
    # device-mapper (LVM, LUKS): /dev/mapper/NAME is udev's symlink to dm-N,
    # and the node itself where no udev made the links
    "/dev/dm-0",
    "/dev/dm-12",
    "/dev/mapper/vg0-root",
    "/dev/mapper/luks-1234",
    # md RAID: /dev/md/NAME is udev's symlink to mdN
    "/dev/md0",
    "/dev/md127",
    "/dev/md127p1",
    "/dev/md/raid1",
    # loop devices (a disk image, a snap)
    "/dev/loop0",
    "/dev/loop7p1",
    # network (nbd, Ceph's rbd, drbd), RAM (zram, brd's ram), persistent memory,
    # bcache, optical, flash and ublk block devices
    "/dev/nbd0",
    "/dev/nbd15p1",
    "/dev/rbd0",
    "/dev/drbd1",
    "/dev/zram0",
    "/dev/ram0",
    "/dev/pmem0",
    "/dev/pmem0.1",
    "/dev/bcache0",
    "/dev/sr0",
    "/dev/mtdblock2",
    "/dev/ublkb0",
    # ZFS volumes (/dev/zvol/... leads there), SCSI and NVMe pass-through
    # (an fd open for writing may send write commands), raw flash, s390,
    # null_blk, Micron and sTec SSDs, AoE, floppy and old SCSI CD names
    "/dev/zd0",
    "/dev/zd16p1",
    "/dev/sg0",
    "/dev/bsg/0:0:0:0",
    "/dev/ng0n1",
    "/dev/mtd0",
    "/dev/mtd0ro",
    "/dev/ubiblock0_1",
    "/dev/dasda",
    "/dev/dasdb1",
    "/dev/nullb0",
    "/dev/rssda",
    "/dev/skd0",
    "/dev/etherd/e0.1",
    "/dev/fd0",
    "/dev/scd0",
]
# Devices of those families that are no disks: dmsetup opens the first.
NOT_DISKS = ["/dev/mapper/control", "/dev/etherd/discover", "/dev/fd/1"]


@pytest.mark.parametrize("disk", DISKS)
def test_permissive_kills_a_write_to_a_disk_by_its_real_path(disk: str) -> None:
    """However the command named it (a symlink under /dev/disk or /dev/mapper,
    a relative path, a program's own open), the write reaches the disk's real
    path.  A read is refused, with no signal: a raw disk holds every file the
    rules refuse (red team 21)."""
    permissive = template("permissive")
    assert kills(permissive, A.FILE_WRITE, disk) == "whole-disk-write"
    read = permissive.evaluate(Event(A.FILE_READ, disk))
    assert (read.verdict, read.rule_id, read.on_violation) == (
        Verdict.DENY, "whole-disk-read", ViolationMode.BLOCK,
    )  # fmt: skip


@pytest.mark.parametrize("device", NOT_DISKS)
def test_permissive_lets_the_control_devices_be(device: str) -> None:
    permissive = template("permissive")
    for action in (A.FILE_READ, A.FILE_WRITE):
        assert permissive.evaluate(Event(action, device)).verdict is Verdict.ALLOW


def test_permissive_refuses_loop_control() -> None:
    """Opened for reading, /dev/loop-control adds and removes the host's loop
    devices (LOOP_CTL_ADD, LOOP_CTL_REMOVE: red team 21)."""
    permissive = template("permissive")
    for action in (A.FILE_READ, A.FILE_WRITE):
        assert permissive.evaluate(Event(action, "/dev/loop-control")).verdict is Verdict.DENY


# Devices that act on the host or the people at it, which a root agent opens
# as their owner (red team 21 wrote to the first ones under permissive).
HOST_DEVICES = [
    "/dev/console",
    "/dev/tty1",
    "/dev/ttyS0",
    "/dev/vcs",
    "/dev/vcsa1",
    "/dev/vcsu2",
    "/dev/input/event3",
    "/dev/uinput",
    "/dev/uhid",
    "/dev/hidraw0",
    "/dev/bus/usb/001/002",
    "/dev/i2c-1",
    "/dev/gpiochip0",
    "/dev/watchdog",
    "/dev/watchdog0",
    "/dev/tpm0",
    "/dev/tpmrm0",
    "/dev/ipmi0",
    "/dev/mei0",
    "/dev/fb0",
    "/dev/cpu_dma_latency",
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/dev/nvram",
    "/dev/cpu/0/msr",
    "/dev/userfaultfd",
    "/dev/hvc0",
    "/dev/ttyAMA0",
    "/dev/ttyPS1",
    "/dev/ttymxc0",
    "/dev/ttySAC2",
    "/dev/ttysclp0",
    "/dev/xvc0",
    "/dev/usb/hiddev0",
    "/dev/uio0",
    "/dev/vfio/vfio",
    "/dev/vhost-vsock",
    "/dev/rtc0",
    "/dev/rtc",
    "/dev/rfkill",
    "/dev/vga_arbiter",
    "/dev/video0",
    "/dev/media0",
    "/dev/snd/pcmC0D0c",
    "/dev/lp0",
    "/dev/parport0",
]
# What developers use, which permissive leaves to them.
DEVELOPER_DEVICES = [
    "/dev/tty",
    "/dev/pts/3",
    "/dev/ttyUSB0",
    "/dev/ttyACM0",
    "/dev/dri/card0",
    "/dev/dri/renderD128",
    "/dev/kvm",
    "/dev/snd/pcmC0D0p",
    "/dev/nvidia0",
    "/dev/fuse",
]


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("device", HOST_DEVICES)
def test_devices_that_act_on_the_host_are_refused(name: str, device: str) -> None:
    """Opened, the watchdog reboots the host unless fed, a console read takes
    what is typed at it, uinput types into the host's session, and
    /dev/userfaultfd is the syscall the filter refuses: neither template
    opens them, permissive with no signal (`host-devices`)."""
    policy = template(name)
    for action in (A.FILE_READ, A.FILE_WRITE):
        decision = policy.evaluate(Event(action, device))
        assert decision.verdict is Verdict.DENY, (action, decision)
        if name == "permissive":
            assert (decision.rule_id, decision.on_violation) == (
                "host-devices", ViolationMode.BLOCK,
            )  # fmt: skip


@pytest.mark.parametrize("device", DEVELOPER_DEVICES)
def test_permissive_leaves_developers_devices_usable(device: str) -> None:
    permissive = template("permissive")
    for action in (A.FILE_READ, A.FILE_WRITE):
        assert permissive.evaluate(Event(action, device)).verdict is Verdict.ALLOW, action


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize(
    "target",
    [
        "/dev/kmsg",
        "/dev/ttyprintk",
        "/proc/self/loginuid",
        "/proc/42/task/43/loginuid",
        "/proc/42/sessionid",
    ],
)
def test_the_hosts_logs_are_not_written(name: str, target: str) -> None:
    """A line in /dev/kmsg is the kernel's log, and loginuid is who the host's
    audit records a process as.  Reading them (dmesg) stays allowed."""
    policy = template(name)
    assert policy.evaluate(Event(A.FILE_WRITE, target)).verdict is Verdict.DENY
    if name == "permissive":
        assert policy.evaluate(Event(A.FILE_WRITE, target)).rule_id == "host-logs"
        assert policy.evaluate(Event(A.FILE_READ, target)).verdict is Verdict.ALLOW


@pytest.mark.parametrize("disk", DISKS)
def test_strict_refuses_a_write_to_a_disk_by_its_real_path(disk: str) -> None:
    decision = template("strict").evaluate(Event(A.FILE_WRITE, disk))
    assert decision.verdict is Verdict.DENY


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_harmless_devices_stay_writable(name: str) -> None:
    policy = template(name)
    for device in ("/dev/null", "/dev/tty", "/dev/shm/x", "/dev/pts/0"):
        assert policy.evaluate(Event(A.FILE_WRITE, device)).verdict is Verdict.ALLOW, device


@pytest.mark.parametrize("name", TEMPLATES)
def test_many_slashes_are_decided_at_once(name: str) -> None:
    policy = template(name)
    for command in ("rm -rf " + "/" * 60_000 + "x", "dd of=" + "/./" * 30_000 + "x"):
        start = time.perf_counter()
        policy.evaluate(Event(A.SHELL_EXECUTE, command))
        assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------- secrets


# Rules that refuse secrets (priority 10): permissive refuses each as strict does.
def _secret_rules(name: str) -> dict[str, tuple[Verdict, ViolationMode | None]]:
    policy = resolve_policy(name, Path("/nonexistent-policy-dir"))
    return {
        rule.id: (rule.decision, rule.on_violation)
        for rule in policy.rules
        if rule.priority == 10 and rule.decision is Verdict.DENY
    }


def test_permissive_refuses_every_secret_strict_refuses() -> None:
    assert _secret_rules("permissive") == _secret_rules("strict")


# One sample or more per secret rule that is not `secret-*` (those are in
# test_jobs_e2e.SECRET_SAMPLES); `kills` False: refused quietly.
TOKEN_SAMPLES: dict[str, tuple[list[str], bool]] = {
    "token-files": (["{home}/.git-credentials", "{home}/.pypirc"], True),
    "system-credentials": (
        ["/etc/shadow-", "/etc/ssh/ssh_host_ed25519_key", "/etc/krb5.keytab"],
        True,
    ),
    "shell-history": (["{home}/.bash_history", "{home}/.local/share/fish/fish_history"], False),
    "npm-user-config": (["{home}/.npmrc"], False),
}


def test_every_other_secret_rule_has_a_sample() -> None:
    others = {rule for rule in _secret_rules("strict") if not rule.startswith("secret-")}
    assert others == set(TOKEN_SAMPLES)


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("ctx", [CTX, LINKED], ids=["home", "symlinked-home"])
def test_tokens_credentials_and_histories_are_refused(name: str, ctx: RunContext) -> None:
    policy = template(name, ctx)
    homes = [ctx.home, ctx.home_real] if ctx.home_real else [ctx.home]
    for rule, (samples, killing) in TOKEN_SAMPLES.items():
        for home in homes:
            for sample in samples:
                path = sample.format(home=home)
                decision = policy.evaluate(Event(A.FILE_READ, path))
                assert (decision.verdict, decision.rule_id) == (Verdict.DENY, rule), path
                expected = ViolationMode.SIGKILL if killing else ViolationMode.BLOCK
                assert decision.on_violation is expected, path


DOTENV_TEMPLATES = [
    ".env.example",
    ".env.sample",
    ".env.template",
    ".env.tpl",
    ".env.dist",
    ".env.defaults",
]
DOTENV_SECRETS = [".env.local", ".env.production", ".env.development.local", ".env.example.bak"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_a_committed_env_template_is_no_secret(name: str) -> None:
    """`git status` in a repo with a committed `.env.example` reads it: no kill."""
    policy = template(name)
    for directory in ("/w", "/w/app/config"):
        for file in DOTENV_TEMPLATES:
            for action in (A.FILE_READ, A.FILE_WRITE):
                target = f"{directory}/{file}"
                assert policy.evaluate(Event(action, target)).verdict is Verdict.ALLOW, target
        for file in DOTENV_SECRETS:
            target = f"{directory}/{file}"
            assert kills(policy, A.FILE_READ, target) == "secret-dotenv-variants", target
        assert kills(policy, A.FILE_READ, f"{directory}/.env") == "secret-dotenv"
