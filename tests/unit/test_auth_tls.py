"""Unit tests of wsd.server.auth.tls with self-signed certificates made here; handshakes run over
memory BIOs (real OpenSSL on both sides, no socket)."""

from __future__ import annotations

import datetime
import ssl
import warnings

import pytest

from tests.auth_material import (
    certificate_pem,
    ec_private_key,
    private_pem,
    rsa_private_key,
    self_signed_certificate,
    write,
)
from wsd.server.auth.tls import ReloadableServerContext, TLSSettingsError, certificate_info, load_server_context


def make_pair(directory, name, private_key, common_name="localhost"):
    certificate = self_signed_certificate(private_key, common_name)
    cert_file = write(directory / f"{name}.crt", certificate_pem(certificate))
    key_file = write(directory / f"{name}.key", private_pem(private_key))
    return cert_file, key_file, certificate


def client_context(trusted_pem: bytes | None = None, *, alpn=("h2", "http/1.1")) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=trusted_pem.decode() if trusted_pem else None)
    if trusted_pem is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(list(alpn))
    return context


def handshake(server_context: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str | None = "localhost"):
    """Run a TLS handshake between two in-memory endpoints; returns the client's SSLObject."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server_side = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, endpoint in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    endpoint.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return client_side
    raise AssertionError("handshake did not finish")


def served_certificate(server_context, server_hostname="localhost") -> bytes:
    return handshake(server_context, client_context(), server_hostname).getpeercert(binary_form=True)


def der(certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return certificate.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
def test_server_context_handshakes_with_modern_defaults(tmp_path, key_kind):
    private_key = ec_private_key() if key_kind == "ec" else rsa_private_key()
    cert_file, key_file, certificate = make_pair(tmp_path, "server", private_key)
    context = load_server_context(cert_file, key_file)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    client = handshake(context, client_context(certificate_pem(certificate)))  # verifies chain and host name
    assert client.version() in ("TLSv1.2", "TLSv1.3")
    assert client.selected_alpn_protocol() == "http/1.1"  # never h2: WebSocket here is HTTP/1.1


def test_old_protocol_versions_are_refused(tmp_path):
    cert_file, key_file, _ = make_pair(tmp_path, "server", ec_private_key())
    context = load_server_context(cert_file, key_file)
    old_client = client_context()
    old_client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():  # TLSv1_1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old_client.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        handshake(context, old_client)


def test_missing_and_unreadable_files_are_named(tmp_path):
    cert_file, key_file, _ = make_pair(tmp_path, "server", ec_private_key())
    with pytest.raises(TLSSettingsError, match=r"--tls-cert: .*/nope.crt does not exist"):
        load_server_context(str(tmp_path / "nope.crt"), key_file)
    with pytest.raises(TLSSettingsError, match=r"--tls-key: .*/nope.key does not exist"):
        load_server_context(cert_file, str(tmp_path / "nope.key"))
    with pytest.raises(TLSSettingsError, match="is a directory"):
        load_server_context(str(tmp_path), key_file)
    with pytest.raises(TLSSettingsError, match="--api-tls-cert: .* does not exist"):
        load_server_context(str(tmp_path / "x"), key_file, cert_flag="--api-tls-cert", key_flag="--api-tls-key")


def test_not_pem_files(tmp_path):
    cert_file, key_file, certificate = make_pair(tmp_path, "server", ec_private_key())
    der_file = write(tmp_path / "cert.der", der(certificate))
    with pytest.raises(TLSSettingsError, match="is not PEM"):
        load_server_context(der_file, key_file)
    garbage = write(tmp_path / "garbage.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(TLSSettingsError, match="holds no readable PEM certificate"):
        load_server_context(garbage, key_file)
    bad_key = write(tmp_path / "garbage.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TLSSettingsError, match=r"--tls-key: .*garbage.key holds no readable PEM private key"):
        load_server_context(cert_file, bad_key)


def test_key_that_does_not_match_the_certificate(tmp_path):
    cert_file, _, _ = make_pair(tmp_path, "a", ec_private_key())
    other_key = write(tmp_path / "other.key", private_pem(rsa_private_key()))
    with pytest.raises(
        TLSSettingsError, match=r"--tls-key .*other.key is not the key of the certificate in --tls-cert"
    ):
        load_server_context(cert_file, other_key)


def test_encrypted_key_is_refused_without_prompting(tmp_path):
    private_key = ec_private_key()
    cert_file, _, _ = make_pair(tmp_path, "server", private_key)
    encrypted = write(tmp_path / "encrypted.key", private_pem(private_key, password=b"hunter2"))
    with pytest.raises(TLSSettingsError, match="is encrypted; give an unencrypted key"):
        load_server_context(cert_file, encrypted)


def test_certificate_and_key_in_one_file(tmp_path):
    private_key = ec_private_key()
    certificate = self_signed_certificate(private_key)
    both = write(tmp_path / "both.pem", certificate_pem(certificate) + private_pem(private_key))
    assert served_certificate(load_server_context(both, both)) == der(certificate)


@pytest.mark.parametrize("server_hostname", ["localhost", None])
def test_reload_swaps_the_certificate_for_new_handshakes(tmp_path, server_hostname):
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    first = self_signed_certificate(ec_private_key(), "first")
    write(cert_path, certificate_pem(first))
    write(key_path, private_pem(ec_private_key()))
    reloadable = ReloadableServerContext(str(cert_path), str(key_path))
    listener_context = reloadable.context
    assert served_certificate(listener_context, server_hostname) == der(first)
    # The renewed certificate (a new key too) replaces the files; the listener keeps its context.
    second_key = rsa_private_key()
    second = self_signed_certificate(second_key, "second")
    write(cert_path, certificate_pem(second))
    write(key_path, private_pem(second_key))
    assert served_certificate(listener_context, server_hostname) == der(first)  # not before reload()
    reloadable.reload()
    assert reloadable.context is listener_context
    assert served_certificate(listener_context, server_hostname) == der(second)


def test_failed_reload_keeps_the_old_certificate(tmp_path):
    cert_file, key_file, certificate = make_pair(tmp_path, "server", ec_private_key())
    reloadable = ReloadableServerContext(cert_file, key_file)
    write(tmp_path / "server.key", private_pem(rsa_private_key()))  # a key of another certificate
    with pytest.raises(TLSSettingsError, match="is not the key of the certificate"):
        reloadable.reload()
    assert served_certificate(reloadable.context) == der(certificate)


def test_certificate_info(tmp_path):
    cert_file, _, certificate = make_pair(tmp_path, "server", ec_private_key(), "wsd.example")
    info = certificate_info(cert_file)
    assert info.subject == "CN=wsd.example"
    assert info.not_valid_after == certificate.not_valid_after_utc
    assert not info.expired
    assert certificate_info(cert_file, now=info.not_valid_after + datetime.timedelta(seconds=1)).expired
