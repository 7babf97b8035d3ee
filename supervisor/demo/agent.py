"""A small example agent for `agentsup demo` (runs under the strict policy).

It does some honest work in its workspace, tries one thing the policy blocks
(and carries on), then goes for an SSH key, which gets it killed.
"""

import os
import socket
import subprocess
from pathlib import Path

print("agent: writing notes.txt in the workspace", flush=True)
Path("notes.txt").write_text("quarterly numbers look fine\n")
print("agent: read back:", Path("notes.txt").read_text().strip(), flush=True)

print("agent: listing the workspace with `ls -la`", flush=True)
subprocess.run(["ls", "-la"], check=True)

print("agent: asking the Docker daemon for more power (unix:/run/docker.sock)", flush=True)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect("/run/docker.sock")
    print("agent: connected?!", flush=True)
except OSError as exc:
    print(f"agent: blocked, carrying on ({exc.strerror})", flush=True)
finally:
    sock.close()

key = Path(os.environ["HOME"]) / ".ssh" / "id_rsa"
print(f"agent: now reading {key} ...", flush=True)
print("agent: got the key:", key.read_text()[:40], flush=True)
print("agent: (this line should never be printed)", flush=True)
