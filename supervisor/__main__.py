"""`python -m agentsup`.

`-m` puts the current directory first on sys.path, and the supervisor runs as
root in what is often the agent's workspace: a `tty.py` or `json.py` the
agent left there would be imported in its place.  It is dropped before
anything else is imported.  (A directory named `agentsup` there would be
imported before this runs: the installed `agentsup` command, or
`python -P -m agentsup`, never looks in the current directory.)
"""

import os
import sys

if not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from .cli.main import main  # (imported after the path is safe)

raise SystemExit(main())
