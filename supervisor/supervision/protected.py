"""Which inodes are protected files: a hard link is judged under the protected name.

A hard link has no real name to judge: an open of a multiply-linked file is
judged under the protected name when its (st_dev, st_ino) is one of the files
the policy's read-deny rules name.  Those are found by walking the literal
roots of the rules (`{home}/.ssh`, `/etc/shadow`, the home directory for the
rules anchored there), at most `BUDGET` entries for each root, nearest
first, and only into directories where a rule could match (`_Scopes`); a
rule with no literal root (`**/*.pem`) cannot be walked.  A rule's roots
include their real paths (`matchers.Respelling`): a symlinked `~/.aws` is
walked where it leads, since the walk lists symlinks and never follows them.

With a real home directory the walk reads thousands of files (100-200 ms in
Python).  So it starts in a child process when the agent is launched and runs
beside the agent's start, on another CPU where there is one; the supervisor
waits for its answer only when a multiply-linked file is judged.  A child
that died is replaced by the walk itself, here; one that does not answer
within `WALK_TIMEOUT` fails every lookup (`WalkFailed`): closed, never open.
"""

from __future__ import annotations

import collections
import contextlib
import marshal
import os
import select
import signal
import time
import weakref
from collections.abc import Callable, Iterable, Sequence

from ..events import ActionType, response_for
from ..kernel import namespaces, privileges
from ..policy import CompiledPolicy
from ..policy.linear import PatternError, PatternSet, encode_target, match_ranges
from ..policy.matchers import Matcher

BUDGET = 20000  # entries each root lists at the most, directories too
WALK_TIMEOUT = 30.0  # seconds the first lookup waits for the walk
_DONE = "agentsup-protected-inodes"  # what a complete answer starts with


class WalkFailed(RuntimeError):
    """The walk did not finish: no multiply-linked file can be judged."""


def protected_inodes(
    policy: CompiledPolicy, budget: int = BUDGET, cut: list[str] | None = None
) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) -> path of the files under the policy's read-deny rules.

    Every path the walk lists is matched against all the rules at once (one
    RE2 set pass); a match counts for a rule only under that rule's own
    roots, so what a rule protects is what walking its roots alone finds.
    The roots whose budget ran out before their end are added to `cut`.
    """
    matchers = _walked_matchers(policy)
    roots = [root for matcher in matchers for root in matcher.roots or () if root != "/"]
    found: dict[tuple[int, int], str] = {}
    if not roots:
        return found
    scopes = _Scopes(matchers)
    listed = _walk_files(list(dict.fromkeys(roots)), budget, scopes, cut)
    for path in _matching(listed, matchers):
        # A name a refusing rule's regex matches may still be allowed (an
        # `except`, a rule before it): only a name the policy refuses stands
        # for the file.  Red team 32: a link named `fullchain.pem`, which
        # strict's key rule excepts, became the file's protected name, and
        # the file was read through both.
        if response_for(policy.evaluate_target(ActionType.FILE_READ, path)).proceeds:
            continue
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        found.setdefault((st.st_dev, st.st_ino), path)
    return found


def _walked_matchers(policy: CompiledPolicy) -> list[Matcher]:
    """The matchers of the rules that refuse reading, where they have roots."""
    return [
        rule.matcher
        for rule in policy.rules
        if rule.applies
        and ActionType.FILE_READ in rule.rule.actions
        and not response_for(rule.decision).proceeds
        and rule.matcher.roots is not None
    ]


class _Scopes:
    """Which directories the walk must enter: those below which some rule could match.

    A rule with roots is anchored at the start (`regex_root`), so all it can
    match lies in RE2's ranges for its alternatives (`match_ranges`):
    `{home}/.git-credentials` in one, `{home}/.config/gh/...` in another, and
    `{home}/workspace` or `~/.pyenv` (120,000 files here) in none, so a
    repository or a toolchain there costs the home directory's walk one
    entry, not its budget.  A rule RE2 cannot bound enters everything under
    its roots.
    """

    def __init__(self, matchers: Sequence[Matcher]) -> None:
        self._ranges: list[tuple[bytes, bytes, bytes | None]] = []
        for matcher in matchers:
            bounds = match_ranges(matcher.regex)
            ranges: list[tuple[bytes, bytes | None]] = [(b"", None)] if bounds is None else []
            ranges += bounds or ()
            for root in matcher.roots or ():
                if root != "/":
                    self._ranges += [(os.fsencode(root), low, high) for low, high in ranges]

    def enters(self, directory: bytes) -> bool:
        """Whether some rule whose root holds `directory` could match below it."""
        text = directory if directory.isascii() else encode_target(os.fsdecode(directory))
        prefix = text + b"/"
        for root, low, high in self._ranges:
            if directory != root and not directory.startswith(root + b"/"):
                continue
            # Some name starting with `prefix` lies in [low, high].
            if high is None or (prefix <= high and low[: len(prefix)] <= prefix):
                return True
        return False


def _matching(paths: Iterable[bytes], matchers: Sequence[Matcher]) -> list[str]:
    """The paths some matcher matches, under one of that matcher's roots."""
    try:
        match = PatternSet([matcher.regex for matcher in matchers]).raw_match
    except PatternError:  # too large for one set: each rule is asked
        match = _no_answer
    size = len(matchers)
    hits: list[str] = []
    for raw in paths:
        # Non-ASCII names are matched as the decisions see them: decoded
        # with surrogate escapes, then encoded as `encode_target` does.
        text = None if raw.isascii() else os.fsdecode(raw)
        found = match(raw if text is None else encode_target(text))
        if found and len(found) == 1:
            continue  # only the set's catch-all: no rule matches (the common case)
        path = os.fsdecode(raw) if text is None else text
        if found:
            matched = [matchers[i] for i in found if i < size]
        else:  # no answer: RE2's DFA gave up, so each rule is asked
            matched = [matcher for matcher in matchers if matcher.matches(path)]
        if any(_under_a_root(matcher, path) for matcher in matched):
            hits.append(path)
    return hits


