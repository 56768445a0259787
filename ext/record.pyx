"""The bus record codec: payloads of ring entries (MSG from a channel's owner, PUBREQ to an owner).

Pure functions over bytes, no I/O. Layouts: docs/bus.md ("Memory layouts"); reference
implementation: ext/record_ref.py. Decoding checks every length against the payload, so a torn or
foreign payload raises ValueError and never reads out of bounds.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

TAG_MSG = 1
TAG_PUBREQ = 2
NO_SLOT = 0xFFFF
NO_POSITION = 0xFFFFFFFFFFFFFFFF
MAX_CHANNEL_LENGTH = 255
MAX_SENDER_LENGTH = 255

# MSG: off, prev_pos, ts_ns, token, chan_hash (u64), epoch, data_len (u32), origin_slot (u16),
# channel_len (u8), sender_len (u8), then channel bytes, sender bytes and data bytes.
# PUBREQ: token, ts_ns, chan_hash (u64), data_len (u32), target_slot, origin_slot (u16),
# channel_len (u8), sender_len (u8), then channel bytes, sender bytes and data bytes.
# The sender is the publishing client's user id (UTF-8; empty: none, as for API publishes).

cpdef enum:  # cpdef: the header sizes are also Python-visible (size checks at publish time)
    MSG_HEADER_SIZE = 52
    MSG_CHAN_HASH_OFFSET = 32
    PUBREQ_HEADER_SIZE = 34
    PUBREQ_TARGET_OFFSET = 28


# Little-endian hosts only (x86-64, aarch64): memcpy of native integers is the wire layout, and
# avoids unaligned-access undefined behaviour.
cdef inline uint64_t get_u64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint32_t get_u32(const unsigned char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint16_t get_u16(const unsigned char* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline void put_u64(unsigned char* p, uint64_t v) noexcept nogil:
    memcpy(p, &v, 8)


cdef inline void put_u32(unsigned char* p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)


cdef inline void put_u16(unsigned char* p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)


cdef class Msg:
    """A decoded MSG record: a sequenced message on a channel."""

    def __repr__(self) -> str:
        return (
            f"Msg(epoch={self.epoch}, origin_slot={self.origin_slot}, off={self.off}, "
            f"prev_pos={self.prev_pos}, ts_ns={self.ts_ns}, token={self.token}, "
            f"chan_hash={self.chan_hash}, channel={self.channel!r}, data={self.data!r}, "
            f"sender={self.sender!r})"
        )


cdef class PubReq:
    """A decoded PUBREQ record: a publish request addressed to the channel's owner slot."""

    def __repr__(self) -> str:
        return (
            f"PubReq(target_slot={self.target_slot}, origin_slot={self.origin_slot}, "
            f"token={self.token}, ts_ns={self.ts_ns}, chan_hash={self.chan_hash}, "
            f"channel={self.channel!r}, data={self.data!r}, sender={self.sender!r})"
        )


cdef inline int check_channel(Py_ssize_t channel_len) except -1:
    if channel_len < 1 or channel_len > MAX_CHANNEL_LENGTH:
        raise ValueError(f"channel name must be 1..{MAX_CHANNEL_LENGTH} bytes, got {channel_len}")
    return 0


cdef inline int check_sender(Py_ssize_t sender_len) except -1:
    if sender_len > MAX_SENDER_LENGTH:
        raise ValueError(f"sender must be at most {MAX_SENDER_LENGTH} bytes, got {sender_len}")
    return 0


cdef inline int check_data(Py_ssize_t data_len) except -1:
    if data_len > 0xFFFFFFFF:
        raise OverflowError(f"record field len(data)={data_len} is out of range 0..4294967295")
    return 0


