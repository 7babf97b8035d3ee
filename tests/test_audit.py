"""The HMAC-chained audit log: what the writer writes and what the verifier catches.

Each tamper test edits a real log on disk the way an attacker would and
checks that `verify_log` names the first bad seq.
"""

from __future__ import annotations

import hmac
import itertools
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentsup.cli.audit import format_verify
from agentsup.integrity.audit import (
    HEAD_SIZE,
    ZERO_MAC,
    AuditKeyError,
    AuditLog,
    ChainVerifier,
    HeadRecord,
    MacKey,
    canonical_json,
    chain_files,
    classify,
    format_ts,
    load_key,
    load_or_create_key,
    read_head,
    seal_line,
    summarize,
    verify_log,
)
from agentsup.paths import Locations

RFC3339_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class Paths:
    def __init__(self, root: Path) -> None:
        self.log = root / "log" / "audit.jsonl"
        self.key = root / "state" / "audit.key"
        self.head = root / "state" / "audit.head"

    def open(self, **options: Any) -> AuditLog:
        return AuditLog(self.log, self.key, self.head, **options)

    def verify(self, *, use_head: bool = True) -> tuple[bool, int | None, str]:
        head = read_head(self.head) if use_head else None
        result = verify_log(self.log, load_key(self.key), head)
        return result.ok, result.first_bad_seq, result.reason

    def lines(self) -> list[bytes]:
        return self.log.read_bytes().splitlines(keepends=True)

    def write_lines(self, lines: list[bytes]) -> None:
        self.log.write_bytes(b"".join(lines))


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path)


def decision(n: int, agent: str = "analyst-1") -> dict[str, object]:
    return {
        "agent": agent,
        "pid": 1000 + n,
        "kind": "decision",
        "action_type": "file_read",
        "target": f"/work/data/file-{n}.csv",
        "decision": "allow",
        "rule": "workspace-rw",
        "severity": "low",
        "layer": "seccomp",
        "response": "allow",
    }


def write_log(paths: Paths, count: int, **options: Any) -> None:
    with paths.open(**options) as log:
        for n in range(1, count + 1):
            log.append(decision(n))


def reseal(line: bytes, key: bytes, **changes: object) -> bytes:
    """A record re-signed with `key`: what a forger with a guessed key writes."""
    record = json.loads(line)
    record.pop("mac")
    record.update(changes)
    body = canonical_json(record)
    return seal_line(body, hmac.new(key, body, "sha256").hexdigest())


# ------------------------------------------------------------------ the writer


def test_append_fills_seq_ts_required_keys_prev_and_mac(paths: Paths) -> None:
    with paths.open() as log:
        first = log.append({"agent": "a1", "kind": "lifecycle", "message": "started"})
        second = log.append(decision(2))
    assert first["seq"] == 1 and second["seq"] == 2
    assert first["prev"] == ZERO_MAC
    assert second["prev"] == first["mac"]
    assert isinstance(first["ts"], str) and RFC3339_MICROS.match(first["ts"])
    for name in ("pid", "action_type", "target", "decision", "rule", "severity", "layer"):
        assert name in first and first[name] is None
    assert first["message"] == "started"  # extra keys are kept


def test_mac_is_hmac_sha256_of_the_canonical_record_without_mac(paths: Paths) -> None:
    with paths.open() as log:
        written = log.append({"agent": "ünïcode", "kind": "policy", "target": "/tmp/x y"})
    line = paths.lines()[0]
    record = json.loads(line)
    assert record == written
    mac = record.pop("mac")
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert mac == hmac.new(load_key(paths.key), body, "sha256").hexdigest()


def test_given_ts_is_kept_and_caller_cannot_set_seq_prev_or_mac(paths: Paths) -> None:
    with paths.open() as log:
        record = log.append(
            {"ts": "2026-01-01T00:00:00.000000Z", "seq": 99, "prev": "x", "mac": "y"}
        )
    assert record["ts"] == "2026-01-01T00:00:00.000000Z"
    assert record["seq"] == 1 and record["prev"] == ZERO_MAC and record["mac"] != "y"
    assert paths.verify() == (True, None, "chain intact")


def test_format_ts_is_rfc3339_utc_with_microseconds() -> None:
    assert format_ts(1_795_000_000.25) == "2026-11-18T11:06:40.250000Z"
    assert format_ts(0.000001) == "1970-01-01T00:00:00.000001Z"


