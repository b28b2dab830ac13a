"""The /v1/chat session protocol with the real batcher (fake clock) and the real executor
(a tiny Llama from a local directory), without a socket or a thread (tests/chat_driver.py)."""

from __future__ import annotations

import pytest
import torch

from chat_driver import LockstepEngine, chat_model
from models.lm_text import encode_content, encode_template
from stream.batcher import Lane
from stream.chat_models import ChatExecutor
from tiny_llms import tiny_llm

PROMPT = "Could you move the red cube two steps left, then wait there for me?"
CONTEXT = "The table: a red cube at the left, a blue ball in the centre."


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def executor() -> ChatExecutor:
    return ChatExecutor(str(tiny_llm()), slots=4, threads=1, dtype="float32")  # exact comparisons below


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llm(), local_files_only=True, attn_implementation="sdpa").eval()


def engine_for(executor: ChatExecutor, **kwargs) -> LockstepEngine:
    for slot in list(executor.lm.caches):  # a fresh engine starts with every slot free
        executor.close_slot(slot)
    return LockstepEngine(chat_model(tiny_llm(), slots=executor.slots, **kwargs), executor)


def greedy(reference, ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids``, by transformers' own forward and cache."""
    from transformers import DynamicCache

    cache, out, feed = DynamicCache(), [], ids
    with torch.inference_mode():
        for _ in range(n):
            logits = reference(torch.tensor([feed]), cache=cache, use_cache=True).logits[0, -1]
            out.append(int(torch.argmax(logits)))
            feed = out[-1:]
    return out


def stream_prompt(engine: LockstepEngine, session, text: str, piece: int = 5, run_between: bool = True) -> None:
    for i in range(0, len(text), piece):
        engine.send(session, {"type": "prompt_delta", "text": text[i:i + piece]})
        if run_between:
            engine.run()


def reply_ids(session, turn: int = 0) -> list[int]:
    return [m["id"] for m in session.of_type("token") if m["turn"] == turn]


def test_hello_is_answered_ready_and_the_context_is_prefilled_before_any_prompt(executor):
    engine = engine_for(executor)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT, "sampling": {"temperature": 0}})
    [ready] = session.messages
    assert ready["type"] == "ready" and ready["model"]["format"] == "plain"
    assert ready["sampling"] == {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    engine.run()
    assert session.protocol.cached == len(session.protocol.ids) > 0
    assert {b.lane for b in engine.batches} == {Lane.PREFILL}


def test_the_prompt_is_prefilled_while_it_arrives_so_only_its_tail_is_left_at_prompt_end(executor):
    engine = engine_for(executor)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT})
    stream_prompt(engine, session, PROMPT)
    assert session.protocol.turn.text.held == " me?"  # the last word may still go on
    committed = len(session.protocol.ids)
    assert session.protocol.cached == committed
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    [done] = session.of_type("done")
    tokenizer = engine.model.chat.tokenizer
    tail = encode_content(tokenizer, " me?") + encode_template(tokenizer, engine.model.chat.format.user_suffix)
    assert done["prefilled_before_end"] == committed
    assert done["prompt_tokens"] == committed + len(tail)


