"""Pure-Python reference of wsd.ext.hashing: the 64-bit channel hash that picks a channel's owner slot.

It is the specification the Cython module is tested against; the server imports wsd.ext.hashing.
"""

FNV64_OFFSET_BASIS = 0xCBF29CE484222325
FNV64_PRIME = 0x100000001B3
U64_MASK = 0xFFFFFFFFFFFFFFFF


def channel_hash(name: bytes) -> int:
    """64-bit FNV-1a of `name`, never 0 (0 marks an empty channel-table entry, so it maps to 1)."""
    h = FNV64_OFFSET_BASIS
    for byte in name:
        h = ((h ^ byte) * FNV64_PRIME) & U64_MASK
    return h or 1
