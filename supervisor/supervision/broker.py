"""The broker: the agent's own hands, for the work the supervisor decides.

The supervisor decides, but it must not act with its own rights: as root it
would open, unlink or chmod what the agent itself could never reach.  So
every file operation done on the agent's behalf is done here, in a small
process that holds exactly the agent's rights: forked by the trampoline
inside the agent's namespaces, after the agent's credentials are set and its
capabilities dropped, under its Landlock domain, but before the seccomp
filter.  It is also the init (PID 1) of the agent's PID namespace.

One exchange per mediated syscall:

1. RESOLVE (request and reply): the broker resolves the paths the agent
   named (every path of one syscall at once: a rename's two parents), each
   from the agent's own cwd or dirfd (passed as an fd) or from the root of
   the agent's mount namespace, and keeps each result pinned under a handle
   (or, for what only needs to be looked at, closes it at once).  It
   answers with what the policy needs: the real path and a stat.
2. The supervisor decides on that path.
3. One operation on the pinned handles (fire and forget): reopen and inject
   the fd with ADDFD, create, unlink, rename, link, chmod, ... The broker
   answers the agent's syscall itself, with the operation's result, on its
   copy of the seccomp listener.  Or DROP, when the policy refused.

A racing thread can rewrite the path in the agent's memory, but what was
resolved is what was decided on and what is acted on.  Path traversal,
Landlock and DAC are the kernel's, for the agent's credentials, because the
broker has nothing more.  The broker never blocks on a FIFO or a device:
what it looks up is only pinned (O_PATH) unless it is a regular file or a
directory, and devices are opened non-blocking.  A FIFO the agent opens
without O_NONBLOCK waits for its other end, as the kernel makes it wait: in
a helper process the broker forks for that one open (`Broker._rendezvous`),
while the broker serves on.  Signals are blocked while it works, so an
interrupted ADDFD can never complete an open() with 0.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import marshal
import mmap
import os
import select
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ..kernel import agentpath
from ..kernel import fastpath as _fastpath
from ..kernel import landlock as _landlock
from ..kernel import namespaces as _namespaces
from ..kernel import proc as _proc
from ..kernel import seccomp as _seccomp

AT_FDCWD = -100

# Requests.  RESOLVE, CONNECT, LIST and UNIX_SEND have a reply.
RESOLVE = 1
CONNECT = 17
# The paths beneath a directory of a pinned one (the reply brings them in a
# memfd): what a move of that directory carries to new names.
LIST = 32
MKNOD = 33  # a file, FIFO or socket (or a device, which fails: no CAP_MKNOD) by name
# /dev/tty: the calling process's controlling terminal, which the broker (no
# terminal of its own) opens by what it is: the agent's relay pty, or a pty
# of the agent's own devpts, checked by its device number.
TERMINAL = 34
# bind() the agent's unix socket (sent along) in the directory decided on
# (pinned): a bare name there, a path with a slash from the agent's cwd (sent
# along for a relative path) and confined to beneath that directory; with the
# agent's umask.
BIND_UNIX = 35
# Unix datagrams, on the agent's socket (sent along): each to the socket file
# pinned under a handle (which stays pinned: the supervisor drops it), to an
# abstract name, or to the connected peer, with the fds it passes (sent along
# too).  The reply is the bytes each message sent and the errno of the first
# not sent: the supervisor answers the agent, or sends the rest again later
# (a full receiver, for a socket that blocks).
UNIX_SEND = 36
DROP = 2
INJECT = 3  # ADDFD an fd opened by RESOLVE(open=flags)
REOPEN = 4  # reopen a pinned object with the agent's flags, then ADDFD
CREATE = 5  # open(name, O_CREAT...) in a pinned directory, then ADDFD
UNLINK = 6
MKDIR = 7
SYMLINK = 8
RENAME = 9
LINK = 10
CHMOD = 11
CHOWN = 12
TRUNCATE = 13
FD_CHMOD = 14  # on an fd of the agent's (sent along)
FD_CHOWN = 15
ERROR = 16  # answer the syscall with an errno (keeps the order of answers)
BIND = 18  # on the agent's socket (sent along), with the address decided on
SENDTO = 19  # a datagram: the payload and address decided on
SENDMMSG = 20  # several of them; the answer is how many were sent
XATTR = 21  # set (or, with no value, remove) an extended attribute of a pinned object
FD_XATTR = 22
UTIMES = 23  # utimensat on a pinned object
FD_UTIMES = 24
FD_IOCTL = 25  # an inode-flags ioctl on an fd of the agent's, with the argument decided on
LISTEN = 26  # on the agent's socket (sent along): the very socket that was decided on
SPILLED = 27  # the real request is in the memfd sent along (too large for one packet)
# The native path's allow cache (no reply, no notification): what the
# supervisor's judge allowed without a record, and when that cache is cleared.
ALLOW = 28
FORGET = 29
# What an exec the supervisor allowed may run (no reply): the native path
# checks that process's first syscall against it (`BrokerClient.expect_exec`).
EXPECT_EXEC = 30
# The protected-inode walk's answer (no reply): the native path then judges a
# multiply-linked file under its own path unless it is one of these.
PROTECT = 31
_INODE_KEY = struct.Struct("=QQ")
# The supervisor's answer to a read the read lane forwarded (no reply): by the
# id it came with (its event's number and fd), allow or refuse
# (`_fastpath.lane_answer`).
FAN_ANSWER = 37

# RESOLVE kinds.
OBJECT = 0  # O_PATH of what the path names
PARENT = 1  # O_PATH of the directory that holds its last component
OPEN = 2  # open it for reading right away (regular files and directories only)
# The directory where open(O_CREAT) without O_EXCL makes the file `raw` names,
# and the name it makes (`Pinned.name`): a final symlink leading nowhere is
# followed to where it leads, as the kernel follows it (`Broker._site`).
CREATED = 3

# What F_SETFL may change; used to drop the O_NONBLOCK added for safety.
_SETFL_FLAGS = (
    os.O_APPEND
    | os.O_NONBLOCK
    | getattr(os, "O_DIRECT", 0)
    | getattr(os, "O_NOATIME", 0)
    | getattr(os, "O_ASYNC", 0)
)
_MAX_MESSAGE = 16384
# Longer command lines are checked by the supervisor, as every one was before.
_MAX_EXPECTED_CMDLINE = 8192
# A request larger than one packet (a 64 KiB datagram or xattr value) goes in
# a memfd; the hot path keeps its small receive buffer.
_SPILL_OVER = _MAX_MESSAGE - 256
_MAX_SPILL = 8 << 20
_MAX_FDS = 3
# The most fds one packet takes (the kernel's SCM_MAX_FD): a UNIX_SEND
# brings the agent's socket, the fds it passes and maybe a spilled request.
SCM_MAX_FD = 253
MAX_PASSED_FDS = SCM_MAX_FD - 2
# A move of a larger tree is not judged entry by entry: it fails (closed).
MAX_LISTED = 250_000
QUIESCE_LIMIT = 60.0  # seconds the native path waits, after a LIST, for the move
_MAX_LISTING = 64 << 20
_FDS_SPACE = socket.CMSG_SPACE(SCM_MAX_FD * 4)  # room for the most one packet brings
# FIFO opens waiting for their other end, each in a helper (`Broker._rendezvous`):
# at most this many at once (one more fails with EAGAIN), each checked this
# often for a caller that stopped waiting (a signal, or its exit).
MAX_WAITING_OPENS = 64
WAITING_CHECK = 0.05
_HELPER_EXIT_WAIT = 1.0  # seconds for a SIGKILLed helper to be gone (it is at once)
_WAITING_CHECK_MS = int(WAITING_CHECK * 1000)
_CREATE_ATTEMPTS = 8  # O_CREAT of a name made and removed again meanwhile
REPLY_TIMEOUT = 10.0
_REPLY_TIMEOUT_MS = int(REPLY_TIMEOUT * 1000)
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_RIGHTS = socket.SCM_RIGHTS


# One unix datagram of a UNIX_SEND: (payload, where it goes: the handle of the
# socket file pinned, an abstract name (b"\0name") or None for the connected
# peer, how many of the fds sent along it passes).
UnixDatagram = tuple[bytes, int | bytes | None, int]

# A read the supervisor already allowed, if it opens this very file again:
# (real path, st_dev, st_ino, more than one link, notification id, cloexec, F_SETFL
# flags or -1).  The broker hands it over at once (`Pinned.injected`); anything
# else found is answered as usual, for the supervisor to decide.
Expected = tuple[str, int, int, bool, int, bool, int]
# What /proc/self and /proc/thread-self are for the agent's thread, as the
# broker's PID namespace numbers it (b"12", b"12/task/13"): see `agentpath`.
AgentSelf = tuple[bytes, bytes]
# One path of a RESOLVE request: (anchor index among the fds sent, -1 for the
# agent's root; raw; kind; open flags; RESOLVE_* flags; follow; want_script;
# keep; an Expected read or None; AgentSelf or None).
Lookup = tuple[int, bytes, int, int, int, bool, bool, bool, Expected | None, AgentSelf | None]
# The raw name of a lookup for its anchor itself (an object the supervisor took
# from the agent's own fd): no name the agent can give has a NUL.
ANCHOR_ITSELF = b"\0"
# The error of a lookup that met a magic link (a symlink into /proc/self, say)
# and had no AgentSelf to walk it with: ask again with one.  Never an errno.
THROUGH_MAGIC_LINK = 1 << 16


class BrokerGone(OSError):
    """The broker died or stopped answering: every pending operation fails."""


@dataclass(slots=True)
class Pinned:
    """What RESOLVE found: a handle in the broker, and what the policy needs to know."""

    handle: int = -1
    path: str = ""
    error: int = 0
    mode: int = 0
    dev: int = 0
    ino: int = 0
    nlink: int = 0
    script: bool = False
    injected: bool = False  # opened for reading and handed to the agent already (`Expected`)
    # Reached through a symlink to the agent's own /proc/self/fd/N: an fd it holds.
    held: bool = False
    # CREATED: the last component to make in the directory pinned, as spelled
    # (a trailing slash kept: the kernel's "must be a directory").
    name: bytes = b""
    # want_script: what the kernel would open next to run this file, as
    # spelled there (a #! script's interpreter, an ELF's PT_INTERP); more than
    # one when the ELF header reads both as 64-bit and as 32-bit.
    interpreters: tuple[bytes, ...] = ()
    # want_script: a regular file the broker could not read, so what it names
    # next is not known (a mode 0333 program: run, never read).
    unread: bool = False


def split_name(raw: bytes) -> tuple[bytes, bytes]:
    """(the directory that holds `raw`'s last component, that component as the
    agent spelled it, its trailing slashes kept): `a/b/` is (b"a", b"b/"), `b`
    is (b".", b"b"), `/b` is (b"/", b"b").

    The slashes stay on the name the syscall is made with: they mean "this
    must be a directory" to the kernel (`rm f/` is ENOTDIR, `ln -s x y/`
    ENOENT).  For a `raw` whose last component is a name (not empty, ".",
    ".." or "/" itself).
    """
    head, slash, _name = raw.rstrip(b"/").rpartition(b"/")
    if not slash:
        return b".", raw
    return head or b"/", raw[len(head) + 1 :]


# -- the supervisor's side -----------------------------------------------------------


class BrokerClient:
    """Talks to one agent's broker over a SOCK_SEQPACKET pair."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self._seq = 0
        self.broken = False
        # Built once: every resolution waits on it.
        self._replies = select.poll()
        self._replies.register(channel, select.POLLIN)

    def close(self) -> None:
        self.channel.close()

    def _break(self) -> None:
        """The broker died or stopped answering: we are done with it, and it is told so.

        With the native path the broker decides on its own, on its copy of
        the policy, and a broker that stalled (an open waiting out the
        agent's own file lease) comes back.  Marked broken, it would no longer
        hear of a reload or a cleared cache, and keep allowing what the
        supervisor (which now fails everything with EIO) refuses.  The hang-up
        ends its native path, and with it the agent's namespace.
        """
        self.broken = True
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RDWR)

    def _send(self, message: tuple[object, ...], fds: list[int]) -> None:
        if self.broken:
            raise BrokerGone(errno.EIO, "the agent's broker is gone")
        data = marshal.dumps(message)  # type: ignore[arg-type]  # plain values only
        if len(data) <= _SPILL_OVER:  # the common case: one packet
            try:
                if fds:
                    self.channel.sendmsg([data], [(_SOL_SOCKET, _SCM_RIGHTS, _fd_array(fds))])
                else:
                    self.channel.send(data)
            except OSError as exc:
                self._break()
                raise BrokerGone(errno.EIO, f"the agent's broker is gone: {exc}") from exc
            return
        spill = _spill(data)  # an OSError here fails this request; the channel is fine
        try:
            data = marshal.dumps((SPILLED, message[0], message[1]))  # type: ignore[arg-type]
            socket.send_fds(self.channel, [data], [*fds, spill])
        except OSError as exc:
            self._break()
            raise BrokerGone(errno.EIO, f"the agent's broker is gone: {exc}") from exc
        finally:
            os.close(spill)

    def resolve(
        self,
        anchor: int,
        raw: bytes,
        kind: int,
        *,
        flags: int = 0,
        resolve_flags: int = 0,
        follow: bool = True,
        want_script: bool = False,
        keep: bool = True,
        expected: Expected | None = None,
        agent: AgentSelf | None = None,
    ) -> Pinned:
        """Pin what `raw` names, from `anchor` (an fd) or the agent's root (-1).

        With `keep` False it is only looked at: nothing stays pinned (handle -1).
        """
        index, anchors = (0, [anchor]) if anchor >= 0 else (-1, [])
        lookup = (
            index,
            raw,
            kind,
            flags,
            resolve_flags,
            follow,
            want_script,
            keep,
            expected,
            agent,
        )
        (answers,) = self._call(RESOLVE, ((lookup,),), anchors)
        return Pinned(*answers[0]) if answers else Pinned(error=errno.EIO)

    def resolve_all(self, lookups: Sequence[Lookup], anchors: Sequence[int]) -> list[Pinned]:
        """Several `resolve`s in one exchange; each lookup names its anchor by index."""
        if len(anchors) > _MAX_FDS:
            raise ValueError(f"at most {_MAX_FDS} anchors in one request")
        (answers,) = self._call(RESOLVE, (tuple(lookups),), list(anchors))
        found = [Pinned(*answer) for answer in answers[: len(lookups)]]
        # An answer short of lookups (never sent by a working broker): failed, not trusted.
        found += [Pinned(error=errno.EIO) for _ in range(len(lookups) - len(found))]
        return found

    def connect(self, sock: int, address: object, handle: int = -1) -> int:
        """connect() the agent's socket (a duplicate) with the agent's rights; the errno.

        `address` is a Python socket address; for a unix socket, `handle`
        names the pinned socket file instead, which is reached through its fd.
        A blocking socket is connected non-blocking: EINPROGRESS means the
        supervisor waits for the handshake in its loop.
        """
        (err,) = self._call(CONNECT, (address, handle), [sock])
        return err if isinstance(err, int) else errno.EIO

    def unix_send(
        self,
        notif_id: int,
        sock: int,
        messages: Sequence[UnixDatagram],
        flags: int,
        passed: Sequence[int],
    ) -> tuple[list[int], int]:
        """The broker sends `messages` on `sock` (a duplicate of the agent's unix
        datagram socket) for syscall `notif_id`, never waiting: the bytes each
        message sent, in order, and the errno of the first that was not (0
        when all were).  `passed` are the fds the messages pass, in order."""
        counts, err = self._call(UNIX_SEND, (notif_id, tuple(messages), flags), [sock, *passed])
        counts = counts if isinstance(counts, tuple) else (None,)
        sent = [count for count in counts if isinstance(count, int)]
        well_formed = len(sent) == len(counts) <= len(messages) and isinstance(err, int)
        if not well_formed or not (err or sent):
            return [], errno.EIO  # never from a working broker: nothing is taken as sent
        return sent, err

    def list_tree(self, parent: int, name: bytes) -> list[str]:
        """The paths beneath directory `name` in pinned directory `parent`,
        relative to it, as the agent may list them (symlinks not followed).

        Raises OSError when the tree cannot be listed whole: a directory the
        agent may not read, or more than MAX_LISTED entries.
        """
        fds: list[int] = []
        err, count = self._call(LIST, (parent, name), [], brought=fds)
        if err:
            for fd in fds:
                os.close(fd)
            raise OSError(err, os.strerror(err))
        if len(fds) != 1 or not isinstance(count, int):
            for fd in fds:
                os.close(fd)
            self._break()
            raise BrokerGone(errno.EIO, "the agent's broker answered LIST without its listing")
        try:
            listing = _read_all(fds[0], _MAX_LISTING)
        finally:
            os.close(fds[0])
        return os.fsdecode(listing).split("\0") if count else []

    def _call(
        self,
        op: int,
        request: tuple[object, ...],
        fds: list[int],
        *,
        brought: list[int] | None = None,
    ) -> tuple[Any, ...]:
        """A request with a reply: the broker answers in order, so the next reply is ours."""
        self._seq += 1
        self._send((op, self._seq, *request), fds)
        return self._reply(brought)

    def _reply(self, brought: list[int] | None = None) -> tuple[Any, ...]:
        """The reply to request `_seq`, without its sequence number; with
        `brought`, the fds that came with it go there."""
        if not self._replies.poll(_REPLY_TIMEOUT_MS):
            self._break()
            raise BrokerGone(errno.EIO, "the agent's broker stopped answering")
        try:
            if brought is None:  # the hot path: no fds come with it
                data = self.channel.recv(_MAX_MESSAGE)
            else:
                data, ancillary, _flags, _addr = self.channel.recvmsg(_MAX_MESSAGE, _FDS_SPACE)
                brought.extend(_received_fds(ancillary))
        except OSError as exc:
            self._break()
            raise BrokerGone(errno.EIO, f"the agent's broker is gone: {exc}") from exc
        if not data:
            self._break()
            raise BrokerGone(errno.EIO, "the agent's broker is gone")
        reply: tuple[Any, ...] = marshal.loads(data)
        if reply[0] != self._seq:
            self._break()
            raise BrokerGone(errno.EIO, "the agent's broker answered out of turn")
        return reply[1:]

    def act(self, op: int, notif_id: int, *args: object, fds: tuple[int, ...] = ()) -> None:
        """Have the broker do `op` and answer syscall `notif_id` itself."""
        self._send((op, notif_id, *args), list(fds))

    def drop(self, pinned: Pinned) -> None:
        if pinned.handle >= 0 and not self.broken:
            with contextlib.suppress(BrokerGone):
                self._send((DROP, pinned.handle), [])
        pinned.handle = -1

    def allow(self, path: bytes, bits: int) -> None:
        """Tell the native path: these actions on `path` are allowed without a record."""
        if not self.broken:
            with contextlib.suppress(BrokerGone):
                self._send((ALLOW, path, bits), [])

    def expect_exec(self, notif_id: int, file: tuple[int, int], argv: Sequence[str]) -> None:
        """Tell the native path what exec `notif_id` was allowed to run: the
        executable's (st_dev, st_ino) and its argv.  The first syscall of the
        new image is then checked there, and forwarded only if it differs."""
        cmdline = b"".join(os.fsencode(arg) + b"\0" for arg in argv)
        if not self.broken and len(cmdline) <= _MAX_EXPECTED_CMDLINE:
            with contextlib.suppress(BrokerGone):
                self._send((EXPECT_EXEC, notif_id, file[0], file[1], cmdline), [])

    def protect(self, inodes: Iterable[tuple[int, int]]) -> None:
        """Tell the native path the protected inodes, (st_dev, st_ino): all of them."""
        if not self.broken:
            keys = b"".join(_INODE_KEY.pack(dev, ino) for dev, ino in inodes)
            with contextlib.suppress(BrokerGone):
                # (0 in the place of a request's id: a long list is spilled to a memfd.)
                self._send((PROTECT, 0, keys), [])

    def forget(self, policy_changed: bool) -> None:
        """The judge cleared its allow cache: so does the native path.

        After a policy reload the broker's own copy of the judge is stale too:
        it decides nothing more, and every miss goes to the supervisor.
        """
        if not self.broken:
            with contextlib.suppress(BrokerGone):
                self._send((FORGET, policy_changed), [])


