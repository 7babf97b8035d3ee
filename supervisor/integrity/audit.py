"""The HMAC-chained audit log (DESIGN.md 1.5): the one writer, the verifier, readers.

Record format.  JSON Lines, one record per line.  Every record carries the
required keys (`REQUIRED_KEYS`, null when the caller had nothing to say), any
extra keys the caller passed, `prev` (the previous record's `mac`; 64 zeros at
the start of a fresh chain) and `mac`, the hex HMAC-SHA256 of the record's
canonical JSON without `mac` (sorted keys, no spaces, UTF-8).  The writer lays
a line out as that canonical JSON with `,"mac":"<hex>"` spliced in before the
closing brace, so the verifier recovers the signed bytes by slicing instead of
re-serialising.  Lines laid out any other way are still accepted: the verifier
parses them and rebuilds the canonical form.

Batch boundary (durability).  `AuditLog.append` writes its line to the file at
once (one `os.write`, under the lock), so readers see it immediately, but a
record is only *durable* once a flush has run: fdatasync of the log, then the
head record (last seq, mac, file, offset) rewritten in place with one pwrite
of a fixed-size (1024-byte) block.  A flush happens
  - when the supervisor loop calls `flush()` at the end of every event-loop
    iteration, after all the records that iteration produced were appended,
  - automatically inside `append` once 256 records or 200 ms are pending
    (`flush_due_in()` tells the loop how long it may sleep),
  - on rotation, and on `close()` (which also fsyncs the head).
After a crash, at most the records appended since the last flush are lost.
The head is written only after the log is synced, so it never names a record
the log lacks: losing unflushed records is not reported as tampering, losing
any flushed record is.

Concurrency.  Several processes may append to one log.  Each append (or
`append_many` batch) holds an exclusive `flock` on `audit.lock` beside the head,
re-reads the chain's tail if the log's inode or size is not what this writer
last left, and writes whole lines with one `os.write`, so lines never
interleave and the chain never forks.

Tail check and restarts.  Before extending a chain it did not write last
(at open, or when the file changed under it), the writer checks the last
line on disk: its mac must verify, and it must agree with the head record.
If not (a forged, edited, torn or appended line, a removed tail, a missing
head), the writer starts a new segment: a `tamper` record with
`"chain": "restart"` naming what was wrong, chained after the last record it
trusts.  The verifier reports the break and checks the chain again from the
restart on, so a break is always explicit and never ends all checking.

Failed writes.  A write that fails (ENOSPC, EDQUOT, EIO) is cut back off the
file, so no torn line is left behind, and `append` raises OSError: nothing of
the call was written.  A failed sync keeps the lines written since the last
good one in memory; the next flush writes them again before it syncs, since
the kernel may have dropped the pages it failed to write back.

Rotation.  When the live file has reached `rotate_bytes`, it becomes
`<log>.1` (older files shift to `.2` ... `.keep_rotated`, the oldest is
dropped) and a new live file starts.  seq and the chain continue across files.
The head record also keeps `base_seq`/`base_prev`, the first record of the
oldest file kept, so dropping old files is not mistaken for tampering, while
deleting any file that should still be there is.
"""

from __future__ import annotations

import _thread
import contextlib
import fcntl
import functools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

from ..hashing import compare_digest, sha256
from ..paths import Locations

ZERO_MAC = "0" * 64
KEY_BYTES = 32
KINDS = ("decision", "signal", "approval", "lifecycle", "policy", "tamper")
REQUIRED_KEYS = (
    "seq",
    "ts",
    "agent",
    "pid",
    "kind",
    "action_type",
    "target",
    "decision",
    "rule",
    "severity",
    "layer",
    "prev",
)
DEFAULT_ROTATE_BYTES = 64 * 2**20
DEFAULT_KEEP_ROTATED = 10
DEFAULT_FLUSH_RECORDS = 256
DEFAULT_FLUSH_SECONDS = 0.2

# json.dumps builds a new encoder per call when given options; reusing one
# halves the cost of the hot path.  `default=str` keeps a stray Path or
# datetime from crashing the one writer.
_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)
_NULL_RECORD: dict[str, object] = dict.fromkeys(REQUIRED_KEYS)
# How text becomes bytes: a lone surrogate (in a JSON string, which is the
# only place the encoder leaves a str's characters) becomes `\udfff`, its
# JSON escape.  Every other character is plain UTF-8.
_TOTAL = "backslashreplace"
# A line is the canonical body with `,"mac":"<64 hex>"}` + newline in place of
# its closing brace.
_MAC_PREFIX = b',"mac":"'
_MAC_SUFFIX = b'"}\n'
_SEALED_TAIL = len(_MAC_PREFIX) + 64 + len(_MAC_SUFFIX)
_MAC_START = -64 - len(_MAC_SUFFIX)
# The head record is pwritten in place at a fixed size: one write, no rename.
HEAD_SIZE = 1024


class AuditError(Exception):
    """The audit log, its key or its head record cannot be used."""


class AuditKeyError(AuditError):
    """The HMAC key is missing, unreadable or not a proper key file."""


