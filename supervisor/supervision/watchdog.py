"""Kill the agent tree if its supervisor dies.

Run as `python -m agentsup.supervision.watchdog --pid SUPERVISOR_PID --group PATH
[--group PATH ...]`, normally started with `spawn_watchdog`.  It waits on a pidfd of the
supervisor.  When the supervisor dies, however it dies, the watchdog kills
every process in the agent's groups, removes the groups and exits 0.  It also
exits 0 when the groups disappear (the supervisor cleaned up) or on SIGTERM
(the supervisor's clean exit).

Without it, a SIGKILLed supervisor leaves an agent running unsupervised: its
trapped syscalls fail with ENOSYS, but everything else keeps working.

Imports are kept minimal so it starts fast.
"""

from __future__ import annotations

import contextlib
import os
import resource  # imported now: an import needs fds, which may be gone later
import select
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from ..kernel.cgroup import kill_groups, remove_groups
from ..paths import own_python

if TYPE_CHECKING:
    import subprocess

    from ..kernel.cgroup import AgentCgroup

# How often to look whether the supervisor removed the groups itself.
_GROUP_CHECK_MS = 500
# Enough fds for the cleanup (a pidfd per process signalled, a group file).
_MIN_FDS = 256


def spawn_watchdog(supervisor_pid: int, cgroup: AgentCgroup) -> subprocess.Popen[bytes]:
    """Start the watchdog for `cgroup`, outside the agent's groups.

    Call it from the supervisor, before the agent is started, so the watchdog
    inherits the supervisor's cgroup.  It gets its own judge, so a Ctrl-C
    meant for the foreground supervisor does not take it down too.
    """
    import subprocess

    command = own_python("-m", "agentsup.supervision.watchdog", "--pid", str(supervisor_pid))
    for path in cgroup.paths:
        command += ["--group", path]
    return subprocess.Popen(
        command,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,
    )


def _parse_args(argv: Sequence[str]) -> tuple[int, list[str]]:
    # A hand parser: argparse alone costs more start-up time than the rest.
    usage = (
        "usage: python -m agentsup.supervision.watchdog --pid PID --group PATH [--group PATH ...]"
    )
    pid: int | None = None
    groups: list[str] = []
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag not in ("--pid", "--group") or not args:
            raise SystemExit(f"{usage}\nunexpected argument: {flag}")
        value = args.pop(0)
        if flag == "--group":
            groups.append(value)
        elif value.isdigit() and int(value) > 0:
            pid = int(value)
        else:
            raise SystemExit(f"{usage}\nbad pid: {value}")
    if pid is None or not groups:
        raise SystemExit(usage)
    return pid, groups


def _supervisor_gone(pid: int, groups: list[str]) -> bool:
    """Block until the supervisor exits (True) or the groups vanish (False).

    Nothing an agent can do to this process may end the wait early: if
    poll fails (an agent once lowered our RLIMIT_NOFILE below one fd, and
    poll said EINVAL), the limit is put back and the pidfd is probed with
    signal 0 instead, twice a second.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while True:
            try:
                if poller.poll(_GROUP_CHECK_MS):
                    return True
            except OSError:
                _restore_fd_limit()
                time.sleep(_GROUP_CHECK_MS / 1000)
                if not _alive(pidfd):
                    return True
            if not _groups_exist(groups):
                return False
    finally:
        os.close(pidfd)


def _alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # cannot tell: keep waiting, the poll may work again
    return True


def _groups_exist(groups: list[str]) -> bool:
    try:
        return any(os.path.isdir(group) for group in groups)
    except OSError:
        return True  # cannot look (isdir needs no fd, but be sure): assume so


def _restore_fd_limit() -> None:
    """Put RLIMIT_NOFILE back to something sane; the cleanup needs a few fds."""
    with contextlib.suppress(OSError, ValueError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < _MIN_FDS:
            wanted = max(hard, _MIN_FDS) if os.geteuid() == 0 else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(_MIN_FDS, wanted), wanted))


def _quiet_exit(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    pid, groups = _parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _quiet_exit)
    if not _supervisor_gone(pid, groups):
        return 0
    # The supervisor is gone: from here on nothing may stop the cleanup.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for attempt in range(3):
        _restore_fd_limit()
        try:
            if not kill_groups(groups, timeout=5.0):
                print(f"agentsup watchdog: processes left in {groups}", file=sys.stderr)
            break
        except OSError as exc:  # out of fds or memory for a moment: try again
            print(
                f"agentsup watchdog: cleanup failed ({exc}), attempt {attempt + 1}", file=sys.stderr
            )
            time.sleep(0.2)
    remove_groups(groups)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
