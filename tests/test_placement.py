"""`--cpus auto`: a syscall-heavy agent shares its supervisor's CPU, a parallel one spreads."""

from __future__ import annotations

import os
import textwrap

import pytest
from conftest import Sandbox

from agentsup.supervision.placement import Sample, should_share, supervisor_apart

# -- the decision (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("shared", "sample", "expected"),
    [
        # Many mediated syscalls on under one core: share.
        (False, Sample(5000, 0.5, 0.0), True),
        # Few syscalls: nothing to gain.
        (False, Sample(50, 0.5, 0.0), False),
        # Already using more than a core: it computes in parallel.
        (False, Sample(5000, 1.6, 0.0), False),
        # Under a core only because others keep the CPUs busy, and its tasks
        # queue for them: one CPU would make them queue longer.
        (False, Sample(5000, 1.0, 0.8), False),
        # Shared and its tasks queue for the one CPU: spread again.
        (True, Sample(5000, 0.9, 0.6), False),
        # Shared and still busy with syscalls, nobody waiting: stay.
        (True, Sample(3000, 0.6, 0.05), True),
        # Shared and gone quiet: spread.
        (True, Sample(10, 0.1, 0.0), False),
    ],
)
def test_when_to_share(shared: bool, sample: Sample, expected: bool) -> None:
    assert should_share(shared, sample) is expected


@pytest.mark.parametrize(
    ("native", "cpus", "sample", "expected"),
    [
        # The broker answers; the supervisor is told: it runs beside the agent.
        (True, 2, None, True),
        (True, 2, Sample(5000, 0.9, 0.0, answered_per_s=20), True),
        # The agent waits on the supervisor's own answers: hand-overs on one CPU.
        (True, 2, Sample(5000, 0.9, 0.0, answered_per_s=400), False),
        # The Python path answers every syscall in the supervisor.
        (False, 2, Sample(5000, 0.9, 0.0), False),
        # One CPU: nowhere else to go.
        (True, 1, None, False),
    ],
)
def test_when_the_supervisor_keeps_off_the_agents_cpu(
    native: bool, cpus: int, sample: Sample | None, expected: bool
) -> None:
    assert supervisor_apart(native, cpus, sample) is expected


# -- real agents -------------------------------------------------------------------------

# Where placement put the agent: the kernel's own mask (sched_getaffinity
# answers with the CPUs the agent would have bare, test_cpu_affinity_e2e.py).
PLACED_CPUS = """
def placed_cpus():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Cpus_allowed_list:"):
                spans = [part.split("-") for part in line.split()[1].split(",")]
                return sum(int(span[-1]) - int(span[0]) + 1 for span in spans)
"""

SYSCALL_HEAVY = """
import os, time
end = time.monotonic() + 3
while time.monotonic() < end:
    os.close(os.open(__file__, os.O_RDONLY))
print(placed_cpus())
"""

PARALLEL = """
import os, subprocess, sys, time
burn = "import time\\nend = time.monotonic() + 4\\nwhile time.monotonic() < end: pass"
workers = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(2)]
end = time.monotonic() + 4
while time.monotonic() < end:
    os.close(os.open(__file__, os.O_RDONLY))
print(placed_cpus())
for w in workers:
    w.wait()
"""


@pytest.mark.requires_root
@pytest.mark.requires_cgroup
@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs")
@pytest.mark.parametrize(
    ("body", "cpus_at_the_end"),
    [(SYSCALL_HEAVY, 1), (PARALLEL, os.cpu_count() or 1)],
    ids=["syscall-heavy-shares", "parallel-spreads"],
)
def test_auto_placement(sandbox: Sandbox, body: str, cpus_at_the_end: int) -> None:
    script = sandbox.workspace / "agent.py"
    script.write_text(PLACED_CPUS + textwrap.dedent(body))
    result = sandbox.run(str(script), timeout=60)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) == cpus_at_the_end
