"""The security settings of `wsd serve` (issue 10): flags, the TOML [auth] table, their validation,
and `load_security` / `exposure_checks`, which read the files and decide protected mode."""

from __future__ import annotations

import pytest

from tests.auth_material import SECRET, certificate_pem, ec_private_key, private_pem, self_signed_certificate, write
from wsd.server.control.cli import serve_parser
from wsd.server.control.config import Config, ConfigError, build_config, load_toml
from wsd.server.control.security import exposure_checks, load_security


def config_from_flags(*argv: str) -> Config:
    args = {k: v for k, v in vars(serve_parser().parse_args(list(argv))).items() if k != "config"}
    return build_config({}, args)


def test_auth_table_keys_are_the_auth_settings(tmp_path):
    path = tmp_path / "wsd.toml"
    path.write_text(
        'public_channels = ["news", "room:*"]\nclient_rate = 50\n'
        '[auth]\nsecret_file = "/etc/wsd/secret"\naudience = "wsd"\nissuer = "https://app.example.com"\n'
    )
    settings = load_toml(str(path))
    assert settings == {
        "public_channels": ("news", "room:*"), "client_rate": 50.0, "auth_secret_file": "/etc/wsd/secret",
        "auth_audience": "wsd", "auth_issuer": "https://app.example.com",
    }  # fmt: skip
    config = build_config(settings, {})
    assert (config.auth_secret_file, config.public_channels) == ("/etc/wsd/secret", ("news", "room:*"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[auth]\nkey = "x"\n',
         "unknown setting 'key' in [auth]; known: audience, issuer, public_key_file, secret, secret_file"),
        ('auth = "secret"\n', "'auth' must be a table ([auth])"),
        ('[auth]\nsecret = "a"\nsecret_file = "b"\n', "give one token key, not 2"),
        ('[auth]\naudience = "wsd"\n', "--auth-audience only mean something with auth on"),
        ('public_channels = "news"\n[auth]\nsecret_file = "f"\n', None),  # a string is a comma list too
        ('public_channels = ["a b"]\n[auth]\nsecret_file = "f"\n', "public_channels channel pattern 'a b'"),
        ('allowed_origins = ["https://app.example.com/path"]\n', "is not an origin: an origin has no path"),
        ('api_key = "k"\napi_key_file = "f"\n', "give api_key or api_key_file, not both"),
        ('api_tls_key = "k.pem"\n', "api_tls_key needs api_tls_cert too"),
        ("client_rate = -1\n", "--client-rate must be a number of requests per second >= 0"),
        ("auth_timeout = 0\n", "auth_timeout must be a finite number of seconds > 0"),
    ],
)  # fmt: skip
def test_invalid_security_settings_in_a_file_are_named(tmp_path, text, message):
    path = tmp_path / "wsd.toml"
    path.write_text(text)
    if message is None:
        assert build_config(load_toml(str(path)), {}).public_channels == ("news",)
        return
    with pytest.raises(ConfigError) as error:
        build_config(load_toml(str(path)), {})
    assert message in str(error.value)


def test_list_flags_take_comma_lists():
    config = config_from_flags(
        "--auth-secret", SECRET, "--public-channels", "news, room:*", "--allowed-origins",
        "https://a.example,https://b.example:8443", "--client-rate", "0",
    )  # fmt: skip
    assert config.public_channels == ("news", "room:*")
    assert config.allowed_origins == ("https://a.example", "https://b.example:8443")
    assert config.client_rate == 0.0
    assert Config().public_channels == () and Config().allowed_origins is None and Config().client_rate == 100


def test_a_bad_pattern_flag_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        serve_parser().parse_args(["--public-channels", "room:*:x"])
    assert "* may only end a pattern" in capsys.readouterr().err


def test_load_security_reads_every_file(tmp_path):
    key = ec_private_key()
    cert = write(tmp_path / "cert.pem", certificate_pem(self_signed_certificate(key)))
    key_file = write(tmp_path / "key.pem", private_pem(key))
    config = build_config({}, {
        "auth_secret_file": write(tmp_path / "secret", SECRET + "\n"), "public_channels": ("news",),
        "allowed_origins": ("https://app.example.com",), "api_key_file": write(tmp_path / "api", "k" * 20 + "\n"),
        "tls_cert": cert, "tls_key": key_file, "api_tls_cert": cert, "api_tls_key": key_file, "auth_timeout": 2.0,
        "client_rate": 10.0,
    })  # fmt: skip
    security = load_security(config)
    assert security.gate.enabled and security.gate.verifier.key.algorithm == "HS256"
    assert security.gate.auth_timeout_s == 2.0 and security.gate.policy.public.matches("news")
    assert security.origins.allows("https://app.example.com") and not security.origins.allows("https://x.example")
    assert security.api_key == b"k" * 20
    assert security.ws_tls is not None and security.api_tls is not None
    assert security.rate_limiter.rate == 10.0
    off = load_security(Config())
    assert not off.gate.enabled and off.api_key is None and off.ws_tls is None and off.origins.allowed is None


def test_load_security_names_the_unusable_file(tmp_path):
    with pytest.raises(ConfigError, match="--auth-public-key / \\[auth\\] public_key_file: .* does not exist"):
        load_security(build_config({}, {"auth_public_key": str(tmp_path / "missing.pem")}))
    other = write(tmp_path / "other.pem", private_pem(ec_private_key("secp384r1")))
    cert = write(tmp_path / "cert.pem", certificate_pem(self_signed_certificate(ec_private_key())))
    with pytest.raises(ConfigError, match="--api-tls-key .* is not the key of the certificate in --api-tls-cert"):
        load_security(build_config({}, {"api_tls_cert": cert, "api_tls_key": other}))


def test_protected_mode_and_the_open_access_warning():
    def check(**settings):
        config = build_config({}, settings)
        return exposure_checks(config, load_security(config))

    assert check() is None  # loopback: no warning
    with pytest.raises(ConfigError, match="refusing to start: --api-host 0.0.0.0"):
        check(api_host="0.0.0.0")
    assert check(api_host="0.0.0.0", api_key="k" * 20) is None
    assert check(api_host="::1") is None
    warning = check(host="0.0.0.0")
    assert warning.startswith("--host 0.0.0.0 is reachable from other machines and no auth is configured")
    assert check(host="0.0.0.0", auth_secret=SECRET) is None
