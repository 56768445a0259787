"""The 101 response a worker makes once and picows sends on every accepted handshake."""

from picows import WSUpgradeResponse

from wsd.server.worker.routes import SwitchingProtocols


def test_it_encodes_as_picows_own_101_response_with_each_connections_accept_value():
    ours = SwitchingProtocols({"X-Wsd-Worker": "3"})
    for accept in ("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "HSmrc0sMlYUkAGmm5OPpG2HaGWk="):
        # What picows does with a 101 response (WSTransport._send_http_handshake_response).
        ours.headers["Sec-WebSocket-Accept"] = accept
        theirs = WSUpgradeResponse.create_101_response({"X-Wsd-Worker": "3"})
        theirs.headers["Sec-WebSocket-Accept"] = accept
        assert ours.to_bytes() == theirs.to_bytes()
        assert isinstance(ours.to_bytes(), bytearray)
    assert ours.status == 101 and ours.body is None


def test_it_refuses_a_header_only_an_error_response_takes():
    import pytest

    with pytest.raises(KeyError, match="Connection"):
        SwitchingProtocols({}).headers["Connection"] = "close"
