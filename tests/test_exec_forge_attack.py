"""An exec swapped after its check, by an agent that also forged its own command line.

The supervisor lets an allowed exec go on in the kernel, then holds the new
image to what was allowed at its first trapped syscall.  An image that runs
on unchanged means the exec failed.  Told apart by /proc/PID/cmdline, that
could be forged: the agent writes the refused command line over its own argv
memory, so the refused image it races in looks like the caller after a failed
exec.  These tests run that attack (and a swap of the file alone, its argv
left as allowed), with the native path on and off, and require that the
refused command never has its effect, that what is refused is recorded, and
that ordinary failed execs still go unpunished.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import Sandbox, agent_reports
from test_fastpath_attacks import both_paths

from agentsup.kernel import fastpath

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.requires_seccomp_notify,
    pytest.mark.requires_landlock,
]
AGENT = Path(__file__).parent / "agents" / "exec_forge.py"
POLICY = """
name: forge
extends: [strict]
rules:
  - id: no-touch
    actions: [process_spawn]
    target: "/usr/bin/touch"
    decision: deny
    on_violation: block
    priority: 1
  - id: no-forbidden-word
    actions: [shell_execute]
    pattern: "forbidden"
    decision: deny
    priority: 1
    on_violation: block
    message: a forbidden command line
"""
TRIES = 200


def _run(sandbox: Sandbox, native: bool, *args: str) -> tuple[list[str], dict[str, int]]:
    shutil.copy(AGENT, sandbox.workspace / AGENT.name)
    result = sandbox.run(
        "python3",
        AGENT.name,
        *args,
        policy=sandbox.policy("forge", POLICY),
        timeout=240,
        env={fastpath.ENV_SWITCH: "1" if native else "0"},
    )
    assert result.returncode == 0, result.stderr
    printed = [line for line in result.stdout.splitlines() if not line.startswith("{")]
    outcomes = agent_reports(result.stdout)[0]["data"]
    assert isinstance(outcomes, dict)
    return printed, outcomes


def _refusals(sandbox: Sandbox, rule: str) -> int:
    return sum(1 for r in sandbox.audit_records() if r.get("rule") == rule)


@pytest.mark.slow
@both_paths
@pytest.mark.parametrize("randomize", ["", "norandom"], ids=["aslr", "no-aslr"])
def test_a_refused_argv_raced_in_under_a_forged_command_line_never_runs(
    sandbox: Sandbox, native: bool, randomize: str
) -> None:
    printed, outcomes = _run(sandbox, native, "argv", str(TRIES), randomize)
    assert not [line for line in printed if "forbidden" in line]
    assert any(line.startswith("allowed") for line in printed)
    assert sum(outcomes.values()) == TRIES
    assert set(outcomes) <= {"0", "113", "-9"}  # ran as allowed, refused, or killed after
    # Each refusal, before the exec or after it, is on record.
    assert _refusals(sandbox, "no-forbidden-word") >= outcomes.get("113", 0) + outcomes.get("-9", 0)


# An echo with no C library start-up to speak of: it makes no syscall
# before it writes its arguments (glibc's static start-up asks brk first).
STATIC_ECHO = r"""
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (i > 1) write(1, " ", 1);
        write(1, argv[i], strlen(argv[i]));
    }
    write(1, "\n", 1);
    return 0;
}
"""


@pytest.fixture(scope="module")
def static_echo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = tmp_path_factory.mktemp("static") / "echo"
    source = built.with_suffix(".c")
    source.write_text(STATIC_ECHO)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a static echo")
    made = subprocess.run(
        [compiler, "-static", "-O2", "-o", str(built), str(source)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"no static C library: {made.stderr.decode(errors='replace')[-200:]}")
    return built


@pytest.mark.slow
@both_paths
@pytest.mark.parametrize("image", ["preload", "static"])
def test_a_refused_argv_raced_into_an_image_that_opens_nothing_never_runs(
    sandbox: Sandbox, native: bool, image: str, static_echo: Path
) -> None:
    """Found by red-teaming (red team 29): the new image's first trapped
    syscall is where its exec is checked, and an image that opens no file
    (its libc a memfd's copy, or a static one) reached it only after it had
    written.  The first call of every C and Go start-up (brk(NULL), and
    arch_prctl(ARCH_SET_FS)) is trapped now, so the check comes first."""
    mode = image
    if image == "static":
        shutil.copy(static_echo, sandbox.workspace / "echo")
        mode = f"static:{sandbox.workspace / 'echo'}"
    printed, outcomes = _run(sandbox, native, mode, str(TRIES))
    assert not [line for line in printed if "forbidden" in line]
    assert any(line.startswith("allowed") for line in printed)
    assert sum(outcomes.values()) == TRIES
    assert set(outcomes) <= {"0", "113", "-9"}
    assert _refusals(sandbox, "no-forbidden-word") >= outcomes.get("113", 0) + outcomes.get("-9", 0)


@pytest.mark.slow
@both_paths
def test_a_refused_file_raced_in_under_the_allowed_argv_never_runs(
    sandbox: Sandbox, native: bool
) -> None:
    _, outcomes = _run(sandbox, native, "path", str(TRIES))
    assert not (sandbox.workspace / "touched").exists()
    assert sum(outcomes.values()) == TRIES
    # 102: the exec caught the name half flipped, a file that is not there (ENOENT).
    assert set(outcomes) <= {"0", "102", "113", "-9"}
    assert _refusals(sandbox, "no-touch") >= outcomes.get("113", 0) + outcomes.get("-9", 0)


@both_paths
@pytest.mark.parametrize("mode", ["failing", "failing norandom", "forged"])
def test_execs_that_fail_go_unpunished(sandbox: Sandbox, native: bool, mode: str) -> None:
    # ENOENT, then EACCES: the caller runs on.  Its command line forged to a
    # refused one is no exec of that command; without randomization the
    # caller's own command line is judged again, and it is allowed.
    printed, outcomes = _run(sandbox, native, *mode.split()[:1], "5", *mode.split()[1:])
    assert outcomes == {"0": 5}, printed
    assert _refusals(sandbox, "no-forbidden-word") == 0


@both_paths
def test_a_script_still_runs(sandbox: Sandbox, native: bool) -> None:
    script = sandbox.workspace / "hello.sh"
    script.write_text('#!/bin/sh\necho hello from "$1"\n')
    script.chmod(0o755)
    shutil.copy(AGENT, sandbox.workspace / AGENT.name)
    result = sandbox.run(
        str(script),
        "the script",
        policy=sandbox.policy("forge", POLICY),
        env={fastpath.ENV_SWITCH: "1" if native else "0"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello from the script"
