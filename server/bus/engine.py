"""The bus engine of one worker process: sequencing, publishing, reading every ring, interest,
history.

Two kinds of identity:
  * a *bus slot* is where a process writes: its ring, interest map, doorbell and stats. There are
    twice as many bus slots as workers, so during a rolling reload a new process can join while
    the one it replaces still drains its clients.
  * a *role* r (0 <= r < workers) is the right to sequence the channels with
    `h1 % workers == r`. Exactly one process holds a role at a time; the role's channel table and
    read cursors live in segment r, so the next holder continues where the last stopped.

A channel is its name. Its keyed hashes (h1, h2; wsd.ext.hashing, with the server's secret) only
find things: h1 picks the role, the interest bucket and the table's probe start and is written in
records; the table, which holds no names, tells names apart by (h1, h2); everything else that
reads a record compares the name.

The rules:
  * the holder of a channel's role gives it offsets 1, 2, 3... and appends each message to its
    own ring; every MSG records where the channel's previous message is (the history chain);
  * a publish elsewhere is a PUBREQ in the publisher's ring, addressed to the role;
  * every engine reads every ring in order and delivers only the channels it tracks (has local
    subscribers for), once, in offset order;
  * a process marks the channels it tracks in its interest map; a holder rings a process's
    doorbell only for messages it may want, or to acknowledge its publish request;
  * when the role's table is full, the holder forgets the least recently used channel whose
    interest bucket no process marks (so no process subscribes to it); it comes back in a new
    epoch, its history gone;
  * a new holder repairs the table first (a predecessor killed mid-write), then replays the rings
    from the persisted cursors, and never sequences again a request its predecessor had.

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
from wsd.ext.chantable import ChannelTable, TableFullError
from wsd.ext.hashing import ChannelHasher
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
# Least recently used channels looked at for one that can be forgotten, before a publish to a new
# channel fails: channels found in use move to the back, so the next search looks at others.
EVICTION_CANDIDATES = 64

# deliver(chan_hash, channel, epoch, offset, data_json, ts_ns, sender): sender is the publishing
# client's user id (UTF-8), b"" for none
DeliverCallback = Callable[[int, bytes, int, int, bytes, int, bytes], None]
# acknowledge(token, offset)
AckCallback = Callable[[int, int], None]
# hash(name) -> (h1, h2)
Hasher = Callable[[bytes], tuple[int, int]]


class BusError(RuntimeError):
    """A publish could not be sequenced (for example the channel table is full)."""


class MessageTooLarge(BusError):
    """A publish whose message would not fit one ring entry (checked before anything is written)."""


class BatchPublishError(BusError):
    """Item `index` of a batch could not be published (`error`); `results` are the items before it,
    which were."""

    def __init__(self, index: int, results: list[tuple[int, int]], error: BusError):
        super().__init__(str(error))
        self.index = index
        self.results = results
        self.error = error


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
    chan_hash: int  # h1
    # Every ring's commit when tracking began: a message of another epoch from before then is a
    # left-over of an earlier life of the channel (it was forgotten since), never a new epoch.
    # Read only; channels tracked while no ring moved share one tuple (BusEngine._commits).
    since: tuple[int, ...]


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
        hasher: Hasher | None = None,
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
        # The server's keyed channel hash (a test may pass one that collides on purpose).
        self.hash: Hasher = hasher or ChannelHasher(segments[0].hash_secret).hash
        self.role: int | None = None
        self.tracked: dict[bytes, Tracked] = {}  # by channel name
        self._last_commits: tuple[int, ...] = ()
        self._tracked_hashes: dict[int, int] = {}  # h1 -> tracked names with it: the cheap filter
        self._bucket_refs: dict[int, int] = {}
        self._buckets = self.own.layout.interest_buckets
        # Tokens carry a random incarnation prefix so acks meant for an earlier process on this
        # bus slot (still in the rings) never match a new request.
        self._token_prefix = int.from_bytes(os.urandom(4), "little") << 32
        self._token_counter = 0
        self.pending_tokens: set[int] = set()
        self._to_ring: set[int] = set()
        # (origin slot, token) of requests a dead predecessor in our role had sequenced after the
        # cursors it persisted: found in the rings by take_role, skipped when read again.
        self._sequenced_before: set[tuple[int, int]] = set()
        # A process without a role starts reading at the present: it has no subscribers yet.
        self.cursors = [segment.ring.commit for segment in segments]
        self.overruns = 0
        self.lost_bytes = 0
        self.gaps = 0
        self.bad_entries = 0  # ring entries that could not be handled: skipped, never retried
        self.evictions = 0  # channels forgotten to make room in our role's table
        # Ring entries of other tags (cluster mode's records): on_record(ring slot, tag, payload),
        # called in ring order while polling; it must not poll itself.
        self.on_record: Callable[[int, int, bytes], None] | None = None
        self.read_bytes = 0  # ring bytes the cursors moved over: /readyz tells a wedged reader by it
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
        table = role_segment.table
        torn = table.repair()  # a predecessor killed inside a table write
        if torn:
            log.warning("role %d: %d channel-table entries were left half written; restoring them from the rings",
                        role, len(torn))  # fmt: skip
        self._sequenced_before = self._replay_role(table, set(torn))
        role_segment.set_role_holder(self.bus_slot)
        fence()
        self.poll()
        # That poll read every request committed before we took over: none is left to dedupe.
        self._sequenced_before = set()

    def _replay_role(self, table: ChannelTable, torn: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Bring the table up to the rings after the persisted cursors (a crash between appending a
        message and updating the table, or inside the update), and collect the requests those
        messages answered."""
        sequenced: set[tuple[int, int]] = set()
        restored: set[tuple[int, int]] = set()
        for slot, segment in enumerate(self.segments):
            position = self.cursors[slot]
            while True:
                entries, position, lost = segment.ring.read(position, 4096)
                if not entries and not lost:
                    break
                for entry_position, tag, payload in entries:
                    if tag != TAG_MSG or self.role_of(peek_msg_chan_hash(payload)) != self.role:
                        continue
                    try:
                        msg = decode_msg(payload)
                    except ValueError:
                        continue  # counted when poll() reads it
                    if msg.origin_slot != NO_SLOT and msg.token:
                        sequenced.add((msg.origin_slot, msg.token))
                    key = self.hash(msg.channel)
                    current = table.get(*key)  # None for a torn key: repair() dropped it
                    if key in torn:
                        restored.add(key)
                    # In ring order the later message wins (another epoch: the channel was forgotten
                    # and created again), but never an earlier offset of the same epoch.
                    if current is None or current[0] != msg.epoch or current[1] < msg.off:
                        table.put(*key, msg.epoch, msg.off, chain_position(slot, entry_position), msg.ts_ns)
        for key in torn - restored:
            table.forget(*key)  # its state is lost: it comes back in a new epoch
        return sequenced

    def _sequence(
        self, h1: int, h2: int, channel: bytes, data: bytes, origin: int, token: int, ts_ns: int, sender: bytes = b""
    ) -> int:
        table = self.segments[self.role].table
        current = table.get(h1, h2)
        if current is None:
            if len(table) >= table.limit:
                self._make_room(table)
            epoch, offset, prev_pos = table.absent_epoch(h1), 1, NO_POSITION
        else:
            epoch, offset, prev_pos = current[0], current[1] + 1, current[2]
        return self._append_message(
            table, h1, h2, channel, data, origin, token, ts_ns, epoch, offset, prev_pos, sender
        )

    def _append_message(
        self, table: ChannelTable, h1: int, h2: int, channel: bytes, data: bytes, origin: int, token: int,
        ts_ns: int, epoch: int, offset: int, prev_pos: int, sender: bytes = b"",
    ) -> int:  # fmt: skip
        """Append the MSG of a sequenced message (`sender`: the publishing client's user id, b"" for
        none) and record it as the channel's latest."""
        record = encode_msg(epoch, origin, offset, prev_pos, ts_ns, token, h1, channel, data, sender)
        position = self.own.ring.append(TAG_MSG, record)
        table.put(h1, h2, epoch, offset, chain_position(self.bus_slot, position), ts_ns)
        if origin != NO_SLOT and origin != self.bus_slot:
            self._to_ring.add(origin)
        return offset

    def _make_room(self, table: ChannelTable) -> None:
        """Forget the least recently used channel nobody subscribes to (see ChannelTable.forget
        for why a subscriber racing this is safe)."""
        # Usually the oldest one will do: look at two first, then at more.
        for batch in (2, EVICTION_CANDIDATES):
            for h1, h2 in table.lru_oldest(batch):
                if not self._interest_anywhere(h1) and table.forget(
                    h1, h2, lambda h1=h1: not self._interest_anywhere(h1)
                ):
                    self.evictions += 1
                    return
                table.touch(h1, h2)  # in use: the next search starts with others
        raise TableFullError(
            f"channel table full: its {len(table)} channels include no forgettable one among the "
            f"{EVICTION_CANDIDATES} least recently used (each has subscribers in its interest bucket); "
            "configure more channel-table slots"
        )

    def _interest_anywhere(self, chan_hash: int) -> bool:
        """Whether any process marks the channel's interest bucket (ours included)."""
        for segment in self.segments:
            if segment.interest.test(chan_hash):
                return True
        return False

    def _ring_interested(self, chan_hashes: set[int]) -> None:
        """Wake the processes that may want these channels (after a fence: see subscribe())."""
        fence()
        for slot, segment in enumerate(self.segments):
            if slot == self.bus_slot or slot in self._to_ring:
                continue
            if segment.interest.test_any(chan_hashes):
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

    def _check_size(self, name: bytes, data_json: bytes, sender: bytes = b"") -> None:
        limit = self.own.ring.max_payload - MSG_HEADER_SIZE - len(name) - len(sender)
        if len(data_json) > limit:
            raise MessageTooLarge(
                f"message too large for the bus: {len(data_json)} bytes of data on channel "
                f"{name.decode(errors='replace')!r}, at most {limit} (one bus ring entry is a quarter of "
                f"--ring-size {self.own.ring.capacity}; raise it for larger messages)"
            )

    def publish(self, channel: str, data_json: bytes, sender: bytes = b"") -> tuple[int, int]:
        """Publish (`sender`: the publishing client's user id, b"" for none); returns (offset, 0)
        when this process sequences the channel, else (0, token).

        Raises MessageTooLarge (nothing written) if the message cannot travel on the bus, BusError
        if the channel table has no room for a new channel."""
        try:
            return self.publish_batch([(channel, data_json)], sender)[0]
        except BatchPublishError as exc:
            raise exc.error from None

    def publish_batch(self, items: list[tuple[str, bytes]], sender: bytes = b"") -> list[tuple[int, int]]:
        """Publish every (channel, data_json) in order, as `publish` does each; returns their
        (offset, 0) or (0, token).

        The wake-ups are the batch's, not each item's: one fence and one interest scan for the
        items sequenced here, one doorbell per role holder for the requests, after the last item.
        An item that cannot be published raises BatchPublishError with its index, the results of
        the items before it (published) and the error; nothing after it is written."""
        results: list[tuple[int, int]] = []
        sequenced: set[int] = set()
        requested: set[int] = set()  # roles we appended requests for
        own_ring = self.own.ring
        own_role = self.role
        roles = self.roles
        hash_name = self.hash
        origin = self.bus_slot
        now = time.time_ns()
        try:
            for channel, data_json in items:
                name = channel.encode()
                self._check_size(name, data_json, sender)
                h1, h2 = hash_name(name)
                role = h1 % roles
                if role == own_role:
                    try:
                        offset = self._sequence(h1, h2, name, data_json, NO_SLOT, 0, now, sender)
                    except TableFullError as exc:
                        raise BusError(f"cannot publish to {channel!r}: {exc}") from None
                    sequenced.add(h1)
                    results.append((offset, 0))
                    continue
                self._token_counter += 1
                token = self._token_prefix | self._token_counter
                self.pending_tokens.add(token)
                own_ring.append(TAG_PUBREQ, encode_pubreq(role, origin, token, now, h1, name, data_json, sender))
                requested.add(role)
                results.append((0, token))
        except BusError as exc:
            raise BatchPublishError(len(results), results, exc) from None
        finally:
            if sequenced:
                self._ring_interested(sequenced)
            for role in requested:
                holder = self.segments[role].role_holder()
                if holder is not None:
                    self.ring_doorbell(holder)  # with no holder (a hand-over), the next one polls at once
        return results

    def forget_token(self, token: int) -> None:
        self.pending_tokens.discard(token)

    # -- subscriptions --

    def subscribe(self, channel: str) -> tuple[int, int]:
        """Start tracking a channel (or add a reference); returns its (epoch, current offset).

        Every message after the returned offset will be delivered. Ordering: mark interest, fence,
        then read the role's table and catch up on the rings. A holder appends, fences, then reads
        interest; so either it sees our mark and rings us, or our catch-up sees its message. The
        same mark keeps the holder from forgetting the channel (ChannelTable.forget).
        """
        name = channel.encode()
        tracked = self.tracked.get(name)
        if tracked is not None:
            tracked.refs += 1
            return tracked.epoch, tracked.offset
        h1, h2 = self.hash(name)
        bucket = h1 % self._buckets
        refs = self._bucket_refs.get(bucket, 0)
        self._bucket_refs[bucket] = refs + 1
        if refs == 0:
            self.own.interest.mark(h1, True)
        fence()
        epoch, offset, _, _ = self.segments[self.role_of(h1)].table.state(h1, h2)
        tracked = Tracked(epoch, offset, 1, h1, self._commits())
        self.tracked[name] = tracked
        self._tracked_hashes[h1] = self._tracked_hashes.get(h1, 0) + 1
        self.poll()
        return tracked.epoch, tracked.offset

    def _commits(self) -> tuple[int, ...]:
        """Every ring's commit now; the same tuple as last time while no ring has moved (a worker
        tracking 20,000 channels holds one, not 20,000 lists of one int per worker)."""
        commits = tuple([segment.ring.commit for segment in self.segments])
        if commits != self._last_commits:
            self._last_commits = commits
        return self._last_commits

    def unsubscribe(self, channel: str) -> None:
        name = channel.encode()
        tracked = self.tracked.get(name)
        if tracked is None:
            return
        tracked.refs -= 1
        if tracked.refs > 0:
            return
        del self.tracked[name]
        h1 = tracked.chan_hash
        if self._tracked_hashes[h1] > 1:
            self._tracked_hashes[h1] -= 1
        else:
            del self._tracked_hashes[h1]
        bucket = h1 % self._buckets
        refs = self._bucket_refs[bucket] - 1
        if refs:
            self._bucket_refs[bucket] = refs
        else:
            del self._bucket_refs[bucket]
            self.own.interest.mark(h1, False)

    def position(self, channel: str) -> tuple[int, int]:
        """(epoch, last delivered offset) of a tracked channel, (0, 0) for another."""
        tracked = self.tracked.get(channel.encode())
        return (tracked.epoch, tracked.offset) if tracked is not None else (0, 0)

    # -- history --

    def history(
        self, channel: str, epoch: int, after: int, upto: int, max_count: int, not_before_ns: int
    ) -> list[tuple[int, bytes, bytes]] | None:
        """The messages after..upto (exclusive, inclusive) of a channel, oldest first, as (offset,
        data, sender), or None if history no longer reaches back that far (overwritten, over
        max_count, older than not_before_ns, another epoch, or the channel was forgotten)."""
        if upto - after > max_count or after > upto:
            return None
        if after == upto:
            return []
        name = channel.encode()
        h1, h2 = self.hash(name)
        current = self.segments[self.role_of(h1)].table.get(h1, h2)
        if current is None or current[0] != epoch:
            return None
        found: list[tuple[int, bytes, bytes]] = []
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
            if msg.channel != name or msg.off != expected or msg.epoch != epoch:
                return None
            if msg.ts_ns < not_before_ns:
                return None
            if msg.off <= upto:
                found.append((msg.off, msg.data, msg.sender))
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
                        self._on_msg(payload, slot, entry_position)
                    elif tag == TAG_PUBREQ and role is not None and peek_pubreq_target(payload) == role:
                        chan_hash = self._on_request(payload)
                        if chan_hash is not None:
                            sequenced.add(chan_hash)
                    elif tag >= FIRST_OTHER_TAG and self.on_record is not None:
                        self.on_record(slot, tag, payload)
                except Exception:
                    self._bad_entry(slot, entry_position, tag, payload)
            processed += len(entries)
            position = new_position
            if not entries and not lost:
                break
        if position != self.cursors[slot]:
            self.read_bytes += position - self.cursors[slot]
            self.cursors[slot] = position
            if role is not None:
                # Persist, so the next holder of the role resumes the requests addressed to it.
                self.segments[role].set_cursor(slot, position)
        if sequenced:
            self._ring_interested(sequenced)
        elif self._to_ring:
            self._flush_doorbells()
        return processed

    def _on_request(self, payload: bytes) -> int | None:
        """Sequence a publish request addressed to our role; its h1, or None if not sequenced."""
        request = decode_pubreq(payload)
        if self._sequenced_before:
            origin_token = (request.origin_slot, request.token)
            if origin_token in self._sequenced_before:
                self._sequenced_before.discard(origin_token)
                return None  # our dead predecessor sequenced it: its MSG is in the rings already
        h1, h2 = self.hash(request.channel)
        if h1 % self.roles != self.role:
            raise ValueError(f"publish request for {request.channel!r} addressed to role {self.role}, not its own")
        try:
            self._sequence(
                h1, h2, request.channel, request.data, request.origin_slot, request.token, request.ts_ns,
                request.sender,
            )  # fmt: skip
        except TableFullError as exc:
            log.error("cannot sequence publish on %r: %s", request.channel, exc)
            return None
        return h1

    def _bad_entry(self, slot: int, position: int, tag: int, payload: bytes) -> None:
        self.bad_entries += 1
        if self.bad_entries <= _BAD_ENTRIES_LOGGED:
            log.exception(
                "bus: skipped an entry that could not be handled (ring %d, position %d, tag %d, %d bytes)",
                slot, position, tag, len(payload),
            )  # fmt: skip
        elif self.bad_entries % 1000 == 0:
            log.error("bus: %d bad entries skipped so far", self.bad_entries)

    def _on_msg(self, payload: bytes, slot: int, position: int) -> None:
        chan_hash = peek_msg_chan_hash(payload)
        if chan_hash not in self._tracked_hashes and not self.pending_tokens:
            return
        msg = decode_msg(payload)
        if msg.origin_slot == self.bus_slot and msg.token in self.pending_tokens:
            self.pending_tokens.discard(msg.token)
            self.acknowledge(msg.token, msg.off)
        tracked = self.tracked.get(msg.channel)  # by name: another channel may share the hash
        if tracked is None:
            return
        if msg.epoch != tracked.epoch:
            if position < tracked.since[slot]:
                return  # left in the rings from before the channel was forgotten
            # The channel's state was lost and it started over in a new epoch: follow it.
            tracked.epoch = msg.epoch
        elif msg.off <= tracked.offset:
            return  # already delivered (seen during a catch-up)
        elif msg.off != tracked.offset + 1:
            self.gaps += 1
            log.warning("gap on %r: expected offset %d, got %d", msg.channel, tracked.offset + 1, msg.off)
        tracked.offset = msg.off
        self.deliver(chan_hash, msg.channel, msg.epoch, msg.off, msg.data, msg.ts_ns, msg.sender)

    # -- cluster mode: messages sequenced elsewhere (Redis), records of other layers --
    # (wsd.server.cluster.owner uses these; the bus itself never calls them)

    def role_of_channel(self, channel: bytes) -> int:
        return self.role_of(self.hash(channel)[0])

    def table_position(self, channel: bytes) -> tuple[int, int] | None:
        """(epoch, last offset) of a channel in its role's table, None if the table has no entry."""
        h1, h2 = self.hash(channel)
        current = self.segments[self.role_of(h1)].table.get(h1, h2)
        return None if current is None else (current[0], current[1])

    def _own_table_for(self, channel: bytes) -> tuple[int, int, ChannelTable]:
        h1, h2 = self.hash(channel)
        if self.role_of(h1) != self.role:
            raise BusError(f"bus slot {self.bus_slot} does not hold the role of {channel!r}")
        return h1, h2, self.segments[self.role].table

    def append_external(
        self, channel: bytes, epoch: int, offset: int, ts_ns: int, data: bytes, sender: bytes = b""
    ) -> int:
        """Append a message another bus sequenced (its epoch and offset, not ours; `sender`: the
        publishing client's user id) as the channel's next MSG; only the holder of the channel's
        role may. It continues the history chain when it follows the table's entry directly.
        Returns the channel hash, for wake_interested(); the caller polls to deliver it here."""
        h1, h2, table = self._own_table_for(channel)
        current = table.get(h1, h2)
        if current is None and len(table) >= table.limit:
            self._make_room(table)
        follows = current is not None and current[0] == epoch and current[1] == offset - 1
        prev_pos = current[2] if follows else NO_POSITION
        self._append_message(table, h1, h2, channel, data, NO_SLOT, 0, ts_ns, epoch, offset, prev_pos, sender)
        return h1

    def set_position(self, channel: bytes, epoch: int, offset: int) -> int:
        """Move a channel of our role to (epoch, offset) without a message: its history starts
        there. Returns the channel hash."""
        h1, h2, table = self._own_table_for(channel)
        if table.get(h1, h2) is None and len(table) >= table.limit:
            self._make_room(table)
        table.put(h1, h2, epoch, offset, NO_POSITION, time.time_ns())
        return h1

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
        return self.segments[bus_slot].interest.test(self.hash(channel)[0])

    def restart_tracked(self, channel: bytes, epoch: int, offset: int) -> bool:
        """A tracked channel continues after (epoch, offset) (its messages up to there are lost):
        deliveries resume with offset + 1. False if this process does not track it."""
        tracked = self.tracked.get(channel)
        if tracked is None:
            return False
        tracked.epoch, tracked.offset = epoch, offset
        return True

    def lag_bytes(self) -> int:
        return sum(max(0, segment.ring.commit - self.cursors[s]) for s, segment in enumerate(self.segments))
