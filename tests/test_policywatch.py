"""PolicyWatcher: the pure state machine, then a real watcher driven by a small poll loop."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sealing import EXTRA_RULE, HAS_CHATTR, TEAM, clear_immutable, fresh_code, team_locations

from agentsup.integrity.policywatch import (
    Action,
    Phase,
    PolicyWatcher,
    WatchState,
    initial_state,
    step,
)
from agentsup.integrity.seal import Manifest, SealStatus, check_sealed, seal, unseal
from agentsup.paths import Locations
from agentsup.policy import load_policy_file

# --------------------------------------------------------------- pure: step


def _manifest(state: str, generation: int, files: dict[str, str]) -> Manifest:
    return Manifest(state, "/p", files, (".",), (), 0, generation, "t", 0)  # type: ignore[arg-type]


OLD = {"team.yaml": "aa"}
NEW = {"team.yaml": "bb"}


def _status(state: str, generation: int | None = None, files: dict[str, str] = OLD) -> SealStatus:
    manifest = None
    if generation is not None:
        manifest = _manifest("unsealed" if state == "unsealed" else "sealed", generation, files)
    reasons = ["/p/team.yaml: modified"] if state == "tampered" else []
    return SealStatus(state, reasons, manifest, files, "/p")  # type: ignore[arg-type]


SEALED_1 = WatchState(Phase.SEALED, 1, OLD)


@pytest.mark.parametrize(
    ("before", "status", "phase", "actions"),
    [
        (SEALED_1, _status("ok", 1), Phase.SEALED, ()),
        (SEALED_1, _status("tampered", 1, NEW), Phase.TAMPERED, (Action.TAMPER,)),
        (SEALED_1, _status("never_sealed"), Phase.TAMPERED, (Action.TAMPER,)),  # manifest removed
        (SEALED_1, _status("ok", 0), Phase.TAMPERED, (Action.TAMPER,)),  # rolled back
        (SEALED_1, _status("unsealed", 2), Phase.UNSEALED, ()),
        (WatchState(Phase.UNSEALED, 2, OLD), _status("unsealed", 2, NEW), Phase.UNSEALED, ()),
        (WatchState(Phase.UNSEALED, 2, OLD), _status("ok", 3, NEW), Phase.SEALED, (Action.RELOAD,)),
        (WatchState(Phase.UNSEALED, 2, OLD), _status("ok", 3, OLD), Phase.SEALED, ()),
        (
            SEALED_1,
            _status("ok", 3, NEW),
            Phase.SEALED,
            (Action.RELOAD,),
        ),  # unseal+edit+seal seen late
        (
            WatchState(Phase.NEVER_SEALED),
            _status("never_sealed", None, NEW),
            Phase.NEVER_SEALED,
            (Action.RELOAD,),
        ),
        (
            WatchState(Phase.NEVER_SEALED, loaded=NEW),
            _status("never_sealed", None, NEW),
            Phase.NEVER_SEALED,
            (),
        ),
        (WatchState(Phase.NEVER_SEALED), _status("ok", 1, OLD), Phase.SEALED, (Action.RELOAD,)),
    ],
)
def test_step(
    before: WatchState, status: SealStatus, phase: Phase, actions: tuple[Action, ...]
) -> None:
    after, done, reasons = step(before, status)
    assert (after.phase, done) == (phase, actions)
    assert bool(reasons) == (Action.TAMPER in done)


def test_a_tamper_episode_is_reported_once_and_ends_only_with_a_newer_seal() -> None:
    state, actions, reasons = step(SEALED_1, _status("tampered", 1, NEW))
    assert actions == (Action.TAMPER,)
    assert reasons == ["/p/team.yaml: modified"]
    for status in (
        _status("tampered", 1, NEW),
        _status("ok", 1, OLD),  # files and flag restored by hand: still tampered
        _status("unsealed", 2, NEW),  # unsealing does not end it either
        _status("never_sealed"),
    ):
        state, actions, _ = step(state, status)
        assert (state.phase, actions) == (Phase.TAMPERED, ())
    state, actions, _ = step(state, _status("ok", 3, NEW))
    assert (state.phase, actions) == (Phase.SEALED, (Action.RESEALED, Action.RELOAD))
    assert state.loaded == NEW


def test_a_tampered_start_is_reported_by_the_first_step() -> None:
    start = initial_state(_status("tampered", 1, NEW))
    _, actions, _ = step(start, _status("tampered", 1, NEW))
    assert actions == (Action.TAMPER,)


# ------------------------------------------------------- the real watcher


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def tamper(self, reasons: list[str]) -> None:
        self.calls.append(("tamper", reasons))

    def resealed(self) -> None:
        self.calls.append(("resealed", None))

    def reload(self) -> None:
        self.calls.append(("reload", None))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class FakeAudit:
    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def append(self, record: object) -> object:
        assert isinstance(record, dict)
        self.records.append(record)
        return record

    def events(self) -> list[object]:
        return [r.get("event") for r in self.records]


def drive(
    watcher: PolicyWatcher, done: Callable[[], bool], timeout: float = 2.0
) -> tuple[float, int]:
    """A tiny version of the supervisor loop: poll the fd, check on the timer.

    Returns the seconds until `done()` and how many timer checks ran.
    """
    start = time.monotonic()
    poller = select.poll()
    poller.register(watcher.fd(), select.POLLIN)
    timer_checks = 0
    while not done():
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            break
        wait = min(watcher.due_in(), timeout - elapsed)
        if poller.poll(max(1, int(wait * 1000))):
            watcher.on_ready()
        elif watcher.due_in() == 0:
            timer_checks += 1
            watcher.check()
    return time.monotonic() - start, timer_checks


@pytest.fixture(autouse=True)
def _clear_immutable(tmp_path: Path) -> Iterator[None]:
    yield
    clear_immutable(tmp_path)


@pytest.fixture
def loc(locations: Path) -> Locations:
    return team_locations()



@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def audit() -> FakeAudit:
    return FakeAudit()


@pytest.fixture
def make_watcher(
    loc: Locations, recorder: Recorder, audit: FakeAudit
) -> Iterator[Callable[[], PolicyWatcher]]:
    made: list[PolicyWatcher] = []

    def make() -> PolicyWatcher:
        watcher = PolicyWatcher(
            loc,
            on_tamper=recorder.tamper,
            on_resealed=recorder.resealed,
            on_reload=recorder.reload,
            interval=0.2,
            audit=audit,
        )
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.close()


def append_rule_as_root(locs: Locations) -> None:
    """What the acceptance test's root does: chattr -i, then append a rule."""
    path = locs.policy_dir / "team.yaml"
    if HAS_CHATTR:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    os.chmod(path, 0o644)
    with path.open("a") as policy:
        policy.write(EXTRA_RULE)


