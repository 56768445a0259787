from libc.stdint cimport uint32_t, uint64_t


cdef class Ring:
    cdef unsigned char[::1] _view      # keeps the buffer exported (and mapped) while the ring lives
    cdef unsigned char* _header
    cdef unsigned char* _data
    cdef Py_ssize_t _offset
    cdef readonly uint64_t capacity
    cdef readonly uint64_t max_payload
    cdef uint64_t _mask

    cdef uint64_t _load_commit(self) noexcept nogil
    cdef uint64_t _load_reserve(self) noexcept nogil
    cdef uint64_t _load_tail(self) noexcept nogil
    cdef bint _overwritten(self, uint64_t pos) noexcept nogil
    cdef uint64_t _append_raw(self, uint32_t tag, const unsigned char* payload, uint32_t size) noexcept nogil
    cdef tuple _skip_to_tail(self, list entries, uint64_t cursor)
