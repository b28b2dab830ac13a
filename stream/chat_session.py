"""``/v1/chat``: a conversation with a causal LM whose prompt arrives in pieces, sans I/O.

The protocol (docs/chat-protocol.md): ``hello`` (context, history, sampling, ``max_tokens``)
-> ``ready``; then per turn ``prompt_delta`` pieces and a ``prompt_end``, answered by one
``token`` message per generated token and a ``done`` with the reply, ``ttft_ms`` (from
``prompt_end`` to the first token), ``tokens_per_s`` and the reply's structured output when
it is a JSON object. ``cancel``, or a ``prompt_delta`` while a reply is being generated
(barge-in), stops the reply at once; the conversation goes on.

How the prompt is prefilled while it arrives. The session owns the truth: ``ids``, the token
ids its slot's KV cache must hold (the conversation so far, :class:`models.lm_text.ChatFormat`);
``cached`` of them are known to be in the cache. A piece of prompt is tokenised up to its
last stable boundary (:class:`models.lm_text.IncrementalTokenizer`; the unstable tail is held
back), its tokens are appended to ``ids`` and prefilled in slices of at most
``prefill_slice`` tokens on the engine's ``PREFILL`` lane. At ``prompt_end`` only the
held-back tail and the assistant header remain; the slice that ends there samples the first
token, and decode steps follow, one token each. From ``prompt_end`` on, the session's
requests -- what is left of the prompt, then the decode steps -- go on the ``STEP`` lane (a
slice still queued on the ``PREFILL`` lane is moved up, :class:`~stream.session_actions.PromoteQueued`):
the user is waiting for them, as for a decode step, so they do not queue behind other
sessions' prompts still arriving. (A step batch holds at most one request per session, so
a decode step still waits for at most one slice of any other session.) Every request names the cache
position it continues from, so rolling back -- a cancelled reply, a re-tokenised tail, a
reply re-tokenised as text -- is only a smaller position in the next request: the executor
cuts the slot's cache back to it.

While the prompt arrives, a session has one prefill request in flight: the tokens committed
meanwhile wait and go together in the next slice, so slices grow with the arrival rate
instead of costing a forward per word (a forward over one token costs nearly what one over
thirty does: the weights are read either way). After ``prompt_end``, up to
:data:`PIPELINE_DEPTH` requests are queued at once. A decode step does not wait for the
previous token to come back to the session: it feeds "the token this slot sampled last", so
every batch finds every session's next step queued. When a reply ends, the step already
queued is dropped (:class:`~stream.session_actions.CancelQueued`) and the answer of any
request given up is ignored.

A decode step carries its input token when the session knows it, and "the token this slot
sampled last" only when it is queued before that token came back; so work given up and
submitted again never depends on what the slot sampled for a request whose answer was
ignored.

**Early answer** (hello ``early_answer: true``; off by default). When the prompt looks
complete -- its text ends a sentence (``.``, ``?``, ``!``), or the client sends
``prompt_pause`` (its speech recogniser heard a pause) -- and the prompt so far is in the
cache (a session whose prefill lags does not add guesses to it), the session guesses that
it has ended: it prefills the held-back tail and the assistant header and decodes the reply on the
``PREFILL`` lane (work for a prompt still arriving: below everyone's decode steps), sending
nothing. If ``prompt_end`` comes with no new text, the guess paid: the tokens decoded so far
go out at once and decoding goes on on the ``STEP`` lane. A ``prompt_delta`` instead means
the prompt went on: the guessed tail and its tokens are rolled back (a smaller position) and
the prompt is prefilled as usual. ``done`` says how many guesses the turn made and whether
the last one paid.

``incremental: false`` in the hello makes the session prefill nothing before ``prompt_end``
and then all of it in one request: the comparison a benchmark needs (a server without
incremental prefill), not a mode to serve with.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from models.lm_text import (ChatFormat, IncrementalTokenizer, ReplyText, common_prefix, encode_template,
                            parse_structured)
from stream import protocol
from stream.batcher import Lane
from stream.engine import Result
from stream.errors import CLOSE_GOING_AWAY, ProtocolError
from stream.registry import ChatText, LoadedModel
from stream.session_actions import Action, CancelQueued, Close, PromoteQueued, Send, Submit, report_and_close

PIPELINE_DEPTH = 2  # requests of one answering session queued at once
# Chat requests are ordered by their lanes and, within a lane, by arrival; their deadline is
# far enough never to drop one (a reply that stalls is worse than a late token).
BUDGET_S = 600.0
MAX_DELTA_CHARS = 4096
MAX_CONTEXT_CHARS = 65536
MAX_HISTORY_TURNS = 256


@dataclass
class _Turn:
    index: int
    start: int  # len(ids) when the turn began: a cancelled prompt rolls back to here
    content_at: int  # where the user's text begins in ids
    text: IncrementalTokenizer
    answering: bool = False
    sample_at: int = 0  # len(ids) at prompt_end: the model answers after this many tokens
    cached_at_end: int = 0
    end_ns: int = 0
    first_ns: int | None = None
    last_ns: int = 0
    generated: list[int] = field(default_factory=list)  # sampled, in order (no end-of-sequence token)
    reply: ReplyText | None = None
    decode_submitted: int = 0  # decode steps asked for: step k feeds generated[k] at sample_at + k
    arrival_ns: int = 0
    # Early answer: decoding before prompt_end on a guess that the prompt is complete.
    speculative: bool = False
    guess_base: int = 0  # len(ids) before the guessed tail: where a wrong guess rolls back to
    held: list[dict] = field(default_factory=list)  # token messages decoded on the guess, not sent yet
    guess_finished: str | None = None  # the guessed reply ended before prompt_end: its finish_reason
    guesses: int = 0
    paid: bool = False
    guess_wanted: bool = False  # the prompt looked complete while its prefill still lagged

    @property
    def working(self) -> bool:
        """The model is producing this turn's reply (answering, or on a guess)."""
        return self.answering or self.speculative


