"""Unit tests of wsd.server.auth.keys: settings validation, key files, the algorithm each key pins."""

from __future__ import annotations

import os

import pytest

from tests.auth_material import (
    SECRET,
    certificate_pem,
    ec_private_key,
    ed25519_private_key,
    private_pem,
    public_key_pem,
    public_pem,
    rsa_private_key,
    self_signed_certificate,
    write,
)
from wsd.server.auth.keys import AuthSettings, AuthSettingsError, load_token_key


def test_no_key_means_auth_off():
    settings = AuthSettings()
    assert not settings.enabled
    assert load_token_key(settings) is None


def test_exactly_one_key_source():
    with pytest.raises(AuthSettingsError, match="one token key, not 2: --auth-secret .* and --auth-secret-file"):
        AuthSettings(secret=SECRET, secret_file="/x")
    with pytest.raises(AuthSettingsError, match="not 3"):
        AuthSettings(secret=SECRET, secret_file="/x", public_key_file="/y")


@pytest.mark.parametrize("field", ["audience", "issuer", "public_channels"])
def test_audience_issuer_and_public_channels_need_a_key(field):
    value = ("news",) if field == "public_channels" else "x"
    with pytest.raises(AuthSettingsError, match="only mean something with auth on"):
        AuthSettings(**{field: value})


def test_empty_strings_are_refused():
    with pytest.raises(AuthSettingsError, match="--auth-audience must be a non-empty string"):
        AuthSettings(secret=SECRET, audience="")
    with pytest.raises(AuthSettingsError, match="--auth-secret must be a non-empty string"):
        AuthSettings(secret="")


def test_public_channels_are_validated_and_become_a_tuple():
    assert AuthSettings(secret=SECRET, public_channels=["news", "room:*"]).public_channels == ("news", "room:*")
    with pytest.raises(AuthSettingsError, match=r"--public-channels: .*\* may only end a pattern"):
        AuthSettings(secret=SECRET, public_channels=["a*b"])
    with pytest.raises(AuthSettingsError, match="must be a list"):
        AuthSettings(secret=SECRET, public_channels="news")
    assert AuthSettings(secret=SECRET, public_channels=None).public_channels == ()


def test_secret_pins_hs256():
    key = load_token_key(AuthSettings(secret=SECRET))
    assert key.algorithm == "HS256" and key.key == SECRET.encode() and key.symmetric
    assert SECRET not in repr(key) and SECRET not in key.source


def test_short_secret_is_refused():
    with pytest.raises(AuthSettingsError, match="the HS256 secret is 6 bytes; use at least 32"):
        load_token_key(AuthSettings(secret="secret"))


def test_secret_file_trailing_newline_is_stripped(tmp_path):
    path = write(tmp_path / "secret", SECRET + "\n")
    assert load_token_key(AuthSettings(secret_file=path)).key == SECRET.encode()
    path = write(tmp_path / "secret-crlf", SECRET + "\r\n")
    assert load_token_key(AuthSettings(secret_file=path)).key == SECRET.encode()
    # Only line ends: inner and leading spaces are part of the secret.
    path = write(tmp_path / "secret-spaces", " " + SECRET + " \n")
    assert load_token_key(AuthSettings(secret_file=path)).key == (" " + SECRET + " ").encode()


def test_secret_file_problems_are_named(tmp_path):
    with pytest.raises(AuthSettingsError, match=r"--auth-secret-file .*: .*/missing does not exist"):
        load_token_key(AuthSettings(secret_file=str(tmp_path / "missing")))
    with pytest.raises(AuthSettingsError, match="is a directory"):
        load_token_key(AuthSettings(secret_file=str(tmp_path)))
    with pytest.raises(AuthSettingsError, match="the secret is empty"):
        load_token_key(AuthSettings(secret_file=write(tmp_path / "empty", "\n")))


@pytest.mark.skipif(os.getuid() == 0, reason="root reads any file")
def test_unreadable_secret_file(tmp_path):
    path = write(tmp_path / "secret", SECRET)
    os.chmod(path, 0)
    with pytest.raises(AuthSettingsError, match="permission denied"):
        load_token_key(AuthSettings(secret_file=path))


