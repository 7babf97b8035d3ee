"""PolicyWatcher: notices tampering with the sealed policy directory, and legitimate edits.

The supervisor's one event loop drives it; it has no thread of its own:

    watcher = PolicyWatcher(locations, on_tamper=..., on_resealed=..., on_reload=...,
                            audit=audit_log)
    loop.add_reader(watcher.fd(), lambda _events: watcher.on_ready())
    every watcher.interval seconds: watcher.check()

Construct it *before* loading the policy, so no change falls between the two,
or give it the seal status read before the load as its `baseline`: it then
watches nothing until its first `check()`, which compares against that
baseline, so a change made in between is reported all the same.  `agentsup
run` starts watching when the timer's first check was due (1 s in): a short
command never pays for inotify marks, whose teardown waits for a grace
period of the kernel's (up to ~20 ms, at exit).
It watches the policy directory (and its subdirectories) and the manifest's
directory with inotify, and re-hashes on the timer as well, because
`chattr -i` raises no inotify event (DESIGN.md 3).

What it reports (the pure `step` decides; see `Action`):
  - intact sealed -> anything else that is not a legitimate unseal (a file
    changed, a flag or mode changed, the manifest is bad, removed or rolled
    back): `on_tamper(reasons)`, once per episode.  The supervisor stops its
    agents.  The watcher writes the tamper marker (see `agentsup.seal`), so
    new runs stay refused, and a critical `tamper` audit record when given an
    `audit` sink.
  - tampered -> a new sealed manifest (newer than the episode) that matches:
    `on_resealed()`, then `on_reload()`.  Restoring the files or the flag by
    hand, or unsealing, does not end an episode: only a seal does.
  - sealed -> unsealed (a valid unseal manifest): nothing; edits while
    unsealed are not loaded (they may be half done).
  - unsealed -> sealed, or sealed -> a newer seal, with different content:
    `on_reload()`.
  - a directory that was never sealed: `on_reload()` whenever a file's
    content changes, so hot reload works for people who never seal.
  - a check that this process could not make, out of fds or memory
    ("unavailable"): nothing; what was known stands, the next check (the
    timer's) tries again.  Said once (log and a `policy` audit record) until
    a check works again: such an error is no sign of tampering.
Other errors never reach the loop: they are logged and treated as tampering.
"""

from __future__ import annotations

import ctypes
import enum
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

import inotify_simple
from inotify_simple import INotify
from inotify_simple import flags as inotify_flags

from ..paths import Locations
from .seal import (
    TAMPER_MARKER_NAME,
    AuditSink,
    SealStatus,
    check_sealed,
    short_of_resources,
    write_tamper_marker,
)

log = logging.getLogger(__name__)

# inotify_simple looks libc up with ctypes.util.find_library("c") the first
# time an INotify is made, and that runs `/sbin/ldconfig -p` in a child
# process (2-15 ms of every supervisor's start).  The interpreter has libc
# loaded already: its symbols are what CDLL(None) finds.
if getattr(inotify_simple, "_libc", None) is None:
    inotify_simple._libc = ctypes.CDLL(None, use_errno=True)

DEFAULT_INTERVAL = 1.0
WATCH_MASK = (
    inotify_flags.MODIFY
    | inotify_flags.ATTRIB
    | inotify_flags.CLOSE_WRITE
    | inotify_flags.CREATE
    | inotify_flags.DELETE
    | inotify_flags.MOVED_FROM
    | inotify_flags.MOVED_TO
    | inotify_flags.DELETE_SELF
    | inotify_flags.MOVE_SELF
)
_SELF_GONE = inotify_flags.DELETE_SELF | inotify_flags.MOVE_SELF | inotify_flags.IGNORED


# ------------------------------------------------------------- pure state machine


class Phase(enum.Enum):
    NEVER_SEALED = "never sealed"
    SEALED = "sealed"
    UNSEALED = "unsealed"
    TAMPERED = "tampered"

    def __str__(self) -> str:
        return self.value


class Action(enum.Enum):
    TAMPER = "tamper"
    RESEALED = "resealed"
    RELOAD = "reload"


NO_GENERATION = -1


@dataclass(frozen=True)
class WatchState:
    """What the watcher knows.  `generation` is the newest manifest seen;
    `loaded` the file hashes the supervisor runs with; `episode_generation` the
    manifest generation in force when the current tamper episode began."""

    phase: Phase
    generation: int = NO_GENERATION
    loaded: dict[str, str] = field(default_factory=dict)
    episode_generation: int = NO_GENERATION


def initial_state(status: SealStatus) -> WatchState:
    """The baseline at start-up.  A tampered start is baselined as sealed, so the
    first `step` reports it."""
    generation = status.manifest.generation if status.manifest else NO_GENERATION
    phase = {
        "ok": Phase.SEALED,
        "unsealed": Phase.UNSEALED,
        "never_sealed": Phase.NEVER_SEALED,
        "tampered": Phase.SEALED,
        # Unread: measured against nothing, the first check that works reports
        # a tampered directory, and loads a sealed or never sealed one again.
        "unavailable": Phase.SEALED,
    }[status.state]
    return WatchState(phase, generation, dict(status.files))


