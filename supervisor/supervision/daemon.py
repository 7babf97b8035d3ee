"""`agentsup daemon`: one supervisor for many agents, as a systemd service.

The daemon starts every agent defined in the agents directory
(`/etc/agentsup/agents/*.yaml` as root, `~/.config/agentsup/agents/` for a
user, or `AGENTSUP_AGENTS_DIR`), supervises them all from one event loop,
and restarts them as their definitions say:

    id: analyst-1                 # default: the file's name without .yaml
    program: /srv/agents/analyst.py
    args: ["--fast"]
    policy: data-analyst          # default: strict
    workspace: /srv/work/analyst  # required
    restart: on-failure           # never | on-failure (default) | always
    restart_delay_seconds: 5      # default 5

An agent the policy (or a person) killed is not restarted unless `restart:
always`: a violation is a reason to look, not to try again.  SIGHUP rescans
the directory and starts agents that are new there.  SIGTERM or SIGINT kills
every agent tree and exits 0.  With systemd (`Type=notify`) the daemon says
READY=1 once its control socket is up and its agents are started, and keeps
STATUS= current.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..paths import Locations, default_locations
from .agent import Agent, RunRequest, SetupError
from .supervisor import Supervisor

RESTART_MODES = ("never", "on-failure", "always")
_KEYS = {"id", "program", "args", "policy", "workspace", "restart", "restart_delay_seconds"}


class DefinitionError(ValueError):
    """An agent definition is invalid; the message names the file."""


@dataclass(frozen=True)
class AgentDefinition:
    agent_id: str
    program: str
    workspace: str
    args: tuple[str, ...] = ()
    policy: str = "strict"
    restart: str = "on-failure"
    restart_delay_seconds: float = 5.0
    source: str = ""

    def request(self) -> RunRequest:
        return RunRequest(
            program=self.program,
            args=list(self.args),
            policy=self.policy,
            workspace=self.workspace,
            agent_id=self.agent_id,
        )


def agents_dir(locations: Locations) -> Path:
    override = os.environ.get("AGENTSUP_AGENTS_DIR")
    if override:
        return Path(override)
    return locations.policy_dir.parent / "agents"


def parse_definition(path: Path) -> AgentDefinition:
    """One agent definition file; DefinitionError says what is wrong and where."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DefinitionError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DefinitionError(f"{path}: expected a mapping of agent settings")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise DefinitionError(
            f"{path}: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(_KEYS))})"
        )
    for key in ("program", "workspace"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise DefinitionError(f"{path}: '{key}' is required and must be a string")
    args = data.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise DefinitionError(f"{path}: 'args' must be a list of strings")
    restart = data.get("restart", "on-failure")
    if restart not in RESTART_MODES:
        raise DefinitionError(
            f"{path}: unknown restart {restart!r} (expected one of {', '.join(RESTART_MODES)})"
        )
    delay = data.get("restart_delay_seconds", 5)
    if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0:
        raise DefinitionError(f"{path}: 'restart_delay_seconds' must be a number >= 0")
    agent_id = data.get("id", path.stem)
    if not isinstance(agent_id, str) or not agent_id:
        raise DefinitionError(f"{path}: 'id' must be a non-empty string")
    policy = data.get("policy", "strict")
    if not isinstance(policy, str):
        raise DefinitionError(f"{path}: 'policy' must be a string")
    return AgentDefinition(
        agent_id=agent_id,
        program=data["program"],
        workspace=data["workspace"],
        args=tuple(args),
        policy=policy,
        restart=restart,
        restart_delay_seconds=float(delay),
        source=str(path),
    )


def should_restart(definition: AgentDefinition, exit_code: int, killed: bool) -> bool:
    """Pure: does this agent start again after it ended this way?"""
    if definition.restart == "always":
        return True
    if definition.restart == "never" or killed:
        return False
    return exit_code != 0


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) how we are; a no-op without NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def _say(text: str) -> None:
    print(f"agentsup daemon: {text}", file=sys.stderr, flush=True)


@dataclass
class Daemon:
    supervisor: Supervisor
    directory: Path
    definitions: dict[str, AgentDefinition] = field(default_factory=dict)
    stopping: bool = False

    def scan(self) -> None:
        """Start every agent defined in the directory that is not running yet."""
        try:
            paths = sorted(self.directory.glob("*.yaml"))
        except OSError as exc:
            _say(f"cannot read {self.directory}: {exc}")
            return
        for path in paths:
            try:
                definition = parse_definition(path)
            except DefinitionError as exc:
                _say(str(exc))
                continue
            running = self.supervisor.agents.get(definition.agent_id)
            if running is not None and not running.exited:
                continue
            self.definitions[definition.agent_id] = definition
            self.start(definition)
        self.report()

    def start(self, definition: AgentDefinition) -> None:
        if self.stopping:
            return
        try:
            run = self.supervisor.launch(definition.request())
        except SetupError as exc:
            _say(f"cannot start agent '{definition.agent_id}' ({definition.source}): {exc}")
            return
        _say(
            f"started agent '{definition.agent_id}' (pid {run.launched.pid if run.launched else 0})"
        )

    def on_agent_exit(self, run: Agent) -> None:
        """Record the end, release the run, and restart it if its definition says so."""
        assert run.judge is not None
        code = run.finish()
        killed = run.judge.kill_report is not None
        run.close()
        _say(f"agent '{run.agent_id}' ended with status {code}")
        definition = self.definitions.get(run.agent_id)
        if (
            definition is not None
            and not self.stopping
            and should_restart(definition, code, killed)
        ):
            self.supervisor.loop.call_later(
                definition.restart_delay_seconds, functools.partial(self.start, definition)
            )
        self.report()

    def report(self) -> None:
        running = sum(1 for run in self.supervisor.agents.values() if not run.exited)
        sd_notify(f"STATUS={running} agent(s) supervised")


def run_daemon() -> int:
    locations = default_locations()
    try:
        supervisor = Supervisor(locations)
    except OSError as exc:
        print(f"agentsup daemon: cannot start: {exc}", file=sys.stderr)
        return 1
    daemon = Daemon(supervisor, agents_dir(locations))
    # The daemon keeps running when an agent ends, and SIGHUP rescans the
    # definitions instead of stopping.
    supervisor.on_agent_exit = daemon.on_agent_exit
    supervisor.loop.on_signal(signal.SIGHUP, daemon.scan)
    try:
        daemon.scan()
        sd_notify("READY=1")
        _say(
            f"supervising agents from {daemon.directory}; control sockets in "
            f"{locations.runtime_dir}"
        )
        supervisor.run_until(lambda: supervisor.interrupted is not None)
        daemon.stopping = True
        sd_notify("STOPPING=1")
        supervisor.run_until(lambda: all(run.exited for run in supervisor.agents.values()))
    finally:
        supervisor.close()
    return 0
