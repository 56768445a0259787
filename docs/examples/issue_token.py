#!/usr/bin/env python3
"""Issue wsd connection tokens (JWT) the way an application's backend does, and make demo keys.

Your backend knows who the user is (its session); it signs a short-lived token saying so, and what
the user may subscribe to and publish on, and hands it to the browser (wsd.js calls `getToken()`).
wsd only verifies: it never sees the private key or issues tokens itself. See docs/auth.md.

    # HS256: a shared secret (wsd serve --auth-secret-file demo.secret)
    python3 docs/examples/issue_token.py new-secret demo.secret
    python3 docs/examples/issue_token.py token --secret-file demo.secret --sub user:42 \\
        --subs 'user:42,room:*' --pubs 'room:*' --ttl 3600

    # ES256: a key pair; wsd gets the public half (wsd serve --auth-public-key demo-public.pem)
    python3 docs/examples/issue_token.py new-keypair demo-private.pem demo-public.pem
    python3 docs/examples/issue_token.py token --private-key demo-private.pem --sub user:42

    # The demo's token server (make run-auth): GET /token?sub=NAME answers a token for NAME, to anyone
    python3 docs/examples/issue_token.py serve --private-key demo-private.pem --port 8082 --subs feed --pubs feed

In a real backend this is three lines of PyJWT: `jwt.encode({"sub": user_id, "exp": now + ttl,
"subs": [...], "pubs": [...]}, key, algorithm="ES256")`.
"""

from __future__ import annotations

import argparse
import http.server
import os
import secrets
import sys
import time
import urllib.parse

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def write_private(path: str, data: bytes) -> None:
    """Create `path` readable by its owner only (it holds a secret), refusing to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def new_secret(args: argparse.Namespace) -> None:
    write_private(args.path, secrets.token_urlsafe(32).encode() + b"\n")
    print(f"wrote a random HS256 secret to {args.path}; start wsd with --auth-secret-file {args.path}")


def new_keypair(args: argparse.Namespace) -> None:
    if args.rsa:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private_key = ec.generate_private_key(ec.SECP256R1())
    write_private(
        args.private,
        private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    with open(args.public, "xb") as f:
        f.write(
            private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    kind = "RS256" if args.rsa else "ES256"
    print(f"wrote a {kind} private key to {args.private} (keep it in the backend) and its public key to "
          f"{args.public}; start wsd with --auth-public-key {args.public}")  # fmt: skip


def signing_key(args: argparse.Namespace) -> tuple[object, str]:
    if args.secret is not None:
        return args.secret.encode(), "HS256"
    if args.secret_file is not None:
        with open(args.secret_file, "rb") as f:
            return f.read().rstrip(b"\r\n"), "HS256"  # as wsd reads it
    with open(args.private_key, "rb") as f:
        private_key = serialization.load_pem_private_key(f.read(), password=None)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key, "RS256"
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and private_key.curve.name in _EC_ALGORITHMS:
        return private_key, _EC_ALGORITHMS[private_key.curve.name]
    sys.exit(f"{args.private_key}: use an RSA or EC P-256 private key")


def split(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def issue(args: argparse.Namespace, key: object, algorithm: str, sub: str) -> str:
    now = int(time.time())
    claims: dict = {"sub": sub, "iat": now, "exp": now + args.ttl}
    for name, value in (("subs", split(args.subs)), ("pubs", split(args.pubs))):
        if value is not None:
            claims[name] = value
    if args.aud is not None:
        claims["aud"] = args.aud
    if args.iss is not None:
        claims["iss"] = args.iss
    return jwt.encode(claims, key, algorithm=algorithm)


def token(args: argparse.Namespace) -> None:
    key, algorithm = signing_key(args)
    print(issue(args, key, algorithm, args.sub))


def serve(args: argparse.Namespace) -> None:
    """A demo backend: a token for whoever asks (a real one issues them only to its signed-in users)."""
    key, algorithm = signing_key(args)

    class TokenHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            url = urllib.parse.urlsplit(self.path)
            sub = urllib.parse.parse_qs(url.query).get("sub", ["guest"])[0][:64] or "guest"
            if url.path != "/token":
                self.send_error(404, "GET /token?sub=NAME")
                return
            body = issue(args, key, algorithm, sub).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Access-Control-Allow-Origin", "*")  # the page is on wsd's origin
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *values: object) -> None:
            sys.stderr.write(f"token server: {format % values}\n")

    server = http.server.ThreadingHTTPServer((args.host, args.port), TokenHandler)
    print(f"demo token server on http://{args.host}:{server.server_port}/token?sub=NAME ({algorithm}, ttl "
          f"{args.ttl} s)", flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("new-secret", help="write a random HS256 secret (mode 0600)")
    command.add_argument("path")
    command.set_defaults(run=new_secret)

    command = commands.add_parser("new-keypair", help="write an ES256 (or --rsa: RS256) key pair")
    command.add_argument("private")
    command.add_argument("public")
    command.add_argument("--rsa", action="store_true")
    command.set_defaults(run=new_keypair)

    for name, run, help_text in (
        ("token", token, "print a signed connection token"),
        ("serve", serve, "serve tokens over HTTP for the demo page: GET /token?sub=NAME (anyone gets one)"),
    ):
        command = commands.add_parser(name, help=help_text)
        keys = command.add_mutually_exclusive_group(required=True)
        keys.add_argument("--secret-file", help="HS256 with the secret in this file (what wsd reads)")
        keys.add_argument("--secret", help="HS256 with this secret (visible in ps: prefer --secret-file)")
        keys.add_argument("--private-key", help="RS256/ES256 with this PEM private key")
        if name == "token":
            command.add_argument("--sub", required=True, help="the user id")
        else:
            command.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
            command.add_argument("--port", type=int, default=8082, help="port to serve on (default 8082)")
        command.add_argument("--ttl", type=int, default=3600, help="seconds until exp (default 3600)")
        command.add_argument("--subs", help="channel patterns the user may subscribe to: 'user:42,room:*'")
        command.add_argument("--pubs", help="channel patterns the user may publish to")
        command.add_argument("--aud", help="audience (wsd --auth-audience)")
        command.add_argument("--iss", help="issuer (wsd --auth-issuer)")
        command.set_defaults(run=run)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except FileExistsError as exc:
        sys.exit(f"{exc.filename} exists: not overwritten")
    except OSError as exc:
        sys.exit(f"{exc.filename}: {exc.strerror}")


if __name__ == "__main__":
    main()