def test_appending_to_a_sealed_file_is_reported_within_2_s(
    loc: Locations,
    recorder: Recorder,
    audit: FakeAudit,
    make_watcher: Callable[[], PolicyWatcher],
) -> None:
    seal(loc, fresh_code(loc), uid=0)
    watcher = make_watcher()
    watcher.interval = 10.0  # inotify alone must catch a content change
    append_rule_as_root(loc)
    elapsed, _ = drive(watcher, lambda: bool(recorder.calls))
    assert elapsed < 2.0
    assert recorder.names() == ["tamper"]
    reasons = recorder.calls[0][1]
    assert isinstance(reasons, list)
    assert any("team.yaml: modified" in reason for reason in reasons)
    assert watcher.phase is Phase.TAMPERED
    [record] = [r for r in audit.records if r["kind"] == "tamper"]
    assert record["severity"] == "critical"
    # New runs stay refused, naming the file, even once the content is put back.
    path = loc.policy_dir / "team.yaml"
    path.write_text(TEAM)
    os.chmod(path, 0o444)
    status = check_sealed(loc)
    assert status.tampered
    assert "team.yaml" in status.describe()
    drive(watcher, lambda: False, timeout=0.5)
    assert recorder.names() == ["tamper"]  # once per episode


@pytest.mark.requires_root
@pytest.mark.skipif(not HAS_CHATTR, reason="chattr not installed")
def test_chattr_minus_i_alone_is_caught_by_the_timer(
    loc: Locations, recorder: Recorder, make_watcher: Callable[[], PolicyWatcher]
) -> None:
    manifest = seal(loc, fresh_code(loc), uid=0)
    if "team.yaml" not in manifest.immutable:
        pytest.skip("this filesystem does not support chattr +i")
    watcher = make_watcher()
    subprocess.run(["chattr", "-i", str(loc.policy_dir / "team.yaml")], check=True)
    elapsed, timer_checks = drive(watcher, lambda: bool(recorder.calls))
    assert elapsed < 2.0
    assert timer_checks >= 1  # chattr raises no inotify event
    assert recorder.calls == [
        (
            "tamper",
            [f"{os.path.realpath(loc.policy_dir)}/team.yaml: immutable flag removed (chattr -i)"],
        )
    ]