@dataclass
class _Step:
    key: int
    position: int
    count: int  # tokens the step appends
    sample: bool
    decode: bool


class ChatProtocol:
    """``/v1/chat`` (see the module docstring). A stepped session: it holds a slot of its
    model from admission to close."""

    route = "/v1/chat"
    stepped = True
    hello_timeout_s: float | None = 10.0

    def __init__(self, model: LoadedModel, *, budget_s: float = BUDGET_S, max_pending: int = 8):
        """``budget_s`` and ``max_pending`` are the server's settings for request/reply
        endpoints; a chat session takes them and keeps its own (:data:`BUDGET_S`)."""
        if model.chat is None:
            raise ValueError(f"model {model.name!r} is not a chat model")
        self.model = model
        self.chat: ChatText = model.chat
        self.format = self.chat.format
        self.tokenizer = self.chat.tokenizer
        self.closing = False
        self.draining = False
        self.ready = False
        self.text_frames = False
        self.incremental = True
        self.early_answer = False
        self.sampling: dict[str, Any] = {}
        self.max_tokens = self.chat.max_tokens
        self.ids: list[int] = []
        self.cached = 0
        self.submitted = 0
        self.inflight: dict[int, _Step] = {}
        self.history: list[tuple[str, str]] = []
        self.turn: _Turn | None = None
        self.turns = itertools.count()
        self.stalled = False  # an engine error stopped prefilling until the client speaks again
        self._keys = itertools.count()

    @classmethod
    def serves(cls, model: LoadedModel) -> bool:
        return model.chat is not None

    # -- what the pump calls ------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return False  # pieces of prompt are small; the context bound caps what a session holds

    def refused(self, error: ProtocolError) -> list[Action]:
        self.closing = True
        return report_and_close(error)

    def opened(self) -> list[Action]:
        return []  # the client speaks first

    def hello_timed_out(self) -> list[Action]:
        return self.refused(ProtocolError("missing_field", f"no hello within {self.hello_timeout_s:.0f} s"))

    def drain(self) -> list[Action]:
        """Finish the reply being generated, then close with 1001 (at once when there is none)."""
        self.draining = True
        if self.closing or (self.turn is not None and self.turn.answering):
            return []
        self.closing = True
        return [Close(CLOSE_GOING_AWAY, "server shutting down")]

    def received(self, frame: bytes | str, now_ns: int) -> list[Action]:
        if self.closing:
            return []
        try:
            message = protocol.decode(frame)
            kind = protocol.message_type(message)
            if not self.ready:
                if kind != "hello":
                    raise ProtocolError("unknown_type", f"the first message is a 'hello', not {kind!r}")
                self.text_frames = isinstance(frame, str)
                return self._hello(message, now_ns)
            if self.draining:
                return []
            self.stalled = False
            if kind == "prompt_delta":
                _fields(message, {"text"})
                text = message.get("text")
                if not isinstance(text, str):
                    raise ProtocolError("bad_type" if "text" in message else "missing_field",
                                        "prompt_delta: 'text' is a string")
                if len(text) > MAX_DELTA_CHARS:
                    raise ProtocolError("bad_shape", f"prompt_delta: at most {MAX_DELTA_CHARS} characters a piece")
                return self._delta(text, now_ns)
            if kind == "prompt_end":
                _fields(message, set())
                return self._prompt_end(now_ns)
            if kind == "cancel":
                _fields(message, set())
                return self._cancel(now_ns)
            if kind == "prompt_pause":
                _fields(message, set())
                return self._guess(now_ns)
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; this endpoint takes "
                                                "'prompt_delta', 'prompt_end', 'prompt_pause' and 'cancel'")
        except ProtocolError as exc:
            return self._fail(exc)

    def answered(self, key: int, outcome: Result | ProtocolError, now_ns: int) -> list[Action]:
        step = self.inflight.pop(key, None)
        if step is None or self.closing:  # an answer to work given up
            return []
        if isinstance(outcome, ProtocolError):
            return self._engine_error(outcome, now_ns)
        output = outcome.output
        if output.get("error"):
            return self._fail(ProtocolError("internal", "the model refused a step of this session"))
        self.cached = step.position + step.count
        actions: list[Action] = []
        if step.sample and self.turn is not None and self.turn.working:
            actions += self._token(int(output["token"]), now_ns)
        return actions + self._schedule(now_ns)

    # -- the conversation ------------------------------------------------------------------

    def _hello(self, message: dict, now_ns: int) -> list[Action]:
        _fields(message, {"model", "context", "history", "sampling", "max_tokens", "incremental", "early_answer"})
        name = message.get("model")
        if name is not None and name != self.model.name:
            raise ProtocolError("bad_type", f"model: this session serves {self.model.name!r}; "
                                            "another model is chosen with ?model=NAME in the URL")
        context = message.get("context") or ""
        if isinstance(context, dict):  # structured context (the demo table): the model's own text of it
            if self.chat.context_text is None:
                raise ProtocolError("bad_type", f"context: model {self.model.name!r} takes a text context (a string)")
            try:
                context = self.chat.context_text(context)
            except ValueError as exc:
                raise ProtocolError("bad_type", f"context: {exc}") from None
        if not isinstance(context, str) or len(context) > MAX_CONTEXT_CHARS:
            raise ProtocolError("bad_type", f"context: a string of at most {MAX_CONTEXT_CHARS} characters"
                                + (", or the table's map" if self.chat.context_text is not None else ""))
        self.history = _history(message.get("history") or [])
        self.sampling = _sampling(message.get("sampling") or {})
        max_tokens = message.get("max_tokens", self.chat.max_tokens)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= self.chat.max_tokens:
            raise ProtocolError("bad_type", f"max_tokens: an integer from 1 to {self.chat.max_tokens}")
        self.max_tokens = max_tokens
        incremental = message.get("incremental", True)
        if not isinstance(incremental, bool):
            raise ProtocolError("bad_type", "incremental: true or false")
        self.incremental = incremental
        early = message.get("early_answer", False)
        if not isinstance(early, bool):
            raise ProtocolError("bad_type", "early_answer: true or false")
        self.early_answer = early and incremental
        self._append(self.format.encode(self.tokenizer, self.format.conversation(context, self.history)))
        self.ready = True
        ready = {"type": "ready",
                 "model": {"name": self.model.name, "max_context": self.chat.max_context,
                           "format": self.format.name},
                 "sampling": self.sampling, "max_tokens": self.max_tokens, "incremental": self.incremental,
                 "early_answer": self.early_answer, "prefill_slice_tokens": self.chat.prefill_slice}
        return [self._send(ready)] + self._schedule(now_ns)

    def _begin_turn(self) -> None:
        start = len(self.ids)
        self._append(encode_template(self.tokenizer, self.format.user_prefix))
        self.turn = _Turn(next(self.turns), start, len(self.ids),
                          IncrementalTokenizer(self.tokenizer, lead=self.format.content_lead))

    def _delta(self, text: str, now_ns: int) -> list[Action]:
        actions: list[Action] = []
        if self.turn is not None and self.turn.answering:  # barge-in: the user speaks over the reply
            actions += self._finish_reply("cancelled", now_ns)
        if self.turn is not None and self.turn.speculative:  # the prompt went on: the guess was wrong
            actions += self._drop_guess()
        if self.turn is None:
            self._begin_turn()
        self.turn.guess_wanted = False
        self._append(self.turn.text.push(text))
        actions += self._schedule(now_ns)
        if self.early_answer and text and _ends_sentence(self.turn.text.text):
            actions += self._guess(now_ns)
        return actions

    def _guess(self, now_ns: int) -> list[Action]:
        """Early answer: take the prompt as complete and decode, sending nothing yet -- once
        the prompt so far is in the cache (a guess must not hold up the prefill of a prompt
        that goes on, nor add work while the session's prefill lags: it waits until then)."""
        turn = self.turn
        if not self.early_answer or turn is None or turn.working:
            return []
        if self.inflight or self.cached < len(self.ids):
            turn.guess_wanted = True  # taken up by _schedule once the prefill has caught up
            return []
        turn.guess_wanted = False
        tail = turn.text.peek() + encode_template(self.tokenizer, self.format.user_suffix)
        if len(self.ids) + len(tail) + self.max_tokens > self.chat.max_context:
            return []  # no room to guess; prompt_end will say context_full if it comes to that
        turn.guess_base = len(self.ids)
        self.ids.extend(tail)
        turn.speculative = True
        turn.guesses += 1
        turn.sample_at = len(self.ids)
        turn.reply = ReplyText(self.tokenizer, self.format.stop)
        return self._schedule(now_ns)

    def _drop_guess(self) -> list[Action]:
        """The prompt went on: roll the guessed tail and its tokens back."""
        turn = self.turn
        actions = self._give_up_inflight()
        del self.ids[turn.guess_base:]
        self.cached = min(self.cached, turn.guess_base)
        self.submitted = self.cached
        turn.speculative = False
        turn.sample_at, turn.decode_submitted, turn.first_ns = 0, 0, None
        turn.generated, turn.held, turn.reply, turn.guess_finished = [], [], None, None
        return actions

    def _prompt_end(self, now_ns: int) -> list[Action]:
        if self.turn is not None and self.turn.answering:
            raise ProtocolError("unknown_type", "prompt_end: the prompt has ended already; a reply is being "
                                                "generated ('cancel' stops it)")
        if self.turn is None:
            self._begin_turn()
        turn = self.turn
        turn.guess_wanted = False
        tail = turn.text.finish()
        actions: list[Action] = []
        if turn.speculative:
            if turn.text.verify()[1] == len(turn.text.ids):  # the guessed tokens are the prompt's
                return self._guess_paid(now_ns)
            actions += self._drop_guess()  # answered afresh below (and repaired by the check there)
        self._append(tail)
        self._append(encode_template(self.tokenizer, self.format.user_suffix))
        turn.answering = True
        turn.sample_at = len(self.ids)
        turn.cached_at_end = self.cached
        turn.end_ns = turn.arrival_ns = now_ns
        turn.reply = ReplyText(self.tokenizer, self.format.stop)
        if self.inflight:  # a slice still queued on the prefill lane is now what the user waits for
            actions.append(PromoteQueued(Lane.STEP))
        actions += self._schedule(now_ns)
        # Off the critical path (the first slice is on its way): were the committed tokens the
        # segment's tokens? If not, roll back to where they part and prefill the rest again.
        whole, agree = turn.text.verify()
        if agree < len(turn.text.ids):
            suffix = self.ids[turn.content_at + len(turn.text.ids):]
            del self.ids[turn.content_at + agree:]
            self._append(whole[agree:] + suffix)
            turn.sample_at = len(self.ids)
            turn.decode_submitted = 0
            actions += self._give_up_inflight()
            self.cached = min(self.cached, turn.content_at + agree)
            self.submitted = self.cached
            actions += self._schedule(now_ns)
        return actions

    def _guess_paid(self, now_ns: int) -> list[Action]:
        """``prompt_end`` with no text since the guess: what was decoded goes out now, and the
        rest of the reply is decoded on the step lane."""
        turn = self.turn
        turn.speculative, turn.answering, turn.paid = False, True, True
        turn.cached_at_end = min(self.cached, turn.sample_at)
        turn.end_ns = turn.arrival_ns = now_ns
        actions: list[Action] = [PromoteQueued(Lane.STEP)] if self.inflight else []  # queued on the prefill lane
        if turn.held:
            turn.first_ns = turn.last_ns = now_ns
            actions += [self._send(message, prompt_end_ns=now_ns if i == 0 else None)
                        for i, message in enumerate(turn.held)]
            turn.held = []
        if turn.guess_finished is not None:
            return actions + self._finish_reply(turn.guess_finished, now_ns)
        return actions + self._schedule(now_ns)

    def _cancel(self, now_ns: int) -> list[Action]:
        turn = self.turn
        if turn is None:
            return []
        if turn.answering:
            return self._finish_reply("cancelled", now_ns)
        # The user gave up a prompt still arriving: it leaves no trace in the conversation.
        actions = self._drop_guess() if turn.speculative else []
        actions += self._give_up_inflight()
        del self.ids[turn.start:]
        self.cached = min(self.cached, turn.start)
        self.submitted = self.cached
        self.turn = None
        actions.append(self._send({"type": "done", "turn": turn.index, "finish_reason": "cancelled", "text": "",
                                   "tokens": 0}))
        return actions + self._schedule(now_ns)

    def _token(self, token: int, now_ns: int) -> list[Action]:
        turn = self.turn
        assert turn is not None and turn.reply is not None
        finished: str | None = None
        message: dict | None = None
        if token in self.format.stop_ids:
            finished = "stop"
        else:
            turn.generated.append(token)
            self.ids.append(token)
            shown_before = len(self._shown(turn.reply.sent))
            turn.reply.push(token)
            message = {"type": "token", "turn": turn.index, "index": len(turn.generated) - 1, "id": token,
                       "text": self._shown(turn.reply.sent)[shown_before:]}
            if turn.reply.stopped:
                finished = "stop"
            elif len(turn.generated) >= self.max_tokens:
                finished = "length"
        if turn.speculative:  # held until prompt_end says whether the guess was right
            if message is not None:
                turn.held.append(message)
            if finished is not None:
                turn.guess_finished = finished
                return self._give_up_inflight()
            return []
        first = turn.first_ns is None
        if first:
            turn.first_ns = now_ns
        turn.last_ns = now_ns
        actions: list[Action] = []
        if message is not None:
            actions.append(self._send(message, prompt_end_ns=turn.end_ns if first else None))
        if finished is not None:
            return actions + self._finish_reply(finished, now_ns)
        return actions

    def _finish_reply(self, reason: str, now_ns: int) -> list[Action]:
        """End the reply: drop its queued work, keep the conversation as the client saw it
        (the prompt, and the reply text sent), and answer ``done``."""
        turn = self.turn
        assert turn is not None and turn.reply is not None
        actions = self._give_up_inflight()
        lead = self.format.content_lead
        shown = self._shown(turn.reply.sent)
        user_text = turn.text.text[len(lead):]
        # The reply stays in the conversation as text, tokenised as content: what a fresh
        # session given this history holds. Tokens of the cache that agree stay.
        reply_ids = self.format.encode(self.tokenizer, self.format.reply(lead + shown))
        in_cache = self.ids[turn.sample_at:self.cached]
        del self.ids[turn.sample_at:]
        self.ids.extend(reply_ids)  # room for the reply was kept when the prompt was taken
        self.cached = min(self.cached, turn.sample_at + common_prefix(in_cache, reply_ids))
        self.submitted = self.cached
        self.history += [("user", user_text), ("assistant", shown)]
        self.turn = None
        n = len(turn.generated)
        first = turn.first_ns
        done: dict[str, Any] = {
            "type": "done", "turn": turn.index, "finish_reason": reason, "text": shown, "tokens": n,
            "ttft_ms": round((first - turn.end_ns) / 1e6, 3) if first is not None else None,
            "tokens_per_s": round((n - 1) / ((turn.last_ns - first) / 1e9), 2)
            if first is not None and n > 1 and turn.last_ns > first else None,
            "prompt_tokens": turn.sample_at, "prefilled_before_end": turn.cached_at_end,
        }
        if self.early_answer:
            done["early_answer"] = {"guesses": turn.guesses, "paid": turn.paid}
        output = parse_structured(shown)
        if output is not None:
            done["output"] = output
        actions.append(self._send(done, code="ok", arrival_ns=turn.arrival_ns))
        if self.draining:
            self.closing = True
            actions.append(Close(CLOSE_GOING_AWAY, "server shutting down"))
            return actions
        return actions + self._schedule(now_ns)

    def _shown(self, sent: str) -> str:
        """The reply as the client sees it: without the format's lead (the plain format's space)."""
        lead = self.format.content_lead
        return sent[len(lead):] if lead and sent.startswith(lead) else sent

    # -- engine requests -----------------------------------------------------------------

    def _append(self, ids: list[int]) -> None:
        if len(self.ids) + len(ids) + self.max_tokens > self.chat.max_context:
            raise ProtocolError("context_full", f"the conversation would exceed the model's context of "
                                                f"{self.chat.max_context} tokens (with {self.max_tokens} "
                                                "for the reply)")
        self.ids.extend(ids)

    def _schedule(self, now_ns: int) -> list[Action]:
        """Submit what the cache lacks, up to :data:`PIPELINE_DEPTH` requests in flight."""
        actions: list[Action] = []
        if self.closing or self.stalled or not self.ready:
            return actions
        turn = self.turn
        if (turn is not None and turn.guess_wanted and not turn.working and not self.inflight
                and self.cached == len(self.ids)):
            return self._guess(now_ns)
        working = turn is not None and turn.working
        if not self.incremental and not working:
            return actions  # the comparison mode prefills nothing before prompt_end
        # The user waits for a turn being answered; a guess and a prompt still arriving do not.
        lane = Lane.STEP if turn is not None and turn.answering else Lane.PREFILL
        while len(self.inflight) < (PIPELINE_DEPTH if working else 1):
            if self.submitted < len(self.ids) and not (working and self.submitted >= turn.sample_at):
                end = len(self.ids)
                if working:
                    end = min(end, turn.sample_at)
                if self.incremental:
                    end = min(end, self.submitted + self.chat.prefill_slice)
                tokens = self.ids[self.submitted:end]
                sample = working and end == turn.sample_at
                actions.append(self._submit(self.submitted, tokens, sample, False, lane, now_ns))
                self.submitted = end
            elif (working and self.submitted >= turn.sample_at and turn.guess_finished is None
                  and turn.decode_submitted < self.max_tokens - 1):
                # Step k feeds generated[k] at sample_at + k: given when known, else "the token the
                # slot sampled last" (the answer to the request queued just before this one).
                k = turn.decode_submitted
                tokens = turn.generated[k:k + 1]
                actions.append(self._submit(turn.sample_at + k, tokens, True, True, lane, now_ns))
                turn.decode_submitted += 1
            else:
                break
        return actions

    def _submit(self, position: int, tokens: list[int], sample: bool, decode: bool, lane: Lane,
                now_ns: int) -> Submit:
        """A prefill slice (``tokens`` at ``position``) or a decode step (feeds the slot's last
        sampled token at ``position``); ``sample``: answer the token that comes next."""
        key = next(self._keys)
        self.inflight[key] = _Step(key, position, 1 if decode else len(tokens), sample, decode)
        inputs = {"position": position, "tokens": tokens, "sample": self.sampling if sample else None}
        return Submit(key, inputs, BUDGET_S, now_ns, lane=lane)

    def _give_up_inflight(self) -> list[Action]:
        """Forget the requests in flight (their answers will be ignored) and drop the queued ones;
        what to submit again starts from what the cache is known to hold."""
        if not self.inflight:
            return []
        self.inflight.clear()
        self.submitted = min(self.submitted, self.cached)
        turn = self.turn
        if turn is not None and turn.working:
            turn.decode_submitted = max(0, min(turn.decode_submitted, self.cached - turn.sample_at))
        return [CancelQueued()]

    def _engine_error(self, error: ProtocolError, now_ns: int) -> list[Action]:
        if error.close_code is not None:
            return self._fail(error)
        actions = self._give_up_inflight()
        turn = self.turn
        actions.append(self._send(error.to_message(**({"turn": turn.index} if turn is not None else {})),
                                  code=error.code))
        if turn is not None and turn.answering:
            return actions + self._finish_reply("error", now_ns)
        self.stalled = True  # prefilling resumes with the client's next message
        return actions

    def _fail(self, error: ProtocolError) -> list[Action]:
        self.closing = True
        actions: list[Action] = [CancelQueued()] if self.inflight else []
        self.inflight.clear()
        return actions + report_and_close(error)

    def _send(self, message: dict, code: str | None = None, arrival_ns: int | None = None,
              prompt_end_ns: int | None = None) -> Send:
        frame = protocol.encode_text(message) if self.text_frames else protocol.encode_binary(message)
        return Send(frame, code, arrival_ns, prompt_end_ns=prompt_end_ns)


