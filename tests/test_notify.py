"""AGENTSUP_NOTIFY: the command that tells a person an agent waits for them."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from agentsup.control import notify

RECORD = (
    "import os, sys; open(sys.argv[1], 'w').write(sys.argv[2] + '|' + "
    "os.environ['AGENTSUP_NOTIFY_TARGET'])"
)


def test_the_agents_text_reaches_the_command_visible(tmp_path: Path) -> None:
    """Red team 36 F7: a NUL in a held hook target made starting the command
    raise (`embedded null byte`), and the approval timeout was never armed.
    The agent's text is made `visible` first."""
    said = tmp_path / "said"
    timers: list[tuple[float, Callable[[], None]]] = []
    started = notify.send(
        [sys.executable, "-c", RECORD, str(said)],
        "agent 'a' waits for approval of network_request GET http://x/\x00\x1b[2J",
        {"target": "GET http://x/\x00\x1b[2J"},
        lambda delay, callback: timers.append((delay, callback)),
    )
    assert started
    assert timers and timers[0][0] == notify.NOTIFY_TIMEOUT  # the hung command's end
    deadline = time.monotonic() + 10
    while not said.exists() or not said.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    message, target = said.read_text().split("|")
    assert message.endswith("http://x/\\x00\\x1b[2J") and target == "GET http://x/\\x00\\x1b[2J"
