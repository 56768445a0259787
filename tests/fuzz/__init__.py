"""Coverage-guided fuzzing of every parser of untrusted input (atheris, i.e. libFuzzer for Python).

One harness per parser, each a module with `check_one_input(data)` that feeds the parser and asserts
its contract (only the documented errors, well-formed replies, bounded memory), and a `__main__` that
hands it to atheris:

- `fuzz_client_request`: `/ws` client messages (wsd.server.protocol.parse_request);
- `fuzz_ws_assembler`: RFC 6455 frame sequences (wsd.server.worker.ws_conformance.MessageAssembler);
- `fuzz_http_api`: bytes of the publish API's connections (wsd.server.api: HttpConnection, Router,
  the endpoints) with a publisher that answers at once;
- `fuzz_bus_record`: bus record payloads (wsd.ext.record against its twin wsd.ext.record_ref);
- `fuzz_config`: TOML config files (wsd.server.control.config.load_toml and build_config).

`python -m tests.fuzz.runner` runs them for a bounded time (`make fuzz`; a few seconds each in
`make test`, through tests/test_fuzz.py). Seed inputs are in seeds/<harness>/ (crashes once found are
kept there too, so every run replays them first), token dictionaries in dicts/.
"""