def test_reseal_after_tampering_resumes_then_reloads(
    loc: Locations,
    recorder: Recorder,
    audit: FakeAudit,
    make_watcher: Callable[[], PolicyWatcher],
) -> None:
    seal(loc, fresh_code(loc), uid=0)
    watcher = make_watcher()
    append_rule_as_root(loc)
    drive(watcher, lambda: bool(recorder.calls))
    seal(loc, fresh_code(loc), uid=0)  # a person accepts the edit
    drive(watcher, lambda: len(recorder.calls) >= 3)
    assert recorder.names() == ["tamper", "resealed", "reload"]
    assert watcher.phase is Phase.SEALED
    assert check_sealed(loc).state == "ok"
    assert [r["event"] for r in audit.records] == ["policy_tamper", "resealed"]


def test_unseal_edit_seal_reloads_without_tamper(
    loc: Locations, recorder: Recorder, make_watcher: Callable[[], PolicyWatcher]
) -> None:
    seal(loc, fresh_code(loc), uid=0)
    watcher = make_watcher()
    unseal(loc, fresh_code(loc), uid=0)
    drive(watcher, lambda: watcher.phase is Phase.UNSEALED)
    assert watcher.phase is Phase.UNSEALED
    with (loc.policy_dir / "team.yaml").open("a") as policy:
        policy.write(EXTRA_RULE)
    drive(watcher, lambda: False, timeout=0.5)
    assert recorder.calls == []  # half-done edits are not loaded
    seal(loc, fresh_code(loc), uid=0)
    drive(watcher, lambda: bool(recorder.calls))
    assert recorder.names() == ["reload"]
    reloaded = load_policy_file(loc.policy_dir / "team.yaml", loc.policy_dir)
    assert reloaded.rules[0].id == "injected"  # what the reload will now find


def test_resealing_unchanged_content_is_not_a_reload(
    loc: Locations, recorder: Recorder, make_watcher: Callable[[], PolicyWatcher]
) -> None:
    seal(loc, fresh_code(loc), uid=0)
    watcher = make_watcher()
    seal(loc, fresh_code(loc), uid=0)
    drive(watcher, lambda: False, timeout=0.6)
    assert recorder.calls == []
    assert watcher.phase is Phase.SEALED


def test_removing_the_manifest_is_tampering(
    loc: Locations, recorder: Recorder, make_watcher: Callable[[], PolicyWatcher]
) -> None:
    seal(loc, fresh_code(loc), uid=0)
    watcher = make_watcher()
    loc.policy_manifest.unlink()
    drive(watcher, lambda: bool(recorder.calls))
    assert recorder.calls == [
        ("tamper", [f"{os.path.realpath(loc.policy_dir)}: the seal manifest was removed"])
    ]


