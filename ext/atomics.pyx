"""Atomic loads, stores and fences on a shared buffer, for doorbell pending flags and cursors.

Python-level wrappers over the C helpers declared in atomics.pxd (which the other ext modules
cimport). `buf` is a writable buffer (mmap or bytearray) mapped by several processes; `offset` must be
aligned to the access size.
"""

from libc.stdint cimport uint32_t, uint64_t


cdef unsigned char* _address(buf, Py_ssize_t offset, Py_ssize_t size) except NULL:
    # Borrowing the buffer only for the duration of the call: the caller keeps the mapping alive.
    cdef unsigned char[::1] view = buf
    if offset < 0 or offset + size > view.shape[0]:
        raise ValueError(f"atomic access of {size} bytes at offset {offset} is outside the buffer "
                         f"of {view.shape[0]} bytes")
    cdef unsigned char* address = &view[0] + offset
    if <size_t>address % size:
        raise ValueError(f"atomic access of {size} bytes at offset {offset} is not {size}-byte aligned")
    return address


def fence() -> None:
    """Sequentially consistent thread fence (orders a flag store against a later load)."""
    wsd_fence_seq_cst()


def load_u64(buf, Py_ssize_t offset) -> int:
    """Acquire load of the little-endian u64 at `offset`."""
    return wsd_load_acquire_u64(_address(buf, offset, 8))


def store_u64(buf, Py_ssize_t offset, uint64_t value) -> None:
    """Release store of `value` as the u64 at `offset`."""
    wsd_store_release_u64(_address(buf, offset, 8), value)


def load_u32(buf, Py_ssize_t offset) -> int:
    """Acquire load of the u32 at `offset`."""
    return wsd_load_acquire_u32(_address(buf, offset, 4))


def store_u32(buf, Py_ssize_t offset, uint32_t value) -> None:
    """Release store of `value` as the u32 at `offset`."""
    wsd_store_release_u32(_address(buf, offset, 4), value)


def exchange_u32(buf, Py_ssize_t offset, uint32_t value) -> int:
    """Sequentially consistent exchange of the u32 at `offset`; returns the previous value."""
    return wsd_exchange_u32(_address(buf, offset, 4), value)


def add_u32(buf, Py_ssize_t offset, long delta) -> int:
    """Sequentially consistent add of `delta` (may be negative: modulo 2**32) to the u32 at `offset`;
    returns the new value."""
    return wsd_add_fetch_u32(_address(buf, offset, 4), <uint32_t>(delta & 0xFFFFFFFF))
