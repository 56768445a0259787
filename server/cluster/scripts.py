"""The Lua scripts that make a publish atomic and read history consistently, their arguments, their
replies, and the compact pub/sub payload (sans-I/O: no Redis connection here).

Pub/sub payload: ``1:EPOCH:OFFSET:TS_NS:USERLEN:USER`` followed by the message's JSON bytes verbatim
(USERLEN empty = no user id). Splitting at the first five colons recovers every field; the data is
never re-encoded.
"""

from __future__ import annotations

import hashlib
import random

from wsd.server.cluster.model import Publication

# KEYS: meta hash, stream. ARGV: data, history size, history TTL (s), meta TTL (s), new epoch,
# pub/sub channel, publish command (publish or spublish), has user ('0'/'1'), user id.
# Epoch: kept in the meta hash; created only when the hash is missing (Redis lost the channel, or
# never had it). Then any stream left (the hash was evicted alone) belongs to a dead epoch: deleted.
# Offset: HINCRBY, so 1, 2, 3... Scripts are not rolled back on error, so nothing after HINCRBY may
# fail: XADD goes through pcall, and a stream whose last id would refuse the offset is replaced.
PUBLISH_LUA = """
local epoch = redis.call('hget', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', KEYS[1], 'e', epoch)
  redis.call('del', KEYS[2])
end
local offset = redis.call('hincrby', KEYS[1], 'o', 1)
redis.call('expire', KEYS[1], ARGV[4])
local now = redis.call('time')
local ts = now[1] .. string.format('%06d', tonumber(now[2])) .. '000'
if ARGV[2] ~= '0' then
  local fields
  if ARGV[8] == '1' then
    fields = {'d', ARGV[1], 't', ts, 'u', ARGV[9]}
  else
    fields = {'d', ARGV[1], 't', ts}
  end
  local added = redis.pcall('xadd', KEYS[2], 'MAXLEN', ARGV[2], offset, unpack(fields))
  if type(added) == 'table' and added.err then
    redis.call('del', KEYS[2])
    redis.call('xadd', KEYS[2], 'MAXLEN', ARGV[2], offset, unpack(fields))
  end
  redis.call('expire', KEYS[2], ARGV[3])
end
local user = ''
if ARGV[8] == '1' then user = #ARGV[9] .. ':' .. ARGV[9] else user = ':' end
redis.call(ARGV[7], ARGV[6], '1:' .. epoch .. ':' .. offset .. ':' .. ts .. ':' .. user .. ARGV[1])
return {offset, epoch}
"""

# KEYS: meta hash, stream. ARGV: after offset (-1: position only), max entries, meta TTL (s), new epoch.
# Returns {top offset, epoch, Redis time in ns, entries}: entries are those after max(after, top-max),
# up to top, so that one read serves every waiter whose own start lies within max entries of top.
HISTORY_LUA = """
local meta = redis.call('hmget', KEYS[1], 'e', 'o')
local epoch, top = meta[1], tonumber(meta[2] or 0)
if not epoch then
  epoch = ARGV[4]
  top = 0
  redis.call('hset', KEYS[1], 'e', epoch)
  redis.call('del', KEYS[2])
end
redis.call('expire', KEYS[1], ARGV[3])
local now = redis.call('time')
local now_ns = now[1] .. string.format('%06d', tonumber(now[2])) .. '000'
local after, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local entries = {}
if after >= 0 and count > 0 and top > after then
  local start = math.max(after, top - count) + 1
  entries = redis.call('xrange', KEYS[2], start, top, 'COUNT', count)
end
return {top, epoch, now_ns, entries}
"""

PUBLISH_SHA = hashlib.sha1(PUBLISH_LUA.encode()).hexdigest()
HISTORY_SHA = hashlib.sha1(HISTORY_LUA.encode()).hexdigest()
SCRIPTS = {PUBLISH_SHA: PUBLISH_LUA, HISTORY_SHA: HISTORY_LUA}


def new_epoch() -> int:
    """A random epoch 1..2**31-1, used only if Redis has no state for the channel. Random, not
    counted: the state it replaces is gone, so nothing remembers the previous value. (Not a secret:
    the process's seeded PRNG is enough, and one is drawn for every publish.)"""
    return random.randrange(1, 1 << 31)


def publish_args(
    meta: str, stream: str, pubsub: str, data: bytes, user: str | None, *,
    history_size: int, history_ttl_s: int, meta_ttl_s: int, sharded: bool,
) -> tuple:  # fmt: skip
    """The EVALSHA command (without the command name) of one publish."""
    return (
        PUBLISH_SHA, 2, meta, stream, data, history_size, history_ttl_s, meta_ttl_s, new_epoch(), pubsub,
        "spublish" if sharded else "publish", "0" if user is None else "1", user or "",
    )  # fmt: skip


def history_args(meta: str, stream: str, after: int, count: int, meta_ttl_s: int) -> tuple:
    """The EVALSHA command (without the command name) of one history read; after=-1: position only."""
    return (HISTORY_SHA, 2, meta, stream, after, count, meta_ttl_s, new_epoch())


def parse_publish_reply(reply: list) -> tuple[int, int]:
    """(epoch, offset) from the publish script's reply. (The timestamp travels with the message and
    its stream entry, not back to the publisher: every byte of the reply is paid per publish.)"""
    offset, epoch = reply
    return int(epoch), int(offset)


def parse_history_reply(channel: str, reply: list) -> tuple[int, int, int, list[Publication]]:
    """(epoch, top offset, Redis now in ns, publications) from the history script's reply."""
    top, epoch, now_ns, entries = reply
    epoch = int(epoch)
    publications = []
    for entry_id, fields in entries:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        user = values.get(b"u")
        publications.append(Publication(
            channel, epoch, int(entry_id.partition(b"-")[0]), values[b"d"], int(values[b"t"]),
            None if user is None else user.decode(),
        ))  # fmt: skip
    return epoch, int(top), int(now_ns), publications


def decode_payload(payload: bytes) -> tuple[int, int, int, str | None, bytes]:
    """(epoch, offset, ts_ns, user, data) of a pub/sub message; ValueError if it is not wsd's."""
    version, epoch, offset, ts, user_length, rest = payload.split(b":", 5)
    if version != b"1":
        raise ValueError(f"unknown payload version {version[:10]!r}")
    if not user_length:
        return int(epoch), int(offset), int(ts), None, rest
    length = int(user_length)
    # USER may contain colons itself: USERLEN was followed by one colon, then exactly USER.
    return int(epoch), int(offset), int(ts), rest[:length].decode(), rest[length:]
