"""Agent for the hook tests: environment reads and writes."""

import os

for label, read in (
    ("environ.get", lambda: os.environ.get("HOME")),
    ("getenv", lambda: os.getenv("HOME")),
    ("getitem", lambda: os.environ["HOME"]),
    ("contains", lambda: "HOME" in os.environ),
):
    try:
        read()
        print(label, "allowed")
    except PermissionError as exc:
        print(label, "denied:", exc)

print("LANG read", os.environ.get("LANG", "<unset>") is not None)
os.environ["AGENT_SET"] = "1"
os.putenv("AGENT_PUT", "1")
try:
    del os.environ["AGENTSUP_HOOK_SOCKET"]
    print("hook variable deleted")
except PermissionError as exc:
    print("hook variable kept:", exc)
