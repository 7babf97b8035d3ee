"""Whatever the policy says, an agent cannot touch agentsup's own files.

Even under `permissive`, an agent that writes to the policy directory or the
audit log, or reads the audit key, is killed; the files stay as they were and
the audit chain still verifies.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import TRY, Sandbox, agent_reports

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]


def _prepare(sandbox: Sandbox) -> None:
    # One supervised run first, so the log, its key and its head exist.
    assert sandbox.run("true", policy="permissive").returncode == 0
    (sandbox.policy_dir / "team.yaml").write_text("name: team\nextends: [strict]\n")


@pytest.mark.parametrize(
    ("op", "target"),
    [
        ("append", "policy_dir/team.yaml"),
        ("append", "audit_log"),
        ("read", "state_dir/audit.key"),
        ("unlink", "audit_log"),
    ],
)
def test_touching_agentsups_files_is_fatal(sandbox: Sandbox, op: str, target: str) -> None:
    _prepare(sandbox)
    base, _, rest = target.partition("/")
    path = getattr(sandbox, base) / rest if rest else getattr(sandbox, base)
    before = path.read_bytes()
    result = sandbox.run("python3", TRY, op, str(path), policy="permissive")
    assert result.returncode == 137, result.stderr
    assert "rule 'agentsup-self-protection'" in result.stderr
    if base == "audit_log":
        # The supervisor keeps appending its own records; the agent's never land.
        assert path.read_bytes().startswith(before)
        assert b"appended by agent" not in path.read_bytes()
    else:
        assert path.read_bytes() == before
    verify = sandbox.agentsup("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    records = sandbox.audit_records()
    # The log holds the attempt (appended by the supervisor, not the agent).
    assert any(
        r.get("rule") == "agentsup-self-protection" and r.get("severity") == "critical"
        for r in records
    )


def test_a_symlink_in_the_workspace_does_not_get_around_it(sandbox: Sandbox) -> None:
    _prepare(sandbox)
    link = sandbox.workspace / "policy.yaml"
    link.symlink_to(sandbox.policy_dir / "team.yaml")
    before = (sandbox.policy_dir / "team.yaml").read_text()
    result = sandbox.run("python3", TRY, "append", str(link), policy="permissive")
    assert result.returncode == 137
    assert (sandbox.policy_dir / "team.yaml").read_text() == before


# Forks until one of its processes has, in the agent's own PID namespace, the
# number the supervisor has on the host; that process reads its /proc/self.
NUMBERED_LIKE_THE_SUPERVISOR = """
import os, time
mark = os.path.join(os.getcwd(), "supervisor.pid")
while not os.path.exists(mark):
    time.sleep(0.01)
