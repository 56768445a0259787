"""The publish API's key (`--api-key KEY` / `--api-key-file FILE`) and the check of each request.

With a key set, every `/api/*` request needs `Authorization: Bearer KEY`; anything else is answered
401 with a JSON error (the API's usual `{"error": ...}`). The comparison takes constant time, so
response timing says nothing about how much of a guess was right.
"""

from __future__ import annotations

import os

MIN_API_KEY_LENGTH = 16
MAX_KEY_FILE_BYTES = 1 << 16


class ApiKeySettingsError(ValueError):
    """The API key setting is unusable; the message says why."""


def load_api_key(key: str | None = None, key_file: str | None = None) -> bytes | None:
    """The key as bytes (None: no key, the API is open). A key file's trailing newline is stripped."""
    if key is not None and key_file is not None:
        raise ApiKeySettingsError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            with open(key_file, "rb") as f:
                raw = f.read(MAX_KEY_FILE_BYTES + 1)
        except FileNotFoundError:
            raise ApiKeySettingsError(f"--api-key-file: {key_file} does not exist") from None
        except PermissionError:
            raise ApiKeySettingsError(
                f"--api-key-file: cannot read {key_file}: permission denied (wsd runs as uid {os.getuid()})"
            ) from None
        except OSError as exc:
            raise ApiKeySettingsError(f"--api-key-file: cannot read {key_file}: {exc.strerror or exc}") from None
        if len(raw) > MAX_KEY_FILE_BYTES:
            raise ApiKeySettingsError(f"--api-key-file: {key_file} is over {MAX_KEY_FILE_BYTES} bytes: not a key")
        value = raw.rstrip(b"\r\n")
        where = f"--api-key-file {key_file}"
    elif key is not None:
        value = key.encode()
        where = "--api-key"
    else:
        return None
    if len(value) < MIN_API_KEY_LENGTH:
        raise ApiKeySettingsError(
            f"{where}: the key is {len(value)} bytes; use at least {MIN_API_KEY_LENGTH} random characters, "
            "e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if any(b <= 0x20 or b == 0x7F for b in value):
        raise ApiKeySettingsError(
            f"{where}: the key must not contain spaces or control characters (it goes in a header)"
        )
    return value


def bearer_matches(authorization: bytes | str | None, key: bytes) -> bool:
    """Whether an `Authorization` header value is `Bearer KEY` (the scheme is case-insensitive)."""
    if authorization is None:
        return False
    if isinstance(authorization, str):
        try:
            authorization = authorization.encode("latin-1")
        except UnicodeEncodeError:
            return False
    scheme, _, credentials = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    from hmac import compare_digest  # here: importing hmac loads OpenSSL, which the supervisor never needs

    return compare_digest(credentials.strip(), key)


UNAUTHORIZED_BODY = b'{"error":"unauthorized: this API needs the header Authorization: Bearer <api key>"}'
