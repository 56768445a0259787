from libc.stdint cimport uint32_t, uint64_t


cdef class ChannelTable:
    cdef unsigned char[::1] _view      # keeps the buffer exported (and mapped) while the table lives
    cdef unsigned char* _header
    cdef unsigned char* _entries
    cdef unsigned char* _counts        # u32 forgets per bucket, after the entries
    cdef Py_ssize_t _offset
    cdef readonly uint64_t slots
    cdef readonly uint64_t buckets
    cdef readonly uint64_t limit       # most entries in use (90% of the slots)
    cdef uint64_t _mask
    # The writer's least-recently-used order: a doubly linked list over entry indexes, head `slots`.
    cdef uint32_t* _prev
    cdef uint32_t* _next

    cdef unsigned char* _find(self, uint64_t h1, uint64_t h2, bint* found) noexcept nogil
    cdef uint32_t _absent_epoch(self, uint64_t h1) noexcept nogil
    cdef tuple _lookup(self, uint64_t h1, uint64_t h2)
    cdef void _forget(self, uint64_t h1, uint64_t h2) noexcept nogil
    cdef void _remove_at(self, uint64_t hole) noexcept nogil
    cdef void _write_entry(self, unsigned char* entry, const unsigned char* source) noexcept nogil
    cdef int _ensure_lru(self) except -1
    cdef int _build_lru(self) except -1
    cdef void _lru_unlink(self, uint64_t index) noexcept nogil
    cdef void _lru_push_back(self, uint64_t index) noexcept nogil
    cdef void _lru_move(self, uint64_t old, uint64_t new) noexcept nogil
