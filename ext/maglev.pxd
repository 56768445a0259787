# C-level interface of ext/maglev.pyx: the Maglev population loop, callable without the GIL.

cdef int populate_into(const long *offsets, const long *skips, long backend_count,
                       long table_size, int *table, long *next_choice) noexcept nogil
