"""A seeded fuzzer for the policy loader: mutations of the shipped templates.

Each case mutates a template (deletions, duplications, byte flips, type
swaps, odd regexes, deep nesting, odd `extends`), then loads it from a file,
and when it loads, compiles it and decides some events.  The only exception
allowed is PolicyError, and no case may take long.  Bounded by time, so it
fits CI; AGENTSUP_FUZZ_SEED and AGENTSUP_FUZZ_SECONDS widen a local run.
"""

from __future__ import annotations

import importlib.resources
import os
import random
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from agentsup.events import ActionType, Event
from agentsup.policy import PolicyError, RunContext, compile_policy, load_policy_file

SEED = int(os.environ.get("AGENTSUP_FUZZ_SEED", "1105"))
BUDGET_SECONDS = float(os.environ.get("AGENTSUP_FUZZ_SECONDS", "3"))
MIN_CASES = 40  # even on a slow, shared machine
CASE_SECONDS = 2.0  # a case takes milliseconds; more is a hang
CTX = RunContext(workspace="/w", home="/home/u", agent_id="agent-1", python_prefixes=("/opt/py",))

# Values a type swap puts where a scalar, list or mapping was.
VALUES = [
    "[]",
    "{}",
    "123",
    "-1",
    "0",
    "null",
    "~",
    "true",
    "1.5",
    "1e999",
    ".nan",
    '"x"',
    "''",
    "!!int abc",
    "!!float x",
    "!!binary aGk=",
    "!!str",
    "[a, [b, [c]]]",
    "{a: b}",
    "*file_actions",
    "&anchor x",
    "*undefined",
    "|\n  text",
    ">-\n  folded",
    "1" + "0" * 5000,
    "[" * 200,
    "{id: x}",
    "- a\n- b",
    "? complex\n: key",
    "!custom x",
    '"\\udc80"',
    "2**63",
]
# Patterns and globs that tempt a regex engine or the glob parser.
PATTERNS = [
    "(a+)+$",
    "(?=x)",
    "(?<!x)y",
    r"(a)\1",
    "a*+",
    "(?>a)",
    "[z-a]",
    "[",
    "a{1000}{1000}",
    "(((((((((((x)))))))))))",
    "{home",
    "{nosuch}",
    "\\",
    "[[:alpha:]]",
    "(?x) a",
    r"\Z\z",
    "**/" * 50,
    "[::1]:0",
    "x" * 3000,
    "(?P<n>a)(?P=n)",
    "a{,3}",
    "(?#c)",
    "\\N{BOGUS}",
]
REFERENCES = [
    "strict",
    "nosuch",
    "/dev/zero",
    "x" * 300,
    "p.yaml",
    "/" + "y" * 300,
    ".",
    "..",
    "a/../b.yaml",
]
INTERESTING_BYTES = b"[]{}:-&*!|>'\"\\\t\n\r\x00\xff\xc3%@`#?,"
EVENTS = [
    (ActionType.FILE_READ, "/w/src/a.py"),
    (ActionType.FILE_WRITE, "/etc/passwd"),
    (ActionType.SHELL_EXECUTE, "rm -rf /"),
    (ActionType.SHELL_EXECUTE, "echo " + "rm -r " * 3000),
    (ActionType.NETWORK_CONNECT, "[::1]:0"),
    (ActionType.ENV_READ, "AWS_SECRET_KEY"),
    (ActionType.DATABASE_EXECUTE, "DROP TABLE x"),
]


def _lines(text: str, rng: random.Random) -> tuple[list[str], int]:
    lines = text.split("\n")
    return lines, rng.randrange(len(lines))


def delete_lines(text: str, rng: random.Random) -> str:
    lines, index = _lines(text, rng)
    del lines[index : index + rng.randint(1, 4)]
    return "\n".join(lines)


def duplicate_lines(text: str, rng: random.Random) -> str:
    lines, index = _lines(text, rng)
    chunk = lines[index : index + rng.randint(1, 6)]
    lines[index:index] = chunk * rng.randint(1, 3)
    return "\n".join(lines)


def swap_lines(text: str, rng: random.Random) -> str:
    lines, index = _lines(text, rng)
    other = rng.randrange(len(lines))
    lines[index], lines[other] = lines[other], lines[index]
    return "\n".join(lines)


def reindent(text: str, rng: random.Random) -> str:
    lines, index = _lines(text, rng)
    lines[index] = " " * rng.choice([0, 1, 3, 5, 8]) + lines[index].lstrip()
    return "\n".join(lines)


