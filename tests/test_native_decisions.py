"""The broker's native path decides plain allows from the judge's own tables.

On a miss in its allow cache, the broker used to ask its copy of the judge
(Python, 13-40 µs with the caches cold after the agent ran).  Now it asks
the program the judge exports (`Judge.plain_program`): RE2's own match over
the policy's set, then the first rule per action, the judge's guards,
agentsup's refusing roots and the Landlock floor, in C.  It must say what
the judge says, for every action and every target it answers; what it
cannot tell (no set, agentsup's own code, a name to normalise, non-ASCII
text) it leaves to the judge.
"""

from __future__ import annotations

import io
import itertools
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import locations_in

from agentsup.kernel import fastpath
from agentsup.policy import RunContext, compile_policy, load_policy_text
from agentsup.policy.floor import FloorCheck, plan_policy_floor
from agentsup.policy.loader import load_policy_file
from agentsup.supervision import agent as agent_module
from agentsup.supervision.judge import Judge, JudgeConfig

pytestmark = pytest.mark.skipif(
    fastpath.native is None, reason="the native extension was not built"
)

POLICIES = Path(__file__).resolve().parent.parent / "policies"
WORKSPACE = "/srv/agent-ws"
HOME = "/home/dev"

# A policy with every kind of decision a rule can give, and the ways a rule
# can be kept from matching.
EVERY_KIND = """
name: every-kind
default: allow
on_violation: block
rules:
  - {id: logged, actions: [file_read], target: "{workspace}/logged/**", decision: log}
  - {id: warned, actions: [file_write], target: "{workspace}/warned/**", decision: warn}
  - id: limited
    actions: [file_write]
    target: "{workspace}/limited/**"
    decision: allow
    rate_limit: {max: 5, per_seconds: 60}
  - {id: held, actions: [file_delete], target: "{workspace}/held/**", decision: require_approval}
  - id: quiet
    actions: [file_read]
    target: "{workspace}/quiet/**"
    decision: deny
    on_violation: log_only
  - id: excepted
    actions: [file_read, file_write]
    target: "{workspace}/ex/**"
    except: ["{workspace}/ex/keep/**", "**/*.md"]
    decision: deny
  - {id: elsewhere, agents: [someone-else], actions: [file_read], target: "/**", decision: deny}
  - {id: no-run, actions: [process_spawn], target: "{workspace}/bin/**", decision: deny}
  - {id: unreadable, actions: [file_read], target: "{workspace}/secret/**", decision: deny}
  - {id: pinned, actions: [file_move], target: "{workspace}/pinned/deep/**", decision: deny}
  - {id: chmod-no, actions: [file_chmod], pattern: '\\.sh\\Z', decision: deny}
  - {id: curl, actions: [shell_execute], pattern: "^curl ", decision: deny}
  - {id: logged-cmd, actions: [shell_execute], target: "make *", decision: log}
"""

# Names the rules of the templates and of EVERY_KIND are about.
NAMES = [
    "a.txt", ".env", "x.pem", "cacert.pem", "k.key", "id_rsa", "id_ed25519.pub", "notes.md",
    "run.sh", "privkey1", "app_key.pem", "x.p12", ".netrc", ".npmrc", "config.json", "__init__.py",
]  # fmt: skip
DIRS = [
    WORKSPACE, f"{WORKSPACE}/logged", f"{WORKSPACE}/warned/x", f"{WORKSPACE}/limited",
    f"{WORKSPACE}/held", f"{WORKSPACE}/quiet", f"{WORKSPACE}/ex", f"{WORKSPACE}/ex/keep",
    f"{WORKSPACE}/bin", f"{WORKSPACE}/secret", f"{WORKSPACE}/pinned", f"{WORKSPACE}/pinned/deep",
    HOME, f"{HOME}/.ssh", f"{HOME}/.aws", f"{HOME}/.config", f"{HOME}/.config/gcloud",
    f"{HOME}/.config/gh", f"{HOME}/.cargo/bin", "/etc", "/etc/ssl/certs", "/etc/ssh", "/usr/bin",
    "/usr/lib/python3", "/tmp", "/var/tmp", "/var/lib/dpkg", "/proc/self", "/proc/1", "/dev",
    "/sys/kernel", "/opt/tool", "/root", "/srv", "/",
]  # fmt: skip
EVERY_BIT = (
    fastpath.ALLOW_READ, fastpath.ALLOW_WRITE, fastpath.ALLOW_DELETE, fastpath.ALLOW_MOVE,
    fastpath.ALLOW_SPAWN, fastpath.ALLOW_SHELL, fastpath.ALLOW_CHMOD,
)  # fmt: skip
COMMANDS = [
    "git status --short", "curl https://example.invalid", "make all", "rm -rf /",
    "rm -rf --no-preserve-root /", "sudo ls", "dd if=/dev/zero of=/dev/sda", ":(){ :|:& };:",
    "ls -la", "python3 -m pytest", "mkfs.ext4 /dev/sdb1", "echo sudo", "/usr/bin/su -",
    "busybox su -c id root", "grep -rn sudo .",
]  # fmt: skip


