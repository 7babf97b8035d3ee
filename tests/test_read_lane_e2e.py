"""The read lane (opt-in): plain reads go to the kernel, which asks the broker (fanotify).

With the lane on, an open or openat for reading only is not trapped by
seccomp: the kernel asks the agent's broker before the file opens, and a
read the policy plainly allows is not asked about again (an ignore mark on
the inode).  Every other read is still judged, by the file actually opened;
a refusal fails with EPERM (fanotify gives no other errno).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest
from conftest import Sandbox, readlane_available, run_again
from test_approval_e2e import totp_secret, tree_states, wait_for_pending

from agentsup.supervision import readlane

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
    pytest.mark.skipif(not readlane_available(), reason="no read lane on this host"),
]


@pytest.fixture(autouse=True)
def _lane_on(sandbox: Sandbox) -> None:
    """Every run here opts in."""
    sandbox.env[readlane.ENV_SWITCH] = "1"


# Reads each path after its own "read" word, moves with "move OLD NEW",
# sleeps with "sleep SECONDS"; one JSON line per step.
READER = """
import json, os, sys, time
args = sys.argv[1:]
while args:
    step = args.pop(0)
    result = {"step": step}
    try:
        if step == "read":
            path = result["path"] = args.pop(0)
            fd = os.open(path, os.O_RDONLY)
            result["data"] = os.read(fd, 100).decode(errors="replace")
            os.close(fd)
        elif step == "move":
            os.rename(args.pop(0), args.pop(0))
        elif step == "sleep":
            time.sleep(float(args.pop(0)))
        result["result"] = "ok"
    except OSError as exc:
        result["result"] = __import__("errno").errorcode[exc.errno]
    print(json.dumps(result), flush=True)
"""

# Reads refused under `blocked/` (no signal), everything else as strict says.
BLOCKED = """
name: blocked
extends: [strict]
rules:
  - id: blocked-reads
    actions: [file_read]
    target: "{workspace}/blocked/**"
    decision: deny
    on_violation: block
    priority: 1
    message: not to be read