def step(state: WatchState, status: SealStatus) -> tuple[WatchState, tuple[Action, ...], list[str]]:
    """The next state, what to report, and (for TAMPER) why.  No I/O."""
    if status.state == "unavailable":
        return state, (), []  # not checked (out of fds or memory): what was known stands
    manifest = status.manifest
    generation = manifest.generation if manifest else NO_GENERATION
    if state.phase is Phase.TAMPERED:
        if status.state == "ok" and generation > state.episode_generation:
            sealed = WatchState(Phase.SEALED, generation, dict(status.files))
            return sealed, (Action.RESEALED, Action.RELOAD), []
        return replace(state, generation=max(state.generation, generation)), (), []

    reasons: list[str] = []
    if status.state == "tampered":
        reasons = list(status.reasons) or ["the policy directory cannot be verified"]
    elif manifest is None and state.generation != NO_GENERATION:
        reasons = [f"{status.directory}: the seal manifest was removed"]
    elif manifest is not None and generation < state.generation:
        reasons = [f"{status.directory}: the seal manifest was replaced by an older one"]
    if reasons:
        episode = max(state.generation, generation)
        tampered = WatchState(Phase.TAMPERED, episode, state.loaded, episode)
        return tampered, (Action.TAMPER,), reasons

    changed = status.files != state.loaded
    if status.state == "never_sealed":
        if not changed:
            return state, (), []
        return (
            WatchState(Phase.NEVER_SEALED, NO_GENERATION, dict(status.files)),
            (Action.RELOAD,),
            [],
        )
    if status.state == "unsealed":
        return WatchState(Phase.UNSEALED, generation, state.loaded), (), []
    # "ok": intact and sealed; a newer seal of different content is a legitimate edit.
    actions = (Action.RELOAD,) if changed else ()
    return WatchState(Phase.SEALED, generation, dict(status.files)), actions, []


# ----------------------------------------------------------------- the component


