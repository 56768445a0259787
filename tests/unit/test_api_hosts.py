"""The sans-I/O part of the cross-host server API (wsd.server.cluster.api_hosts): member names, the
messages on Redis, and how the other hosts' answers combine into answers and failures."""

from __future__ import annotations

import orjson
import pytest

from wsd.server.cluster.api_hosts import (
    REPLY_PREFIX,
    Gathering,
    Member,
    answer_locally,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)

A0, A1 = Member("web1-aa", 0, "t0"), Member("web1-aa", 1, "t1")
B0 = Member("web2-bb", 0, "t2")


def test_a_member_name_parses_back_and_junk_does_not():
    assert Member.parse(A1.encode()) == A1
    assert Member.parse(A1.encode().encode()) == A1
    for junk in ("", "web1", "web1 x t", "web1 1", "a b c d", " 1 t"):
        assert Member.parse(junk) is None, junk
    assert A1.reply_channel == REPLY_PREFIX + "t1"


def test_a_request_and_its_answer_round_trip():
    request = {"op": "disconnect", "user": "alice"}
    message = decode_request(encode_request("r1", A0, request))
    assert message == {"id": "r1", "from": "web1-aa", "reply": A0.reply_channel, "request": request}
    answer = decode_answer(encode_answer("r1", B0, {"disconnected": 2}))
    assert answer == {"id": "r1", "member": B0.encode(), "answer": {"disconnected": 2}}


def test_a_request_that_would_answer_outside_the_reply_channels_is_ignored():
    good = {"id": "r1", "from": "web1-aa", "reply": A0.reply_channel, "request": {"op": "channels"}}
    assert decode_request(orjson.dumps(good)) is not None
    for bad in ({**good, "reply": "wsd:{news}"}, {**good, "request": "channels"}, {**good, "id": 1},
                {k: v for k, v in good.items() if k != "from"}):  # fmt: skip
        assert decode_request(orjson.dumps(bad)) is None, bad
    for data in (b"", b"ping", b"[1]", b"{"):
        assert decode_request(data) is None and decode_answer(data) is None
    assert decode_answer(orjson.dumps({"id": "r1", "member": "nobody", "answer": {}})) is None


def test_every_expected_member_answering_completes_the_gathering():
    gathering = Gathering([A0, B0])
    assert not gathering.complete
    gathering.add({"member": A0.encode(), "answer": {"disconnected": 1}})
    gathering.add({"member": A0.encode(), "answer": {"disconnected": 5}})  # a duplicate counts once
    assert not gathering.complete
    gathering.add({"member": B0.encode(), "answer": {"disconnected": 2}})
    assert gathering.complete
    assert gathering.outcome(2.0) == ([{"disconnected": 1}, {"disconnected": 2}], [])


def test_silent_members_are_named_per_host_and_errors_per_worker():
    gathering = Gathering([A1, A0, B0])
    gathering.add({"member": B0.encode(), "answer": {"error": "'channel' failed: KeyError('channel')"}})
    answers, failures = gathering.outcome(2.0)
    assert answers == []
    assert failures == [
        "host web1-aa: worker(s) at bus slot(s) 0, 1 did not answer within 2 s",
        "host web2-bb: worker at bus slot 0: 'channel' failed: KeyError('channel')",
    ]


def test_a_member_that_joined_after_the_members_were_read_counts_too():
    gathering = Gathering([A0])
    gathering.add({"member": B0.encode(), "answer": {"subscribers": 3}})
    gathering.add({"member": A0.encode(), "answer": {"subscribers": 1}})
    assert gathering.complete and sorted(a["subscribers"] for a in gathering.outcome(2.0)[0]) == [1, 3]


def test_a_failing_operation_answers_an_error_instead_of_raising():
    def handler(request):
        return {"subscribers": {"news": 1}[request["channel"]]}

    assert answer_locally(handler, {"op": "channel", "channel": "news"}) == {"subscribers": 1}
    assert answer_locally(handler, {"op": "channel"}) == {"error": "'channel' failed: KeyError('channel')"}
    assert "error" in answer_locally(lambda request: None, {"op": "channels"})


def test_a_request_from_another_host_is_checked_like_one_that_came_here():
    from wsd.server.worker.server_api import ApiInputError, ServerApi

    class Node:
        def disconnect_user(self, user):
            return {"alice": 2}.get(user, 0)

    api = ServerApi(Node(), None, "", 0, users_known=lambda: True)
    assert api.remote({"op": "disconnect", "user": "alice"}) == {"disconnected": 2}
    for bad in ({"op": "bogus"}, {"op": "disconnect", "user": 7}, {"op": "channel", "channel": "a b"}, {}):
        with pytest.raises(ApiInputError):
            api.remote(bad)
    assert "error" in answer_locally(api.remote, {"op": "disconnect"})
    without_users = ServerApi(Node(), None, "", 0, users_known=lambda: False)
    with pytest.raises(ApiInputError, match="auth is off"):
        without_users.remote({"op": "disconnect", "user": "alice"})