"""


def reader(
    sandbox: Sandbox, *steps: str, policy: str = "strict", lane: bool = True
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, str]]]:
    script = sandbox.workspace / "reader.py"
    script.write_text(READER)
    result = sandbox.run(
        "python3",
        str(script),
        *steps,
        policy=policy,
        env={readlane.ENV_SWITCH: "1" if lane else "0"},
    )
    return result, [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def start_record(sandbox: Sandbox) -> dict[str, object]:
    return next(r for r in sandbox.audit_records() if r.get("event") == "start")


def test_a_run_says_the_lane_is_on_and_plain_reads_work(sandbox: Sandbox) -> None:
    (sandbox.workspace / "notes.txt").write_text("plain\n")
    result, steps = reader(sandbox, *["read", str(sandbox.workspace / "notes.txt")] * 3)
    assert result.returncode == 0, result.stderr
    assert [step["data"] for step in steps] == ["plain\n"] * 3
    assert str(start_record(sandbox)["read_lane"]).startswith("on")
    layers = start_record(sandbox)["layers"]
    assert isinstance(layers, dict) and layers["read_lane"] is True


def test_a_secret_read_kills_the_agent_at_the_kernel(sandbox: Sandbox) -> None:
    (sandbox.workspace / ".env").write_text("TOKEN=hunter2\n")
    result, _steps = reader(sandbox, "read", str(sandbox.workspace / ".env"))
    assert result.returncode == 137
    assert "hunter2" not in result.stdout
    killed = [r for r in sandbox.audit_records() if r.get("rule") == "secret-dotenv"]
    assert killed[0]["decision"] == "deny" and killed[0]["response"] == "kill"
    assert killed[0]["layer"] == "fanotify"


def test_a_refused_read_fails_with_eperm_on_record(sandbox: Sandbox) -> None:
    (sandbox.workspace / "blocked").mkdir()
    (sandbox.workspace / "blocked" / "plans.txt").write_text("secret plans\n")
    policy = sandbox.policy("blocked", BLOCKED)
    result, steps = reader(
        sandbox, "read", str(sandbox.workspace / "blocked" / "plans.txt"), policy=policy
    )
    assert result.returncode == 0, result.stderr
    assert steps[0]["result"] == "EPERM"
    refusal = next(r for r in sandbox.audit_records() if r.get("rule") == "blocked-reads")
    assert refusal["layer"] == "fanotify"
    assert refusal["target"] == str(sandbox.workspace / "blocked" / "plans.txt")


def test_a_file_moved_where_reads_are_refused_is_asked_about_again(sandbox: Sandbox) -> None:
    # The first read leaves an ignore mark on the inode; the move must drop it.
    (sandbox.workspace / "blocked").mkdir()
    (sandbox.workspace / "notes.txt").write_text("was plain\n")
    policy = sandbox.policy("blocked", BLOCKED)
    old, new = sandbox.workspace / "notes.txt", sandbox.workspace / "blocked" / "notes.txt"
    result, steps = reader(
        sandbox,
        "read",
        str(old),
        "read",
        str(old),
        "move",
        str(old),
        str(new),
        "read",
        str(new),
        policy=policy,
    )
    assert result.returncode == 0, result.stderr
    assert [step["result"] for step in steps] == ["ok", "ok", "ok", "EPERM"]


def test_a_file_the_host_renames_is_asked_about_again_within_a_second(sandbox: Sandbox) -> None:
    (sandbox.workspace / "blocked").mkdir()
    old, new = sandbox.workspace / "notes.txt", sandbox.workspace / "blocked" / "notes.txt"
    old.write_text("was plain\n")
    policy = sandbox.policy("blocked", BLOCKED)
    script = sandbox.workspace / "reader.py"
    script.write_text(READER)
    proc = sandbox.start(
        "python3",
        str(script),
        "read",
        str(old),
        "sleep",
        "1",
        "read",
        str(new),
        "sleep",
        "1.5",
        "read",
        str(new),
        policy=policy,
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert json.loads(first)["result"] == "ok"
        os.rename(old, new)  # the host's rename: the broker does not see it
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    steps = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    # Right after the rename the mark may still stand; a second later it is gone.
    assert steps[-1]["step"] == "read" and steps[-1]["result"] == "EPERM", err


@pytest.mark.skipif(not os.path.exists("/dev/vcs"), reason="no /dev/vcs on this host")
def test_a_device_the_policy_does_not_allow_stays_out_of_reach(sandbox: Sandbox) -> None:
    # The kernel asks nothing about opening a device: the floor refuses
    # reading those the policy does not plainly allow (a root agent could
    # read the console's screen, with no capability, through /dev/vcs).
    result, steps = reader(sandbox, "read", "/dev/vcs", "read", "/dev/zero")
    assert result.returncode == 0, result.stderr
    assert [step["result"] for step in steps] == ["EACCES", "ok"]
    assert steps[1]["data"] == "\0" * 100


def test_without_the_lane_the_same_refusal_is_eacces(sandbox: Sandbox) -> None:
    (sandbox.workspace / "blocked").mkdir()
    (sandbox.workspace / "blocked" / "plans.txt").write_text("secret plans\n")
    policy = sandbox.policy("blocked", BLOCKED)
    result, steps = reader(
        sandbox, "read", str(sandbox.workspace / "blocked" / "plans.txt"), policy=policy, lane=False
    )
    assert result.returncode == 0, result.stderr
    assert steps[0]["result"] == "EACCES"
    assert str(start_record(sandbox)["read_lane"]) == f"off (opt in with {readlane.ENV_SWITCH}=1)"


PROCFS_RULE = """
name: no-environ
extends: [strict]
rules:
  - id: no-environ
    actions: [file_read]
    pattern: '^/proc/[0-9]+/environ\\Z'
    decision: deny
    on_violation: block
    priority: 1
"""


def test_a_policy_that_judges_procfs_reads_keeps_the_lane_off(sandbox: Sandbox) -> None:
    # procfs takes no permission events: its reads would go unjudged.
    policy = sandbox.policy("no-environ", PROCFS_RULE)
    result, steps = reader(sandbox, "read", "/proc/self/environ", policy=policy)
    assert result.returncode == 0, result.stderr
    assert steps[0]["result"] == "EACCES"
    assert "does not plainly allow reading /proc/" in str(start_record(sandbox)["read_lane"])


APPROVAL = """
name: ask-to-read
extends: [strict]
approval:
  timeout_seconds: 60
  on_timeout: deny
rules:
  - id: reads-need-a-person
    actions: [file_read]
    target: "{workspace}/ask/**"
    decision: require_approval
    priority: 1
