"""Auth settings and the key that verifies connection tokens, with the algorithm the key pins.

`AuthSettings` is the value the configuration hands over (`--auth-secret`, `--auth-secret-file`,
`--auth-public-key`, `--auth-audience`, `--auth-issuer`, `--public-channels`; TOML `[auth]`); it
checks its own shape when built. `load_token_key(settings)` reads the key files and returns a
`TokenKey`; call it again to re-read them (reload).

The algorithm is never taken from a token: it follows from the key. A secret verifies HS256 only;
an RSA public key (2048 bits or more) RS256 only; an EC public key ES256 on P-256, ES384 on P-384,
ES512 on P-521; other key types and curves are refused when the key is loaded. So `alg: none`
and HS/RS confusion (an HS256 token "signed" with the public key's PEM as the secret) cannot pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wsd.server.auth.permissions import pattern_error

# cryptography and PyJWT (~10 MiB of RSS per process) are imported only when a key is loaded:
# every worker imports this module, and most servers run without auth.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

# RFC 7518 §3.2: an HS256 key MUST be at least as long as the hash output (256 bits).
MIN_SECRET_BYTES = 32
# NIST SP 800-131A: RSA below 2048 bits is no longer acceptable for signatures.
MIN_RSA_BITS = 2048
# A key file is a few KiB at most (a certificate chain a few more); refuse to slurp a wrong huge file.
MAX_KEY_FILE_BYTES = 1 << 20

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

SECRET_FLAGS = "--auth-secret / [auth] secret"
SECRET_FILE_FLAGS = "--auth-secret-file / [auth] secret_file"
PUBLIC_KEY_FLAGS = "--auth-public-key / [auth] public_key_file"


class AuthSettingsError(ValueError):
    """An auth setting or key file is unusable: the message names the setting, the problem and the fix."""


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """The auth part of the configuration. Auth is on when one key source is set, off when none is."""

    secret: str | None = None
    secret_file: str | None = None
    public_key_file: str | None = None
    audience: str | None = None
    issuer: str | None = None
    public_channels: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        sources = [
            name
            for name, value in (
                (SECRET_FLAGS, self.secret),
                (SECRET_FILE_FLAGS, self.secret_file),
                (PUBLIC_KEY_FLAGS, self.public_key_file),
            )
            if value is not None
        ]
        if len(sources) > 1:
            raise AuthSettingsError(f"give one token key, not {len(sources)}: {' and '.join(sources)}")
        for name, value in (
            ("--auth-secret", self.secret),
            ("--auth-secret-file", self.secret_file),
            ("--auth-public-key", self.public_key_file),
            ("--auth-audience", self.audience),
            ("--auth-issuer", self.issuer),
        ):
            if value is not None and (not isinstance(value, str) or value == ""):
                raise AuthSettingsError(f"{name} must be a non-empty string, got {value!r}")
        channels = () if self.public_channels is None else self.public_channels
        if not isinstance(channels, (list, tuple)) or not all(isinstance(p, str) for p in channels):
            raise AuthSettingsError(
                f"--public-channels must be a list of channel patterns (TOML: public_channels = [\"news\", "
                f"\"room:*\"]), got {self.public_channels!r}"
            )
        object.__setattr__(self, "public_channels", tuple(channels))
        for pattern in self.public_channels:
            problem = pattern_error(pattern)
            if problem is not None:
                raise AuthSettingsError(f"--public-channels: {problem}")
        if not sources:
            given = [
                name
                for name, value in (
                    ("--auth-audience", self.audience),
                    ("--auth-issuer", self.issuer),
                    ("--public-channels", self.public_channels or None),
                )
                if value is not None
            ]
            if given:
                raise AuthSettingsError(
                    f"{', '.join(given)} only mean something with auth on: also give --auth-secret-file, "
                    "--auth-secret or --auth-public-key"
                )

    @property
    def enabled(self) -> bool:
        return self.secret is not None or self.secret_file is not None or self.public_key_file is not None


@dataclass(frozen=True, slots=True)
class TokenKey:
    """A loaded verification key and the one algorithm it accepts."""

    algorithm: str  # "HS256", "RS256", "ES256", "ES384" or "ES512"
    key: bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey = field(repr=False)  # never log a secret
    source: str  # for logs: where the key came from, never the key itself

    @property
    def symmetric(self) -> bool:
        return self.algorithm == "HS256"


def load_token_key(settings: AuthSettings) -> TokenKey | None:
    """Read the key the settings name (None when auth is off). Raises AuthSettingsError."""
    if settings.secret is not None:
        return _secret_key(settings.secret.encode(), f"{SECRET_FLAGS} ({len(settings.secret)} characters)")
    if settings.secret_file is not None:
        raw = _read_key_file(settings.secret_file, SECRET_FILE_FLAGS)
        # Files written by `echo`, editors and secret stores end in a newline; it is not part of the secret.
        secret = raw.rstrip(b"\r\n")
        return _secret_key(secret, f"{SECRET_FILE_FLAGS} {settings.secret_file}")
    if settings.public_key_file is not None:
        raw = _read_key_file(settings.public_key_file, PUBLIC_KEY_FLAGS)
        return _public_key(raw, settings.public_key_file)
    return None


def _read_key_file(path: str, flags: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise AuthSettingsError(f"{flags}: {path} does not exist") from None
    except IsADirectoryError:
        raise AuthSettingsError(f"{flags}: {path} is a directory, not a key file") from None
    except PermissionError:
        raise AuthSettingsError(
            f"{flags}: cannot read {path}: permission denied (wsd runs as uid {os.getuid()})"
        ) from None
    except OSError as exc:
        raise AuthSettingsError(f"{flags}: cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise AuthSettingsError(f"{flags}: {path} is over {MAX_KEY_FILE_BYTES} bytes: not a key file")
    return raw


def _secret_key(secret: bytes, source: str) -> TokenKey:
    if not secret:
        raise AuthSettingsError(f"{source}: the secret is empty")
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthSettingsError(
            f"{source}: the HS256 secret is {len(secret)} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            "(RFC 7518 §3.2), e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    from jwt.algorithms import HMACAlgorithm
    from jwt.exceptions import InvalidKeyError

    try:
        # PyJWT's own check: refuses PEM, SSH and JWK-looking secrets (a public key is not a secret).
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except InvalidKeyError:
        raise AuthSettingsError(
            f"{source}: this looks like a public key or certificate, not a secret; give it with --auth-public-key"
        ) from None
    return TokenKey("HS256", secret, source)


def _public_key(raw: bytes, path: str) -> TokenKey:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    flags = f"{PUBLIC_KEY_FLAGS} {path}"
    if b"PRIVATE KEY-----" in raw:
        raise AuthSettingsError(
            f"{flags}: the file holds a private key; give the public key (or certificate) here, and keep the "
            "private key only where tokens are issued (`openssl pkey -in KEY -pubout` prints the public key)"
        )
    if b"-----BEGIN CERTIFICATE-----" in raw:
        try:
            # The first certificate of a chain is the leaf, the one whose key signs.
            public_key = x509.load_pem_x509_certificate(raw).public_key()
        except UnsupportedAlgorithm as exc:
            raise AuthSettingsError(f"{flags}: the certificate's key type is not supported ({exc})") from None
        except ValueError as exc:
            raise AuthSettingsError(f"{flags}: not a readable PEM certificate ({exc})") from None
        kind = "certificate"
    elif b"-----BEGIN" in raw:
        try:
            public_key = serialization.load_pem_public_key(raw)
        except UnsupportedAlgorithm as exc:
            raise AuthSettingsError(f"{flags}: unsupported public key type ({exc})") from None
        except (ValueError, TypeError) as exc:
            raise AuthSettingsError(f"{flags}: not a readable PEM public key ({exc})") from None
        kind = "public key"
    else:
        raise AuthSettingsError(
            f"{flags}: not PEM (expected -----BEGIN PUBLIC KEY----- or -----BEGIN CERTIFICATE-----)"
        )
    source = f"{PUBLIC_KEY_FLAGS} {path} ({kind})"
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise AuthSettingsError(f"{flags}: RSA key of {public_key.key_size} bits; use {MIN_RSA_BITS} or more")
        return TokenKey("RS256", public_key, f"{source}, RSA {public_key.key_size} bits")
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(public_key.curve.name)
        if algorithm is None:
            raise AuthSettingsError(
                f"{flags}: EC curve {public_key.curve.name} is not supported; use P-256 (ES256), "
                "P-384 (ES384) or P-521 (ES512)"
            )
        return TokenKey(algorithm, public_key, f"{source}, EC {public_key.curve.name}")
    raise AuthSettingsError(
        f"{flags}: a {type(public_key).__name__.lstrip('_')} key is not supported; use an RSA (RS256) or "
        "EC P-256 (ES256) key"
    )
