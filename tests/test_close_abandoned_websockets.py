"""The ingress middleware that gives a dead replica's websockets a close code (1012)."""

from __future__ import annotations

from stream.asgi import CloseAbandonedWebsockets
from stream.errors import CLOSE_SERVICE_RESTART


def middleware_run(app, client_messages=({"type": "websocket.connect"},), scope_type="websocket"):
    """What the middleware around ``app`` sends the client, for a client that says ``client_messages``."""
    sent = []
    incoming = list(client_messages)

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message)

    return CloseAbandonedWebsockets(app), {"type": scope_type}, receive, send, sent


async def test_an_accepted_websocket_the_app_abandons_is_closed_with_1012():
    async def dies_after_accept(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})

    wrapped, scope, receive, send, sent = middleware_run(dies_after_accept)
    await wrapped(scope, receive, send)
    assert sent[-1] == {"type": "websocket.close", "code": CLOSE_SERVICE_RESTART, "reason": "replica lost; reconnect"}


async def test_an_app_that_raises_after_accept_still_gets_its_websocket_closed_with_1012():
    async def raises(scope, receive, send):
        await send({"type": "websocket.accept"})
        raise RuntimeError("the replica died")

    wrapped, scope, receive, send, sent = middleware_run(raises)
    try:
        await wrapped(scope, receive, send)
    except RuntimeError:
        pass
    assert sent[-1]["code"] == CLOSE_SERVICE_RESTART


async def test_the_apps_own_close_passes_through_and_nothing_is_added():
    async def closes(scope, receive, send):
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1001, "reason": "draining"})

    wrapped, scope, receive, send, sent = middleware_run(closes)
    await wrapped(scope, receive, send)
    assert [m.get("code") for m in sent] == [None, 1001]


async def test_a_client_that_left_gets_no_close():
    async def reads_until_disconnect(scope, receive, send):
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    wrapped, scope, receive, send, sent = middleware_run(
        reads_until_disconnect, [{"type": "websocket.receive", "text": "hi"}, {"type": "websocket.disconnect", "code": 1000}])
    await wrapped(scope, receive, send)
    assert sent == [{"type": "websocket.accept"}]


async def test_a_refused_handshake_passes_through_untouched():
    async def refuses(scope, receive, send):
        await send({"type": "websocket.close", "code": 1008})

    wrapped, scope, receive, send, sent = middleware_run(refuses)
    await wrapped(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_http_passes_through_untouched():
    async def http(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})

    wrapped, scope, receive, send, sent = middleware_run(http, scope_type="http")
    await wrapped(scope, receive, send)
    assert sent == [{"type": "http.response.start", "status": 200}]