def test_mac_key_matches_hmac_new_for_short_empty_and_long_keys() -> None:
    for key in (b"", b"default-secret", os.urandom(32), os.urandom(100)):
        for message in (b"", b"{}", os.urandom(1000)):
            assert MacKey(key).hexdigest(message) == hmac.new(key, message, "sha256").hexdigest()


def test_a_reopened_log_continues_the_chain(paths: Paths) -> None:
    write_log(paths, 3)
    with paths.open() as log:
        assert log.last_seq == 3
        assert log.append(decision(4))["seq"] == 4
    assert paths.verify() == (True, None, "chain intact")


def test_a_lone_surrogate_is_written_as_its_json_escape_and_verifies(paths: Paths) -> None:
    """Text no UTF-8 encoder takes (a lone surrogate an agent sent in a hook
    frame) made the writer raise UnicodeEncodeError, and the supervisor died.
    Now it is written as its JSON escape, which reads back as the same text,
    and the chain verifies: on the bytes written, and laid out again."""
    odd = {"target": "GET http://\ud800/", "detail": "\udfff", "\udc80key": ["x\udcff"]}
    with paths.open() as log:
        log.append(decision(1))
        sealed = log.append({**decision(2), **odd})
        log.append(decision(3))
    assert sealed["target"] == "GET http://\ud800/"
    line = paths.lines()[1]
    assert b'"GET http://\\ud800/"' in line and b'"\\udc80key":["x\\udcff"]' in line
    record = json.loads(line)
    assert {key: record[key] for key in odd} == odd
    assert paths.verify() == (True, None, "chain intact")
    # The verifier's other path: a line in another layout is parsed and the
    # canonical bytes rebuilt, escapes and all.
    lines = paths.lines()
    lines[1] = json.dumps(dict(reversed(record.items()))).encode() + b"\n"
    paths.write_lines(lines)
    assert paths.verify() == (True, None, "chain intact")


def test_append_many_writes_a_chain_in_one_batch(paths: Paths) -> None:
    with paths.open() as log:
        records = log.append_many(decision(n) for n in range(5))
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert len(paths.lines()) == 5
    assert paths.verify()[0]


# ------------------------------------------------------------------- the key


def test_key_is_32_random_bytes_mode_0400_owned_by_us_and_reused(paths: Paths) -> None:
    key = load_or_create_key(paths.key)
    info = paths.key.stat()
    assert len(key) == 32
    assert stat.S_IMODE(info.st_mode) == 0o400
    assert info.st_uid == os.geteuid()
    assert stat.S_IMODE(paths.key.parent.stat().st_mode) == 0o700
    assert load_or_create_key(paths.key) == key


def test_key_never_appears_in_the_log_or_the_writer_repr(paths: Paths) -> None:
    with paths.open() as log:
        log.append(decision(1))
        text = repr(log) + repr(log._mac_key)
    key = load_key(paths.key)
    assert key.hex() not in paths.log.read_text() + text


def test_a_key_readable_by_others_is_refused(paths: Paths) -> None:
    load_or_create_key(paths.key)
    paths.key.chmod(0o644)
    with pytest.raises(AuditKeyError, match="group or others"):
        load_key(paths.key)


def test_a_missing_key_is_a_clear_error(paths: Paths) -> None:
    with pytest.raises(AuditKeyError, match="no audit key"):
        load_key(paths.key)


# ---------------------------------------------------------- head and flushing


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_head_names_the_last_record_after_flush(paths: Paths) -> None:
    with paths.open() as log:
        log.append(decision(1))
        last = log.append(decision(2))
        log.flush()
        assert log.pending == 0
    head = read_head(paths.head)
    assert head == HeadRecord(2, str(last["mac"]), "audit.jsonl", paths.log.stat().st_size)
    assert paths.head.stat().st_size == HEAD_SIZE
    assert stat.S_IMODE(paths.head.stat().st_mode) == 0o600


def test_flush_happens_by_itself_after_256_records_or_200_ms(paths: Paths) -> None:
    clock = FakeClock()
    log = paths.open(clock=clock)
    for n in range(255):
        log.append(decision(n))
    head = read_head(paths.head)
    assert log.pending == 255 and head is not None and head.seq == 0  # the head made at open
    log.append(decision(256))
    assert log.pending == 0 and read_head(paths.head) == read_head(paths.head)
    head = read_head(paths.head)
    assert head is not None and head.seq == 256

    log.append(decision(257))
    assert log.flush_due_in() == pytest.approx(0.2)
    clock.now += 0.25
    assert log.flush_due_in() == 0.0
    log.append(decision(258))  # more than 200 ms pending: this append flushes
    head = read_head(paths.head)
    assert log.pending == 0 and head is not None and head.seq == 258
    log.close()