# ---------------------------------------------------------------- pure helpers

_PAD_INNER = bytes(byte ^ 0x36 for byte in range(256))
_PAD_OUTER = bytes(byte ^ 0x5C for byte in range(256))


class MacKey:
    """HMAC-SHA256 (RFC 2104) with the key's two pads hashed once.

    `hmac.new`/`hmac.digest` derive the pads again for every message, which
    doubles the cost of a short record.  Gives the same digests.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = sha256(key).digest()
        block = key.ljust(64, b"\0")
        self._inner = sha256(block.translate(_PAD_INNER))
        self._outer = sha256(block.translate(_PAD_OUTER))

    def __repr__(self) -> str:
        return "<MacKey>"  # never show key material

    def hexdigest(self, message: bytes) -> str:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()


def canonical_json(record: Mapping[str, object]) -> bytes:
    """The bytes the mac covers: sorted keys, no spaces, UTF-8.

    A lone surrogate (a str no UTF-8 writer takes) is written as its JSON
    escape `\\udfff`, which reads back as the same str: the writer never
    fails on the text it is handed, and a record read back and laid out
    again gives the same bytes.
    """
    return _CANONICAL_ENCODER.encode(record).encode("utf-8", _TOTAL)


def seal_line(body: bytes, mac: str) -> bytes:
    """One log line: the canonical body with `mac` spliced in last."""
    return body[:-1] + _MAC_PREFIX + mac.encode() + _MAC_SUFFIX


@functools.lru_cache(maxsize=4)
def _second_prefix(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_ts(epoch: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-11-21T05:42:21.123456Z."""
    seconds, micros = divmod(int(epoch * 1_000_000), 1_000_000)
    return f"{_second_prefix(seconds)}.{micros:06d}Z"


