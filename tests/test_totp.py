"""TOTP: one use per code, durable across restarts, and a shared lockout (fake clock)."""

from __future__ import annotations

import stat
from pathlib import Path

import pyotp
import pytest

from agentsup.integrity.totp import (
    LOCKOUT_S,
    MAX_FAILURES,
    LockoutState,
    TotpRefused,
    TotpSecretExists,
    TotpVerifier,
    init_secret,
    matching_step,
    normalize_code,
)
from agentsup.paths import Locations, default_locations

T0 = 1_700_000_010.0  # 10 s into a 30 s step


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def locs(locations: Path) -> Locations:
    return default_locations()


@pytest.fixture
def secret(locs: Locations) -> str:
    init_secret(locs)
    return locs.totp_secret.read_text().strip()


def code_at(secret: str, when: float) -> str:
    return str(pyotp.TOTP(secret).at(when))


def wrong_code(secret: str, when: float) -> str:
    # A code that matches none of the steps in the window.
    valid = {code_at(secret, when + d) for d in (-30, 0, 30)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in valid)


def test_init_creates_secret_0400_in_0700_dir(locs: Locations) -> None:
    uri = init_secret(locs)
    secret = locs.totp_secret.read_text().strip()
    assert stat.S_IMODE(locs.totp_secret.stat().st_mode) == 0o400
    assert stat.S_IMODE(locs.state_dir.stat().st_mode) == 0o700
    assert uri.startswith("otpauth://totp/")
    assert f"secret={secret}" in uri
    assert "issuer=agentsup" in uri


def test_init_refuses_overwrite_without_force(locs: Locations, secret: str) -> None:
    with pytest.raises(TotpSecretExists):
        init_secret(locs)
    assert locs.totp_secret.read_text().strip() == secret
    init_secret(locs, force=True)
    assert locs.totp_secret.read_text().strip() != secret
    assert stat.S_IMODE(locs.totp_secret.stat().st_mode) == 0o400


def test_valid_code_accepted_and_step_stored_durably(locs: Locations, secret: str) -> None:
    TotpVerifier(locs, clock=FakeClock()).verify(code_at(secret, T0), uid=0)
    assert int(locs.totp_last_step.read_text()) == pyotp.TOTP(secret).timecode(T0)
    assert stat.S_IMODE(locs.totp_last_step.stat().st_mode) == 0o600


def test_replay_refused_same_instance(locs: Locations, secret: str) -> None:
    verifier = TotpVerifier(locs, clock=FakeClock())
    code = code_at(secret, T0)
    verifier.verify(code, uid=0)
    with pytest.raises(TotpRefused, match="already used"):
        verifier.verify(code, uid=0)


def test_replay_refused_after_restart(locs: Locations, secret: str) -> None:
    code = code_at(secret, T0)
    TotpVerifier(locs, clock=FakeClock()).verify(code, uid=0)
    with pytest.raises(TotpRefused, match="already used"):
        TotpVerifier(locs, clock=FakeClock(T0 + 5)).verify(code, uid=0)


def test_older_step_refused_after_newer_one(locs: Locations, secret: str) -> None:
    clock = FakeClock()
    verifier = TotpVerifier(locs, clock=clock)
    verifier.verify(code_at(secret, T0), uid=0)
    # The previous step's code is inside the window but not newer.
    with pytest.raises(TotpRefused, match="already used"):
        verifier.verify(code_at(secret, T0 - 30), uid=0)
    # The next step's code is newer, so it is accepted once.
    clock.now = T0 + 30
    verifier.verify(code_at(secret, T0 + 30), uid=0)


def test_window_accepts_adjacent_step_but_not_two_away(locs: Locations, secret: str) -> None:
    verifier = TotpVerifier(locs, clock=FakeClock())
    with pytest.raises(TotpRefused, match="wrong TOTP code"):
        verifier.verify(code_at(secret, T0 - 60), uid=0)
    verifier.verify(code_at(secret, T0 - 30), uid=0)


