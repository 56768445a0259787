"""Fuzz harness of the config loader: any bytes as a `wsd serve --config` file.

Contract (wsd.server.control.config): `load_toml` then `build_config` give a valid Config or raise
ConfigError, with a message naming the file or the setting, and nothing else: a bad file read at
start is a clear error (exit status 2), one read on reload is refused while the server keeps its
config (issue 9, item 2). A Config they give passes `validate()` again, holds values of the declared
types, and is the same when built twice from the same file.

    python -m tests.fuzz.fuzz_config [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["wsd", "tomllib"]):
    import tomllib  # noqa: F401  (the parser the loader uses: instrumented too)

    from wsd.server.control import config as wsd_config

PATH = os.path.join(tempfile.mkdtemp(prefix="wsd-fuzz-config-"), "wsd.toml")


def check_types(config: wsd_config.Config) -> None:
    for name, spec in wsd_config.SETTINGS.items():
        value = getattr(config, name)
        if value is None:
            assert spec.optional, name
        elif name == "workers":
            assert value == "auto" or (type(value) is int and value >= 1), value
        elif spec.parse is not None:
            # A parsed setting (channel patterns, origins) holds what its parser makes of itself.
            assert spec.parse(value) == value, (name, value)
        else:
            assert type(value) is spec.kind, (name, value)
            if spec.choices is not None:
                assert value in spec.choices, (name, value)


def load(data: bytes) -> wsd_config.Config | str:
    with open(PATH, "wb") as file:
        file.write(data)
    try:
        return wsd_config.build_config(wsd_config.load_toml(PATH), {})
    except wsd_config.ConfigError as error:
        return str(error)


def check_one_input(data: bytes) -> None:
    outcome = load(data)
    if isinstance(outcome, str):
        assert outcome, "a ConfigError says what is wrong"
        return
    outcome.validate()
    check_types(outcome)
    assert load(data) == outcome


def main() -> None:
    atheris.Setup(sys.argv, check_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