def test_never_sealed_directory_hot_reloads_on_content_change(
    loc: Locations, recorder: Recorder, make_watcher: Callable[[], PolicyWatcher]
) -> None:
    watcher = make_watcher()
    os.utime(loc.policy_dir / "team.yaml")  # metadata only: not a reload
    drive(watcher, lambda: False, timeout=0.5)
    assert recorder.calls == []
    (loc.policy_dir / "team.yaml").write_text(TEAM.replace("block", "sigkill"))
    drive(watcher, lambda: bool(recorder.calls))
    assert recorder.names() == ["reload"]
    (loc.policy_dir / "new").mkdir()
    drive(watcher, lambda: False, timeout=0.3)  # the new subdirectory gets a watch
    watcher.interval = 10.0
    (loc.policy_dir / "new" / "other.yaml").write_text(TEAM.replace("team", "other"))
    elapsed, _ = drive(watcher, lambda: len(recorder.calls) == 2)
    assert recorder.names() == ["reload", "reload"]
    assert elapsed < 2.0


def test_unrelated_state_files_do_not_trigger_a_rehash(
    loc: Locations, make_watcher: Callable[[], PolicyWatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    watcher = make_watcher()
    checks: list[float] = []
    monkeypatch.setattr(watcher, "check", lambda: checks.append(time.monotonic()))
    (loc.state_dir / "audit.head").write_text("x" * 1024)  # rewritten on every audit flush
    watcher.on_ready()
    assert checks == []
    loc.policy_manifest.write_text("{}")
    watcher.on_ready()
    assert len(checks) == 1


def test_errors_fail_closed_and_never_reach_the_loop(
    loc: Locations,
    recorder: Recorder,
    make_watcher: Callable[[], PolicyWatcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watcher = make_watcher()

    def broken(_locations: Locations) -> SealStatus:
        raise RuntimeError("disk on fire")

    def failing_callback(reasons: list[str]) -> None:
        recorder.tamper(reasons)
        raise ValueError("callback bug")

    monkeypatch.setattr("agentsup.integrity.policywatch.check_sealed", broken)
    monkeypatch.setattr(watcher, "_on_tamper", failing_callback)
    watcher.check()  # must not raise
    assert recorder.calls == [("tamper", [f"cannot check {loc.policy_dir}: disk on fire"])]
    assert watcher.phase is Phase.TAMPERED
    marker = json.loads((loc.state_dir / "policy.tampered").read_text())
    assert marker["reasons"] == [f"cannot check {loc.policy_dir}: disk on fire"]


def test_close_releases_the_inotify_fd(loc: Locations, recorder: Recorder) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with PolicyWatcher(
        loc, on_tamper=recorder.tamper, on_resealed=recorder.resealed, on_reload=recorder.reload
    ) as watcher:
        assert str(watcher.fd()) in os.listdir("/proc/self/fd")
    assert set(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "never-sealed"])
def test_a_watcher_given_a_baseline_reports_what_changed_since_at_its_first_check(
    loc: Locations, recorder: Recorder, sealed: bool
) -> None:
    """`agentsup run` reads the seal status before its policy and watches later: a change
    in between is reported by the first check, and nothing is watched before it."""
    if sealed:
        seal(loc, fresh_code(loc), uid=0)
    baseline = check_sealed(loc)  # before the policy is loaded
    if sealed:
        append_rule_as_root(loc)
    else:
        (loc.policy_dir / "team.yaml").write_text(TEAM.replace("block", "sigkill"))
    with PolicyWatcher(
        loc,
        on_tamper=recorder.tamper,
        on_resealed=recorder.resealed,
        on_reload=recorder.reload,
        baseline=baseline,
    ) as watcher:
        assert watcher._watches == {}  # no inotify mark until the first check
        assert recorder.calls == []
        watcher.check()
        assert recorder.names() == (["tamper"] if sealed else ["reload"])
        assert watcher._watches  # watching from then on
