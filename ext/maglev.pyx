# cython: language_level=3
"""Maglev table population, the hot loop of `wsd.balancer.maglev` (same algorithm as
`wsd.balancer.maglev.populate_reference`, which the tests use to cross-check this one)."""

from libc.stdlib cimport free, malloc


cdef int populate_into(const long *offsets, const long *skips, long backend_count,
                       long table_size, int *table, long *next_choice) noexcept nogil:
    """Fill `table` (table_size slots) with backend indices; `next_choice` is scratch space."""
    cdef long backend, slot, filled = 0
    for slot in range(table_size):
        table[slot] = -1
    if backend_count == 0:
        return 0
    for backend in range(backend_count):
        next_choice[backend] = 0
    while True:
        for backend in range(backend_count):
            slot = (offsets[backend] + next_choice[backend] * skips[backend]) % table_size
            while table[slot] >= 0:
                next_choice[backend] += 1
                slot = (offsets[backend] + next_choice[backend] * skips[backend]) % table_size
            table[slot] = <int>backend
            next_choice[backend] += 1
            filled += 1
            if filled == table_size:
                return 0


def populate(list offsets, list skips, long table_size):
    """Per slot, the index of the backend that owns it (-1 everywhere when there are no backends)."""
    cdef long backend_count = len(offsets)
    cdef long i
    if len(skips) != backend_count:
        raise ValueError("offsets and skips must have one entry per backend")
    if table_size < 2:
        raise ValueError("table_size must be at least 2")
    cdef long *c_offsets = <long *>malloc(max(backend_count, 1) * sizeof(long))
    cdef long *c_skips = <long *>malloc(max(backend_count, 1) * sizeof(long))
    cdef long *next_choice = <long *>malloc(max(backend_count, 1) * sizeof(long))
    cdef int *table = <int *>malloc(table_size * sizeof(int))
    if not c_offsets or not c_skips or not next_choice or not table:
        free(c_offsets); free(c_skips); free(next_choice); free(table)
        raise MemoryError()
    try:
        for i in range(backend_count):
            c_offsets[i] = offsets[i]
            c_skips[i] = skips[i]
        with nogil:
            populate_into(c_offsets, c_skips, backend_count, table_size, table, next_choice)
        return [table[i] for i in range(table_size)]
    finally:
        free(c_offsets)
        free(c_skips)
        free(next_choice)
        free(table)