def _no_answer(_data: bytes) -> list[int]:
    return []


def _under_a_root(matcher: Matcher, path: str) -> bool:
    return any(path == r or path.startswith(r + "/") for r in matcher.roots or () if r != "/")


def _walk_files(
    roots: Sequence[str],
    budget: int,
    scopes: _Scopes | None = None,
    cut: list[str] | None = None,
) -> list[bytes]:
    """The files (everything but directories) below `roots`, nearest first.

    Each root lists at most `budget` entries, directories counted as files
    are (red team 31: 1.4 million directories held the walk for its whole
    timeout).  A root below another is walked as a root of its own, with its
    own budget, and never as part of the other (red team 31: 20,000 files at
    the workspace's top spent the budget before the home directory was
    listed).  The roots take turns, one directory each, and each is walked
    breadth first: the files the rules name lie near their roots
    (`~/.git-credentials`, `~/.config/gh/hosts.yml`), a large tree deep in
    it.  A directory is entered only where `scopes` says a rule could match
    below it.  A directory reached from two roots is read once.  A root
    whose budget ran out with more to list is added to `cut`.

    Symlinks are listed, not followed: one to a directory is a name too, and
    its lstat never matches a regular file's inode.  Classifying by d_type
    alone (no stat of every entry) keeps this to one scandir per directory.
    A procfs or kernel interface mounted below a root (a build chroot's
    /proc) is not entered: it holds no one's files, only the budget's worth
    of the host's processes (and `PID/root`, the whole host), and some of its
    directories refuse their listing halfway.  What is mounted beneath one
    is walked.
    """
    kernel = namespaces.kernel_trees()
    mounted = [os.fsencode(point) for point in kernel.others]
    paths: list[bytes] = []
    walks: list[_RootWalk] = []
    for root in roots:
        if os.path.isdir(root) and not os.path.islink(root):
            walks.append(_RootWalk(os.fsencode(root), budget))
        elif os.path.isfile(root):  # a file, or a symlink to one
            paths.append(os.fsencode(root))
    own = {walk.root for walk in walks}
    seen: set[bytes] = set()
    while walks:
        for walk in walks:
            directory = walk.pending.popleft()
            if directory in seen:
                continue
            seen.add(directory)
            try:
                scan = os.scandir(directory)
            except OSError:
                continue
            subdirs: list[bytes] = []
            with scan, contextlib.suppress(OSError):  # a listing refused halfway: what it gave
                for entry in scan:
                    if walk.left <= 0:
                        walk.cut = True
                        break
                    walk.left -= 1
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                        if is_dir and entry.stat(follow_symlinks=False).st_dev in kernel.devices:
                            # Not entered; what is mounted beneath it is (red team 24).
                            beneath = entry.path + b"/"
                            subdirs += [point for point in mounted if point.startswith(beneath)]
                            continue
                    except OSError:
                        is_dir = False
                    if not is_dir:
                        paths.append(entry.path)
                    elif entry.path not in own and (scopes is None or scopes.enters(entry.path)):
                        subdirs.append(entry.path)
            walk.pending.extend(subdirs)
        for walk in walks:
            walk.cut = walk.cut or bool(walk.pending and walk.left <= 0)
            if walk.cut and cut is not None:
                cut.append(os.fsdecode(walk.root))
        walks = [walk for walk in walks if walk.pending and not walk.cut]
    return paths


class _RootWalk:
    """One root's turn in `_walk_files`: what is left to list, and how much more it may."""

    __slots__ = ("cut", "left", "pending", "root")

    def __init__(self, root: bytes, budget: int) -> None:
        self.root = root
        self.pending = collections.deque([root])
        self.left = budget
        self.cut = False  # its budget ran out with more to list


