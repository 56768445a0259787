"""Which local connections subscribe to which channel, and the fan-out of one message to them.

A message is encoded into its WebSocket frame once per worker (ext.frames.msg_frame) and the same
bytes are written to every subscriber's transport. A subscriber whose unsent bytes pass the
write-buffer limit is a slow reader: it is cut off (close 1013) instead of growing our memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ext.frames import msg_frame, write_frame_to_all


class SubscriberIndex:
    def __init__(self, write_buffer_limit: int, on_slow: Callable[[Any], None]):
        self.write_buffer_limit = write_buffer_limit
        self.on_slow = on_slow
        # chan_hash -> {raw transport: session}; the keys are what the fan-out writes to.
        self.by_channel: dict[int, dict[Any, Any]] = {}
        self.deliveries = 0

    def add(self, chan_hash: int, transport: Any, session: Any) -> bool:
        """Returns True when this is the channel's first local subscriber."""
        members = self.by_channel.get(chan_hash)
        if members is None:
            self.by_channel[chan_hash] = {transport: session}
            return True
        members[transport] = session
        return False

    def remove(self, chan_hash: int, transport: Any) -> bool:
        """Returns True when the channel has no local subscriber left."""
        members = self.by_channel.get(chan_hash)
        if members is None or members.pop(transport, None) is None:
            return False
        if not members:
            del self.by_channel[chan_hash]
            return True
        return False

    def has(self, chan_hash: int, transport: Any) -> bool:
        members = self.by_channel.get(chan_hash)
        return members is not None and transport in members

    def fan_out(self, chan_hash: int, channel: bytes, offset: int, data: bytes) -> int:
        members = self.by_channel.get(chan_hash)
        if not members:
            return 0
        frame = msg_frame(channel, offset, data)
        slow = write_frame_to_all(frame, list(members), self.write_buffer_limit)
        self.deliveries += len(members)
        for transport in slow:
            session = members.get(transport)
            if session is not None:
                self.on_slow(session)
        return len(members)

    @property
    def channel_count(self) -> int:
        return len(self.by_channel)
