# cython: language_level=3, boundscheck=False, wraparound=False
"""The load generator's per-connection listener in Cython: the same bookkeeping as
harness.listener.SubscriberListener (count, per-channel offset order, publish-to-receive latency),
with the deliveries parsed in C.

Why: the load generator shares the cores with the server it measures; in Python its per-frame
callback cost ~4 µs of CPU (py-spy: 89% of the client process in on_ws_frame), which capped every
burst figure and added to every latency. Built in place at run time by
harness.fastlisten_build.build_fast_listener() (cythonize); the load generator falls back to the
Python listener when it cannot be built.

It tracks the offsets of two channels per connection: the shared one (harness.listener.SHARED_CHANNEL)
and the connection's own user channel.
"""

from libc.stdint cimport int64_t
from libc.string cimport memcmp
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

cdef const char* PREFIX_WSD = b'{"op":"msg",'
cdef const char* PREFIX_SOCKETIO = b'42["msg",'
cdef const char* CHANNEL_KEY = b'"ch":"'
cdef const char* OFFSET_KEY = b'","off":'
cdef const char* STAMP_KEY = b'"t":'
cdef const char* SHARED = b"bench"  # harness.listener.SHARED_CHANNEL


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline Py_ssize_t find(const char* p, Py_ssize_t start, Py_ssize_t end, const char* key,
                            Py_ssize_t key_length) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(start, end - key_length + 1):
        if p[i] == key[0] and memcmp(p + i, key, key_length) == 0:
            return i
    return -1


cdef inline int64_t parse_int(const char* p, Py_ssize_t* at, Py_ssize_t end) noexcept nogil:
    cdef int64_t value = 0
    cdef Py_ssize_t i = at[0]
    while i < end and 48 <= p[i] <= 57:
        value = value * 10 + (p[i] - 48)
        i += 1
    at[0] = i
    return value


cdef class FastRecorder:
    """What one client process counts during a phase (harness.listener.PhaseRecorder's fields, C-typed)."""

    cdef public int64_t connections, expected_per_connection, received, complete_connections
    cdef public int64_t out_of_order, first_receive_ns, last_receive_ns
    cdef public bint record_latency
    cdef public object first_offsets, latencies_us, on_complete

    def __init__(self):
        self.connections = 0
        self.on_complete = None
        self.reset(0, False)

    def reset(self, expected_per_connection, record_latency):
        from array import array
        from collections import Counter

        self.expected_per_connection = expected_per_connection
        self.record_latency = record_latency
        self.received = 0
        self.complete_connections = 0
        self.out_of_order = 0
        self.first_offsets = Counter()
        self.first_receive_ns = 0
        self.last_receive_ns = 0
        self.latencies_us = array("q")


cdef class FastListener(WSListener):
    """One subscriber connection; deliveries are parsed here, everything else in `slow_path`."""

    cdef public FastRecorder recorder
    cdef public object transport, connected, error, slow_path
    cdef public int64_t count, acks
    cdef public bint socketio
    cdef int64_t previous_shared, previous_user

    def __init__(self, FastRecorder recorder, bint socketio, slow_path):
        self.recorder = recorder
        self.socketio = socketio
        self.slow_path = slow_path  # slow_path(listener, transport, payload): acks, pings, errors
        self.transport = None
        self.connected = None
        self.error = None
        self.count = 0
        self.acks = 0
        self.previous_shared = -1
        self.previous_user = -1

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        if self.socketio:
            import asyncio

            self.connected = asyncio.get_running_loop().create_future()
            transport.send(WSMsgType.TEXT, b"40")  # connect to the main namespace

    cpdef on_ws_disconnected(self, WSTransport transport):
        if self.error is None:
            self.error = "disconnected"

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef const char* p = frame.payload_ptr
        cdef Py_ssize_t n = frame.payload_size
        cdef Py_ssize_t at, channel_start, channel_end
        cdef int64_t now, offset, stamp
        cdef bint shared
        cdef FastRecorder recorder = self.recorder
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                self.error = f"closed by server: {frame.get_close_code()} {frame.get_close_message()}"
                transport.disconnect()
            return
        if self.socketio:
            if n < 9 or memcmp(p, PREFIX_SOCKETIO, 9) != 0:
                self.slow_path(self, transport, frame.get_payload_as_bytes())
                return
        elif n < 12 or memcmp(p, PREFIX_WSD, 12) != 0:
            self.slow_path(self, transport, frame.get_payload_as_bytes())
            return
        now = now_ns()
        channel_start = find(p, 0, n, CHANNEL_KEY, 6)
        channel_end = find(p, channel_start + 6, n, OFFSET_KEY, 8) if channel_start >= 0 else -1
        if channel_end < 0:
            self.error = "delivery without ch/off: " + frame.get_payload_as_bytes()[:200].decode(errors="replace")
            return
        channel_start += 6
        shared = channel_end - channel_start == 5 and memcmp(p + channel_start, SHARED, 5) == 0
        at = channel_end + 8
        offset = parse_int(p, &at, n)
        if shared:
            if self.previous_shared >= 0 and offset != self.previous_shared + 1:
                recorder.out_of_order += 1
            self.previous_shared = offset
        else:
            if self.previous_user >= 0 and offset != self.previous_user + 1:
                recorder.out_of_order += 1
            self.previous_user = offset
        self.count += 1
        recorder.received += 1
        if recorder.first_receive_ns == 0:
            recorder.first_receive_ns = now
        recorder.last_receive_ns = now
        if self.count == 1:
            recorder.first_offsets[offset] += 1
        if recorder.record_latency:
            at = find(p, at, n, STAMP_KEY, 4)
            if at >= 0:
                at += 4
                stamp = parse_int(p, &at, n)
                recorder.latencies_us.append((now - stamp) // 1000)
        if self.count == recorder.expected_per_connection:
            recorder.complete_connections += 1
            if recorder.complete_connections == recorder.connections and recorder.on_complete is not None:
                recorder.on_complete()