class ProtectedInodes:
    """`protected_inodes` of one policy, walked in a child process from launch.

    `get` answers from the child's result, waiting for it the first time.
    """

    def __init__(
        self,
        policy: CompiledPolicy,
        budget: int = BUDGET,
        on_cut: Callable[[list[str]], object] = lambda _roots: None,
    ) -> None:
        self._policy = policy
        self._budget = budget
        # Told once, with the answer, of the roots whose budget ran out.
        self._on_cut = on_cut
        self._found: dict[tuple[int, int], str] | None = None
        self._failed = ""
        # The pipe the answer comes on and a pidfd of the child: [pipe, pidfd],
        # -1 once closed.  Dropped unclosed (a start that failed later), the
        # child is stopped all the same.
        self._child = [-1, -1]
        weakref.finalize(self, _stop, self._child)
        try:
            self._start()
        except OSError:
            self.close()  # no child (out of processes or fds): the first lookup walks here

    def _start(self) -> None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self._child[0] = read_end
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            os.close(write_end)
            raise
        if pid == 0:  # the child: walk, answer, exit without running anything else
            code = 1
            try:
                _walk_in_child(self._policy, self._budget, write_end, parent)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        # (The supervisor reaps it with its other children; the pidfd is for a kill.)
        self._child[1] = os.pidfd_open(pid)

    def get(self, key: tuple[int, int], default: str | None = None) -> str | None:
        """The protected path of inode `key`; raises WalkFailed when that cannot be known."""
        found = self._found
        if found is None:
            cut: list[str] = []
            found = self._found = self._collect(cut)
            if cut:
                self._on_cut(cut)
        return found.get(key, default)

    def inodes(self) -> Iterable[tuple[int, int]]:
        """Every protected inode (after a `get` that answered)."""
        return self._found or ()

    def _collect(self, cut: list[str]) -> dict[tuple[int, int], str]:
        if self._failed:
            raise WalkFailed(self._failed)
        pipe = self._child[0]
        if pipe < 0:  # no child: walk here
            return self._walk_here(cut)
        # (The pipe and pidfd stay open until `close`: closed now, they would
        # leave a hole below the supervisor's other fds for the rest of the run.)
        answer = _read_until_eof(pipe, time.monotonic() + WALK_TIMEOUT)
        if answer is None:
            _kill(self._child[1])
            self._failed = f"the protected-inode walk took longer than {WALK_TIMEOUT:g} s"
            raise WalkFailed(self._failed)
        with contextlib.suppress(ValueError, EOFError, TypeError):
            done, found, roots = marshal.loads(answer)
            if done == _DONE and isinstance(found, dict) and isinstance(roots, list):
                cut += [str(root) for root in roots]
                return found
        # The child died on the way (killed, out of memory): walk here.
        return self._walk_here(cut)

    def _walk_here(self, cut: list[str]) -> dict[tuple[int, int], str]:
        try:
            return protected_inodes(self._policy, self._budget, cut)
        except OSError as exc:
            self._failed = f"the protected-inode walk failed: {exc}"
            raise WalkFailed(self._failed) from exc

    def close(self) -> None:
        """Stop a walk nobody waits for any more."""
        _stop(self._child)


def _stop(child: list[int]) -> None:
    """Kill the walk and close its pipe and pidfd; each once (closed ones are -1)."""
    pipe, pidfd = child
    child[:] = [-1, -1]
    if pidfd >= 0:
        _kill(pidfd)
        os.close(pidfd)
    if pipe >= 0:
        os.close(pipe)


def _kill(pidfd: int) -> None:
    """SIGKILL the walk (gone already: nothing to do)."""
    if pidfd >= 0:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _walk_in_child(policy: CompiledPolicy, budget: int, out: int, parent: int) -> None:
    """The child's work: nothing of the supervisor's is kept but the pipe."""
    privileges.die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return  # the supervisor is gone already
    privileges.set_name(b"agentsup-walk")
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # the supervisor's loop is not here
    os.closerange(3, out)
    os.closerange(out + 1, 1 << 20)
    # Nor its terminal or output pipes: whoever reads them sees their end with the supervisor's.
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    # Beside the agent: its tree starts on the supervisor's CPU, the last one
    # (placement); the walk takes the others where there are any.
    cpus = os.sched_getaffinity(0)
    if len(cpus) > 1:
        os.sched_setaffinity(0, cpus - {max(cpus)})
    cut: list[str] = []
    found = protected_inodes(policy, budget, cut)
    data = memoryview(marshal.dumps((_DONE, found, cut)))
    while data:
        data = data[os.write(out, data) :]


def _read_until_eof(fd: int, deadline: float) -> bytes | None:
    """Everything written to pipe `fd` until its writer closed it; None past `deadline`."""
    chunks: list[bytes] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(int(left * 1000) + 1):
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
