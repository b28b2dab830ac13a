"""Serving a user's own policy: ``headway serve --policy MODULE:FACTORY`` with openpi's
observation layouts (LIBERO, DROID, ALOHA), ``--policy-arg`` and ``--obs-map``.

The policies are ``plugin_policies``' target flows, whose every chunk is a known function of
the observation (``expected_chunk``) whatever the noise and the batch: each reply is checked
against it. openpi's own client (``openpi-client``, unmodified) talks to the server.
"""

from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from plugin_policies import expected_chunk
from server_harness import ServerThread, metric_value
from stream import serve
from stream.hosts import RunBatch, WorkItem
from stream.policy_models import ChunkPolicyExecutor, build_plugin
from stream.protocol import decode
from stream.server import ServerConfig
from stream.wire import packb, unpackb

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")


def serve_args(*argv: str) -> tuple[list, ServerConfig]:
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--asr", "none", "--tts", "none", *argv])  # policies only: no speech models beside them
    return serve.load_models(args), serve.config_from_args(args)


def image(seed: int, shape=(224, 224, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def libero_observation(seed: int) -> dict:
    """What openpi's examples/libero/main.py sends."""
    rng = np.random.default_rng(seed)
    return {"observation/state": rng.standard_normal(8),  # float64, as LIBERO's proprio arrives
            "observation/image": image(seed), "observation/wrist_image": image(seed + 100),
            "prompt": f"put the bowl on plate {seed}"}


def droid_observation(seed: int) -> dict:
    """What openpi's examples/droid/main.py sends."""
    rng = np.random.default_rng(seed)
    return {"observation/exterior_image_1_left": image(seed), "observation/wrist_image_left": image(seed + 1),
            "observation/joint_position": rng.standard_normal(7), "observation/gripper_position": rng.random(1),
            "prompt": "pick up the marker"}


def aloha_observation(seed: int) -> dict:
    """What openpi's ALOHA examples send: ``state`` and ``images``, each camera [3, 224, 224]."""
    cams = ("cam_high", "cam_left_wrist", "cam_right_wrist")
    return {"state": np.random.default_rng(seed).standard_normal(14).astype(np.float32),
            "images": {c: image(seed + i, (3, 224, 224)) for i, c in enumerate(cams)}, "prompt": "fold"}


def float32_vectors(observation: dict) -> dict:
    """The float64 vectors as float32, as validation hands them on (so expected chunks match exactly)."""
    return {k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == np.float64 else v)
            for k, v in observation.items()}


def as_policy_sees_it(observation: dict) -> dict:
    """Images [H, W, 3], as the server hands them on."""
    out = dict(observation)
    if "images" in out:
        out["images"] = {c: v.transpose(1, 2, 0) for c, v in out["images"].items()}
    return out


@pytest.mark.parametrize("factory,observation", [("libero", libero_observation), ("droid", droid_observation),
                                                 ("aloha", aloha_observation)])
def test_openpi_client_gets_the_chunk_of_each_observation_layout(factory, observation):
    models, config = serve_args("--policy", f"plugin_policies:{factory}")
    spec = build_plugin(f"plugin_policies:{factory}").spec
    with ServerThread(models, config) as server:
        policy = WebsocketClientPolicy("127.0.0.1", server.port)
        metadata = policy.get_server_metadata()
        assert (metadata["model"], metadata["action_horizon"], metadata["action_dim"]) == \
            (factory, spec.horizon, spec.action_dim)
        assert sorted(metadata["observation"]) == sorted(spec.inputs)
        for seed in range(3):
            obs = observation(seed)
            actions = policy.infer(obs)["actions"]
            assert actions.dtype == np.float32
            np.testing.assert_allclose(actions, expected_chunk(as_policy_sees_it(obs), spec), rtol=1e-5, atol=1e-5)


def test_concurrent_libero_clients_share_batches_and_each_gets_the_chunk_of_its_own_observation():
    models, config = serve_args("--policy", "plugin_policies:libero", "--budget-ms", "2000")
    from plugin_policies import libero

    spec, clients, rounds = libero().spec, 4, 4
    with ServerThread(models, config) as server:
        policies = [WebsocketClientPolicy("127.0.0.1", server.port) for _ in range(clients)]
        start = threading.Barrier(clients)

        def run(i: int) -> list[tuple[dict, dict]]:
            replies = []
            for r in range(rounds):
                start.wait(10)
                obs = libero_observation(10 * i + r)
                replies.append((obs, policies[i].infer(obs)))
            return replies

        with ThreadPoolExecutor(clients) as pool:
            sessions = list(pool.map(run, range(clients)))
        batches = metric_value(server.metrics_text(), "headway_batch_size_count", model="libero")
    for session in sessions:
        for obs, reply in session:
            np.testing.assert_allclose(reply["actions"], expected_chunk(obs, spec), rtol=1e-5, atol=1e-5)
    assert max(reply["server_timing"]["batch_size"] for session in sessions for _, reply in session) > 1
    assert 0 < batches < clients * rounds  # the engine's metrics count the plug-in's batches


def test_a_key_the_policy_does_not_declare_is_refused_naming_the_expected_ones():
    models, config = serve_args("--policy", "plugin_policies:libero")
    with ServerThread(models, config) as server:
        policy = WebsocketClientPolicy("127.0.0.1", server.port)
        obs = libero_observation(0)
        obs["observation/imag"] = obs.pop("observation/image")
        with pytest.raises(RuntimeError) as refused:
            policy.infer(obs)
    message = str(refused.value)
    assert "unknown_field" in message and "'observation/imag'" in message
    assert "observation/state, observation/image, observation/wrist_image, prompt" in message


def test_obs_map_serves_a_client_whose_keys_differ_and_drops_a_mapped_away_key():
    # ALOHA-style keys for the LIBERO policy: renamed, and a key the policy has no use for dropped.
    models, config = serve_args("--policy", "plugin_policies:libero", "--obs-map", "state=observation/state",
                                "--obs-map", "cam_high=observation/image", "--obs-map", "cam_wrist=observation/wrist_image",
                                "--obs-map", "episode=")
    from plugin_policies import libero

    spec = libero().spec
    obs = libero_observation(3)
    sent = {"state": obs["observation/state"], "cam_high": obs["observation/image"],
            "cam_wrist": obs["observation/wrist_image"], "prompt": obs["prompt"], "episode": "7"}
    with ServerThread(models, config) as server:
        policy = WebsocketClientPolicy("127.0.0.1", server.port)
        assert sorted(policy.get_server_metadata()["observation"]) == ["cam_high", "cam_wrist", "episode", "prompt",
                                                                       "state"]
        actions = policy.infer(sent)["actions"]
    np.testing.assert_allclose(actions, expected_chunk(obs, spec), rtol=1e-5, atol=1e-5)


def test_policy_args_reach_the_factory():
    models, _ = serve_args("--policy", "plugin_policies:libero=fast", "--policy-arg", "num_steps=2",
                           "--policy-arg", "control_hz=20")
    assert (models[0].name, models[0].metadata["num_steps"], models[0].metadata["control_hz"]) == ("fast", 2, 20.0)


def test_policies_come_first_and_models_follow():
    models, _ = serve_args("--model", "standin", "--policy", "plugin_policies:droid")
    assert [m.name for m in models] == ["droid", "standin", "world-lm"]  # then the chat model (/v1/chat only)


@pytest.mark.parametrize("target,complaint", [
    ("no_such_module_here:make", "No module named 'no_such_module_here'"),
    ("plugin_policies:nothing", "has no callable 'nothing'"),
    ("plugin_policies", "expected MODULE:FACTORY"),
    ("plugin_policies:expected_chunk", "missing a required argument: 'observation'"),
])
def test_a_policy_that_cannot_be_served_is_refused_with_the_reason(target, complaint):
    with pytest.raises((ValueError, ImportError)) as refused:
        serve_args("--policy", target)
    assert str(refused.value).startswith(f"--policy {target}:")
    assert complaint in str(refused.value)


def test_a_policy_arg_the_factory_does_not_take_is_refused_naming_its_parameters():
    with pytest.raises(ValueError, match=r"\(control_hz: .* num_steps: .*\) cannot take \{'horizon': 4\}"):
        serve_args("--policy", "plugin_policies:libero", "--policy-arg", "horizon=4")


def test_an_object_missing_part_of_the_interface_is_refused_naming_the_parts():
    from policies.base import PolicySpec, VectorInput
    from stream.policy_models import check_plugin

    class Half:
        spec = PolicySpec("flow", horizon=4, action_dim=2, control_hz=10.0, inputs={"state": VectorInput(2)})

        def encode(self, observation):
            return observation

    with pytest.raises(ValueError, match="needs normalize_actions, unnormalize_actions, velocity"):
        check_plugin(Half())


def test_obs_map_to_a_key_the_policy_does_not_have_is_refused_naming_its_keys():
    with pytest.raises(ValueError, match="no field 'observation/images'.*observation/state"):
        serve_args("--policy", "plugin_policies:libero", "--obs-map", "image=observation/images")


# -- /v1/policy: real-time chunking and future state for a plug-in --------------------------


def realtime_executor(factory: str) -> ChunkPolicyExecutor:
    return ChunkPolicyExecutor(f"plugin_policies:{factory}", max_batch_size=8)


def test_future_state_conditions_a_plugin_on_its_last_pending_targets_and_keeps_the_pending_actions():
    executor = realtime_executor("droid")
    spec = executor.spec
    obs = float32_vectors(droid_observation(1))
    prev = np.random.default_rng(2).standard_normal((spec.horizon, spec.action_dim)).astype(np.float32)
    [chunk] = executor.run(RunBatch(1, [WorkItem({**obs, "prev_chunk": prev, "d": 3, "s": 4, "future_state": True})]))
    rolled = {**obs, "observation/joint_position": prev[2, :7], "observation/gripper_position": prev[2, 7:]}
    np.testing.assert_allclose(chunk[:3], prev[:3])
    np.testing.assert_allclose(chunk[3:], expected_chunk(rolled, spec)[:spec.horizon - 3], rtol=1e-5, atol=1e-5)


def test_rtc_items_of_a_plugin_batch_each_get_the_chunk_of_their_own_observation():
    executor = realtime_executor("libero")
    spec = executor.spec
    observations = [libero_observation(i) for i in range(3)]
    prev = np.zeros((spec.horizon, spec.action_dim), np.float32)
    items = [WorkItem(observations[0]), WorkItem({**observations[1], "prev_chunk": prev, "d": 2, "s": 4}),
             WorkItem({**observations[2], "prev_chunk": prev, "d": 1, "s": 4}, degraded=True)]
    chunks = executor.run(RunBatch(1, items))
    for obs, chunk in zip(observations, chunks):
        np.testing.assert_allclose(chunk, expected_chunk(obs, spec), rtol=1e-5, atol=1e-5)


def hello(url: str, message: dict) -> tuple[dict, object]:
    ws = connect(url)
    ws.send(packb({"type": "hello", **message}))
    return decode(ws.recv(timeout=10)), ws


def test_a_robot_session_on_v1_policy_gets_the_pending_actions_then_the_chunk_of_the_rolled_forward_state():
    models, config = serve_args("--policy", "plugin_policies:droid", "--budget-ms", "2000")
    from plugin_policies import droid

    spec = droid().spec
    observations = [float32_vectors(droid_observation(i)) for i in range(3)]
    reports = [None, {"request_id": 0, "tick_sent": 0, "tick_arrived": 2},  # the first round trip is warm-up
               {"request_id": 1, "tick_sent": 4, "tick_arrived": 6}]  # then d = 2 ticks
    chunks = []
    with ServerThread(models, config) as server:
        ready, ws = hello(server.url + "v1/policy", {"strategy": "rtc", "future_state": True, "batch_hold": False})
        with ws:
            assert ready["type"] == "ready" and ready["model"]["future_state"] is True
            for request_id, (obs, report) in enumerate(zip(observations, reports)):
                message = {"type": "observation", "request_id": request_id, "tick": 4 * request_id, **obs}
                ws.send(packb({**message, "report": report} if report else message))
                reply = unpackb(ws.recv(timeout=10))
                assert (reply["type"], reply["request_id"], reply["start_tick"]) == ("chunk", request_id, 4 * request_id)
                chunks.append((reply["d"], reply["actions"]))
    assert [d for d, _ in chunks] == [0, 0, 2]
    np.testing.assert_allclose(chunks[0][1], expected_chunk(observations[0], spec), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunks[1][1], expected_chunk(observations[1], spec), rtol=1e-5, atol=1e-5)
    previous = chunks[1][1][4:]  # the plan of request 1, from tick 8 on
    last_pending = previous[1]  # the target commanded at tick 9, where the new chunk starts at tick 10
    rolled = {**observations[2], "observation/joint_position": last_pending[:7],
              "observation/gripper_position": last_pending[7:]}
    np.testing.assert_allclose(chunks[2][1][:2], previous[:2])
    np.testing.assert_allclose(chunks[2][1][2:], expected_chunk(rolled, spec)[:spec.horizon - 2], rtol=1e-5, atol=1e-5)


def test_a_hello_asking_future_state_of_a_policy_without_a_rollout_is_refused():
    models, config = serve_args("--policy", "plugin_policies:aloha")
    with ServerThread(models, config) as server:
        error, ws = hello(server.url + "v1/policy", {"strategy": "rtc", "future_state": True})
        with ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
    assert error["type"] == "error" and error["code"] == "unsupported" and "future_state" in error["message"]
    assert closed.value.rcvd.code == 1008


def test_a_plugin_runs_the_same_in_an_executor_process():
    models, config = serve_args("--policy", "plugin_policies:libero")
    from dataclasses import replace

    from plugin_policies import libero

    spec = libero().spec
    with ServerThread(models, replace(config, executor_host="process")) as server:
        policy = WebsocketClientPolicy("127.0.0.1", server.port)
        obs = libero_observation(9)
        actions = policy.infer(obs)["actions"]
    np.testing.assert_allclose(actions, expected_chunk(float32_vectors(obs), spec), rtol=1e-5, atol=1e-5)
