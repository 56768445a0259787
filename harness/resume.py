"""The resume rules of a wsd client, free of I/O: what to send when (re)subscribing to a channel, and
what a `sub` reply and a delivery mean for it. The same rules as server/static/wsd.js, shared by the
test client (tests/resume_client.py) and the load generator's resuming mode (harness/loadgen.py).

A channel's position is the last offset delivered to the application and its epoch. A resubscription
sends `"since": {"off": OFFSET, "epoch": EPOCH}`; `recovered: true` means the missed messages follow,
`recovered: false` means they are lost (a gap the application must repair). A delivery at or below
the position is a duplicate (dropped); one past position + 1 is a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Close codes (and 1006, no close frame at all) after which a client reconnects, as wsd.js does.
RECONNECT_CODES = frozenset({1001, 1006, 1012, 1013})

# What a `sub` reply was, for the client's counters.
FRESH = "fresh"  # a first subscription: the position starts at the channel's current offset
RESUMED = "resumed"  # recovered: true, the missed messages follow
NOT_RECOVERED = "not_recovered"  # recovered: false, a gap


@dataclass
class ChannelPosition:
    epoch: int | None = None
    offset: int | None = None  # the last offset delivered to the application
    gaps: list[tuple[int | None, int]] = field(default_factory=list)  # (last offset seen, next offset seen)
    duplicates: int = 0

    def subscribe_request(self, channel: str, request_id: int) -> dict[str, Any]:
        request: dict[str, Any] = {"op": "sub", "ch": channel, "id": request_id}
        if self.offset is not None:
            request["since"] = {"off": self.offset, "epoch": self.epoch}
        return request

    def subscribed(self, reply: dict[str, Any]) -> str:
        """Take the `ok` reply to `subscribe_request`; say which kind it was."""
        if "recovered" in reply:
            if reply["recovered"]:
                return RESUMED
            self.gaps.append((self.offset, reply["off"]))
            self.epoch, self.offset = reply["epoch"], reply["off"]
            return NOT_RECOVERED
        self.epoch, self.offset = reply["epoch"], reply["off"]
        return FRESH

    def delivered(self, offset: int) -> bool:
        """Take a delivery's offset: whether it is new (False: a duplicate, to drop)."""
        if self.offset is not None and offset <= self.offset:
            self.duplicates += 1
            return False
        if self.offset is not None and offset != self.offset + 1:
            self.gaps.append((self.offset, offset))
        self.offset = offset
        return True