class HeadRecord(NamedTuple):
    """The chain's last flushed record, kept outside the log.

    `file`/`offset` name the live file and where its last flushed record
    ends.  `base_seq`/`base_prev` are where the retained chain starts (they
    move when rotation drops the oldest file).
    """

    seq: int
    mac: str
    file: str
    offset: int
    base_seq: int = 1
    base_prev: str = ZERO_MAC

    def to_bytes(self) -> bytes:
        """The fixed-size on-disk form: JSON padded with spaces to HEAD_SIZE."""
        fields = {
            "seq": self.seq,
            "mac": self.mac,
            "file": self.file,
            "offset": self.offset,
            "base_seq": self.base_seq,
            "base_prev": self.base_prev,
        }
        data = json.dumps(fields, sort_keys=True).encode()
        if len(data) >= HEAD_SIZE:
            raise AuditError(f"head record longer than {HEAD_SIZE} bytes (log name too long?)")
        return data.ljust(HEAD_SIZE - 1) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> HeadRecord:
        try:
            raw = json.loads(data)
        except RecursionError:
            raise AuditError("head record is not JSON: nested too deeply") from None
        except ValueError as exc:
            raise AuditError(f"head record is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise AuditError("head record is not a JSON object")
        seq, mac, offset = raw.get("seq"), raw.get("mac"), raw.get("offset", 0)
        base_seq, base_prev = raw.get("base_seq", 1), raw.get("base_prev", ZERO_MAC)
        if not (_is_int(seq) and _is_int(offset) and _is_int(base_seq)):
            raise AuditError("head record: seq, offset and base_seq must be integers")
        if not (_is_mac(mac) and _is_mac(base_prev)):
            raise AuditError("head record: mac and base_prev must be 64 hex digits")
        assert isinstance(seq, int) and isinstance(offset, int) and isinstance(base_seq, int)
        assert isinstance(mac, str) and isinstance(base_prev, str)
        return cls(seq, mac, str(raw.get("file", "")), offset, base_seq, base_prev)


_HEX = frozenset("0123456789abcdef")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_mac(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


class VerifyResult(NamedTuple):
    """What checking a whole chain found."""

    ok: bool
    records: int  # records checked and found intact
    first_bad_seq: int | None
    reason: str
    where: str | None = None  # file and line of the first bad record
    breaks: tuple[ChainBreak, ...] = ()
    unchecked: int = 0  # lines after a break that no restart brought back
    first_seq: int = 1  # where the kept chain starts: rotation dropped the records before


class ChainBreak(NamedTuple):
    """One break in the chain, and where (if anywhere) checking resumed.

    `seq` is the seq that should have been at the bad spot.  `resumed_at` is
    the seq of the writer's restart record that starts the next intact
    segment, and `writer_saw` what that record says was wrong.
    """

    seq: int
    reason: str
    where: str
    resumed_at: int | None = None
    writer_saw: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "reason": self.reason,
            "where": self.where,
            "resumed_at": self.resumed_at,
            "writer_saw": self.writer_saw,
        }


class _BadRecord(Exception):
    pass


_MAC_MISMATCH = "mac mismatch: record edited, or not made with this log's key"
# The writer's restart record carries `"chain": "restart"`; only a record
# whose mac verifies can start a segment, so it cannot be forged without the
# key, and the writer drops the `chain` key from every record it is given.
# Its canonical body starts with _RESTART_PREFIX (no other keys sort between
# those two), which the verifier's fast path can test cheaply.
RESTART = "restart"
_RESTART_PREFIX = b'{"action_type":null,"after_seq":'
# Enough to say what went wrong in a badly damaged log without holding it all.
_MAX_BREAKS = 100


def parse_line(line: bytes) -> dict[str, object]:
    """A log line as a JSON object; _BadRecord saying why it is not one."""
    try:
        value = json.loads(line)
    except RecursionError:
        raise _BadRecord("line is nested too deeply to be a record") from None
    except ValueError:  # UnicodeDecodeError included
        raise _BadRecord("line is not valid JSON") from None
    if not isinstance(value, dict):
        raise _BadRecord("line is not a JSON object")
    return value


def _fast_seq_prev(body: bytes) -> tuple[int, bytes] | None:
    """seq and prev of an authentic canonical body without parsing it.

    Inside JSON strings quotes are escaped, so `"seq":` can only be a key; if
    it occurs once it is the top-level one.  Anything unusual (a nested key
    of the same name, a non-integer) returns None and the caller parses.
    """
    if body.count(b'"seq":') != 1 or body.count(b'"prev":') != 1:
        return None
    seq_at, prev_at = body.find(b',"seq":'), body.find(b',"prev":"')
    if seq_at < 0 or prev_at < 0:
        return None
    seq_end = body.find(b",", seq_at + 7)
    digits = body[seq_at + 7 : seq_end]
    if seq_end < 0 or not digits.isdigit():
        return None
    prev = body[prev_at + 9 : prev_at + 73]
    if body[prev_at + 73 : prev_at + 74] != b'"':
        return None
    return int(digits), prev


class _Link(NamedTuple):
    """An authentic record's place in the chain."""

    seq: int
    prev: bytes
    mac: bytes
    restart: str | None  # what the writer found wrong, for a restart record


def check_line(mac_key: MacKey, line: bytes) -> _Link:
    """The line as an authentic record (its mac verifies); _BadRecord if it is not one."""
    if line[-1:] != b"\n":
        raise _BadRecord("partial last line: log truncated mid-record")
    if line[-3:] == _MAC_SUFFIX and line[-_SEALED_TAIL:_MAC_START] == _MAC_PREFIX:
        # The writer's layout: the signed bytes are the line minus the mac.
        body = line[:-_SEALED_TAIL] + b"}"
        mac = line[_MAC_START:-3]
        if not compare_digest(mac_key.hexdigest(body).encode(), mac):
            raise _BadRecord(_MAC_MISMATCH)
        found = _fast_seq_prev(body)
        if found is not None and not body.startswith(_RESTART_PREFIX):
            return _Link(found[0], found[1], mac, None)
    else:
        mac = b""
    return _parse_link(mac_key, line, check_mac=not mac)


def _parse_link(mac_key: MacKey, line: bytes, *, check_mac: bool) -> _Link:
    """The slow path: parse the line, and check its mac unless already done."""
    record = parse_line(line)
    mac = record.pop("mac", None)
    if not isinstance(mac, str):
        raise _BadRecord("record has no mac")
    mac_bytes = mac.encode("ascii", "replace")
    if check_mac:
        expected = mac_key.hexdigest(canonical_json(record)).encode()
        if not compare_digest(expected, mac_bytes):
            raise _BadRecord(_MAC_MISMATCH)
    seq, prev = record.get("seq"), record.get("prev")
    if not _is_int(seq):
        raise _BadRecord("seq is not an integer")
    if not isinstance(prev, str):
        raise _BadRecord("prev is not a string")
    assert isinstance(seq, int)
    restart = None
    if record.get("chain") == RESTART and record.get("kind") == "tamper":
        restart = str(record.get("reason") or "no reason given")
    return _Link(seq, prev.encode("ascii", "replace"), mac_bytes, restart)


class ChainVerifier:
    """Checks a chain one line at a time; no I/O.

    Feed lines (bytes, newline included) in order with `feed`, which returns
    False for each line that is not the intact next record, then call
    `finish`.  The first bad seq is the seq that should have been at the bad
    spot: for a deleted record, the first missing one; for a truncated tail,
    the first record the head says exists but the log lacks.

    After a break, lines are skipped (counted as unchecked) until the
    writer's restart record; checking resumes there.  A restart record is a
    break in itself even where it links up: the writer found something wrong.
    """

    def __init__(self, key: bytes, head: HeadRecord | None = None) -> None:
        self._mac_key = MacKey(key)
        self._head_seq = head.seq if head else None
        self._first_seq = head.base_seq if head else 1
        self._head_mac = head.mac.encode() if head else b""
        self._seq = (head.base_seq if head else 1) - 1
        self._mac = (head.base_prev if head else ZERO_MAC).encode()
        self._records = 0
        self._in_sync = True
        self._breaks: list[ChainBreak] = []
        self._unchecked = 0
        self._file = "log"
        self._line = 0

    @property
    def records(self) -> int:
        return self._records

    def start_file(self, name: str) -> None:
        """Name the file the next lines come from (for `where`)."""
        self._file, self._line = name, 0

    def feed(self, line: bytes) -> bool:
        self._line += 1
        # The common case inline (a third of the cost): the writer's layout,
        # a good mac, the next seq and prev, not a restart, not the head's seq.
        if (
            self._in_sync
            and line[-3:] == _MAC_SUFFIX
            and line[-_SEALED_TAIL:_MAC_START] == _MAC_PREFIX
        ):
            body = line[:-_SEALED_TAIL] + b"}"
            mac = line[_MAC_START:-3]
            if compare_digest(self._mac_key.hexdigest(body).encode(), mac) and not body.startswith(
                _RESTART_PREFIX
            ):
                found = _fast_seq_prev(body)
                if found is not None:
                    seq, prev = found
                    if seq == self._seq + 1 and prev == self._mac and seq != self._head_seq:
                        self._seq, self._mac = seq, mac
                        self._records += 1
                        return True
        return self._feed_checked(line)

    def _feed_checked(self, line: bytes) -> bool:
        """Every other line: check it in full and record what is wrong."""
        expected = self._seq + 1
        try:
            link = check_line(self._mac_key, line)
        except _BadRecord as exc:
            return self._break(expected, str(exc))
        if self._in_sync:
            problem = self._link_problem(link, expected)
            if problem is None and link.restart is None:
                self._seq, self._mac = link.seq, link.mac
                self._records += 1
                return True
            if problem is not None:
                self._break(expected, problem)
                if link.restart is None or link.seq <= self._seq:
                    return False
            self._resume(link)
            return True
        if link.restart is not None and link.seq > self._seq:
            self._resume(link)
            return True
        self._unchecked += 1
        return False

    def _link_problem(self, link: _Link, expected: int) -> str | None:
        if link.seq != expected:
            if link.seq > expected:
                why = "missing, or records out of order"
            else:
                why = "record inserted, repeated or out of order"
            return f"expected seq {expected}, found seq {link.seq}: {why}"
        if link.prev != self._mac:
            return f"prev is not the mac of seq {expected - 1}"
        if link.seq == self._head_seq and link.mac != self._head_mac:
            return "mac differs from the one in the head record"
        return None

    def _where(self) -> str:
        return f"{self._file} line {self._line}"

    def _break(self, seq: int, reason: str) -> bool:
        if not self._in_sync:
            self._unchecked += 1
            return False
        self._in_sync = False
        if len(self._breaks) < _MAX_BREAKS:
            self._breaks.append(ChainBreak(seq, reason, self._where()))
        return False

    def _resume(self, link: _Link) -> None:
        """Checking goes on from the writer's restart record."""
        assert link.restart is not None
        if self._in_sync:  # it links up: the break is the restart itself
            self._break(link.seq, f"the writer restarted the chain: {link.restart}")
        if self._breaks and self._breaks[-1].resumed_at is None:
            self._breaks[-1] = self._breaks[-1]._replace(
                resumed_at=link.seq, writer_saw=link.restart
            )
        self._in_sync = True
        self._seq, self._mac = link.seq, link.mac
        self._records += 1

    def finish(self) -> VerifyResult:
        breaks = list(self._breaks)
        head_seq = self._head_seq
        if self._in_sync and head_seq is not None and head_seq > self._seq:
            why = f"log ends at seq {self._seq} but the head record says {head_seq}: tail removed"
            breaks.append(ChainBreak(self._seq + 1, why, f"end of {self._file}"))
        if not breaks:
            first_seq = self._first_seq
            return VerifyResult(True, self._records, None, "chain intact", first_seq=first_seq)
        first = breaks[0]
        return VerifyResult(
            False,
            self._records,
            first.seq,
            first.reason,
            first.where,
            tuple(breaks),
            self._unchecked,
            self._first_seq,
        )


# ------------------------------------------------------------- report (pure)

OUTCOMES = ("allowed", "denied", "approved", "killed")
_PROCEEDS = frozenset({"allow", "log", "warn"})
_FAILS = frozenset({"block", "kill", "stop", "deny"})
_SIGKILL_NAMES = frozenset({"SIGKILL", "KILL", "9"})


def classify(record: Mapping[str, object]) -> str | None:
    """Which report count a record adds to, if any.

    decision: `response` (or, failing that, the `decision` verdict) says
    whether the action went ahead (allowed) or failed (denied); a held action
    counts once its approval record arrives.  approval: `outcome` approved,
    or denied/timeout (denied); an approved record whose `decision` is still
    deny is a person resuming a stopped violation, whose denial the decision
    record already counted.  signal: SIGKILL of the tree (killed).
    """
    kind = record.get("kind")
    if kind == "decision":
        response = record.get("response") or record.get("decision")
        if response in _PROCEEDS:
            return "allowed"
        if response in _FAILS:
            return "denied"
        return None
    if kind == "approval":
        outcome = record.get("outcome")
        if outcome == "approved":
            return None if record.get("decision") == "deny" else "approved"
        if outcome in ("denied", "timeout"):
            return "denied"
        return None
    if kind == "signal" and str(record.get("signal")).upper() in _SIGKILL_NAMES:
        return "killed"
    return None


@dataclass(repr=False, eq=False)
class AgentReport:
    """One agent's decisions in the audit log, counted by outcome, rule and action type."""

    totals: Counter[str] = field(default_factory=Counter)
    by_rule: dict[str, Counter[str]] = field(default_factory=dict)
    by_action_type: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, outcome: str, rule: str, action_type: str) -> None:
        self.totals[outcome] += 1
        self.by_rule.setdefault(rule, Counter())[outcome] += 1
        self.by_action_type.setdefault(action_type, Counter())[outcome] += 1

    def to_json(self) -> dict[str, object]:
        def counts(counter: Counter[str]) -> dict[str, int]:
            return {name: counter[name] for name in OUTCOMES}

        return {
            **counts(self.totals),
            "by_rule": {k: counts(v) for k, v in sorted(self.by_rule.items())},
            "by_action_type": {k: counts(v) for k, v in sorted(self.by_action_type.items())},
        }