def _judge(
    tmp_path: Path, policy_text: str | None, template: str | None, *, holes: bool = False
) -> Judge:
    if template is not None:
        loaded = load_policy_file(POLICIES / f"{template}.yaml", POLICIES)
    else:
        assert policy_text is not None
        loaded = load_policy_text(policy_text, policy_dir=tmp_path)
    compiled = compile_policy(loaded, RunContext(WORKSPACE, HOME, "agent-1"))
    root = tmp_path / "agentsup"
    locations = locations_in(root)
    config = JudgeConfig("agent-1", compiled, "p", WORKSPACE, locations, stderr=io.StringIO())
    judge = Judge(config, _NoAudit())
    # Holes in the floor, as agentsup punches them for its own files: allowed
    # by the policy, out of the agent's reach all the same.
    children = [*NAMES, "sub", "logged", "warned", "limited", "held", "quiet", "ex", "bin"]
    listing = {WORKSPACE: [*children, "pinned", "secret"], HOME: [*children, ".cargo"]}
    plan = plan_policy_floor(
        compiled,
        no_write=[f"{WORKSPACE}/pinned", f"{HOME}/.cargo"] if holes else [],
        no_read=[f"{WORKSPACE}/held"] if holes else [],
        abi=7,
        listdir=lambda path: listing.get(path, []),
        realpath=lambda path: path,
        lexists=lambda _path: True,
    )
    judge.floor = FloorCheck(plan)
    return judge


class _NoAudit:
    def append(self, record: object) -> object:
        return record


def _targets(judge: Judge) -> Iterator[bytes]:
    """Paths under every directory the rules name, agentsup's own, edge cases."""
    rng = random.Random(7)
    program = judge.plain_program(())
    assert program is not None
    guarded = [guard.rstrip("/") for guard in (*program.write_guards, *program.read_guards)]
    code = [root.rstrip("/") for root in program.code_dirs]
    for directory in [*DIRS, *guarded, *code]:
        yield os.fsencode(directory)
        base = directory.rstrip("/")
        for name in NAMES:
            yield os.fsencode(f"{base}/{name}")
            yield os.fsencode(f"{base}/sub/{name}")
        yield os.fsencode(f"{base}/" + "".join(rng.choices("abcdefgh._-", k=12)))
    for target in (
        f"{WORKSPACE}//a", f"{WORKSPACE}/./a", f"{WORKSPACE}/../a", f"{WORKSPACE}/a/",
        f"{WORKSPACE}/é.txt", f"{WORKSPACE}/" + "x" * 5000, "relative/name",
        f"{WORKSPACE}/a\0/../secret", f"{WORKSPACE}/a\0//x", "git status\0; rm -rf /",
    ):  # fmt: skip
        yield os.fsencode(target)
    for command in COMMANDS:
        yield command.encode()


CASES = [
    pytest.param("strict", None, id="strict"),
    pytest.param("permissive", None, id="permissive"),
    pytest.param("read_only", None, id="read_only"),
    pytest.param(None, EVERY_KIND, id="every-kind"),
]