def encode_msg(
    uint32_t epoch,
    uint16_t origin_slot,
    uint64_t off,
    uint64_t prev_pos,
    uint64_t ts_ns,
    uint64_t token,
    uint64_t chan_hash,
    const unsigned char[::1] channel not None,
    const unsigned char[::1] data not None,
    bytes sender not None = b"",
) -> bytes:
    """The payload of a MSG ring entry."""
    cdef Py_ssize_t channel_len = channel.shape[0]
    cdef Py_ssize_t data_len = data.shape[0]
    cdef Py_ssize_t sender_len = len(sender)
    check_channel(channel_len)
    check_sender(sender_len)
    check_data(data_len)
    cdef bytes payload = PyBytes_FromStringAndSize(NULL, MSG_HEADER_SIZE + channel_len + sender_len + data_len)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(payload)
    put_u64(p, off)
    put_u64(p + 8, prev_pos)
    put_u64(p + 16, ts_ns)
    put_u64(p + 24, token)
    put_u64(p + 32, chan_hash)
    put_u32(p + 40, epoch)
    put_u32(p + 44, <uint32_t>data_len)
    put_u16(p + 48, origin_slot)
    p[50] = <uint8_t>channel_len
    p[51] = <uint8_t>sender_len
    memcpy(p + MSG_HEADER_SIZE, &channel[0], channel_len)
    if sender_len:
        memcpy(p + MSG_HEADER_SIZE + channel_len, PyBytes_AS_STRING(sender), sender_len)
    if data_len:
        memcpy(p + MSG_HEADER_SIZE + channel_len + sender_len, &data[0], data_len)
    return payload


cdef int check_body(str kind, Py_ssize_t payload_len, Py_ssize_t header_size, Py_ssize_t channel_len,
                    Py_ssize_t sender_len, Py_ssize_t data_len) except -1:
    if channel_len == 0:
        raise ValueError(f"malformed {kind} record: empty channel name")
    cdef Py_ssize_t expected = header_size + channel_len + sender_len + data_len
    if payload_len != expected:
        raise ValueError(
            f"malformed {kind} record: {payload_len} bytes, the header announces {expected} "
            "(truncated or not a record)"
        )
    return 0


def decode_msg(const unsigned char[::1] payload not None) -> Msg:
    """Decode a MSG payload; ValueError if it is truncated or malformed."""
    cdef Py_ssize_t payload_len = payload.shape[0]
    if payload_len < MSG_HEADER_SIZE:
        raise ValueError(f"malformed MSG record: {payload_len} bytes, shorter than its header")
    cdef const unsigned char* p = &payload[0]
    cdef Py_ssize_t data_len = get_u32(p + 44)
    cdef Py_ssize_t channel_len = p[50]
    cdef Py_ssize_t sender_len = p[51]
    check_body("MSG", payload_len, MSG_HEADER_SIZE, channel_len, sender_len, data_len)
    cdef Msg msg = Msg.__new__(Msg)
    msg.off = get_u64(p)
    msg.prev_pos = get_u64(p + 8)
    msg.ts_ns = get_u64(p + 16)
    msg.token = get_u64(p + 24)
    msg.chan_hash = get_u64(p + 32)
    msg.epoch = get_u32(p + 40)
    msg.origin_slot = get_u16(p + 48)
    msg.channel = PyBytes_FromStringAndSize(<const char*>(p + MSG_HEADER_SIZE), channel_len)
    msg.sender = PyBytes_FromStringAndSize(<const char*>(p + MSG_HEADER_SIZE + channel_len), sender_len)
    msg.data = PyBytes_FromStringAndSize(<const char*>(p + MSG_HEADER_SIZE + channel_len + sender_len), data_len)
    return msg


