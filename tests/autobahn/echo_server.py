"""Stand-alone echo server for Autobahn|Testsuite: uvloop + picows + `EchoListener` on one path.

A stand-in for `wsd serve --echo-path /echo` that exercises exactly the conformance layer and
nothing else; `tests/test_autobahn.py` falls back to it when `wsd serve` has no `--echo-path`.
"""

from __future__ import annotations

import argparse
import logging

import uvloop
from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener, ws_create_server

from wsd.server.permessage_deflate import HEADER, negotiate
from wsd.server.worker.ws_conformance import DEFAULT_MAX_MESSAGE_SIZE, EchoListener, picows_server_kwargs


async def serve(host: str, port: int, path: str, max_message_size: int) -> None:
    def route(request: WSUpgradeRequest) -> EchoListener | WSUpgradeResponseWithListener | None:
        if request.path != path.encode():
            return None  # picows answers 404, like wsd for an unknown path
        listener = EchoListener(max_message_size)
        # permessage-deflate as wsd's echo endpoint negotiates it (the client may keep its context).
        agreement = negotiate(tuple(request.headers.getall(HEADER, ())), client_no_context_takeover=False)
        if agreement is None:
            return listener
        listener.use_deflate(agreement)
        response = WSUpgradeResponse.create_101_response({HEADER: agreement.response})
        return WSUpgradeResponseWithListener(response, listener)

    server = await ws_create_server(route, host, port, **picows_server_kwargs(max_message_size))
    print(f"echo server listening on ws://{host}:{port}{path}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--path", default="/echo")
    parser.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE)
    args = parser.parse_args()
    # picows logs every protocol violation at ERROR; the fuzzer provokes hundreds on purpose.
    logging.basicConfig(level=logging.CRITICAL)
    uvloop.run(serve(args.host, args.port, args.path, args.max_message_size))


if __name__ == "__main__":
    main()
