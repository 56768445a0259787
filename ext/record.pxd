from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef class Msg:
    cdef readonly uint32_t epoch
    cdef readonly uint16_t origin_slot
    cdef readonly uint64_t off
    cdef readonly uint64_t prev_pos
    cdef readonly uint64_t ts_ns
    cdef readonly uint64_t token
    cdef readonly uint64_t chan_hash
    cdef readonly bytes channel
    cdef readonly bytes data
    cdef readonly bytes sender


cdef class PubReq:
    cdef readonly uint16_t target_slot
    cdef readonly uint16_t origin_slot
    cdef readonly uint64_t token
    cdef readonly uint64_t ts_ns
    cdef readonly uint64_t chan_hash
    cdef readonly bytes channel
    cdef readonly bytes data
    cdef readonly bytes sender
