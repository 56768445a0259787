"""Server TLS: an `ssl.SSLContext` from a certificate and key file, and one that can swap them live.

`load_server_context(cert_file, key_file)` builds a context with modern defaults (TLS 1.2 or
newer, the ssl module's secure cipher list, no compression, ALPN `http/1.1`, the only protocol
WebSocket and the publish API speak) and turns every failure into a `TLSSettingsError` that names
the file and the problem: missing, unreadable, not PEM, an encrypted key (wsd never prompts for a
passphrase), a key that does not belong to the certificate.

`ReloadableServerContext` is for swapping a renewed certificate without a restart: its `context`
is handed to the listener once; `reload()` re-reads the files into a fresh context and, only if
that succeeded, makes new handshakes use it (the SNI callback switches each connection to the
current context, which OpenSSL allows mid-handshake). A failed reload leaves the old certificate
serving. (A rolling reload starts new worker processes, which load the files anew anyway.)
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

# cryptography (several MiB of RSS per process) is imported only where a certificate is read: every
# worker imports this module, and most serve without TLS.

ALPN_PROTOCOLS = ["http/1.1"]


class TLSSettingsError(ValueError):
    """A certificate or key file is unusable; the message names the flag, the file and the fix."""


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a log line says about a loaded certificate."""

    subject: str
    not_valid_after: datetime.datetime
    expired: bool


def _check_readable(path: str, flag: str) -> None:
    if not isinstance(path, str) or not path:
        raise TLSSettingsError(f"{flag}: a file name is required")
    if not os.path.exists(path):
        raise TLSSettingsError(f"{flag}: {path} does not exist")
    if os.path.isdir(path):
        raise TLSSettingsError(f"{flag}: {path} is a directory, not a PEM file")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except PermissionError:
        raise TLSSettingsError(
            f"{flag}: cannot read {path}: permission denied (wsd runs as uid {os.getuid()})"
        ) from None
    except OSError as exc:
        raise TLSSettingsError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in head:
        raise TLSSettingsError(
            f"{flag}: {path} is not PEM (no -----BEGIN line); convert DER with `openssl x509 -inform der`"
        )


def _no_passphrase() -> bytes:
    # Called by OpenSSL only for an encrypted key; without this it would prompt on the terminal.
    raise TLSSettingsError("encrypted")


def load_server_context(
    cert_file: str, key_file: str, *, cert_flag: str = "--tls-cert", key_flag: str = "--tls-key"
) -> ssl.SSLContext:
    """A server context for `cert_file` (PEM, the leaf first, then intermediates) and `key_file`."""
    import ssl  # here: the supervisor loads OpenSSL only when TLS is configured

    _check_readable(cert_file, cert_flag)
    _check_readable(key_file, key_flag)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except TLSSettingsError:
        raise TLSSettingsError(f"{key_flag}: {key_file} is encrypted; give an unencrypted key (mode 0600)") from None
    except (ssl.SSLError, OSError) as exc:
        # OpenSSL's reasons (PEM_LIB, NO_CERTIFICATE_ASSIGNED, ...) rarely say which file is wrong:
        # look at both files with cryptography to say it.
        raise TLSSettingsError(_diagnose(exc, cert_file, key_file, cert_flag, key_flag)) from None
    return context


def _diagnose(exc: Exception, cert_file: str, key_file: str, cert_flag: str, key_flag: str) -> str:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        with open(cert_file, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
    except ValueError:
        return f"{cert_flag}: {cert_file} holds no readable PEM certificate (-----BEGIN CERTIFICATE-----)"
    try:
        with open(key_file, "rb") as f:
            private_key = serialization.load_pem_private_key(f.read(), password=None)
    except TypeError:
        return f"{key_flag}: {key_file} is encrypted; give an unencrypted key (mode 0600)"
    except (ValueError, UnsupportedAlgorithm):
        return f"{key_flag}: {key_file} holds no readable PEM private key (-----BEGIN PRIVATE KEY-----)"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(
        serialization.Encoding.DER, public
    ) != private_key.public_key().public_bytes(serialization.Encoding.DER, public):
        return f"{key_flag} {key_file} is not the key of the certificate in {cert_flag} {cert_file}"
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return f"{cert_flag} {cert_file} / {key_flag} {key_file}: OpenSSL refused them: {reason}"


def certificate_info(cert_file: str, now: datetime.datetime | None = None) -> CertificateInfo:
    """Subject and expiry of the first certificate in `cert_file` (call after load_server_context)."""
    from cryptography import x509

    with open(cert_file, "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    not_after = certificate.not_valid_after_utc
    now = now or datetime.datetime.now(datetime.UTC)
    return CertificateInfo(certificate.subject.rfc4514_string(), not_after, now >= not_after)


class ReloadableServerContext:
    """A listener's SSLContext whose certificate `reload()` swaps for new handshakes."""

    def __init__(self, cert_file: str, key_file: str, *, cert_flag: str = "--tls-cert", key_flag: str = "--tls-key"):
        self.cert_file = cert_file
        self.key_file = key_file
        self._flags = {"cert_flag": cert_flag, "key_flag": key_flag}
        self.current = load_server_context(cert_file, key_file, **self._flags)
        # The context the listener holds: loaded with the same files (so it works on its own), and
        # switching every handshake to `current` from its SNI callback (called with or without SNI).
        self.context = load_server_context(cert_file, key_file, **self._flags)
        self.context.sni_callback = self._select

    def _select(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        current = self.current
        if connection.context is not current:
            connection.context = current
        return None

    def reload(self) -> None:
        """Re-read the files; on any problem raise TLSSettingsError and keep serving the old certificate."""
        self.current = load_server_context(self.cert_file, self.key_file, **self._flags)