def swap_type(text: str, rng: random.Random) -> str:
    lines, index = _lines(text, rng)
    line = lines[index]
    if ":" in line:
        key = line.split(":", 1)[0]
        lines[index] = f"{key}: {rng.choice(VALUES)}"
    else:
        lines[index] = line + rng.choice(VALUES)
    return "\n".join(lines)


def odd_matcher(text: str, rng: random.Random) -> str:
    lines = text.split("\n")
    places = [i for i, line in enumerate(lines) if line.strip().startswith(("target:", "pattern:"))]
    if not places:
        return text
    index = rng.choice(places)
    key = rng.choice(["target", "pattern"])
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    quoted = "'" + rng.choice(PATTERNS).replace("'", "''") + "'"
    lines[index] = f"{indent}{key}: {quoted}"
    return "\n".join(lines)


def odd_extends(text: str, rng: random.Random) -> str:
    references = ", ".join(f'"{rng.choice(REFERENCES)}"' for _ in range(rng.randint(1, 3)))
    lines = [line for line in text.split("\n") if not line.startswith("extends:")]
    return "\n".join(lines).replace("\nrules:", f"\nextends: [{references}]\nrules:", 1)


def odd_env(text: str, rng: random.Random) -> str:
    extra = rng.choice(["[", "*", "[!]", "[z-a]", "GITHUB_TOKEN", "", "a" * 500, "*_KEY"])
    replace = rng.choice(["pass", "deny", "x", "[pass]"])
    text = text.replace("  pass: [", f'  pass: ["{extra}", ', 1)
    return text.replace("\nenv:\n", f"\nenv:\n  replace: [{replace}]\n", 1)


def truncate(text: str, rng: random.Random) -> str:
    return text[: rng.randrange(len(text) + 1)]


MUTATIONS: list[Callable[[str, random.Random], str]] = [
    delete_lines,
    duplicate_lines,
    swap_lines,
    reindent,
    swap_type,
    swap_type,
    odd_matcher,
    odd_matcher,
    odd_extends,
    odd_env,
    truncate,
]


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not buffer:
            break
        index = rng.randrange(len(buffer))
        if rng.random() < 0.5:
            buffer[index] ^= 1 << rng.randrange(8)
        else:
            buffer[index:index] = bytes([rng.choice(INTERESTING_BYTES)])
    return bytes(buffer)


def case(templates: list[str], rng: random.Random) -> bytes:
    text = rng.choice(templates)
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(MUTATIONS)(text, rng)
    data = text.encode("utf-8", "surrogatepass")
    return mutate_bytes(data, rng) if rng.random() < 0.3 else data


class Hang(Exception):
    pass


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no answer within {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(path: Path, policy_dir: Path) -> None:
    """Load, and when it loads, compile and decide: only PolicyError may escape."""
    try:
        policy = load_policy_file(path, policy_dir)
        compiled = compile_policy(policy, CTX)
    except PolicyError as error:
        assert "\n" not in str(error), "a PolicyError is one line"
        return
    for action, target in EVENTS:
        compiled.evaluate(Event(action, target))
    compiled.explain(Event(ActionType.FILE_READ, "/w/x"))
    compiled.filter_environ({"PATH": "/bin", "GITHUB_TOKEN": "x"})


def test_mutated_templates_never_traceback_or_hang(tmp_path: Path) -> None:
    package = importlib.resources.files("agentsup.policies")
    templates = [
        entry.read_text(encoding="utf-8")
        for entry in package.iterdir()
        if entry.name.endswith(".yaml")
    ]
    rng = random.Random(SEED)
    policy_dir = tmp_path / "policy-dir"
    policy_dir.mkdir()
    (policy_dir / "p.yaml").write_text("name: local\nextends: [strict]\n")
    path = tmp_path / "p.yaml"
    failures: list[str] = []
    cases = 0
    stop = time.monotonic() + BUDGET_SECONDS
    while cases < MIN_CASES or time.monotonic() < stop:
        data = case(templates, rng)
        path.write_bytes(data)
        cases += 1
        start = time.monotonic()
        try:
            with deadline(CASE_SECONDS * 5):
                run_case(path, policy_dir)
        except Exception:
            failures.append(f"case {cases} (seed {SEED}):\n{traceback.format_exc(limit=-3)}")
        elapsed = time.monotonic() - start
        if elapsed > CASE_SECONDS:
            failures.append(f"case {cases} (seed {SEED}): took {elapsed:.1f}s")
        if failures:
            failing = tmp_path / f"failing-{cases}.yaml"
            failing.write_bytes(data)
            failures.append(f"input kept in {failing}")
            break
    assert not failures, "\n".join(failures)
