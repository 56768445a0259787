"""Keys, certificates and tokens for the auth tests, generated here (nothing secret is checked in)."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import ipaddress
import json
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"  # 48 bytes: over HS256's 32-byte minimum


@functools.cache
def rsa_private_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_private_key(curve_name: str = "secp256r1") -> ec.EllipticCurvePrivateKey:
    curve = {
        "secp256r1": ec.SECP256R1,
        "secp384r1": ec.SECP384R1,
        "secp521r1": ec.SECP521R1,
        "secp256k1": ec.SECP256K1,
    }[curve_name]()
    return ec.generate_private_key(curve)


@functools.cache
def ed25519_private_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_key_pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_pem(private_key) -> bytes:
    return public_key_pem(private_key.public_key())


def private_pem(private_key, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def self_signed_certificate(
    private_key, common_name: str = "localhost", days: int = 30, not_before: datetime.datetime | None = None
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private_key, hashes.SHA256())
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def hs256(claims: dict, secret: str = SECRET, headers: dict | None = None) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", headers=headers)


def es256(claims: dict, private_key=None) -> str:
    return jwt.encode(claims, private_key or ec_private_key(), algorithm="ES256")


def rs256(claims: dict, private_key=None) -> str:
    return jwt.encode(claims, private_key or rsa_private_key(), algorithm="RS256")


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def forged_hs256(claims: dict, secret: bytes, alg: str = "HS256") -> str:
    """An HS256 token signed by hand with any bytes as the secret (PyJWT refuses PEM secrets): the
    HS/RS confusion attack signs with the server's public key."""
    signing_input = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


def unsigned(claims: dict, alg: str = "none") -> str:
    """An `alg: none` token (no signature)."""
    return (b64(json.dumps({"alg": alg}).encode()) + b"." + b64(json.dumps(claims).encode()) + b".").decode()
