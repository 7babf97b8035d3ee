"""TOTP codes that let a person resume an agent (DESIGN.md 1.4, 3).

The secret lives in `Locations.totp_secret` (mode 0400).  pyotp alone would
accept the same code twice, so every accepted time step is written durably to
`Locations.totp_last_step` and only a strictly newer step is accepted after
it: a replayed code fails even after the supervisor restarts.

Wrong codes are rate-limited: the 5th wrong code within 60 s locks every
attempt out for 5 minutes, valid codes included.  The failure counter and
the lockout live in the state directory (`totp.failures`), not in memory,
because every supervisor on the machine shares one secret: an attacker must
not get 5 fresh guesses per supervisor.  All three files are read and
written under one flock (`totp.lock`) for the same reason.

The decision logic (`matching_step`, `LockoutState`) is pure; `TotpVerifier`
adds the files, the lock and the clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, NoReturn

from ..hashing import compare_digest
from ..logger import Logger
from ..paths import Locations, untrusted
from .statefiles import write_atomically

log = Logger(__name__)

ISSUER = "agentsup"
VALID_WINDOW = 1  # accept the previous and next 30 s step too, for clock skew
MAX_FAILURES = 5  # wrong codes allowed within FAILURE_WINDOW_S; the last one locks out
FAILURE_WINDOW_S = 60.0
LOCKOUT_S = 300.0
CODE_DIGITS = 6

_LOCK_NAME = "totp.lock"
_FAILURES_NAME = "totp.failures"


class TotpRefused(Exception):
    """A code was not accepted.  `reason` is shown to the operator.

    `lockout_started` is True on the wrong code that started a lockout, so
    the caller can audit the lockout itself once.
    """

    def __init__(self, reason: str, *, lockout_started: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lockout_started = lockout_started


class TotpSecretExists(Exception):
    """`totp init` without --force found a secret already in place."""


# --- pure logic -----------------------------------------------------------------


def normalize_code(code: str) -> str | None:
    """The code as 6 ASCII digits, or None when it cannot be a code at all."""
    cleaned = code.replace(" ", "").strip()
    if len(cleaned) != CODE_DIGITS or not (cleaned.isascii() and cleaned.isdigit()):
        return None
    return cleaned


def matching_step(secret: str, code: str, now: float, window: int = VALID_WINDOW) -> int | None:
    """The newest time step within `window` steps of `now` whose code is `code`.

    The equivalent of `pyotp.TOTP.verify(code, valid_window=window)` that
    also says which step matched; `verify_and_get_timecode` is missing from
    older pyotp 2.x releases.
    """
    import pyotp  # only when a code is checked

    totp = pyotp.TOTP(secret)
    current: int = totp.timecode(now)
    matched: int | None = None
    for step in range(current - window, current + window + 1):
        # Compare every candidate, so timing does not reveal which one matched.
        if compare_digest(str(totp.generate_otp(step)).encode(), code.encode()):
            matched = step
    return matched


class LockoutState(NamedTuple):
    """Recent wrong codes and the end of the current lockout (wall-clock seconds)."""

    failures: tuple[float, ...] = ()
    locked_until: float = 0.0

    def is_locked(self, now: float) -> bool:
        return now < self.locked_until

    def after_failure(self, now: float) -> LockoutState:
        recent = (*(t for t in self.failures if now - t < FAILURE_WINDOW_S), now)
        if len(recent) >= MAX_FAILURES:
            return LockoutState(failures=(), locked_until=now + LOCKOUT_S)
        return LockoutState(failures=recent, locked_until=self.locked_until)

    def attempts_left(self, now: float) -> int:
        recent = [t for t in self.failures if now - t < FAILURE_WINDOW_S]
        return max(MAX_FAILURES - len(recent), 0)

    def to_json(self) -> str:
        return json.dumps({"failures": list(self.failures), "locked_until": self.locked_until})

    @classmethod
    def from_json(cls, text: str) -> LockoutState:
        data = json.loads(text)
        failures = tuple(float(t) for t in data["failures"])
        return cls(failures=failures, locked_until=float(data["locked_until"]))


def provisioning_uri(secret: str, account: str) -> str:
    """The otpauth:// URI an authenticator app scans (with `secret=`, issuer agentsup)."""
    import pyotp

    uri: str = pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=ISSUER)
    return uri


