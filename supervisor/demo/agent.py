"""A small example agent for `agentsup demo` (runs under the strict policy).

It does some honest work in its workspace, tries one thing the policy blocks
(a key file in the workspace: refused with no signal, and it carries on),
then goes for an SSH key, which gets it killed.
"""

import os
import subprocess
from pathlib import Path

print("agent: writing notes.txt in the workspace", flush=True)
Path("notes.txt").write_text("quarterly numbers look fine\n")
print("agent: read back:", Path("notes.txt").read_text().strip(), flush=True)

print("agent: listing the workspace with `ls -la`", flush=True)
subprocess.run(["ls", "-la"], check=True)

print("agent: reading the TLS key committed in the workspace (server.key)", flush=True)
try:
    Path("server.key").read_text()
    print("agent: read it?!", flush=True)
except OSError as exc:
    print(f"agent: blocked, carrying on ({exc.strerror})", flush=True)

key = Path(os.environ["HOME"]) / ".ssh" / "id_rsa"
print(f"agent: now reading {key} ...", flush=True)
print("agent: got the key:", key.read_text()[:40], flush=True)
print("agent: (this line should never be printed)", flush=True)
