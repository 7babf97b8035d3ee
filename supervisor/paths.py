"""Where agentsup keeps its files (DESIGN.md 1.4).

As root: /etc/agentsup/policies, /var/log/agentsup/audit.jsonl,
/var/lib/agentsup and /run/agentsup.  As a normal user: the XDG
equivalents.  Each can be moved with an environment variable so that tests
and CI can use a temporary directory; moving a location keeps its
protections.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import NamedTuple


class UntrustedLocation(OSError):
    """A location agentsup may not trust (`untrusted_locations`): its strerror says why."""


class Locations(NamedTuple):
    """The four places agentsup keeps its files; the rest are derived."""

    policy_dir: Path
    audit_log: Path
    state_dir: Path
    runtime_dir: Path

    @property
    def audit_key(self) -> Path:
        return self.state_dir / "audit.key"

    @property
    def audit_head(self) -> Path:
        return self.state_dir / "audit.head"

    @property
    def totp_secret(self) -> Path:
        return self.state_dir / "totp.secret"

    @property
    def totp_last_step(self) -> Path:
        return self.state_dir / "totp.last_step"

    @property
    def policy_manifest(self) -> Path:
        return self.state_dir / "policy.manifest"

    @property
    def agents_dir(self) -> Path:
        """Where the daemon reads its agent definitions: $AGENTSUP_AGENTS_DIR, else
        `agents` beside the policy directory (/etc/agentsup/agents as root)."""
        chosen = os.environ.get("AGENTSUP_AGENTS_DIR")
        return Path(chosen) if chosen else self.policy_dir.parent / "agents"

    def protected_paths(self) -> tuple[Path, ...]:
        """Paths the agent may never write, whatever the policy says.  The agents
        directory too: a definition planted there runs as root at the next
        SIGHUP, under a policy of its own choosing (red team 36)."""
        return (
            self.policy_dir,
            self.audit_log.parent,
            self.state_dir,
            self.runtime_dir,
            self.agents_dir,
        )

    def secret_paths(self) -> tuple[Path, ...]:
        """Paths the agent may never even read."""
        return (self.state_dir,)


_MAX_SYMLINKS = 40  # as the kernel follows at the most


def untrusted(path: Path, uid: int | None = None) -> str | None:
    """Why agentsup may not trust `path` (a location, or a file in one), or None.

    As OpenSSH's StrictModes: every name on the way is looked up in a
    directory that belongs to root or to `uid` (this process's) and that no
    one else may write (a sticky directory, /tmp, aside: others may not
    rename what is ours there); each entry, symlinks on the way included,
    belongs to root or `uid`, and a symlink is followed the same way.  In a
    directory anyone may write, anyone could rename a TOTP secret or an
    audit key away and plant their own, or point a symlink elsewhere.  What
    does not exist yet is made by us, later, in a directory checked.
    """
    uid = os.geteuid() if uid is None else uid
    # Not abspath: it would drop `link/..` by spelling, where the kernel
    # follows `link` first and climbs from where it leads.
    pending = [name for name in os.path.join(os.getcwd(), path).split("/") if name]
    current = "/"
    links = 0
    place, last = "/", not pending
    try:
        st = os.lstat(place)
    except OSError as exc:
        return f"cannot check /: {exc.strerror}"
    while True:
        if st.st_uid not in (0, uid):
            return f"{place} belongs to uid {st.st_uid}"
        shared = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and not last
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022 and not shared:
            writers = "anyone" if st.st_mode & 0o002 else "its group"
            return f"{place} is writable by {writers}"
        while pending and pending[0] in (".", ".."):
            if pending.pop(0) == "..":
                current = os.path.dirname(current)  # a real path: checked already
        if not pending:
            return None
        place = os.path.join(current, pending.pop(0))
        try:
            st = os.lstat(place)
        except (FileNotFoundError, NotADirectoryError):
            return None  # not there yet (made by us), or unusable: said where it is used
        except OSError as exc:
            return f"cannot check {place}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                return f"{path}: too many symlinks on the way"
            try:
                target = os.readlink(place)
            except OSError as exc:
                return f"cannot check {place}: {exc.strerror}"
            if target.startswith("/"):
                current = "/"
            pending[:0] = [name for name in target.split("/") if name]
        else:
            current = place
        last = not pending


def untrusted_locations(locations: Locations) -> str | None:
    """The first location that may not be trusted, and why, or None."""
    for what, path in (
        ("policy directory", locations.policy_dir),
        ("audit log's directory", locations.audit_log.parent),
        ("state directory", locations.state_dir),
        ("runtime directory", locations.runtime_dir),
    ):
        reason = untrusted(path)
        if reason is not None:
            return f"the {what} {path} cannot be trusted: {reason}"
    return None


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def default_locations() -> Locations:
    if os.geteuid() == 0:
        policy_dir = Path("/etc/agentsup/policies")
        audit_log = Path("/var/log/agentsup/audit.jsonl")
        state_dir = Path("/var/lib/agentsup")
        runtime_dir = Path("/run/agentsup")
    else:
        policy_dir = _xdg("XDG_CONFIG_HOME", ".config") / "agentsup" / "policies"
        audit_log = _xdg("XDG_STATE_HOME", ".local/state") / "agentsup" / "audit.jsonl"
        state_dir = _xdg("XDG_DATA_HOME", ".local/share") / "agentsup"
        runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/agentsup-{os.getuid()}"
        runtime_dir = Path(runtime) / "agentsup"
    env = os.environ
    return Locations(
        policy_dir=Path(env.get("AGENTSUP_POLICY_DIR") or policy_dir),
        audit_log=Path(env.get("AGENTSUP_AUDIT_LOG") or audit_log),
        state_dir=Path(env.get("AGENTSUP_STATE_DIR") or state_dir),
        runtime_dir=Path(env.get("AGENTSUP_RUNTIME_DIR") or runtime_dir),
    )


def own_python(*args: str) -> list[str]:
    """The command line of a helper agentsup starts in its own Python (the watchdog,
    the egress proxy's resolver), isolated: `-I` keeps the current directory,
    PYTHONPATH and the user's site-packages off its import path.  Started from
    the workspace, as root, `-m` would import a package the agent planted there
    before its own (red team 37); start it from `/` too.
    """
    return [sys.executable, "-I", *args]


def own_user_site() -> str | None:
    """The user's site-packages where agentsup's own Python reads it (not in a
    virtual environment, nor under -s or -I), there yet or not: a `.pth` file
    written there runs in the next agentsup, as root, before any check."""
    import site

    return site.getusersitepackages() if site.ENABLE_USER_SITE else None


def own_import_path() -> list[str]:
    """Where agentsup's own Python finds code: its import path (its prefixes,
    PYTHONPATH, editable installs) and its user site-packages, there or not."""
    found = [entry for entry in sys.path if os.path.isabs(entry)]
    user_site = own_user_site()
    if user_site is not None:
        found.append(user_site)
    return list(dict.fromkeys(found))


def symlinks_on_the_way(path: str, limit: int = 40) -> list[str]:
    """Where each symlink a lookup of `path` goes through lies (its own place, not
    its target): what would change where `path` leads if it were re-pointed."""
    found: list[str] = []
    pending = [name for name in os.path.abspath(path).split("/") if name]
    current = "/"
    while pending and len(found) < limit:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        here = os.path.join(current, name)
        try:
            text = os.readlink(here)
        except OSError:  # not a symlink (or not there): the lookup goes on from it
            current = here
            continue
        found.append(here)
        if text.startswith("/"):
            current = "/"
        pending = [*(part for part in text.split("/") if part), *pending]
    return found
