"""/v1/chat through a real server on loopback: a tiny Llama loaded from a local directory
with --llm's loader, the chat client, the routes a chat model adds, slots, the process host."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from clients.chat import ChatClient
from clients.sdk import HandshakeRefused, ServerError
from server_harness import TRANSPORTS, ServerThread, standin
from stream import registry, wire
from stream.server import ServerConfig
from tiny_llms import tiny_llm


def chat_model(slots: int = 2) -> registry.LoadedModel:
    return registry.load(f"llm:{tiny_llm()}", registry.ModelOptions(chat_slots=slots, prefill_slice=8))


@pytest.fixture(scope="module", params=TRANSPORTS)
def server(request):
    """The websockets server, then the same server through the ASGI adapter."""
    with ServerThread([standin(0), chat_model()], transport=request.param) as running:
        yield running


def chat_url(server, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/v1/chat{query}"


async def test_a_prompt_in_pieces_is_answered_token_by_token_then_done(server):
    async with ChatClient(chat_url(server), max_tokens=6, context="A red cube at the left.") as chat:
        assert chat.ready["type"] == "ready" and chat.ready["model"]["name"] == tiny_llm().name
        for piece in ("Go to ", "the red", " cube, please."):
            await chat.say(piece)
        done = await chat.end()
    assert done["type"] == "done" and done["finish_reason"] in ("stop", "length")
    assert done["tokens"] == len(chat.tokens) and done["text"] == "".join(t["text"] for t in chat.tokens)
    assert done["ttft_ms"] > 0 and done["prompt_tokens"] > 0


async def test_the_next_turn_continues_the_conversation(server):
    async with ChatClient(chat_url(server), max_tokens=4) as chat:
        first = await chat.ask("Where are you?")
        second = await chat.ask("And now?")
    assert (first["turn"], second["turn"]) == (0, 1)
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["tokens"]


async def test_a_cancelled_reply_sends_no_token_after_its_done(server):
    async with ChatClient(chat_url(server), max_tokens=200, sampling={"temperature": 1.0, "seed": 3}) as chat:
        await chat.say("Tell me about the table.")
        await chat.end_prompt()
        first = await chat.next_token()
        assert first["type"] == "token"
        done = await chat.cancel()
        after = await chat.ask("Stop.")  # the session goes on; nothing of the cancelled turn comes in between
    assert done["turn"] == 0 and done["finish_reason"] in ("cancelled", "stop")
    assert after["turn"] == 1 and all(t["turn"] == 1 for t in chat.tokens)


async def test_the_policy_endpoints_still_get_the_policy_when_a_chat_model_is_first():
    with ServerThread([chat_model(), standin(0)]) as both:
        async with connect(f"ws://127.0.0.1:{both.port}/", compression=None) as ws:
            metadata = wire.unpackb(await ws.recv())
    assert metadata["model"] == "standin"


async def test_a_policy_named_at_the_chat_endpoint_is_refused_with_400(server):
    with pytest.raises(HandshakeRefused) as info:
        await ChatClient(chat_url(server, "?model=standin")).connect()
    assert info.value.status == 400
    assert info.value.reason == f"model 'standin' is not served at /v1/chat; models served there: {tiny_llm().name}"


async def test_a_chat_session_past_the_slot_count_is_closed_with_1013(server):
    held = [ChatClient(chat_url(server)) for _ in range(2)]
    for chat in held:
        await chat.connect()
    try:
        with pytest.raises(ServerError) as info:
            await ChatClient(chat_url(server)).connect()
        assert info.value.code == "at_capacity"
    finally:
        for chat in held:
            await chat.close()


async def test_closing_a_chat_session_frees_its_slot(server):
    for _ in range(3):  # more sessions, one after the other, than there are slots
        async with ChatClient(chat_url(server), max_tokens=2) as chat:
            await chat.ask("Hello.")


async def test_chat_runs_the_same_in_a_child_process_executor():
    async def reply(config: ServerConfig) -> list[int]:
        with ServerThread([chat_model()], config) as running:
            async with ChatClient(chat_url(running), max_tokens=5) as chat:
                await chat.ask("Which objects do you see?")
                return [t["id"] for t in chat.tokens]

    in_thread = await reply(ServerConfig())
    in_child = await reply(ServerConfig(executor_host="process"))
    assert in_thread and in_child == in_thread


async def test_a_text_hello_is_answered_in_json_frames(server):
    async with connect(chat_url(server), compression=None) as ws:
        await ws.send('{"type": "hello", "max_tokens": 2}')
        ready = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(ready, str) and '"type":"ready"' in ready
