"""Fuzz harness of permessage-deflate: the handshake's Sec-WebSocket-Extensions headers a client may
send, and the compressed frames it may send once negotiated.

The first byte chooses. Even: the rest is header text (lines are separate headers), given to
wsd.server.permessage_deflate.negotiate both ways (/ws and echo); the contract: an agreement or
None, never an exception; an agreement's response header parses again as one permessage-deflate
with server_no_context_takeover, only the four RFC 7692 parameters, window sizes 8-15 answered no
larger than offered, and the windows wsd works with in zlib's range. Odd: a size limit, then
frames (FIN, opcode, RSV1, payload) to a MessageAssembler that negotiated deflate; each decision is
checked against zlib itself: a message is exactly what zlib inflates (and at most the limit, valid
UTF-8 if text), a 1009 is a message whose inflated bytes pass the limit, a 1007 one zlib refuses
(or text that is not UTF-8).

    python -m tests.fuzz.fuzz_permessage_deflate [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import sys
import zlib

import atheris
import multidict  # noqa: F401  (imported first so that only wsd's own code is instrumented)
import picows  # noqa: F401

with atheris.instrument_imports(include=["wsd"]):
    from wsd.server import permessage_deflate as pmd
    from wsd.server.worker import ws_conformance as ws

PARAMETERS = {
    "server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits", "client_max_window_bits",
}  # fmt: skip


def offered_bits(header_values: tuple[str, ...], key: str) -> list[int]:
    """Every value of `key` in permessage-deflate offers that parse (for the "no larger" check)."""
    values = []
    for value in header_values:
        try:
            extensions = pmd.parse_extensions(value)
        except pmd.ExtensionHeaderError:
            continue
        for name, parameters in extensions:
            if name == pmd.EXTENSION:
                values += [int(v) for k, v in parameters if k == key and v is not None and v.isdigit()]
    return values


def check_negotiation(text: str) -> None:
    header_values = tuple(text.split("\n"))
    for resets in (True, False):
        agreement = pmd.negotiate(header_values, resets)
        if agreement is None:
            continue
        ((name, parameters),) = pmd.parse_extensions(agreement.response)
        assert name == pmd.EXTENSION
        answered = dict(parameters)
        assert len(answered) == len(parameters) and set(answered) <= PARAMETERS, agreement.response
        assert "server_no_context_takeover" in answered
        assert ("client_no_context_takeover" in answered) == resets == agreement.client_no_context_takeover
        for key in ("server_max_window_bits", "client_max_window_bits"):
            if key in answered:
                bits = int(answered[key])
                assert 8 <= bits <= 15 and bits in offered_bits(header_values, key), (key, agreement.response)
        assert 9 <= agreement.server_window_bits <= 15 and 8 <= agreement.client_window_bits <= 15


def utf8_is_valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def reference_inflate(data: bytes) -> bytes | None:
    try:
        return zlib.decompressobj(-15).decompress(data + pmd.TAIL)
    except zlib.error:
        return None


def check_inflation(data: bytes) -> None:
    limit = int.from_bytes(data[:2], "big") % 4096 + 1
    agreement = pmd.negotiate(("permessage-deflate",), True)
    assembler = ws.MessageAssembler(limit, agreement)
    at, message, is_text, compressed, closed = 2, bytearray(), False, False, False
    while at + 2 <= len(data) and not closed:
        header, length = data[at], data[at + 1] * 4
        payload = data[at + 2 : at + 2 + length]
        at += 2 + length
        fin, rsv1 = bool(header & 0x80), bool(header & 0x40)
        opcode = (0x0, 0x1, 0x2)[header % 3]
        starts = opcode != 0x0
        if starts:
            message, is_text, compressed = bytearray(), opcode == 0x1, rsv1
        message += payload
        decision = assembler.feed(opcode, fin, payload, rsv1)
        if isinstance(decision, ws.Fail):
            closed = True
            inflated = reference_inflate(bytes(message)) if compressed else bytes(message)
            if decision.code == 1009:
                assert compressed or len(message) > limit
                if compressed:  # what zlib inflates from the message so far passes the limit
                    partial = zlib.decompressobj(-15)
                    so_far = bytes(message) + (pmd.TAIL if fin else b"")  # the tail can be data too
                    try:
                        assert len(partial.decompress(so_far, limit + 1)) > limit
                    except zlib.error:
                        raise AssertionError("1009 for data zlib refuses before the limit") from None
            elif decision.code == 1007:
                refused = compressed and inflated is None
                assert refused or (is_text and not utf8_is_valid(inflated or b"")) or not fin, decision
            else:
                assert decision.code == 1002, decision
            assert len(decision.reason.encode()) <= ws.MAX_CONTROL_PAYLOAD - 2, decision.reason
        elif isinstance(decision, ws.Message):
            expected = reference_inflate(bytes(message)) if compressed else bytes(message)
            assert decision.payload == expected and len(expected) <= limit, (decision, expected)
            assert decision.is_text == is_text and (not is_text or utf8_is_valid(expected))
            message = bytearray()
        else:
            assert decision is None and not fin


def check_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == 0:
        check_negotiation(data[1:].decode("utf-8", "replace"))
    else:
        check_inflation(data[1:])


def main() -> None:
    atheris.Setup(sys.argv, check_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