def test_unreadable_secret_file_as_another_user(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to drop privileges")
    path = write(tmp_path / "secret", SECRET)
    os.chmod(path, 0o600)
    pid = os.fork()
    if pid == 0:  # the child: as nobody, the file cannot be read
        try:
            os.setuid(65534)
            load_token_key(AuthSettings(secret_file=path))
            os._exit(1)
        except AuthSettingsError as exc:
            os._exit(0 if "permission denied" in str(exc) else 2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_public_key_given_as_secret_is_refused(tmp_path):
    pem = public_pem(rsa_private_key()).decode()
    with pytest.raises(AuthSettingsError, match="looks like a public key or certificate"):
        load_token_key(AuthSettings(secret=pem))
    with pytest.raises(AuthSettingsError, match="looks like a public key"):
        load_token_key(AuthSettings(secret_file=write(tmp_path / "k", pem)))


def test_rsa_public_key_pins_rs256(tmp_path):
    key = load_token_key(AuthSettings(public_key_file=write(tmp_path / "rsa.pem", public_pem(rsa_private_key()))))
    assert key.algorithm == "RS256" and not key.symmetric
    assert "RSA 2048 bits" in key.source


def test_ec_p256_pins_es256_and_other_nist_curves_their_own(tmp_path):
    for curve, algorithm in (("secp256r1", "ES256"), ("secp384r1", "ES384"), ("secp521r1", "ES512")):
        path = write(tmp_path / f"{curve}.pem", public_pem(ec_private_key(curve)))
        assert load_token_key(AuthSettings(public_key_file=path)).algorithm == algorithm


def test_other_curves_and_key_types_are_refused(tmp_path):
    path = write(tmp_path / "k1.pem", public_pem(ec_private_key("secp256k1")))
    with pytest.raises(AuthSettingsError, match="EC curve secp256k1 is not supported; use P-256"):
        load_token_key(AuthSettings(public_key_file=path))
    path = write(tmp_path / "ed.pem", public_pem(ed25519_private_key()))
    with pytest.raises(AuthSettingsError, match="Ed25519PublicKey key is not supported"):
        load_token_key(AuthSettings(public_key_file=path))


def test_short_rsa_key_is_refused(tmp_path):
    path = write(tmp_path / "rsa1024.pem", public_pem(rsa_private_key(1024)))
    with pytest.raises(AuthSettingsError, match="RSA key of 1024 bits; use 2048"):
        load_token_key(AuthSettings(public_key_file=path))


def test_certificate_gives_its_public_key(tmp_path):
    private_key = ec_private_key()
    certificate = self_signed_certificate(private_key)
    # A chain: the leaf comes first and is the one used.
    other = certificate_pem(self_signed_certificate(rsa_private_key(), "intermediate"))
    path = write(tmp_path / "cert.pem", certificate_pem(certificate) + other)
    key = load_token_key(AuthSettings(public_key_file=path))
    assert key.algorithm == "ES256" and "certificate" in key.source
    assert public_key_pem(key.key) == public_pem(private_key)


def test_private_key_in_public_key_file_is_refused_with_the_fix(tmp_path):
    path = write(tmp_path / "private.pem", private_pem(ec_private_key()))
    with pytest.raises(AuthSettingsError, match="holds a private key; give the public key .* -pubout"):
        load_token_key(AuthSettings(public_key_file=path))


def test_public_key_file_problems_are_named(tmp_path):
    with pytest.raises(AuthSettingsError, match="--auth-public-key .*: .* does not exist"):
        load_token_key(AuthSettings(public_key_file=str(tmp_path / "none.pem")))
    with pytest.raises(AuthSettingsError, match="not PEM"):
        load_token_key(AuthSettings(public_key_file=write(tmp_path / "der", b"\x30\x82\x01\x22")))
    broken = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    with pytest.raises(AuthSettingsError, match="not a readable PEM public key"):
        load_token_key(AuthSettings(public_key_file=write(tmp_path / "broken.pem", broken)))
    broken_cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(AuthSettingsError, match="not a readable PEM certificate"):
        load_token_key(AuthSettings(public_key_file=write(tmp_path / "broken-cert.pem", broken_cert)))


def test_reload_reads_the_files_again(tmp_path):
    path = tmp_path / "key.pem"
    write(path, public_pem(ec_private_key()))
    settings = AuthSettings(public_key_file=str(path))
    assert load_token_key(settings).algorithm == "ES256"
    write(path, public_pem(rsa_private_key()))
    assert load_token_key(settings).algorithm == "RS256"
    secret_path = tmp_path / "secret"
    write(secret_path, SECRET)
    secret_settings = AuthSettings(secret_file=str(secret_path))
    assert load_token_key(secret_settings).key == SECRET.encode()
    write(secret_path, SECRET[::-1])
    assert load_token_key(secret_settings).key == SECRET[::-1].encode()
