"""Per-connection memory of picows connections: buffers only while they hold something.

picows gives every connection a read buffer of at least 2,048 bytes and a write buffer of 1,024
bytes for its whole life (`MemoryBuffer(max(init, 2048))`, `MemoryBuffer(1024)`, no setting
shrinks them). A push server's connections are idle nearly all the time, so wsd:

- lends every idle connection (no partial frame buffered) one read buffer per worker,
  `SharedReadBuffer`: the loop is single-threaded and a read is parsed to its end before the next
  read starts, so all idle connections can read into the same bytes. After a read, a connection
  left with an incomplete frame copies it into a buffer of its own (`after_read`), and gives that
  back once it has parsed everything (the next `after_read` that finds nothing left). A read that
  picows would answer by growing the buffer first gets a private copy (`before_read`), so picows
  never reallocates the shared bytes.
- trims a connection's write buffer to a few bytes once its handshake is answered
  (`trim_transport`): wsd writes its replies as finished frames to the raw transport, and picows
  grows the buffer again (it always resizes before it writes) for the pings and the close frame
  it still builds there.

The positions inside the buffer are picows's (private); the one wsd needs, where unparsed data
ends, is what `get_buffer` points at. wsd.server.worker.accept.LeanWSProtocol wires these
functions to picows's protocol. picows is pinned to 2.3 (pyproject.toml): this module compiles
against its `MemoryBuffer` and `WSTransport` declarations.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy

from picows.picows cimport MemoryBuffer, WSTransport

# picows keeps this many bytes past `size` for its SIMD parsers (WSProtocol.__init__).
cdef Py_ssize_t PARSER_SLACK = 256
# A private read buffer starts like picows's own (its minimum).
cdef Py_ssize_t PRIVATE_CAPACITY = 2048
# What a trimmed write buffer keeps: pings (2 bytes) fit without a reallocation.
cdef Py_ssize_t TRIMMED_WRITE_CAPACITY = 16


cdef class SharedReadBuffer:
    """The read buffer every idle connection of this process reads into."""

    cdef char* data
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t lent  # connections that point at it now
    cdef readonly Py_ssize_t privatized  # times a connection had to take its own buffer

    def __cinit__(self, Py_ssize_t capacity):
        if capacity < PRIVATE_CAPACITY:
            raise ValueError(f"a shared read buffer needs at least {PRIVATE_CAPACITY} bytes, got {capacity}")
        self.data = <char*>PyMem_Malloc(capacity)
        if self.data == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.lent = 0
        self.privatized = 0

    def __dealloc__(self):
        # Only at interpreter exit: the workers' buffer lives as long as the process.
        if self.lent == 0 and self.data != NULL:
            PyMem_Free(self.data)

    cpdef bint holds(self, MemoryBuffer buffer):
        """Whether `buffer` reads into the shared bytes now."""
        return buffer.data == self.data

    cdef void _lend(self, MemoryBuffer buffer) noexcept:
        if buffer.data != self.data:
            PyMem_Free(buffer.data)
            self.lent += 1
        buffer.data = self.data
        buffer.capacity = self.capacity
        buffer.size = self.capacity - PARSER_SLACK

    cdef int _privatize(self, MemoryBuffer buffer, Py_ssize_t keep, Py_ssize_t capacity) except -1:
        """Give `buffer` bytes of its own (`capacity`), holding the first `keep` bytes it had."""
        cdef char* own = <char*>PyMem_Malloc(capacity)
        if own == NULL:
            raise MemoryError()
        if keep:
            memcpy(own, buffer.data, keep)
        buffer.data = own
        buffer.capacity = capacity
        buffer.size = capacity - PARSER_SLACK
        self.lent -= 1
        self.privatized += 1
        return 0

    cpdef before_read(self, MemoryBuffer buffer, Py_ssize_t nbytes):
        """A read of `nbytes` just landed; picows will grow the buffer if it is nearly full, which
        must not happen to the shared bytes: copy them out first (picows then grows the copy)."""
        if buffer.data != self.data:
            return
        # picows's own test (WSProtocol._maybe_grow_read_buffer); a shared buffer held no data.
        if 100 * nbytes // buffer.size > 90 or buffer.size - nbytes <= PARSER_SLACK:
            self._privatize(buffer, nbytes, self.capacity)

    cpdef after_read(self, MemoryBuffer buffer, object unread_view, bint connected):
        """picows has parsed what it could; `unread_view` is its `get_buffer()` now, which starts
        where the unparsed bytes end. Keep those bytes in a buffer of the connection's own, or,
        with none left (and the handshake done: `connected`), lend the connection the shared one."""
        cdef Py_buffer view
        cdef Py_ssize_t pending, capacity
        PyObject_GetBuffer(unread_view, &view, PyBUF_SIMPLE)
        pending = <char*>view.buf - buffer.data
        PyBuffer_Release(&view)
        if buffer.data == self.data:
            if pending:
                capacity = PRIVATE_CAPACITY
                while capacity - PARSER_SLACK - pending <= PARSER_SLACK or 100 * pending // (capacity - PARSER_SLACK) > 90:
                    capacity *= 2
                self._privatize(buffer, pending, capacity)
        elif pending == 0 and connected:
            self._lend(buffer)

    cpdef give_back(self, MemoryBuffer buffer):
        """The connection is going away: its buffer must not free the shared bytes."""
        if buffer.data == self.data:
            buffer.data = NULL
            buffer.capacity = 0
            buffer.size = 0
            self.lent -= 1


def trim_transport(WSTransport transport, object done_future):
    """After the handshake (a server's connection): a write buffer of TRIMMED_WRITE_CAPACITY bytes;
    the transport's `disconnected_future` (a future per connection that only picows's client side
    awaits) replaced by `done_future`, one already-finished future shared by the worker; and the
    upgrade request and response, which picows keeps for the connection's life and nothing reads
    after the handshake, dropped."""
    cdef MemoryBuffer buffer = transport._write_buffer
    cdef char* small
    if buffer.capacity > TRIMMED_WRITE_CAPACITY:
        small = <char*>PyMem_Malloc(TRIMMED_WRITE_CAPACITY)
        if small == NULL:
            raise MemoryError()
        PyMem_Free(buffer.data)
        buffer.data = small
        buffer.capacity = TRIMMED_WRITE_CAPACITY
        buffer.size = 0
    transport.disconnected_future = done_future
    transport.request = None
    transport.response = None
