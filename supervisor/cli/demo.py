"""`agentsup demo`: watch a small agent work, get blocked, and get killed."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FAKE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "ZmFrZSBrZXkgcGxhbnRlZCBieSBhZ2VudHN1cCBkZW1vIC0gbm90IGEgcmVhbCBrZXk=\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the example agent under the strict policy",
        description=(
            "Run a small example agent under the strict policy in a throw-away directory: "
            "it works in its workspace, is blocked once, then reads a planted fake SSH key "
            "and is killed. Shows the kill line and the audit records. Touches nothing "
            "outside the temporary directory."
        ),
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.set_defaults(func=_demo)


def _banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def _demo(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="agentsup-demo-"))
    try:
        return _show(root, args.keep)
    finally:
        if not args.keep:  # also when its reader went away (`agentsup demo | head`)
            subprocess.call(["rm", "-rf", str(root)])


def _show(root: Path, keep: bool) -> int:
    """The demo in `root`: the run, its audit records, their verification."""
    home = root / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(FAKE_KEY)
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "server.key").write_text("-----BEGIN PRIVATE KEY-----\nfake\n")
    (root / "policies").mkdir()
    env = dict(
        os.environ,
        HOME=str(home),
        AGENTSUP_POLICY_DIR=str(root / "policies"),
        AGENTSUP_AUDIT_LOG=str(root / "log" / "audit.jsonl"),
        AGENTSUP_STATE_DIR=str(root / "state"),
        AGENTSUP_RUNTIME_DIR=str(root / "run"),
    )
    # The agent's code lives in its workspace, as a real agent's would.
    agent = workspace / "agent.py"
    shutil.copy(Path(__file__).resolve().parent.parent / "demo" / "agent.py", agent)
    agentsup = [sys.executable, "-m", "agentsup"]
    command = [
        "run",
        "--policy",
        "strict",
        "--workspace",
        str(workspace),
        "--id",
        "demo",
        "--",
        str(agent),
    ]
    _banner("agentsup " + " ".join(command))
    code = subprocess.call(agentsup + command, env=env)
    print(f"exit status: {code} ({'killed by policy' if code == 137 else 'unexpected'})")
    _banner("agentsup audit show --agent demo")
    subprocess.call([*agentsup, "audit", "show", "--agent", "demo"], env=env)
    _banner("agentsup audit verify")
    verified = subprocess.call([*agentsup, "audit", "verify"], env=env)
    key_untouched = (home / ".ssh" / "id_rsa").read_text() == FAKE_KEY
    ok = code == 137 and verified == 0 and key_untouched
    if keep:
        print(f"\nkept {root}")
    print("\ndemo " + ("passed: the agent was stopped at the kernel boundary" if ok else "FAILED"))
    return 0 if ok else 1
