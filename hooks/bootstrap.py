"""Entry point that starts a Python agent with the audit hook installed.

The supervisor runs `command(script, args)` with `environment(socket, id)`
added to the agent's environment:

    python -P -m agentsup.hooks.bootstrap -- SCRIPT [ARGS...]

`-P` keeps the current directory (the agent's workspace) off sys.path, so a
planted `agentsup` package there cannot replace this bootstrap.  The agent
then runs as `__main__` with the sys.argv, sys.path[0], __file__ and
tracebacks it would have under plain `python SCRIPT ARGS...`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ._protocol import ENV_AGENT_ID, ENV_SITE, ENV_SOCKET, SITE_DIR

__all__ = ["MODULE", "SITE_DIR", "command", "environment"]

MODULE = "agentsup.hooks.bootstrap"


def command(
    script: str | os.PathLike[str], args: Sequence[str] = (), python: str | None = None
) -> list[str]:
    """The argv that runs `script` with the hook, under the same Python by default."""
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    return [python or sys.executable, *safe_path, "-m", MODULE, "--", os.fspath(script), *args]


def environment(socket_path: str | os.PathLike[str], agent_id: str) -> dict[str, str]:
    """The variables the hooked agent (and its Python children) must inherit."""
    return {ENV_SOCKET: os.fspath(socket_path), ENV_AGENT_ID: agent_id, ENV_SITE: SITE_DIR}


if __name__ == "__main__":
    from ._run import main

    main()
