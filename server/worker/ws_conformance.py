"""RFC 6455 conformance layer: turns picows frames into validated WebSocket messages.

picows parses frames but leaves message-level rules to the application. This module is the one
place wsd enforces them. `MessageAssembler` is a sans-I/O core (frame fields in, one decision out)
so every rule is unit-tested with plain calls; `ConformingListener` wires it to a picows transport
and is the base class of every wsd endpoint; `EchoListener` echoes messages for Autobahn|Testsuite.
"""

from __future__ import annotations

import asyncio
import codecs
import zlib
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from picows.picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from wsd.ext.connmem import trim_transport
from wsd.server.permessage_deflate import TAIL, Deflate, compress

# Opcodes (RFC 6455 section 5.2). Plain ints: picows' WSMsgType is an IntEnum and compares equal.
OPCODE_CONTINUATION = 0x0
OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

# Close codes this layer sends (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009

MAX_CONTROL_PAYLOAD = 125
# A closing connection whose peer does not take our CLOSE frame (it stopped reading) is aborted
# after this long, so it cannot hold its buffers and its slot forever.
CLOSE_TIMEOUT_S = 5.0
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

_UTF8_DECODER = codecs.getincrementaldecoder("utf-8")

# Shared by every open connection in place of its upgrade request's and response's headers.
_NO_HEADERS = CIMultiDictProxy(CIMultiDict())

# One finished future (of the running loop) in place of each server transport's `disconnected_future`.
_finished: asyncio.Future | None = None


def _finished_future() -> asyncio.Future:
    global _finished
    loop = asyncio.get_running_loop()
    if _finished is None or _finished.get_loop() is not loop:
        _finished = loop.create_future()
        _finished.set_result(None)
    return _finished

# Accept queue of the WebSocket listener. asyncio's create_server calls listen() again on the
# inherited socket with its default of 100, which overflows during a ramp of thousands of
# connections per second: dropped SYNs come back only after a 1 s retransmit.
LISTEN_BACKLOG = 4096


def is_valid_close_code(code: int) -> bool:
    """Whether a peer may put `code` in a CLOSE frame.

    1000-1003 and 1007-1011 are defined by RFC 6455; 1012-1014 were registered with IANA since.
    1004 is reserved, 1005/1006/1015 must never appear on the wire, the rest of 1000-2999 is
    reserved for future revisions, 3000-4999 belong to libraries and applications, and anything
    outside 1000-4999 is invalid.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# --- Decisions the assembler hands back. One per frame, or None when there is nothing to do. ---


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message. Text payloads are already validated UTF-8 (kept as bytes)."""

    is_text: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer pinged: answer with a PONG carrying the same payload."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerClose:
    """The peer sent a valid CLOSE: answer with `reply_code`, then disconnect.

    `code` is None when the CLOSE frame had no payload; the reply is then 1000, since picows
    cannot send an empty CLOSE frame and 1000 is what such a frame means.
    """

    code: int | None
    reason: str
    reply_code: int


@dataclass(frozen=True, slots=True)
class Fail:
    """The peer broke the protocol: send CLOSE with `code` and disconnect (fail the connection)."""

    code: int
    reason: str


Decision = Message | Ping | PeerClose | Fail | None


class _PartialMessage:
    """A fragmented message in progress. Exists only between its first and last frame.

    For a compressed message (RSV1 on its first frame), `inflater` inflates each fragment as it
    arrives and `buffer` holds what it inflated so far."""

    __slots__ = ("is_text", "buffer", "utf8", "inflater")

    def __init__(self, is_text: bool, first_fragment: bytes, inflater: Any = None) -> None:
        self.is_text = is_text
        self.buffer = bytearray(first_fragment)
        self.inflater = inflater
        # Incremental decoder so invalid UTF-8 fails on the fragment that breaks it, not at the end.
        self.utf8: codecs.IncrementalDecoder | None = _UTF8_DECODER() if is_text else None