# --- files ----------------------------------------------------------------------


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state directory 0700 if it is missing (existing ones are left alone)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def init_secret(locations: Locations, *, force: bool = False) -> str:
    """Create a new TOTP secret (mode 0400) and return its otpauth:// URI.

    Raises TotpSecretExists when one exists and `force` is false.
    """
    ensure_state_dir(locations.state_dir)
    path = locations.totp_secret
    if path.exists() and not force:
        raise TotpSecretExists(str(path))
    import pyotp

    secret = pyotp.random_base32()
    write_atomically(path, secret + "\n", 0o400)
    account = f"{getpass.getuser()}@{socket.gethostname()}"
    return provisioning_uri(secret, account)


def read_secret(locations: Locations) -> str:
    """The base32 secret; raises TotpRefused when it is missing or unreadable."""
    path = locations.totp_secret
    reason = untrusted(path)
    if reason is not None:
        # Anyone who could rename it away could plant a secret of their own.
        raise TotpRefused(f"the TOTP secret {path} cannot be trusted: {reason}")
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        raise TotpRefused(
            f"no TOTP secret at {path}; run 'agentsup totp init' and scan the URI first"
        ) from None
    except OSError as exc:
        raise TotpRefused(f"cannot read the TOTP secret {path}: {exc.strerror}") from None
    if not secret:
        raise TotpRefused(f"the TOTP secret {path} is empty; run 'agentsup totp init --force'")
    return secret


class TotpVerifier:
    """Checks codes against the shared secret, once each, with a shared lockout."""

    def __init__(self, locations: Locations, clock: Callable[[], float] = time.time) -> None:
        self._locations = locations
        self._clock = clock

    @property
    def _failures_path(self) -> Path:
        return self._locations.state_dir / _FAILURES_NAME

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_state_dir(self._locations.state_dir)
        lock_path = self._locations.state_dir / _LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read_last_step(self) -> int:
        path = self._locations.totp_last_step
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return -1
        try:
            return int(text)
        except ValueError:
            # Fail closed: without the last step we cannot tell a replay.
            raise TotpRefused(
                f"{path} is corrupt; refusing all codes until it is fixed or removed"
            ) from None

    def _read_lockout(self) -> LockoutState:
        path = self._failures_path
        try:
            return LockoutState.from_json(path.read_text())
        except FileNotFoundError:
            return LockoutState()
        except (ValueError, KeyError, TypeError):
            raise TotpRefused(
                f"{path} is corrupt; refusing all codes until it is fixed or removed"
            ) from None

    def _write_lockout(self, state: LockoutState) -> None:
        write_atomically(self._failures_path, state.to_json() + "\n", 0o600)

    def verify(self, code: str, *, uid: int) -> None:
        """Accept `code` once, or raise TotpRefused saying why.

        `uid` is the person asking; it only goes into the log.
        """
        with self._locked():
            now = self._clock()
            lockout = self._read_lockout()
            if lockout.is_locked(now):
                left = int(lockout.locked_until - now) + 1
                raise TotpRefused(
                    f"TOTP locked out after {MAX_FAILURES} wrong codes; try again in {left} s"
                )
            secret = read_secret(self._locations)
            normalized = normalize_code(code)
            step = None if normalized is None else matching_step(secret, normalized, now)
            if step is None:
                self._refuse_wrong_code(lockout, now, uid)
            last_step = self._read_last_step()
            if step <= last_step:
                raise TotpRefused("this code was already used; wait for the next code (every 30 s)")
            write_atomically(self._locations.totp_last_step, f"{step}\n", 0o600)
            if lockout.failures:
                self._write_lockout(LockoutState(locked_until=lockout.locked_until))
            log.info("TOTP code accepted from uid %d (step %d)", uid, step)

    def _refuse_wrong_code(self, lockout: LockoutState, now: float, uid: int) -> NoReturn:
        after = lockout.after_failure(now)
        self._write_lockout(after)
        if after.is_locked(now):
            log.warning(
                "TOTP locked out for %d s after %d wrong codes (last from uid %d)",
                LOCKOUT_S,
                MAX_FAILURES,
                uid,
            )
            raise TotpRefused(
                f"wrong TOTP code; {MAX_FAILURES} wrong codes within {int(FAILURE_WINDOW_S)} s, "
                f"locked out for {int(LOCKOUT_S)} s",
                lockout_started=True,
            )
        left = after.attempts_left(now)
        raise TotpRefused(
            f"wrong TOTP code ({left} attempt{'' if left == 1 else 's'} left before a "
            f"{int(LOCKOUT_S // 60)}-minute lockout); check the authenticator's clock"
        )