def test_closing_flushes(paths: Paths) -> None:
    log = paths.open()
    log.append(decision(1))
    log.close()
    head = read_head(paths.head)
    assert head is not None and head.seq == 1


# ------------------------------------------------------------------- tampering


N = 100


def test_an_untouched_log_verifies(paths: Paths) -> None:
    write_log(paths, N)
    assert paths.verify() == (True, None, "chain intact")
    result = verify_log(paths.log, load_key(paths.key), read_head(paths.head))
    assert result.records == N


def test_one_edited_byte_in_a_middle_record_names_that_record(paths: Paths) -> None:
    write_log(paths, N)
    lines = paths.lines()
    lines[49] = lines[49].replace(b"file-50.csv", b"file-51.csv")
    paths.write_lines(lines)
    ok, bad, reason = paths.verify()
    assert (ok, bad) == (False, 50)
    assert "mac mismatch" in reason


def test_an_edited_seq_is_caught_by_the_mac(paths: Paths) -> None:
    write_log(paths, N)
    lines = paths.lines()
    lines[49] = lines[49].replace(b'"seq":50,', b'"seq":51,')
    paths.write_lines(lines)
    assert paths.verify()[:2] == (False, 50)


def test_a_deleted_middle_record_names_the_missing_seq(paths: Paths) -> None:
    write_log(paths, N)
    lines = paths.lines()
    del lines[49]
    paths.write_lines(lines)
    ok, bad, reason = paths.verify()
    assert (ok, bad) == (False, 50)
    assert "expected seq 50, found seq 51" in reason


def test_two_swapped_records_name_the_first_of_them(paths: Paths) -> None:
    write_log(paths, N)
    lines = paths.lines()
    lines[49], lines[50] = lines[50], lines[49]
    paths.write_lines(lines)
    assert paths.verify()[:2] == (False, 50)


def test_a_removed_last_record_is_caught_by_the_head(paths: Paths) -> None:
    write_log(paths, N)
    paths.write_lines(paths.lines()[:-1])
    ok, bad, reason = paths.verify()
    assert (ok, bad) == (False, N)
    assert "head record says 100" in reason


def test_without_the_head_a_removed_tail_looks_like_a_shorter_log(paths: Paths) -> None:
    # This is why the head record exists, outside the log.
    write_log(paths, N)
    paths.write_lines(paths.lines()[:-1])
    assert paths.verify(use_head=False) == (True, None, "chain intact")


def test_a_tail_truncated_mid_line_names_the_torn_record(paths: Paths) -> None:
    write_log(paths, N)
    data = paths.log.read_bytes()
    paths.log.write_bytes(data[:-40])
    ok, bad, reason = paths.verify()
    assert (ok, bad) == (False, N)
    assert "partial last line" in reason


@pytest.mark.parametrize("guessed_key", [b"", b"default-secret"])
def test_a_record_forged_with_a_guessed_key_is_caught(paths: Paths, guessed_key: bytes) -> None:
    write_log(paths, N)
    lines = paths.lines()
    lines[49] = reseal(lines[49], guessed_key, target="/etc/shadow")
    paths.write_lines(lines)
    assert paths.verify()[:2] == (False, 50)


@pytest.mark.parametrize("guessed_key", [b"", b"default-secret"])
def test_a_forged_record_appended_after_the_last_is_caught(
    paths: Paths, guessed_key: bytes
) -> None:
    write_log(paths, N)
    lines = paths.lines()
    last = json.loads(lines[-1])
    lines.append(reseal(lines[-1], guessed_key, seq=N + 1, prev=last["mac"]))
    paths.write_lines(lines)
    assert paths.verify()[:2] == (False, N + 1)


def test_an_inserted_forged_record_names_its_position(paths: Paths) -> None:
    write_log(paths, N)
    lines = paths.lines()
    prev = json.loads(lines[49])["mac"]
    lines.insert(50, reseal(lines[49], b"default-secret", seq=51, prev=prev))
    paths.write_lines(lines)
    assert paths.verify()[:2] == (False, 51)


def test_a_replayed_genuine_record_is_caught(paths: Paths) -> None:
    write_log(paths, N)
    lines = paths.lines()
    lines.insert(50, lines[9])  # a valid record, in the wrong place
    paths.write_lines(lines)
    ok, bad, reason = paths.verify()
    assert (ok, bad) == (False, 51)
    assert "found seq 10" in reason


def test_a_deleted_first_record_names_seq_1(paths: Paths) -> None:
    write_log(paths, N)
    paths.write_lines(paths.lines()[1:])
    assert paths.verify()[:2] == (False, 1)


