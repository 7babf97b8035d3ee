"""Turn trapped syscalls into events, and carry out the answer.

Each notification goes through one fixed sequence: receive, decode, decide,
re-validate, respond (STYLE.md example 6).

TOCTOU: a path in the agent's memory can be rewritten by another thread
after we read it.  So a path decision is never enforced by CONTINUE alone.
For the file syscalls the supervisor does the work itself, on the object it
decided about:

* open/openat/openat2/creat: resolve with an O_PATH open, decide on the
  real path of what that fd points at, reopen that very fd and inject it
  into the agent (ADDFD + SEND);
* unlink, rmdir, mkdir, rename, link, symlink, truncate, chmod, chown:
  pin the parent directory with O_PATH, decide on `parent/name`, then do
  the `*at` call on the pinned fd and return its result.

execve and connect cannot be done on the agent's behalf.  They are decided
and then CONTINUEd, with Landlock (exec roots, TCP ports) as the floor under
them; the README's threat model says what remains.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..events import ActionType, Event, Layer, Response
from ..kernel import proc as _proc
from ..kernel import seccomp as _seccomp

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
RENAME_EXCHANGE = 2

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
_O_PATH = getattr(os, "O_PATH", 0o10000000)

# Syscalls that go to the supervisor for a decision.
MEDIATED = (
    "open", "openat", "openat2", "creat",
    "execve", "execveat",
    "unlink", "unlinkat", "rmdir",
    "rename", "renameat", "renameat2",
    "mkdir", "mkdirat",
    "link", "linkat", "symlink", "symlinkat",
    "truncate",
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "lchown", "fchown", "fchownat",
    "connect", "bind", "sendto", "sendmsg", "sendmmsg",
    "process_vm_readv",
    "umask",
)  # fmt: skip

# Refused for every policy (DESIGN.md 1.2) and recorded as critical.  The
# new mount API, chroot and namespace-creating clone flags are refused too:
# each is a way around the path decisions above.
ALWAYS_REFUSED = (
    "ptrace", "process_vm_writev",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "bpf", "mount", "umount2", "pivot_root", "chroot",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "setns", "unshare", "clone",
    "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module",
    "perf_event_open", "userfaultfd", "open_by_handle_at",
    "keyctl", "add_key", "request_key",
)  # fmt: skip

# clone3 keeps its flags in memory that BPF cannot read: ENOSYS makes glibc
# fall back to clone, whose namespace flags the filter does see.
FORCED_ENOSYS = ("clone3",)


# (fd, on_ready, on_timeout, timeout_seconds): the loop calls exactly one of them.
WaitWritable = Callable[[int, Callable[[], None], Callable[[], None], float], None]

# The largest payload a sendto is copied for (a UDP datagram's limit).
_MAX_DATAGRAM = 65536
# struct msghdr on x86_64: name, namelen, iov, iovlen, control, controllen, flags.
_MSGHDR = struct.Struct("<QI4xQQQQi4x")

# A blocking connect the supervisor finishes for the agent gives up after this
# long, about what the kernel's SYN retries take by default.
CONNECT_TIMEOUT = 130.0


class Judge(Protocol):
    """The judge's side: evaluate an event, record it, apply signals."""

    allow_cache: set[tuple[ActionType, str]]

    def judge(self, event: Event, tid: int) -> Response: ...

    def refuse_always(self, syscall: str, tid: int) -> None: ...


@dataclass(slots=True)
class Resolved:
    """A path the agent named, pinned by an O_PATH fd (or not, if it does not exist)."""

    target: str  # the real path (or the lexical one when resolution failed)
    fd: int = -1  # O_PATH fd of the object, or of the parent directory for `name`
    name: bytes = b""  # last component, when `fd` is the parent
    error: int = 0  # errno of the resolution, 0 if it worked

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_NO_LINKS = _proc.RESOLVE_NO_SYMLINKS | _proc.RESOLVE_NO_MAGICLINKS
# What F_SETFL may change; used to drop the O_NONBLOCK we added for safety.
_SETFL_FLAGS = (
    os.O_APPEND
    | os.O_NONBLOCK
    | getattr(os, "O_DIRECT", 0)
    | getattr(os, "O_NOATIME", 0)
    | getattr(os, "O_ASYNC", 0)
)
# /proc/self and friends mean the supervisor here, and /dev and /sys opens
# can have side effects: those always take the careful path.
_CAREFUL_PREFIXES = (b"/proc", b"/dev", b"/sys")


@dataclass(slots=True)
class _AllowedExec:
    """What an allowed exec was decided on, to hold the new image to."""

    argv: list[str]
    before: list[str] | None  # the image that called exec, in case the exec failed
    script: bool  # a #! script: the kernel puts the interpreter in front

    def matches(self, running: list[str]) -> bool:
        if not self.argv:
            return True
        if self.script:
            tail = self.argv[1:]
            return not tail or running[-len(tail) :] == tail
        return running == self.argv