"""


def test_a_held_read_waits_for_a_person_and_the_host_does_not(sandbox: Sandbox) -> None:
    secret = totp_secret(sandbox)
    (sandbox.workspace / "ask").mkdir()
    asked = sandbox.workspace / "ask" / "report.txt"
    asked.write_text("the report\n")
    policy = sandbox.policy("ask-to-read", APPROVAL)
    script = sandbox.workspace / "reader.py"
    script.write_text(READER)
    proc = subprocess.Popen(
        sandbox.command(
            "python3", str(script), "read", str(asked), policy=policy, agent_id="asker"
        ),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pending = wait_for_pending(sandbox)
        assert pending[0]["target"] == str(asked)
        assert "T" in tree_states(sandbox) or "D" in tree_states(sandbox)
        # The agent's open waits in the kernel; the host's opens of the same
        # file never wait on the agent's broker (its marks are the agent's mounts').
        started = time.monotonic()
        assert Path(asked).read_text() == "the report\n"
        host = subprocess.run([sys.executable, "-c", f"open({str(asked)!r}).read()"], timeout=10)
        assert host.returncode == 0
        assert time.monotonic() - started < 5
        code = pyotp.TOTP(secret).now()
        resumed = sandbox.agentsup("resume", "asker", "--code", code)
        assert resumed.returncode == 0, resumed.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["data"] == "the report\n"


REOPEN_DELETED = """
import json, os, sys
key = sys.argv[1]
fd = os.open(key, os.O_WRONLY)  # writing it is allowed; reading it is not
os.unlink(key)
try:
    again = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    print(json.dumps({"result": "ok", "data": os.read(again, 100).decode()}))
except OSError as exc:
    print(json.dumps({"result": __import__("errno").errorcode[exc.errno]}))
"""


def test_a_file_read_again_after_its_last_name_went_is_refused(sandbox: Sandbox) -> None:
    # Its path then ends in " (deleted)", which no rule refuses by name.
    key = sandbox.workspace / "server.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    script = sandbox.workspace / "reopen.py"
    script.write_text(REOPEN_DELETED)
    result = sandbox.run("python3", str(script), str(key))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"result": "EPERM"}
    refusals = [r for r in sandbox.audit_records() if r.get("rule") == "agentsup-outside-view"]
    assert refusals and all(r["layer"] == "fanotify" for r in refusals)


def test_a_stream_handed_in_write_only_is_not_read_back(sandbox: Sandbox) -> None:
    # stdout on a host file (`run >> build.log`): a mount of the host's, which
    # the kernel asks nothing about; the floor refuses reading it again.
    log = sandbox.root / "build.log"
    log.write_text("an earlier job's secret\n")
    script = sandbox.workspace / "reader.py"
    script.write_text(READER)
    with open(log, "a") as out:
        result = subprocess.run(
            sandbox.command("python3", str(script), "read", "/proc/self/fd/1"),
            env=sandbox.env,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    written = log.read_text().splitlines()
    assert json.loads(written[-1])["result"] == "EACCES"
    assert "an earlier job's secret" not in written[-1]


def test_dev_is_still_listed_and_the_broker_is_out_of_sight(sandbox: Sandbox) -> None:
    script = sandbox.workspace / "look.py"
    script.write_text(
        "import json, os\n"
        "def tried(action):\n"
        "    try:\n"
        "        return action()\n"
        "    except OSError as exc:\n"
        "        return exc.errno\n"
        "print(json.dumps({'dev': 'null' in tried(lambda: os.listdir('/dev')),\n"
        "                  'pids': sorted(n for n in os.listdir('/proc') if n.isdigit()),\n"
        "                  'init': tried(lambda: open('/proc/1/cmdline').read())}))\n"
    )
    result = sandbox.run("python3", str(script))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["dev"] is True
    assert "1" not in seen["pids"] and seen["pids"]
    assert isinstance(seen["init"], int)  # an errno: the broker's command line stays its own


def test_the_exec_checks_hold_with_the_lane() -> None:
    """A new image's exec is checked at its first trapped syscall (the first
    call of its start-up) or its first read asked about: the attacks on the
    exec check, again, with the lane on.  Found by red-teaming (red team
    29, and one CI run in four): an image whose reads raised no event ran
    to its end before its check."""
    tests = [
        "test_exec_forge_attack.py",
        "test_run_enforcement.py::test_an_exec_whose_argv_is_swapped_after_the_check_never_runs",
        "test_fastpath_e2e.py::test_a_process_that_retitles_itself_after_its_first_syscall_is_not_judged_again",
        "test_native_exec_attacks.py",
        "test_exec_hold_attacks.py",
    ]
    result = run_again(tests, {readlane.ENV_SWITCH: "1"})
    assert result.returncode == 0, result.stdout[-4000:]