wanted = int(open(mark).read())
while True:
    child = os.fork()
    if child == 0:
        if os.getpid() == wanted:
            with open("/proc/self/status") as f:
                print("read" if f.read() else "empty", flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    if child >= wanted:
        break
"""


@pytest.mark.requires_root
def test_the_supervisors_number_is_the_agents_own_process_in_its_own_proc(
    sandbox: Sandbox,
) -> None:
    """In its own PID namespace the agent's /proc numbers its own processes: the
    supervisor's host pid names one of them there, which reads its own /proc/self."""
    agent = subprocess.Popen(
        sandbox.command("python3", "-c", NUMBERED_LIKE_THE_SUPERVISOR, policy="permissive"),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (sandbox.workspace / "supervisor.pid").write_text(str(agent.pid))
    out, err = agent.communicate(timeout=180)
    assert agent.returncode == 0, err
    assert out.strip() == "read", out
    assert not any(r.get("rule") == "agentsup-self-protection" for r in sandbox.audit_records())


def test_moving_a_directory_above_agentsups_files_is_fatal(sandbox: Sandbox) -> None:
    """The directory holding the policy directory, the log and the state moves them all."""
    _prepare(sandbox)
    above = sandbox.policy_dir.parent
    moved = above.with_name(above.name + "-moved")
    result = sandbox.run("python3", TRY, "rename", str(above), str(moved), policy="permissive")
    assert result.returncode == 137, result.stderr
    assert "rule 'agentsup-self-protection'" in result.stderr
    assert sandbox.policy_dir.is_dir() and not moved.exists()


LOCK_EVERYTHING = """
import fcntl, os, sys, time
held = []
for name in os.listdir(sys.argv[1]):
    try:
        fd = os.open(os.path.join(sys.argv[1], name), os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(name)
    except OSError:
        pass
print("holding", sorted(held), flush=True)
time.sleep(6)
"""


def test_an_agent_that_may_read_the_audit_logs_directory_cannot_freeze_supervisors(
    sandbox: Sandbox,
) -> None:
    """Red team 36: under `permissive` an agent flock-ed the lock beside the
    audit log, and every supervisor writing that log froze at its next record
    (its `ps` and `kill` unanswered).  The lock lies beside the head, in the
    state directory, which no agent may read."""
    sandbox.run("true")  # the log, its head and its lock exist
    locker = subprocess.Popen(
        sandbox.command(
            "python3",
            "-c",
            LOCK_EVERYTHING,
            str(sandbox.audit_log.parent),
            policy="permissive",
            agent_id="locker",
        ),
        env=sandbox.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().startswith("holding")
        # Another supervisor on the same log, with records to write.
        other = sandbox.run("python3", TRY, "read", str(sandbox.key), agent_id="other", timeout=5)
        assert other.returncode == 137, other.stderr
    finally:
        locker.kill()
        locker.communicate()
    assert sandbox.agentsup("audit", "verify").returncode == 0


def test_the_policy_file_a_run_was_read_from_is_not_the_agents_to_change(
    sandbox: Sandbox,
) -> None:
    """Red team 36 F1: `--policy ./pol.yaml` in the workspace, rewritten by the
    agent to `extends: [permissive]`, was what the next reload (any edit in the
    policy directory) or the daemon's restart read.  Refused, on record."""
    policy = sandbox.workspace / "pol.yaml"
    text = "name: pol\nextends: [strict]\n"
    policy.write_text(text)
    result = sandbox.run(
        "python3", TRY, "write", str(policy), "then", "write", str(sandbox.workspace / "after"),
        policy=str(policy),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [r["result"] for r in agent_reports(result.stdout)] == ["EACCES", "ok"]
    assert policy.read_text() == text
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "agentsup-self-protection"]
    assert refused and "policy file this run was read from" in str(refused[0]["message"])


def test_a_definition_planted_for_the_daemon_is_fatal(sandbox: Sandbox) -> None:
    """Red team 36 F2: an agent that may write beside the policy directory
    planted `agents/b.yaml`, and the daemon's next SIGHUP ran it as root under
    the policy it named.  The agents directory is agentsup's own."""
    agents = sandbox.policy_dir.parent / "agents"
    agents.mkdir(exist_ok=True)
    planted = agents / "b.yaml"
    result = sandbox.run("python3", TRY, "write", str(planted), policy="permissive")
    assert result.returncode == 137, result.stderr
    assert not planted.exists()
    assert "agentsup-self-protection" in result.stderr


def test_a_symlink_on_the_policy_path_is_not_the_agents_to_repoint(sandbox: Sandbox) -> None:
    """Red team 38 F1: `--policy ./pol.yaml -> conf/real.yaml`: the real file was
    refused, but `ln -sfn evil.yaml pol.yaml` went through, and the next
    reload (or the daemon's restart) read the agent's policy."""
    (sandbox.workspace / "conf").mkdir()
    (sandbox.workspace / "conf" / "real.yaml").write_text("name: real\nextends: [strict]\n")
    link = sandbox.workspace / "pol.yaml"
    link.symlink_to("conf/real.yaml")
    script = "echo 'name: evil\ndefault: allow' > evil.yaml; ln -sfn evil.yaml pol.yaml; exit 0"
    result = sandbox.run("/bin/sh", "-c", script, policy=str(link), cwd=sandbox.workspace)
    assert result.returncode == 0, result.stderr
    assert os.readlink(link) == "conf/real.yaml"
    refused = [r for r in sandbox.audit_records() if r.get("rule") == "agentsup-self-protection"]
    assert refused, sandbox.audit_records()
