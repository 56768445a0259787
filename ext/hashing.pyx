"""The 64-bit channel hash (FNV-1a) that picks a channel's owner slot and keys the channel table.

Reference: ext/hashing_ref.py.
"""

from libc.stdint cimport uint64_t

cdef uint64_t FNV64_OFFSET_BASIS = 0xCBF29CE484222325ULL
cdef uint64_t FNV64_PRIME = 0x100000001B3ULL


def channel_hash(const unsigned char[::1] name) -> int:
    """64-bit FNV-1a of `name`, never 0 (0 marks an empty channel-table entry, so it maps to 1)."""
    cdef uint64_t h = FNV64_OFFSET_BASIS
    cdef Py_ssize_t i
    for i in range(name.shape[0]):
        h = (h ^ name[i]) * FNV64_PRIME
    return h if h != 0 else 1