@pytest.mark.parametrize("cut", range(0, len(PROMPT) + 1, 3))
def test_the_slot_holds_what_one_full_prefill_of_the_final_prompt_holds_wherever_the_prompt_splits(
        executor, reference, cut):
    from transformers import DynamicCache

    engine = engine_for(executor, max_tokens=1)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT})
    for piece in (PROMPT[:cut], PROMPT[cut:]):
        engine.send(session, {"type": "prompt_delta", "text": piece})
        engine.run()
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    model = engine.model
    fmt = model.chat.format
    final = fmt.encode(model.chat.tokenizer, fmt.conversation(CONTEXT, []) + fmt.user_turn(PROMPT))
    prompt_tokens = session.of_type("done")[0]["prompt_tokens"]
    assert session.protocol.ids[:prompt_tokens] == final
    cache = DynamicCache()
    with torch.inference_mode():
        logits = reference(torch.tensor([final]), cache=cache, use_cache=True).logits[0, -1]
    slot = executor.lm.caches[session.slot]
    for layer in range(len(cache.layers)):
        keys, values = slot.view(layer, len(final))
        torch.testing.assert_close(keys, cache.layers[layer].keys[0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(values, cache.layers[layer].values[0], atol=2e-5, rtol=1e-4)
    assert reply_ids(session)[0] == int(torch.argmax(logits))


def test_the_reply_streams_as_tokens_and_equals_greedy_decoding_of_the_full_prompt(executor, reference):
    engine = engine_for(executor, max_tokens=12)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT})
    stream_prompt(engine, session, PROMPT)
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    tokens, [done] = session.of_type("token"), session.of_type("done")
    fmt = engine.model.chat.format
    final = fmt.encode(engine.model.chat.tokenizer, fmt.conversation(CONTEXT, []) + fmt.user_turn(PROMPT))
    expected = greedy(reference, final, 12)
    stop = fmt.stop_ids
    n = next((i for i, t in enumerate(expected) if t in stop), len(expected))
    assert tokens and reply_ids(session) == expected[:n][:len(tokens)]
    assert done["text"] == "".join(m["text"] for m in tokens)
    assert done["finish_reason"] in ("length", "stop") and done["tokens"] == len(tokens)
    assert [m["index"] for m in tokens] == list(range(len(tokens)))


def test_done_reports_ttft_from_prompt_end_and_tokens_per_second(executor):
    engine = engine_for(executor, max_tokens=6)
    session = engine.connect()
    engine.send(session, {"type": "hello"})
    stream_prompt(engine, session, "Go to the blue ball.")
    end = engine.now
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    [done] = session.of_type("done")
    first_batch_end = next(b.start_ns for b in engine.batches if b.start_ns >= end)
    assert done["ttft_ms"] > 0 and done["ttft_ms"] * 1e6 >= first_batch_end - end
    if done["tokens"] > 1:
        assert done["tokens_per_s"] > 0


def test_slices_of_a_prompt_still_arriving_go_on_the_prefill_lane_the_rest_on_the_step_lane(executor):
    engine = engine_for(executor, prefill_slice=8, max_tokens=5)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT})
    stream_prompt(engine, session, PROMPT, piece=20)
    before_end = len(engine.batches)
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    assert before_end > 0
    for batch in engine.batches[:before_end]:
        [inputs] = batch.inputs
        assert batch.lane == Lane.PREFILL and 1 <= len(inputs["tokens"]) <= 8
        assert batch.cost.kind == ("prefill" if len(inputs["tokens"]) > 1 else "decode")
        assert inputs["sample"] is None
    after = engine.batches[before_end:]
    background = [i for i, b in enumerate(after) if b.lane == Lane.PREFILL]  # the reply kept, after done
    after = after[:background[0]] if background else after
    first_decode = next(i for i, b in enumerate(after) if b.inputs[0]["sample"] is not None) + 1
    tail, steps = after[:first_decode], after[first_decode:]
    assert all(1 <= len(b.inputs[0]["tokens"]) <= 8 for b in tail)  # the rest of the prompt, in slices
    assert all(len(b.inputs[0]["tokens"]) <= 1 and b.cost.kind == "decode" for b in steps)


def test_a_decode_step_waits_for_at_most_one_prefill_batch_holding_one_slice_of_each_other_session(executor):
    engine = engine_for(executor, prefill_slice=4, max_tokens=40)
    talker, *typists = engine.connect(), engine.connect(), engine.connect()
    for session in (talker, *typists):
        engine.send(session, {"type": "hello"})
    engine.run()
    stream_prompt(engine, talker, "Say something.", run_between=False)
    engine.send(talker, {"type": "prompt_end"})
    for typist in typists:  # long prompts arrive all at once: many slices queued
        engine.send(typist, {"type": "prompt_delta", "text": PROMPT * 3})
    engine.run()
    lanes = [(b.lane, b.sessions) for b in engine.batches]
    talker_steps = [i for i, (lane, who) in enumerate(lanes) if lane == Lane.STEP and talker in who]
    assert len(talker_steps) >= 5
    for a, b in zip(talker_steps, talker_steps[1:]):
        between = lanes[a + 1:b]
        assert len(between) <= 1, "a decode step waited for more than one prefill batch"
        for lane, who in between:
            assert lane == Lane.PREFILL and len(who) == len(set(who)) <= len(typists)


