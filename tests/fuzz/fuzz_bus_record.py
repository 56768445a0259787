"""Fuzz harness of the bus record codec: any payload a ring entry can hold, decoded by wsd.ext.record
(Cython) and by its pure-Python twin wsd.ext.record_ref.

Contract (ext/record.pyx, docs/bus.md "Memory layouts"): decoding a payload that is not a well-formed
record raises ValueError and nothing else, never reads outside the payload, and the two
implementations agree on every input (the same fields, or the same error); a decoded record encodes
back to the same bytes. Encoding refuses out-of-range fields with ValueError or OverflowError, alike
in both.

The Cython decoder gets the payload as a view of memory that ends (or starts) at a page that cannot
be read (PROT_NONE): a read past either end is a SIGSEGV, which libFuzzer reports as a crash. The rest
of the readable page is filled with a pattern, so a read that stays inside it gives fields the twin
does not.

The first input byte chooses the operation (its low 3 bits) and where the payload sits (bit 3); the
rest is the payload.

    python -m tests.fuzz.fuzz_bus_record [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import sys

import atheris

with atheris.instrument_imports(include=["wsd"]):
    from wsd.ext import record, record_ref

PAGE = mmap.PAGESIZE
PROT_NONE = 0  # <sys/mman.h>; the mmap module has PROT_READ and PROT_WRITE only
FILL = 0xA5
OPERATIONS = ("decode_msg", "decode_pubreq", "peek_msg_chan_hash", "peek_pubreq_target", "peek_ts_ns",
              "fixed_msg", "fixed_pubreq", "encode")  # fmt: skip
MSG_FIELDS = ("epoch", "origin_slot", "off", "prev_pos", "ts_ns", "token", "chan_hash", "channel", "data", "sender")
PUBREQ_FIELDS = ("target_slot", "origin_slot", "token", "ts_ns", "chan_hash", "channel", "data", "sender")


class GuardedPage:
    """One readable page between two that are not: payloads are copied to either end of it."""

    def __init__(self) -> None:
        self.region = mmap.mmap(-1, 3 * PAGE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self.region))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        for guard in (address, address + 2 * PAGE):
            if libc.mprotect(guard, PAGE, PROT_NONE) != 0:
                raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
        self.view = memoryview(self.region)

    def place(self, payload: bytes, at_end: bool) -> memoryview:
        assert len(payload) <= PAGE
        start = 2 * PAGE - len(payload) if at_end else PAGE
        self.region[PAGE : 2 * PAGE] = bytes((FILL,)) * PAGE
        self.region[start : start + len(payload)] = payload
        return self.view[start : start + len(payload)]


GUARDED = GuardedPage()


def outcome(call, *args) -> tuple:
    """('ok', value) or ('error', type name, message): what a call did, comparable across the twins."""
    try:
        return ("ok", call(*args))
    except (ValueError, OverflowError) as error:
        return ("error", type(error).__name__, str(error))


def fields(value: object, names: tuple[str, ...]) -> tuple:
    return tuple(getattr(value, name) for name in names)


def check_decoded(kind: str, payload: bytes, view: memoryview) -> None:
    names = MSG_FIELDS if kind == "msg" else PUBREQ_FIELDS
    fast = outcome(getattr(record, f"decode_{kind}"), view)
    reference = outcome(getattr(record_ref, f"decode_{kind}"), payload)
    if fast[0] == "error" or reference[0] == "error":
        assert fast == reference, (kind, payload[:80], fast, reference)
        assert fast[1] == "ValueError", fast  # decoding refuses with ValueError only
        return
    assert fields(fast[1], names) == fields(reference[1], names), (payload[:80], fast, reference)
    encoded = getattr(record, f"encode_{kind}")(*fields(fast[1], names))
    assert encoded == payload, (payload[:80], encoded[:80])
    assert getattr(record_ref, f"encode_{kind}")(*fields(reference[1], names)) == payload


def fixed_up(payload: bytes, header_size: int, data_len_at: int, channel_len_at: int) -> bytes:
    """`payload` made into a record whose lengths agree (so decoding gets past the length checks):
    header padded, channel and sender lengths cut to what follows the header, the data length set to
    the rest."""
    payload = payload.ljust(header_size + 1, b"\0")
    header = bytearray(payload[:header_size])
    body = payload[header_size:]
    channel_len = min(header[channel_len_at] or 1, len(body))
    sender_len = min(header[channel_len_at + 1], len(body) - channel_len)
    header[channel_len_at], header[channel_len_at + 1] = channel_len, sender_len
    header[data_len_at : data_len_at + 4] = (len(body) - channel_len - sender_len).to_bytes(4, "little")
    return bytes(header) + body


def check_encode(payload: bytes) -> None:
    """Encode fields taken from the payload (any u64 values; channel, sender and data of any length) with
    both."""
    raw = payload.ljust(44, b"\0")
    epoch, origin, target = struct.unpack_from("<IHH", raw)
    off, prev_pos, ts_ns, token, chan_hash = struct.unpack_from("<QQQQQ", raw, 4)
    rest = payload[44:]
    channel_len, sender_len = (rest[0], rest[1]) if len(rest) >= 2 else (0, 0)
    channel = rest[2 : 2 + channel_len]
    sender = rest[2 + channel_len : 2 + channel_len + sender_len]
    data = rest[2 + channel_len + sender_len :]
    if raw[0] & 1:  # now and then a field out of range for its width
        epoch, origin, target = epoch << 20, origin << 12, target - 0x10000
    msg_args = (epoch, origin, off, prev_pos, ts_ns, token, chan_hash, channel, data, sender)
    pubreq_args = (target, origin, token, ts_ns, chan_hash, channel, data, sender)
    for name, args in (("encode_msg", msg_args), ("encode_pubreq", pubreq_args)):
        fast, reference = outcome(getattr(record, name), *args), outcome(getattr(record_ref, name), *args)
        if fast[0] == "ok" and reference[0] == "ok":
            assert fast == reference, (name, args, fast, reference)
        else:
            # Both refuse, in their own words (Cython converts the arguments before it checks the
            # channel, so with two faults each may name a different one).
            assert fast[0] == reference[0] == "error", (name, args, fast, reference)


def check_one_input(data: bytes) -> None:
    if not data:
        return
    operation, at_end, payload = OPERATIONS[data[0] & 7], bool(data[0] & 8), data[1 : 1 + PAGE]
    if operation == "fixed_msg":
        operation, payload = "decode_msg", fixed_up(payload, record.MSG_HEADER_SIZE, 44, 50)[:PAGE]
    elif operation == "fixed_pubreq":
        operation, payload = "decode_pubreq", fixed_up(payload, record.PUBREQ_HEADER_SIZE, 24, 32)[:PAGE]
    if operation == "encode":
        check_encode(payload)
        return
    view = GUARDED.place(payload, at_end)
    if operation in ("decode_msg", "decode_pubreq"):
        check_decoded(operation.removeprefix("decode_"), payload, view)
        return
    if operation == "peek_ts_ns":
        tag = payload[0] % 4 if payload else 0
        fast, reference = outcome(record.peek_ts_ns, tag, view), outcome(record_ref.peek_ts_ns, tag, payload)
    else:
        fast, reference = outcome(getattr(record, operation), view), outcome(getattr(record_ref, operation), payload)
    assert fast == reference, (operation, payload[:80], fast, reference)
    assert fast[0] == "ok" or fast[1] == "ValueError", fast


def main() -> None:
    atheris.Setup(sys.argv, check_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