def summarize(records: Iterable[Mapping[str, object]]) -> dict[str, AgentReport]:
    """Per agent: allowed/denied/approved/killed, by rule and by action type."""
    reports: dict[str, AgentReport] = {}
    for record in records:
        outcome = classify(record)
        if outcome is None:
            continue
        agent = str(record.get("agent") or "-")
        rule = str(record.get("rule") or "-")
        action_type = str(record.get("action_type") or "-")
        reports.setdefault(agent, AgentReport()).add(outcome, rule, action_type)
    return dict(sorted(reports.items()))


# ---------------------------------------------------------------- files: keys


def _ensure_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def load_key(path: Path) -> bytes:
    """Read the HMAC key; refuse one that others could read or that is malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AuditKeyError(f"no audit key at {path}") from None
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077:
            raise AuditKeyError(f"audit key {path} is open to group or others (mode must be 0400)")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise AuditKeyError(f"audit key {path} is not {KEY_BYTES} bytes")
    return key


def load_or_create_key(path: Path) -> bytes:
    """Load the key, creating it (mode 0400, owned by us) on first use.

    The key is written to a private temporary name and then hard-linked into
    place, so a concurrent reader never sees a half-written key and two
    first users cannot end up with different keys.
    """
    with contextlib.suppress(AuditKeyError):
        return load_key(path)
    if path.exists():
        return load_key(path)  # present but unusable: say why
    _ensure_dir(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()  # left by a crashed process that had our pid
    fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o400)
    try:
        _write_all(fd, os.urandom(KEY_BYTES))  # what secrets.token_bytes returns
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temp, path)
    except FileExistsError:
        pass  # another process created it first; use theirs
    finally:
        temp.unlink()
    return load_key(path)


# ---------------------------------------------------------------- files: head


def read_head(path: Path) -> HeadRecord | None:
    """The head record, or None if there is none yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"cannot read head record {path}: {exc.strerror}") from None
    if not data.strip():
        return None  # created, never written: the writer died before its first flush
    return HeadRecord.from_bytes(data)


