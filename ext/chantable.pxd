from libc.stdint cimport uint32_t, uint64_t


cdef class ChannelTable:
    cdef unsigned char[::1] _view      # keeps the buffer exported (and mapped) while the table lives
    cdef unsigned char* _header
    cdef unsigned char* _entries
    cdef Py_ssize_t _offset
    cdef readonly uint64_t slots
    cdef uint64_t _mask

    cdef unsigned char* _find(self, uint64_t chan_hash, bint* found) noexcept nogil
    cdef tuple _read_entry(self, unsigned char* entry)