def _utf8_prefix_is_valid(decoder: codecs.IncrementalDecoder, chunk: bytes) -> bool:
    """Feed `chunk` to `decoder`; False once the bytes so far cannot start any valid UTF-8 text."""
    try:
        decoder.decode(chunk, False)
    except UnicodeDecodeError:
        return False
    # CPython rejects every impossible prefix at once except ED A0..ED BF, the start of a UTF-16
    # surrogate (U+D800-U+DFFF), which it only rejects when the third byte arrives.
    pending = decoder.getstate()[0]
    return not (len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0)


def _is_valid_utf8(data: bytes) -> bool:
    # isascii() is a fast scan; most push-protocol text (JSON) takes only this path.
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class MessageAssembler:
    """Sans-I/O RFC 6455 message layer for one connection: feed it frames, act on its decisions.

    Enforces: RSV bits clear and opcodes defined (else 1002), except RSV1 on the first frame of a
    data message once permessage-deflate is negotiated (`deflate`; RSV1 anywhere else: 1002);
    control frames at most 125 bytes, unfragmented (1002); continuation frames only inside a
    fragmented message and data frames only outside one (1002); messages at most
    `max_message_size` bytes (1009); text messages valid UTF-8, checked per fragment (1007);
    CLOSE payloads well formed (1002, or 1007 for a non-UTF-8 reason). After the first Fail or
    PeerClose it ignores further frames, since the connection is closing.

    A compressed message is inflated fragment by fragment, and the limit applies to the inflated
    size: zlib is asked for at most one byte more than the room left, so a zip bomb is a 1009
    having allocated no more than the limit. Data that does not inflate is 1007. The inflater
    lives only while a message does, unless the client keeps its context between messages
    (`Deflate.client_no_context_takeover` false: the echo endpoint).

    State stays tiny for 200k connections per process: the partial message is None until a
    fragmented message actually starts.
    """

    __slots__ = ("max_message_size", "_partial", "_closing", "deflate", "_inflater")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, deflate: Deflate | None = None) -> None:
        self.max_message_size = max_message_size
        self._partial: _PartialMessage | None = None
        self._closing = False
        self.deflate = deflate  # permessage-deflate as negotiated, None: not
        self._inflater: Any = None  # the client's context, kept between messages when it keeps it

    @property
    def in_fragmented_message(self) -> bool:
        return self._partial is not None

    def feed(
        self,
        opcode: int,
        fin: bool,
        payload: bytes,
        rsv1: bool = False,
        rsv2: bool = False,
        rsv3: bool = False,
    ) -> Decision:
        """Take one received frame (payload already unmasked) and return what to do about it."""
        if self._closing:
            return None
        if rsv1 or rsv2 or rsv3:
            refusal = self._reserved_bits(opcode, rsv1, rsv2, rsv3)
            if refusal is not None:
                return refusal
        if opcode >= OPCODE_CLOSE:
            return self._feed_control(opcode, fin, payload)
        if opcode == OPCODE_CONTINUATION:
            return self._feed_continuation(fin, payload)
        if opcode == OPCODE_TEXT or opcode == OPCODE_BINARY:
            if rsv1:
                return self._feed_compressed_first_frame(opcode == OPCODE_TEXT, fin, payload)
            return self._feed_first_frame(opcode == OPCODE_TEXT, fin, payload)
        return self._fail(CLOSE_PROTOCOL_ERROR, f"reserved data opcode {opcode:#x}")

    def _reserved_bits(self, opcode: int, rsv1: bool, rsv2: bool, rsv3: bool) -> Fail | None:
        """The failure for a frame's RSV bits, or None: RSV1 starts a compressed message."""
        if rsv2 or rsv3:
            return self._fail(CLOSE_PROTOCOL_ERROR, "RSV2/RSV3 set but no extension defines them")
        if self.deflate is None:
            return self._fail(CLOSE_PROTOCOL_ERROR, "RSV1 set but permessage-deflate was not negotiated")
        if opcode >= OPCODE_CLOSE:
            return self._fail(CLOSE_PROTOCOL_ERROR, "RSV1 set on a control frame")
        if opcode == OPCODE_CONTINUATION:
            return self._fail(CLOSE_PROTOCOL_ERROR, "RSV1 set on a continuation frame (only the first frame has it)")
        return None

    def _feed_control(self, opcode: int, fin: bool, payload: bytes) -> Decision:
        # Control frames may arrive between the fragments of a message; they never touch _partial.
        if opcode not in (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG):
            return self._fail(CLOSE_PROTOCOL_ERROR, f"reserved control opcode {opcode:#x}")
        if not fin:
            return self._fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
        if len(payload) > MAX_CONTROL_PAYLOAD:
            return self._fail(CLOSE_PROTOCOL_ERROR, f"control frame payload of {len(payload)} bytes > 125")
        if opcode == OPCODE_PING:
            return Ping(payload)
        if opcode == OPCODE_PONG:
            return None  # unsolicited PONGs are allowed and need no answer
        return self._feed_close(payload)

    def _feed_close(self, payload: bytes) -> Decision:
        if not payload:
            self._close_started()
            return PeerClose(None, "", CLOSE_NORMAL)
        if len(payload) == 1:
            return self._fail(CLOSE_PROTOCOL_ERROR, "CLOSE payload of 1 byte cannot hold a close code")
        code = int.from_bytes(payload[:2], "big")
        if not is_valid_close_code(code):
            return self._fail(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            return self._fail(CLOSE_INVALID_PAYLOAD, "CLOSE reason is not valid UTF-8")
        self._close_started()
        return PeerClose(code, reason, code)

    def _feed_first_frame(self, is_text: bool, fin: bool, payload: bytes) -> Decision:
        if self._partial is not None:
            return self._fail(CLOSE_PROTOCOL_ERROR, "new data frame before the fragmented message ended")
        if len(payload) > self.max_message_size:
            return self._too_big(len(payload))
        if fin:
            if is_text and not _is_valid_utf8(payload):
                return self._fail(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
            return Message(is_text, payload)
        partial = _PartialMessage(is_text, payload)
        if partial.utf8 is not None and not _utf8_prefix_is_valid(partial.utf8, payload):
            return self._fail(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
        self._partial = partial
        return None

    def _feed_compressed_first_frame(self, is_text: bool, fin: bool, payload: bytes) -> Decision:
        if self._partial is not None:
            return self._fail(CLOSE_PROTOCOL_ERROR, "new data frame before the fragmented message ended")
        inflater = self._inflater
        if inflater is None:
            inflater = zlib.decompressobj(-self.deflate.client_window_bits)  # type: ignore[union-attr]
        inflated = self._inflate(inflater, payload + TAIL if fin else payload, 0)
        if type(inflated) is Fail:
            return inflated
        if fin:
            self._message_inflated(inflater)
            if is_text and not _is_valid_utf8(inflated):  # type: ignore[arg-type]
                return self._fail(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
            return Message(is_text, inflated)  # type: ignore[arg-type]
        partial = _PartialMessage(is_text, inflated, inflater)  # type: ignore[arg-type]
        if partial.utf8 is not None and not _utf8_prefix_is_valid(partial.utf8, inflated):  # type: ignore[arg-type]
            return self._fail(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
        self._partial = partial
        return None

    def _inflate(self, inflater: Any, data: bytes, size: int) -> bytes | Fail:
        """Inflate one fragment of a message whose `size` inflated bytes came before it (the last
        fragment with the tail RFC 7692 section 7.2.2 puts back)."""
        room = self.max_message_size - size
        try:
            # max_length: never more than one byte past the limit, however much `data` holds.
            inflated = inflater.decompress(data, room + 1)
        except zlib.error as exc:
            return self._fail(CLOSE_INVALID_PAYLOAD, f"compressed message does not inflate: {exc}")
        if len(inflated) > room:
            return self._too_big(self.max_message_size + 1)
        return inflated

    def _message_inflated(self, inflater: Any) -> None:
        """A compressed message ended: keep its inflater for the next one if the client keeps its
        context; one that saw a final block (BFINAL) cannot go on, and the next starts afresh."""
        keep = not self.deflate.client_no_context_takeover and not inflater.eof  # type: ignore[union-attr]
        self._inflater = inflater if keep else None

    def _feed_continuation(self, fin: bool, payload: bytes) -> Decision:
        partial = self._partial
        if partial is None:
            return self._fail(CLOSE_PROTOCOL_ERROR, "continuation frame outside a fragmented message")
        if partial.inflater is not None:
            return self._feed_compressed_continuation(partial, fin, payload)
        size = len(partial.buffer) + len(payload)
        if size > self.max_message_size:
            return self._too_big(size)
        if partial.utf8 is not None and not _utf8_prefix_is_valid(partial.utf8, payload):
            return self._fail(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
        partial.buffer += payload
        if not fin:
            return None
        self._partial = None
        return self._whole(partial)

    def _feed_compressed_continuation(self, partial: _PartialMessage, fin: bool, payload: bytes) -> Decision:
        inflated = self._inflate(partial.inflater, payload + TAIL if fin else payload, len(partial.buffer))
        if type(inflated) is Fail:
            return inflated
        if partial.utf8 is not None and not _utf8_prefix_is_valid(partial.utf8, inflated):  # type: ignore[arg-type]
            return self._fail(CLOSE_INVALID_PAYLOAD, "text message is not valid UTF-8")
        partial.buffer += inflated  # type: ignore[operator]
        if not fin:
            return None
        self._partial = None
        self._message_inflated(partial.inflater)
        return self._whole(partial)

    def _whole(self, partial: _PartialMessage) -> Decision:
        """The last fragment arrived: the message, unless its text ends inside a character."""
        if partial.utf8 is not None:
            try:
                partial.utf8.decode(b"", True)
            except UnicodeDecodeError:
                return self._fail(CLOSE_INVALID_PAYLOAD, "text message ends inside a UTF-8 sequence")
        return Message(partial.is_text, bytes(partial.buffer))

    def _too_big(self, size: int) -> Fail:
        return self._fail(CLOSE_MESSAGE_TOO_BIG, f"message of {size}+ bytes > limit {self.max_message_size}")

    def _fail(self, code: int, reason: str) -> Fail:
        self._close_started()
        return Fail(code, reason)

    def _close_started(self) -> None:
        self._partial = None  # drop a half-received message now rather than with the connection
        self._inflater = None
        self._closing = True


class ConformingListener(WSListener):
    """Base picows listener of every wsd endpoint: delivers complete, validated messages.

    Subclasses override `on_message`; they may override `on_ws_connected` / `on_ws_disconnected`
    but must call super(). No asyncio Task per connection: everything runs in picows callbacks.
    Serve with `picows_server_kwargs()` so pings reach this class instead of picows' auto-pong.
    """

    __slots__ = ("transport", "_assembler", "_heard")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self._assembler = MessageAssembler(max_message_size)
        self._heard = True  # a frame arrived since our last keepalive ping

    @property
    def max_message_size(self) -> int:
        return self._assembler.max_message_size

    @property
    def deflate(self) -> Deflate | None:
        """permessage-deflate as the handshake negotiated it (None: not negotiated)."""
        return self._assembler.deflate

    def use_deflate(self, agreement: Deflate | None) -> None:
        """The handshake negotiated permessage-deflate (wsd.server.permessage_deflate): accept
        compressed messages. Called before the 101 response is sent."""
        self._assembler.deflate = agreement

    def on_message(self, is_text: bool, payload: bytes) -> None:
        """Handle one complete message (text is valid UTF-8, as bytes). Override in subclasses."""

    def on_closing(self) -> None:
        """Called once when this side starts the closing handshake. Override in subclasses (a
        session drops its subscriptions, and its worker aborts it if the peer never takes the
        CLOSE frame: see CLOSE_TIMEOUT_S)."""

    def close(self, code: int, reason: str = "", abort: bool = False, linger: bool = False) -> None:
        """Send a CLOSE frame with `code` (at most once) and disconnect once buffered data is sent,
        or at once with `abort` (a dead peer). `on_closing` runs once, when this side starts.

        With `linger`, the TCP connection stays open until the peer answers with its CLOSE (what
        RFC 6455 section 7.1.1 asks of a server; frames until then are ignored), or until the
        worker aborts it CLOSE_TIMEOUT_S later: a peer that is still sending when we close would
        otherwise get a TCP reset instead of our CLOSE frame, and never see the code."""
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        starting = not transport.is_close_frame_sent
        if starting:
            # WSCloseCode is a flexible IntEnum: it also accepts application codes 3000-4999.
            transport.send_close(WSCloseCode(code), reason.encode("utf-8"))
        if not (linger and starting):
            transport.disconnect()
        if starting:
            self.on_closing()
        if abort:
            transport.underlying_transport.abort()

    # -- keepalive (wsd.server.worker.keepalive) --

    def send_keepalive_ping(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_disconnected and not transport.is_close_frame_sent:
            self._heard = False
            transport.send_ping()

    def keepalive_expired(self) -> bool:
        """Nothing arrived since the last keepalive ping (and the connection is not closing anyway)."""
        transport = self.transport
        return not self._heard and transport is not None and not transport.is_disconnected and (
            not transport.is_close_frame_sent
        )

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        # picows keeps, for the connection's whole life, the upgrade request and response (header
        # multidicts included), a 1 KiB write buffer and a future per connection; nothing reads
        # them after the handshake, and wsd writes its frames itself. ~1.9 KiB per idle connection
        # (bench/connection_memory.py). The response was sent before this call.
        if isinstance(transport, WSTransport) and not transport.is_client_side:
            trim_transport(transport, _finished_future())
            return
        for message in (getattr(transport, "request", None), getattr(transport, "response", None)):
            # A response shared by every connection (wsd.server.worker.routes.SwitchingProtocols)
            # holds no headers of this one, and its own must stay for the next handshake.
            if message is not None and not getattr(message, "shared", False):
                message.headers = _NO_HEADERS

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        pass

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        self._heard = True
        if transport.is_close_frame_sent:
            # We (or picows, on a framing error) already sent CLOSE: data is ignored and the
            # peer's CLOSE completes the handshake.
            if frame.msg_type == OPCODE_CLOSE:
                transport.disconnect()
            return
        decision = self._assembler.feed(
            frame.msg_type, frame.fin, frame.get_payload_as_bytes(), frame.rsv1, frame.rsv2, frame.rsv3
        )
        if decision is None:
            return
        kind = type(decision)
        if kind is Message:
            self.on_message(decision.is_text, decision.payload)
        elif kind is Ping:
            transport.send_pong(decision.payload)
        elif kind is PeerClose:
            self.close(decision.reply_code)
        else:
            self.close(decision.code, decision.reason)


class EchoListener(ConformingListener):
    """Echoes every message back with the same type (the `--echo-path` endpoint, for Autobahn).

    With permessage-deflate, a message of at least `compression_threshold` bytes goes back
    compressed (on its own: the server never takes its context over), unless that is no smaller."""

    __slots__ = ("compression_threshold",)

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, compression_threshold: int = 0) -> None:
        super().__init__(max_message_size)
        self.compression_threshold = compression_threshold

    def on_message(self, is_text: bool, payload: bytes) -> None:
        kind = WSMsgType.TEXT if is_text else WSMsgType.BINARY
        agreement = self._assembler.deflate
        if agreement is not None and len(payload) >= self.compression_threshold:
            compressed = compress(payload, agreement.server_window_bits)
            if len(compressed) < len(payload):
                self.transport.send(kind, compressed, rsv1=True)
                return
        self.transport.send(kind, payload)


def picows_server_kwargs(max_message_size: int) -> dict[str, Any]:
    """Keyword arguments for `picows.ws_create_server` that this layer relies on.

    - enable_auto_pong=False: picows would answer every PING itself, even one with RSV bits set
      that must fail the connection; `ConformingListener` answers valid pings instead.
    - max_frame_size=max_message_size: picows rejects a larger single frame with 1009 while
      parsing its header, before buffering it; the assembler bounds the fragmented total.
    - read_buffer_init_size=1024 (picows rounds up to 2048) and use_aiofastnet=False keep the
      per-connection footprint small; the read buffer grows only for connections that need it.
    - backlog=LISTEN_BACKLOG: create_server re-listens the inherited socket; its default (100)
      would shrink the supervisor's accept queue and stall fast ramps on SYN retransmits.
    """
    return {
        "enable_auto_pong": False,
        "max_frame_size": max_message_size,
        "read_buffer_init_size": 1024,
        "use_aiofastnet": False,
        "backlog": LISTEN_BACKLOG,
    }
