"""The keyed channel hash: two independent SipHash-2-4 values of a channel name under a per-server
secret. `h1` picks the channel's role, interest bucket and channel-table probe start and is
written in its records; `h2` tells two names with the same `h1` apart in the channel table (which
holds no names). Reference and the reasons: ext/hashing_ref.py.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

SECRET_SIZE = 32


cdef inline uint64_t rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline uint64_t load_le_u64(const unsigned char* p) noexcept nogil:
    # x86-64 and aarch64 are little-endian; memcpy avoids unaligned-access undefined behaviour.
    cdef uint64_t value
    memcpy(&value, p, 8)
    return value


cdef uint64_t sip24(uint64_t k0, uint64_t k1, const unsigned char* message, Py_ssize_t length) noexcept nogil:
    cdef uint64_t v0 = k0 ^ 0x736F6D6570736575ULL
    cdef uint64_t v1 = k1 ^ 0x646F72616E646F6DULL
    cdef uint64_t v2 = k0 ^ 0x6C7967656E657261ULL
    cdef uint64_t v3 = k1 ^ 0x7465646279746573ULL
    cdef Py_ssize_t end = length - length % 8
    cdef Py_ssize_t i
    cdef int r
    cdef uint64_t m
    cdef uint64_t last = (<uint64_t>(length & 0xFF)) << 56
    i = 0
    while i < end:
        m = load_le_u64(message + i)
        v3 ^= m
        for r in range(2):
            v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
            v2 += v3; v3 = rotl(v3, 16); v3 ^= v2
            v0 += v3; v3 = rotl(v3, 21); v3 ^= v0
            v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
        v0 ^= m
        i += 8
    for i in range(length - end):
        last |= (<uint64_t>message[end + i]) << (8 * i)
    v3 ^= last
    for r in range(2):
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
    v0 ^= last
    v2 ^= 0xFF
    for r in range(4):
        v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
        v2 += v3; v3 = rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
    return v0 ^ v1 ^ v2 ^ v3


def siphash24(const unsigned char[::1] key not None, const unsigned char[::1] message not None) -> int:
    """SipHash-2-4 of `message` under a 16-byte `key`, as a 64-bit integer."""
    if key.shape[0] != 16:
        raise ValueError(f"a SipHash key is 16 bytes, got {key.shape[0]}")
    cdef const unsigned char* data = &message[0] if message.shape[0] else <const unsigned char*>b""
    return sip24(load_le_u64(&key[0]), load_le_u64(&key[0] + 8), data, message.shape[0])


cdef class ChannelHasher:
    """`hash(name) -> (h1, h2)` under one server's 32-byte secret; h1 is never 0 (0 marks an empty
    channel-table entry, so it maps to 1)."""

    cdef uint64_t k0, k1, k2, k3

    def __init__(self, const unsigned char[::1] secret not None) -> None:
        if secret.shape[0] != SECRET_SIZE:
            raise ValueError(f"the channel hash secret is {SECRET_SIZE} bytes, got {secret.shape[0]}")
        self.k0 = load_le_u64(&secret[0])
        self.k1 = load_le_u64(&secret[0] + 8)
        self.k2 = load_le_u64(&secret[0] + 16)
        self.k3 = load_le_u64(&secret[0] + 24)

    def hash(self, bytes name not None) -> tuple:
        # bytes, not a buffer: this runs for every publish and subscribe, and acquiring a
        # memoryview costs more than hashing a short name.
        cdef const unsigned char* data = <const unsigned char*>PyBytes_AS_STRING(name)
        cdef Py_ssize_t length = PyBytes_GET_SIZE(name)
        cdef uint64_t h1 = sip24(self.k0, self.k1, data, length)
        cdef uint64_t h2 = sip24(self.k2, self.k3, data, length)
        return (h1 if h1 != 0 else 1), h2
