#!/usr/bin/env python3
"""What the egress proxy costs: latency per request and throughput, against direct.

    python benchmarks/bench_egress.py [--runs 5] [--requests 200] [--megabytes 64]

A plain HTTP server on 127.0.0.2 (the host's loopback).  The same client
script runs bare, straight to the server, and under `agentsup run`, where
its only way out is the proxy (the proxy variables are set for it; the test
host name maps to 127.0.0.2 through `AGENTSUP_EGRESS_HOSTS`).  Latency: one
small GET per connection, sequentially.  Throughput: one large GET.
Medians of alternating runs, in the same process.
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CLIENT = """
import sys, time, urllib.request
base, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
opener = urllib.request.build_opener()  # honours http_proxy when it is set
start = time.perf_counter()
for _ in range(count):
    with opener.open(base + "/small") as reply:
        reply.read()
latency = (time.perf_counter() - start) / count
start = time.perf_counter()
got = 0
with opener.open(base + "/large") as reply:
    while chunk := reply.read(1 << 20):
        got += len(chunk)
elapsed = time.perf_counter() - start
assert got == size, (got, size)
print(latency, got / elapsed)
"""

POLICY = """
name: egress-bench
extends: [strict]
rules:
  - id: bench-host
    actions: [network_request, network_connect]
    pattern: '^(GET http://bench\\.test:\\d+/.*|bench\\.test:\\d+)$'
    decision: allow
    priority: 5
"""


def serve(size: int) -> tuple[http.server.ThreadingHTTPServer, int]:
    block = b"x" * (1 << 20)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            length = size if self.path == "/large" else 2
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.path != "/large":
                self.wfile.write(b"ok")
                return
            left = length
            while left:
                piece = block[: min(left, len(block))]
                self.wfile.write(piece)
                left -= len(piece)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def run(command: list[str], env: dict[str, str], cwd: str) -> tuple[float, float]:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr}")
    latency, rate = done.stdout.split()[-2:]
    return float(latency), float(rate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--megabytes", type=int, default=64)
    args = parser.parse_args()
    size = args.megabytes << 20
    server, port = serve(size)
    base_dir = "/var/lib" if os.geteuid() == 0 else None
    with tempfile.TemporaryDirectory(prefix="agentsup-bench-", dir=base_dir) as root:
        workspace = Path(root) / "workspace"
        workspace.mkdir()
        (workspace / "client.py").write_text(CLIENT)
        locations = Path(root) / "agentsup"
        (locations / "policies").mkdir(parents=True)
        policy = locations / "policies" / "egress-bench.yaml"
        policy.write_text(POLICY)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update(
            AGENTSUP_POLICY_DIR=str(locations / "policies"),
            AGENTSUP_AUDIT_LOG=str(locations / "log" / "audit.jsonl"),
            AGENTSUP_STATE_DIR=str(locations / "state"),
            AGENTSUP_RUNTIME_DIR=str(locations / "run"),
            AGENTSUP_EGRESS_HOSTS="bench.test=127.0.0.2",
        )
        client = ["python3", "-S", "client.py"]
        numbers = [str(args.requests), str(size)]
        direct = [*client, f"http://127.0.0.2:{port}", *numbers]
        proxied = [
            *(sys.executable, "-m", "agentsup", "run", "--policy", str(policy), "--"),
            *client,
            f"http://bench.test:{port}",
            *numbers,
        ]
        bare: list[tuple[float, float]] = []
        supervised: list[tuple[float, float]] = []
        for _ in range(args.runs):
            bare.append(run(direct, env, str(workspace)))
            supervised.append(run(proxied, env, str(workspace)))
    server.shutdown()
    lb, ls = (statistics.median(r[0] for r in runs) for runs in (bare, supervised))
    tb, ts = (statistics.median(r[1] for r in runs) for runs in (bare, supervised))
    print(f"{args.runs} runs, {args.requests} requests each, one {args.megabytes} MiB download")
    print(
        f"latency    direct {lb * 1000:6.2f} ms   proxy {ls * 1000:6.2f} ms   "
        f"+{(ls - lb) * 1000:.2f} ms per request"
    )
    print(
        f"throughput direct {tb / 2**20:7.0f} MiB/s   proxy {ts / 2**20:7.0f} MiB/s   "
        f"{ts / tb:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
