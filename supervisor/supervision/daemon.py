"""`agentsup daemon`: one supervisor for many agents, as a systemd service.

The daemon starts every agent defined in the agents directory
(`/etc/agentsup/agents/*.yaml` as root, `~/.config/agentsup/agents/` for a
user, `AGENTSUP_AGENTS_DIR`, or `--agents-dir`), supervises them all from one
event loop, and restarts them as their definitions say:

    id: analyst-1                       # default: the file's name without .yaml
    program: /srv/agents/analyst.py
    args: ["--fast"]
    policy: data-analyst                # default: strict
    workspace: /srv/work/analyst        # required
    restart: on-failure                 # never | on-failure (default) | always
    restart_delay_seconds: 5            # the first restart (0: at once); each further
    restart_max_delay_seconds: 300      #   one in the window waits double the one before,
                                        #   and at least 0.1 s, up to this (1 s at least)
    start_limit_burst: 5                # at most this many starts (0: no limit) ...
    start_limit_interval_seconds: 300   # ... within this window, then the agent is failed

An agent the policy (or a person) killed is not restarted unless `restart:
always`: a violation is a reason to look, not to try again.  An agent that
reaches its start limit is left `failed` until SIGHUP.

SIGHUP re-reads the directory: new definitions start, removed ones are
stopped (SIGTERM, then SIGKILL after the stop timeout) and forgotten,
changed ones are stopped and started again with the new definition, and
failed agents get a fresh start.  A definition that no longer parses keeps
its agent running on the old one, and says why.  SIGTERM or SIGINT stops
every agent the same way and exits 0.

Each agent's stdout and stderr go, a line at a time, to its log file (see
control/logs.py; `agentsup logs ID`) and to the daemon's stderr prefixed
`[ID]`.  With systemd (`Type=notify`) the daemon says READY=1 once its
control socket is up and its agents are started, RELOADING=1 around a
SIGHUP, and keeps STATUS= current.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..control.agentids import BadAgentId, check_agent_id
from ..control.logs import STREAMS, AgentLogWriter, log_path
from ..integrity.audit import AuditError
from ..kernel import cgroup as cgroups
from ..paths import Locations, default_locations, untrusted
from ..policy.model import PolicyError
from ..policy.sources import decode_utf8  # policy files' own message
from ..policy.yaml_file import check_nesting, yaml_error_place
from ..visible import visible, visible_output
from .agent import Agent, RunRequest, SetupError
from .loop import Timer
from .stopping import STOP_TIMEOUT_S
from .supervisor import Supervisor

RESTART_MODES = ("never", "on-failure", "always")
EXIT_OK = 0
EXIT_FAILED = 1
MAX_DEFINITION_BYTES = 1 << 20
RESTART_FLOOR_S = 0.1  # the least wait of any restart after the first (systemd's RestartSec=)
BACKOFF_MEMORY_S = 10.0  # starts this recent always count towards the backoff
# The backoff climbs to at least this, whatever the maximum says: a failing
# agent with no start limit and a maximum of 0 restarted ten times a second
# forever, its lifecycle records outgrowing what the audit log keeps.
RESTART_CEILING_FLOOR_S = 1.0
_NUMBERS = {
    "restart_delay_seconds": 5.0,
    "restart_max_delay_seconds": 300.0,
    "start_limit_interval_seconds": 300.0,
}
_KEYS = {
    "id", "program", "args", "policy", "workspace", "user", "restart", "start_limit_burst",
    *_NUMBERS,
}  # fmt: skip


class DefinitionError(ValueError):
    """An agent definition is invalid; the message names the file."""


@dataclass(frozen=True)
class AgentDefinition:
    """One agent the daemon runs, as its definition file gives it."""

    agent_id: str
    program: str
    workspace: str
    args: tuple[str, ...] = ()
    policy: str = "strict"
    restart: str = "on-failure"
    restart_delay_seconds: float = 5.0
    restart_max_delay_seconds: float = 300.0
    start_limit_burst: int = 5
    start_limit_interval_seconds: float = 300.0
    source: str = ""
    user: str | None = None  # run the agent as this user

    def request(self) -> RunRequest:
        return RunRequest(
            program=self.program,
            args=list(self.args),
            policy=self.policy,
            workspace=self.workspace,
            agent_id=self.agent_id,
            user=self.user,
        )


def agents_dir(locations: Locations, override: str | None = None) -> Path:
    return Path(override) if override else locations.agents_dir


def _number(where: str, data: dict[str, object], key: str) -> float:
    value = data.get(key, _NUMBERS[key])
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise DefinitionError(f"{where}: '{key}' must be a number >= 0")
    return float(value)


def _places(text: str) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """(line, column) of each top-level key of a definition, and of its value."""
    keys: dict[str, tuple[int, int]] = {}
    values: dict[str, tuple[int, int]] = {}
    node = yaml.compose(text, Loader=yaml.SafeLoader)  # it loaded: it composes
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                keys[key.value] = (key.start_mark.line + 1, key.start_mark.column + 1)
                values[key.value] = (value.start_mark.line + 1, value.start_mark.column + 1)
    return keys, values


def _read_text(path: Path) -> str:
    """The text of a definition file; DefinitionError, one line, for anything else.

    Only a regular file is opened (a FIFO would block the daemon's loop, and
    opening some devices acts), and only so much of it: a definition over
    MAX_DEFINITION_BYTES is refused, not cut.  Text that is not UTF-8 is
    named by line and column, as in a policy file (red team: the codec's
    message, with no place, was all the operator got).
    """
    odd = f"{path}: not a regular file; an agent definition is a YAML file"
    try:
        # Looked at first without opening (O_PATH), then opened as that very
        # file: a name swapped for a device meanwhile never opens the device.
        pinned = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(pinned).st_mode):
                raise DefinitionError(odd)
            fd = os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
        finally:
            os.close(pinned)
        try:
            data = b""
            while chunk := os.read(fd, MAX_DEFINITION_BYTES + 1 - len(data)):
                data += chunk
                if len(data) > MAX_DEFINITION_BYTES:
                    raise DefinitionError(
                        f"{path}: too large: over {MAX_DEFINITION_BYTES} bytes "
                        "(an agent definition has at most that)"
                    )
        finally:
            os.close(fd)
    except OSError as exc:
        raise DefinitionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return decode_utf8(data, str(path))
    except PolicyError as exc:  # `FILE:LINE:COL: not UTF-8 text (invalid start byte)`
        raise DefinitionError(str(exc)) from None


def parse_definition(path: Path) -> AgentDefinition:
    """One agent definition file; DefinitionError says what is wrong and where.

    A file someone else could change (theirs, or writable by others) is
    refused as the locations are: a definition names a program the daemon
    runs, as root where it runs as root (red team 25 had `nobody` plant one).
    """
    reason = untrusted(path)
    if reason is not None:
        raise DefinitionError(f"{path}: cannot be trusted: {reason}")
    text = _read_text(path)
    try:
        check_nesting(text, str(path))  # PyYAML recurses: 5,000 `[` ended the daemon
        data = yaml.safe_load(text)
    except PolicyError as exc:
        raise DefinitionError(str(exc)) from exc
    except yaml.YAMLError as exc:
        line, column, problem = yaml_error_place(exc, text)
        raise DefinitionError(f"{path}:{line}:{column}: invalid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise DefinitionError(f"{path}:1:1: expected a mapping of agent settings")
    keys, values = _places(text)

    def at(key: str, *, key_itself: bool = False) -> str:
        """`FILE:LINE:COL` of a key's value (or of the key), as policy errors say it."""
        line, column = (keys if key_itself else values).get(key, (1, 1))
        return f"{path}:{line}:{column}"

    unknown = sorted(str(key) for key in set(data) - _KEYS)
    if unknown:
        raise DefinitionError(
            f"{at(unknown[0], key_itself=True)}: unknown key {unknown[0]!r} "
            f"(expected one of {', '.join(sorted(_KEYS))})"
        )
    for key in ("program", "workspace"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise DefinitionError(f"{at(key)}: '{key}' is required and must be a string")
    args = data.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise DefinitionError(f"{at('args')}: 'args' must be a list of strings")
    restart = data.get("restart", "on-failure")
    if restart not in RESTART_MODES:
        raise DefinitionError(
            f"{at('restart')}: unknown restart {restart!r} "
            f"(expected one of {', '.join(RESTART_MODES)})"
        )
    burst = data.get("start_limit_burst", 5)
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 0:
        raise DefinitionError(
            f"{at('start_limit_burst')}: 'start_limit_burst' must be a whole number >= 0"
        )
    agent_id = data.get("id", path.stem)
    if not isinstance(agent_id, str):
        raise DefinitionError(f"{at('id')}: 'id' must be a string")
    try:
        check_agent_id(agent_id)
    except BadAgentId as exc:
        raise DefinitionError(f"{at('id')}: {exc}") from None
    policy = data.get("policy", "strict")
    if not isinstance(policy, str) or not policy:
        raise DefinitionError(f"{at('policy')}: 'policy' must be a string")
    user = data.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise DefinitionError(f"{at('user')}: 'user' must be a user name")
    return AgentDefinition(
        agent_id=agent_id,
        program=data["program"],
        workspace=data["workspace"],
        args=tuple(args),
        policy=policy,
        restart=restart,
        restart_delay_seconds=_number(at("restart_delay_seconds"), data, "restart_delay_seconds"),
        restart_max_delay_seconds=_number(
            at("restart_max_delay_seconds"), data, "restart_max_delay_seconds"
        ),
        start_limit_burst=burst,
        start_limit_interval_seconds=_number(
            at("start_limit_interval_seconds"), data, "start_limit_interval_seconds"
        ),
        source=str(path),
        user=user,
    )


def should_restart(definition: AgentDefinition, exit_code: int, killed: bool) -> bool:
    """Pure: does this agent start again after it ended this way?"""
    if definition.restart == "always":
        return True
    if definition.restart == "never" or killed:
        return False
    return exit_code != 0


def restart_delay(definition: AgentDefinition, starts: Sequence[float], now: float) -> float | None:
    """Pure: seconds to wait before the next start, or None when the start limit is hit.

    `starts` are the times of the earlier starts.  Like systemd's
    StartLimitBurst/StartLimitIntervalSec, at most `start_limit_burst` starts
    fall within any `start_limit_interval_seconds`.  The first restart waits
    `restart_delay_seconds`; each further one waits twice as long as the one
    before, and at least RESTART_FLOOR_S, up to `restart_max_delay_seconds`
    (or RESTART_CEILING_FLOOR_S, if that is longer),
    counting the starts within that window (or within
    `restart_max_delay_seconds` or BACKOFF_MEMORY_S, if longer).  So no definition
    restarts an agent in a tight loop: `restart_delay_seconds: 0` with
    `start_limit_burst: 0` used to restart a failing agent at once, forever
    (0 doubled is 0); 0 now means only that the first restart is at once.
    """
    window = definition.start_limit_interval_seconds
    recent = [t for t in starts if now - t < window]
    if definition.start_limit_burst and len(recent) >= definition.start_limit_burst:
        return None
    delay = definition.restart_delay_seconds
    ceiling = max(definition.restart_max_delay_seconds, delay, RESTART_CEILING_FLOOR_S)
    # Counted over the window, but never one too short for the delay to grow
    # (an interval of 0 or next to it, a maximum delay under the floor).
    backoff_window = max(window, ceiling, BACKOFF_MEMORY_S)
    for _ in range(sum(1 for t in starts if now - t < backoff_window) - 1):
        if delay >= ceiling:
            break
        delay = max(2.0 * delay, RESTART_FLOOR_S)
    return min(delay, ceiling)


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
    # Definitions' names and errors may carry anyone's text: never a raw control.
    print(f"agentsup daemon: {visible(text)}", file=sys.stderr, flush=True)


def _echo(line: str) -> None:
    # An agent's output line, into the journal or a terminal: never a raw control.
    with contextlib.suppress(OSError, ValueError):
        print(visible_output(line), file=sys.stderr, flush=True)


@contextlib.contextmanager
def _stdio_to(stdout_fd: int, stderr_fd: int) -> Iterator[None]:
    """Point fds 1 and 2 at the agent's pipes while it is forked; it inherits them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(stdout_fd, 1)
    os.dup2(stderr_fd, 2)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@dataclass
class Slot:
    """One defined agent: its definition, its current run, and its restart history."""

    definition: AgentDefinition
    log: AgentLogWriter
    run: Agent | None = None
    starts: list[float] = field(default_factory=list)
    timer: Timer | None = None  # a restart waiting for its delay
    failed: str = ""  # why the daemon gave up on it (until SIGHUP)
    cannot_start: str = ""  # why its last start failed before it ran ("": it ran)
    retire: bool = False  # removed from the directory: forget it once it has stopped
    replacement: AgentDefinition | None = None  # changed: start this once it has stopped
    # Read what the agent's output pipes hold now (before its end is logged).
    drains: list[Callable[[], None]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.exited

    def cancel_restart(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass
class Daemon:
    """The daemon's agents: the supervisor, the definitions' directory, a slot per agent."""

    supervisor: Supervisor
    directory: Path
    slots: dict[str, Slot] = field(default_factory=dict)

    @property
    def stopping(self) -> bool:
        return self.supervisor.interrupted is not None

    # -- the directory -------------------------------------------------------------

    def read_definitions(self) -> dict[str, AgentDefinition]:
        """Every valid definition by id; a broken file keeps its agent's old one."""
        current = {slot_id: slot.definition for slot_id, slot in self.slots.items()}
        reason = untrusted(self.directory)
        if reason is not None:
            _say(
                f"the agents directory {self.directory} cannot be trusted: {reason}; "
                "reading nothing from it, the agents keep their definitions"
            )
            return current
        try:
            paths = sorted(self.directory.glob("*.yaml"))
        except OSError as exc:
            _say(f"cannot read {self.directory}: {exc.strerror or exc}")
            return current
        found: dict[str, AgentDefinition] = {}
        for path in paths:
            try:
                definition = parse_definition(path)
            except DefinitionError as exc:
                old = next(
                    (s.definition for s in self.slots.values() if s.definition.source == str(path)),
                    None,
                )
                kept = f"; agent '{old.agent_id}' keeps its old definition" if old else ""
                _say(f"{exc}{kept}")
                if old is not None:
                    found.setdefault(old.agent_id, old)
                continue
            other = found.get(definition.agent_id)
            if other is not None:
                _say(
                    f"{path}: agent id '{definition.agent_id}' is already defined in "
                    f"{other.source}; ignoring this file"
                )
                continue
            found[definition.agent_id] = definition
        return found

    def scan(self) -> None:
        """Apply the directory: start new agents, stop removed ones, restart changed ones."""
        wanted = self.read_definitions()
        for agent_id in [i for i in self.slots if i not in wanted]:
            self.retire(agent_id)
        for agent_id, definition in wanted.items():
            slot = self.slots.get(agent_id)
            if slot is None:
                try:
                    log = AgentLogWriter(
                        log_path(self.supervisor.locations, agent_id), agent_id, echo=_echo
                    )
                except OSError as exc:
                    _say(f"cannot open the log of agent '{agent_id}': {exc}; not starting it")
                    continue
                slot = self.slots[agent_id] = Slot(definition, log)
                self.start(slot)
            elif slot.retire:
                # Removed and back before its old run ended: it starts once that run is gone.
                slot.retire = False
                slot.replacement = definition
            elif definition != slot.definition or slot.failed:
                self.replace(slot, definition)
        self.report()

    def retire(self, agent_id: str) -> None:
        slot = self.slots[agent_id]
        slot.cancel_restart()
        slot.replacement = None
        if slot.running and slot.run is not None:
            slot.retire = True
            _say(f"agent '{agent_id}' is no longer defined; stopping it")
            self.supervisor.stop_agent(slot.run, signal.SIGTERM, "definition removed")
        else:
            self.forget(slot)

    def replace(self, slot: Slot, definition: AgentDefinition) -> None:
        """A changed (or failed) definition: stop what runs, then start afresh."""
        slot.cancel_restart()
        if slot.running and slot.run is not None:
            slot.replacement = definition
            _say(f"agent '{definition.agent_id}' changed; restarting it")
            self.supervisor.stop_agent(slot.run, signal.SIGTERM, "definition changed")
            return
        slot.definition = definition
        slot.failed = ""
        slot.starts.clear()
        self.start(slot)

    def forget(self, slot: Slot) -> None:
        agent_id = slot.definition.agent_id
        self.slots.pop(agent_id, None)
        gone = self.supervisor.agents.pop(agent_id, None)
        if gone is not None:
            gone.close()
        self.supervisor.release_id(agent_id)
        slot.log.close()

    # -- starting and ending -------------------------------------------------------

    def start(self, slot: Slot) -> None:
        slot.timer = None
        if self.stopping or slot.running:
            return
        definition = slot.definition
        slot.starts.append(self.supervisor.loop.clock())
        pipes = [os.pipe2(os.O_CLOEXEC) for _ in STREAMS]
        error: SetupError | None = None
        try:
            with _stdio_to(pipes[0][1], pipes[1][1]):
                try:
                    run = self.supervisor.launch(definition.request())
                except SetupError as exc:
                    error = exc
        finally:
            for _read, write in pipes:
                os.close(write)
        slot.drains = [
            self._collect(slot.log, stream, read)
            for stream, (read, _write) in zip(STREAMS, pipes, strict=True)
        ]
        if error is not None:
            _say(f"cannot start agent '{definition.agent_id}' ({definition.source}): {error}")
            slot.log.note(f"cannot start: {error}")
            slot.cannot_start = str(error)
            slot.run = None
            self._after_end(slot, error.exit_code, killed=False)
            return
        slot.run = run
        slot.cannot_start = ""
        if run.judge is not None:
            # Why it was stopped or killed, in its log too (new user 17).
            run.judge.also_said = slot.log.note
        pid = run.launched.pid if run.launched else 0
        slot.log.note(f"started (pid {pid})")
        _say(f"started agent '{definition.agent_id}' (pid {pid})")

    def _collect(self, log: AgentLogWriter, stream: str, fd: int) -> Callable[[], None]:
        """Copy what the agent writes on `fd` into its log, until every writer has
        closed it; what reads all it holds now (an agent's last words come
        before the note of its end)."""
        os.set_blocking(fd, False)
        loop = self.supervisor.loop
        log.attach()
        closed = False

        def read_once() -> bool:
            """One read; False when nothing more is there for now (or ever)."""
            nonlocal closed
            if closed:
                return False
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return False
            except OSError:
                data = b""
            if data:
                log.feed(stream, data)
                return True
            closed = True
            loop.remove_reader(fd)
            os.close(fd)
            log.detach(stream)
            return False

        def readable(_events: int) -> None:
            read_once()

        def drain() -> None:
            while read_once():
                pass

        loop.add_reader(fd, readable)
        return drain

    def on_agent_exit(self, run: Agent) -> None:
        """Record the end, release the run, and restart it as its definition says."""
        assert run.judge is not None
        code = run.finish()
        killed = run.judge.kill_report is not None
        run.close()
        slot = next((s for s in self.slots.values() if s.run is run), None)
        _say(f"agent '{run.agent_id}' ended with status {code}")
        if slot is None:
            return
        for drain in slot.drains:
            drain()
        slot.log.note(f"ended with status {code}")
        self._after_end(slot, code, killed)

    def _after_end(self, slot: Slot, code: int, killed: bool) -> None:
        agent_id = slot.definition.agent_id
        loop = self.supervisor.loop
        if slot.retire:
            self.forget(slot)
        elif self.stopping:
            pass
        elif slot.replacement is not None:
            slot.definition, slot.replacement = slot.replacement, None
            slot.failed = ""
            slot.starts.clear()
            # Started from the loop, not from inside the reaping of the old run.
            slot.timer = loop.call_later(0, functools.partial(self.start, slot))
        elif should_restart(slot.definition, code, killed):
            delay = restart_delay(slot.definition, slot.starts, loop.clock())
            if delay is None:
                definition = slot.definition
                slot.failed = (
                    f"start limit hit: {definition.start_limit_burst} starts within "
                    f"{definition.start_limit_interval_seconds:g} s"
                )
                if slot.cannot_start:  # what `ps` shows: the cause, not only the count
                    slot.failed += f"; each failed to start: {slot.cannot_start}"
                _say(
                    f"agent '{agent_id}' failed: {slot.failed}; not restarting it until "
                    "its definition changes or the daemon gets SIGHUP"
                )
                slot.log.note(f"failed: {slot.failed}")
            else:
                slot.timer = loop.call_later(delay, functools.partial(self.start, slot))
        self.report()

    # -- what ps and systemd see -----------------------------------------------------

    def describe(self, listed: list[dict[str, object]]) -> list[dict[str, object]]:
        """`ps` entries with the daemon's view: restarts, failed and waiting agents."""
        by_id = {str(entry.get("id")): entry for entry in listed}
        now = self.supervisor.loop.clock()
        for agent_id, slot in self.slots.items():
            entry = by_id.get(agent_id)
            if entry is None:
                entry = {"id": agent_id, "pid": 0, "policy": slot.definition.policy}
                entry.update(state="exited", uptime_s=0, pending=0)
                listed.append(entry)
            entry["definition"] = slot.definition.source
            entry["restarts"] = max(len(slot.starts) - 1, 0)
            if slot.failed:
                entry["state"] = f"failed: {slot.failed}"
            elif slot.timer is not None and not slot.running:
                entry["state"] = f"exited: restarting in {max(slot.timer.deadline - now, 0):.0f} s"
        return listed

    def report(self) -> None:
        running = sum(1 for slot in self.slots.values() if slot.running)
        failed = sum(1 for slot in self.slots.values() if slot.failed)
        extra = f", {failed} failed" if failed else ""
        sd_notify(f"STATUS={running} agent(s) supervised{extra}")

    def reload(self) -> None:
        sd_notify("RELOADING=1")
        _say(f"SIGHUP: reading {self.directory} again")
        self.scan()
        sd_notify("READY=1")


def run_daemon(agents_directory: str | None = None, *, stop_timeout: float = STOP_TIMEOUT_S) -> int:
    locations = default_locations()
    directory = agents_dir(locations, agents_directory)
    if agents_directory and not directory.is_dir():
        _say(f"cannot start: --agents-dir {directory} is not a directory")
        return EXIT_FAILED
    # Its agents' judges guard it (Locations.protected_paths).
    os.environ["AGENTSUP_AGENTS_DIR"] = str(directory)
    reason = untrusted(directory)
    if reason is not None:  # anyone who may write it could run a program as us
        _say(f"cannot start: the agents directory {directory} cannot be trusted: {reason}")
        return EXIT_FAILED
    try:
        supervisor = Supervisor(locations, stop_timeout=stop_timeout)
    except OSError as exc:
        _say(f"cannot start: {exc.strerror or exc}")
        return EXIT_FAILED
    except AuditError as exc:
        _say(f"cannot start: {exc}")
        return EXIT_FAILED
    if os.environ.get("INVOCATION_ID"):  # a systemd service: agents under its own cgroup
        base = cgroups.delegate_to_service()
        if base is not None:
            _say(f"agent cgroups under the service's own cgroup {base}")
    daemon = Daemon(supervisor, directory)
    # The daemon keeps running when an agent ends, and SIGHUP re-reads the
    # definitions instead of stopping.
    supervisor.on_agent_exit = daemon.on_agent_exit
    supervisor.describe_agents = daemon.describe
    supervisor.loop.on_signal(signal.SIGHUP, daemon.reload)
    try:
        if not directory.is_dir():
            _say(f"no agents directory {directory} yet: create it, add agents, send SIGHUP")
        daemon.scan()
        sd_notify("READY=1")
        _say(
            f"supervising agents from {directory}; control sockets in "
            f"{locations.runtime_dir}; agent logs in {log_path(locations, 'x').parent}"
        )
        supervisor.run_until(lambda: daemon.stopping)
        sd_notify("STOPPING=1")
        for slot in daemon.slots.values():
            slot.cancel_restart()
        supervisor.run_until(lambda: all(run.exited for run in supervisor.agents.values()))
    finally:
        supervisor.close()
        for slot in list(daemon.slots.values()):
            slot.log.close()
    return EXIT_OK
