"""Server-to-client WebSocket text frames, encoded once per worker and written to every subscriber.

Reference implementation: ext/frames_ref.py.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy

cdef enum:
    FIN_TEXT = 0x81  # FIN=1, opcode 0x1 (text)

cdef const char* MSG_PREFIX = b'{"op":"msg","ch":"'
cdef Py_ssize_t MSG_PREFIX_LEN = 18
cdef const char* MSG_OFF = b'","off":'
cdef Py_ssize_t MSG_OFF_LEN = 8
cdef const char* MSG_DATA = b',"data":'
cdef Py_ssize_t MSG_DATA_LEN = 8
cdef const char* MSG_FROM = b',"from":'
cdef Py_ssize_t MSG_FROM_LEN = 8


cdef inline Py_ssize_t header_length(Py_ssize_t payload_length) noexcept nogil:
    if payload_length < 126:
        return 2
    if payload_length < 65536:
        return 4
    return 10


cdef inline void write_header(unsigned char* p, uint64_t payload_length) noexcept nogil:
    # RFC 6455 section 5.2: server frames are unmasked; lengths are big-endian.
    cdef int i
    p[0] = FIN_TEXT
    if payload_length < 126:
        p[1] = <unsigned char>payload_length
    elif payload_length < 65536:
        p[1] = 126
        p[2] = <unsigned char>(payload_length >> 8)
        p[3] = <unsigned char>payload_length
    else:
        p[1] = 127
        for i in range(8):
            p[2 + i] = <unsigned char>(payload_length >> (56 - 8 * i))


def text_frame(const unsigned char[::1] payload not None) -> bytes:
    """An unmasked FIN=1 text frame carrying `payload`."""
    cdef Py_ssize_t length = payload.shape[0]
    cdef Py_ssize_t header = header_length(length)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, header + length)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(frame)
    write_header(p, length)
    if length:
        memcpy(p + header, &payload[0], length)
    return frame


def msg_frame(const unsigned char[::1] channel not None, uint64_t off,
              const unsigned char[::1] data not None, bytes from_json not None = b"") -> bytes:
    """The text frame of `{"op":"msg","ch":<channel>,"off":<off>,"data":<data>}`, in one allocation;
    with `from_json` (the publishing user's id as a JSON string), `,"from":<from_json>` before the
    closing brace."""
    cdef char off_digits[24]
    cdef Py_ssize_t off_len = snprintf(off_digits, sizeof(off_digits), "%llu", <unsigned long long>off)
    cdef Py_ssize_t channel_len = channel.shape[0]
    cdef Py_ssize_t data_len = data.shape[0]
    cdef Py_ssize_t from_len = len(from_json)
    cdef Py_ssize_t length = (MSG_PREFIX_LEN + channel_len + MSG_OFF_LEN + off_len + MSG_DATA_LEN
                              + data_len + 1)
    if from_len:
        length += MSG_FROM_LEN + from_len
    cdef Py_ssize_t header = header_length(length)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, header + length)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(frame)
    write_header(p, length)
    p += header
    memcpy(p, MSG_PREFIX, MSG_PREFIX_LEN)
    p += MSG_PREFIX_LEN
    if channel_len:
        memcpy(p, &channel[0], channel_len)
        p += channel_len
    memcpy(p, MSG_OFF, MSG_OFF_LEN)
    p += MSG_OFF_LEN
    memcpy(p, off_digits, off_len)
    p += off_len
    memcpy(p, MSG_DATA, MSG_DATA_LEN)
    p += MSG_DATA_LEN
    if data_len:
        memcpy(p, &data[0], data_len)
        p += data_len
    if from_len:
        memcpy(p, MSG_FROM, MSG_FROM_LEN)
        p += MSG_FROM_LEN
        memcpy(p, PyBytes_AS_STRING(from_json), from_len)
        p += from_len
    p[0] = b'}'
    return frame


def write_frame_to_all(bytes frame not None, transports, Py_ssize_t high_water) -> list:
    """Write `frame` to each transport; return those whose write buffer now exceeds `high_water`."""
    cdef list slow = []
    for transport in transports:
        transport.write(frame)
        if transport.get_write_buffer_size() > high_water:
            slow.append(transport)
    return slow