# -- the broker's side -----------------------------------------------------------------


class Broker:
    """Serves one supervisor, inside the agent's namespaces and with its rights."""

    def __init__(self, channel: socket.socket, listener: int, terminal: int = -1) -> None:
        self.channel = channel
        self.listener = listener
        self.terminal = terminal  # the slave of the agent's relay pty, or -1
        self.pinned: dict[int, int] = {}  # handle -> fd (the handle is the fd number)
        # After a LIST, until the supervisor's next request that is not a mirror
        # of its caches: the native path answers nothing meanwhile, so the tree
        # listed is the tree moved (`_serve_natively`).
        self.quiesced = False
        self._own_proc = f"/proc/{os.getpid()}"  # (made in the broker itself: run_broker)
        # (st_dev, st_ino) of the broker's own channel, listener and pidfds.
        self.private: set[tuple[int, int]] = set()
        # A procfs other than the agent's /proc resolves `self` as the broker:
        # nothing on it is the agent's (none is left where the agent has a
        # mount namespace: `namespaces.hide_other_procfs`).
        self._other_procfs = _namespaces.other_procfs_devices()
        # Every procfs here, for the native path (_fastpath's on_proc), which
        # serves nothing on any of them.
        self.procfs_devices = tuple(self._other_procfs)
        with contextlib.suppress(OSError):
            self.procfs_devices += (os.stat("/proc").st_dev,)
        # FIFO opens waiting for their other end: a helper's pidfd -> the
        # notification it answers, and whether it opens for writing
        # (`_rendezvous`, `check_waiting`).
        self.waiting: dict[int, tuple[int, bool]] = {}
        self._helpers: dict[int, int] = {}  # a waiting helper's pidfd -> its pid
        self._checked_waiting = 0.0  # when `check_waiting` last looked
        self._ops: dict[int, Callable[[int, list[int], list[object], list[int]], None]] = {
            INJECT: self._inject,
            REOPEN: self._reopen,
            TERMINAL: self._controlling_terminal,
            CREATE: self._create,
            UNLINK: self._unlink,
            MKDIR: self._mkdir,
            MKNOD: self._mknod,
            SYMLINK: self._symlink,
            RENAME: self._rename,
            LINK: self._link,
            CHMOD: self._chmod,
            CHOWN: self._chown,
            TRUNCATE: self._truncate,
            FD_CHMOD: self._fd_chmod,
            FD_CHOWN: self._fd_chown,
            ERROR: self._error,
            BIND: self._bind,
            SENDTO: self._sendto,
            SENDMMSG: self._sendmmsg,
            XATTR: self._xattr,
            FD_XATTR: self._fd_xattr,
            UTIMES: self._utimes,
            FD_UTIMES: self._fd_utimes,
            FD_IOCTL: self._fd_ioctl,
            LISTEN: self._listen,
            BIND_UNIX: self._bind_unix,
        }

    def serve_one(self) -> bool:
        """Handle one request; False when the supervisor hung up.

        Nothing an agent puts in a request may end the broker (its init: the
        whole namespace would go): any failure answers that one request with
        an error, and the next one is served.
        """
        try:
            data, ancillary, _flags, _addr = self.channel.recvmsg(_MAX_MESSAGE, _FDS_SPACE)
        except InterruptedError:
            return True
        fds = _received_fds(ancillary)
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        message: tuple[Any, ...] = ()
        try:
            message = marshal.loads(data)
            if message[0] == SPILLED and fds:
                spill = fds.pop()
                try:
                    message = marshal.loads(_read_all(spill))
                finally:
                    os.close(spill)
            op = message[0]
            if op not in _MIRRORS:
                self.quiesced = op == LIST
            if op == RESOLVE:
                self._resolve(message, fds)
            elif op == CONNECT:
                self._connect(message, fds)
            elif op == UNIX_SEND:
                self._unix_send(message, fds)
            elif op == LIST:
                self._list(message)
            elif op == DROP:
                self._close(message[1])
            elif op == ALLOW:
                _allow(message[1], message[2])
            elif op == FORGET:
                _forget(bool(message[1:2] and message[1]))
            elif op == EXPECT_EXEC:
                _expect_exec(*message[1:])
            elif op == PROTECT:
                _protect(message[2])
            elif op == FAN_ANSWER:
                _lane_answer(message[1], message[2])
            else:
                notif_id, args = message[1], list(message[2:])
                self._do(op, notif_id, args, fds)
        except Exception as exc:  # one bad request must not end the broker (the init)
            self._failed(message, exc)
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _failed(self, message: tuple[Any, ...], exc: Exception) -> None:
        """Answer a request that raised: a reply for RESOLVE/CONNECT, an errno for an op."""
        err = _errno_of(exc)
        if message[:1] == (SPILLED,):
            message = message[1:]  # (op, seq or notification id) came along for this
        with contextlib.suppress(Exception):
            op = message[0]
            if op in _MIRRORS:
                return  # nothing is owed to anyone (an exec not checked here is forwarded)
            if op == RESOLVE:
                lookups = message[2] if len(message) > 2 else ()
                count = len(lookups) if isinstance(lookups, tuple) else 1
                failed = [_failed_lookup(err)] * max(count, 1)
                self.channel.send(marshal.dumps((message[1], failed)))  # type: ignore[arg-type]
            elif op == CONNECT:
                self.channel.send(marshal.dumps((message[1], err)))
            elif op == UNIX_SEND:
                self.channel.send(marshal.dumps((message[1], (), err)))
            elif op == LIST:
                self.channel.send(marshal.dumps((message[1], err, 0)))
            elif op != DROP:
                _seccomp.respond_error(self.listener, message[1], err)

    # -- resolution

    def _resolve(self, message: tuple[object, ...], fds: list[int]) -> None:
        _op, seq, lookups = message
        assert isinstance(lookups, tuple)
        answers = [self._lookup(lookup, fds) for lookup in lookups]
        self.channel.send(marshal.dumps((seq, answers)))  # type: ignore[arg-type]

    def _lookup(self, lookup: tuple[object, ...], fds: list[int]) -> tuple[object, ...]:
        """One path of a RESOLVE: (handle, path, errno, mode, dev, ino, nlink, script,
        injected, held), and for CREATED the name to make in the directory pinned."""
        index, raw, kind, flags, resolve_flags, follow, want_script, keep, expected, agent = lookup
        assert isinstance(raw, bytes) and isinstance(kind, int) and isinstance(flags, int)
        assert isinstance(resolve_flags, int) and isinstance(index, int)
        if index >= len(fds):
            return _failed_lookup(errno.EBADF)
        # RESOLVE_CACHED only asks for a warm dcache: resolved as without it.
        resolve_flags &= ~_proc.RESOLVE_CACHED
        anchor = fds[index] if index >= 0 else AT_FDCWD
        try:
            fd, st, held, path, name = self._found(
                anchor, raw, kind, flags, resolve_flags, follow, agent
            )
            if self._in_own_proc(path) and not resolve_flags:
                # /proc/self met through a plain symlink (`/proc/mounts`, or
                # `m -> /proc/mounts`): the agent's own entry was meant.
                os.close(fd)
                if not isinstance(agent, tuple):
                    return _failed_lookup(THROUGH_MAGIC_LINK)
                fd, st, held, path, name = self._found(
                    anchor, raw, kind, flags, 0, follow, agent, True
                )
        except OSError as exc:
            return _failed_lookup(exc.errno or errno.ENOENT)
        handle, err = fd, 0
        if self._is_mine(path, st):
            handle, err = -1, errno.EACCES
        elif (hand_over := _as_expected(kind, path, st, expected)) is not None:
            notif_id, cloexec, setfl = hand_over
            try:
                self._hand_over(notif_id, fd, cloexec, setfl)
            except Exception as exc:  # fail this syscall, keep serving
                _seccomp.respond_error(self.listener, notif_id, _errno_of(exc))
            return (-1, path, 0, st.st_mode, st.st_dev, st.st_ino, st.st_nlink, False, True, held)
        script, unread = False, False
        interpreters: tuple[bytes, ...] = ()
        if want_script and handle >= 0 and stat.S_ISREG(st.st_mode):
            script, interpreters, unread = _interpreters_of(fd)
        if handle >= 0 and keep:
            self.pinned[fd] = fd
        else:
            os.close(fd)
            handle = -1
        found = (
            handle, path, err, st.st_mode, st.st_dev, st.st_ino, st.st_nlink, script, False, held
        )  # fmt: skip
        if kind == CREATED:
            return (*found, name)
        return (*found, b"", interpreters, unread) if want_script else found

    @staticmethod
    def _found(
        anchor: int,
        raw: bytes,
        kind: int,
        flags: int,
        resolve: int,
        follow: object,
        agent: object,
        walk: bool = False,
    ) -> tuple[int, os.stat_result, bool, str, bytes]:
        """`_open` (or for CREATED, `_site`), and the real path of what it
        opened: one fstat and one readlink; and CREATED's name."""
        name = b""
        if kind == CREATED:
            fd, st, held, name = Broker._site(anchor, raw, resolve, agent, walk)
        else:
            fd, st, held = Broker._open(
                anchor, raw, kind, flags, resolve, bool(follow), agent, walk=walk
            )
        try:
            return fd, st, held, Broker._real_path(fd, st, anchor, raw, resolve, agent, walk), name
        except OSError:
            os.close(fd)
            raise

    @staticmethod
    def _real_path(
        fd: int,
        st: os.stat_result,
        anchor: int,
        raw: bytes,
        resolve: int,
        agent: object,
        walk: bool,
    ) -> str:
        """The real path of what `fd` holds, also past PATH_MAX (a cwd that deep).

        A directory names itself (`proc.long_path`).  Anything else is named
        by its directory and its name there, when `raw`'s last component is
        that very object (not a symlink to it): else ENAMETOOLONG, and no
        path is made up.
        """
        try:
            return _proc.fd_path(fd)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
        if stat.S_ISDIR(st.st_mode):
            return _proc.long_path(fd)
        parent, name = split_name(raw)
        if name.endswith(b"/") or name in (b".", b".."):
            raise OSError(errno.ENAMETOOLONG, "the path cannot be named")
        directory, _st, _held = Broker._open(
            anchor, parent, PARENT, 0, resolve, True, agent, walk=walk
        )
        try:
            there = os.stat(name, dir_fd=directory, follow_symlinks=False)
            if (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
                raise OSError(errno.ENAMETOOLONG, "the path cannot be named")
            return _proc.long_path(directory).rstrip("/") + "/" + os.fsdecode(name)
        finally:
            os.close(directory)

    @staticmethod
    def _site(
        anchor: int, raw: bytes, resolve: int, agent: object, walk: bool
    ) -> tuple[int, os.stat_result, bool, bytes]:
        """The directory (pinned) where open(`raw`, O_CREAT) without O_EXCL or
        O_NOFOLLOW makes its file, its stat, `held`, and the name made there.

        That is `raw`'s own directory and last component, unless that name is
        a symlink leading nowhere: the kernel follows it (a chain of them too,
        at most MAX_SYMLINKS) and makes the file where it leads.  Each step is
        looked up here, with the agent's rights (and the kernel's
        fs.protected_symlinks rule); the file is made with O_EXCL in the very
        directory pinned, so a symlink swapped meanwhile changes nothing of
        what was judged.  A name with a trailing slash is never followed
        (O_CREAT makes that EISDIR), nor with RESOLVE_* flags (the kernel's
        resolution under them is not redone here: the create then meets the
        symlink, ELOOP).
        """
        parent, name = split_name(raw)
        fd, st, held = Broker._open(anchor, parent, PARENT, 0, resolve, True, agent, walk=walk)
        try:
            links = 0
            while not resolve and not name.endswith(b"/"):
                try:
                    text = os.readlink(name, dir_fd=fd)
                except OSError:
                    break  # not a symlink, or nothing there: made here
                if st.st_dev == os.stat(b"/proc").st_dev:
                    break  # a magic link's text is no path (the create meets it: ELOOP)
                links += 1
                if links > agentpath.MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                _may_follow(fd, st, name)
                start = AT_FDCWD if text.startswith(b"/") else fd
                last = text.rstrip(b"/").rpartition(b"/")[2]
                if last in (b"", b".", b".."):
                    # It leads to a directory that is there ("/", ".", "x/.."):
                    # once what holds it is found, the kernel's EISDIR.
                    if last:
                        head = text.rstrip(b"/")[: -len(last)] or b"."
                        dots, _st, _held = Broker._open(
                            start, head, PARENT, 0, 0, True, agent, walk=walk
                        )
                        os.close(dots)
                    raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
                parent, name = split_name(text)
                found = Broker._open(start, parent, PARENT, 0, 0, True, agent, walk=walk)
                os.close(fd)
                fd, st, held = found
        except OSError:
            os.close(fd)
            raise
        return fd, st, held, name

    @staticmethod
    def _open(
        anchor: int,
        raw: bytes,
        kind: int,
        flags: int,
        resolve: int,
        follow: bool,
        agent: object = None,
        *,
        walk: bool = False,
    ) -> tuple[int, os.stat_result, bool]:
        """The fd `raw` resolves to (pinned, or opened for reading), its stat,
        and whether it is one the agent holds (`agentpath`)."""
        how = os.O_PATH | os.O_CLOEXEC
        if kind == PARENT:
            how |= os.O_DIRECTORY
        else:
            if kind == OPEN:
                how |= flags & os.O_DIRECTORY
            if not follow:
                how |= os.O_NOFOLLOW
        fd, held = Broker._open_at(anchor, raw, how, resolve, agent, walk)
        try:
            st = os.fstat(fd)
            if kind == OPEN and not stat.S_ISFIFO(st.st_mode):
                # Pinned first, opened second, and a FIFO never: its open lets
                # a writer waiting for a reader go on (the agent's own, waiting
                # in a helper).  What the open fails with is the lookup's error
                # (ENXIO for a socket, ELOOP for a symlink and O_NOFOLLOW); a
                # device or socket is pinned once opened, as opening it may
                # mean something.
                how = (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
                opened = os.open(f"/proc/self/fd/{fd}", how)
                if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                    fd, opened = opened, fd
                os.close(opened)
        except OSError:
            os.close(fd)
            raise
        return fd, st, held

    @staticmethod
    def _open_at(
        anchor: int, raw: bytes, how: int, resolve: int, agent: object, walk: bool = False
    ) -> tuple[int, bool]:
        """openat2 with the agent's RESOLVE_* flags (the mediator checked them).

        Without, a magic link met on the way (a symlink into /proc/self) would
        be the broker's: the kernel is told to refuse them, and such a name is
        walked as the agent's (`agentpath`), with `agent` (an AgentSelf), or
        answered THROUGH_MAGIC_LINK, for the supervisor to send one.  So is a
        name found missing in /proc, where the broker's /proc/self lacks what
        the agent's has.  (The supervisor rewrote a leading /proc/self to the
        agent's own entry, whose magic links are walked the same way.)
        """
        if raw == ANCHOR_ITSELF and anchor != AT_FDCWD:
            return os.open(b"/proc/self/fd/%d" % anchor, how), True  # our own fd's link
        if resolve:  # (each keeps magic links from crossing into /proc)
            return _proc.openat2(anchor, raw, how, 0, resolve), False
        if not walk:
            try:
                return _proc.openat2(anchor, raw, how, 0, _proc.RESOLVE_NO_MAGICLINKS), False
            except OSError as exc:
                if exc.errno != errno.ELOOP and not (
                    exc.errno == errno.ENOENT and _missing_in_proc(anchor, raw)
                ):
                    raise
        if not (isinstance(agent, tuple) and len(agent) == 2):
            raise OSError(THROUGH_MAGIC_LINK, "a magic link on the way")
        own_self, own_thread = agent
        assert isinstance(own_self, bytes) and isinstance(own_thread, bytes)
        return agentpath.open_as_agent(anchor, raw, how, own_self, own_thread)

    def _in_own_proc(self, path: str) -> bool:
        own = self._own_proc
        return path.startswith(own) and (len(path) == len(own) or path[len(own)] == "/")

    def _is_mine(self, path: str, st: os.stat_result) -> bool:
        """The broker's own /proc entry, listener or channel: never the agent's to have.

        The broker is PID 1 of the agent's namespace, and a process may read its
        own /proc files (maps, fd/N) without the ptrace check the agent would get.
        """
        return (
            self._in_own_proc(path)
            or (st.st_dev, st.st_ino) in self.private
            or st.st_dev in self._other_procfs
        )

    def _unpin(self, handle: object) -> int:
        """The pinned fd for `handle`, out of the table (the caller closes it); -1 if none."""
        return self.pinned.pop(handle, -1) if isinstance(handle, int) else -1

    def _close(self, handle: object) -> None:
        fd = self.pinned.pop(handle, None) if isinstance(handle, int) else None
        if fd is not None:
            os.close(fd)

    def _connect(self, message: tuple[object, ...], fds: list[int]) -> None:
        """Connect the agent's socket to an address, or to the socket file pinned
        under `handle`, which stays pinned when the answer is EAGAIN (a unix
        listener's backlog is full): the supervisor tries again, or drops it."""
        _op, seq, address, handle = message
        err = errno.EBADF
        if fds:
            key = handle if isinstance(handle, int) else -1
            fd = self.pinned.pop(key, -1) if key >= 0 else -1
            if key >= 0:
                address = f"/proc/self/fd/{fd}" if fd >= 0 else None
            try:
                err = _connect_once(fds[0], address) if address is not None else errno.EBADF
            finally:
                if fd >= 0 and err == errno.EAGAIN:
                    self.pinned[key] = fd
                elif fd >= 0:
                    os.close(fd)
        self.channel.send(marshal.dumps((seq, err)))  # type: ignore[arg-type]

    def _unix_send(self, message: tuple[object, ...], fds: list[int]) -> None:
        """Send the datagrams of a UNIX_SEND while the agent's call still waits;
        reply with what was sent and the errno that stopped it."""
        _op, seq, notif_id, request, flags = message
        assert isinstance(notif_id, int) and isinstance(flags, int)
        counts: list[int] = []
        err = errno.EBADF
        messages = _unix_datagrams(request)
        if fds and messages is not None and sum(m[2] for m in messages) == len(fds) - 1:
            if _seccomp.id_valid(self.listener, notif_id):
                counts, err = self._datagrams(fds[0], messages, flags, fds[1:])
            else:
                err = errno.EINTR  # the agent's thread is gone or was interrupted
        self.channel.send(marshal.dumps((seq, tuple(counts), err)))  # type: ignore[arg-type]

    def _datagrams(
        self, sock: int, messages: list[UnixDatagram], flags: int, passed: list[int]
    ) -> tuple[list[int], int]:
        """Each message sent without waiting, until one fails: (bytes each
        sent, the errno of the one that failed or 0)."""
        counts: list[int] = []
        at = 0
        with socket.socket(fileno=os.dup(sock)) as dup:
            for payload, address, count in messages:
                rights, at = passed[at : at + count], at + count
                target: object = address
                if isinstance(address, int):  # the socket file decided on, pinned
                    fd = self.pinned.get(address, -1)
                    if fd < 0:
                        return counts, errno.EBADF
                    target = f"/proc/self/fd/{fd}"
                control = [(_SOL_SOCKET, _SCM_RIGHTS, _fd_array(rights))] if rights else []
                how = flags | socket.MSG_DONTWAIT  # a full receiver: the supervisor waits
                try:
                    if target is None:
                        counts.append(dup.sendmsg([payload], control, how))
                    else:
                        counts.append(dup.sendmsg([payload], control, how, target))  # type: ignore[arg-type]
                except OSError as exc:
                    return counts, exc.errno or errno.EIO
        return counts, 0

    def _list(self, message: tuple[object, ...]) -> None:
        _op, seq, handle, name = message
        parent = self.pinned.get(handle, -1) if isinstance(handle, int) else -1
        if parent < 0 or not isinstance(name, bytes):
            self.channel.send(marshal.dumps((seq, errno.EBADF, 0)))  # type: ignore[arg-type]
            return
        paths = _tree_beneath(parent, name)
        listing = _spill(os.fsencode("\0".join(paths)), _MAX_LISTING)
        try:
            reply = marshal.dumps((seq, 0, len(paths)))  # type: ignore[arg-type]
            socket.send_fds(self.channel, [reply], [listing])
        finally:
            os.close(listing)

    # -- operations

    def _do(self, op: int, notif_id: int, args: list[object], fds: list[int]) -> None:
        """Take the op's pinned handles out of the table, act, answer, close them."""
        work = self._ops.get(op)
        positions = _HANDLE_ARGS.get(op, (0,))
        pinned = [self._unpin(args[i]) for i in positions]
        try:
            if work is None or -1 in pinned:
                _seccomp.respond_error(self.listener, notif_id, errno.EBADF)
            elif op in _NO_SIDE_EFFECTS or _seccomp.id_valid(self.listener, notif_id):
                # (An invalid id: the agent's thread is gone or was interrupted.)
                try:
                    work(notif_id, pinned, args, fds)
                except Exception as exc:  # fail this syscall, keep serving
                    _seccomp.respond_error(self.listener, notif_id, _errno_of(exc))
        finally:
            for fd in pinned:
                if fd >= 0:
                    os.close(fd)

    def _answer(self, notif_id: int, value: int = 0) -> None:
        _seccomp.respond_value(self.listener, notif_id, value)

    def _inject_fd(self, notif_id: int, fd: int, cloexec: bool) -> None:
        try:
            _seccomp.inject_fd_and_respond(self.listener, notif_id, fd, cloexec=cloexec)
        finally:
            os.close(fd)

    def _error(
        self, notif_id: int, _pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        err = args[0]
        _seccomp.respond_error(self.listener, notif_id, err if isinstance(err, int) else errno.EIO)

    def _inject(
        self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        _handle, cloexec, setfl = args
        # The pinned fd itself goes to the agent (no dup: nobody else holds it).
        fd = pinned[0]
        pinned[0] = -1  # `_hand_over` closes it
        self._hand_over(notif_id, fd, cloexec, setfl)

    def _hand_over(self, notif_id: int, fd: int, cloexec: object, setfl: object) -> None:
        """An fd opened for reading goes to the agent with its own status flags; closed here."""
        if isinstance(setfl, int) and setfl >= 0:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, setfl & _SETFL_FLAGS)
            except OSError:
                os.close(fd)
                raise
        self._inject_fd(notif_id, fd, bool(cloexec))

    def _reopen(
        self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        _handle, flags, cloexec = args
        assert isinstance(flags, int)
        path_fd = pinned[0]
        mode = os.fstat(path_fd).st_mode
        plain = stat.S_ISREG(mode) or stat.S_ISDIR(mode)
        # Opening a plain file without O_TRUNC changes nothing: no ID_VALID
        # round for it (`_do` leaves REOPEN to this check).
        if (flags & os.O_TRUNC or not plain) and not _seccomp.id_valid(self.listener, notif_id):
            return  # the agent's thread is gone or was interrupted
        self._open_pinned(notif_id, path_fd, mode, flags, bool(cloexec))

    def _open_pinned(
        self, notif_id: int, path_fd: int, mode: int, flags: int, cloexec: bool
    ) -> None:
        """Open the pinned object as the agent asked and answer with the fd;
        a FIFO whose open waits for its other end is opened by a helper."""
        if stat.S_ISFIFO(mode):
            # A helper whose caller stopped waiting must not be the other end
            # this open meets (a writer that should get ENXIO, data written to
            # no one): ended now, not at the next WAITING_CHECK (red team 11).
            self.check_waiting(time.monotonic(), at_once=True)
        if not _waits_for_other_end(mode, flags):
            self._inject_fd(notif_id, _reopen(path_fd, flags), cloexec)
            return
        if flags & os.O_ACCMODE == os.O_WRONLY:
            # A reader is there already (say, the agent's own, waiting in a
            # helper): the open would not wait.  Without one this fails with
            # ENXIO and changes nothing, and a helper waits for one.
            try:
                fd = os.open(f"/proc/self/fd/{path_fd}", flags | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            else:
                try:
                    os.set_blocking(fd, True)
                except OSError:
                    os.close(fd)
                    raise
                self._inject_fd(notif_id, fd, cloexec)
                return
        self._rendezvous(notif_id, path_fd, flags, cloexec)

    def _rendezvous(self, notif_id: int, path_fd: int, flags: int, cloexec: bool) -> None:
        """Open a FIFO in a helper forked for it: the open blocks there, as it
        would have blocked the agent, until the FIFO's other end opens; the
        helper answers the agent's syscall and exits.  The broker serves on
        meanwhile (the other end's open is one it serves), and ends a helper
        whose caller stopped waiting (`check_waiting`)."""
        if len(self.waiting) >= MAX_WAITING_OPENS:
            # Bounded, as every resource the agent can make the broker hold:
            # "try again" is what it is, once one of those opens is over.
            raise OSError(errno.EAGAIN, "too many FIFO opens waiting")
        pid = os.fork()
        if pid == 0:
            _open_and_answer(self.listener, notif_id, path_fd, flags, cloexec)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            os.kill(pid, signal.SIGKILL)  # not reaped yet (only this thread reaps): still ours
            raise
        # Its open is the broker's, decided: the read lane lets it through (the
        # native path reads the lane's events only once this returns).
        _lane_helper(pid, True)
        self._helpers[pidfd] = pid
        self.waiting[pidfd] = (notif_id, flags & os.O_ACCMODE == os.O_WRONLY)
        _pin_reads(self.waiting)

    def check_waiting(self, now: float, *, at_once: bool = False) -> None:
        """Every WAITING_CHECK (`at_once`: now): forget the helpers that
        answered, and end those whose caller no longer waits (a signal
        interrupted it, or it exited).  Such a helper's open must not
        complete: its FIFO would meet a reader or writer that is no one's,
        and its answer would go nowhere.  A helper that ended without
        answering (the agent may kill it: it runs with the agent's rights)
        leaves the open failed with EINTR.  A helper ended here is waited
        for: its end of the FIFO is closed once this returns."""
        if not self.waiting or (not at_once and now - self._checked_waiting < WAITING_CHECK):
            return
        self._checked_waiting = now
        poller = select.poll()
        for pidfd in self.waiting:
            poller.register(pidfd, select.POLLIN)
        ended = {fd for fd, _events in poller.poll(0)}
        for pidfd, (notif_id, _writes) in list(self.waiting.items()):
            waits = _seccomp.id_valid(self.listener, notif_id)
            if pidfd in ended:
                if waits:  # still waiting after its helper exited: never answered
                    _seccomp.respond_error(self.listener, notif_id, errno.EINTR)
            elif not waits:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    select.select([pidfd], [], [], _HELPER_EXIT_WAIT)  # its fds closed
            else:
                continue
            del self.waiting[pidfd]
            _lane_helper(self._helpers.pop(pidfd, 0), False)
            os.close(pidfd)
        _pin_reads(self.waiting)

    def end_waiting(self) -> None:
        """The broker is done: no helper outlives it (the kernel would kill
        them with the namespace's init, but not before their opens return)."""
        for pidfd in self.waiting:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
        self.waiting.clear()
        _pin_reads(self.waiting)

    def _controlling_terminal(
        self, notif_id: int, _pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        """Open the terminal `tty` (a device number, as /proc/PID/stat gives it):
        the relay pty when `relay` says the caller's session is the agent's,
        else the pty of that number in the agent's own devpts; ENXIO when it
        is neither, as the kernel says for a process with no terminal."""
        flags, cloexec, tty, relay = args
        assert isinstance(flags, int) and isinstance(tty, int)
        flags = (flags | os.O_NOCTTY | os.O_CLOEXEC) & ~os.O_CREAT
        fd = -1
        if relay and self.terminal >= 0 and os.fstat(self.terminal).st_rdev == tty:
            fd = os.open(f"/proc/self/fd/{self.terminal}", flags)
        elif _PTS_MAJORS[0] <= os.major(tty) <= _PTS_MAJORS[1]:
            index = (os.major(tty) - _PTS_MAJORS[0]) * 256 + os.minor(tty)
            fd = os.open(f"/dev/pts/{index}", flags | os.O_NOFOLLOW)
            info = os.fstat(fd)
            if not stat.S_ISCHR(info.st_mode) or info.st_rdev != tty:
                os.close(fd)
                fd = -1
        if fd < 0:
            raise OSError(errno.ENXIO, "no such terminal")
        self._inject_fd(notif_id, fd, bool(cloexec))

    def _create(
        self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        _handle, name, flags, mode, cloexec = args
        assert isinstance(name, bytes) and isinstance(flags, int) and isinstance(mode, int)
        how = flags | os.O_NOFOLLOW | os.O_CLOEXEC
        for _attempt in range(_CREATE_ATTEMPTS):
            try:
                fd = os.open(name, how | os.O_EXCL, mode, dir_fd=pinned[0])
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
            else:
                self._inject_fd(notif_id, fd, bool(cloexec))
                return
            # Made under the name since it was found missing (a racing
            # mkfifo, say): opened as the agent's open would open it, a FIFO
            # waiting for its other end too.  Pinned first: opening a FIFO
            # to look may mean something.
            try:
                found = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pinned[0])
            except FileNotFoundError:
                continue  # and gone again
            try:
                st = os.fstat(found)
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.ELOOP, "a symlink, opened with O_NOFOLLOW")
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode) and flags & CHANGES_FILE:
                    # Another name linked here meanwhile (red team 35 raced a
                    # link of a file with a name outside the workspace): such
                    # a file is never changed (mediator `_other_names`).
                    raise OSError(errno.EACCES, "a file with other names, not changed")
                # (O_CREAT kept: a directory there is EISDIR, as for the kernel.)
                self._open_pinned(notif_id, found, st.st_mode, flags, bool(cloexec))
            finally:
                os.close(found)
            return
        raise OSError(errno.ENOENT, "made and removed again, over and over")

    def _unlink(
        self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        _handle, name, rmdir = args
        assert isinstance(name, bytes)
        if rmdir:
            os.rmdir(name, dir_fd=pinned[0])
        else:
            os.unlink(name, dir_fd=pinned[0])
        self._answer(notif_id)

    def _mkdir(self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]) -> None:
        _handle, name, mode = args
        assert isinstance(name, bytes) and isinstance(mode, int)
        os.mkdir(name, mode, dir_fd=pinned[0])
        self._answer(notif_id)

    def _mknod(self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]) -> None:
        _handle, name, mode, device = args
        assert isinstance(name, bytes) and isinstance(mode, int) and isinstance(device, int)
        os.mknod(name, mode, device, dir_fd=pinned[0])
        self._answer(notif_id)

    def _symlink(
        self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        _handle, name, content = args
        assert isinstance(name, bytes) and isinstance(content, bytes)
        os.symlink(content, name, dir_fd=pinned[0])
        self._answer(notif_id)

    def _rename(
        self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        _old, old_name, _new, new_name, flags, *judged = args
        assert isinstance(old_name, bytes) and isinstance(new_name, bytes)
        assert isinstance(flags, int)
        # Each name must still hold the object judged (nothing else acts while
        # this runs): a racing thread's swap is not moved.
        for where, name, identity in zip(pinned, (old_name, new_name), judged, strict=False):
            if identity is not None and _identity_at(where, name) != tuple(identity):  # type: ignore[arg-type]
                raise OSError(errno.EAGAIN, "the name changed since it was judged")
        _lane_flush()  # what the kernel lets be read unasked may get a new name
        if flags:
            _proc.renameat2(pinned[0], old_name, pinned[1], new_name, flags)
        else:
            os.rename(old_name, new_name, src_dir_fd=pinned[0], dst_dir_fd=pinned[1])
        self._answer(notif_id)

    def _link(self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]) -> None:
        _old, old_name, _new, new_name, follow = args
        assert isinstance(old_name, bytes) and isinstance(new_name, bytes)
        source, new_parent = pinned
        _lane_flush()
        if follow:  # `source` is the object itself
            os.link(f"/proc/self/fd/{source}", new_name, dst_dir_fd=new_parent)
        else:
            os.link(
                old_name, new_name, src_dir_fd=source, dst_dir_fd=new_parent, follow_symlinks=False
            )
        self._answer(notif_id)

    # chmod, chown and truncate go through the pinned fd, never the name again.

    def _chmod(self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]) -> None:
        _handle, mode = args
        assert isinstance(mode, int)
        os.chmod(f"/proc/self/fd/{pinned[0]}", mode)
        self._answer(notif_id)

    def _chown(self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]) -> None:
        _handle, uid, gid = args
        assert isinstance(uid, int) and isinstance(gid, int)
        os.chown(f"/proc/self/fd/{pinned[0]}", uid, gid)
        self._answer(notif_id)

    def _truncate(
        self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        _handle, length = args
        assert isinstance(length, int)
        os.truncate(f"/proc/self/fd/{pinned[0]}", length)
        self._answer(notif_id)

    def _fd_chmod(
        self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        (mode,) = args
        assert isinstance(mode, int) and fds
        os.chmod(fds[0], mode)
        self._answer(notif_id)

    def _fd_chown(
        self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        uid, gid = args
        assert isinstance(uid, int) and isinstance(gid, int) and fds
        os.chown(fds[0], uid, gid)
        self._answer(notif_id)

    def _bind(self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]) -> None:
        (address,) = args
        assert fds
        with socket.socket(fileno=os.dup(fds[0])) as sock:
            sock.bind(address)  # type: ignore[arg-type]
        self._answer(notif_id)

    def _bind_unix(
        self, notif_id: int, pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        """The socket file made in the very directory that was judged (pinned),
        as the agent's bind() would make it: with its umask, and with the very
        name it gave (getsockname() and the peers see that name).

        A bare name is bound in the pinned directory: nothing is looked up
        again.  A path with a slash must be given to the kernel whole, or the
        socket's address would be its last component alone: it is bound from
        the agent's cwd (sent along, for a relative path) by a thread that
        Landlock lets make a socket beneath the pinned directory only, so a
        cwd changed or a directory on the way swapped since the decision
        fails (EACCES) rather than lands elsewhere.  Without Landlock it is
        the last component, bound in the pinned directory.
        """
        _handle, name, path, umask = args
        assert isinstance(name, bytes) and isinstance(path, bytes) and isinstance(umask, int)
        assert fds and pinned
        whole = path != name and _landlock.landlock_abi() >= 1
        start = (fds[1] if len(fds) > 1 else -1) if whole else pinned[0]
        here = os.open(".", os.O_PATH | os.O_CLOEXEC)
        previous = os.umask(umask)
        try:
            if start >= 0:
                os.fchdir(start)
            with socket.socket(fileno=os.dup(fds[0])) as sock:
                if whole:
                    _bind_beneath(sock, path, pinned[0])
                else:
                    sock.bind(name)
        finally:
            os.umask(previous)
            os.fchdir(here)
            os.close(here)
        self._answer(notif_id)

    def _sendto(
        self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        payload, flags, address = args
        assert isinstance(payload, bytes) and isinstance(flags, int) and fds
        self._answer(notif_id, _send(fds[0], payload, flags, address))

    def _sendmmsg(
        self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        messages, flags = args
        assert isinstance(messages, list) and isinstance(flags, int) and fds
        sent = 0
        for payload, address in messages:
            try:
                _send(fds[0], payload, flags, address)
            except OSError:
                if not sent:
                    raise
                break  # like the kernel: the count so far, the error next time
            sent += 1
        self._answer(notif_id, sent)

    # Extended attributes, times and flags: on the pinned object (through its
    # /proc/self/fd link, or AT_EMPTY_PATH), or on the agent's own open file.

    def _xattr(self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]) -> None:
        _handle, name, value, flags = args
        _set_xattr(f"/proc/self/fd/{pinned[0]}", name, value, flags)
        self._answer(notif_id)

    def _fd_xattr(
        self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        name, value, flags = args
        assert fds
        _set_xattr(fds[0], name, value, flags)
        self._answer(notif_id)

    def _utimes(
        self, notif_id: int, pinned: list[int], args: list[object], _fds: list[int]
    ) -> None:
        _handle, times = args
        _proc.utimensat(pinned[0], b"", _instants(times), _AT_EMPTY_PATH)
        self._answer(notif_id)

    def _fd_utimes(
        self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        (times,) = args
        assert fds
        _proc.utimensat(fds[0], None, _instants(times), 0)
        self._answer(notif_id)

    def _fd_ioctl(
        self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        request, argument = args
        assert isinstance(request, int) and isinstance(argument, bytes) and fds
        fcntl.ioctl(fds[0], request, argument)
        self._answer(notif_id)

    def _listen(
        self, notif_id: int, _pinned: list[int], args: list[object], fds: list[int]
    ) -> None:
        (backlog,) = args
        assert isinstance(backlog, int) and fds
        with socket.socket(fileno=os.dup(fds[0])) as sock:
            sock.listen(backlog)
        self._answer(notif_id)


# Operations that change nothing if the agent's thread is gone meanwhile (an
# ADDFD then fails by itself): no ID_VALID round first.
_NO_SIDE_EFFECTS = frozenset({ERROR, INJECT, REOPEN})  # REOPEN: `Broker._reopen` checks

# Which arguments of each operation are handles (the default: the first).
# Requests that only tell the native path what the supervisor knows.
_MIRRORS = frozenset({ALLOW, FORGET, EXPECT_EXEC, PROTECT, FAN_ANSWER})
# Unix98 ptys: majors 136-143, 256 minors each.
_PTS_MAJORS = (136, 143)

_HANDLE_ARGS: dict[int, tuple[int, ...]] = {
    TERMINAL: (),
    RENAME: (0, 2),
    LINK: (0, 2),
    FD_CHMOD: (),
    FD_CHOWN: (),
    ERROR: (),
    BIND: (),
    SENDTO: (),
    SENDMMSG: (),
    FD_XATTR: (),
    FD_UTIMES: (),
    FD_IOCTL: (),
    LISTEN: (),
}

_AT_EMPTY_PATH = 0x1000


# Open flags that change a file (O_CREAT alone opens what is there as it is;
# with O_TRUNC even O_RDONLY truncates it).
CHANGES_FILE = os.O_WRONLY | os.O_RDWR | os.O_TRUNC


def _bind_beneath(sock: socket.socket, path: bytes, directory: int) -> None:
    """bind(`path`) from a thread that may make a socket beneath `directory`
    only (a Landlock domain of its own, gone with the thread): wherever else
    the path leads by now, the kernel refuses with EACCES."""
    failure: list[BaseException] = []

    def confined() -> None:
        try:
            _landlock.sockets_only_beneath(directory)
            sock.bind(path)
        except BaseException as exc:  # re-raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=confined, name="agentsup-bind", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds an SCM_RIGHTS message brought (as socket.recv_fds reads them)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4]))
    return fds


def _failed_lookup(err: int) -> tuple[object, ...]:
    """A RESOLVE answer for a path that could not be resolved."""
    return (-1, "", err, 0, 0, 0, 0, False, False, False)


def _as_expected(
    kind: int, path: str, st: os.stat_result, expected: object
) -> tuple[int, bool, int] | None:
    """(notification id, cloexec, F_SETFL flags) when an OPEN found the very file an
    Expected read names: the same inode, under the same real path, linked once
    or more as it was; else None."""
    if kind != OPEN or not isinstance(expected, tuple) or len(expected) != 7:
        return None
    want_path, dev, ino, linked, notif_id, cloexec, setfl = expected
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return None
    if (st.st_ino, st.st_dev, path, st.st_nlink > 1) != (ino, dev, want_path, linked):
        return None
    if not isinstance(notif_id, int) or not isinstance(setfl, int):
        return None
    return notif_id, bool(cloexec), setfl


def _errno_of(exc: BaseException) -> int:
    """The errno a failed request answers with: its own, EINVAL for a bad value, else EIO."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, (OverflowError, ValueError, TypeError)):
        return errno.EINVAL
    return errno.EIO


def _unix_datagrams(messages: object) -> list[UnixDatagram] | None:
    """The messages of a UNIX_SEND; None if one is malformed (never from the supervisor)."""
    found: list[UnixDatagram] = []
    for message in messages if isinstance(messages, tuple) else (None,):
        if not (isinstance(message, tuple) and len(message) == 3):
            return None
        payload, address, count = message
        if not (isinstance(payload, bytes) and isinstance(count, int) and count >= 0):
            return None
        if not (address is None or isinstance(address, (int, bytes))):
            return None
        found.append((payload, address, count))
    return found


def _fd_array(fds: list[int]) -> bytes:
    """The SCM_RIGHTS data for `fds` (as socket.send_fds builds it)."""
    return struct.pack(f"{len(fds)}i", *fds)


def _missing_in_proc(anchor: int, raw: bytes) -> bool:
    """Whether a name found missing was looked for in /proc (through a
    symlink, say): where the broker's resolution of it ends up."""
    base = b"" if raw.startswith(b"/") else b"/proc/self/fd/%d/" % anchor
    try:
        reached = os.path.realpath(base + raw)
    except OSError:
        return True
    return reached == b"/proc" or reached.startswith(b"/proc/")


def _identity_at(directory: int, name: bytes) -> tuple[int, int] | None:
    """What entry `name` of `directory` is (a trailing slash does not follow a
    symlink here: the entry itself is what a rename moves)."""
    try:
        st = os.stat(name.rstrip(b"/") or name, dir_fd=directory, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_PROTECTED_SYMLINKS = "/proc/sys/fs/protected_symlinks"


def _may_follow(directory: int, where: os.stat_result, name: bytes) -> None:
    """The kernel's fs.protected_symlinks rule for following symlink `name` of
    `directory` (stat `where`): in a sticky world-writable directory, only a
    symlink of the follower's own, or of the directory's owner.  EACCES
    otherwise (and when the setting cannot be read: it is on by default)."""
    sticky = stat.S_ISVTX | stat.S_IWOTH
    if where.st_mode & sticky != sticky:
        return
    link = os.stat(name, dir_fd=directory, follow_symlinks=False)
    if link.st_uid in (os.geteuid(), where.st_uid):
        return
    try:
        with open(_PROTECTED_SYMLINKS, "rb") as setting:
            if setting.read().strip() == b"0":
                return
    except OSError:
        pass
    raise OSError(errno.EACCES, "a symlink of another user's in a sticky directory")


def _tree_beneath(parent: int, name: bytes) -> list[str]:
    """The paths beneath directory `name` of `parent`, relative to it, each
    directory before what it holds.  Symlinks are entries, never followed; a
    directory that cannot be read fails the whole listing, as do more than
    MAX_LISTED entries."""
    how = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    paths: list[str] = []
    pending = [(os.open(name, how, dir_fd=parent), "")]
    try:
        while pending:
            fd, prefix = pending.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        path = prefix + entry.name
                        paths.append(path)
                        if entry.is_dir(follow_symlinks=False):
                            pending.append((os.open(entry.name, how, dir_fd=fd), path + "/"))
                        if len(paths) > MAX_LISTED:
                            raise OSError(errno.E2BIG, f"more than {MAX_LISTED} entries")
            finally:
                os.close(fd)
    finally:
        for fd, _prefix in pending:
            os.close(fd)
    return paths


def _spill(data: bytes, limit: int = _MAX_SPILL) -> int:
    """A memfd holding `data`: a request too large for one packet, or a listing."""
    if len(data) > limit:
        raise OSError(errno.EMSGSIZE, "request too large for the broker")
    fd = os.memfd_create("agentsup-request", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_all(fd: int, limit: int = _MAX_SPILL) -> bytes:
    """A spilled request or a listing: the whole memfd, from its start (the caller closes it)."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise OSError(errno.EMSGSIZE, "spilled request too large")
    return os.pread(fd, size, 0)


def _set_xattr(target: int | str, name: object, value: object, flags: object) -> None:
    assert isinstance(name, bytes) and isinstance(flags, int)
    if value is None:
        os.removexattr(target, name)
    else:
        assert isinstance(value, bytes)
        os.setxattr(target, name, value, flags)


def _instants(times: object) -> tuple[_proc.Instant, _proc.Instant] | None:
    if times is None:
        return None
    assert isinstance(times, tuple) and len(times) == 2
    (a_sec, a_nsec), (m_sec, m_nsec) = times
    return (int(a_sec), int(a_nsec)), (int(m_sec), int(m_nsec))


def _send(fd: int, payload: bytes, flags: int, address: object) -> int:
    """One datagram, never blocking: a full socket buffer is EAGAIN for the agent."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        if address is None:
            return sock.send(payload, flags | socket.MSG_DONTWAIT)
        sent: int = sock.sendto(payload, flags | socket.MSG_DONTWAIT, address)  # type: ignore[call-overload]
        return sent


def _connect_once(fd: int, address: object) -> int:
    """connect() without blocking: 0, EINPROGRESS, or the errno.

    `address` () is AF_UNSPEC, which Python cannot spell: the socket forgets
    its peer (a netlink one; the supervisor sends no other)."""
    if address == ():
        return _proc.disconnect(fd)
    with socket.socket(fileno=os.dup(fd)) as sock:
        status_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        blocking = not status_flags & os.O_NONBLOCK
        if blocking:
            # The flag lives in the open file the agent shares: only for this call.
            fcntl.fcntl(fd, fcntl.F_SETFL, status_flags | os.O_NONBLOCK)
        try:
            return sock.connect_ex(address)  # type: ignore[arg-type]
        except OSError as exc:
            return exc.errno or errno.EINVAL
        finally:
            if blocking:
                fcntl.fcntl(fd, fcntl.F_SETFL, status_flags)


def _reopen(path_fd: int, flags: int) -> int:
    """A pinned object opened with the agent's flags (never a FIFO whose open waits)."""
    if flags & os.O_PATH:
        return os.dup(path_fd)
    return os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC)


def _waits_for_other_end(mode: int, flags: int) -> bool:
    """Whether opening this waits for the FIFO's other end to open, as open(2)
    says: O_RDONLY or O_WRONLY without O_NONBLOCK.  (O_RDWR never waits; an
    O_NONBLOCK reader opens at once, an O_NONBLOCK writer with no reader
    fails with ENXIO.)"""
    return (
        stat.S_ISFIFO(mode)
        and not flags & (os.O_NONBLOCK | os.O_PATH)
        and flags & os.O_ACCMODE in (os.O_RDONLY, os.O_WRONLY)
    )


def _open_and_answer(
    listener: int, notif_id: int, path_fd: int, flags: int, cloexec: bool
) -> NoReturn:
    """A FIFO open's helper (`Broker._rendezvous`): open it as the agent asked,
    waiting for the other end, then answer the agent's syscall and exit.

    Signals stay blocked (the broker's mask): only SIGKILL ends the wait, from
    the broker when the agent's caller no longer waits.  The ADDFD names one
    notification id, never reused, so an answer meant for a caller gone
    meanwhile fails (ENOENT) and the fd is closed with the helper.
    """
    try:
        keep = sorted({listener, path_fd})
        low = 0
        for fd in keep:  # no copy of another fd of the broker's outlives it here
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))
        try:
            fd = os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC)
        except OSError as exc:
            _seccomp.respond_error(listener, notif_id, exc.errno or errno.EIO)
        else:
            _seccomp.inject_fd_and_respond(listener, notif_id, fd, cloexec)
    finally:
        os._exit(0)


# What the kernel reads of a file to pick its loader (BINPRM_BUF_SIZE).
_BINPRM_BUF = 256
_PT_INTERP = 3
_PATH_MAX = 4096
_ELF_PHDRS_MAX = 65536  # the kernel's bound on a program header table (load_elf_phdrs)
# An ELF header read as binfmt_elf (64-bit) and compat_binfmt_elf (32-bit)
# read it: where e_phoff is and its format, where e_phentsize is (e_phnum
# follows it), the size a program header must have, and (p_type, p_offset,
# p_filesz) in one.
_ELF_LAYOUTS = (
    (32, "<Q", 54, 56, struct.Struct("<I4xQ16xQ")),
    (28, "<I", 42, 32, struct.Struct("<II8xI")),
)


def _interpreters_of(path_fd: int) -> tuple[bool, tuple[bytes, ...], bool]:
    """(starts with #!, what the kernel would open next to run it, unread) for
    the regular file `path_fd` pins, read with the agent's rights."""
    try:
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False, (), True
    try:
        head = os.pread(fd, _BINPRM_BUF, 0)
        if head.startswith(b"#!"):
            name = shebang_interpreter(head)
            return True, (name,) if name else (), False
        if head.startswith(b"\x7fELF"):
            return False, elf_interpreters(fd, head), False
        return False, (), False
    except OSError:
        return False, (), True
    finally:
        os.close(fd)


def shebang_interpreter(head: bytes) -> bytes:
    """The interpreter binfmt_script opens for a file that starts with `head`
    (its first 256 bytes): the first word of the #! line, up to a space, a
    tab or a NUL; b"" for none.  (A name that fills the line with no end is
    refused by the kernel: it is judged anyway.)"""
    name = head[2:_BINPRM_BUF].split(b"\n", 1)[0].lstrip(b" \t")
    for end in (b" ", b"\t", b"\0"):
        name = name.split(end, 1)[0]
    return name


def elf_interpreters(fd: int, head: bytes) -> tuple[bytes, ...]:
    """The PT_INTERP the kernel would open to run the ELF file `fd` (`head`: its
    first bytes), as load_elf_binary finds it: the first PT_INTERP program
    header, 2 to PATH_MAX bytes ending in a NUL.  The header is read both as
    64-bit and as 32-bit (the kernel tries each loader in turn), and every
    interpreter either gives is returned."""
    head = head.ljust(_BINPRM_BUF, b"\0")  # as the kernel's buffer, for a short file
    found: list[bytes] = []
    for phoff_at, phoff_format, entsize_at, entsize, phdr in _ELF_LAYOUTS:
        (phoff,) = struct.unpack_from(phoff_format, head, phoff_at)
        size, count = struct.unpack_from("<HH", head, entsize_at)
        if size != entsize or not 0 < count * size <= _ELF_PHDRS_MAX:
            continue
        try:
            table = os.pread(fd, count * size, phoff)
        except (OverflowError, ValueError):
            continue  # an offset past what a file can have: the kernel fails it too
        for i in range(len(table) // size if len(table) == count * size else 0):
            kind, offset, length = phdr.unpack_from(table, i * size)
            if kind != _PT_INTERP:
                continue
            if 2 <= length <= _PATH_MAX:
                try:
                    text = os.pread(fd, length, offset)
                except (OverflowError, ValueError):
                    text = b""
                if len(text) == length and text[-1] == 0 and text[0]:
                    found.append(text.split(b"\0", 1)[0])
            break  # only the first PT_INTERP counts
    return tuple(dict.fromkeys(found))


_WAIT_STATUS = struct.Struct("<i")


def run_broker(
    channel: socket.socket,
    listener: int,
    agent_pid: int,
    status_fd: int,
    forward: int = -1,
    native_count: mmap.mmap | None = None,
    native_decider: Callable[[bytes, int], int] | None = None,
    terminal: int = -1,
    read_lane: tuple[int, int, int] = (-1, -1, -1),
) -> int:
    """The broker's main loop, which is also the init of the agent's PID namespace.

    Serves the supervisor until the agent's main process exits, reaping every
    orphan meanwhile.  With a `forward` socket the broker also receives the
    agent's notifications itself (the native path) and forwards what it does
    not answer; with `read_lane` (a fanotify group, the Landlock ruleset of
    its reader thread and the broker's own copy of the mount tree), the
    reads the kernel asks about too.  Writes the
    agent's raw wait status to `status_fd` and returns the exit code to
    leave with.
    """
    # Signals stay blocked for good: nothing may interrupt an ADDFD, and a
    # child's exit is seen on its pidfd instead of through SIGCHLD.
    signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})
    os.umask(0)  # modes arrive with the agent's umask already applied
    broker = Broker(channel, listener, terminal)
    agent = os.pidfd_open(agent_pid)
    for private in (channel.fileno(), listener, agent, status_fd, forward, terminal):
        with contextlib.suppress(OSError):
            st = os.fstat(private)
            broker.private.add((st.st_dev, st.st_ino))
    native = _fastpath.native if forward >= 0 and listener >= 0 else None
    group, ruleset, own_view = read_lane
    if group >= 0 and (native is None or not _lane_started(native, group, ruleset, own_view)):
        # The filter lets the agent's reads through to a group no one answers.
        with contextlib.suppress(OSError):
            os.kill(agent_pid, signal.SIGKILL)
    if native is not None:
        native.configure(
            _fastpath.VALID_OPEN_FLAGS, _fastpath.WRITE_FLAGS, _SETFL_FLAGS, broker.procfs_devices
        )
        native.set_decider(native_decider)
        counter = native_count if native_count is not None else mmap.mmap(-1, mmap.PAGESIZE)
        status = _serve_natively(native, broker, listener, forward, agent, agent_pid, counter)
    else:
        status = _serve(broker, agent, agent_pid)
    broker.end_waiting()
    if group >= 0:
        # Every process of the agent's ends before this init does: its opens
        # waiting on the group must not outlive the broker's answers.
        _end_namespace()
    with contextlib.suppress(OSError):
        os.write(status_fd, _WAIT_STATUS.pack(status))
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status) & 0xFF


def _lane_started(native: Any, group: int, ruleset: int, own_view: int) -> bool:
    try:
        native.lane_start(group, ruleset, own_view)
    except OSError:
        return False
    return True


def _end_namespace() -> None:
    """As the init of the agent's PID namespace: kill every other process in
    it and reap until none is left (kill(-1) from an init reaches only its
    own namespace)."""
    if os.getpid() != 1:
        return
    with contextlib.suppress(OSError):
        os.kill(-1, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _serve(broker: Broker, agent: int, agent_pid: int) -> int:
    """Requests from the supervisor until the agent exits; its raw wait status."""
    channel = broker.channel
    poller = select.poll()
    poller.register(channel, select.POLLIN)
    poller.register(agent, select.POLLIN)
    status: int | None = None
    serving = True
    served = 0
    while status is None:
        ready = poller.poll(_WAITING_CHECK_MS if broker.waiting else 1000)
        broker.check_waiting(time.monotonic())
        for fd, events in ready:
            if fd == channel.fileno() and serving:
                serving = bool(events & select.POLLIN) and broker.serve_one()
                served += 1
                if not serving:
                    poller.unregister(channel)
        # Reap when the agent ended, when idle, and now and then for orphans:
        # not after every request, where it costs a syscall or two each.
        if not ready or served % 64 == 0 or any(fd == agent for fd, _ in ready):
            status = _reap(agent_pid)
    return status


def _serve_natively(
    native: Any,
    broker: Broker,
    listener: int,
    forward: int,
    agent: int,
    agent_pid: int,
    counter: mmap.mmap,
) -> int:
    """The native loop answers the listener; requests from the supervisor come back here."""
    status: int | None = None
    served = 0
    while status is None:
        # (Its timeout bounds its whole run, not one wait: see fp_serve.)
        timeout = _WAITING_CHECK_MS if broker.waiting else 1000
        why = native.serve(listener, forward, broker.channel.fileno(), agent, timeout, counter)
        broker.check_waiting(time.monotonic())
        if why == native.SERVE_CHANNEL:
            if not broker.serve_one() or not _serve_quiesced(broker):
                break  # the supervisor is gone: so is every decision
            served += 1
            if served % 64:
                continue
        elif why == native.SERVE_LISTENER_GONE:
            return _serve(broker, agent, agent_pid)  # no task left on the filter
        status = _reap(agent_pid)
    if status is None:  # the supervisor hung up first: end the namespace with the agent
        with contextlib.suppress(OSError):
            os.kill(agent_pid, signal.SIGKILL)
        while status is None:
            status = _reap(agent_pid)
            if status is None:
                select.select([agent], [], [], 1.0)
    return status


def _serve_quiesced(broker: Broker) -> bool:
    """While a move is being judged (`Broker.quiesced`), only the supervisor is
    served; False when it hung up.  A supervisor silent for QUIESCE_LIMIT is
    stuck (judging the largest tree rule by rule takes a few seconds), and
    the native path goes on."""
    while broker.quiesced:
        ready, _, _ = select.select([broker.channel], [], [], QUIESCE_LIMIT)
        if not ready:
            broker.quiesced = False
        elif not broker.serve_one():
            return False
    return True


def _forget(policy_changed: bool) -> None:
    if _fastpath.native is not None:
        _fastpath.native.forget()
        if policy_changed:
            _fastpath.native.set_decider(None)
            # Other rules protect other files: the supervisor walks for them anew.
            _fastpath.native.unprotect()


def _pin_reads(waiting: dict[int, tuple[int, bool]]) -> None:
    """The native path pins reads first while a FIFO writer waits (see pin_reads
    in _fastpath.c); the Python path always does (`Broker._open`)."""
    if _fastpath.native is not None:
        _fastpath.native.pin_reads(any(writes for _notif_id, writes in waiting.values()))


def _expect_exec(notif_id: object, dev: object, ino: object, cmdline: object) -> None:
    if _fastpath.native is not None and isinstance(cmdline, bytes):
        assert isinstance(notif_id, int) and isinstance(dev, int) and isinstance(ino, int)
        _fastpath.native.expect_exec(notif_id, dev, ino, cmdline)


def _protect(keys: object) -> None:
    if _fastpath.native is not None and isinstance(keys, bytes):
        _fastpath.native.protect(keys)


def _lane_answer(asked: object, allow: object) -> None:
    if _fastpath.native is not None and isinstance(asked, int) and isinstance(allow, bool):
        _fastpath.native.lane_answer(asked & (1 << 64) - 1, allow)


def _lane_helper(pid: int, on: bool) -> None:
    if _fastpath.native is not None and pid > 0:
        _fastpath.native.lane_helper(pid, on)


def _lane_flush() -> None:
    if _fastpath.native is not None:
        _fastpath.native.lane_flush()


def _allow(path: object, bits: object) -> None:
    if _fastpath.native is not None and isinstance(path, bytes) and isinstance(bits, int):
        _fastpath.native.allow(path, bits)


def _reap(agent_pid: int) -> int | None:
    """Reap every exited child; the agent's raw status once it is among them."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == agent_pid:
            found = status


def read_wait_status(fd: int) -> int | None:
    """What `run_broker` wrote to `status_fd`, if it got that far."""
    try:
        data = os.read(fd, _WAIT_STATUS.size)
    except OSError:
        return None
    return _WAIT_STATUS.unpack(data)[0] if len(data) == _WAIT_STATUS.size else None