def _cmdline(pid: int) -> list[str] | None:
    """argv of the image running as `pid`, as the kernel copied it at exec."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return [os.fsdecode(arg) for arg in data.split(b"\0")[:-1]]


def _plain_absolute(raw: bytes) -> bool:
    return raw.startswith(b"/") and not raw.startswith(_CAREFUL_PREFIXES)


def _normal(raw: bytes) -> str:
    """The lexically normal form of an absolute path (`/a/./b/../c` -> `/a/c`)."""
    if b"/." in raw or b"//" in raw or (raw.endswith(b"/") and len(raw) > 1):
        path = os.path.normpath(os.fsdecode(raw))
        return "/" + path.lstrip("/")
    return os.fsdecode(raw)


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class Mediator:
    """Decodes and answers the notifications of one agent's listener."""

    def __init__(
        self,
        listener: int,
        judge: Judge,
        tgid_of: Callable[[int], int],
        agent_id: str = "",
        wait_writable: WaitWritable | None = None,
    ) -> None:
        self.listener = listener
        self.agent_id = agent_id
        self.judge = judge
        self._allow_cache = judge.allow_cache
        self.served = 0  # notifications so far (CPU placement watches the rate)
        self._execs: dict[int, _AllowedExec] = {}
        # How to wait, inside the loop, for a connect we started on the agent's behalf.
        self._wait_writable = wait_writable
        self.memory = _proc.MemoryReader()
        self._tgid_of = tgid_of
        self._umasks: dict[int, int] = {}
        self._pidfds: dict[int, int] = {}
        # (st_dev, st_ino) -> path, for files a hard link must not reach.
        self.protected_inodes: dict[tuple[int, int], str] = {}
        # Resolved once: number -> name, and number -> handler.
        self._names = _seccomp.syscall_numbers(MEDIATED + ALWAYS_REFUSED)
        refused = set(ALWAYS_REFUSED)
        self._handlers: dict[int, Callable[[_seccomp.Notification, str], None]] = {
            nr: self._on_refused if name in refused else getattr(self, f"_on_{name}")
            for nr, name in self._names.items()
        }

    def close(self) -> None:
        self.memory.close()
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()

    # -- the loop's entry point ------------------------------------------------

    def on_ready(self, events: int) -> bool:
        """Serve one notification.  False once no agent task is left on the filter."""
        if not events & select.EPOLLIN:
            return False  # EPOLLHUP alone: every task under the filter is gone
        self._serve_one()
        return True

    def _serve_one(self) -> None:
        self.served += 1
        notif = _seccomp.receive(self.listener)
        if notif is None:
            return
        if notif.pid in self._execs and not self._exec_as_decided(notif):
            return
        handler = self._handlers.get(notif.nr)
        if handler is None:  # not ours to judge; never happens with our filter
            _seccomp.respond_error(self.listener, notif.id, errno.ENOSYS)
            return
        try:
            handler(notif, self._names.get(notif.nr, str(notif.nr)))
        except OSError as exc:
            # Could not read the agent's arguments (bad pointer, task gone):
            # fail the syscall the way the kernel would.
            _seccomp.respond_error(self.listener, notif.id, exc.errno or errno.EFAULT)

    # -- helpers -----------------------------------------------------------------

    def _decide(
        self, notif: _seccomp.Notification, syscall: str, action: ActionType, target: str
    ) -> Response:
        if (action, target) in self._allow_cache:
            return Response.ALLOW
        event = Event(action, target, self.agent_id, notif.pid, Layer.SECCOMP, syscall)
        return self.judge.judge(event, notif.pid)

    def _decide_all(
        self, notif: _seccomp.Notification, syscall: str, checks: list[tuple[ActionType, str]]
    ) -> Response:
        """Every check must let the action proceed; the first that does not decides."""
        response = Response.ALLOW
        for action, target in checks:
            response = self._decide(notif, syscall, action, target)
            if not response.proceeds:
                return response
        return response

    def _refuse(self, notif: _seccomp.Notification, response: Response, err: int) -> None:
        if response is Response.HOLD:
            # The judge stopped the tree: the kernel drops this notification and
            # reissues the syscall after SIGCONT, when a person's grant answers it.
            return
        # KILL and STOP were carried out by the judge; the syscall fails either way.
        _seccomp.respond_error(self.listener, notif.id, err)

    def _agent_path(self, tid: int, dirfd: int, raw: bytes) -> bytes:
        """`raw` as a path this process can open, naming what the agent would reach."""
        if raw.startswith(b"/"):
            # /proc/self here would be the supervisor: point it at the agent.
            if raw.startswith(b"/proc/self/") or raw == b"/proc/self":
                return b"/proc/%d" % self._tgid_of(tid) + raw[10:]
            if raw.startswith(b"/proc/thread-self"):
                return b"/proc/%d/task/%d" % (self._tgid_of(tid), tid) + raw[17:]
            return raw
        if dirfd == AT_FDCWD:
            return b"/proc/%d/cwd/" % tid + raw
        return b"/proc/%d/fd/%d/" % (tid, dirfd) + raw

    def _lexical(self, tid: int, dirfd: int, raw: bytes) -> str:
        """Best-effort absolute path when the kernel could not resolve it."""
        if raw.startswith(b"/"):
            base = b""
        else:
            link = f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
            try:
                base = os.fsencode(os.readlink(link)) + b"/"
            except OSError:
                base = b"/"
        return os.path.normpath(os.fsdecode(base + raw)).replace("//", "/", 1)

    def _anchored_open(self, tid: int, dirfd: int, raw: bytes, flags: int, resolve: int) -> int:
        """openat2 from the agent's own dirfd (or cwd), honouring its RESOLVE_* flags."""
        if raw.startswith(b"/"):
            raw = self._agent_path(tid, dirfd, raw)  # /proc/self means the agent
        anchor_path = f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}"
        anchor = os.open(anchor_path, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return _proc.openat2(anchor, raw, flags, 0, resolve)
        finally:
            os.close(anchor)

    def resolve(
        self, tid: int, dirfd: int, raw: bytes, *, follow: bool = True, resolve_flags: int = 0
    ) -> Resolved:
        """Pin the object `raw` names (following a final symlink if `follow`)."""
        if not raw:
            return Resolved(self._lexical(tid, dirfd, raw), error=errno.ENOENT)
        flags = _O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        if resolve_flags:
            try:
                fd = self._anchored_open(tid, dirfd, raw, flags, resolve_flags)
            except OSError as exc:
                return Resolved(self._lexical(tid, dirfd, raw), error=exc.errno or errno.ENOENT)
            return self._checked(Resolved(_proc.fd_path(fd), fd=fd), os.fstat(fd))
        if _plain_absolute(raw):
            try:
                fd = _proc.openat2(AT_FDCWD, raw, flags, 0, _NO_LINKS)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    return Resolved(_normal(raw), error=exc.errno or errno.ENOENT)
            else:
                # No symlink on the way: the real path is the normalised one.
                return self._checked(Resolved(_normal(raw), fd=fd), os.fstat(fd))
        try:
            fd = os.open(self._agent_path(tid, dirfd, raw), flags)
        except OSError as exc:
            return Resolved(self._lexical(tid, dirfd, raw), error=exc.errno or errno.ENOENT)
        return self._checked(Resolved(_proc.fd_path(fd), fd=fd), os.fstat(fd))

    def _checked(self, node: Resolved, st: os.stat_result) -> Resolved:
        """Hard links and device nodes get the scrutiny their path alone does not show."""
        mode = st.st_mode
        if st.st_nlink > 1 and stat.S_ISREG(mode):
            protected = self.protected_inodes.get((st.st_dev, st.st_ino))
            if protected is not None:
                node.target = protected
        elif (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and not node.target.startswith("/dev/"):
            # A device node outside /dev is a door to the raw device, whatever
            # the path looks like: refuse it.
            node.close()
            node.error = errno.EACCES
        return node

    def resolve_parent(
        self, tid: int, dirfd: int, raw: bytes, *, resolve_flags: int = 0
    ) -> Resolved:
        """Pin the directory that would hold `raw`'s last component."""
        stripped = raw.rstrip(b"/")
        head, _, name = stripped.rpartition(b"/")
        if not stripped:
            return Resolved("/", error=errno.EBUSY)
        if name in (b".", b".."):
            return Resolved(self._lexical(tid, dirfd, raw), error=errno.EINVAL)
        parent = head if head or not stripped.startswith(b"/") else b"/"
        if b"/" not in stripped:
            parent = b"."
        if resolve_flags:
            try:
                fd = self._anchored_open(
                    tid, dirfd, parent, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, resolve_flags
                )
            except OSError as exc:
                return Resolved(self._lexical(tid, dirfd, raw), error=exc.errno or errno.ENOENT)
            target = _proc.fd_path(fd).rstrip("/") + "/" + os.fsdecode(name)
            return Resolved(target, fd=fd, name=name)
        if _plain_absolute(parent):
            try:
                fd = _proc.openat2(
                    AT_FDCWD, parent, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0, _NO_LINKS
                )
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    return Resolved(_normal(raw), error=exc.errno or errno.ENOENT)
            else:
                target = _normal(parent).rstrip("/") + "/" + os.fsdecode(name)
                return Resolved(target, fd=fd, name=name)
        try:
            fd = os.open(
                self._agent_path(tid, dirfd, parent),
                _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
            )
        except OSError as exc:
            return Resolved(self._lexical(tid, dirfd, raw), error=exc.errno or errno.ENOENT)
        parent_real = _proc.fd_path(fd)
        target = parent_real.rstrip("/") + "/" + os.fsdecode(name)
        return Resolved(target, fd=fd, name=name)

    def _umask(self, tid: int) -> int:
        tgid = self._tgid_of(tid)
        mask = self._umasks.get(tgid)
        if mask is None:
            mask = self._umasks[tgid] = _proc.process_umask(tid)
        return mask

    def _pidfd(self, tid: int) -> int:
        tgid = self._tgid_of(tid)
        fd = self._pidfds.get(tgid)
        if fd is None:
            fd = self._pidfds[tgid] = os.pidfd_open(tgid)
        return fd

    def forget_process(self, tgid: int) -> None:
        self._umasks.pop(tgid, None)
        self._execs.pop(tgid, None)
        fd = self._pidfds.pop(tgid, None)
        if fd is not None:
            os.close(fd)
        self.memory.forget(tgid)

    def _finish(self, notif: _seccomp.Notification, work: Callable[[], object]) -> None:
        """Do `work` for the agent if it is still waiting; the syscall returns 0 or -errno."""
        if not _seccomp.id_valid(self.listener, notif.id):
            return
        try:
            work()
        except OSError as exc:
            _seccomp.respond_error(self.listener, notif.id, exc.errno or errno.EIO)
            return
        _seccomp.respond_value(self.listener, notif.id, 0)

    # -- open family -------------------------------------------------------------

    def _open(
        self,
        notif: _seccomp.Notification,
        syscall: str,
        dirfd: int,
        path_ptr: int,
        flags: int,
        mode: int,
        resolve_flags: int = 0,
    ) -> None:
        tid = notif.pid
        raw = self.memory.read_cstring(tid, path_ptr)
        writes = bool(flags & _WRITE_FLAGS) or (flags & _O_TMPFILE) == _O_TMPFILE
        reads = (flags & os.O_ACCMODE) != os.O_WRONLY
        direct = not (writes or resolve_flags or flags & _O_PATH) and _plain_absolute(raw)
        if direct and self._open_direct(notif, syscall, raw, flags):
            return
        follow = not flags & os.O_NOFOLLOW
        node = self.resolve(tid, dirfd, raw, follow=follow, resolve_flags=resolve_flags)
        creating = node.error == errno.ENOENT and flags & os.O_CREAT
        if creating:
            node = self.resolve_parent(tid, dirfd, raw, resolve_flags=resolve_flags)
        try:
            checks = []
            if reads or not writes:
                checks.append((ActionType.FILE_READ, node.target))
            if writes:
                checks.append((ActionType.FILE_WRITE, node.target))
            response = self._decide_all(notif, syscall, checks)
            if not response.proceeds:
                self._refuse(notif, response, errno.EACCES)
                return
            if node.error:
                _seccomp.respond_error(self.listener, notif.id, node.error)
                return
            if not _seccomp.id_valid(self.listener, notif.id):
                return
            own_flags = (flags | os.O_CLOEXEC) & ~os.O_NOFOLLOW
            try:
                if creating:
                    fd = os.open(
                        node.name,
                        own_flags | os.O_NOFOLLOW,
                        mode & 0o7777 & ~self._umask(tid),
                        dir_fd=node.fd,
                    )
                else:
                    fd = self._reopen(node.fd, own_flags)
            except OSError as exc:
                _seccomp.respond_error(self.listener, notif.id, exc.errno or errno.EIO)
                return
            try:
                _seccomp.inject_fd_and_respond(
                    self.listener, notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC)
                )
            finally:
                os.close(fd)
        finally:
            node.close()

    def _open_direct(
        self, notif: _seccomp.Notification, syscall: str, raw: bytes, flags: int
    ) -> bool:
        """The common read: open it ourselves in one step, decide on what we got.

        Only for absolute paths with no symlink on the way (openat2 refuses
        them), so the normalised path is the real one; and only for regular
        files and directories, whose opening has no side effects.  False means
        "take the careful path" (symlinks, FIFOs, devices).
        """
        try:
            fd = _proc.openat2(
                AT_FDCWD, raw, flags | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, 0, _NO_LINKS
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return False
            # Nothing there (or not ours to open): still judge the attempt.
            response = self._decide(notif, syscall, ActionType.FILE_READ, _normal(raw))
            if not response.proceeds:
                self._refuse(notif, response, errno.EACCES)
            else:
                _seccomp.respond_error(self.listener, notif.id, exc.errno or errno.EIO)
            return True
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                return False
            node = self._checked(Resolved(_normal(raw)), st)
            response = self._decide(notif, syscall, ActionType.FILE_READ, node.target)
            if not response.proceeds:
                self._refuse(notif, response, errno.EACCES)
                return True
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & _SETFL_FLAGS)
            _seccomp.inject_fd_and_respond(
                self.listener, notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC)
            )
            return True
        finally:
            os.close(fd)

    @staticmethod
    def _reopen(path_fd: int, flags: int) -> int:
        if flags & _O_PATH:
            return os.dup(path_fd)
        st = os.fstat(path_fd)
        if stat.S_ISFIFO(st.st_mode) and not flags & os.O_NONBLOCK:
            # Opening a FIFO blocks until the other end opens; the supervisor
            # must never block, so open non-blocking and hand over a blocking fd.
            fd = os.open(f"/proc/self/fd/{path_fd}", flags | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return fd
        return os.open(f"/proc/self/fd/{path_fd}", flags)

    def _on_open(self, n: _seccomp.Notification, name: str) -> None:
        self._open(n, name, AT_FDCWD, n.args[0], n.args[1], n.args[2])

    def _on_creat(self, n: _seccomp.Notification, name: str) -> None:
        self._open(n, name, AT_FDCWD, n.args[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, n.args[1])

    def _on_openat(self, n: _seccomp.Notification, name: str) -> None:
        self._open(n, name, _signed32(n.args[0]), n.args[1], n.args[2], n.args[3])

    def _on_openat2(self, n: _seccomp.Notification, name: str) -> None:
        size = n.args[3]
        if size < 24:
            _seccomp.respond_error(self.listener, n.id, errno.EINVAL)
            return
        flags, mode, resolve = struct.unpack("<QQQ", self.memory.read(n.pid, n.args[2], 24))
        # RESOLVE_* flags narrow what the kernel may follow: resolve with them,
        # from the agent's own dirfd, so the answer is the one it asked for.
        self._open(n, name, _signed32(n.args[0]), n.args[1], flags, mode, resolve)

    # -- exec ---------------------------------------------------------------------

    def _exec(
        self,
        n: _seccomp.Notification,
        syscall: str,
        dirfd: int,
        path_ptr: int,
        argv_ptr: int,
        flags: int,
    ) -> None:
        tid = n.pid
        raw = self.memory.read_cstring(tid, path_ptr)
        if not raw and flags & AT_EMPTY_PATH:
            raw = b"/proc/%d/fd/%d" % (self._tgid_of(tid), dirfd)
            dirfd = AT_FDCWD
        argv = (
            [
                os.fsdecode(self.memory.read_cstring(tid, p, 131072))
                for p in self.memory.read_pointer_array(tid, argv_ptr)
            ]
            if argv_ptr
            else []
        )
        node = self.resolve(tid, dirfd, raw, follow=not flags & AT_SYMLINK_NOFOLLOW)
        try:
            checks = [
                (ActionType.SHELL_EXECUTE, " ".join(argv)),
                (ActionType.PROCESS_SPAWN, node.target),
            ]
            if node.fd >= 0 and self._is_script(node.fd):
                checks.append((ActionType.FILE_READ, node.target))
            response = self._decide_all(n, syscall, checks)
        finally:
            node.close()
        if not response.proceeds:
            self._refuse(n, response, errno.EACCES)
            return
        # The process image changes: cached memory fds and umask go stale.
        tgid = self._tgid_of(tid)
        self.forget_process(tgid)
        self.memory.forget(tid)
        # An exec cannot be done on the agent's behalf, so a racing thread
        # could swap argv after this check.  Remember what was allowed and
        # hold the new image to it at its first trapped syscall.
        self._execs[tgid] = _AllowedExec(argv, _cmdline(tgid), script=len(checks) > 2)
        _seccomp.respond_continue(self.listener, n.id)

    def _exec_as_decided(self, notif: _seccomp.Notification) -> bool:
        """First syscall after an allowed exec: is the running image the one decided on?

        False when it was swapped in a race and the policy refuses what really
        runs: that process is killed (an exec cannot be undone) and the
        syscall fails.
        """
        allowed = self._execs.pop(notif.pid)
        running = _cmdline(notif.pid)
        if running is None or running == allowed.before or allowed.matches(running):
            return True
        actual = " ".join(running)
        response = self._decide(notif, "execve", ActionType.SHELL_EXECUTE, actual)
        if response.proceeds:
            return True  # raced, but into something allowed anyway
        if response is not Response.KILL:  # KILL took the whole tree already
            with contextlib.suppress(ProcessLookupError):
                os.kill(notif.pid, signal.SIGKILL)
        _seccomp.respond_error(self.listener, notif.id, errno.EPERM)
        return False

    @staticmethod
    def _is_script(path_fd: int) -> bool:
        try:
            fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return os.pread(fd, 2, 0) == b"#!"
        except OSError:
            return False
        finally:
            os.close(fd)

    def _on_execve(self, n: _seccomp.Notification, name: str) -> None:
        self._exec(n, name, AT_FDCWD, n.args[0], n.args[1], 0)

    def _on_execveat(self, n: _seccomp.Notification, name: str) -> None:
        self._exec(n, name, _signed32(n.args[0]), n.args[1], n.args[2], n.args[4])

    # -- delete, create, move ------------------------------------------------------

    def _parent_op(
        self,
        n: _seccomp.Notification,
        syscall: str,
        action: ActionType,
        dirfd: int,
        path_ptr: int,
        work: Callable[[Resolved], object],
    ) -> None:
        raw = self.memory.read_cstring(n.pid, path_ptr)
        node = self.resolve_parent(n.pid, dirfd, raw)
        try:
            response = self._decide(n, syscall, action, node.target)
            if not response.proceeds:
                self._refuse(n, response, errno.EACCES)
            elif node.error:
                _seccomp.respond_error(self.listener, n.id, node.error)
            else:
                self._finish(n, lambda: work(node))
        finally:
            node.close()

    def _unlink(
        self, n: _seccomp.Notification, syscall: str, dirfd: int, ptr: int, flags: int
    ) -> None:
        def work(node: Resolved) -> None:
            if flags & AT_REMOVEDIR:
                os.rmdir(node.name, dir_fd=node.fd)
            else:
                os.unlink(node.name, dir_fd=node.fd)

        self._parent_op(n, syscall, ActionType.FILE_DELETE, dirfd, ptr, work)

    def _on_unlink(self, n: _seccomp.Notification, name: str) -> None:
        self._unlink(n, name, AT_FDCWD, n.args[0], 0)

    def _on_rmdir(self, n: _seccomp.Notification, name: str) -> None:
        self._unlink(n, name, AT_FDCWD, n.args[0], AT_REMOVEDIR)

    def _on_unlinkat(self, n: _seccomp.Notification, name: str) -> None:
        self._unlink(n, name, _signed32(n.args[0]), n.args[1], n.args[2])

    def _mkdir(
        self, n: _seccomp.Notification, syscall: str, dirfd: int, ptr: int, mode: int
    ) -> None:
        umask = self._umask(n.pid)
        self._parent_op(
            n,
            syscall,
            ActionType.FILE_WRITE,
            dirfd,
            ptr,
            lambda node: os.mkdir(node.name, mode & 0o7777 & ~umask, dir_fd=node.fd),
        )

    def _on_mkdir(self, n: _seccomp.Notification, name: str) -> None:
        self._mkdir(n, name, AT_FDCWD, n.args[0], n.args[1])

    def _on_mkdirat(self, n: _seccomp.Notification, name: str) -> None:
        self._mkdir(n, name, _signed32(n.args[0]), n.args[1], n.args[2])

    def _symlink(
        self, n: _seccomp.Notification, syscall: str, target_ptr: int, dirfd: int, ptr: int
    ) -> None:
        content = self.memory.read_cstring(n.pid, target_ptr)
        self._parent_op(
            n,
            syscall,
            ActionType.FILE_WRITE,
            dirfd,
            ptr,
            lambda node: os.symlink(content, node.name, dir_fd=node.fd),
        )

    def _on_symlink(self, n: _seccomp.Notification, name: str) -> None:
        self._symlink(n, name, n.args[0], AT_FDCWD, n.args[1])

    def _on_symlinkat(self, n: _seccomp.Notification, name: str) -> None:
        self._symlink(n, name, n.args[0], _signed32(n.args[1]), n.args[2])

    def _two_paths(
        self,
        n: _seccomp.Notification,
        syscall: str,
        olddirfd: int,
        old_ptr: int,
        newdirfd: int,
        new_ptr: int,
        *,
        linking: bool,
        flags: int,
    ) -> None:
        tid = n.pid
        old_raw = self.memory.read_cstring(tid, old_ptr)
        new_raw = self.memory.read_cstring(tid, new_ptr)
        if linking and flags & AT_SYMLINK_FOLLOW:
            source = self.resolve(tid, olddirfd, old_raw)
        else:
            source = self.resolve_parent(tid, olddirfd, old_raw)
            if linking and source.fd >= 0:
                # A hard link to a protected file must be judged as that file.
                try:
                    st = os.stat(source.name, dir_fd=source.fd, follow_symlinks=False)
                    protected = self.protected_inodes.get((st.st_dev, st.st_ino))
                    if protected is not None:
                        source.target = protected
                except OSError:
                    pass
        dest = self.resolve_parent(tid, newdirfd, new_raw)
        try:
            if linking:
                # Making a new name for a file is as good as reading it.
                checks = [
                    (ActionType.FILE_READ, source.target),
                    (ActionType.FILE_WRITE, dest.target),
                ]
            else:
                checks = [
                    (ActionType.FILE_MOVE, source.target),
                    (ActionType.FILE_WRITE, dest.target),
                ]
                if flags & RENAME_EXCHANGE:
                    checks += [
                        (ActionType.FILE_MOVE, dest.target),
                        (ActionType.FILE_WRITE, source.target),
                    ]
            response = self._decide_all(n, syscall, checks)
            if not response.proceeds:
                self._refuse(n, response, errno.EACCES)
                return
            for node in (source, dest):
                if node.error:
                    _seccomp.respond_error(self.listener, n.id, node.error)
                    return

            def work() -> None:
                if linking and flags & AT_SYMLINK_FOLLOW:
                    os.link(
                        f"/proc/self/fd/{source.fd}",
                        dest.name,
                        dst_dir_fd=dest.fd,
                        follow_symlinks=True,
                    )
                elif linking:
                    os.link(
                        source.name,
                        dest.name,
                        src_dir_fd=source.fd,
                        dst_dir_fd=dest.fd,
                        follow_symlinks=False,
                    )
                elif flags:
                    _proc.renameat2(source.fd, source.name, dest.fd, dest.name, flags)
                else:
                    os.rename(source.name, dest.name, src_dir_fd=source.fd, dst_dir_fd=dest.fd)

            self._finish(n, work)
        finally:
            source.close()
            dest.close()

    def _on_rename(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths(n, name, AT_FDCWD, n.args[0], AT_FDCWD, n.args[1], linking=False, flags=0)

    def _two_paths_at(
        self, n: _seccomp.Notification, name: str, *, linking: bool, flags: int
    ) -> None:
        """renameat/renameat2/linkat: (olddirfd, old, newdirfd, new[, flags])."""
        a = n.args
        self._two_paths(
            n, name, _signed32(a[0]), a[1], _signed32(a[2]), a[3], linking=linking, flags=flags
        )

    def _on_renameat(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths_at(n, name, linking=False, flags=0)

    def _on_renameat2(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths_at(n, name, linking=False, flags=n.args[4] & 0xFFFFFFFF)

    def _on_link(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths(n, name, AT_FDCWD, n.args[0], AT_FDCWD, n.args[1], linking=True, flags=0)

    def _on_linkat(self, n: _seccomp.Notification, name: str) -> None:
        self._two_paths_at(n, name, linking=True, flags=n.args[4] & 0xFFFFFFFF)

    # -- change an existing object ---------------------------------------------------

    def _object_op(
        self,
        n: _seccomp.Notification,
        syscall: str,
        action: ActionType,
        node: Resolved,
        work: Callable[[str], object],
    ) -> None:
        try:
            response = self._decide(n, syscall, action, node.target)
            if not response.proceeds:
                self._refuse(n, response, errno.EACCES)
            elif node.error:
                _seccomp.respond_error(self.listener, n.id, node.error)
            else:
                # Through the pinned fd, never through the name again.
                self._finish(n, lambda: work(f"/proc/self/fd/{node.fd}"))
        finally:
            node.close()

    def _path_object(
        self, n: _seccomp.Notification, dirfd: int, ptr: int, follow: bool = True
    ) -> Resolved:
        return self.resolve(n.pid, dirfd, self.memory.read_cstring(n.pid, ptr), follow=follow)

    def _fd_object(self, n: _seccomp.Notification, agent_fd: int) -> Resolved:
        """Take a copy of the agent's fd, so a dup2 behind our back changes nothing."""
        try:
            fd = _proc.pidfd_getfd(self._pidfd(n.pid), agent_fd)
        except OSError as exc:
            return Resolved(f"fd:{agent_fd}", error=exc.errno or errno.EBADF)
        try:
            return self._checked(Resolved(_proc.fd_path(fd), fd=fd), os.fstat(fd))
        except OSError as exc:
            os.close(fd)
            return Resolved(f"fd:{agent_fd}", error=exc.errno or errno.EBADF)

    def _on_truncate(self, n: _seccomp.Notification, name: str) -> None:
        length = n.args[1]
        self._object_op(
            n,
            name,
            ActionType.FILE_WRITE,
            self._path_object(n, AT_FDCWD, n.args[0]),
            lambda p: os.truncate(p, length),
        )

    def _chmod(self, n: _seccomp.Notification, syscall: str, node: Resolved, mode: int) -> None:
        self._object_op(
            n, syscall, ActionType.FILE_CHMOD, node, lambda p: os.chmod(p, mode & 0o7777)
        )

    def _on_chmod(self, n: _seccomp.Notification, name: str) -> None:
        self._chmod(n, name, self._path_object(n, AT_FDCWD, n.args[0]), n.args[1])

    def _on_fchmod(self, n: _seccomp.Notification, name: str) -> None:
        self._chmod(n, name, self._fd_object(n, _signed32(n.args[0])), n.args[1])

    def _on_fchmodat(self, n: _seccomp.Notification, name: str) -> None:
        self._chmod(n, name, self._path_object(n, _signed32(n.args[0]), n.args[1]), n.args[2])

    def _on_fchmodat2(self, n: _seccomp.Notification, name: str) -> None:
        flags = n.args[3]
        if flags & AT_EMPTY_PATH:
            node = self._fd_object(n, _signed32(n.args[0]))
        else:
            node = self._path_object(
                n, _signed32(n.args[0]), n.args[1], follow=not flags & AT_SYMLINK_NOFOLLOW
            )
        self._chmod(n, name, node, n.args[2])

    def _chown(
        self, n: _seccomp.Notification, syscall: str, node: Resolved, uid: int, gid: int
    ) -> None:
        uid, gid = _signed32(uid), _signed32(gid)
        self._object_op(n, syscall, ActionType.FILE_CHMOD, node, lambda p: os.chown(p, uid, gid))

    def _on_chown(self, n: _seccomp.Notification, name: str) -> None:
        self._chown(n, name, self._path_object(n, AT_FDCWD, n.args[0]), n.args[1], n.args[2])

    def _on_lchown(self, n: _seccomp.Notification, name: str) -> None:
        node = self._path_object(n, AT_FDCWD, n.args[0], follow=False)
        self._chown(n, name, node, n.args[1], n.args[2])

    def _on_fchown(self, n: _seccomp.Notification, name: str) -> None:
        self._chown(n, name, self._fd_object(n, _signed32(n.args[0])), n.args[1], n.args[2])

    def _on_fchownat(self, n: _seccomp.Notification, name: str) -> None:
        flags = n.args[4]
        if flags & AT_EMPTY_PATH:
            node = self._fd_object(n, _signed32(n.args[0]))
        else:
            node = self._path_object(
                n, _signed32(n.args[0]), n.args[1], follow=not flags & AT_SYMLINK_NOFOLLOW
            )
        self._chown(n, name, node, n.args[2], n.args[3])

    # -- network and memory ---------------------------------------------------------

    def _decided_address(
        self, n: _seccomp.Notification, syscall: str, ptr: int, length: int
    ) -> bytes | None:
        """The sockaddr the agent named, copied once, if the policy lets it through.

        None when the syscall is already answered: no address (CONTINUE, there
        is nothing to decide) or refused.  The caller uses these very bytes.
        """
        if ptr == 0 or length < 2:
            _seccomp.respond_continue(self.listener, n.id)
            return None
        data = self.memory.read(n.pid, ptr, min(length, 128))
        response = self._judge_sockaddr(n, syscall, data)
        if not response.proceeds:
            self._refuse(n, response, errno.EPERM)
            return None
        return data

    def _judge_sockaddr(self, n: _seccomp.Notification, syscall: str, data: bytes) -> Response:
        target = describe_sockaddr(data, lambda raw: self._unix_target(n.pid, raw))
        return self._decide(n, syscall, ActionType.NETWORK_CONNECT, target)

    def _agent_socket(self, n: _seccomp.Notification) -> socket.socket | None:
        """A duplicate of the socket in the syscall's first argument; None if answered."""
        try:
            fd = _proc.pidfd_getfd(self._pidfd(n.pid), _signed32(n.args[0]))
        except OSError as exc:
            _seccomp.respond_error(self.listener, n.id, exc.errno or errno.EBADF)
            return None
        return socket.socket(fileno=fd)

    def _unix_target(self, tid: int, raw: bytes) -> str:
        node = self.resolve_parent(tid, AT_FDCWD, raw)
        node.close()
        return node.target

    def _on_connect(self, n: _seccomp.Notification, name: str) -> None:
        self._ip_socket_call(n, name, connect=True)

    def _on_bind(self, n: _seccomp.Notification, name: str) -> None:
        self._ip_socket_call(n, name, connect=False)

    def _ip_socket_call(self, n: _seccomp.Notification, syscall: str, *, connect: bool) -> None:
        """connect/bind: decide on the address we copied, and use that very copy.

        For IP sockets the supervisor takes a duplicate of the agent's socket
        (pidfd_getfd) and makes the call itself with the address it decided
        on, so a thread rewriting the sockaddr after the check changes
        nothing.  Unix sockets keep CONTINUE (their path would have to be
        re-resolved in the agent's cwd); the README says so.
        """
        data = self._decided_address(n, syscall, n.args[1], n.args[2] & 0xFFFFFFFF)
        if data is None:
            return
        address = ip_address_tuple(data)
        if address is None:
            _seccomp.respond_continue(self.listener, n.id)
            return
        sock = self._agent_socket(n)
        if sock is None:
            return
        if not connect:
            try:
                sock.bind(address)
            except OSError as exc:
                _seccomp.respond_error(self.listener, n.id, exc.errno or errno.EINVAL)
            else:
                _seccomp.respond_value(self.listener, n.id, 0)
            finally:
                sock.close()
            return
        self._connect(n, sock, address)

    def _connect(
        self, n: _seccomp.Notification, sock: socket.socket, address: tuple[object, ...]
    ) -> None:
        fd = sock.fileno()
        status_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        agent_blocks = not status_flags & os.O_NONBLOCK
        if agent_blocks:
            # The flag lives in the shared open file: set it only for our call.
            fcntl.fcntl(fd, fcntl.F_SETFL, status_flags | os.O_NONBLOCK)
        try:
            err = sock.connect_ex(address)
        finally:
            if agent_blocks:
                fcntl.fcntl(fd, fcntl.F_SETFL, status_flags)
        if err != errno.EINPROGRESS or not agent_blocks or self._wait_writable is None:
            sock.close()
            if err:
                _seccomp.respond_error(self.listener, n.id, err)
            else:
                _seccomp.respond_value(self.listener, n.id, 0)
            return

        # A blocking connect in progress: the agent keeps waiting in its
        # syscall while the loop waits for the handshake.
        def done() -> None:
            result = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            sock.close()
            if result:
                _seccomp.respond_error(self.listener, n.id, result)
            else:
                _seccomp.respond_value(self.listener, n.id, 0)

        def timed_out() -> None:
            sock.close()
            _seccomp.respond_error(self.listener, n.id, errno.ETIMEDOUT)

        self._wait_writable(fd, done, timed_out, CONNECT_TIMEOUT)

    def _on_sendto(self, n: _seccomp.Notification, name: str) -> None:
        """A datagram to an address: for IP, sent by the supervisor with the copied address.

        Like connect, the address the agent named is read once, decided on,
        and used; a thread rewriting it afterwards changes nothing.  The
        payload is copied too (at most 64 KiB, a UDP datagram's limit).
        """
        data = self._decided_address(n, name, n.args[4], n.args[5] & 0xFFFFFFFF)
        if data is None:
            return
        address = ip_address_tuple(data)
        length = n.args[2]
        if address is None or length > _MAX_DATAGRAM:
            _seccomp.respond_continue(self.listener, n.id)
            return
        payload = self.memory.read(n.pid, n.args[1], length) if length else b""
        self._send_datagram(n, payload, n.args[3] & 0xFFFFFFFF, address)

    def _send_datagram(
        self, n: _seccomp.Notification, payload: bytes, flags: int, address: tuple[object, ...]
    ) -> None:
        """Send on a duplicate of the agent's socket (first argument); answer with the count."""
        sock = self._agent_socket(n)
        if sock is None:
            return
        try:
            # Never block the loop: a full socket buffer is EAGAIN for the agent.
            sent = sock.sendto(payload, flags | socket.MSG_DONTWAIT, address)
        except OSError as exc:
            _seccomp.respond_error(self.listener, n.id, exc.errno or errno.EIO)
        else:
            _seccomp.respond_value(self.listener, n.id, sent)
        finally:
            sock.close()

    def _on_sendmsg(self, n: _seccomp.Notification, name: str) -> None:
        """sendmsg with an address: like sendto, sent by the supervisor for IP datagrams.

        Messages with control data (ancillary data, e.g. fds over unix
        sockets) and unix destinations keep CONTINUE after the decision.
        """
        (name_ptr, name_len, iov_ptr, iov_count, _control_ptr, control_len, _flags) = (
            _MSGHDR.unpack(self.memory.read(n.pid, n.args[1], _MSGHDR.size))
        )
        data = self._decided_address(n, name, name_ptr, name_len)
        if data is None:
            return
        address = ip_address_tuple(data)
        payload = None
        if address is not None and control_len == 0:
            payload = self._gather(n.pid, iov_ptr, iov_count)
        if address is None or payload is None:
            _seccomp.respond_continue(self.listener, n.id)
            return
        self._send_datagram(n, payload, n.args[2] & 0xFFFFFFFF, address)

    def _gather(self, tid: int, iov_ptr: int, iov_count: int) -> bytes | None:
        """The bytes an iovec array points at; None past 64 KiB or 1024 pieces."""
        if iov_count == 0:
            return b""
        if iov_count > 1024:
            return None
        pieces: list[bytes] = []
        total = 0
        for base, length in struct.iter_unpack(
            "<QQ", self.memory.read(tid, iov_ptr, 16 * iov_count)
        ):
            total += length
            if total > _MAX_DATAGRAM:
                return None
            if length:
                pieces.append(self.memory.read(tid, base, length))
        return b"".join(pieces)

    def _on_sendmmsg(self, n: _seccomp.Notification, name: str) -> None:
        count = min(n.args[2] & 0xFFFFFFFF, 1024)
        for i in range(count):
            # struct mmsghdr: a 56-byte msghdr and an unsigned int, padded to 64.
            name_ptr, name_len = struct.unpack(
                "<QI", self.memory.read(n.pid, n.args[1] + 64 * i, 12)
            )
            if name_ptr == 0 or name_len < 2:
                continue
            data = self.memory.read(n.pid, name_ptr, min(name_len, 128))
            response = self._judge_sockaddr(n, name, data)
            if not response.proceeds:
                self._refuse(n, response, errno.EPERM)
                return
        _seccomp.respond_continue(self.listener, n.id)

    def _on_process_vm_readv(self, n: _seccomp.Notification, name: str) -> None:
        response = self._decide(n, name, ActionType.MEMORY_ACCESS, str(_signed32(n.args[0])))
        if not response.proceeds:
            self._refuse(n, response, errno.EPERM)
            return
        _seccomp.respond_continue(self.listener, n.id)

    def _on_umask(self, n: _seccomp.Notification, name: str) -> None:
        # Only watched so that the cached umask for emulated creates stays right.
        self._umasks.pop(self._tgid_of(n.pid), None)
        _seccomp.respond_continue(self.listener, n.id)

    def _on_refused(self, n: _seccomp.Notification, name: str) -> None:
        self.judge.refuse_always(name, n.pid)
        _seccomp.respond_error(self.listener, n.id, errno.EPERM)


def ip_address_tuple(data: bytes) -> tuple[object, ...] | None:
    """The Python address of an AF_INET/AF_INET6 sockaddr; None for other families."""
    if len(data) < 2:
        return None
    family = struct.unpack_from("<H", data)[0]
    if family == socket.AF_INET and len(data) >= 8:
        return (socket.inet_ntop(socket.AF_INET, data[4:8]), struct.unpack_from(">H", data, 2)[0])
    if family == socket.AF_INET6 and len(data) >= 28:
        port, flowinfo = struct.unpack_from(">HI", data, 2)
        scope_id = struct.unpack_from("<I", data, 24)[0]
        return (socket.inet_ntop(socket.AF_INET6, data[8:24]), port, flowinfo, scope_id)
    return None


def describe_sockaddr(data: bytes, unix_path: Callable[[bytes], str]) -> str:
    """The `network_connect` target for a raw sockaddr (DESIGN.md 1.2)."""
    import ipaddress

    if len(data) < 2:
        return "invalid:"
    family = struct.unpack_from("<H", data)[0]
    if family == socket.AF_INET and len(data) >= 8:
        port = struct.unpack_from(">H", data, 2)[0]
        return f"{ipaddress.IPv4Address(data[4:8])}:{port}"
    if family == socket.AF_INET6 and len(data) >= 24:
        port = struct.unpack_from(">H", data, 2)[0]
        return f"[{ipaddress.IPv6Address(data[8:24])}]:{port}"
    if family == socket.AF_UNIX:
        path = data[2:]
        if path.startswith(b"\0"):
            return "unix:@" + path[1:].rstrip(b"\0").decode("utf-8", "backslashreplace")
        path = path.split(b"\0", 1)[0]
        return "unix:" + (unix_path(path) if path else "")
    if family == socket.AF_NETLINK and len(data) >= 8:
        return f"netlink:{struct.unpack_from('<I', data, 4)[0]}"
    return f"family{family}:"