def encode_pubreq(
    uint16_t target_slot,
    uint16_t origin_slot,
    uint64_t token,
    uint64_t ts_ns,
    uint64_t chan_hash,
    const unsigned char[::1] channel not None,
    const unsigned char[::1] data not None,
    bytes sender not None = b"",
) -> bytes:
    """The payload of a PUBREQ ring entry."""
    cdef Py_ssize_t channel_len = channel.shape[0]
    cdef Py_ssize_t data_len = data.shape[0]
    cdef Py_ssize_t sender_len = len(sender)
    check_channel(channel_len)
    check_sender(sender_len)
    check_data(data_len)
    cdef bytes payload = PyBytes_FromStringAndSize(NULL, PUBREQ_HEADER_SIZE + channel_len + sender_len + data_len)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(payload)
    put_u64(p, token)
    put_u64(p + 8, ts_ns)
    put_u64(p + 16, chan_hash)
    put_u32(p + 24, <uint32_t>data_len)
    put_u16(p + 28, target_slot)
    put_u16(p + 30, origin_slot)
    p[32] = <uint8_t>channel_len
    p[33] = <uint8_t>sender_len
    memcpy(p + PUBREQ_HEADER_SIZE, &channel[0], channel_len)
    if sender_len:
        memcpy(p + PUBREQ_HEADER_SIZE + channel_len, PyBytes_AS_STRING(sender), sender_len)
    if data_len:
        memcpy(p + PUBREQ_HEADER_SIZE + channel_len + sender_len, &data[0], data_len)
    return payload


def decode_pubreq(const unsigned char[::1] payload not None) -> PubReq:
    """Decode a PUBREQ payload; ValueError if it is truncated or malformed."""
    cdef Py_ssize_t payload_len = payload.shape[0]
    if payload_len < PUBREQ_HEADER_SIZE:
        raise ValueError(f"malformed PUBREQ record: {payload_len} bytes, shorter than its header")
    cdef const unsigned char* p = &payload[0]
    cdef Py_ssize_t data_len = get_u32(p + 24)
    cdef Py_ssize_t channel_len = p[32]
    cdef Py_ssize_t sender_len = p[33]
    check_body("PUBREQ", payload_len, PUBREQ_HEADER_SIZE, channel_len, sender_len, data_len)
    cdef PubReq request = PubReq.__new__(PubReq)
    request.token = get_u64(p)
    request.ts_ns = get_u64(p + 8)
    request.chan_hash = get_u64(p + 16)
    request.target_slot = get_u16(p + 28)
    request.origin_slot = get_u16(p + 30)
    request.channel = PyBytes_FromStringAndSize(<const char*>(p + PUBREQ_HEADER_SIZE), channel_len)
    request.sender = PyBytes_FromStringAndSize(<const char*>(p + PUBREQ_HEADER_SIZE + channel_len), sender_len)
    request.data = PyBytes_FromStringAndSize(
        <const char*>(p + PUBREQ_HEADER_SIZE + channel_len + sender_len), data_len
    )
    return request


def peek_msg_chan_hash(const unsigned char[::1] payload not None) -> int:
    """chan_hash of a MSG payload without decoding it (ValueError if shorter than the header)."""
    if payload.shape[0] < MSG_HEADER_SIZE:
        raise ValueError(f"malformed MSG record: {payload.shape[0]} bytes, shorter than its header")
    return get_u64(&payload[0] + MSG_CHAN_HASH_OFFSET)


def peek_pubreq_target(const unsigned char[::1] payload not None) -> int:
    """target_slot of a PUBREQ payload without decoding it (ValueError if shorter than the header)."""
    if payload.shape[0] < PUBREQ_HEADER_SIZE:
        raise ValueError(f"malformed PUBREQ record: {payload.shape[0]} bytes, shorter than its header")
    return get_u16(&payload[0] + PUBREQ_TARGET_OFFSET)


def peek_ts_ns(uint32_t tag, const unsigned char[::1] payload not None) -> int:
    """Publish time of a MSG or PUBREQ payload without decoding it (ValueError for another tag, or
    a payload shorter than its header)."""
    if tag == TAG_MSG and payload.shape[0] >= MSG_HEADER_SIZE:
        return get_u64(&payload[0] + 16)
    if tag == TAG_PUBREQ and payload.shape[0] >= PUBREQ_HEADER_SIZE:
        return get_u64(&payload[0] + 8)
    raise ValueError(f"no publish time in a {payload.shape[0]}-byte payload of tag {tag}")
