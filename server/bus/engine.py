"""The bus engine of one worker process: sequencing, publishing, reading every ring, interest,
history.

Two kinds of identity:
  * a *bus slot* is where a process writes: its ring, interest map, doorbell and stats. There are
    twice as many bus slots as workers, so during a rolling reload a new process can join while
    the one it replaces still drains its clients.
  * a *role* r (0 <= r < workers) is the right to sequence the channels with
    `channel_hash % workers == r`. Exactly one process holds a role at a time; the role's channel
    table and read cursors live in segment r, so the next holder continues where the last stopped.

The rules:
  * the holder of a channel's role gives it offsets 1, 2, 3... and appends each message to its
    own ring; every MSG records where the channel's previous message is (the history chain);
  * a publish elsewhere is a PUBREQ in the publisher's ring, addressed to the role;
  * every engine reads every ring in order and delivers only the channels it tracks (has local
    subscribers for), once, in offset order;
  * a process marks the channels it tracks in its interest map; a holder rings a process's
    doorbell only for messages it may want, or to acknowledge its publish request.

Free of sockets and event loops except through callbacks, so the ordering rules can be tested with
several engines in one process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from wsd.ext.atomics import fence
from wsd.ext.chantable import TableFullError
from wsd.ext.hashing import channel_hash
from wsd.ext.record import (
    MSG_HEADER_SIZE,
    TAG_MSG,
    TAG_PUBREQ,
    decode_msg,
    decode_pubreq,
    encode_msg,
    encode_pubreq,
    peek_msg_chan_hash,
    peek_pubreq_target,
)
from wsd.server.bus.segment import Segment

log = logging.getLogger("wsd.bus")

NO_POSITION = (1 << 64) - 1
NO_SLOT = 0xFFFF
_POSITION_BITS = 56  # a chain position is (bus slot << 56) | position in that slot's ring
_POSITION_MASK = (1 << _POSITION_BITS) - 1

# deliver(chan_hash, channel, epoch, offset, data_json, ts_ns)
DeliverCallback = Callable[[int, bytes, int, int, bytes, int], None]
# acknowledge(token, offset)
AckCallback = Callable[[int, int], None]


class BusError(RuntimeError):
    """A publish could not be sequenced (for example the channel table is full)."""


class MessageTooLarge(BusError):
    """A publish whose message would not fit one ring entry (checked before anything is written)."""

# Tags from this one up are other layers' records, handed to on_record (wsd.server.cluster.records).
FIRST_OTHER_TAG = 16

# Bad entries logged in full (with a traceback) before the log only counts them.
_BAD_ENTRIES_LOGGED = 10


@dataclass(slots=True)
class Tracked:
    """A channel this process has local subscribers for: the last offset it has delivered."""

    epoch: int
    offset: int
    refs: int


def chain_position(bus_slot: int, position: int) -> int:
    return (bus_slot << _POSITION_BITS) | position


class BusEngine:
    def __init__(
        self,
        bus_slot: int,
        segments: list[Segment],
        deliver: DeliverCallback,
        acknowledge: AckCallback,
        ring_doorbell: Callable[[int], None],
        role: int | None = None,
        poll_done: Callable[[], None] | None = None,
    ):
        self.bus_slot = bus_slot
        self.segments = segments
        self.roles = segments[0].workers
        self.own = segments[bus_slot]
        self.deliver = deliver
        self.acknowledge = acknowledge
        self.ring_doorbell = ring_doorbell
        # Called at the end of every poll(): deliveries made during one poll may be queued by the
        # deliver callback and written out here together (one write per connection, not per message).
        self.poll_done = poll_done
        self.role: int | None = None
        self.tracked: dict[int, Tracked] = {}
        self._bucket_refs: dict[int, int] = {}
        self._buckets = self.own.layout.interest_buckets
        # Tokens carry a random incarnation prefix so acks meant for an earlier process on this
        # bus slot (still in the rings) never match a new request.
        self._token_prefix = int.from_bytes(os.urandom(4), "little") << 32
        self._token_counter = 0
        self.pending_tokens: set[int] = set()
        self._to_ring: set[int] = set()
        # A process without a role starts reading at the present: it has no subscribers yet.
        self.cursors = [segment.ring.commit for segment in segments]
        self.overruns = 0
        self.lost_bytes = 0
        self.gaps = 0
        self.bad_entries = 0  # ring entries that could not be handled: skipped, never retried
        # Ring entries of other tags (cluster mode's records): on_record(ring slot, tag, payload),
        # called in ring order while polling; it must not poll itself.
        self.on_record: Callable[[int, int, bytes], None] | None = None
        # Interest is in-process state: a new process on this bus slot starts with none.
        self.own.interest.clear_all()
        if role is not None:
            self.take_role(role)

    # -- roles and sequencing --

    def role_of(self, chan_hash: int) -> int:
        return chan_hash % self.roles

    def take_role(self, role: int) -> None:
        """Become the sequencer of `role`, continuing exactly where its last holder stopped."""
        role_segment = self.segments[role]
        # Deliver everything up to now first (still without the role), then go back to where the
        # last holder stopped: publish requests it had not handled are handled now, exactly once;
        # the deliveries re-read on the way are skipped by offset.
        self.poll()
        self.role = role
        self.cursors = [role_segment.cursor(slot) for slot in range(len(self.segments))]
        self._repair_role_table()
        role_segment.set_role_holder(self.bus_slot)
        fence()
        self.poll()

    def _repair_role_table(self) -> None:
        """After a crash between appending a message and updating the table, trust the rings."""
        table = self.segments[self.role].table
        for slot, segment in enumerate(self.segments):
            position = self.cursors[slot]
            while True:
                entries, position, _lost = segment.ring.read(position, 4096)
                if not entries:
                    break
                for entry_position, tag, payload in entries:
                    if tag != TAG_MSG or self.role_of(peek_msg_chan_hash(payload)) != self.role:
                        continue
                    msg = decode_msg(payload)
                    current = table.get(msg.chan_hash)
                    if current is None or (current[0] == msg.epoch and current[1] < msg.off):
                        table.put(msg.chan_hash, msg.epoch, msg.off, chain_position(slot, entry_position), msg.ts_ns)

    def _sequence(self, chan_hash: int, channel: bytes, data: bytes, origin: int, token: int, ts_ns: int) -> int:
        table = self.segments[self.role].table
        current = table.get(chan_hash)
        if current is None:
            epoch, last_off, last_pos = self.segments[self.role].epoch, 0, NO_POSITION
        else:
            epoch, last_off, last_pos, _ts = current
        offset = last_off + 1
        record = encode_msg(epoch, origin, offset, last_pos, ts_ns, token, chan_hash, channel, data)
        position = self.own.ring.append(TAG_MSG, record)
        table.put(chan_hash, epoch, offset, chain_position(self.bus_slot, position), ts_ns)
        if origin != NO_SLOT and origin != self.bus_slot:
            self._to_ring.add(origin)
        return offset

    def _ring_interested(self, chan_hashes: set[int]) -> None:
        """Wake the processes that may want these channels (after a fence: see subscribe())."""
        fence()
        for slot, segment in enumerate(self.segments):
            if slot == self.bus_slot or slot in self._to_ring:
                continue
            interest = segment.interest
            if any(interest.test(h) for h in chan_hashes):
                self._to_ring.add(slot)
        self._flush_doorbells()

    def _flush_doorbells(self) -> None:
        for slot in self._to_ring:
            self.ring_doorbell(slot)
        self._to_ring.clear()

    # -- publishing --

    def max_data_size(self, channel: str) -> int:
        """The largest message data the bus carries on `channel`: its MSG record must fit one ring
        entry (a quarter of the ring). The MSG header is larger than the PUBREQ one, so a publish
        that passes this check fits both."""
        return self.own.ring.max_payload - MSG_HEADER_SIZE - len(channel.encode())

    def max_request_size(self) -> int:
        """A bound for one publish API request body: no publish, nor a batch of them, may take more
        than one ring entry's worth (a quarter of the ring), so one request never laps a reader."""
        return self.own.ring.max_payload

    def _check_size(self, name: bytes, data_json: bytes) -> None:
        limit = self.own.ring.max_payload - MSG_HEADER_SIZE - len(name)
        if len(data_json) > limit:
            raise MessageTooLarge(
                f"message too large for the bus: {len(data_json)} bytes of data on channel "
                f"{name.decode(errors='replace')!r}, at most {limit} (one bus ring entry is a quarter of "
                f"--ring-size {self.own.ring.capacity}; raise it for larger messages)"
            )

    def publish(self, channel: str, data_json: bytes) -> tuple[int, int]:
        """Publish; returns (offset, 0) when this process sequences the channel, else (0, token).

        Raises MessageTooLarge (nothing written) if the message cannot travel on the bus."""
        name = channel.encode()
        self._check_size(name, data_json)
        chan_hash = channel_hash(name)
        role = self.role_of(chan_hash)
        now = time.time_ns()
        if role == self.role:
            try:
                offset = self._sequence(chan_hash, name, data_json, NO_SLOT, 0, now)
            except TableFullError as exc:
                raise BusError(f"cannot publish to {channel!r}: {exc}") from None
            self._ring_interested({chan_hash})
            return offset, 0
        self._token_counter += 1
        token = self._token_prefix | self._token_counter
        self.pending_tokens.add(token)
        self.own.ring.append(TAG_PUBREQ, encode_pubreq(role, self.bus_slot, token, now, chan_hash, name, data_json))
        holder = self.segments[role].role_holder()
        if holder is not None:
            self.ring_doorbell(holder)  # with no holder (a hand-over), the next one polls at once
        return 0, token

    def forget_token(self, token: int) -> None:
        self.pending_tokens.discard(token)

    # -- subscriptions --

    def subscribe(self, channel: str) -> tuple[int, int]:
        """Start tracking a channel (or add a reference); returns its (epoch, current offset).

        Every message after the returned offset will be delivered. Ordering: mark interest, fence,
        then read the role's table and catch up on the rings. A holder appends, fences, then reads
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
        role_segment = self.segments[self.role_of(chan_hash)]
        current = role_segment.table.get(chan_hash)
        if current is None:
            tracked = Tracked(role_segment.epoch, 0, 1)
        else:
            tracked = Tracked(current[0], current[1], 1)
        self.tracked[chan_hash] = tracked
        self.poll()
        return tracked.epoch, tracked.offset

    def position(self, channel: str) -> tuple[int, int]:
        """(epoch, last delivered offset) of a channel this process tracks; (0, 0) if it does not."""
        tracked = self.tracked.get(channel_hash(channel.encode()))
        return (tracked.epoch, tracked.offset) if tracked is not None else (0, 0)

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

    # -- history --

    def history(
        self, channel: str, epoch: int, after: int, upto: int, max_count: int, not_before_ns: int
    ) -> list[tuple[int, bytes]] | None:
        """The messages after..upto (exclusive, inclusive) of a channel, oldest first, or None if
        history no longer reaches back that far (overwritten, over max_count, older than
        not_before_ns, or another epoch)."""
        if upto - after > max_count or after > upto:
            return None
        if after == upto:
            return []
        chan_hash = channel_hash(channel.encode())
        current = self.segments[self.role_of(chan_hash)].table.get(chan_hash)
        if current is None or current[0] != epoch:
            return None
        found: list[tuple[int, bytes]] = []
        position = current[2]
        expected = current[1]
        while expected > after:
            if position == NO_POSITION:
                return None
            slot, ring_position = position >> _POSITION_BITS, position & _POSITION_MASK
            if slot >= len(self.segments):
                return None
            entry = self.segments[slot].ring.read_at(ring_position)
            if entry is None or entry[0] != TAG_MSG:
                return None  # overwritten: history does not reach back
            msg = decode_msg(entry[1])
            if msg.chan_hash != chan_hash or msg.off != expected or msg.epoch != epoch:
                return None
            if msg.ts_ns < not_before_ns:
                return None
            if msg.off <= upto:
                found.append((msg.off, msg.data))
            position = msg.prev_pos
            expected -= 1
        found.reverse()
        return found

    # -- reading the rings --

    def poll(self) -> int:
        """Read every ring up to its commit; returns the number of entries processed."""
        total = 0
        # Sequencing appends to our own ring, so repeat until a pass finds nothing new.
        for _ in range(8):
            processed = 0
            for slot in range(len(self.segments)):
                processed += self.poll_ring(slot)
            total += processed
            if not processed:
                break
        if self.poll_done is not None:
            self.poll_done()
        return total

    def poll_ring(self, slot: int) -> int:
        ring = self.segments[slot].ring
        position = self.cursors[slot]
        processed = 0
        sequenced: set[int] = set()
        role = self.role
        while True:
            entries, new_position, lost = ring.read(position, 1024)
            if lost:
                self.overruns += 1
                self.lost_bytes += lost
                log.warning(
                    "bus overrun: bus slot %d fell behind ring %d and lost %d bytes; continuing from its "
                    "oldest intact entry", self.bus_slot, slot, lost,
                )  # fmt: skip
            for entry_position, tag, payload in entries:
                # One entry that cannot be handled is skipped and counted: an exception escaping here
                # would leave the cursor before the entries already handled, and the next poll would
                # sequence them again.
                try:
                    if tag == TAG_MSG:
                        self._on_msg(payload)
                    elif tag == TAG_PUBREQ and role is not None and peek_pubreq_target(payload) == role:
                        request = decode_pubreq(payload)
                        try:
                            self._sequence(
                                request.chan_hash, request.channel, request.data,
                                request.origin_slot, request.token, request.ts_ns,
                            )  # fmt: skip
                            sequenced.add(request.chan_hash)
                        except TableFullError as exc:
                            log.error("cannot sequence publish on %r: %s", request.channel, exc)
                    elif tag >= FIRST_OTHER_TAG and self.on_record is not None:
                        self.on_record(slot, tag, payload)
                except Exception:
                    self._bad_entry(slot, entry_position, tag, payload)
            processed += len(entries)
            position = new_position
            if not entries and not lost:
                break
        if position != self.cursors[slot]:
            self.cursors[slot] = position
            if role is not None:
                # Persist, so the next holder of the role resumes the requests addressed to it.
                self.segments[role].set_cursor(slot, position)
        if sequenced:
            self._ring_interested(sequenced)
        elif self._to_ring:
            self._flush_doorbells()
        return processed

    def _bad_entry(self, slot: int, position: int, tag: int, payload: bytes) -> None:
        self.bad_entries += 1
        if self.bad_entries <= _BAD_ENTRIES_LOGGED:
            log.exception(
                "bus: skipped an entry that could not be handled (ring %d, position %d, tag %d, %d bytes)",
                slot, position, tag, len(payload),
            )  # fmt: skip
        elif self.bad_entries % 1000 == 0:
            log.error("bus: %d bad entries skipped so far", self.bad_entries)

    def _on_msg(self, payload: bytes) -> None:
        chan_hash = peek_msg_chan_hash(payload)
        tracked = self.tracked.get(chan_hash)
        if tracked is None and not self.pending_tokens:
            return
        msg = decode_msg(payload)
        if msg.origin_slot == self.bus_slot and msg.token in self.pending_tokens:
            self.pending_tokens.discard(msg.token)
            self.acknowledge(msg.token, msg.off)
        if tracked is None:
            return
        if msg.epoch != tracked.epoch:
            # The channel's state was lost and it started over in a new epoch: follow it.
            tracked.epoch = msg.epoch
        elif msg.off <= tracked.offset:
            return  # already delivered (seen during a catch-up)
        elif msg.off != tracked.offset + 1:
            self.gaps += 1
            log.warning("gap on %r: expected offset %d, got %d", msg.channel, tracked.offset + 1, msg.off)
        tracked.offset = msg.off
        self.deliver(chan_hash, msg.channel, msg.epoch, msg.off, msg.data, msg.ts_ns)

    # -- cluster mode: messages sequenced elsewhere (Redis), records of other layers --
    # (wsd.server.cluster.owner uses these; the bus itself never calls them)

    def role_of_channel(self, channel: bytes) -> int:
        return self.role_of(channel_hash(channel))

    def table_position(self, channel: bytes) -> tuple[int, int] | None:
        """(epoch, last offset) of a channel in its role's table, None if the table has no entry."""
        chan_hash = channel_hash(channel)
        current = self.segments[self.role_of(chan_hash)].table.get(chan_hash)
        return None if current is None else (current[0], current[1])

    def append_external(self, channel: bytes, epoch: int, offset: int, ts_ns: int, data: bytes) -> int:
        """Append a message another bus sequenced (its epoch and offset, not ours) as the channel's
        next MSG; only the holder of the channel's role may. It continues the history chain when it
        follows the table's entry directly. Returns the channel hash, for wake_interested(); the
        caller polls to deliver it here."""
        chan_hash = channel_hash(channel)
        if self.role_of(chan_hash) != self.role:
            raise BusError(f"bus slot {self.bus_slot} does not hold the role of {channel!r}")
        table = self.segments[self.role].table
        current = table.get(chan_hash)
        follows = current is not None and current[0] == epoch and current[1] == offset - 1
        record = encode_msg(epoch, NO_SLOT, offset, current[2] if follows else NO_POSITION, ts_ns, 0, chan_hash,
                            channel, data)  # fmt: skip
        position = self.own.ring.append(TAG_MSG, record)
        table.put(chan_hash, epoch, offset, chain_position(self.bus_slot, position), ts_ns)
        return chan_hash

    def set_position(self, channel: bytes, epoch: int, offset: int) -> int:
        """Move a channel of our role to (epoch, offset) without a message: its history starts
        there. Returns the channel hash."""
        chan_hash = channel_hash(channel)
        if self.role_of(chan_hash) != self.role:
            raise BusError(f"bus slot {self.bus_slot} does not hold the role of {channel!r}")
        self.segments[self.role].table.put(chan_hash, epoch, offset, NO_POSITION, time.time_ns())
        return chan_hash

    def wake_interested(self, chan_hashes: set[int]) -> None:
        """Ring the doorbells of the processes that may want these channels (after appends)."""
        self._ring_interested(chan_hashes)

    def append_record(self, tag: int, payload: bytes) -> int:
        """Append another layer's record to our ring (tag >= FIRST_OTHER_TAG); its position."""
        if tag < FIRST_OTHER_TAG:
            raise ValueError(f"tag {tag} belongs to the bus itself")
        return self.own.ring.append(tag, payload)

    def role_holder(self, role: int) -> int | None:
        return self.segments[role].role_holder()

    def marks_interest(self, bus_slot: int, channel: bytes) -> bool:
        """Whether the process on `bus_slot` marks the interest bucket of `channel` (a bucket holds
        many channels: True may be another channel of the bucket)."""
        return self.segments[bus_slot].interest.test(channel_hash(channel))

    def restart_tracked(self, channel: bytes, epoch: int, offset: int) -> bool:
        """A tracked channel continues after (epoch, offset) (its messages up to there are lost):
        deliveries resume with offset + 1. False if this process does not track it."""
        tracked = self.tracked.get(channel_hash(channel))
        if tracked is None:
            return False
        tracked.epoch, tracked.offset = epoch, offset
        return True

    def lag_bytes(self) -> int:
        return sum(max(0, segment.ring.commit - self.cursors[s]) for s, segment in enumerate(self.segments))
