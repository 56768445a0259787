"""The Broker interface: what a worker's node needs from a bus, and the values that cross it.

A broker gives each channel its offsets (1, 2, 3... without holes, in one order for every
subscriber, within an epoch), keeps its history, and delivers the messages of the channels this
process has interest in. The shared-memory bus of one host (`wsd.server.bus.broker.ShmBroker`) is
the first broker; the Redis bus across hosts is the second. As in Centrifuge's `broker.go`, this
module holds only the interface and value types.

Brokers answer at once where they can and later where they must: `publish`, `subscribe` and
`history` return either the result or an awaitable of it (`Pending`), so the shared-memory bus
costs no future on its fast paths while a remote bus can wait for its round trip.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")

# A result now, or an awaitable of it.
Pending = T | Awaitable[T]


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a channel's stream is: the last offset given out, in an epoch (a new epoch means the
    channel's history was lost and its offsets started over)."""

    offset: int
    epoch: int


class BrokerError(Exception):
    """A publish or subscription the broker could not carry out; `code` is the protocol's error
    code (`publish_failed`, `unavailable`) and `status` the HTTP status the publish API answers."""

    def __init__(self, message: str, code: str = "publish_failed", status: int = 503) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


# deliver(chan_hash, channel name, epoch, offset, data as JSON bytes, publish time in ns, sender):
# the sender is the user id (UTF-8) of the client that published the message, b"" for none (an API
# publish); subscribers see it as the delivery's "from".
DeliverCallback = Callable[[int, bytes, int, int, bytes, int, bytes], None]


class Broker(Protocol):
    """One process's view of a bus. Deliveries go to the callbacks given to the broker's
    constructor: one per message of a channel with interest, then `deliveries_done()` once a batch
    is through (so the hub writes each subscriber once per batch)."""

    def unavailable(self, channel: str) -> BrokerError | None:
        """Why a new subscription to `channel` cannot be taken now (code `unavailable`: a
        cluster's Redis is down), or None. Asked for every new subscription, not only the first."""
        ...

    def publish(self, channel: str, data_json: bytes, sender: bytes = b"") -> Pending[int]:
        """Publish `data_json` on `channel` for the client user `sender` (b"": the API); its offset.
        Raises (or resolves to) BrokerError."""
        ...

    def subscribe(self, channel: str) -> Pending[StreamPosition]:
        """Take interest in `channel` (the first local subscriber): every message after the
        returned position will be delivered."""
        ...

    def unsubscribe(self, channel: str) -> None:
        """Drop interest in `channel` (its last local subscriber left)."""
        ...

    def position(self, channel: str) -> StreamPosition:
        """The last position delivered here of a channel this process has interest in."""
        ...

    def latest(self, channel: str) -> Pending[StreamPosition]:
        """The channel's newest position on the bus (the last offset given out), whether or not this
        process has interest in it; offset 0 for a channel nothing was published to (the server
        API's `GET /api/channels/NAME`)."""
        ...

    def history(
        self, channel: str, since: StreamPosition, upto: int
    ) -> Pending[list[tuple[int, bytes, bytes]] | None]:
        """The messages after `since` up to offset `upto` (inclusive), oldest first, as (offset,
        data, sender); None when history no longer reaches back that far (or `since` is of another
        epoch)."""
        ...
