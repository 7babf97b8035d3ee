"""Decisions per second of the pure evaluator on a realistic 100-rule policy.

    python benchmarks/bench_decisions.py [--events N]

The policy mixes globs and regexes over file, shell, network, environment and
database actions, with some agent-scoped rules; the events are mostly file
reads and writes in a workspace and the system, with some shell and network.
The target is 500,000 decisions/s on one core in CPython 3.11.

It then times `strict` on 100 KB command lines built to make a backtracking
engine stall (issue 11: one such line held the loop for 27 s).  Matching is
linear (RE2), so each must be decided in well under 10 ms.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from agentsup.events import ActionType, Event
from agentsup.policy import (
    MAX_TARGET_LENGTH,
    RunContext,
    compile_policy,
    load_policy_file,
    resolve_policy,
)

WORKSPACE = "/srv/agents/work space (1)"
HOME = "/home/agent"
AGENT_ID = "analyst-7"
TARGET_RATE = 500_000
LONG_TARGET_MS = 10.0

FILE_ACTIONS = "[file_read, file_write, file_delete, file_move, file_chmod]"
SECRETS = [
    "{home}/.ssh/**",
    "{home}/.aws/**",
    "{home}/.gnupg/**",
    "{home}/.config/gcloud/**",
    "{home}/.kube/**",
    "{home}/.docker/config.json",
    "{home}/.netrc",
    "**/*.pem",
    "**/*.key",
    "**/id_rsa*",
    "**/id_ed25519*",
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/sudoers.d/**",
    "**/.env",
    "**/.env.*",
    "{home}/.git-credentials",
    "{home}/.pypirc",
    "/var/lib/agentsup/**",
]
SYSTEM_DIRS = [
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/boot",
    "/var/lib",
    "/srv/data",
]
READ_DIRS = [
    "/usr",
    "/lib",
    "/lib32",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/proc",
    "/sys",
    "/dev/pts",
    "/dev/shm",
    "/var/cache/apt",
    "/usr/share/zoneinfo",
    "/srv/data/in",
    "/srv/data/shared",
    "/var/lib/dpkg",
    "/usr/local/lib",
    "/run/systemd/resolve",
    "{python}",
]
SHELL_DENY = [
    r"(^|[;&|]\s*)rm\s+(-[a-zA-Z]*[rf][a-zA-Z]*\s+)+(/|/\*|~|\{home\})(\s|$)",
    r"--no-preserve-root",
    r"(^|\s)mkfs(\.\w+)?\s",
    r"(^|\s)dd\s.*\bof=/dev/sd",
    r":\(\)\s*\{",
    r"^(sudo|su|doas)(\s|$)",
    r"curl\s[^|]*\|\s*(ba)?sh",
    r"wget\s[^|]*\|\s*(ba)?sh",
    r"^git\s+push\s+.*--force",
    r"chmod\s+-R\s+777\s+/",
    r"^nc\s+-l",
    r"^ssh\s",
    r"^scp\s",
    r"base64\s+-d.*\|\s*sh",
    r"^crontab\s",
]


def _rule(rule_id: str, actions: str, matcher: str, decision: str, **extra: str) -> str:
    lines = [
        f"  - id: {rule_id}",
        f"    actions: {actions}",
        f"    {matcher}",
        f"    decision: {decision}",
    ]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines)


def policy_yaml() -> str:
    rules: list[str] = []
    for index, glob in enumerate(SECRETS):
        rules.append(
            _rule(
                f"secret-{index}",
                FILE_ACTIONS,
                f'target: "{glob}"',
                "deny",
                priority="10",
                severity="critical",
            )
        )
    for index, directory in enumerate(SYSTEM_DIRS):
        rules.append(
            _rule(
                f"system-write-{index}",
                "[file_write, file_delete, file_move, file_chmod]",
                f'target: "{directory}/**"',
                "deny",
                priority="20",
                severity="high",
            )
        )
    for index, pattern in enumerate(SHELL_DENY):
        rules.append(
            _rule(
                f"shell-deny-{index}",
                "[shell_execute]",
                f"pattern: '{pattern}'",
                "deny",
                priority="10",
                severity="critical",
            )
        )
    # Agent-scoped rules: some apply to this agent, some do not.
    for index in range(10):
        agents = '["analyst-*"]' if index % 2 else '["builder", "ops-*"]'
        rules.append(
            _rule(
                f"scoped-{index}",
                "[file_read, file_write]",
                f'target: "/srv/data/team{index}/**"',
                "allow",
                agents=agents,
            )
        )
    rules.append(
        _rule(
            "workspace",
            FILE_ACTIONS,
            'target: "{workspace}/**"',
            "allow",
            **{"except": '["{workspace}/.git/hooks/**"]'},
        )
    )
    rules.append(
        _rule(
            "workspace-git-hooks",
            FILE_ACTIONS,
            'target: "{workspace}/.git/hooks/**"',
            "require_approval",
        )
    )
    rules.append(_rule("scratch", FILE_ACTIONS, 'target: "/tmp/**"', "allow"))
    rules.append(_rule("scratch-var", FILE_ACTIONS, 'target: "/var/tmp/**"', "allow"))
    for index, directory in enumerate(READ_DIRS):
        rules.append(_rule(f"read-{index}", "[file_read]", f'target: "{directory}/**"', "allow"))
    rules.append(
        _rule(
            "devices",
            "[file_read, file_write]",
            r"pattern: '^/dev/(null|zero|full|u?random|tty)\Z'",
            "allow",
        )
    )
    rules.append(
        _rule(
            "data-in-out",
            "[file_read, file_write]",
            r"pattern: '^/srv/data/(in|out)/[^/]+\.(csv|parquet|json)\Z'",
            "allow",
        )
    )
    rules.append(_rule("spawn-system", "[process_spawn]", 'target: "/usr/bin/*"', "allow"))
    rules.append(_rule("spawn-local", "[process_spawn]", 'target: "/usr/local/bin/*"', "allow"))
    rules.append(
        _rule("spawn-python", "[process_spawn]", 'target: "{python}/bin/python*"', "allow")
    )
    rules.append(_rule("shell-any", "[shell_execute]", 'target: "**"', "allow"))
    rules.append(
        _rule(
            "net-unix",
            "[network_connect]",
            'target: "unix:**"',
            "deny",
            on_violation="block",
            severity="low",
        )
    )
    rules.append(_rule("net-dns", "[network_connect]", 'target: "127.0.0.53:53"', "allow"))
    rules.append(_rule("net-internal", "[network_connect]", 'target: "10.*:*"', "require_approval"))
    rules.append(
        _rule(
            "http-github",
            "[network_request]",
            'target: "GET https://api.github.com/**"',
            "allow",
            rate_limit="{max: 100, per_seconds: 60}",
        )
    )
    rules.append(
        _rule(
            "http-pypi",
            "[network_request]",
            r"pattern: '^GET https://(pypi\.org|files\.pythonhosted\.org)/'",
            "allow",
        )
    )
    rules.append(_rule("http-post", "[network_request]", 'target: "POST **"', "warn"))
    rules.append(
        _rule(
            "env-secrets", "[env_read, env_write]", 'target: "*_KEY"', "deny", on_violation="block"
        )
    )
    rules.append(
        _rule(
            "env-tokens", "[env_read, env_write]", 'target: "*TOKEN*"', "deny", on_violation="block"
        )
    )
    rules.append(_rule("env-read", "[env_read]", 'target: "*"', "log"))
    rules.append(_rule("db-read-write", "[database_read, database_write]", 'target: "**"', "allow"))
    rules.append(
        _rule(
            "db-drop",
            "[database_execute]",
            r"pattern: '(?i:\bdrop\s+table\b)'",
            "deny",
            on_violation="block",
        )
    )
    rules.append(_rule("db-other", "[database_delete, database_execute]", 'target: "**"', "warn"))
    rules.append(_rule("memory-shm", "[memory_access]", 'target: "/dev/shm/agent-*"', "allow"))
    rules.append(
        _rule("memory-any", "[memory_access]", 'target: "**"', "deny", on_violation="block")
    )
    while len(rules) < 100:
        index = len(rules)
        rules.append(
            _rule(
                f"project-{index}",
                "[file_read]",
                f'target: "/srv/projects/p{index}/src/*.py"',
                "allow",
            )
        )
    assert len(rules) == 100, len(rules)
    head = "name: bench\ndescription: 100-rule benchmark policy\n"
    head += "default: deny\non_violation: sigkill\n"
    return head + "rules:\n" + "\n".join(rules) + "\n"


def events() -> list[Event]:
    A = ActionType
    w = WORKSPACE
    mix: list[tuple[ActionType, str, int]] = [
        (A.FILE_READ, f"{w}/src/agent/main.py", 12),
        (A.FILE_READ, f"{w}/src/agent/tools/search.py", 8),
        (A.FILE_READ, f"{w}/data/input.csv", 6),
        (A.FILE_READ, f"{w}/.venv/lib/python3.11/site-packages/yaml/__init__.py", 4),
        (A.FILE_READ, "/usr/lib/python3.11/json/decoder.py", 8),
        (A.FILE_READ, "/usr/lib/x86_64-linux-gnu/libc.so.6", 5),
        (A.FILE_READ, "/etc/ld.so.cache", 4),
        (A.FILE_READ, "/etc/hosts", 2),
        (A.FILE_READ, "/proc/self/status", 2),
        (A.FILE_READ, "/dev/urandom", 2),
        (A.FILE_READ, "/srv/data/in/sales.csv", 2),
        (A.FILE_READ, "/srv/data/team3/report.md", 1),
        (A.FILE_READ, f"{HOME}/.ssh/id_rsa", 1),
        (A.FILE_READ, f"{w}/../../../etc/shadow", 1),
        (A.FILE_WRITE, f"{w}/out/result.json", 8),
        (A.FILE_WRITE, f"{w}/src/agent/main.py", 4),
        (A.FILE_WRITE, "/tmp/tmpab12cd/scratch.txt", 4),
        (A.FILE_WRITE, "/etc/passwd", 1),
        (A.FILE_DELETE, f"{w}/out/old.json", 2),
        (A.FILE_MOVE, f"{w}/out/tmp.json", 1),
        (A.PROCESS_SPAWN, "/usr/bin/git", 2),
        (A.SHELL_EXECUTE, "git status --porcelain", 2),
        (A.SHELL_EXECUTE, "python -m pytest -q tests/test_x.py", 2),
        (A.SHELL_EXECUTE, "rm -rf /", 1),
        (A.SHELL_EXECUTE, "ls -la /srv/agents", 1),
        (A.NETWORK_CONNECT, "127.0.0.53:53", 1),
        (A.NETWORK_CONNECT, "93.184.216.34:443", 1),
        (A.NETWORK_CONNECT, "unix:/var/run/nscd/socket", 1),
        (A.NETWORK_REQUEST, "GET https://api.github.com/repos/x/y", 1),
        (A.ENV_READ, "HOME", 1),
        (A.DATABASE_READ, "SELECT * FROM sales WHERE id = 1", 1),
    ]
    out: list[Event] = []
    for action, target, weight in mix:
        out.extend([Event(action, target, agent_id=AGENT_ID)] * weight)
    return out


def long_command_lines() -> dict[str, str]:
    """100 KB command lines; the first ones stalled the old backtracking rules."""
    size = 100_000
    lines = {
        "many rm -r": "echo " + "rm -r " * (size // 6),
        "flag, then root at the end": "rm -rf " + "x" * size + " /",
        "many flags": "rm " + "-v " * (size // 3) + "-rf /",
        "many directories": "rm -rf " + "a/ " * (size // 3),
        "spaces": "rm " + " " * size,
        "nested-quantifier bait": "a" * size + "!",
    }
    assert all(len(line) <= MAX_TARGET_LENGTH for line in lines.values())
    return lines


def time_long_targets() -> bool:
    """Worst time for one 100 KB shell_execute decision under strict; True if within bound."""
    compiled = compile_policy(
        resolve_policy("strict", Path("/nonexistent-policy-dir")),
        RunContext(WORKSPACE, HOME, AGENT_ID),
    )
    worst = 0.0
    for name, line in long_command_lines().items():
        event = Event(ActionType.SHELL_EXECUTE, line, agent_id=AGENT_ID)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            rule = compiled.evaluate(event).rule_id
            times.append((time.perf_counter() - start) * 1000)
        worst = max(worst, min(times))
        print(f"  100 KB command line, {name}: {min(times):.2f} ms ({rule})")
    ok = worst < LONG_TARGET_MS
    print(
        f"worst 100 KB decision: {worst:.2f} ms; bound {LONG_TARGET_MS:g} ms: "
        f"{'ok' if ok else 'TOO SLOW'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(policy_yaml())
        policy = load_policy_file(path, Path(tmp))
    compiled = compile_policy(policy, RunContext(WORKSPACE, HOME, AGENT_ID))
    sample = events()
    stream = (sample * (args.events // len(sample) + 1))[: args.events]
    evaluate = compiled.evaluate
    for event in sample:  # warm up, and keep the benchmark honest about what it decides
        evaluate(event)
    verdicts: dict[str, int] = {}
    for event in sample:
        verdict = evaluate(event).verdict.value
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    # CPU time is what one core spends deciding; wall time also counts time
    # the scheduler gave to other processes (this machine is shared).
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    for event in stream:
        evaluate(event)
    wall = time.perf_counter() - wall_start
    cpu = time.process_time() - cpu_start
    rate = len(stream) / cpu
    print(
        f"python {platform.python_version()} ({sys.implementation.name}), "
        f"policy: {len(policy.rules)} rules, events: {len(stream):,}"
    )
    print(f"verdicts per {len(sample)} sample events: {verdicts}")
    print(f"wall clock: {len(stream) / wall:,.0f} decisions/s")
    print(
        f"cpu time:   {rate:,.0f} decisions/s ({cpu * 1e9 / len(stream):.0f} ns each); "
        f"target {TARGET_RATE:,}: {'ok' if rate >= TARGET_RATE else 'TOO SLOW'}"
    )
    long_ok = time_long_targets()
    return 0 if rate >= TARGET_RATE and long_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