def test_wrong_code_refused_and_counted(locs: Locations, secret: str) -> None:
    verifier = TotpVerifier(locs, clock=FakeClock())
    with pytest.raises(TotpRefused, match=f"{MAX_FAILURES - 1} attempts left"):
        verifier.verify(wrong_code(secret, T0), uid=1000)
    with pytest.raises(TotpRefused, match=f"{MAX_FAILURES - 2} attempts left"):
        verifier.verify("not a code", uid=1000)
    assert not locs.totp_last_step.exists()


def test_lockout_after_five_failures_then_release(locs: Locations, secret: str) -> None:
    clock = FakeClock()
    verifier = TotpVerifier(locs, clock=clock)
    bad = wrong_code(secret, T0)
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(TotpRefused) as refused:
            verifier.verify(bad, uid=0)
        assert not refused.value.lockout_started
    with pytest.raises(TotpRefused) as refused:
        verifier.verify(bad, uid=0)
    assert refused.value.lockout_started
    # Even a valid code is refused during the lockout, and by another supervisor too.
    clock.now = T0 + LOCKOUT_S - 1
    with pytest.raises(TotpRefused, match="locked out"):
        verifier.verify(code_at(secret, clock.now), uid=0)
    with pytest.raises(TotpRefused, match="locked out"):
        TotpVerifier(locs, clock=clock).verify(code_at(secret, clock.now), uid=0)
    assert not locs.totp_last_step.exists()
    clock.now = T0 + LOCKOUT_S + 1
    verifier.verify(code_at(secret, clock.now), uid=0)


def test_failures_outside_window_do_not_lock(locs: Locations, secret: str) -> None:
    clock = FakeClock()
    verifier = TotpVerifier(locs, clock=clock)
    for _ in range(MAX_FAILURES * 2):
        with pytest.raises(TotpRefused, match=r"attempts? left"):
            verifier.verify(wrong_code(secret, clock.now), uid=0)
        clock.now += 15  # 4 failures per 60 s at most
    verifier.verify(code_at(secret, clock.now), uid=0)


def test_success_clears_failure_count(locs: Locations, secret: str) -> None:
    verifier = TotpVerifier(locs, clock=FakeClock())
    for _ in range(MAX_FAILURES - 1):
        with pytest.raises(TotpRefused):
            verifier.verify(wrong_code(secret, T0), uid=0)
    verifier.verify(code_at(secret, T0), uid=0)
    with pytest.raises(TotpRefused, match=f"{MAX_FAILURES - 1} attempts left"):
        verifier.verify(wrong_code(secret, T0), uid=0)


def test_missing_secret_refused_with_hint(locs: Locations) -> None:
    with pytest.raises(TotpRefused, match="agentsup totp init"):
        TotpVerifier(locs, clock=FakeClock()).verify("123456", uid=0)


def test_corrupt_last_step_fails_closed(locs: Locations, secret: str) -> None:
    locs.totp_last_step.write_text("garbage\n")
    with pytest.raises(TotpRefused, match="corrupt"):
        TotpVerifier(locs, clock=FakeClock()).verify(code_at(secret, T0), uid=0)


def test_matching_step_and_normalize() -> None:
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    step = totp.timecode(T0)
    assert matching_step(secret, totp.at(T0), T0) == step
    assert matching_step(secret, totp.at(T0 + 30), T0) == step + 1
    assert matching_step(secret, totp.at(T0 + 90), T0) is None
    assert normalize_code(" 123 456 ") == "123456"
    assert normalize_code("12345") is None
    assert normalize_code("\uff11\uff12\uff13\uff14\uff15\uff16") is None  # full-width digits


def test_lockout_state_is_pure() -> None:
    state = LockoutState()
    for i in range(MAX_FAILURES - 1):
        state = state.after_failure(T0 + i)
        assert not state.is_locked(T0 + i)
    state = state.after_failure(T0 + 10)
    assert state.is_locked(T0 + 10)
    assert not state.is_locked(T0 + 10 + LOCKOUT_S)
    assert LockoutState.from_json(state.to_json()) == state
