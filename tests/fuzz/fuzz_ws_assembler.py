"""Fuzz harness of the RFC 6455 message layer: any sequence of frames a client can send.

The input is a size limit and then frames (opcode, FIN, RSV bits, payload). Each frame goes to
wsd.server.worker.ws_conformance.MessageAssembler and to a model written here from the assembler's
documented rules, without its incremental decoding: the model keeps whole messages and checks them
with one strict UTF-8 decode. The two must decide alike on every frame, and every decision must keep
the protocol's own rules: a message is at most the limit, a text message is valid UTF-8, a ping's
payload is echoed, a close reason fits in a control frame, nothing follows a Fail or a close.

    python -m tests.fuzz.fuzz_ws_assembler [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import sys

import atheris
import multidict  # noqa: F401  (imported first so that only wsd's own code is instrumented)
import picows  # noqa: F401

with atheris.instrument_imports(include=["wsd"]):
    from wsd.server.worker import ws_conformance as ws

PROTOCOL_ERROR, INVALID_PAYLOAD, TOO_BIG = 1002, 1007, 1009


def utf8_prefix_is_valid(data: bytes) -> bool:
    """Whether `data` can still become valid UTF-8: it decodes, or fails only for lack of bytes."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.reason == "unexpected end of data" and error.end == len(data)
    return True


def utf8_is_valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Model:
    """What MessageAssembler's docstring promises, kept as simple as possible."""

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self.message: bytearray | None = None
        self.is_text = False
        self.closed = False

    def feed(self, opcode: int, fin: bool, payload: bytes, rsv: bool) -> tuple:
        if self.closed:
            return ("none",)
        outcome = self._feed(opcode, fin, payload, rsv)
        if outcome[0] in ("fail", "close"):
            self.closed = True
            self.message = None
        return outcome

    def _feed(self, opcode: int, fin: bool, payload: bytes, rsv: bool) -> tuple:
        if rsv:
            return ("fail", PROTOCOL_ERROR)
        if opcode >= 0x8:
            if opcode not in (0x8, 0x9, 0xA) or not fin or len(payload) > 125:
                return ("fail", PROTOCOL_ERROR)
            if opcode == 0x9:
                return ("ping", payload)
            if opcode == 0xA:
                return ("none",)
            if not payload:
                return ("close", None, 1000)
            if len(payload) == 1:
                return ("fail", PROTOCOL_ERROR)
            code = int.from_bytes(payload[:2], "big")
            if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
                return ("fail", PROTOCOL_ERROR)
            if not utf8_is_valid(payload[2:]):
                return ("fail", INVALID_PAYLOAD)
            return ("close", code, code)
        if opcode in (0x1, 0x2):
            if self.message is not None:
                return ("fail", PROTOCOL_ERROR)
            self.message, self.is_text = bytearray(), opcode == 0x1
        elif opcode == 0x0:
            if self.message is None:
                return ("fail", PROTOCOL_ERROR)
        else:
            return ("fail", PROTOCOL_ERROR)
        self.message += payload
        if len(self.message) > self.max_message_size:
            return ("fail", TOO_BIG)
        if self.is_text and not utf8_prefix_is_valid(bytes(self.message)):
            return ("fail", INVALID_PAYLOAD)
        if not fin:
            return ("none",)
        message, self.message = bytes(self.message), None
        if self.is_text and not utf8_is_valid(message):
            return ("fail", INVALID_PAYLOAD)
        return ("message", self.is_text, message)


def as_tuple(decision: ws.Decision) -> tuple:
    if decision is None:
        return ("none",)
    if isinstance(decision, ws.Message):
        return ("message", decision.is_text, decision.payload)
    if isinstance(decision, ws.Ping):
        return ("ping", decision.payload)
    if isinstance(decision, ws.PeerClose):
        return ("close", decision.code, decision.reply_code)
    assert isinstance(decision, ws.Fail), f"not a decision: {decision!r}"
    return ("fail", decision.code)


def check_decision(decision: ws.Decision, max_message_size: int) -> None:
    if isinstance(decision, ws.Message):
        assert isinstance(decision.payload, bytes) and len(decision.payload) <= max_message_size
        assert not decision.is_text or utf8_is_valid(decision.payload)
    elif isinstance(decision, ws.Ping):
        assert len(decision.payload) <= ws.MAX_CONTROL_PAYLOAD
    elif isinstance(decision, ws.PeerClose):
        assert ws.is_valid_close_code(decision.reply_code)
        assert isinstance(decision.reason, str)
    elif isinstance(decision, ws.Fail):
        # The reason goes into our CLOSE frame, whose payload (2-byte code + reason) is at most 125 bytes.
        assert len(decision.reason.encode("utf-8")) <= ws.MAX_CONTROL_PAYLOAD - 2, decision.reason


def frames(data: bytes) -> tuple[int, list[tuple[int, bool, tuple[bool, bool, bool], bytes]]]:
    """The input's layout: a 2-byte size limit, then frames of a header byte (bits 0-3 the opcode,
    4 FIN, 5-6 RSV1 and RSV2 when both set; bit 7 clear maps the opcode onto the six that mean
    something), a length byte and that many payload bytes."""
    max_message_size = int.from_bytes(data[:2], "big") % 512 + 1
    found = []
    at = 2
    while at + 2 <= len(data):
        header, length = data[at], data[at + 1]
        payload = data[at + 2 : at + 2 + length]
        at += 2 + length
        opcode = header & 0x0F if header & 0x80 else (0x0, 0x1, 0x2, 0x8, 0x9, 0xA)[(header & 0x0F) % 6]
        rsv = bool(header & 0x20) and bool(header & 0x40)
        found.append((opcode, bool(header & 0x10), (rsv, rsv and header & 0x0F == 0x7, False), payload))
    return max_message_size, found


def encode_frames(max_message_size: int, sequence: list[tuple[int, bool, bytes]]) -> bytes:
    """An input of `frames`' layout (for seeds): (opcode index 0-5 or 0x80|opcode, fin, payload)."""
    out = bytearray((max_message_size - 1).to_bytes(2, "big"))
    for opcode, fin, payload in sequence:
        out += bytes((opcode | (0x10 if fin else 0), len(payload))) + payload
    return bytes(out)


def check_one_input(data: bytes) -> None:
    max_message_size, sequence = frames(data)
    assembler = ws.MessageAssembler(max_message_size)
    model = Model(max_message_size)
    for opcode, fin, rsv, payload in sequence:
        decision = assembler.feed(opcode, fin, payload, *rsv)
        check_decision(decision, max_message_size)
        expected = model.feed(opcode, fin, payload, any(rsv))
        assert as_tuple(decision) == expected, (opcode, fin, rsv, payload[:60], decision, expected)
        assert assembler.in_fragmented_message == (model.message is not None)


def main() -> None:
    atheris.Setup(sys.argv, check_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
