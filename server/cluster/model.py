"""Value types of the cluster layer: stream positions, publications, publish and history results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a channel's stream: ``offset`` counts messages 1, 2, 3... within ``epoch``."""

    epoch: int
    offset: int


@dataclass(frozen=True, slots=True)
class Publication:
    """One message of a channel as Redis holds it. ``data`` are the JSON bytes given to publish,
    verbatim; ``ts_ns`` is Redis's clock when it sequenced the message; ``user`` is the
    publisher's user id, or None."""

    channel: str
    epoch: int
    offset: int
    data: bytes
    ts_ns: int
    user: str | None = None


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a publish landed: the channel's epoch and the offset the message got."""

    epoch: int
    offset: int


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """A channel's stream read after a position.

    ``epoch`` and ``offset`` are the channel's current position in Redis when it was read.
    ``publications`` are the messages after the requested position, oldest first, without a hole
    (at most up to ``upto`` when one was asked), or None when they cannot be recovered: another
    epoch (Redis lost the channel), trimmed (more than the history size), or expired (older than
    the history TTL)."""

    epoch: int
    offset: int
    publications: list[Publication] | None

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.offset)

    @property
    def recovered(self) -> bool:
        return self.publications is not None


# on_publication(channel, epoch, offset, data, ts_ns, user): a message received on a subscribed channel.
PublicationCallback = Callable[[str, int, int, bytes, int, "str | None"], None]
# on_rebuilt(channels): a shard's pub/sub connection was rebuilt and these channels are subscribed
# again; messages published while it was down must be caught up from the stream (read_since).
RebuiltCallback = Callable[[list[str]], None]
