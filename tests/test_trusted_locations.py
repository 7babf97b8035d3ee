"""agentsup trusts its locations only as OpenSSH's StrictModes trusts a home.

In a state directory anyone may write, anyone could rename the TOTP secret
away and plant their own, and `resume` would believe their codes; a socket
planted in a runtime directory anyone may write would hear the codes.  So a
location (and every directory above it) must belong to root or the user
running agentsup and be writable by no one else (a sticky ancestor such as
/tmp aside), and a control client talks only to a supervisor run by root or
itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Sandbox, locations_in

from agentsup.control.channel import ControlError, request
from agentsup.integrity.totp import TotpRefused, read_secret
from agentsup.paths import untrusted, untrusted_locations


def test_a_private_directory_and_one_not_made_yet_are_trusted(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    assert untrusted(tmp_path) is None
    assert untrusted(tmp_path / "not" / "made") is None
    assert untrusted_locations(locations_in(tmp_path)) is None


@pytest.mark.parametrize(("mode", "writers"), [(0o777, "anyone"), (0o775, "its group")])
def test_a_directory_others_may_write_is_not(tmp_path: Path, mode: int, writers: str) -> None:
    tmp_path.chmod(0o700)
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    assert untrusted(state) == f"{state} is writable by {writers}"
    assert untrusted(state / "totp.secret") == f"{state} is writable by {writers}"
    assert untrusted_locations(locations_in(tmp_path)) == (
        f"the state directory {state} cannot be trusted: {state} is writable by {writers}"
    )


def test_a_sticky_ancestor_is_trusted_but_a_sticky_location_is_not(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp
    mine = shared / "mine"
    mine.mkdir(mode=0o700)
    assert untrusted(mine) is None
    assert untrusted(shared) == f"{shared} is writable by anyone"


def test_a_symlink_is_followed_and_where_it_lies_is_checked_too(tmp_path: Path) -> None:
    """Red team 15: a location that is a symlink in a directory anyone may
    write passed, as only its real path was checked; anyone could re-point it."""
    tmp_path.chmod(0o700)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "state").symlink_to(private)
    assert untrusted(shared / "state") == f"{shared} is writable by anyone"
    (tmp_path / "relative").symlink_to("private")
    assert untrusted(tmp_path / "relative" / "state") is None
    (tmp_path / "up").symlink_to("shared/../private")
    assert untrusted(tmp_path / "up") == f"{shared} is writable by anyone"
    # `..` after a symlink climbs from where the symlink leads (red team 16)
    (tmp_path / "into-shared").symlink_to("shared/sub")
    (shared / "sub").mkdir(mode=0o700)
    (shared / "sub").chmod(0o700)
    assert untrusted(Path(f"{tmp_path}/into-shared/../policies")) == (
        f"{shared} is writable by anyone"
    )
    (tmp_path / "loop").symlink_to("loop")
    assert untrusted(tmp_path / "loop") == f"{tmp_path / 'loop'}: too many symlinks on the way"


@pytest.mark.requires_root
def test_a_symlink_of_another_user_in_a_sticky_directory_is_not(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # as /tmp: anyone may add a name
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (sticky / "state").symlink_to(private)
    os.lchown(sticky / "state", 65534, 65534)
    assert untrusted(sticky / "state") == f"{sticky / 'state'} belongs to uid 65534"


@pytest.mark.requires_root
def test_a_directory_of_another_user_is_not(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    assert untrusted(theirs / "state") == f"{theirs} belongs to uid 65534"


def test_a_totp_secret_in_a_directory_anyone_may_write_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    where = locations_in(tmp_path)
    where.state_dir.mkdir()
    where.totp_secret.write_text("JBSWY3DPEHPK3PXP\n")
    assert read_secret(where) == "JBSWY3DPEHPK3PXP"
    where.state_dir.chmod(0o777)
    with pytest.raises(TotpRefused, match=r"cannot be trusted: .* is writable by anyone"):
        read_secret(where)


@pytest.mark.requires_seccomp_notify
@pytest.mark.requires_landlock
def test_run_refuses_a_state_directory_anyone_may_write(sandbox: Sandbox) -> None:
    sandbox.state_dir.mkdir(parents=True, exist_ok=True)
    sandbox.state_dir.chmod(0o777)
    result = sandbox.run("true")
    assert result.returncode == 125
    assert result.stderr.strip() == (
        f"agentsup: cannot start the supervisor: the state directory {sandbox.state_dir} "
        f"cannot be trusted: {sandbox.state_dir} is writable by anyone"
    )


@pytest.mark.requires_root
def test_a_control_client_says_nothing_to_a_socket_another_user_serves(tmp_path: Path) -> None:
    """A socket in the runtime directory, served by uid 65534: no request reaches it."""
    path = tmp_path / "sup-1.sock"
    tmp_path.chmod(0o755)
    server = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666)\n"
        "os.setgid(65534); os.setuid(65534); s.listen(1); print('ready', flush=True)\n"
        "c, _ = s.accept(); c.settimeout(5)\n"
        "print('heard', c.recv(4096).decode().strip() or 'nothing', flush=True)\n"
    )
    planted = subprocess.Popen(
        [sys.executable, "-c", server, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert planted.stdout is not None
    try:
        assert planted.stdout.readline().strip() == "ready"
        with pytest.raises(ControlError, match="served by uid 65534, neither root nor you"):
            request(path, {"op": "resume", "agent": "a", "code": "123456"})
        heard = planted.stdout.readline().strip()
        assert heard == "heard nothing", heard
    finally:
        planted.kill()
        planted.wait(5)
        planted.stdout.close()
