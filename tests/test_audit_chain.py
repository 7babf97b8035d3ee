"""The writer checks the chain's tail before extending it, and the verifier
resumes at the writer's restart record (issue 11), and bad lines never
raise (issue 14).

Tampering ends the chain's good run; the writer then starts a new segment
with a `tamper` record saying what it found.  `verify_log` still fails, names
the first bad seq, and says the chain is intact again from the restart on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import test_audit

from agentsup.integrity.audit import (
    AuditError,
    ChainVerifier,
    HeadRecord,
    RecordReader,
    VerifyResult,
    canonical_json,
    load_key,
    read_head,
    seal_line,
    verify_log,
)

DEEP = b"[" * 100_000 + b"\n"


class Paths(test_audit.Paths):
    def write(self, count: int, **options: Any) -> None:
        with self.open(**options) as log:
            for n in range(1, count + 1):
                log.append({"agent": "a", "kind": "decision", "target": f"/w/{n}"})

    def result(self, *, use_head: bool = True) -> VerifyResult:
        head = read_head(self.head) if use_head else None
        return verify_log(self.log, load_key(self.key), head)

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.lines():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue
            found.append(record)
        return found

    def append_raw(self, data: bytes) -> None:
        with open(self.log, "ab") as file:
            file.write(data)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(tmp_path)


def forged(seq: int, prev: str) -> bytes:
    body = canonical_json({"seq": seq, "prev": prev, "kind": "decision", "target": "forged"})
    return seal_line(body, "f" * 64)


def restarts(paths: Paths) -> list[dict[str, Any]]:
    return [r for r in paths.records() if r.get("chain") == "restart"]


# ------------------------------------------------------------ the writer's check


def test_an_intact_tail_is_extended_without_a_restart(paths: Paths) -> None:
    paths.write(5)
    paths.write(1)
    assert restarts(paths) == []
    assert paths.result().ok


def test_a_forged_last_line_starts_a_new_segment(paths: Paths) -> None:
    paths.write(10)
    last = paths.records()[-1]
    paths.append_raw(forged(11, last["mac"]))
    paths.write(1)
    restart = restarts(paths)
    assert len(restart) == 1
    assert restart[0]["kind"] == "tamper" and restart[0]["severity"] == "critical"
    assert restart[0]["seq"] == 11 and restart[0]["after_seq"] == 10
    assert "mac" in restart[0]["reason"]
    assert paths.records()[-1]["seq"] == 12

    result = paths.result()
    assert (result.ok, result.first_bad_seq) == (False, 11)
    assert result.where == "audit.jsonl line 11"
    assert len(result.breaks) == 1 and result.breaks[0].resumed_at == 11
    assert result.records == 12  # 10 before, the restart and the new record after


def test_garbage_appended_to_the_log_starts_a_new_segment(paths: Paths) -> None:
    paths.write(3)
    paths.append_raw(b"hello, I was never a record\n")
    paths.write(2)
    assert [r["seq"] for r in restarts(paths)] == [4]
    assert "not valid JSON" in restarts(paths)[0]["reason"]
    result = paths.result()
    assert (result.ok, result.first_bad_seq, result.breaks[0].resumed_at) == (False, 4, 4)
    assert result.records == 3 + 1 + 2


def test_an_edited_last_record_starts_a_new_segment(paths: Paths) -> None:
    paths.write(4)
    lines = paths.lines()
    lines[-1] = lines[-1].replace(b"/w/4", b"/w/X")
    paths.log.write_bytes(b"".join(lines))
    paths.write(1)
    assert [r["seq"] for r in restarts(paths)] == [5]
    result = paths.result()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert result.breaks[0].resumed_at == 5


def test_a_removed_tail_restarts_after_the_head(paths: Paths) -> None:
    paths.write(10)
    paths.log.write_bytes(b"".join(paths.lines()[:-2]))
    paths.write(1)
    (restart,) = restarts(paths)
    assert restart["seq"] == 11 and "head record says 10" in restart["reason"]
    result = paths.result()
    assert (result.ok, result.first_bad_seq, result.breaks[0].resumed_at) == (False, 9, 11)


def test_a_missing_head_with_records_starts_a_new_segment(paths: Paths) -> None:
    paths.write(3)
    paths.head.unlink()
    paths.write(1)
    (restart,) = restarts(paths)
    assert restart["seq"] == 4 and "head record" in restart["reason"]
    # The restart chains on from seq 3, but a restart is always reported.
    result = paths.result()
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "restarted the chain" in result.reason


def test_a_fresh_log_has_a_head_before_its_first_flush(paths: Paths) -> None:
    with paths.open() as log:
        assert read_head(paths.head) == HeadRecord(0, "0" * 64, "audit.jsonl", 0)
        log.append({"kind": "policy"})
    with paths.open() as log:
        log.append({"kind": "policy"})
    assert restarts(paths) == [] and paths.result().ok


def test_a_second_writer_before_the_first_flushes_sees_no_tamper(paths: Paths) -> None:
    with paths.open() as first:
        first.append({"kind": "policy"})
        with paths.open() as second:
            second.append({"kind": "policy"})
    assert restarts(paths) == [] and paths.result().ok


def test_a_restart_that_cannot_be_written_is_written_with_the_next_record(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths.write(2)
    paths.append_raw(b"junk\n")
    log = paths.open()
    real_write = __import__("os").write
    failures = iter([OSError(28, "No space left on device")])

    def write(fd: int, data: bytes) -> int:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_write(fd, data)

    monkeypatch.setattr("agentsup.integrity.audit.os.write", write)
    with pytest.raises(OSError):
        log.append({"kind": "policy"})
    log.append({"kind": "policy"})
    log.close()
    assert [r["seq"] for r in restarts(paths)] == [3]
    assert paths.result().breaks[0].resumed_at == 3


# ------------------------------------------------------------- the verifier


def test_a_restart_after_the_break_resumes_only_if_genuine(paths: Paths) -> None:
    paths.write(3)
    paths.append_raw(b"junk\n")
    body = canonical_json({"seq": 9, "prev": "0" * 64, "kind": "tamper", "chain": "restart"})
    paths.append_raw(seal_line(body, "a" * 64))  # a forged restart
    result = paths.result(use_head=False)
    assert not result.ok and result.breaks[0].resumed_at is None
    assert result.unchecked == 1


def test_breaks_after_a_restart_are_each_reported(paths: Paths) -> None:
    paths.write(2)
    paths.append_raw(b"junk\n")
    paths.write(2)
    paths.append_raw(b"more junk\n")
    paths.write(1)
    result = paths.result()
    assert [(b.seq, b.resumed_at) for b in result.breaks] == [(3, 3), (6, 6)]


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_deeply_nested_line_is_a_bad_record_not_a_crash(paths: Paths, where: str) -> None:
    paths.write(3)
    lines = paths.lines()
    position = 1 if where == "middle" else len(lines)
    lines.insert(position, DEEP)
    paths.log.write_bytes(b"".join(lines))
    result = paths.result()
    assert not result.ok
    assert result.first_bad_seq == position + 1
    assert result.where == f"audit.jsonl line {position + 1}"
    assert "nested too deeply" in result.reason


def test_the_writer_survives_a_deeply_nested_last_line(paths: Paths) -> None:
    paths.write(2)
    paths.append_raw(DEEP)
    paths.write(1)
    (restart,) = restarts(paths)
    assert "nested too deeply" in restart["reason"]


def test_the_chain_verifier_reports_the_line_number() -> None:
    verifier = ChainVerifier(b"k" * 32)
    verifier.start_file("x.jsonl")
    assert not verifier.feed(DEEP)
    result = verifier.finish()
    assert (result.first_bad_seq, result.where) == (1, "x.jsonl line 1")


def test_a_deeply_nested_head_record_is_an_audit_error(paths: Paths) -> None:
    paths.head.parent.mkdir(parents=True)
    paths.head.write_bytes(b"[" * 1000 + b"]" * 1000)
    with pytest.raises(AuditError):
        read_head(paths.head)


# ---------------------------------------------------------------- the readers


def test_the_reader_counts_the_lines_it_skips(paths: Paths) -> None:
    paths.write(2)
    paths.append_raw(DEEP + b"not json\n[1, 2]\n")
    paths.write(1)
    reader = RecordReader(paths.log)
    records = list(reader)
    # 3 records, the writer's restart, and 3 lines that are not records.
    assert len(records) == 4 and reader.skipped == 3
    assert reader.first_skipped == "audit.jsonl line 3"


def test_callers_cannot_mark_a_restart(paths: Paths) -> None:
    # Only the writer may start a segment; a record asking to is written plainly.
    with paths.open() as log:
        written = log.append({"kind": "tamper", "chain": "restart", "after_seq": 0})
    assert "chain" not in written and restarts(paths) == []
    assert paths.result().ok
