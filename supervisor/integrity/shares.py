"""Each agent's share of the audit log that is kept.

The log keeps what `retained` bytes hold (the live file and the rotated ones)
and drops the oldest file past that.  An agent can make records at will (a
refused open in a loop, hook notes), and records enough of them would push
every older record out, its own refusals and other agents' records alike,
while the chain that is left still verifies.  So no agent may take more than
`fraction` of what is kept: counted over the last `retained` bytes this
writer wrote, in buckets, so a long-lived agent's old records age out.
"""

from __future__ import annotations

from collections import deque

BUCKETS = 64
SHARE = 0.25


class AuditShares:
    """Pure: how many of the last `retained` bytes written are each agent's."""

    def __init__(self, retained: int, fraction: float = SHARE) -> None:
        self.limit = int(retained * fraction)
        self._bucket = max(1, retained // BUCKETS)
        # agent -> (bucket index, bytes) oldest first, and their sum.
        self._buckets: dict[str, deque[list[int]]] = {}
        self._totals: dict[str, int] = {}

    def add(self, agent: str, end: int, size: int) -> int:
        """Count `size` bytes of `agent`'s that the writer's stream ends at `end`
        with; return the agent's bytes among the last `retained`."""
        index = end // self._bucket
        buckets = self._buckets.setdefault(agent, deque())
        if buckets and buckets[-1][0] == index:
            buckets[-1][1] += size
        else:
            buckets.append([index, size])
        total = self._totals.get(agent, 0) + size
        while buckets[0][0] <= index - BUCKETS:
            total -= buckets.popleft()[1]
        self._totals[agent] = total
        return total

    def over(self, share: int) -> bool:
        return share > self.limit