@pytest.fixture
def programmed() -> Iterator[Callable[[Judge], Callable[[bytes, int], int]]]:
    """Installs a judge's program; gives the judge's own decider."""
    native = fastpath.native
    assert native is not None

    def install(judge: Judge) -> Callable[[bytes, int], int]:
        decider = agent_module.native_decider(judge)
        native.set_decider(decider)
        native.set_program(agent_module.native_program(judge))
        return decider

    yield install
    native.set_decider(None)


@pytest.mark.parametrize(("template", "text"), CASES)
def test_the_native_program_says_what_the_judge_says(
    tmp_path: Path,
    template: str | None,
    text: str | None,
    programmed: Callable[[Judge], Callable[[bytes, int], int]],
) -> None:
    judge = _judge(tmp_path, text, template, holes=True)
    decide = programmed(judge)
    native = fastpath.native
    assert native is not None
    every = list(EVERY_BIT)
    wanted = [*every, *(a | b for a, b in itertools.combinations(every, 2)), sum(every)]
    answered = asked = 0
    for target in _targets(judge):
        for bits in wanted:
            said = native.plain_bits(target, bits)
            if said == -1:
                continue
            assert said == decide(target, bits), (target, bits)
            answered += 1
        asked += len(wanted)
    # Most targets are plain ASCII paths and commands: the program answers them.
    assert answered > 0.75 * asked


def test_what_only_the_judge_can_tell_is_left_to_it(
    tmp_path: Path, programmed: Callable[[Judge], Callable[[bytes, int], int]]
) -> None:
    judge = _judge(tmp_path, None, "strict")
    programmed(judge)
    native = fastpath.native
    assert native is not None
    read = fastpath.ALLOW_READ
    program = judge.plain_program(())
    assert program is not None
    code = program.code_dirs[0].rstrip("/")
    for target in (
        f"{code}/hooks/_hook.py",  # agentsup's own code: the judge allows it by a rule of its own
        f"{WORKSPACE}/./a",  # a name the judge normalises first
        f"{WORKSPACE}/é.txt",  # the judge's text is the name decoded and encoded again
        f"{WORKSPACE}/" + "x" * 5000,
        f"{WORKSPACE}/a\0/../secret",  # no name holds a NUL: C would stop at it
    ):
        assert native.plain_bits(os.fsencode(target), read) == -1, target
    assert native.plain_bits(os.fsencode(f"{WORKSPACE}/a.txt"), read) == read


def test_a_policy_that_records_every_decision_has_no_program(tmp_path: Path) -> None:
    judge = _judge(tmp_path, None, "audit")
    if judge.policy.audit_level.value == "all":
        assert agent_module.native_program(judge) is None


def test_dropping_the_decider_drops_the_program(
    tmp_path: Path, programmed: Callable[[Judge], Callable[[bytes, int], int]]
) -> None:
    """A reload or a stop drops the broker's judge (set_decider(None)): its
    tables may no longer hold, and every miss goes to the supervisor."""
    programmed(_judge(tmp_path, None, "strict"))
    native = fastpath.native
    assert native is not None
    target = os.fsencode(f"{WORKSPACE}/a.txt")
    assert native.plain_bits(target, 1) == 1
    native.set_decider(None)
    assert native.plain_bits(target, 1) == -1


def test_a_policy_of_thousands_of_patterns_is_decided_natively_too(
    tmp_path: Path, programmed: Callable[[Judge], Callable[[bytes, int], int]]
) -> None:
    """More patterns than one word of hits per 64 needs (4,200 here): the
    broker's hit buffer is sized to the set, not capped."""
    rules = "".join(
        f'  - {{id: r{i}, actions: [file_read], target: "{{workspace}}/d{i}/**",'
        f' except: ["**/*.keep{i}"], decision: deny}}\n'
        for i in range(2100)
    )
    judge = _judge(tmp_path, f"name: big\ndefault: allow\nrules:\n{rules}", None)
    decide = programmed(judge)
    native = fastpath.native
    assert native is not None
    for target in (f"{WORKSPACE}/d2099/a", f"{WORKSPACE}/d2099/a.keep2099", f"{WORKSPACE}/e/a"):
        data = os.fsencode(target)
        said = native.plain_bits(data, fastpath.ALLOW_READ)
        assert said != -1, target
        assert said == decide(data, fastpath.ALLOW_READ), target