# ------------------------------------------------------------ files: the log


def chain_files(path: Path) -> list[Path]:
    """The files of a chain, oldest first: `path.N` ... `path.1`, then `path`."""
    rotated: list[tuple[int, Path]] = []
    prefix = path.name + "."
    if path.parent.is_dir():
        for entry in path.parent.iterdir():
            suffix = entry.name[len(prefix) :]
            if entry.name.startswith(prefix) and suffix.isdigit() and entry.is_file():
                rotated.append((int(suffix), entry))
    files = [entry for _, entry in sorted(rotated, reverse=True)]
    if path.exists():
        files.append(path)
    return files


def verify_log(path: Path, key: bytes, head: HeadRecord | None) -> VerifyResult:
    """Verify the chain through the rotated files and the live file `path`.

    Without a head record, removal of the newest records cannot be told from
    a shorter log.  The chain must then start at seq 1, unless rotated files
    are there: rotation may have dropped older ones, so it starts where the
    oldest file kept starts.
    """
    files = chain_files(path)
    if head is None and len(files) > 1:
        first = _first_record(files[0])
        if first is not None:
            # A base only: seq below the first record leaves no tail to check.
            head = HeadRecord(first[0] - 1, ZERO_MAC, path.name, 0, first[0], first[1])
    verifier = ChainVerifier(key, head)
    for file in files:
        verifier.start_file(file.name)
        with open(file, "rb", buffering=2**20) as lines:
            for line in lines:
                verifier.feed(line)
    return verifier.finish()


