"""A repository that commits test certificates and keys is cloned, built and cleaned
under strict; the keys in it are never read, and reading one costs the agent
nothing but EACCES.

urllib3, requests and CPython commit TLS fixtures (`tests/certs/server.key`,
`cert.pem`).  strict kills any read of a key file in the home or the system;
inside the workspace such files are the repository's: written like any file
(a clone, a checkout, `openssl req -keyout` in a test), never read nor moved
away under another name, refused quietly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Sandbox

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

KEY = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def repository(sandbox: Sandbox) -> Path:
    """A repository with certificate and key fixtures, as TLS libraries have
    (in the workspace: the agent's /tmp is its own)."""
    origin = sandbox.workspace / "origin"
    certs = origin / "tests" / "certs"
    certs.mkdir(parents=True)
    (certs / "server.key").write_text(KEY)
    (certs / "cert.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    )
    (origin / "README").write_text("fixtures\n")
    git = ["git", "-C", str(origin), "-c", "user.name=t", "-c", "user.email=t@e.invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "fixtures"], check=True)
    return origin


def test_a_clone_with_key_fixtures_works_and_the_keys_stay_unread(
    sandbox: Sandbox, repository: Path
) -> None:
    clone = sandbox.workspace / "clone"
    script = (
        f"git clone -q --no-hardlinks {repository} {clone} && echo cloned; "
        f"cat {clone}/tests/certs/server.key || echo 'read refused'; "
        f"mv {clone}/tests/certs/server.key {clone}/notes.txt || echo 'move refused'; "
        f"chmod +x {clone}/tests/certs/server.key || echo 'chmod refused'; "
        f"rm {clone}/tests/certs/cert.pem && echo removed"
    )
    result = sandbox.run("sh", "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:5] == [
        "cloned",
        "read refused",
        "move refused",
        "chmod refused",
        "removed",
    ]
    assert "c2VjcmV0" not in result.stdout + result.stderr
    assert (clone / "tests" / "certs" / "server.key").read_text() == KEY
    assert not (clone / "notes.txt").exists()
    refused = {(r.get("action_type"), r.get("rule")) for r in sandbox.audit_records()}
    assert ("file_read", "workspace-key-read") in refused
    assert ("file_move", "workspace-key-read") in refused
    assert ("file_chmod", "workspace-key-read") in refused


def test_a_workspace_key_is_not_run_even_when_it_was_made_executable_before(
    sandbox: Sandbox,
) -> None:
    """An exec maps the file: the kernel would read the key for the agent
    (an ELF header written over its start, with the key in a PT_LOAD)."""
    key = sandbox.workspace / "server.key"
    key.write_text("#!/bin/cat\n" + KEY)
    key.chmod(0o755)
    result = sandbox.run(str(key))
    assert "c2VjcmV0" not in result.stdout + result.stderr
    assert result.returncode != 0
    refused = {(r.get("action_type"), r.get("rule")) for r in sandbox.audit_records()}
    assert ("process_spawn", "workspace-key-read") in refused


def test_a_key_in_the_home_still_kills(sandbox: Sandbox) -> None:
    key = sandbox.home / "server.key"
    key.write_text(KEY)
    result = sandbox.run("cat", str(key))
    assert result.returncode == 137
    assert "rule 'secret-key-file' denied file_read" in result.stderr
