"""Every Redis key and pub/sub channel name wsd uses (documented in docs/cluster.md).

A wsd channel NAME owns three names, all hash-tagged ``{NAME}`` so that in a Redis Cluster they live
in one slot (the publish script touches both keys and publishes on the same shard):

- ``wsd:{NAME}``    pub/sub channel (PUBLISH/SUBSCRIBE, or SPUBLISH/SSUBSCRIBE in a cluster)
- ``wsd:{NAME}:m``  hash: ``e`` the epoch, ``o`` the last offset given out
- ``wsd:{NAME}:s``  stream: the history, one entry per message, entry id = offset

and each pub/sub connection subscribes its own probe channel ``wsd:probe:{TAG}`` (see pubsub.py).
The server API across hosts uses the ``wsd:{#api}:...`` names of api_hosts.py (``#`` is never in a
channel name, so they cannot meet a channel's).
Channel names never contain ``{`` or ``}`` (server/channel_names.py), so the tag is the whole name.
"""

from __future__ import annotations

from redis.crc import key_slot

PREFIX = "wsd:{"
PROBE_PREFIX = "wsd:probe:{"
_PREFIX_BYTES = PREFIX.encode()


def pubsub_channel(channel: str) -> str:
    return f"wsd:{{{channel}}}"


def meta_key(channel: str) -> str:
    return f"wsd:{{{channel}}}:m"


def stream_key(channel: str) -> str:
    return f"wsd:{{{channel}}}:s"


def channel_of(pubsub_name: bytes) -> str | None:
    """The wsd channel a pub/sub channel name belongs to, or None for any other name (a probe)."""
    if pubsub_name.startswith(_PREFIX_BYTES) and pubsub_name.endswith(b"}"):
        return pubsub_name[len(_PREFIX_BYTES) : -1].decode()
    return None


def slot_of(channel: str) -> int:
    """The Redis Cluster hash slot of a wsd channel (of its keys and its pub/sub channel alike)."""
    return key_slot(channel.encode())


def probe_channel(token: str, slots: list[tuple[int, int]] | None = None) -> str:
    """The probe channel of one pub/sub connection. In a cluster its hash tag must fall into a slot
    the connection's master serves (SSUBSCRIBE and SPUBLISH are routed by slot): `slots` are that
    master's ranges, inclusive, and the first suffix whose tag hashes into one of them is taken."""
    if not slots:
        return f"{PROBE_PREFIX}{token}}}"
    for suffix in range(1 << 20):
        tag = f"{token}.{suffix}"
        slot = key_slot(tag.encode())
        if any(start <= slot <= end for start, end in slots):
            return f"{PROBE_PREFIX}{tag}}}"
    raise ValueError(f"no probe tag found for slots {slots}")