class PolicyWatcher:
    """Drives `step` from inotify events and a timer; see the module docstring."""

    def __init__(
        self,
        locations: Locations,
        *,
        on_tamper: Callable[[list[str]], None],
        on_resealed: Callable[[], None],
        on_reload: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        interval: float = DEFAULT_INTERVAL,
        audit: AuditSink | None = None,
        baseline: SealStatus | None = None,
    ) -> None:
        """Watch now, from the directory as it is now; or, given a `baseline`, from
        the first `check()`, which compares against it.

        `baseline` is the seal status read before the running policies were
        loaded.  The inotify fd is taken here either way (later, the process
        may be out of fds).
        """
        self.locations = locations
        self.interval = interval
        self._on_tamper = on_tamper
        self._on_resealed = on_resealed
        self._on_reload = on_reload
        self._clock = clock
        self._audit = audit
        self._policy_dir = Path(locations.policy_dir)
        self._state_dir = Path(locations.state_dir)
        # Only these names in the state directory matter; the audit head there
        # is rewritten on every flush and must not trigger a re-hash.
        self._state_names = {locations.policy_manifest.name, TAMPER_MARKER_NAME}
        self._inotify = INotify(nonblocking=True)
        self._watches: dict[int, Path] = {}
        self._watched_inodes: dict[Path, int] = {}
        self._unavailable = False  # the last check could not be made (said once)
        self._marker_due = False  # a tamper marker still to write (it failed)
        self._marker_reasons: list[str] = []
        self.last_check = self._clock()
        self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if baseline is None:
            self._sync_watches()
            baseline = self._status()
        self._state = initial_state(baseline)

    def __repr__(self) -> str:
        return f"<PolicyWatcher {self._policy_dir} {self._state.phase}>"

    @property
    def phase(self) -> Phase:
        return self._state.phase

    def fd(self) -> int:
        """The inotify fd to poll for reading."""
        return int(self._inotify.fileno())

    def due_in(self) -> float:
        """Seconds until the next timer check is due (0 when overdue)."""
        return max(0.0, self.last_check + self.interval - self._clock())

    def on_ready(self) -> None:
        """Read the pending inotify events, then check if any of them matters."""
        try:
            relevant = self._drain()
        except Exception:
            log.exception("reading inotify events for %s failed", self._policy_dir)
            relevant = True
        if relevant:
            self.check()

    def check(self) -> None:
        """Watch, re-hash and compare now; report any change.  Never raises."""
        self.last_check = self._clock()
        if self._marker_due and self._state.phase is Phase.TAMPERED:
            self._write_marker()  # it failed last time
        try:
            self._sync_watches()
        except Exception as exc:
            if not short_of_resources(exc):  # else the check below says so
                log.exception("cannot watch %s", self._policy_dir)
        status = self._status()
        self._note_availability(status)
        self._state, actions, reasons = step(self._state, status)
        for action in actions:
            self._report(action, reasons)

    def close(self) -> None:
        self._inotify.close()

    def __enter__(self) -> PolicyWatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------

    def _status(self) -> SealStatus:
        directory = str(self._policy_dir)
        try:
            return check_sealed(self.locations)
        except Exception as exc:
            if short_of_resources(exc):
                return SealStatus(
                    "unavailable", [f"out of fds or memory ({exc})"], directory=directory
                )
            # A bug or an odd filesystem must not silently disable the seal.
            log.exception("checking the sealed policy directory failed")
            return SealStatus("tampered", [f"cannot check {directory}: {exc}"], directory=directory)

    def _note_availability(self, status: SealStatus) -> None:
        """Say once that checks cannot be made (and once that they can again)."""
        unavailable = status.state == "unavailable"
        if unavailable == self._unavailable:
            return
        self._unavailable = unavailable
        if unavailable:
            why = "; ".join(status.reasons)
            log.warning(
                "cannot check the sealed policy directory %s now: %s; no sign of tampering, "
                "its last known state stands; checking again every %g s",
                self._policy_dir,
                why,
                self.interval,
            )
            event = {"event": "check_unavailable", "reasons": list(status.reasons)}
            self._append({"kind": "policy", **event, "severity": "high", "outcome": "retrying"})
        else:
            log.warning("the sealed policy directory %s can be checked again", self._policy_dir)
            self._append(
                {
                    "kind": "policy",
                    "event": "check_available",
                    "severity": "medium",
                    "outcome": "checked",
                }
            )

    def _drain(self) -> bool:
        relevant = False
        for event in self._inotify.read(timeout=0):
            if event.mask & inotify_flags.Q_OVERFLOW:
                relevant = True
                continue
            path = self._watches.get(event.wd)
            if event.mask & inotify_flags.IGNORED:
                self._forget(event.wd)
            if path is None:
                continue
            if path == self._state_dir and not event.mask & _SELF_GONE:
                relevant = relevant or event.name in self._state_names
            else:
                relevant = True
        return relevant

    def _forget(self, wd: int) -> None:
        path = self._watches.pop(wd, None)
        if path is not None:
            self._watched_inodes.pop(path, None)

    def _sync_watches(self) -> None:
        """Watch the state directory and every directory of the policy tree (new ones
        too, and a directory replaced under the same name)."""
        wanted = [self._state_dir]
        if self._policy_dir.is_dir():
            wanted.append(self._policy_dir)
            for root, dirs, _ in os.walk(self._policy_dir):
                wanted.extend(Path(root) / name for name in dirs)
        for path in wanted:
            try:
                inode = os.stat(path, follow_symlinks=False).st_ino
                if self._watched_inodes.get(path) == inode:
                    continue
                wd = self._inotify.add_watch(
                    str(path), WATCH_MASK | inotify_flags.DONT_FOLLOW | inotify_flags.ONLYDIR
                )
            except OSError:
                continue  # gone again; the hash check reports what matters
            self._watches[wd] = path
            self._watched_inodes[path] = inode

    def _report(self, action: Action, reasons: list[str]) -> None:
        if action is Action.TAMPER:
            # Said on the terminal by the supervisor (on_tamper), as one agentsup: line.
            log.info("policy directory tampered: %s", "; ".join(reasons))
            self._record_tamper(reasons)
            self._call("on_tamper", lambda: self._on_tamper(list(reasons)))
        elif action is Action.RESEALED:
            log.info("policy directory re-sealed; the tamper episode is over")
            self._append(
                {"kind": "policy", "event": "resealed", "severity": "high", "outcome": "resumed"}
            )
            self._call("on_resealed", self._on_resealed)
        else:
            log.info("policy directory changed legitimately; reloading")
            self._call("on_reload", self._on_reload)

    def _record_tamper(self, reasons: list[str]) -> None:
        self._marker_reasons = list(reasons)
        self._write_marker()
        self._append(
            {
                "kind": "tamper",
                "event": "policy_tamper",
                "severity": "critical",
                "reasons": reasons,
                "outcome": "agents stopped",
            }
        )

    def _write_marker(self) -> None:
        """Write the tamper marker; one that fails is tried again on each check."""
        due = self._marker_due
        try:
            write_tamper_marker(
                self.locations, self._state.episode_generation, self._marker_reasons
            )
        except Exception as exc:
            self._marker_due = True
            if due:
                return  # said already
            if short_of_resources(exc):
                log.error("cannot write the tamper marker now (%s); trying again", exc)
            else:
                log.exception("cannot write the tamper marker; new runs may not be refused")
            return
        self._marker_due = False
        if due:
            log.warning("the tamper marker is written")

    def _append(self, record: dict[str, object]) -> None:
        if self._audit is None:
            return
        full: dict[str, object] = {
            "layer": "supervisor",
            "target": os.path.realpath(self._policy_dir),
            **record,
        }
        try:
            self._audit.append(full)
        except Exception as exc:
            if short_of_resources(exc):
                log.error("cannot write the audit record %s: %s", record.get("event"), exc)
            else:
                log.exception("cannot write the audit record %s", record.get("event"))

    def _call(self, name: str, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("PolicyWatcher %s callback failed", name)
