"""What a refusal looks like on the wire: an `err` reply (`Refusal`) or a close reason that fits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# RFC 6455 §5.5: a close frame's payload is at most 125 bytes, 2 of them the code.
MAX_CLOSE_REASON_BYTES = 123


@dataclass(frozen=True, slots=True)
class Refusal:
    """An `err` reply to send (`unauthorized`, `forbidden`, `rate_limited`); the connection stays open."""

    code: str
    msg: str

    def encode(self, request_id: Any) -> bytes:
        return orjson.dumps({"op": "err", "id": request_id, "code": self.code, "msg": self.msg})


def close_reason(text: str) -> str:
    """`text` cut to what fits in a close frame (whole UTF-8 characters)."""
    encoded = text.encode()
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return text
    return encoded[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."
