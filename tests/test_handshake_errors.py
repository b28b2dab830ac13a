"""A wrong URL is answered at the handshake in words, and both clients show those words at once."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from stream import wire
from clients.policy_link import WebsocketPolicyLink
from clients.sdk import HandshakeRefused, PolicyClient, SyncPolicyClient
from server_harness import TRANSPORTS, ServerThread
from stream.server import HTTP_ROUTES, ROUTES, ServerConfig


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module", params=TRANSPORTS)
def server(request):
    """The websockets server, then the same server through the ASGI adapter."""
    with ServerThread(transport=request.param) as running:
        yield running


def test_404_names_every_endpoint_of_the_server(server):
    status, body = http_get(server.http + "/nothing/here")
    assert status == 404
    assert body.splitlines()[0] == "no endpoint at /nothing/here"
    assert set(server.server.routes) == {"/", "/v1/policy"}  # a policy only: no chat endpoint
    for path in [*server.server.routes, *HTTP_ROUTES]:
        assert path in body.splitlines()[1]


def test_an_endpoint_no_served_model_fits_answers_404_saying_what_it_needs(server):
    assert "/v1/chat" in ROUTES
    status, body = http_get(server.http + "/v1/chat")
    assert status == 404
    assert body.splitlines()[0] == ("no endpoint at /v1/chat: it needs a chat model (headway serve --llm PATH), "
                                    "and this server serves none")


def test_404_suggests_the_closest_endpoint(server):
    _, body = http_get(server.http + "/v1/policies")
    assert body.splitlines()[0] == "no endpoint at /v1/policies; did you mean /v1/policy?"


async def test_trailing_slash_reaches_the_endpoint(server):
    async with connect(server.url + "v1/policy/", compression=None) as ws:
        await ws.send(wire.packb({"type": "hello", "strategy": "naive"}))
        assert wire.unpackb(await ws.recv())["type"] == "ready"


def test_trailing_slash_reaches_http_endpoints(server):
    assert http_get(server.http + "/healthz/") == (200, "OK\n")


async def test_sdk_raises_the_refusal_with_status_and_reason(server):
    with pytest.raises(HandshakeRefused) as info:
        await PolicyClient(server.url + "v1/policies").connect()
    assert info.value.status == 404
    assert info.value.reason.startswith("no endpoint at /v1/policies; did you mean /v1/policy?")
    assert "HTTP 404 Not Found\n  no endpoint at /v1/policies" in str(info.value)


async def test_sdk_refusal_is_still_websockets_invalid_status(server):
    with pytest.raises(InvalidStatus) as info:
        await PolicyClient(server.url + "?model=nosuch").connect()
    assert info.value.response.status_code == 400


def test_sync_sdk_raises_the_refusal(server):
    with pytest.raises(HandshakeRefused) as info:
        SyncPolicyClient(server.url + "?model=nosuch")
    assert info.value.status == 400
    assert info.value.reason.startswith("unknown model 'nosuch'; this server serves standin")


def test_sdk_refusal_names_what_the_token_lacks():
    with ServerThread(config=ServerConfig(token="s3cret")) as locked:
        with pytest.raises(HandshakeRefused) as info:
            SyncPolicyClient(locked.url, token="wrong")
    assert (info.value.status, info.value.reason) == (401, "missing or wrong token")


def test_policy_link_wait_ready_raises_the_refusal_without_waiting_out_its_timeout(server):
    link = WebsocketPolicyLink(server.url + "v1/policies", {"strategy": "rtc"})
    try:
        # Were the refusal retried, this would end in TimeoutError a minute later.
        with pytest.raises(HandshakeRefused) as info:
            link.wait_ready(timeout=60)
    finally:
        link.close()
    assert info.value.status == 404
    assert "did you mean /v1/policy?" in info.value.reason
    assert link.connects == 0


def test_policy_link_timeout_names_the_last_failed_attempt():
    with ServerThread() as stopped:
        url = stopped.url + "v1/policy"
    link = WebsocketPolicyLink(url, {"strategy": "rtc"}, backoff_s=(0.01, 0.05))
    try:
        with pytest.raises(TimeoutError) as info:
            link.wait_ready(timeout=1)
    finally:
        link.close()
    assert "last attempt: ConnectionRefusedError" in str(info.value)
