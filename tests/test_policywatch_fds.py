"""A policy check the supervisor cannot make (out of fds) is not tampering.

Red team 14 used up the supervisor's fds; the watcher, unable to open the
manifest, reported "policy directory tampered", failed to write the marker
too, and logged tracebacks.  Now such a check is "unavailable": the last
known state stands, it is said once, and the next check tries again.  A
real tamper, or an EMFILE a filesystem answers while we have fds to spare,
is still tampering.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import out_of_fds
from sealing import clear_immutable, fresh_code, team_locations
from test_policywatch import FakeAudit, Recorder

from agentsup.integrity import policywatch
from agentsup.integrity.policywatch import Phase, PolicyWatcher, WatchState, step
from agentsup.integrity.seal import SealStatus, check_sealed, seal, short_of_resources
from agentsup.paths import Locations


@pytest.fixture
def loc(locations: Path, tmp_path: Path) -> Iterator[Locations]:
    yield team_locations()
    clear_immutable(tmp_path)


@pytest.fixture
def watched(loc: Locations) -> Iterator[tuple[PolicyWatcher, Recorder, FakeAudit]]:
    seal(loc, fresh_code(loc), uid=0)
    recorder, audit = Recorder(), FakeAudit()
    watcher = PolicyWatcher(
        loc,
        on_tamper=recorder.tamper,
        on_resealed=recorder.resealed,
        on_reload=recorder.reload,
        audit=audit,
    )
    with watcher:
        yield watcher, recorder, audit


def test_step_keeps_what_it_knew_when_a_check_could_not_be_made() -> None:
    unavailable = SealStatus("unavailable", ["out of fds or memory"], directory="/p")
    for state in (
        WatchState(Phase.SEALED, 1, {"team.yaml": "aa"}),
        WatchState(Phase.TAMPERED, 1, {"team.yaml": "aa"}, 1),
        WatchState(Phase.NEVER_SEALED),
    ):
        assert step(state, unavailable) == (state, (), [])


def test_out_of_fds_is_not_tampering(
    loc: Locations,
    watched: tuple[PolicyWatcher, Recorder, FakeAudit],
    caplog: pytest.LogCaptureFixture,
) -> None:
    watcher, recorder, audit = watched
    watcher.check()
    assert watcher.phase is Phase.SEALED
    caplog.set_level(logging.DEBUG)
    with out_of_fds():
        status = check_sealed(loc)
        watcher.check()
        watcher.check()  # said once
    assert status.state == "unavailable" and status.tampered, status  # run refuses still
    assert recorder.calls == []
    assert watcher.phase is Phase.SEALED
    assert not (loc.state_dir / "policy.tampered").exists()
    assert audit.events() == ["check_unavailable"]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "policy directory tampered" not in caplog.text
    watcher.check()
    assert audit.events() == ["check_unavailable", "check_available"]
    # A real tamper is still caught.
    path = loc.policy_dir / "team.yaml"
    clear_immutable(loc.policy_dir)
    os.chmod(path, 0o644)
    with path.open("a") as policy:
        policy.write("# changed\n")
    watcher.check()
    assert [name for name, _ in recorder.calls] == ["tamper"]
    assert watcher.phase is Phase.TAMPERED
    assert (loc.state_dir / "policy.tampered").exists()


def test_an_emfile_while_we_have_fds_is_tampering(
    loc: Locations,
    watched: tuple[PolicyWatcher, Recorder, FakeAudit],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A filesystem (a FUSE server) can answer EMFILE: not a reason to look away."""
    watcher, recorder, _audit = watched

    def emfile(_path: object) -> None:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr("agentsup.integrity.seal.scan_directory", emfile)
    assert check_sealed(loc).state == "tampered"
    watcher.check()
    assert [name for name, _ in recorder.calls] == ["tamper"]


def test_a_tamper_marker_that_cannot_be_written_is_written_later(
    loc: Locations,
    watched: tuple[PolicyWatcher, Recorder, FakeAudit],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watcher, recorder, _audit = watched
    real = policywatch.write_tamper_marker
    failures = [OSError(errno.EMFILE, os.strerror(errno.EMFILE))]

    def flaky(*args: object) -> None:
        if failures:
            raise failures.pop()
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(policywatch, "write_tamper_marker", flaky)
    loc.policy_manifest.write_text("{}")  # tampering
    watcher.check()
    assert [name for name, _ in recorder.calls] == ["tamper"]
    assert not (loc.state_dir / "policy.tampered").exists()
    watcher.check()
    assert (loc.state_dir / "policy.tampered").exists()
    assert [name for name, _ in recorder.calls] == ["tamper"]


def test_short_of_resources_looks_through_the_chain() -> None:
    with out_of_fds():
        try:
            try:
                os.open("/", os.O_RDONLY)
            except OSError:
                raise ValueError("wrapped") from None
        except ValueError as exc:
            wrapped = exc
        assert short_of_resources(wrapped)
    assert not short_of_resources(wrapped)  # fds again: an EMFILE now is not ours
    assert short_of_resources(MemoryError())
    assert not short_of_resources(OSError(errno.EACCES, "no"))