def _ends_sentence(text: str) -> bool:
    """The text looks like a complete prompt: it ends a sentence."""
    return text.rstrip().endswith((".", "?", "!"))


def _fields(message: dict, allowed: set[str]) -> None:
    for name in message:
        if name != "type" and name not in allowed:
            raise ProtocolError("unknown_field", f"unknown field {name!r}"
                                + (f" (expected: {', '.join(sorted(allowed))})" if allowed else ""))


def _history(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list) or len(value) > 2 * MAX_HISTORY_TURNS:
        raise ProtocolError("bad_type", f"history: a list of at most {2 * MAX_HISTORY_TURNS} messages")
    turns = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"role", "content"} or item["role"] not in ("user", "assistant") \
                or not isinstance(item["content"], str):
            raise ProtocolError("bad_type", f"history[{i}]: {{'role': 'user' | 'assistant', 'content': str}}")
        turns.append((item["role"], item["content"]))
    return turns


def _sampling(value: Any) -> dict[str, Any]:
    """The hello's sampling settings, checked, with defaults (greedy)."""
    if not isinstance(value, dict):
        raise ProtocolError("bad_type", "sampling: a map")
    _fields({"type": None, **value}, {"temperature", "top_k", "top_p", "seed"})
    out = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    for name, kind, low, high in (("temperature", float, 0.0, 10.0), ("top_p", float, 0.0, 1.0),
                                  ("top_k", int, 0, 1 << 20), ("seed", int, 0, (1 << 63) - 1)):
        if name in value:
            v = value[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)) \
                    or not low <= v <= high:
                raise ProtocolError("bad_type", f"sampling.{name}: a number from {low} to {high}")
            out[name] = kind(v)
    return out