def test_a_slice_still_queued_on_the_prefill_lane_at_prompt_end_runs_on_the_step_lane(executor):
    engine = engine_for(executor, prefill_slice=4, max_tokens=4)
    talker, typist = engine.connect(), engine.connect()
    for session in (talker, typist):
        engine.send(session, {"type": "hello"})
    engine.run()
    engine.send(typist, {"type": "prompt_delta", "text": PROMPT * 3})  # many slices queued ahead
    engine.send(talker, {"type": "prompt_delta", "text": "Say something "})  # queued behind them
    engine.send(talker, {"type": "prompt_end"})
    engine.run()
    talker_batches = [b for b in engine.batches if talker in b.sessions]
    first_token = next(i for i, b in enumerate(talker_batches)
                       if b.inputs[b.sessions.index(talker)]["sample"] is not None)
    assert all(b.lane == Lane.STEP for b in talker_batches[:first_token + 1])  # the prompt, then its answer
    assert talker.of_type("done")[0]["prefilled_before_end"] < talker.of_type("done")[0]["prompt_tokens"]


def test_decode_steps_of_sessions_answering_at_once_share_batches(executor):
    engine = engine_for(executor, max_tokens=10)
    sessions = [engine.connect() for _ in range(3)]
    for i, session in enumerate(sessions):
        engine.send(session, {"type": "hello", "sampling": {"temperature": 1.0, "seed": i}})
        stream_prompt(engine, session, "Which objects do you see?", run_between=False)
    engine.run()
    for session in sessions:
        engine.send(session, {"type": "prompt_end"})
    engine.run()
    steps = [len(b.sessions) for b in engine.batches if b.lane == Lane.STEP]
    shortest = min(s.of_type("done")[0]["tokens"] for s in sessions)
    assert shortest > 3
    assert steps[:shortest - 1] == [3] * (shortest - 1)


def test_after_cancel_no_token_of_the_turn_follows_and_its_queued_step_is_dropped(executor):
    engine = engine_for(executor, max_tokens=40)
    session = engine.connect()
    engine.send(session, {"type": "hello"})
    stream_prompt(engine, session, PROMPT)
    engine.send(session, {"type": "prompt_end"})
    while len(session.of_type("token")) < 3:
        engine.step()
    engine.send(session, {"type": "cancel"})
    at_cancel = len(engine.batches)
    engine.run()
    assert all(b.lane == Lane.PREFILL for b in engine.batches[at_cancel:])  # the step queued ahead never ran
    kinds = [m["type"] for m in session.messages]
    assert kinds[-1] == "done" and session.of_type("done")[0]["finish_reason"] == "cancelled"
    assert len(session.of_type("token")) == 3


def test_the_turn_after_a_cancel_answers_as_a_fresh_session_with_the_same_history(executor):
    engine = engine_for(executor, max_tokens=8)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT})
    stream_prompt(engine, session, "Go to the red cube.")
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    stream_prompt(engine, session, PROMPT)
    engine.send(session, {"type": "prompt_end"})
    while len([m for m in session.of_type("token") if m["turn"] == 1]) < 3:
        engine.step()
    engine.send(session, {"type": "cancel"})
    stream_prompt(engine, session, "Where are you?")
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    first, second = (d["text"] for d in session.of_type("done")[:2])
    history = [{"role": "user", "content": "Go to the red cube."}, {"role": "assistant", "content": first},
               {"role": "user", "content": PROMPT}, {"role": "assistant", "content": second}]
    fresh = engine.connect()
    engine.send(fresh, {"type": "hello", "context": CONTEXT, "history": history})
    stream_prompt(engine, fresh, "Where are you?", piece=3)
    engine.send(fresh, {"type": "prompt_end"})
    engine.run()
    assert session.protocol.ids == fresh.protocol.ids
    assert reply_ids(session, turn=2) and reply_ids(session, turn=2) == reply_ids(fresh, turn=0)
    assert session.of_type("done")[2]["text"] == fresh.of_type("done")[0]["text"]


