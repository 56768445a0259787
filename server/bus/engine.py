"""The bus engine of one worker: sequencing, publishing, reading every ring, interest bookkeeping.

Free of sockets and event loops except through two callbacks, so the ordering rules can be tested
with several engines in one process. The rules:
  * a channel's owner (`channel_hash % workers`) gives it offsets 1, 2, 3... and appends each
    message to its own ring; nobody else writes that channel;
  * every engine reads every ring in order; it hands a message to its deliver callback only for
    channels it tracks (has local subscribers for), once, in offset order;
  * a slot marks the channels it tracks in its interest map, and an owner rings a slot's doorbell
    only for messages that slot may want, or to acknowledge that slot's publish request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from ext.atomics import fence
from ext.chantable import TableFullError
from ext.hashing import channel_hash
from ext.record import (
    TAG_MSG,
    TAG_PUBREQ,
    decode_msg,
    decode_pubreq,
    encode_msg,
    encode_pubreq,
    peek_msg_chan_hash,
    peek_pubreq_target,
)
from server.bus.segment import Segment

log = logging.getLogger("wsd.bus")

NO_POSITION = (1 << 64) - 1
NO_SLOT = 0xFFFF

# deliver(chan_hash, channel, epoch, offset, data_json, ts_ns)
DeliverCallback = Callable[[int, bytes, int, int, bytes, int], None]
# acknowledge(token, offset or an exception)
AckCallback = Callable[[int, "int | Exception"], None]


class BusError(RuntimeError):
    """A publish could not be sequenced (for example the owner's channel table is full)."""


@dataclass(slots=True)
class Tracked:
    """A channel this worker has local subscribers for: the last offset it has delivered."""

    epoch: int
    offset: int
    refs: int


class BusEngine:
    def __init__(
        self,
        slot: int,
        segments: list[Segment],
        deliver: DeliverCallback,
        acknowledge: AckCallback,
        ring_doorbell: Callable[[int], None],
    ):
        self.slot = slot
        self.segments = segments
        self.workers = len(segments)
        self.own = segments[slot]
        self.deliver = deliver
        self.acknowledge = acknowledge
        self.ring_doorbell = ring_doorbell
        self.tracked: dict[int, Tracked] = {}
        self._bucket_refs: dict[int, int] = {}
        self._buckets = self.own.layout.interest_buckets
        # Tokens carry a random incarnation prefix so acks meant for a previous incarnation of
        # this slot (still in the rings after a respawn) never match a new request.
        self._token_prefix = int.from_bytes(os.urandom(4), "little") << 32
        self._token_counter = 0
        self.pending_tokens: set[int] = set()
        self._to_ring: set[int] = set()
        self.cursors = [self.own.cursor(s) for s in range(self.workers)]
        self.overruns = 0
        self.lost_bytes = 0
        self.gaps = 0
        self._repair_own_table()
        # Interest is in-process state: a new incarnation starts with none.
        self.own.interest.clear_all()

    # -- ownership and sequencing --

    def owner_of(self, chan_hash: int) -> int:
        return chan_hash % self.workers

    def _repair_own_table(self) -> None:
        """After a crash between appending a message and updating the table, trust the ring."""
        ring, table = self.own.ring, self.own.table
        position = self.cursors[self.slot]
        while True:
            entries, position, _lost = ring.read(position, 4096)
            if not entries:
                break
            for entry_position, tag, payload in entries:
                if tag != TAG_MSG:
                    continue
                msg = decode_msg(payload)
                current = table.get(msg.chan_hash)
                if current is None or (current[0] == msg.epoch and current[1] < msg.off):
                    table.put(msg.chan_hash, msg.epoch, msg.off, entry_position, msg.ts_ns)

    def _sequence(self, chan_hash: int, channel: bytes, data: bytes, origin: int, token: int, ts_ns: int) -> int:
        table = self.own.table
        current = table.get(chan_hash)
        if current is None:
            epoch, last_off, last_pos = self.own.epoch, 0, NO_POSITION
        else:
            epoch, last_off, last_pos, _ts = current
        offset = last_off + 1
        record = encode_msg(epoch, origin, offset, last_pos, ts_ns, token, chan_hash, channel, data)
        position = self.own.ring.append(TAG_MSG, record)
        table.put(chan_hash, epoch, offset, position, ts_ns)
        if origin != NO_SLOT and origin != self.slot:
            self._to_ring.add(origin)
        return offset

    def _ring_interested(self, chan_hashes: set[int]) -> None:
        """Wake the slots that may want these channels (after a fence: see subscribe())."""
        fence()
        for slot in range(self.workers):
            if slot == self.slot or slot in self._to_ring:
                continue
            interest = self.segments[slot].interest
            if any(interest.test(h) for h in chan_hashes):
                self._to_ring.add(slot)
        for slot in self._to_ring:
            self.ring_doorbell(slot)
        self._to_ring.clear()

    # -- publishing --

    def publish(self, channel: str, data_json: bytes) -> tuple[int, int]:
        """Publish; returns (offset, 0) when this slot owns the channel, else (0, token) to await."""
        name = channel.encode()
        chan_hash = channel_hash(name)
        owner = self.owner_of(chan_hash)
        now = time.time_ns()
        if owner == self.slot:
            try:
                offset = self._sequence(chan_hash, name, data_json, NO_SLOT, 0, now)
            except TableFullError as exc:
                raise BusError(f"cannot publish to {channel!r}: {exc}") from None
            self._ring_interested({chan_hash})
            return offset, 0
        self._token_counter += 1
        token = self._token_prefix | self._token_counter
        self.pending_tokens.add(token)
        self.own.ring.append(TAG_PUBREQ, encode_pubreq(owner, self.slot, token, now, chan_hash, name, data_json))
        self.ring_doorbell(owner)
        return 0, token

    def forget_token(self, token: int) -> None:
        self.pending_tokens.discard(token)

    # -- subscriptions --

    def subscribe(self, channel: str) -> tuple[int, int]:
        """Start tracking a channel (or add a reference); returns its (epoch, current offset).

        Every message after the returned offset will be delivered. Ordering: mark interest, fence,
        then read the owner's table and catch up on its ring. The owner appends, fences, then reads
        interest; so either it sees our mark and rings us, or our catch-up sees its message.
        """
        chan_hash = channel_hash(channel.encode())
        tracked = self.tracked.get(chan_hash)
        if tracked is not None:
            tracked.refs += 1
            return tracked.epoch, tracked.offset
        bucket = chan_hash % self._buckets
        refs = self._bucket_refs.get(bucket, 0)
        self._bucket_refs[bucket] = refs + 1
        if refs == 0:
            self.own.interest.mark(chan_hash, True)
        fence()
        owner = self.owner_of(chan_hash)
        current = self.segments[owner].table.get(chan_hash)
        if current is None:
            tracked = Tracked(self.segments[owner].epoch, 0, 1)
        else:
            tracked = Tracked(current[0], current[1], 1)
        self.tracked[chan_hash] = tracked
        self.poll_ring(owner)
        return tracked.epoch, tracked.offset

    def unsubscribe(self, channel: str) -> None:
        chan_hash = channel_hash(channel.encode())
        tracked = self.tracked.get(chan_hash)
        if tracked is None:
            return
        tracked.refs -= 1
        if tracked.refs > 0:
            return
        del self.tracked[chan_hash]
        bucket = chan_hash % self._buckets
        refs = self._bucket_refs[bucket] - 1
        if refs:
            self._bucket_refs[bucket] = refs
        else:
            del self._bucket_refs[bucket]
            self.own.interest.mark(chan_hash, False)

    # -- reading the rings --

    def poll(self) -> int:
        """Read every ring up to its commit; returns the number of entries processed."""
        total = 0
        # Sequencing appends to our own ring, so repeat until a pass finds nothing new.
        for _ in range(8):
            processed = 0
            for slot in range(self.workers):
                processed += self.poll_ring(slot)
            total += processed
            if not processed:
                break
        return total

    def poll_ring(self, slot: int) -> int:
        ring = self.segments[slot].ring
        position = self.cursors[slot]
        processed = 0
        sequenced: set[int] = set()
        while True:
            entries, new_position, lost = ring.read(position, 1024)
            if lost:
                self.overruns += 1
                self.lost_bytes += lost
                log.warning("bus overrun: slot %d fell %d bytes behind ring %d; skipped ahead", self.slot, lost, slot)
            for entry_position, tag, payload in entries:
                if tag == TAG_MSG:
                    self._on_msg(payload, entry_position)
                elif tag == TAG_PUBREQ and slot != self.slot and peek_pubreq_target(payload) == self.slot:
                    request = decode_pubreq(payload)
                    try:
                        self._sequence(
                            request.chan_hash, request.channel, request.data,
                            request.origin_slot, request.token, request.ts_ns,
                        )  # fmt: skip
                        sequenced.add(request.chan_hash)
                    except TableFullError as exc:
                        log.error("cannot sequence publish on %r: %s", request.channel, exc)
            processed += len(entries)
            position = new_position
            if not entries and not lost:
                break
        if position != self.cursors[slot]:
            self.cursors[slot] = position
            # Persist so a respawned worker resumes publish requests addressed to it.
            self.own.set_cursor(slot, position)
        if sequenced:
            self._ring_interested(sequenced)
        elif self._to_ring:
            for target in self._to_ring:
                self.ring_doorbell(target)
            self._to_ring.clear()
        return processed

    def _on_msg(self, payload: bytes, position: int) -> None:
        chan_hash = peek_msg_chan_hash(payload)
        tracked = self.tracked.get(chan_hash)
        if tracked is None and not self.pending_tokens:
            return
        msg = decode_msg(payload)
        if msg.origin_slot == self.slot and msg.token in self.pending_tokens:
            self.pending_tokens.discard(msg.token)
            self.acknowledge(msg.token, msg.off)
        if tracked is None:
            return
        if msg.epoch != tracked.epoch:
            # The owner lost the channel's state and started a new epoch: follow it.
            tracked.epoch = msg.epoch
        elif msg.off <= tracked.offset:
            return  # already delivered (seen during a subscribe catch-up)
        elif msg.off != tracked.offset + 1:
            self.gaps += 1
            log.warning("gap on %r: expected offset %d, got %d", msg.channel, tracked.offset + 1, msg.off)
        tracked.offset = msg.off
        self.deliver(chan_hash, msg.channel, msg.epoch, msg.off, msg.data, msg.ts_ns)

    def lag_bytes(self) -> int:
        return sum(max(0, self.segments[s].ring.commit - self.cursors[s]) for s in range(self.workers))