class RecordReader:
    """Every parseable record of the chain, oldest first.  No verification.

    Lines that are not JSON objects are skipped and counted: `skipped`, and
    `first_skipped` ("audit.jsonl line 7") say how many and where.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0
        self.first_skipped: str | None = None

    def __iter__(self) -> Iterator[dict[str, object]]:
        for file in chain_files(self.path):
            with open(file, "rb", buffering=2**20) as lines:
                for number, line in enumerate(lines, 1):
                    try:
                        yield parse_line(line)
                    except _BadRecord:
                        self.skipped += 1
                        if self.first_skipped is None:
                            self.first_skipped = f"{file.name} line {number}"


def iter_records(path: Path) -> Iterator[dict[str, object]]:
    """Every parseable record of the chain, oldest first.  No verification."""
    return iter(RecordReader(path))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Tail(NamedTuple):
    """What the end of a file holds, as the writer sees it before extending it."""

    seq: int  # the last authentic record (0 and ZERO_MAC when there is none)
    mac: str
    lines: bool  # the file holds at least one line, whole or torn
    torn: bool  # it ends without a newline
    problem: str | None  # what is wrong after the last authentic record


# How far back the writer looks for the last authentic record behind bad lines.
_TAIL_SCAN_BYTES = 4 * 2**20


def _scan_tail(path: Path, mac_key: MacKey) -> _Tail:
    """The last authentic record of a file, and what (if anything) follows it."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            if size == 0:
                return _Tail(0, ZERO_MAC, False, False, None)
            chunk = 64 * 1024
            while True:
                start = max(0, size - chunk)
                file.seek(start)
                data = file.read(size - start)
                found = _tail_in(data, whole=start == 0, mac_key=mac_key)
                if found is not None or start == 0 or chunk >= _TAIL_SCAN_BYTES:
                    break
                chunk *= 4
    except FileNotFoundError:
        return _Tail(0, ZERO_MAC, False, False, None)
    torn = not data.endswith(b"\n")
    problem = "the log ends in a partial line (a torn write, or truncation)" if torn else None
    if found is None:
        return _Tail(0, ZERO_MAC, True, torn, problem or "no record made with this log's key")
    seq, mac, after = found
    if after is not None:
        problem = problem or after
    return _Tail(seq, mac, True, torn, problem)


def _tail_in(data: bytes, *, whole: bool, mac_key: MacKey) -> tuple[int, str, str | None] | None:
    """(seq, mac) of the last authentic record in `data`, and what is wrong after it."""
    lines = data.split(b"\n")
    # lines[-1] is the partial line after the last newline (or b"");
    # lines[0] may be cut by the chunk start.
    complete = lines[:-1] if whole else lines[1:-1]
    problem: str | None = None
    for line in reversed(complete):
        try:
            link = check_line(mac_key, line + b"\n")
        except _BadRecord as exc:
            problem = problem or f"the last line is not a record of this log ({exc})"
            continue
        return link.seq, link.mac.decode("ascii", "replace"), problem
    return None


def _first_record(path: Path) -> tuple[int, str] | None:
    """(seq, prev) of the first record in a file."""
    try:
        with open(path, "rb") as file:
            record = parse_line(file.readline())
    except (FileNotFoundError, _BadRecord):
        return None
    seq, prev = record.get("seq"), record.get("prev")
    if _is_int(seq) and _is_mac(prev):
        assert isinstance(seq, int) and isinstance(prev, str)
        return seq, prev
    return None


