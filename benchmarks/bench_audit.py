"""Audit log throughput: appends per second, and time to verify 1,000,000 records.

    python benchmarks/bench_audit.py [--records N] [--appends N]

Appends run with the real durability policy: fdatasync of the log and a head
update every 256 records (or 200 ms).  "single" is one `append` per record,
as a loop that logs each decision at once would do; "batched" hands each
iteration's records to `append_many` (one lock, one write).  The verify
figure includes reading the rotated files from disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from agentsup.integrity.audit import AuditLog, load_key, read_head, verify_log

SAMPLE = {
    "agent": "analyst-1",
    "pid": 4242,
    "kind": "decision",
    "action_type": "file_read",
    "target": "/home/user/workspace/data/input-0001.csv",
    "decision": "allow",
    "rule": "workspace-rw",
    "severity": "low",
    "layer": "seccomp",
    "response": "allow",
    "syscall": "openat",
}


def _open(root: Path) -> AuditLog:
    return AuditLog(
        root / "log" / "audit.jsonl", root / "state" / "audit.key", root / "state" / "audit.head"
    )


def bench_appends(count: int, batch: int) -> float:
    """Records per second, flush policy included."""
    with tempfile.TemporaryDirectory() as tmp:
        log = _open(Path(tmp))
        start = time.perf_counter()
        if batch == 1:
            for _ in range(count):
                log.append(SAMPLE)
        else:
            records = [SAMPLE] * batch
            for _ in range(count // batch):
                log.append_many(records)
        log.close()
        return count / (time.perf_counter() - start)


def bench_verify(count: int) -> tuple[float, float, int]:
    """(seconds to write, seconds to verify, records verified) for a fresh log."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        log = _open(root)
        start = time.perf_counter()
        records = [SAMPLE] * 1000
        for _ in range(count // 1000):
            log.append_many(records)
        log.close()
        written = time.perf_counter() - start
        key = load_key(root / "state" / "audit.key")
        head = read_head(root / "state" / "audit.head")
        start = time.perf_counter()
        result = verify_log(root / "log" / "audit.jsonl", key, head)
        verified = time.perf_counter() - start
        if not result.ok:
            raise SystemExit(f"verify failed on an untouched log: {result}")
        return written, verified, result.records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    single = bench_appends(args.appends, batch=1)
    print(f"append, single:      {single:>9,.0f} records/s (fsync + head every 256)")
    batched = bench_appends(args.appends, batch=64)
    print(f"append_many, 64/call:{batched:>9,.0f} records/s (fsync + head every 256)")
    written, verified, records = bench_verify(args.records)
    print(f"wrote {records:,} records in {written:.1f} s")
    print(f"verify_log:          {verified:.2f} s for {records:,} records", end="")
    print(f" ({verified / records * 1e6:.2f} us/record)")


if __name__ == "__main__":
    main()