def test_a_record_in_another_layout_verifies_by_parsing(paths: Paths) -> None:
    # Another writer may order keys differently; the mac still decides.
    write_log(paths, 3)
    lines = paths.lines()
    record = json.loads(lines[1])
    lines[1] = json.dumps(dict(reversed(record.items()))).encode() + b"\n"
    paths.write_lines(lines)
    assert paths.verify() == (True, None, "chain intact")


def test_the_writer_resumes_after_the_head_when_the_tail_was_removed(paths: Paths) -> None:
    write_log(paths, 10)
    paths.write_lines(paths.lines()[:-2])
    with paths.open() as log:
        # Not 9: the gap stays, and a restart record (seq 11) says why.
        assert log.append(decision(11))["seq"] == 12
    assert paths.verify()[:2] == (False, 9)


def test_a_torn_line_is_ended_before_new_records_and_stays_visible(paths: Paths) -> None:
    write_log(paths, 10)
    paths.log.write_bytes(paths.log.read_bytes()[:-40])
    with paths.open() as log:
        log.append(decision(11))
    lines = paths.lines()
    assert json.loads(lines[-2])["chain"] == "restart"
    assert json.loads(lines[-1])["seq"] == 12
    assert paths.verify()[:2] == (False, 10)


def test_chain_verifier_needs_no_files() -> None:
    key = b"k" * 32
    verifier = ChainVerifier(key)
    prev = ZERO_MAC
    for seq in (1, 2):
        body = canonical_json({"seq": seq, "prev": prev, "kind": "policy"})
        prev = hmac.new(key, body, "sha256").hexdigest()
        assert verifier.feed(seal_line(body, prev))
    assert verifier.finish().ok and verifier.records == 2
    assert not verifier.feed(b"not json\n")
    assert verifier.finish().first_bad_seq == 3


# -------------------------------------------------------------------- rotation


def test_rotation_keeps_one_chain_across_files(paths: Paths) -> None:
    write_log(paths, 60, rotate_bytes=2000)
    files = chain_files(paths.log)
    assert len(files) > 3 and files[-1] == paths.log
    assert files[-2].name == "audit.jsonl.1"
    older_last = json.loads(files[-2].read_bytes().splitlines()[-1])
    live_first = json.loads(paths.lines()[0])
    assert live_first["prev"] == older_last["mac"]
    assert live_first["seq"] == older_last["seq"] + 1
    assert paths.verify() == (True, None, "chain intact")


def test_tampering_in_a_rotated_file_is_found_there(paths: Paths) -> None:
    write_log(paths, 60, rotate_bytes=2000)
    oldest = chain_files(paths.log)[0]
    lines = oldest.read_bytes().splitlines(keepends=True)
    victim = json.loads(lines[1])["seq"]
    del lines[1]
    oldest.write_bytes(b"".join(lines))
    result = verify_log(paths.log, load_key(paths.key), read_head(paths.head))
    assert (result.ok, result.first_bad_seq) == (False, victim)
    assert result.where == f"{oldest.name} line 2"


def test_dropping_the_oldest_file_on_rotation_is_not_tampering(paths: Paths) -> None:
    write_log(paths, 100, rotate_bytes=2000, keep_rotated=2)
    files = chain_files(paths.log)
    assert [f.name for f in files] == ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    assert paths.verify() == (True, None, "chain intact")
    head = read_head(paths.head)
    assert head is not None and head.base_seq > 1
    # `verify` says where the kept chain starts, and what rotation dropped.
    result = verify_log(paths.log, load_key(paths.key), head)
    assert result.first_seq == head.base_seq
    assert format_verify(result, head=True) == (
        f"ok: {result.records} records, chain intact from seq {head.base_seq} "
        f"(rotation dropped the {head.base_seq - 1} earlier records)"
    )


def test_deleting_a_rotated_file_is_tampering(paths: Paths) -> None:
    write_log(paths, 100, rotate_bytes=2000, keep_rotated=3)
    oldest = chain_files(paths.log)[0]
    first_seq = json.loads(oldest.read_bytes().splitlines()[0])["seq"]
    oldest.unlink()
    assert paths.verify()[:2] == (False, first_seq)


# ----------------------------------------------------------------- concurrency

