"""openpi's own client (the ``openpi-client`` package, unmodified) against a Headway server
configured as ``headway serve --model standin`` configures it."""

from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from openpi_client.action_chunk_broker import ActionChunkBroker
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from policies.standin import standin_actions
from server_harness import TRANSPORTS, ServerThread, state_for

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")
from stream import serve
from stream.server import ServerConfig


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    """Each test runs against the websockets server and through the ASGI adapter."""
    return request.param


def serve_args(*argv: str) -> tuple[list, ServerConfig]:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--model", "standin", "--standin-ms", "5", *argv])
    return serve.load_models(args), serve.config_from_args(args)


def test_websocket_client_policy_reads_metadata_and_gets_correct_chunks(transport):
    models, config = serve_args()
    with ServerThread(models, config, transport=transport) as server:
        policy = WebsocketClientPolicy("127.0.0.1", server.port)
        metadata = policy.get_server_metadata()
        assert (metadata["action_horizon"], metadata["action_dim"]) == (50, 14)
        for i in range(3):
            reply = policy.infer({"state": state_for(i)})
            assert reply["actions"].shape == (50, 14) and reply["actions"].dtype == np.float32
            assert np.allclose(reply["actions"], standin_actions(state_for(i)[None])[0])
            assert reply["server_timing"]["infer_ms"] >= 0


def test_action_chunk_broker_steps_through_each_chunk_and_refetches(transport):
    models, config = serve_args()
    with ServerThread(models, config, transport=transport) as server:
        broker = ActionChunkBroker(WebsocketClientPolicy("127.0.0.1", server.port), action_horizon=10)
        steps = [broker.infer({"state": state_for(k // 10)})["actions"] for k in range(25)]
    for k, action in enumerate(steps):
        chunk = standin_actions(state_for(k // 10)[None])[0]  # a new observation every 10 steps
        assert np.allclose(action, chunk[k % 10])


def test_openpi_api_key_authenticates_and_errors_arrive_as_runtime_errors(transport):
    models, config = serve_args("--token", "k3y")
    with ServerThread(models, config, transport=transport) as server:
        policy = WebsocketClientPolicy("127.0.0.1", server.port, api_key="k3y")
        assert policy.infer({"state": state_for(0)})["actions"].shape == (50, 14)
        with pytest.raises(RuntimeError, match="not_finite"):
            policy.infer({"state": np.full(14, np.nan, np.float32)})


def test_openpi_observation_with_images_and_prompt(transport):
    models, config = serve_args()
    with ServerThread(models, config, transport=transport) as server:
        policy = WebsocketClientPolicy("127.0.0.1", server.port)
        obs = {"state": state_for(5), "prompt": "fold the towel",
               "images": {"cam_high": np.zeros((224, 224, 3), np.uint8),
                          "cam_left_wrist": np.zeros((3, 224, 224), np.uint8)}}
        assert np.allclose(policy.infer(obs)["actions"], standin_actions(state_for(5)[None])[0])


def test_concurrent_openpi_clients_batched_together_each_get_the_chunk_for_their_own_state(transport):
    # Later flags win: a call long enough for the others to queue behind, and a budget they all make.
    models, config = serve_args("--standin-ms", "50", "--budget-ms", "2000")
    clients, rounds = 4, 4
    with ServerThread(models, config, transport=transport) as server:
        policies = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(clients)]
        start = threading.Barrier(clients)

        def run(i: int) -> list[dict]:
            replies = []
            for r in range(rounds):
                start.wait(10)  # all clients send at once, so requests queue behind a call
                replies.append(policies[i].infer({"state": state_for(10 * i + r)}))
            return replies

        with ThreadPoolExecutor(clients) as pool:
            replies = list(pool.map(run, range(clients)))
    for i, session in enumerate(replies):
        for r, reply in enumerate(session):
            assert np.allclose(reply["actions"], standin_actions(state_for(10 * i + r)[None])[0]), (i, r)
    assert max(reply["server_timing"]["batch_size"] for session in replies for reply in session) > 1
