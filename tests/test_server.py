"""The server on loopback: HTTP endpoints, auth, origins, routing, batching, drain, SDK."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stream import wire
from clients.sdk import PolicyClient, RequestTimeout, ServerError, SyncPolicyClient
from policies.standin import standin_actions
from server_harness import ServerThread, metric_value, standin, state_for
from stream.server import ServerConfig


def http_status(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def infer(ws, state: np.ndarray) -> dict:
    await ws.send(wire.packb({"state": state}))
    reply = await ws.recv()
    assert isinstance(reply, bytes), reply
    return wire.unpackb(reply)


def test_healthz_answers_ok():
    with ServerThread() as server:
        assert http_status(server.http + "/healthz") == 200


def test_unknown_path_is_404():
    with ServerThread() as server:
        assert http_status(server.http + "/v1/nothing") == 404


def test_binds_loopback_by_default():
    assert ServerConfig().host == "127.0.0.1"
    with ServerThread() as server:
        assert server.server._ws_server.sockets[0].getsockname()[0] == "127.0.0.1"


async def test_metrics_expose_sessions_latency_and_batches_labelled_by_model_and_route():
    with ServerThread([standin(1)]) as server:
        async with connect(server.url, compression=None) as ws:
            await ws.recv()
            for i in range(3):
                await infer(ws, state_for(i))
            text = server.metrics_text()
            assert metric_value(text, "headway_open_sessions", model="standin", route="/") == 1
        assert metric_value(text, "headway_request_seconds_count", model="standin", route="/") == 3
        assert metric_value(text, "headway_batch_size_count", model="standin") == 3
        assert metric_value(text, "headway_replies_total", model="standin", route="/", code="ok") == 3
        for name in ("headway_queue_seconds_bucket", "headway_compute_seconds_bucket", "headway_queue_depth"):
            assert name in text
        import re

        label_names = {m for line in text.splitlines() if line.startswith("headway_")
                       for m in re.findall(r'(\w+)="', line)}
        assert label_names <= {"model", "route", "code", "reason", "le"}  # never a session


async def test_each_session_gets_its_own_chunk_and_concurrent_sessions_share_batches():
    with ServerThread([standin(20)]) as server:
        async def client(i: int) -> list[dict]:
            async with connect(server.url, compression=None) as ws:
                await ws.recv()
                return [await infer(ws, state_for(i)) for _ in range(5)]

        replies = await asyncio.gather(*(client(i) for i in range(8)))
    for i, session in enumerate(replies):
        for reply in session:
            assert np.allclose(reply["actions"], standin_actions(state_for(i)[None])[0])
    assert max(r["server_timing"]["batch_size"] for s in replies for r in s) > 1


async def test_query_selects_model_and_budget():
    with ServerThread([standin(0), standin(0, alias="other")]) as server:
        async with connect(server.url + "?model=other&budget_ms=250", compression=None) as ws:
            metadata = wire.unpackb(await ws.recv())
        assert metadata["model"] == "other" and metadata["budget_ms"] == 250
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url + "?model=nope"):
                pass
        assert info.value.response.status_code == 400
        with pytest.raises(InvalidStatus):
            async with connect(server.url + "?budget_ms=-3"):
                pass


@pytest.mark.parametrize("header", ["Bearer s3cret", "Api-Key s3cret"])
async def test_token_is_accepted_as_bearer_or_openpi_api_key(header):
    with ServerThread(config=ServerConfig(token="s3cret")) as server:
        async with connect(server.url, additional_headers={"Authorization": header}) as ws:
            assert wire.unpackb(await ws.recv())["model"] == "standin"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}])
async def test_missing_or_wrong_token_is_401_at_the_handshake(headers):
    with ServerThread(config=ServerConfig(token="s3cret")) as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url, additional_headers=headers):
                pass
        assert info.value.response.status_code == 401
        assert http_status(server.http + "/metrics", headers) == 401
        assert http_status(server.http + "/healthz") == 200  # probes need no token


async def test_browser_origins_must_be_allowed():
    with ServerThread(config=ServerConfig(allowed_origins=("https://ok.example",))) as server:
        with pytest.raises(InvalidStatus) as info:
            async with connect(server.url, origin="https://evil.example"):
                pass
        assert info.value.response.status_code == 403
        async with connect(server.url, origin="https://ok.example") as ws:
            await ws.recv()
        async with connect(server.url) as ws:  # no Origin: not a browser
            await ws.recv()


async def test_drain_finishes_in_flight_work_then_closes_1001_and_refuses_new_sessions():
    server = ServerThread([standin(300)], ServerConfig(budget_s=2.0)).__enter__()
    try:
        async with connect(server.url, compression=None) as ws:
            await ws.recv()
            await ws.send(wire.packb({"state": state_for(0)}))
            await asyncio.sleep(0.05)  # the request is now being computed
            drained = threading.Thread(target=server.drain)
            drained.start()
            reply = wire.unpackb(await ws.recv())
            assert np.allclose(reply["actions"], standin_actions(state_for(0)[None])[0])
            with pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1001
        await asyncio.get_running_loop().run_in_executor(None, drained.join, 10)
        with pytest.raises(OSError):
            async with connect(server.url, open_timeout=2):
                pass
    finally:
        server.drain()


async def test_sdk_gets_chunks_and_reconnects_after_a_timeout_without_reading_the_late_reply():
    with ServerThread([standin(300)], ServerConfig(budget_s=2.0)) as server:
        client = PolicyClient(server.url, timeout_s=0.1)
        await client.connect()
        with pytest.raises(RequestTimeout):
            await client.infer({"state": state_for(1)})
        reply = await client.infer({"state": state_for(2)}, timeout_s=5)
        # The reply to state 1 arrived on the closed session; this one is for state 2.
        assert np.allclose(reply["actions"], standin_actions(state_for(2)[None])[0])
        assert client.reconnects == 1
        await client.close()


async def test_sdk_reports_server_errors_with_their_code():
    with ServerThread() as server:
        async with PolicyClient(server.url) as client:
            with pytest.raises(ServerError) as info:
                await client.infer({"state": np.zeros(3, np.float32)})
            assert info.value.code == "bad_shape"
            reply = await client.infer({"state": state_for(0)})  # reconnected
            assert reply["actions"].shape == (50, 14)


async def test_sdk_retries_until_the_server_comes_up():
    from clients.server_process import free_port

    port = free_port()
    client = PolicyClient(f"ws://127.0.0.1:{port}/", backoff_s=0.05, connect_attempts=20)
    connecting = asyncio.create_task(client.connect())
    await asyncio.sleep(0.3)
    assert not connecting.done()
    server = ServerThread(port=port).__enter__()
    try:
        metadata = await asyncio.wait_for(connecting, 10)
        assert metadata["model"] == "standin"
        await client.close()
    finally:
        server.drain()


def test_sync_sdk_for_code_that_is_not_async():
    with ServerThread() as server:
        with SyncPolicyClient(server.url, timeout_s=2) as client:
            assert client.metadata["action_horizon"] == 50
            reply = client.infer({"state": state_for(3)})
        assert np.allclose(reply["actions"], standin_actions(state_for(3)[None])[0])


async def test_event_loop_keeps_answering_while_a_model_computes_for_200_ms():
    """Model code runs off the loop: during a 200 ms call, /healthz and another model's
    sessions keep answering, judged by how many answers come while the call is running
    (about a dozen per call; a loop blocked by the call would give one at most)."""
    with ServerThread([standin(200, alias="slow"), standin(0, alias="fast")],
                      ServerConfig(budget_s=2.0)) as server:
        loop = asyncio.get_running_loop()
        async with connect(server.url + "?model=slow", compression=None) as slow, \
                connect(server.url + "?model=fast", compression=None) as fast:
            await slow.recv()
            await fast.recv()
            fast_during, health_during = 0, 0
            for _ in range(2):
                await slow.send(wire.packb({"state": state_for(0)}))
                slow_reply = asyncio.create_task(slow.recv())
                while not slow_reply.done():
                    reply = await infer(fast, state_for(1))
                    status = await loop.run_in_executor(None, http_status, server.http + "/healthz")
                    if not slow_reply.done():
                        fast_during += reply["actions"].shape == (50, 14)
                        health_during += status == 200
                    await asyncio.sleep(0.01)
                assert wire.unpackb(slow_reply.result())["server_timing"]["infer_ms"] >= 200
    assert fast_during >= 4 and health_during >= 4


async def test_headway_serve_drains_on_sigterm_and_exits_0():
    import os
    import signal
    import subprocess
    import sys

    from clients.server_process import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "stream.cli", "serve", "--port", str(port),
                                "--standin-ms", "300", "--budget-ms", "2000", "--log-level", "WARNING"])
    try:
        client = PolicyClient(f"ws://127.0.0.1:{port}/", backoff_s=0.1, connect_attempts=50)
        await client.connect()
        ws = client._ws
        await ws.send(wire.packb({"state": state_for(0)}))
        await asyncio.sleep(0.05)
        os.kill(process.pid, signal.SIGTERM)
        reply = wire.unpackb(await ws.recv())  # the reply in flight is still delivered
        assert np.allclose(reply["actions"], standin_actions(state_for(0)[None])[0])
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd.code == 1001
        assert await asyncio.get_running_loop().run_in_executor(None, process.wait, 20) == 0
    finally:
        process.kill()


async def test_sdk_retries_an_at_capacity_refusal_until_a_session_frees():
    with ServerThread(config=ServerConfig(capacity=1)) as server:
        holder = PolicyClient(server.url)
        await holder.connect()
        with pytest.raises(ServerError) as info:
            await PolicyClient(server.url, connect_attempts=2, backoff_s=0.01).connect()
        assert info.value.code == "at_capacity"
        waiting = PolicyClient(server.url, connect_attempts=50, backoff_s=0.02, backoff_max_s=0.1)
        connecting = asyncio.create_task(waiting.connect())
        await asyncio.sleep(0.2)
        await holder.close()
        assert (await asyncio.wait_for(connecting, 10))["model"] == "standin"
        await waiting.close()


async def test_request_that_cannot_make_its_budget_is_answered_deadline_exceeded_and_session_stays_open():
    with ServerThread([standin(50)]) as server:
        async with connect(server.url + "?budget_ms=10", compression=None) as ws:
            await ws.recv()
            for _ in range(2):  # the session survives the first refusal
                await ws.send(wire.packb({"state": state_for(0), "id": 9}))
                error = json.loads(await ws.recv())
                assert (error["type"], error["code"], error["id"]) == ("error", "deadline_exceeded", 9)
        text = server.metrics_text()
    assert metric_value(text, "headway_deadline_misses_total", reason="predicted_at_submit") == 2
    assert metric_value(text, "headway_batch_size_count") == 0  # never run late in silence


async def test_pipelined_observation_replaces_the_queued_one_and_replies_keep_request_order():
    with ServerThread([standin(150)], ServerConfig(budget_s=2.0)) as server:
        async with connect(server.url, compression=None) as ws:
            await ws.recv()
            for i in (1, 2, 3):
                await ws.send(wire.packb({"state": state_for(i), "id": i}))
                await asyncio.sleep(0.03)  # 1 is computing when 2 and 3 arrive
            first = wire.unpackb(await ws.recv())
            second = json.loads(await ws.recv())
            third = wire.unpackb(await ws.recv())
    assert first["id"] == 1 and np.allclose(first["actions"], standin_actions(state_for(1)[None])[0])
    assert (second["code"], second["id"]) == ("superseded", 2)
    assert third["id"] == 3 and np.allclose(third["actions"], standin_actions(state_for(3)[None])[0])