def test_a_prompt_delta_during_a_reply_stops_it_and_begins_the_next_turn(executor):
    engine = engine_for(executor, max_tokens=40)
    session = engine.connect()
    engine.send(session, {"type": "hello"})
    stream_prompt(engine, session, "Tell me")
    engine.send(session, {"type": "prompt_end"})
    while not session.of_type("token"):
        engine.step()
    engine.send(session, {"type": "prompt_delta", "text": " about the table."})
    [done] = session.of_type("done")
    assert done["finish_reason"] == "cancelled" and done["turn"] == 0
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    assert session.of_type("done")[1]["turn"] == 1
    assert session.protocol.history[2] == ("user", " about the table.")


def test_cancel_while_the_prompt_arrives_leaves_no_trace_of_it(executor):
    engine = engine_for(executor)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT})
    engine.run()
    before = list(session.protocol.ids)
    stream_prompt(engine, session, "Go to the gre")
    engine.send(session, {"type": "cancel"})
    engine.run()
    assert session.protocol.ids == before and session.protocol.cached <= len(before)
    assert session.of_type("done")[0]["finish_reason"] == "cancelled"


def test_without_incremental_prefill_nothing_is_prefilled_before_prompt_end_then_all_at_once(executor):
    engine = engine_for(executor, max_tokens=2)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT, "incremental": False})
    stream_prompt(engine, session, PROMPT)
    assert engine.batches == []
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    [first, *rest] = engine.batches
    assert len(first.inputs[0]["tokens"]) == session.of_type("done")[0]["prompt_tokens"]
    assert [b.inputs[0]["tokens"] for b in rest] == [[]] * len(rest)  # then decode steps only


def test_a_message_before_hello_closes_with_1008(executor):
    engine = engine_for(executor)
    session = engine.connect()
    engine.send(session, {"type": "prompt_delta", "text": "hi"})
    assert session.closed[0] == 1008 and session.messages[0]["code"] == "unknown_type"


def test_an_unknown_hello_field_closes_with_1008(executor):
    engine = engine_for(executor)
    session = engine.connect()
    engine.send(session, {"type": "hello", "temprature": 1.0})
    assert session.closed[0] == 1008 and session.messages[0]["code"] == "unknown_field"


def test_a_conversation_longer_than_the_context_closes_with_1009(executor):
    engine = engine_for(executor, max_tokens=8)
    session = engine.connect()
    engine.send(session, {"type": "hello"})
    for _ in range(300):
        engine.send(session, {"type": "prompt_delta", "text": "go left and then right "})
        if session.closed:
            break
    assert session.closed[0] == 1009 and session.messages[-1]["code"] == "context_full"


def test_drain_lets_the_reply_finish_then_closes_with_1001(executor):
    engine = engine_for(executor, max_tokens=5)
    session = engine.connect()
    engine.send(session, {"type": "hello"})
    stream_prompt(engine, session, "Where are you?")
    engine.send(session, {"type": "prompt_end"})
    engine.perform(session, session.protocol.drain())
    assert session.closed is None
    engine.run()
    assert session.of_type("done") and session.closed[0] == 1001


# -- early answer ----------------------------------------------------------------------------


def answer(engine: LockstepEngine, prompt: str, *, early: bool, pause: bool = False):
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT, "early_answer": early})
    stream_prompt(engine, session, prompt, piece=7)
    if pause:
        engine.send(session, {"type": "prompt_pause"})
    engine.run()
    return session


def test_early_answer_is_off_by_default(executor):
    engine = engine_for(executor, max_tokens=6)
    session = answer(engine, "Go to the red cube.", early=False)
    assert all(b.lane == Lane.PREFILL and b.inputs[0]["sample"] is None for b in engine.batches)
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    assert "early_answer" not in session.of_type("done")[0]


