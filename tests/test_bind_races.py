"""A unix-socket bind is made in the very directory it was judged in.

The attack (red team 22): one agent thread keeps switching its cwd between a
fresh /tmp/dN and the workspace with chdir (never mediated) while another
binds an AF_UNIX socket to `own.sock` (or `.git/fsmonitor--daemon.ipc`).  The
supervisor judged the name from the cwd it read (/tmp/dN: the agent's own
socket, allowed), then the broker opened /proc/PID/cwd again and bound the
name by its string there: under `strict`, which refuses every unix bind in
the workspace, a socket `.env` appeared in the workspace, with nothing
recorded.  (A `.env` is no name to bind in /tmp either now: a bind is a
write of its name, and the sandbox's home lies under /tmp.)  The same gap
held for an absolute path whose directory is swapped for a symlink into the
workspace meanwhile (the `swap` case: a guard,
the serialized mediation of the renames kept it from reproducing here).

Now the directory pinned for the decision goes to the broker: a bare name is
bound there (nothing is looked up again); a path with a slash is bound whole
(so getsockname() still says what the agent gave) by a thread Landlock lets
make a socket beneath that directory only, so a cwd or directory changed
since fails.  No socket appears in the workspace, every bind that succeeds
made its socket in a /tmp directory, and getsockname() is the agent's name.
"""

from __future__ import annotations

import json

import pytest
from conftest import Sandbox, both_paths, fastpath_env

pytestmark = [pytest.mark.requires_seccomp_notify, pytest.mark.requires_landlock]

# argv: the mode (cwd: race chdir against a relative bind; swap: race a
# directory/symlink swap against an absolute bind), the name, the tries.
AGENT = r"""
import glob, json, os, socket, stat, sys, threading, time
mode, name, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
ws = os.getcwd()
sub = os.path.dirname(name)
stop = False
cur = ["/tmp/d0"]
os.makedirs(os.path.join(cur[0], sub), exist_ok=True)

def flip_cwd():
    while not stop:
        try:
            os.chdir(cur[0])
        except OSError:
            pass
        os.chdir(ws)

def swap_dir():  # /tmp/box/d: a real directory, then a symlink to the workspace
    while not stop:
        try:
            os.rename("/tmp/box/d", "/tmp/box/real")
            os.rename("/tmp/box/link", "/tmp/box/d")
            os.rename("/tmp/box/d", "/tmp/box/link")
            os.rename("/tmp/box/real", "/tmp/box/d")
        except OSError:
            pass

if mode == "swap":
    os.makedirs("/tmp/box/d", exist_ok=True)
    os.symlink(ws, "/tmp/box/link")
thread = threading.Thread(target=flip_cwd if mode == "cwd" else swap_dir, daemon=True)
thread.start()
bound, names, errors = 0, set(), set()
deadline = time.monotonic() + 4
for i in range(1, tries + 1):
    if time.monotonic() > deadline or os.path.exists(os.path.join(ws, name)):
        break
    if mode == "cwd":
        cur[0] = f"/tmp/d{i}"
        os.makedirs(os.path.join(cur[0], sub))
        address = name
    else:
        address = f"/tmp/box/d/{name}.{i}"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(address)
    except OSError as exc:
        errors.add(exc.errno)
    else:
        bound += 1
        names.add(s.getsockname() == address)
    s.close()
stop = True
thread.join()
os.chdir(ws)
if mode == "cwd":
    made = glob.glob(f"/tmp/d*/{name}")
else:
    made = [p for p in glob.glob("/tmp/box/*/*") if not os.path.islink(os.path.dirname(p))]
made = [p for p in made if stat.S_ISSOCK(os.lstat(p).st_mode)]
in_ws = [p for p in os.listdir(ws) if not p.endswith(".py")]
in_ws += os.listdir(os.path.join(ws, ".git"))
print(json.dumps({"bound": bound, "made": len(made), "names": sorted(names),
                  "workspace": sorted(in_ws), "errors": sorted(errors)}), flush=True)
"""


@both_paths
@pytest.mark.parametrize(
    ("mode", "name"),
    [("cwd", "own.sock"), ("cwd", ".git/fsmonitor--daemon.ipc"), ("swap", "s.sock")],
)
def test_a_bind_lands_where_it_was_judged(
    sandbox: Sandbox, native: bool, mode: str, name: str
) -> None:
    (sandbox.workspace / ".git").mkdir(exist_ok=True)
    (sandbox.workspace / "race.py").write_text(AGENT)
    result = sandbox.run(
        "python3", "race.py", mode, name, "1500", timeout=90, env=fastpath_env(native)
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["workspace"] == [".git"], report  # no socket ever made there
    assert not [p for p in sandbox.workspace.rglob("*") if p.is_socket()]
    assert list((sandbox.workspace / ".git").iterdir()) == []
    assert report["bound"] > 0, report  # the race ran: some binds were judged in /tmp
    assert report["made"] == report["bound"], report  # each where it was judged
    assert report["names"] == [True], report  # getsockname(): the agent's own name
