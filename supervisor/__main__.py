"""`python -m agentsup`.

`-m` puts the current directory first on sys.path (and an empty PYTHONPATH
entry, `PYTHONPATH=/x:`, puts it there again), and the supervisor runs as
root in what is often the agent's workspace: a `tty.py` or `json.py` the
agent left there would be imported in its place.  Every entry that means the
current directory (empty, relative, or it by name) is dropped before
anything else is imported.  (A directory named `agentsup` there would be
imported before this runs: the installed `agentsup` command, or
`python -P -m agentsup`, never looks in the current directory itself.)
"""

import os
import sys

_here = os.getcwd()
sys.path[:] = [
    entry
    for entry in sys.path
    if entry and os.path.isabs(entry) and os.path.realpath(entry) != os.path.realpath(_here)
]

from .cli.main import main  # noqa: E402  (imported once the path is safe)

raise SystemExit(main())