class AuditLog:
    """The one writer of an audit log.  See the module docstring for the rules."""

    def __init__(
        self,
        path: Path,
        key_path: Path,
        head_path: Path,
        *,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        keep_rotated: int = DEFAULT_KEEP_ROTATED,
        flush_records: int = DEFAULT_FLUSH_RECORDS,
        flush_seconds: float = DEFAULT_FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if keep_rotated < 1:
            raise ValueError("keep_rotated must be at least 1")
        self.path = path
        self.head_path = head_path
        self.rotate_bytes = rotate_bytes
        self.keep_rotated = keep_rotated
        self.flush_records = flush_records
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._mac_key = MacKey(load_or_create_key(key_path))
        _ensure_dir(path.parent)
        _ensure_dir(head_path.parent)
        # flock does not exclude threads sharing the fd.  (threading.Lock is this;
        # `threading` itself is not imported before a run's agent starts.)
        self._mutex = _thread.allocate_lock()
        # Beside the head, in the state directory, which no agent may read (red
        # team 36: under `permissive` an agent flock-ed a lock beside the log and
        # every supervisor writing that log froze at its next record).
        self._lock_fd = os.open(
            head_path.with_suffix(".lock"),
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        self._head_fd = os.open(
            head_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        self._fd = -1
        self._inode = -1
        self._end = 0  # size of the live file after this writer's last write
        self.bytes_written = 0  # by this writer, ever (each agent's share is counted in it)
        self._seq = 0
        self._mac = ZERO_MAC
        self._base = (1, ZERO_MAC)
        self._pending = 0
        self._pending_since: float | None = None
        # Why the chain must restart before the next record (see _reload).
        self._restart_due: str | None = None
        self._torn_tail = False  # the file ends in a partial line, to be ended first
        # Lines written since the last good sync, and where they start: a
        # failed sync writes them again (_rewrite_unsynced).
        self._unsynced: list[bytes] = []
        self._unsynced_from = 0
        self._sync_failed = False
        self._closed = False
        with self._locked():
            if os.fstat(self._head_fd).st_size > HEAD_SIZE:
                os.ftruncate(self._head_fd, HEAD_SIZE)  # not ours: rewritten at the next flush
            self._reload()
            if os.fstat(self._head_fd).st_size == 0 and self._seq == 0:
                # A head from the start, so an empty one later means it was
                # emptied, not that no flush has happened yet.
                head = HeadRecord(0, ZERO_MAC, self.path.name, self._end, *self._base)
                with contextlib.suppress(OSError):  # a full disk: the first flush writes it
                    os.pwrite(self._head_fd, head.to_bytes(), 0)

    @classmethod
    def open(cls, locations: Locations) -> AuditLog:
        """The log of `locations`, rotated at AGENTSUP_AUDIT_ROTATE_MB (MiB, default 64)."""
        rotate_bytes = DEFAULT_ROTATE_BYTES
        given = os.environ.get("AGENTSUP_AUDIT_ROTATE_MB")
        if given:
            try:
                rotate_bytes = int(float(given) * 2**20)
            except ValueError:
                rotate_bytes = 0
            if not 4096 <= rotate_bytes <= 2**40:
                raise AuditError(f"AGENTSUP_AUDIT_ROTATE_MB={given!r}: not a size in MiB")
        return cls(
            locations.audit_log,
            locations.audit_key,
            locations.audit_head,
            rotate_bytes=rotate_bytes,
        )

    @property
    def retained_bytes(self) -> int:
        """About how much of the log is kept: the live file and the rotated ones."""
        return self.rotate_bytes * (self.keep_rotated + 1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"seq={self._seq} pending={self._pending}"
        return f"<AuditLog {self.path} {state}>"

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def pending(self) -> int:
        """Records appended but not yet flushed by this writer."""
        return self._pending

    def append(self, record: Mapping[str, object]) -> dict[str, object]:
        """Seal and write one record; return it as written (seq, ts, prev, mac filled)."""
        return self.append_many((record,))[0]

    def append_many(self, records: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
        """Seal and write several records under one lock and one write.

        OSError means none of them was written (a failed write is cut back
        off the file).  A failed sync along the way is not raised here: the
        records are written, and the next `flush` syncs again and raises.
        """
        # The hot path: the lock is taken inline, without a context manager.
        with self._mutex:
            if self._closed:
                raise AuditError(f"audit log {self.path} is closed")
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                if self._sync_failed:
                    self._rewrite_unsynced()
                self._catch_up()
                if self._end >= self.rotate_bytes:
                    self._rotate()
                if self._restart_due is not None:
                    self._write_restart(self._restart_due)
                return self._write_records(records)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def flush_due_in(self) -> float | None:
        """Seconds until pending records must be flushed; None if none pend.

        The loop can use this as its poll timeout.
        """
        if self._pending_since is None:
            return None
        return max(0.0, self._pending_since + self.flush_seconds - self._clock())

    def flush(self) -> None:
        """Make every record appended so far durable and name the last in the head."""
        if self._pending == 0 or self._closed:
            return
        with self._locked():
            if self._sync_failed:
                self._rewrite_unsynced()
            self._catch_up(check_path=True)
            self._flush_locked()

    def close(self) -> None:
        """Flush and close; the fds are closed even when the flush fails (OSError)."""
        if self._closed:
            return
        try:
            self.flush()
            os.fsync(self._head_fd)
        finally:
            self._closed = True
            for fd in (self._fd, self._head_fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- everything below runs under the lock

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            if self._closed:
                raise AuditError(f"audit log {self.path} is closed")
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _write_records(
        self, records: Iterable[Mapping[str, object]], *, own: bool = False
    ) -> list[dict[str, object]]:
        hexdigest = self._mac_key.hexdigest
        encode = _CANONICAL_ENCODER.encode
        seq, prev = self._seq, self._mac
        sealed: list[dict[str, object]] = []
        lines: list[bytes] = []
        for given in records:
            record = {**_NULL_RECORD, **given}
            record.pop("mac", None)
            if not own:
                record.pop("chain", None)  # only the writer marks a restart
            seq += 1
            record["seq"] = seq
            record["prev"] = prev
            if record["ts"] is None:
                record["ts"] = format_ts(self._wall_clock())
            body = encode(record).encode("utf-8", _TOTAL)
            prev = hexdigest(body)
            lines.append(body[:-1] + _MAC_PREFIX + prev.encode() + _MAC_SUFFIX)
            record["mac"] = prev
            sealed.append(record)
        if not lines:
            return sealed
        data = b"".join(lines)
        try:
            _write_all(self._fd, data)
        except OSError:
            self._cut_back()
            raise
        self._end += len(data)
        self.bytes_written += len(data)
        self._unsynced.append(data)
        self._seq, self._mac = seq, prev
        self._pending += len(lines)
        now = self._clock()
        if self._pending_since is None:
            self._pending_since = now
        if self._pending >= self.flush_records or now - self._pending_since >= self.flush_seconds:
            # The records are written; a failed sync is raised by the next flush().
            with contextlib.suppress(OSError):
                self._flush_locked()
        return sealed

    def _cut_back(self) -> None:
        """Remove what a failed write left, so no torn line stays in the log."""
        try:
            os.ftruncate(self._fd, self._end)
        except OSError:
            self._inode = -1  # cannot: the next call reloads, sees the torn line and restarts

    def _write_restart(self, problem: str) -> None:
        if self._torn_tail:
            _write_all(self._fd, b"\n")  # a failure here leaves it as it was
            self._end += 1
            self._torn_tail = False
        record = {
            "pid": os.getpid(),
            "kind": "tamper",
            "layer": "supervisor",
            "severity": "critical",
            "event": "audit_chain_restart",
            "chain": RESTART,
            "after_seq": self._seq,
            "reason": problem,
        }
        self._write_records((record,), own=True)
        self._restart_due = None

    def _catch_up(self, *, check_path: bool = False) -> None:
        """Notice other writers' appends and rotations, cheaply.

        Only a file that reached rotate_bytes can have been rotated, so while
        the open file is below that and its size is what this writer left, an
        fstat is all it takes.  `check_path` also notices a file replaced or
        removed by something other than rotation.
        """
        size = os.fstat(self._fd).st_size if self._inode != -1 else -1
        if size == self._end and size < self.rotate_bytes and not check_path:
            return
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._reload()
            return
        if info.st_ino != self._inode or info.st_size != self._end:
            self._reload()

    def _reload(self) -> None:
        """(Re)open the live file and take the chain's tail from disk, checking it."""
        try:
            info: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            info = None
        if info is None or info.st_ino != self._inode:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o600)
        info = os.fstat(self._fd)
        self._inode = info.st_ino
        self._end = info.st_size
        self._unsynced.clear()  # whatever this writer had unsynced is not contiguous any more
        self._unsynced_from = self._end
        problem: str | None = None
        try:
            head = read_head(self.head_path)
        except AuditError as exc:
            head, problem = None, f"{exc}"
        if head is not None:
            self._base = (head.base_seq, head.base_prev)
        tail = _scan_tail(self.path, self._mac_key)
        if not tail.lines:
            tail = _scan_tail(self.path.with_name(self.path.name + ".1"), self._mac_key)
        problem = problem or tail.problem
        seq, mac = tail.seq, tail.mac
        if head is None:
            if tail.lines and problem is None:
                problem = (
                    f"the head record {self.head_path} is missing or empty, "
                    f"but the log holds records up to seq {seq}"
                )
        elif head.seq > seq:
            problem = problem or (
                f"the log ends at seq {seq} but the head record says {head.seq}: records removed"
            )
            seq, mac = head.seq, head.mac  # the restart follows the last record known to exist
        elif head.seq == seq and head.seq > 0 and head.mac != mac:
            problem = problem or f"seq {seq} is not the record the head record names"
        self._seq, self._mac = seq, mac
        if problem is not None:
            self._restart_due = problem
        # A torn last line is ended before the restart record (a write, so
        # it waits for the next append rather than failing an open).
        self._torn_tail = tail.torn and self._end > 0

    def _flush_locked(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError:
            self._sync_failed = True
            raise
        self._sync_failed = False
        base_seq, base_prev = self._base
        head = HeadRecord(self._seq, self._mac, self.path.name, self._end, base_seq, base_prev)
        # No fsync of the head: it may lag after a crash (naming an older,
        # durable record), but it never names a record the log lacks.
        os.pwrite(self._head_fd, head.to_bytes(), 0)
        self._pending = 0
        self._pending_since = None
        self._unsynced.clear()
        self._unsynced_from = self._end

    def _rewrite_unsynced(self) -> None:
        """After a failed sync, write this writer's unsynced lines again.

        The kernel may have dropped the pages it could not write back while
        still showing them, so syncing again is not enough.  Only done while
        the lines are the file's contiguous tail (no other writer since);
        otherwise the next sync is all that can be done.
        """
        data = b"".join(self._unsynced)
        if not data or self._unsynced_from + len(data) != self._end:
            return
        if self._inode == -1 or os.fstat(self._fd).st_ino != self._inode:
            return
        os.ftruncate(self._fd, self._unsynced_from)
        try:
            _write_all(self._fd, data)
        except OSError:
            # Leave the file at the last good sync; the next attempt writes them again.
            os.ftruncate(self._fd, self._unsynced_from)
            raise

    def _rotate(self) -> None:
        os.fdatasync(self._fd)
        name = self.path.name
        rotated = [self.path.with_name(f"{name}.{n}") for n in range(1, self.keep_rotated + 1)]
        if rotated[-1].exists():
            # The oldest file goes; the retained chain now starts at the next oldest.
            next_oldest = rotated[-2] if len(rotated) > 1 else self.path
            self._base = _first_record(next_oldest) or self._base
            rotated[-1].unlink()
        for older, newer in zip(reversed(rotated[:-1]), reversed(rotated[1:]), strict=True):
            with contextlib.suppress(FileNotFoundError):
                os.replace(older, newer)
        os.replace(self.path, rotated[0])
        os.close(self._fd)
        # Until the new file is open, the next call must reopen (see _catch_up).
        self._fd, self._inode = -1, -1
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        self._inode = os.fstat(self._fd).st_ino
        self._end = 0
        self._unsynced.clear()
        self._unsynced_from = 0
        self._flush_locked()
