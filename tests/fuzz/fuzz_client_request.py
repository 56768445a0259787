"""Fuzz harness of the `/ws` client protocol: any bytes a client sends as a text message.

Contract of wsd.server.protocol.parse_request (see its docstring and docs/protocol.md):
- it never raises: every input is a request or an `err` reply with one of the documented codes;
- an `err` reply encodes to a JSON object no larger than the input plus a fixed bound (a client cannot
  make the server write much more than it sent), and echoes the request's id when it had a usable one;
- a `pub`'s data is what the client sent, re-serialized: the same value with the same types (checked
  against the standard library's parser, which keeps every integer exact), nested at most 64 levels,
  at most `max_data_size` bytes, and refused (never changed) otherwise;
- a `sub`'s channel and `since` are the valid values the client sent.

    python -m tests.fuzz.fuzz_client_request [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import json
import sys

import atheris
import orjson

with atheris.instrument_imports(include=["wsd"]):
    from wsd.server import json_limits, protocol
    from wsd.server.channel_names import channel_name_error

MAX_DATA_SIZE = 256
# What an `err` reply adds to what the client sent: the fixed text of the longest message, the code, the
# JSON around them, a 40-character excerpt and orjson's position text.
REPLY_OVERHEAD = 600
PARSE_ERROR_CODES = {
    protocol.BAD_JSON,
    protocol.BAD_REQUEST,
    protocol.UNKNOWN_OP,
    protocol.BAD_CHANNEL,
    protocol.BAD_SINCE,
}


def same_json(a: object, b: object) -> bool:
    """Equal JSON values of equal types (1 is not 1.0, True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[key], b[key]) for key in a)  # type: ignore[union-attr]
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b


def stdlib_value(text: bytes) -> object | None:
    """The message as the standard library parses it (integers exact), or None where it cannot say."""
    try:
        return json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError):
        return None  # 4300+ digit integers, nesting past the interpreter's recursion limit


def check_reply(reply: protocol.ErrorReply, text: bytes, parsed: object) -> None:
    assert reply.code in PARSE_ERROR_CODES, reply
    assert isinstance(reply.msg, str) and reply.msg, reply
    encoded = reply.encode()
    decoded = orjson.loads(encoded)
    assert decoded["op"] == "err" and decoded["code"] == reply.code, decoded
    assert len(encoded) <= len(text) + REPLY_OVERHEAD, (len(encoded), len(text), encoded[:200])
    if isinstance(parsed, dict) and reply.code != protocol.BAD_JSON:
        sent_id = parsed.get("id")
        if isinstance(sent_id, (int, float, str)) and not isinstance(sent_id, bool):
            assert same_json(reply.id, sent_id), (reply.id, sent_id)


def check_one_input(text: bytes) -> None:
    unlimited = protocol.parse_request(text, None)
    limited = protocol.parse_request(text, MAX_DATA_SIZE)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
        assert isinstance(unlimited, protocol.ErrorReply), (text[:200], unlimited)

    for outcome in (unlimited, limited):
        if isinstance(outcome, protocol.ErrorReply):
            check_reply(outcome, text, parsed)
            continue
        assert isinstance(parsed, dict), outcome
        assert same_json(outcome.id, protocol._usable_id(parsed.get("id"))), (outcome.id, parsed.get("id"))
        if isinstance(outcome, protocol.Ping):
            assert parsed["op"] == "ping"
            continue
        assert channel_name_error(outcome.channel) is None and outcome.channel == parsed["ch"], outcome
        if isinstance(outcome, protocol.Subscribe):
            assert parsed["op"] == "sub"
            if outcome.since is None:
                assert parsed.get("since") is None
            else:
                since = parsed["since"]
                assert outcome.since == (since["off"], since["epoch"]) and min(outcome.since) >= 0, outcome
        elif isinstance(outcome, protocol.Unsubscribe):
            assert parsed["op"] == "unsub"
        else:
            assert isinstance(outcome, protocol.Publish) and parsed["op"] == "pub", outcome
            data_json = outcome.data_json
            assert json_limits.nesting_depth(data_json) <= json_limits.MAX_DEPTH, data_json[:200]
            assert data_json == orjson.dumps(parsed["data"]), data_json[:200]
            exact = stdlib_value(text)
            if isinstance(exact, dict) and "data" in exact:
                # Duplicate keys: both parsers keep the last one.
                assert same_json(orjson.loads(data_json), exact["data"]), (data_json[:200], text[:200])

    # The limit only refuses what is too large, with bad_request; everything else is decided alike.
    if isinstance(unlimited, protocol.Publish) and len(unlimited.data_json) > MAX_DATA_SIZE:
        assert isinstance(limited, protocol.ErrorReply) and limited.code == protocol.BAD_REQUEST, limited
        assert "more than the limit" in limited.msg, limited
    else:
        assert limited == unlimited, (limited, unlimited)


def main() -> None:
    atheris.Setup(sys.argv, check_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
