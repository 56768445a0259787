"""Which local connections subscribe to which channel, and the fan-out of one message to them.

A message is encoded into its WebSocket frame once per worker (ext.frames.msg_frame). Frames are
queued per channel while the bus engine reads the rings and written out when its poll ends
(`flush`): each subscriber gets one write holding all of its channel's new frames, so a burst costs
one send() per connection rather than one per message, and nothing waits for a later loop
iteration. A subscriber whose unsent bytes pass the write-buffer limit is a slow reader: it is cut
off (close 1013) instead of growing our memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsd.ext.frames import msg_frame, write_frame_to_all


class SubscriberIndex:
    def __init__(self, write_buffer_limit: int, on_slow: Callable[[Any], None]):
        self.write_buffer_limit = write_buffer_limit
        self.on_slow = on_slow
        # chan_hash -> {raw transport: session}; the keys are what the fan-out writes to.
        self.by_channel: dict[int, dict[Any, Any]] = {}
        # chan_hash -> frames fanned out since the last flush, in offset order.
        self.queued: dict[int, list[bytes]] = {}
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

    def fan_out(self, chan_hash: int, channel: bytes, offset: int, data: bytes) -> int:
        """Queue one message for the channel's current subscribers; `flush` writes it."""
        members = self.by_channel.get(chan_hash)
        if not members:
            return 0
        frame = msg_frame(channel, offset, data)
        queued = self.queued.get(chan_hash)
        if queued is None:
            self.queued[chan_hash] = [frame]
        else:
            queued.append(frame)
        self.deliveries += len(members)
        return len(members)

    def flush(self) -> None:
        """Write every queued frame: per channel, one write of all its frames to each subscriber.

        Called synchronously at the end of each bus poll, so the subscribers a frame goes to are
        the ones it was fanned out to (nobody subscribes or unsubscribes during a poll).
        """
        if not self.queued:
            return
        queued, self.queued = self.queued, {}
        for chan_hash, frames in queued.items():
            members = self.by_channel.get(chan_hash)
            if not members:
                continue  # every subscriber was cut off as a slow reader earlier in this flush
            payload = frames[0] if len(frames) == 1 else b"".join(frames)
            slow = write_frame_to_all(payload, list(members), self.write_buffer_limit)
            for transport in slow:
                session = members.get(transport)
                if session is not None:
                    self.on_slow(session)

    @property
    def channel_count(self) -> int:
        return len(self.by_channel)
