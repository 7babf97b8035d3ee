"""Plan the Landlock kernel floor: which paths and ports the agent may reach.

This module is pure: it turns roots, ports and protected paths into a
`FloorPlan` (plain values) and never makes a syscall, so every rule can be
tested without a kernel.  `agentsup.kernel.landlock.apply_floor` installs a plan.

Landlock can only allow, never carve out.  When a granted root contains a
path that must stay unreachable (the policy directory, the audit log, the
state and runtime directories), the planner "punches a hole": it replaces the
root by its directory entries, recursing along the protected path and skipping
the protected entry itself.  See `plan_floor` for the consequence.

`plan_policy_floor` plans the floor of a compiled policy (the roots any
rule that lets an action proceed could reach), and `floor_verdict` is the
floor asked in user space about one decision: what the supervisor does
before each operation it performs for the agent, and what `policy explain`
shows.

Access-right values and ABI levels come from the kernel uapi header
`linux/landlock.h`.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..events import ActionType, Decision, Severity, Verdict, ViolationMode, response_for

if TYPE_CHECKING:
    from .engine import CompiledPolicy

# Filesystem rights (landlock_ruleset_attr.handled_access_fs).
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5

# Network rights (handled_access_net), ABI 4.
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1

# Scopes (scoped), ABI 6.
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM

READ_RIGHTS = FS_READ_FILE | FS_READ_DIR
EXEC_RIGHTS = FS_EXECUTE
# No MAKE_CHAR or MAKE_BLOCK: an agent never needs a device node, and one
# made in its workspace would be a door to the raw device.
WRITE_RIGHTS = (
    FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SOCK
    | FS_MAKE_FIFO
    | FS_MAKE_SYM
    | FS_REFER
    | FS_TRUNCATE
)
# The only rights the kernel accepts on a rule whose path is not a directory.
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

# Devices every program expects to open.  `> /dev/null` opens with O_TRUNC,
# hence TRUNCATE; terminals need their ioctls.
_DEVICE_RIGHTS = FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV
ALWAYS_ALLOWED: tuple[tuple[str, int], ...] = (
    ("/dev/null", _DEVICE_RIGHTS),
    ("/dev/zero", _DEVICE_RIGHTS),
    ("/dev/full", _DEVICE_RIGHTS),
    ("/dev/random", _DEVICE_RIGHTS),
    ("/dev/urandom", _DEVICE_RIGHTS),
    ("/dev/tty", _DEVICE_RIGHTS),
    ("/dev/ptmx", _DEVICE_RIGHTS),  # a new pty, in the agent's own devpts
    ("/dev/pts", _DEVICE_RIGHTS | FS_READ_DIR),
)

_FS_NAMES = (
    (FS_EXECUTE, "execute"),
    (FS_WRITE_FILE, "write_file"),
    (FS_READ_FILE, "read_file"),
    (FS_READ_DIR, "read_dir"),
    (FS_REMOVE_DIR, "remove_dir"),
    (FS_REMOVE_FILE, "remove_file"),
    (FS_MAKE_CHAR, "make_char"),
    (FS_MAKE_DIR, "make_dir"),
    (FS_MAKE_REG, "make_reg"),
    (FS_MAKE_SOCK, "make_sock"),
    (FS_MAKE_FIFO, "make_fifo"),
    (FS_MAKE_BLOCK, "make_block"),
    (FS_MAKE_SYM, "make_sym"),
    (FS_REFER, "refer"),
    (FS_TRUNCATE, "truncate"),
    (FS_IOCTL_DEV, "ioctl_dev"),
)


def fs_rights_for_abi(abi: int) -> int:
    """All filesystem rights the given Landlock ABI knows (0 when unsupported)."""
    if abi < 1:
        return 0
    rights = _FS_ABI1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def net_rights_for_abi(abi: int) -> int:
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0


def scopes_for_abi(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


def describe_fs_rights(mask: int) -> str:
    """`read_file,read_dir`-style text for logs; `all` for a full ABI mask."""
    names = [name for bit, name in _FS_NAMES if mask & bit]
    return ",".join(names) if names else "none"


class FloorPlan(NamedTuple):
    """What `apply_floor` installs.  Plain values; build one with `plan_floor`.

    `fs_rules` maps a path to the rights allowed beneath it; for a path that
    turns out not to be a directory, `apply_floor` keeps only `FILE_RIGHTS`.
    `gaps` names what the running ABI cannot enforce, for the caller to warn.
    """

    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    fs_rules: tuple[tuple[str, int], ...]
    net_rules: tuple[tuple[int, int], ...]
    gaps: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        lines = [
            f"landlock abi {self.abi}: handled fs={describe_fs_rights(self.handled_fs)}"
            f" net={_net_names(self.handled_net)} scoped={_scope_names(self.scoped)}"
        ]
        lines += [f"  allow {path}: {describe_fs_rights(mask)}" for path, mask in self.fs_rules]
        lines += [f"  allow tcp port {port}: {_net_names(mask)}" for port, mask in self.net_rules]
        lines += [f"  not enforced: {gap}" for gap in self.gaps]
        return lines


def _net_names(mask: int) -> str:
    names = [n for bit, n in ((NET_BIND_TCP, "bind"), (NET_CONNECT_TCP, "connect")) if mask & bit]
    return ",".join(names) if names else "none"


def scope_names(mask: int) -> list[str]:
    """The names of the scopes in `mask` (`abstract_unix_socket`, `signal`)."""
    pairs = ((SCOPE_ABSTRACT_UNIX_SOCKET, "abstract_unix_socket"), (SCOPE_SIGNAL, "signal"))
    return [n for bit, n in pairs if mask & bit]


def _scope_names(mask: int) -> str:
    return ",".join(scope_names(mask)) or "none"


def _normalise(path: str) -> str:
    if not os.path.isabs(path):
        raise ValueError(f"Landlock paths must be absolute, got {path!r}")
    # normpath keeps a leading '//', which names the same directory as '/'.
    normal = os.path.normpath(path)
    return "/" + normal.lstrip("/")


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def punch(root: str, protected: Iterable[str], listdir: Callable[[str], list[str]]) -> list[str]:
    """Paths that together cover `root` minus every protected path beneath it.

    A protected path that does not exist still gets its hole, so it stays
    unreachable if it is created later.  A directory that cannot be listed is
    left out entirely: stricter, never looser.
    """
    return _punch(root, sorted(protected), listdir)


def _within_sorted(protected: Sequence[str], root: str) -> list[str]:
    """The paths of sorted `protected` at or beneath `root`: `root` itself and
    the one run of names that start with `root/` (a hundred device nodes
    under /dev are found without a pass over all of them per directory)."""
    prefix = root.rstrip("/") + "/"
    start = bisect.bisect_left(protected, prefix)
    end = bisect.bisect_left(protected, prefix[:-1] + chr(ord("/") + 1))
    found = list(protected[start:end])
    at = bisect.bisect_left(protected, root)
    if at < len(protected) and protected[at] == root and root != prefix:
        found.insert(0, root)
    return found


def _punch(root: str, protected: Sequence[str], listdir: Callable[[str], list[str]]) -> list[str]:
    inside = _within_sorted(protected, root)
    if not inside:
        return [root]
    if inside[0] == root:
        return []
    try:
        entries = listdir(root)
    except NotADirectoryError:
        # A file cannot contain the protected path, so that path cannot exist.
        return [root]
    except OSError:
        return []
    covered: list[str] = []
    for name in sorted(entries):
        covered += _punch(os.path.join(root, name), inside, listdir)
    return covered


def _grant(
    rules: dict[str, int],
    roots: Sequence[str],
    rights: int,
    protected: Sequence[str],
    listdir: Callable[[str], list[str]],
) -> None:
    if not rights:
        return
    for root in roots:
        for path in punch(root, protected, listdir):
            rules[path] = rules.get(path, 0) | rights


def _roots(roots: tuple[str, ...] | None) -> list[str]:
    return ["/"] if roots is None else sorted({_normalise(r) for r in roots})


def _check_ports(ports: frozenset[int] | None) -> None:
    for port in ports or ():
        if not 0 <= port <= 65535:
            raise ValueError(f"TCP port out of range: {port}")


def plan_floor(
    *,
    read_roots: tuple[str, ...] | None,
    write_roots: tuple[str, ...] | None,
    exec_roots: tuple[str, ...] | None,
    connect_ports: frozenset[int] | None,
    bind_ports: frozenset[int] | None,
    no_write: Sequence[str],
    no_read: Sequence[str],
    abi: int,
    listdir: Callable[[str], list[str]] = os.listdir,
    unread: Sequence[str] = (),
) -> FloorPlan:
    """Plan the Landlock floor for one agent.

    Roots are absolute paths; None means everything (`/`).  Pass canonical
    paths (`os.path.realpath`): `apply_floor` does not follow symlinks, so a
    symlink planted inside a granted directory can never widen the floor.
    Ports: None leaves that kind of TCP access unrestricted, an empty set
    allows none.  `no_write` paths never get write-class rights and `no_read`
    paths get no rights at all, whatever the roots say.  Read roots always
    include the exec roots, since running a program means reading it.

    Consequence of punching holes: the parent directories of a protected path
    are not granted themselves, only their entries as they exist now.  An
    entry created later directly in such a parent directory (for example a
    new file in `/var/log` next to a protected `/var/log/agentsup`) is not
    reachable with the punched rights.  The floor gets stricter, never looser.

    `unread` paths are holes of `no_read` too, but the directories a read
    root held them in stay listable (device nodes and FIFOs, which the read
    lane cannot judge: `ls /dev` still works).
    """
    _check_ports(connect_ports)
    _check_ports(bind_ports)
    handled_fs = fs_rights_for_abi(abi)
    known_net = net_rights_for_abi(abi)
    scoped = scopes_for_abi(abi)
    gaps: list[str] = []
    if abi < 1:
        gaps.append("Landlock is not available on this kernel")

    unread_paths = sorted({_normalise(p) for p in unread})
    no_read_paths = sorted({_normalise(p) for p in no_read} | set(unread_paths))
    no_write_paths = sorted({_normalise(p) for p in no_write} | set(no_read_paths))
    read_roots_all = None if read_roots is None or exec_roots is None else read_roots + exec_roots
    # IOCTL_DEV goes with write access: a device ioctl can change state.
    write_rights = (WRITE_RIGHTS | FS_IOCTL_DEV) & handled_fs

    rules: dict[str, int] = {}
    _grant(rules, _roots(read_roots_all), READ_RIGHTS & handled_fs, no_read_paths, listdir)
    _grant(rules, _roots(exec_roots), EXEC_RIGHTS & handled_fs, no_read_paths, listdir)
    _grant(rules, _roots(write_roots), write_rights, no_write_paths, listdir)
    for device, rights in ALWAYS_ALLOWED:
        if rights & handled_fs and not any(_is_within(device, p) for p in no_read_paths):
            rules[device] = rules.get(device, 0) | (rights & handled_fs)
    listing = FS_READ_DIR & handled_fs
    for path in unread_paths if listing else ():
        for root in _roots(read_roots_all):
            if path == root or not _is_within(path, root):
                continue
            directory = os.path.dirname(path)
            while True:  # up to the root that held it: as listable as it was
                rules[directory] = rules.get(directory, 0) | listing
                if directory == root or directory == "/":
                    break
                directory = os.path.dirname(directory)

    handled_net = 0
    net: dict[int, int] = {}
    for ports, right, what in (
        (connect_ports, NET_CONNECT_TCP, "connect"),
        (bind_ports, NET_BIND_TCP, "bind"),
    ):
        if ports is None:
            continue
        if not known_net:
            gaps.append(f"TCP {what} port rules need Landlock ABI 4 (running ABI {abi})")
            continue
        handled_net |= right
        for port in ports:
            net[port] = net.get(port, 0) | right
    if abi >= 1 and not scoped:
        gaps.append(f"signal and abstract-socket scoping need Landlock ABI 6 (running ABI {abi})")

    return FloorPlan(
        abi=abi,
        handled_fs=handled_fs,
        handled_net=handled_net,
        scoped=scoped,
        fs_rules=tuple(sorted((p, m) for p, m in rules.items() if m)),
        net_rules=tuple(sorted(net.items())),
        gaps=tuple(gaps),
    )


class FloorCheck:
    """The floor, asked in user space: could the agent itself reach `path` for `rights`?

    The supervisor performs most file operations for the agent (to close
    TOCTOU races), and its own opens are not subject to the agent's Landlock
    domain.  This is the same floor checked before each of them, so a bug in
    the policy engine cannot hand out what the kernel floor would refuse.
    Pure: plain string prefixes over the plan's rules.
    """

    def __init__(self, plan: FloorPlan) -> None:
        self.handled = plan.handled_fs
        self._rules = tuple((path.rstrip("/") or "/", mask) for path, mask in plan.fs_rules)
        # Per set of rights asked: the roots granting any of them, as `root/`.
        self._prefixes: dict[int, tuple[str, ...]] = {}

    def allows(self, path: str, rights: int) -> bool:
        """True if some rule at or above `path` grants any of `rights` (or none are handled)."""
        prefixes = self.prefixes(rights)
        return prefixes is None or (path + "/").startswith(prefixes)  # the root, or beneath it

    def prefixes(self, rights: int) -> tuple[str, ...] | None:
        """The roots granting any of `rights`, each as `root/`; None when none are handled."""
        wanted = rights & self.handled
        if not wanted:
            return None
        prefixes = self._prefixes.get(wanted)
        if prefixes is None:
            prefixes = self._prefixes[wanted] = tuple(
                "/" if root == "/" else root + "/" for root, mask in self._rules if mask & wanted
            )
        return prefixes


# --- a compiled policy's floor -------------------------------------------------------

READ_ACTIONS = (ActionType.FILE_READ,)
WRITE_ACTIONS = (
    ActionType.FILE_WRITE,
    ActionType.FILE_DELETE,
    ActionType.FILE_MOVE,
    ActionType.FILE_CHMOD,
)
FLOOR_RULE = "agentsup-kernel-floor"
_WRITE_ANY = FS_WRITE_FILE | FS_MAKE_REG | FS_MAKE_DIR | FS_MAKE_SYM | FS_TRUNCATE
# The rights an action needs at its target; actions not listed are not on the floor.
ACTION_RIGHTS: dict[ActionType, int] = {
    ActionType.FILE_READ: READ_RIGHTS,
    ActionType.FILE_WRITE: _WRITE_ANY,
    ActionType.FILE_CHMOD: _WRITE_ANY,
    ActionType.FILE_DELETE: FS_REMOVE_FILE | FS_REMOVE_DIR,
    ActionType.FILE_MOVE: FS_REMOVE_FILE | FS_REMOVE_DIR,
    ActionType.PROCESS_SPAWN: EXEC_RIGHTS,
}


def plan_policy_floor(
    policy: CompiledPolicy,
    *,
    no_write: Iterable[str],
    no_read: Iterable[str],
    abi: int,
    listdir: Callable[[str], list[str]] = os.listdir,
    realpath: Callable[[str], str] = os.path.realpath,
    lexists: Callable[[str], bool] = os.path.lexists,
    unread: Iterable[str] = (),
) -> FloorPlan:
    """The floor for `policy`: the roots any rule that lets an action proceed could reach.

    With network denied by default and no rule letting a connect through,
    Landlock refuses every TCP connect and bind but a bind to port 0; otherwise
    ports stay open and the seccomp layer alone decides.  Paths are made
    canonical with `realpath` (see `plan_floor`).

    Landlock can only name what exists.  A rule may let the agent create
    `~/.cache/tool/**` where `~/.cache` is not there yet: the floor grants the
    nearest existing directory instead (the policy still decides each path),
    for writing and for reading back what was written, but never `/`.
    """

    def real(paths: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if paths is None else tuple(realpath(path) for path in paths)

    def existing_ancestor(path: str) -> str:
        while path != "/" and not lexists(path):
            path = os.path.dirname(path)
        return path

    read_roots = real(policy.floor_roots(READ_ACTIONS))
    write_roots = real(policy.floor_roots(WRITE_ACTIONS))
    if write_roots is not None:
        # Never as far as `/`: that would be no floor at all for writes.
        grown = tuple(
            ancestor
            for ancestor in (existing_ancestor(r) for r in write_roots if not lexists(r))
            if ancestor != "/"
        )
        write_roots = tuple(dict.fromkeys(write_roots + grown))
        if read_roots is not None:
            read_roots = tuple(dict.fromkeys(read_roots + grown))
    network = policy.floor_roots((ActionType.NETWORK_CONNECT,))
    tcp_ports: frozenset[int] | None = frozenset() if network == () else None
    return plan_floor(
        read_roots=read_roots,
        write_roots=write_roots,
        exec_roots=real(policy.floor_roots((ActionType.PROCESS_SPAWN,))),
        connect_ports=tcp_ports,
        # Port 0 (any free port) on loopback is how clients probe for IPv6; the
        # agent then has a network namespace of its own, where that reaches nobody.
        bind_ports=None if tcp_ports is None else tcp_ports | {0},
        no_write=[realpath(path) for path in no_write],
        no_read=[realpath(path) for path in no_read],
        abi=abi,
        listdir=listdir,
        unread=list(unread),  # as they are: a device node's own name, not where it leads
    )


def floor_reaches(floor: FloorCheck, action: ActionType, target: str) -> bool:
    """Whether the floor lets `action` reach `target` (actions it does not cover: yes)."""
    rights = ACTION_RIGHTS.get(action)
    return not rights or floor.allows(target, rights)


def floor_prefixes(floor: FloorCheck, action: ActionType) -> tuple[str, ...] | None:
    """`floor_reaches` as prefixes: `action` reaches a target whose `target/`
    starts with one of them; None when the floor does not cover it."""
    rights = ACTION_RIGHTS.get(action)
    return floor.prefixes(rights) if rights else None


def floor_verdict(
    floor: FloorCheck, action: ActionType, target: str, decision: Decision
) -> Decision:
    """`decision`, unless it lets the action proceed where the floor does not reach.

    Then the floor decides: a deny that blocks (EACCES), no signal, since
    the policy itself did not ask for one.
    """
    if not response_for(decision).proceeds or floor_reaches(floor, action, target):
        return decision
    return Decision(
        verdict=Verdict.DENY,
        rule_id=FLOOR_RULE,
        severity=Severity.CRITICAL,
        message="outside the kernel floor: no rule of the policy could allow this",
        on_violation=ViolationMode.BLOCK,
        reason=f"the policy said {decision.verdict} ({decision.rule_id}), "
        "the Landlock floor computed from it does not reach the target",
    )