_WRITER = """
import sys, time
from pathlib import Path
from agentsup.integrity.audit import AuditLog
name, log_path, key, head, count, rotate_bytes, barrier = sys.argv[1:8]
paths = Path(log_path), Path(key), Path(head)
with AuditLog(*paths, rotate_bytes=int(rotate_bytes), keep_rotated=100) as log:
    Path(barrier, name).touch()
    while not Path(barrier, "go").exists():
        time.sleep(0.001)
    for n in range(int(count)):
        log.append({"agent": name, "kind": "decision", "target": "x" * (n % 50), "n": n})
"""


@pytest.mark.parametrize("rotate_bytes", [64 * 2**20, 100_000], ids=["one-file", "rotating"])
def test_two_processes_appending_at_once_make_one_valid_chain(
    paths: Paths, tmp_path: Path, rotate_bytes: int
) -> None:
    count = 3000
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    args = [paths.log, paths.key, paths.head, count, rotate_bytes, barrier]
    names = ("writer-a", "writer-b")
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, name, *map(str, args)]) for name in names
    ]
    while not all((barrier / name).exists() for name in names):
        assert all(w.poll() is None for w in writers)
        time.sleep(0.005)
    (barrier / "go").touch()
    assert [w.wait(timeout=120) for w in writers] == [0, 0]

    # Every line parses (none torn or interleaved), seq has no gap or repeat,
    # and the chain with its head verifies.
    lines = [line for file in chain_files(paths.log) for line in file.read_bytes().splitlines()]
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == list(range(1, 2 * count + 1))
    assert paths.verify() == (True, None, "chain intact")
    head = read_head(paths.head)
    assert head is not None and head.seq == 2 * count
    # The writers really did take turns, so the lock was exercised.
    agents = [r["agent"] for r in records]
    switches = sum(1 for a, b in itertools.pairwise(agents) if a != b)
    assert switches > 10
    if rotate_bytes < 2**20:
        assert len(chain_files(paths.log)) > 3


def test_open_uses_the_configured_locations(tmp_path: Path) -> None:
    locations = Locations(tmp_path / "p", tmp_path / "log" / "a.jsonl", tmp_path / "s", tmp_path)
    with AuditLog.open(locations) as log:
        log.append(decision(1))
    assert locations.audit_log.exists() and locations.audit_key.exists()
    assert read_head(locations.audit_head) is not None


# ---------------------------------------------------------------------- report


def test_classify_counts_each_kind_of_record() -> None:
    assert classify({"kind": "decision", "decision": "allow", "response": "allow"}) == "allowed"
    assert classify({"kind": "decision", "decision": "deny", "response": "log"}) == "allowed"
    assert classify({"kind": "decision", "decision": "deny", "response": "block"}) == "denied"
    assert classify({"kind": "decision", "decision": "deny", "response": "kill"}) == "denied"
    assert classify({"kind": "decision", "decision": "deny"}) == "denied"
    assert (
        classify({"kind": "decision", "decision": "require_approval", "response": "hold"}) is None
    )
    assert classify({"kind": "approval", "outcome": "approved"}) == "approved"
    assert classify({"kind": "approval", "outcome": "approved", "decision": "allow"}) == "approved"
    resumed_violation = {"kind": "approval", "outcome": "approved", "decision": "deny"}
    assert classify(resumed_violation) is None
    assert classify({"kind": "approval", "outcome": "timeout"}) == "denied"
    assert classify({"kind": "signal", "signal": "SIGKILL"}) == "killed"
    assert classify({"kind": "signal", "signal": "SIGSTOP"}) is None
    assert classify({"kind": "lifecycle"}) is None


def test_summarize_breaks_counts_down_by_rule_and_action_type() -> None:
    records: list[dict[str, object]] = [
        {"kind": "decision", "agent": "a", "rule": "r1", "action_type": "file_read",
         "response": "allow"},
        {"kind": "decision", "agent": "a", "rule": "r2", "action_type": "shell_execute",
         "response": "kill"},
        {"kind": "signal", "agent": "a", "rule": "r2", "action_type": "shell_execute",
         "signal": "SIGKILL"},
        {"kind": "decision", "agent": "b", "rule": None, "action_type": "file_read",
         "response": "block"},
    ]  # fmt: skip
    reports = summarize(records)
    assert list(reports) == ["a", "b"]
    a = reports["a"].to_json()
    assert (a["allowed"], a["denied"], a["approved"], a["killed"]) == (1, 1, 0, 1)
    assert a["by_rule"] == {
        "r1": {"allowed": 1, "denied": 0, "approved": 0, "killed": 0},
        "r2": {"allowed": 0, "denied": 1, "approved": 0, "killed": 1},
    }
    assert reports["b"].to_json()["by_rule"] == {
        "-": {"allowed": 0, "denied": 1, "approved": 0, "killed": 0}
    }