def test_a_guess_decodes_on_the_prefill_lane_and_sends_nothing_before_prompt_end(executor):
    engine = engine_for(executor, max_tokens=6)
    session = answer(engine, "Go to the red cube.", early=True)
    sampled = [b for b in engine.batches if b.inputs[0]["sample"] is not None]
    assert len(sampled) >= 2 and all(b.lane == Lane.PREFILL for b in engine.batches)
    assert session.of_type("token") == []


def test_a_guess_that_holds_sends_its_tokens_at_prompt_end_as_the_reply_without_guessing(executor):
    plain_engine = engine_for(executor, max_tokens=6)
    plain = answer(plain_engine, "Go to the red cube.", early=False)
    plain_engine.send(plain, {"type": "prompt_end"})
    plain_engine.run()
    engine = engine_for(executor, max_tokens=6)
    session = answer(engine, "Go to the red cube.", early=True)
    batches = len(engine.batches)
    engine.send(session, {"type": "prompt_end"})
    assert session.of_type("token") and len(engine.batches) == batches  # sent before any batch ran
    engine.run()
    [done] = session.of_type("done")
    assert done["early_answer"] == {"guesses": 1, "paid": True} and done["ttft_ms"] == 0
    assert reply_ids(session) == reply_ids(plain)
    assert session.protocol.ids == plain.protocol.ids


def test_a_wrong_guess_is_rolled_back_and_the_reply_is_the_one_without_guessing(executor):
    prompt = "Go left. Then stop there, please"
    plain_engine = engine_for(executor, max_tokens=6)
    plain = answer(plain_engine, prompt, early=False)
    plain_engine.send(plain, {"type": "prompt_end"})
    plain_engine.run()
    engine = engine_for(executor, max_tokens=6)
    session = engine.connect()
    engine.send(session, {"type": "hello", "context": CONTEXT, "early_answer": True})
    engine.send(session, {"type": "prompt_delta", "text": "Go left."})
    engine.run()  # the guess decodes its whole reply
    engine.send(session, {"type": "prompt_delta", "text": " Then stop there, please"})
    engine.run()
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    [done] = session.of_type("done")
    assert done["early_answer"] == {"guesses": 1, "paid": False}
    assert reply_ids(session) == reply_ids(plain) and session.protocol.ids == plain.protocol.ids


def test_a_pause_of_the_speech_recogniser_starts_a_guess(executor):
    engine = engine_for(executor, max_tokens=4)
    session = answer(engine, "go to the blue ball", early=True, pause=True)
    assert any(b.inputs[0]["sample"] is not None for b in engine.batches)
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    assert session.of_type("done")[0]["early_answer"] == {"guesses": 1, "paid": True}


def test_prompt_end_during_a_guess_moves_its_decoding_to_the_step_lane(executor):
    engine = engine_for(executor, max_tokens=12)
    session = engine.connect()
    engine.send(session, {"type": "hello", "early_answer": True})
    stream_prompt(engine, session, "Go to the red cube.", run_between=False)
    while not any(b.inputs[0]["sample"] is not None for b in engine.batches):
        engine.step()  # until the guess is under way
    at_end = len(engine.batches)
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    answering = [b for b in engine.batches[at_end:] if b.inputs[0]["sample"] is not None]
    assert answering and all(b.lane == Lane.STEP for b in answering)
    assert session.of_type("done")[0]["early_answer"]["paid"]


def test_a_guess_waits_until_the_prompt_so_far_is_in_the_cache(executor):
    engine = engine_for(executor, max_tokens=4)
    session = engine.connect()
    engine.send(session, {"type": "hello", "early_answer": True})
    engine.send(session, {"type": "prompt_delta", "text": "Go to the red cube."})  # its prefill is queued
    assert not session.protocol.turn.speculative
    engine.run()
    assert session.protocol.turn.speculative  # taken up once the prefill caught up
    engine.send(session, {"type": "prompt_end"})
    engine.run()
    assert session.of_type("done")[0]["early_answer"] == {"guesses": 1, "paid": True}
