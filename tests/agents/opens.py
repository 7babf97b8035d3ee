"""An agent that opens a fixed list of paths, twice, and reports what each gave.

    opens.py WORKSPACE

One JSON line per open: the case, the pass (0: first time, 1: again, when
the supervisor has decided it before), and the outcome: the errno name, or
the fd's status flags, close-on-exec bit, file type and first bytes.  The
native and the Python paths must print the same lines.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import stat
import sys

_O_LARGEFILE = 0o100000


def outcome(fd: int) -> dict[str, object]:
    st = os.fstat(fd)
    kind = "dir" if stat.S_ISDIR(st.st_mode) else "reg" if stat.S_ISREG(st.st_mode) else "other"
    status = fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_LARGEFILE
    data = b""
    if kind == "reg" and status & os.O_ACCMODE != os.O_WRONLY:
        data = os.pread(fd, 16, 0)
    return {
        "flags": status,
        "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        "kind": kind,
        "data": data.decode(errors="replace"),
    }


def attempt(path: str, flags: int, dir_fd: int | None = None) -> dict[str, object]:
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        return {"error": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    try:
        return outcome(fd)
    finally:
        os.close(fd)


def change(what: str, call: object) -> dict[str, object]:
    """Run one create/unlink-style call; what it gave (the mode of a created file)."""
    try:
        result = call()  # type: ignore[operator]
    except OSError as exc:
        return {"error": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
    if what == "mkdir" and isinstance(result, str):
        return {"mode": oct(os.stat(result).st_mode & 0o7777)}
    if isinstance(result, int) and what == "create":
        try:
            return {"mode": oct(os.fstat(result).st_mode & 0o7777)}
        finally:
            os.close(result)
    return {"ok": True}


_AT_FDCWD, _RENAME_NOREPLACE, _RENAME_EXCHANGE = -100, 1, 2


def renameat2(old: str, new: str, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def touched_then(path: str, call: object) -> object:
    """A file made at `path` (outside what is compared), then `call`."""

    def run() -> object:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        return call()  # type: ignore[operator]

    return run


def moves(ws: str, round_: int) -> list[tuple[str, dict[str, object]]]:
    """Renames and hard links, on names new to each round."""
    src, moved, sub_moved = f"{ws}/to-move-{round_}", f"{ws}/moved-{round_}", f"{ws}/sub/m-{round_}"
    sub = os.open(f"{ws}/sub", os.O_RDONLY | os.O_DIRECTORY)
    cases: list[tuple[str, object]] = [
        ("rename", touched_then(src, lambda: os.rename(src, moved))),
        ("rename over a file", touched_then(src, lambda: os.rename(src, moved))),
        ("rename relative", lambda: os.rename(f"moved-{round_}", f"moved-{round_}.rel")),
        (
            "rename through a symlinked directory",
            lambda: os.rename(f"{moved}.rel", f"{ws}/link-to-sub/m-{round_}"),
        ),
        ("rename a missing file", lambda: os.rename(f"{ws}/no-such", f"{ws}/x-{round_}")),
        ("rename refused to move", lambda: os.rename(f"{ws}/stay.txt", f"{ws}/stayed")),
        ("rename onto a refused name", lambda: os.rename(sub_moved, f"{ws}/refused-m-{round_}")),
        ("rename into a missing directory", lambda: os.rename(sub_moved, f"{ws}/nowhere/x")),
        ("rename outside every rule", lambda: os.rename(sub_moved, f"/srv/m-{round_}")),
        (
            "rename no-replace onto a file",
            lambda: renameat2(sub_moved, f"{ws}/plain.txt", _RENAME_NOREPLACE),
        ),
        ("rename no-replace", lambda: renameat2(sub_moved, f"{sub_moved}.nr", _RENAME_NOREPLACE)),
        (
            "rename exchange",
            lambda: renameat2(f"{sub_moved}.nr", f"{ws}/scratch.txt", _RENAME_EXCHANGE),
        ),
        (
            "rename at dirfds",
            lambda: os.rename(f"m-{round_}.nr", f"m-{round_}.at", src_dir_fd=sub, dst_dir_fd=sub),
        ),
        (
            "rename a directory",
            touched_then(
                f"{ws}/full/x-{round_}", lambda: os.rename(f"{ws}/full", f"{ws}/full-{round_}")
            ),
        ),
        ("rename a directory back", lambda: os.rename(f"{ws}/full-{round_}", f"{ws}/full")),
        ("link", touched_then(src, lambda: os.link(src, f"{ws}/ln-{round_}"))),
        ("link again", lambda: os.link(src, f"{ws}/ln-{round_}")),
        ("link a file with two names", lambda: os.link(src, f"{ws}/ln-{round_}.two")),
        ("link refused to read", lambda: os.link(f"{ws}/refused.txt", f"{ws}/from-r-{round_}")),
        (
            "link onto a refused name",
            touched_then(f"{src}.b", lambda: os.link(f"{src}.b", f"{ws}/refused-ln-{round_}")),
        ),
        ("link a directory", lambda: os.link(f"{ws}/sub", f"{ws}/sub-ln-{round_}")),
        ("link a missing file", lambda: os.link(f"{ws}/no-such", f"{ws}/ln-x-{round_}")),
        ("link into a missing directory", lambda: os.link(f"{src}.b", f"{ws}/nowhere/x")),
        (
            "link a symlink",
            lambda: os.link(f"{ws}/dangling", f"{ws}/ln-dangling-{round_}", follow_symlinks=False),
        ),
        (
            "link following a symlink",
            lambda: os.link(f"{ws}/link-to-linkable", f"{ws}/ln-f-{round_}", follow_symlinks=True),
        ),
        (
            "link relative",
            touched_then(f"{src}.c", lambda: os.link(f"to-move-{round_}.c", f"ln-{round_}.rel")),
        ),
        (
            "link at dirfds",
            touched_then(
                f"{ws}/sub/at-{round_}",
                lambda: os.link(f"at-{round_}", f"at-{round_}.ln", src_dir_fd=sub, dst_dir_fd=sub),
            ),
        ),
        ("link outside every rule", lambda: os.link(f"{src}.b", f"/srv/ln-{round_}")),
    ]
    try:
        return [(name, change("move", call)) for name, call in cases]
    finally:
        os.close(sub)


def files(ws: str, round_: int) -> list[tuple[str, dict[str, object]]]:
    """Creates and removals, on names new to each round."""
    new = f"{ws}/new-{round_}.txt"
    made = f"{ws}/made-{round_}"
    create, wo = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.O_WRONLY
    rw = os.O_RDWR | os.O_CREAT
    missing, linked = f"{ws}/nowhere/x", f"{ws}/link-to-sub/new-{round_}"

    def make(path: str, flags: int, mode: int) -> object:
        return lambda: os.open(path, flags, mode)

    def make_dir(path: str, mode: int = 0o777, dir_fd: int | None = None) -> object:
        def call() -> str:
            os.mkdir(path, mode, dir_fd=dir_fd)
            return path if dir_fd is None else f"{ws}/sub/{path}"

        return call

    cases: list[tuple[str, object, str]] = [
        ("create", make(new, create, 0o4777), "create"),
        ("create exclusive new", make(new + ".x", wo | os.O_CREAT | os.O_EXCL, 0o640), "create"),
        ("create read-write", make(new + ".rw", os.O_RDWR | os.O_CREAT, 0o600), "create"),
        ("create relative", make(f"new-{round_}.rel", create, 0o666), "create"),
        ("create in a missing directory", make(missing, create, 0o644), "create"),
        ("create read-write in a missing directory", make(missing, rw, 0o644), "create"),
        ("create relative in a missing directory", make("nowhere/x", create, 0o644), "create"),
        ("create refused in a missing directory", make(f"{ws}/gone/x", create, 0o644), "create"),
        (
            "create in a missing directory, dotdot",
            make(f"{ws}/sub/../nowhere/x", create, 0o644),
            "create",
        ),
        (
            "create in a missing directory, double slash",
            make(f"{ws}//nowhere/x", create, 0o644),
            "create",
        ),
        ("create below a file", make(f"{ws}/plain.txt/x", create, 0o644), "create"),
        ("create through a symlinked directory", make(linked, create, 0o640), "create"),
        ("create through a dangling link", make(f"{ws}/dangling", create, 0o644), "create"),
        ("create refused", make(f"{ws}/refused-new-{round_}.txt", create, 0o644), "create"),
        ("create with a trailing slash", make(f"{ws}/slash-{round_}/", create, 0o644), "create"),
        ("unlink", lambda: os.unlink(new), "unlink"),
        ("unlink again", lambda: os.unlink(new), "unlink"),
        ("unlink relative", lambda: os.unlink(f"new-{round_}.rel"), "unlink"),
        ("unlink refused", lambda: os.unlink(f"{ws}/refused.txt"), "unlink"),
        ("unlink a directory", lambda: os.unlink(f"{ws}/sub"), "unlink"),
        ("mkdir", make_dir(made), "mkdir"),
        ("mkdir with set-id bits", make_dir(f"{made}.ids", 0o7777), "mkdir"),
        ("mkdir with a mode", make_dir(f"{made}.m", 0o750), "mkdir"),
        ("mkdir relative", make_dir(f"made-{round_}.rel"), "mkdir"),
        (
            "mkdir at a dirfd",
            make_dir(f"made-{round_}.at", dir_fd=os.open(f"{ws}/sub", 0)),
            "mkdir",
        ),
        (
            "mkdir through a symlinked directory",
            make_dir(f"{ws}/link-to-sub/made-{round_}"),
            "mkdir",
        ),
        ("mkdir existing", make_dir(f"{ws}/sub"), "mkdir"),
        ("mkdir over a file", make_dir(f"{ws}/plain.txt"), "mkdir"),
        ("mkdir over a dangling link", make_dir(f"{ws}/dangling"), "mkdir"),
        ("mkdir refused", make_dir(f"{ws}/sub/refused-dir-{round_}"), "mkdir"),
        ("mkdir in a missing directory", make_dir(f"{ws}/nowhere/d"), "mkdir"),
        ("mkdir refused in a missing directory", make_dir(f"{ws}/gone/d"), "mkdir"),
        ("mkdir below a file", make_dir(f"{ws}/plain.txt/d"), "mkdir"),
        ("mkdir with a trailing slash", make_dir(f"{made}.slash/"), "mkdir"),
        ("mkdir outside every rule", make_dir(f"/srv/made-{round_}"), "mkdir"),
        ("rmdir with a trailing slash", lambda: os.rmdir(made + "/"), "rmdir"),
        ("rmdir not empty", lambda: os.rmdir(f"{ws}/full"), "rmdir"),
        ("rmdir a file", lambda: os.rmdir(new + ".x"), "rmdir"),
        ("unlink dot", lambda: os.unlink(f"{ws}/sub/."), "unlink"),
        ("unlink through a symlinked directory", lambda: os.unlink(linked), "unlink"),
        ("unlink in a missing directory", lambda: os.unlink(missing), "unlink"),
    ]
    return [(name, change(kind, call)) for name, call, kind in cases]


_UTIME_OMIT, _AT_SYMLINK_NOFOLLOW = (1 << 30) - 2, 0x100


def utimensat(path: str, times: tuple[int, int, int, int]) -> None:
    """utimensat(AT_FDCWD, path, times) with the nanoseconds as given (os.utime checks them)."""
    libc = ctypes.CDLL(None, use_errno=True)
    given = (ctypes.c_long * 4)(*times)
    if libc.utimensat(_AT_FDCWD, os.fsencode(path), given, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def touches(ws: str, round_: int) -> list[tuple[str, dict[str, object]]]:
    """utime by name: what each gave, and the modification time it left."""
    at = 1_000_000_000 + round_
    given = (at, 123), (at + 1, 456)
    ns = (given[0][0] * 10**9 + given[0][1], given[1][0] * 10**9 + given[1][1])
    sub = os.open(f"{ws}/sub", os.O_RDONLY | os.O_DIRECTORY)

    def touch(path: str, follow: bool = True, dir_fd: int | None = None) -> object:
        def call() -> None:
            os.utime(path, ns=ns, follow_symlinks=follow, dir_fd=dir_fd)

        return call

    cases: list[tuple[str, object, str]] = [
        ("utime", touch(f"{ws}/scratch.txt"), f"{ws}/scratch.txt"),
        ("utime now", lambda: os.utime(f"{ws}/log.txt"), ""),
        ("utime relative", touch("log.txt"), f"{ws}/log.txt"),
        ("utime at a dirfd", touch("inside.txt", dir_fd=sub), f"{ws}/sub/inside.txt"),
        ("utime through a symlink", touch(f"{ws}/link-to-plain"), f"{ws}/plain.txt"),
        ("utime a symlink itself", touch(f"{ws}/link-to-plain", follow=False),
         f"{ws}/link-to-plain"),
        ("utime a hard link", touch(f"{ws}/linked.txt"), f"{ws}/linked.txt"),
        ("utime a directory", touch(f"{ws}/full"), f"{ws}/full"),
        ("utime refused", touch(f"{ws}/read-only.txt"), ""),
        ("utime missing", touch(f"{ws}/missing.txt"), ""),
        ("utime refused and missing", touch(f"{ws}/gone/x"), ""),
        ("utime nanoseconds out of range", lambda: utimensat(f"{ws}/scratch.txt", (at, -5, at, 0)),
         ""),
        ("utime omitting both",
         lambda: utimensat(f"{ws}/scratch.txt", (at, _UTIME_OMIT, at, _UTIME_OMIT)), ""),
    ]  # fmt: skip
    results: list[tuple[str, dict[str, object]]] = []
    for name, call, check in cases:
        outcome_ = change("utime", call)
        if "ok" in outcome_ and check:
            outcome_["mtime"] = os.stat(check, follow_symlinks=False).st_mtime_ns
        results.append((name, outcome_))
    os.close(sub)
    return results


def held(ws: str, round_: int) -> list[tuple[str, dict[str, object]]]:
    """fchmod, fchown and futimens on fds the agent holds, and chmod by name:
    what each gave and left."""
    ns = ((1_000_000_000 + round_) * 10**9, (1_000_000_100 + round_) * 10**9)

    def on(path: str, flags: int, call: object) -> object:
        def run() -> None:
            fd = os.open(path, flags)
            try:
                call(fd)  # type: ignore[operator]
            finally:
                os.close(fd)

        return run

    ro, wo = os.O_RDONLY, os.O_WRONLY
    sub = os.open(f"{ws}/sub", os.O_RDONLY | os.O_DIRECTORY)
    cases: list[tuple[str, object, str]] = [
        ("fchmod", on(f"{ws}/scratch.txt", wo, lambda fd: os.fchmod(fd, 0o640)),
         f"{ws}/scratch.txt"),
        ("fchmod set-id bits", on(f"{ws}/log.txt", ro, lambda fd: os.fchmod(fd, 0o6755)),
         f"{ws}/log.txt"),
        ("fchmod a hard link", on(f"{ws}/linked.txt", ro, lambda fd: os.fchmod(fd, 0o600)),
         f"{ws}/linked.txt"),
        ("fchmod a directory", on(f"{ws}/full", ro, lambda fd: os.fchmod(fd, 0o750)),
         f"{ws}/full"),
        ("fchmod a bad fd", lambda: os.fchmod(999, 0o600), ""),
        ("fchown to nobody new", on(f"{ws}/scratch.txt", ro,
                                    lambda fd: os.fchown(fd, os.getuid(), os.getgid())), ""),
        ("fchown leaving both", on(f"{ws}/scratch.txt", ro, lambda fd: os.fchown(fd, -1, -1)), ""),
        ("futimens", on(f"{ws}/scratch.txt", ro, lambda fd: os.utime(fd, ns=ns)),
         f"{ws}/scratch.txt"),
        ("futimens now", on(f"{ws}/log.txt", ro, lambda fd: os.utime(fd)), ""),
        ("futimens refused", on(f"{ws}/read-only.txt", ro, lambda fd: os.utime(fd, ns=ns)), ""),
        ("futimens a hard link", on(f"{ws}/linked.txt", ro, lambda fd: os.utime(fd, ns=ns)),
         f"{ws}/linked.txt"),
        ("fchmod refused", on(f"{ws}/stay.txt", ro, lambda fd: os.fchmod(fd, 0o600)), ""),
        # and by name
        ("chmod", lambda: os.chmod(f"{ws}/scratch.txt", 0o600), f"{ws}/scratch.txt"),
        ("chmod relative", lambda: os.chmod("log.txt", 0o640), f"{ws}/log.txt"),
        ("chmod at a dirfd", lambda: os.chmod("inside.txt", 0o604, dir_fd=sub),
         f"{ws}/sub/inside.txt"),
        ("chmod set-id bits", lambda: os.chmod(f"{ws}/scratch.txt", 0o6755), f"{ws}/scratch.txt"),
        ("chmod a directory with set-id bits", lambda: os.chmod(f"{ws}/full", 0o2775),
         f"{ws}/full"),
        ("chmod a hard link", lambda: os.chmod(f"{ws}/linked.txt", 0o600), f"{ws}/linked.txt"),
        ("chmod through a symlink", lambda: os.chmod(f"{ws}/link-to-plain", 0o644),
         f"{ws}/plain.txt"),
        ("chmod missing", lambda: os.chmod(f"{ws}/missing.txt", 0o600), ""),
        ("chmod refused", lambda: os.chmod(f"{ws}/stay.txt", 0o600), ""),
        ("chmod refused and missing", lambda: os.chmod(f"{ws}/stay-missing", 0o600), ""),
    ]  # fmt: skip
    results: list[tuple[str, dict[str, object]]] = []
    for name, call, check in cases:
        outcome_ = change("held", call)
        if "ok" in outcome_ and check:
            st = os.stat(check)
            if "chmod" in name:
                outcome_["mode"] = oct(st.st_mode & 0o7777)
            else:
                outcome_["mtime"] = st.st_mtime_ns
        results.append((name, outcome_))
    os.close(sub)
    return results


def main() -> int:
    ws = sys.argv[1]
    os.chdir(ws)
    ro, wo, rw = os.O_RDONLY, os.O_WRONLY, os.O_RDWR
    cases: list[tuple[str, str, int]] = [
        ("read", f"{ws}/plain.txt", ro),
        ("read cloexec", f"{ws}/plain.txt", ro | os.O_CLOEXEC),
        ("read nonblock", f"{ws}/plain.txt", ro | os.O_NONBLOCK),
        ("read relative", "plain.txt", ro),
        ("read dotdot", f"{ws}/sub/../plain.txt", ro),
        ("read with a double slash", f"{ws}//plain.txt", ro),
        ("read with a dot", f"{ws}/./plain.txt", ro),
        ("read through a symlinked directory", f"{ws}/link-to-sub/inside.txt", ro),
        ("write through a symlinked directory", f"{ws}/link-to-sub/inside.txt", wo),
        ("read a refused file through a symlinked directory", f"{ws}/link-to-sub/refused.txt", ro),
        ("read through symlink", f"{ws}/link-to-plain", ro),
        ("nofollow symlink", f"{ws}/link-to-plain", ro | os.O_NOFOLLOW),
        ("missing", f"{ws}/missing.txt", ro),
        ("missing dir", f"{ws}/nowhere/missing.txt", ro),
        ("file as dir", f"{ws}/plain.txt/x", ro),
        ("directory", ws, ro | os.O_DIRECTORY),
        ("directory for writing", ws, wo),
        ("file as O_DIRECTORY", f"{ws}/plain.txt", ro | os.O_DIRECTORY),
        ("truncate", f"{ws}/scratch.txt", wo | os.O_TRUNC),
        ("append", f"{ws}/log.txt", wo | os.O_APPEND),
        ("read-write", f"{ws}/log.txt", rw),
        ("create existing", f"{ws}/plain.txt", ro | os.O_CREAT),
        ("create exclusive existing", f"{ws}/plain.txt", wo | os.O_CREAT | os.O_EXCL),
        ("hard link", f"{ws}/linked.txt", ro),
        ("fifo", f"{ws}/fifo", ro | os.O_NONBLOCK),
        ("refused", f"{ws}/refused.txt", ro),
        ("refused through symlink", f"{ws}/link-to-refused", ro),
        ("write refused", f"{ws}/read-only.txt", wo),
        ("read the read-only", f"{ws}/read-only.txt", ro),
        ("dev null", "/dev/null", rw),
        ("dev null as a redirect", "/dev/null", wo | os.O_CREAT | os.O_TRUNC),
        ("dev zero", "/dev/zero", ro),
        ("dev urandom", "/dev/urandom", ro | os.O_CLOEXEC),
        ("dev tty", "/dev/tty", rw | os.O_NOCTTY),
        ("proc self", "/proc/self/status", ro),
        ("private tmp", "/tmp/opens-scratch", ro),
        ("outside every rule", "/srv", ro | os.O_DIRECTORY),
    ]
    sub = os.open(f"{ws}/sub", os.O_RDONLY | os.O_DIRECTORY)
    for round_ in (0, 1):
        for name, path, flags in cases:
            print(json.dumps({"case": name, "pass": round_, **attempt(path, flags)}), flush=True)
        result = attempt("../plain.txt", ro, dir_fd=sub)
        print(json.dumps({"case": "dirfd relative", "pass": round_, **result}), flush=True)
        for name, outcome_ in (
            files(ws, round_) + moves(ws, round_) + touches(ws, round_) + held(ws, round_)
        ):
            print(json.dumps({"case": name, "pass": round_, **outcome_}), flush=True)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    # /tmp is the agent's own: make the file it reads there first.
    with open("/tmp/opens-scratch", "w") as scratch:
        scratch.write("scratch\n")
    sys.exit(main())
