"""Streaming speech synthesis sessions, sans I/O: ``/v1/tts`` (Headway's protocol) and
``/api/tts_streaming`` (moshi-server's), over one :class:`TtsStream` each.

:class:`TtsStream` is the text side both endpoints share. Text arrives in pieces of any size;
a word is complete once whitespace follows it (or the text ends), and is normalised to the
model's spelling (lower case, letters and apostrophes); words the voice cannot say are
skipped (and reported). Each step of the session's slot runs on the engine's ``STEP`` lane,
one at a time, carrying the words completed since the last step (``stream.tts_models``): the
model reads them from its queue as it asks for them, ``lookahead`` words ahead of the one it
speaks, so a step waits (the executor answers ``waiting``) until that many are queued or the
text has ended.

Pacing: audio goes out at most :data:`LEAD_S` (320 ms, unmute's ``RealtimeQueue``) ahead of
real time, counted from the first audio frame sent. While the stream is that far ahead it
submits no step and asks to be woken (:class:`~stream.session_actions.Wake`) when it is one
frame under the lead. So the first audio goes out as fast as the engine steps (the model's
delays are filled without waiting), a ``cancel`` stops a stream that has at most 320 ms of
audio in the client's hands, and a client that stops reading holds at most what the server's
slow-consumer watchdog lets through before it closes the connection.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from stream import protocol
from stream.batcher import Lane
from stream.engine import Result
from stream.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL, ProtocolError
from stream.registry import LoadedModel, TtsVoice
from stream.session_actions import Action, CancelQueued, Close, Send, Submit, Wake, report_and_close

LEAD_S = 0.32  # audio sent at most this far ahead of real time
FRAME_S = 0.08
BUDGET_S = 600.0  # a step is never given up for lateness: audio would have a hole
MIN_RATE, MAX_RATE = 8_000, 48_000
MAX_TEXT_CHARS = 4096  # one text message
MAX_WORDS = 4096  # words one session may queue
CLOSE_NORMAL = 1000
_WORD = re.compile(r"[^a-z']+")


def normalise(word: str) -> str:
    """A word as the model spells it: lower case, letters and apostrophes only."""
    return _WORD.sub("", word.lower())


@dataclass
class Spoken:
    """What one answered step makes known."""

    pcm: np.ndarray  # float32 at the session's rate
    words: list[tuple[str, float]]  # (word, start in seconds of the stream's audio)
    skipped: list[str]
    done: bool


@dataclass
class TtsStream:
    """The text queue, step scheduling and pacing of one synthesis stream (see the module
    docstring). ``submissions(now_ns)`` says what to submit (or when to wake) next;
    ``answered`` takes a step's outcome."""

    voice: TtsVoice
    rate: int
    lead_s: float = LEAD_S
    buffer: str = ""  # text of a word not complete yet
    words: list[str] = field(default_factory=list)  # complete words not yet handed to a step
    ended: bool = False
    end_sent: bool = False
    queued: int = 0  # words handed over, in total
    inflight: int | None = None  # key of the step in flight
    waiting: bool = False  # the executor needs more words (or the end) before stepping again
    done: bool = False
    first_text_ns: int | None = None  # the first word's arrival
    first_audio_ns: int | None = None  # when the first audio was sent
    audio_samples: int = 0  # sent, at ``rate``
    wake_at: int | None = None
    skipped: list[str] = field(default_factory=list)
    _keys: Any = field(default_factory=itertools.count)

    @property
    def audio_s(self) -> float:
        return self.audio_samples / self.rate

    def push_text(self, text: str, now_ns: int) -> None:
        """Append a piece of text; raises ``too_large`` past :data:`MAX_WORDS` words."""
        if self.ended:
            raise ProtocolError("unknown_type", "text after the end of the text")
        pieces = re.split(r"\s+", self.buffer + text)
        self.buffer = pieces.pop()  # the last piece may go on in the next message
        self._add([p for p in pieces if p], now_ns)

    def end(self, now_ns: int) -> None:
        if self.ended:
            return
        if self.buffer:
            self._add([self.buffer], now_ns)
            self.buffer = ""
        self.ended = True
        self.waiting = False

    def _add(self, pieces: list[str], now_ns: int) -> None:
        for piece in pieces:
            word = normalise(piece)
            if not word:
                continue
            if self.queued + len(self.words) >= MAX_WORDS:
                raise ProtocolError("too_large", f"a session says at most {MAX_WORDS} words")
            self.words.append(word)
            self.waiting = False
            if self.first_text_ns is None:
                self.first_text_ns = now_ns

    def lead_at(self, now_ns: int) -> float:
        """Seconds of audio sent ahead of real time."""
        if self.first_audio_ns is None:
            return 0.0
        return self.audio_s - (now_ns - self.first_audio_ns) / 1e9

    def submissions(self, now_ns: int) -> list[Action]:
        """The next step to submit, a wake-up, or nothing (a step in flight, waiting for words,
        done)."""
        if self.done or self.inflight is not None or (self.waiting and not self.words):
            return []
        if not self.ended and not self.words and self.queued == 0:
            return []  # nothing to say yet
        lead = self.lead_at(now_ns)
        if lead > self.lead_s:
            due = self.first_audio_ns + int((self.audio_s - self.lead_s + FRAME_S / 4) * 1e9)
            if self.wake_at is None or self.wake_at > due or self.wake_at < now_ns:
                self.wake_at = due
                return [Wake(due)]
            return []
        key = next(self._keys)
        self.inflight = key
        inputs: dict[str, Any] = {"words": self.words, "rate": self.rate}
        self.queued += len(self.words)
        self.words = []
        if self.ended and not self.end_sent:
            inputs["end"] = True
            self.end_sent = True
        return [Submit(key, inputs, BUDGET_S, now_ns, lane=Lane.STEP)]

    def woke(self, now_ns: int) -> list[Action]:
        self.wake_at = None
        return self.submissions(now_ns)

    def answered(self, key: int, output: dict[str, Any]) -> Spoken | None:
        """The outcome of step ``key``; ``None`` for a step given up (after a cancel)."""
        if key != self.inflight:
            return None
        self.inflight = None
        self.waiting = bool(output.get("waiting")) and not output.get("done")
        pcm = np.asarray(output.get("pcm", ()), dtype=np.float32)
        skipped = list(output.get("skipped", ()))
        self.skipped += skipped
        self.done = bool(output.get("done"))
        return Spoken(pcm, [(w, float(s)) for w, s in output.get("words", ())], skipped, self.done)

    def sent_audio(self, samples: int, now_ns: int) -> None:
        if samples and self.first_audio_ns is None:
            self.first_audio_ns = now_ns
        self.audio_samples += samples


class _TtsSessionBase:
    """What both synthesis endpoints share: a stepped session over one :class:`TtsStream`."""

    stepped = True
    hello_timeout_s: float | None = 10.0

    def __init__(self, model: LoadedModel, *, budget_s: float = BUDGET_S, max_pending: int = 8):
        if model.tts is None:
            raise ValueError(f"model {model.name!r} is not a speech synthesiser")
        self.model = model
        self.voice: TtsVoice = model.tts
        self.closing = False
        self.draining = False
        self.stream: TtsStream | None = None

    @classmethod
    def serves(cls, model: LoadedModel) -> bool:
        return model.tts is not None

    @property
    def paused(self) -> bool:
        return False  # text is small; MAX_WORDS bounds what a session holds

    def hello_timed_out(self) -> list[Action]:
        return self.refused(ProtocolError("missing_field", f"no hello within {self.hello_timeout_s:.0f} s"))

    def drain(self) -> list[Action]:
        """Shutting down: stop now (a synthesis stream has no natural end soon)."""
        self.draining = True
        if self.closing:
            return []
        return self._end_with([], CLOSE_GOING_AWAY, "server shutting down")

    def woke(self, now_ns: int) -> list[Action]:
        if self.closing or self.stream is None:
            return []
        return self.stream.woke(now_ns)

    def answered(self, key: int, outcome: Result | ProtocolError, now_ns: int) -> list[Action]:
        if self.closing or self.stream is None:
            return []
        if isinstance(outcome, ProtocolError):
            return self._fail(ProtocolError("internal", f"synthesis step failed: {outcome.message}"))
        spoken = self.stream.answered(key, outcome.output)
        if spoken is None:
            return []
        actions = self._report(spoken, now_ns)
        self.stream.sent_audio(len(spoken.pcm), now_ns)
        if spoken.done:
            return actions + self._finished(now_ns)
        return actions + self.stream.submissions(now_ns)

    def _end_with(self, actions: list[Action], code: int, reason: str) -> list[Action]:
        self.closing = True
        cancel: list[Action] = [CancelQueued()] if self.stream is not None and self.stream.inflight is not None else []
        return cancel + actions + [Close(code, reason)]

    def _fail(self, error: ProtocolError) -> list[Action]:
        cancel: list[Action] = [CancelQueued()] if self.stream is not None and self.stream.inflight is not None else []
        self.closing = True
        return cancel + self._error_actions(error)

    def _error_actions(self, error: ProtocolError) -> list[Action]:
        return report_and_close(error)

    def refused(self, error: ProtocolError) -> list[Action]:
        self.closing = True
        return self._error_actions(error)

    def _report(self, spoken: Spoken, now_ns: int) -> list[Action]:
        raise NotImplementedError

    def _finished(self, now_ns: int) -> list[Action]:
        raise NotImplementedError


class TtsProtocol(_TtsSessionBase):
    """``/v1/tts``: Headway's synthesis protocol (docs/protocol.md). Control messages are JSON
    text frames (or msgpack binary ones), audio goes out as binary frames of raw PCM.

    In: ``hello{voice?, sample_rate?, format?}`` first; then ``text{text}`` pieces as they come,
    ``end`` when there is no more, ``cancel`` to stop at once. Out: ``ready``, binary audio
    frames (``pcm_s16le`` or ``pcm_f32le`` mono at ``sample_rate``, one 80 ms frame each), a
    ``word{text, start_s}`` as each word is read (before its audio), and ``done{audio_s,
    words, skipped, cancelled}``, then the server closes (1000).
    """

    route = "/v1/tts"
    FORMATS = ("pcm_s16le", "pcm_f32le")

    def __init__(self, model: LoadedModel, *, budget_s: float = BUDGET_S, max_pending: int = 8):
        super().__init__(model, budget_s=budget_s, max_pending=max_pending)
        self.format = "pcm_s16le"
        self.words_said = 0

    def opened(self) -> list[Action]:
        return []  # the client speaks first

    def received(self, frame: bytes | str, now_ns: int) -> list[Action]:
        if self.closing:
            return []
        try:
            message = protocol.decode(frame)
            kind = protocol.message_type(message)
            if self.stream is None:
                if kind != "hello":
                    raise ProtocolError("unknown_type", f"the first message is a 'hello', not {kind!r}")
                return self._hello(message)
            if self.draining:
                return []
            if kind == "text":
                _fields(message, {"text"})
                text = message.get("text")
                if not isinstance(text, str):
                    raise ProtocolError("bad_type", "text: 'text' is a string")
                if len(text) > MAX_TEXT_CHARS:
                    raise ProtocolError("too_large", f"text: at most {MAX_TEXT_CHARS} characters a message")
                self.stream.push_text(text, now_ns)
                return self.stream.submissions(now_ns)
            if kind == "end":
                _fields(message, set())
                self.stream.end(now_ns)
                return self.stream.submissions(now_ns)
            if kind == "cancel":
                _fields(message, set())
                return self._end_with([self._done(cancelled=True)], CLOSE_NORMAL, "cancelled")
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; this endpoint takes "
                                                "'text', 'end' and 'cancel'")
        except ProtocolError as exc:
            return self._fail(exc)

    def _hello(self, message: dict) -> list[Action]:
        _fields(message, {"voice", "sample_rate", "format"})
        voice = message.get("voice")
        if voice not in (None, "", "default", self.voice.voice):
            raise ProtocolError("unsupported", f"voice {voice!r}: this model speaks {self.voice.voice!r} only")
        rate = message.get("sample_rate", 24_000)
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
            raise ProtocolError("bad_type", f"hello: 'sample_rate' is an integer in [{MIN_RATE}, {MAX_RATE}]")
        fmt = message.get("format", "pcm_s16le")
        if fmt not in self.FORMATS:
            raise ProtocolError("unsupported", f"hello: 'format' is one of {', '.join(self.FORMATS)}")
        self.format = fmt
        self.stream = TtsStream(self.voice, rate)
        ready = {"type": "ready", "model": self.model.name, "voice": self.voice.voice, "sample_rate": rate,
                 "format": fmt, "frame_ms": 80, "lead_ms": round(LEAD_S * 1000), "lookahead": self.voice.lookahead,
                 "vocabulary": list(self.voice.words)}
        return [Send(protocol.encode_text(ready))]

    def _report(self, spoken: Spoken, now_ns: int) -> list[Action]:
        out: list[Action] = []
        for word, start in spoken.words:
            self.words_said += 1
            out.append(Send(protocol.encode_text({"type": "word", "text": word, "start_s": start})))
        if len(spoken.pcm):
            if self.format == "pcm_s16le":
                data = (np.clip(spoken.pcm, -1, 1) * 32767).round().astype("<i2").tobytes()
            else:
                data = spoken.pcm.astype("<f4").tobytes()
            out.append(Send(data))
        return out

    def _done(self, cancelled: bool) -> Send:
        assert self.stream is not None
        s = self.stream
        first = None
        if s.first_audio_ns is not None and s.first_text_ns is not None:
            first = round((s.first_audio_ns - s.first_text_ns) / 1e6, 1)
        return Send(protocol.encode_text({"type": "done", "audio_s": round(s.audio_s, 3), "words": self.words_said,
                                          "skipped": s.skipped, "cancelled": cancelled, "first_audio_ms": first}),
                    "ok")

    def _finished(self, now_ns: int) -> list[Action]:
        self.closing = True
        return [self._done(cancelled=False), Close(CLOSE_NORMAL, "done")]


class MoshiTtsProtocol(_TtsSessionBase):
    """``/api/tts_streaming``: moshi-server's synthesis protocol, so Kyutai's client scripts
    work unmodified (``format=PcmMessagePack``; other query values are ignored).

    Binary msgpack maps tagged by ``type``. In: ``Text{text}`` pieces, ``Eos`` (or a text frame
    of raw text, and the binary frame ``"\\0"`` for the end, as moshi-server also accepts;
    ``Voice`` is ignored: one voice). Out: ``Ready`` on connect, ``Audio{pcm}`` (a list of
    float32 samples at 24 kHz, one 80 ms frame each), ``Text{text, start_s, stop_s}`` once a
    word's end is known (the next word's start, or the end of the audio), ``Error{message}``
    before a close; the server closes the connection (1000) after the last audio.
    """

    route = "/api/tts_streaming"
    SAMPLE_RATE = 24_000

    def __init__(self, model: LoadedModel, *, budget_s: float = BUDGET_S, max_pending: int = 8):
        super().__init__(model, budget_s=budget_s, max_pending=max_pending)
        self.stream = TtsStream(self.voice, self.SAMPLE_RATE)
        self.hello_timeout_s = None  # moshi's clients send no hello
        self.open_word: tuple[str, float] | None = None

    def opened(self) -> list[Action]:
        return [Send(_pack({"type": "Ready"}))]

    def received(self, frame: bytes | str, now_ns: int) -> list[Action]:
        if self.closing or self.draining:
            return []
        assert self.stream is not None
        try:
            if isinstance(frame, str):
                self.stream.push_text(frame + " ", now_ns)
                return self.stream.submissions(now_ns)
            if frame == b"\0":
                self.stream.end(now_ns)
                return self.stream.submissions(now_ns)
            message = protocol.decode(frame)
            kind = protocol.message_type(message)
            if kind == "Text":
                text = message.get("text")
                if not isinstance(text, str):
                    raise ProtocolError("bad_type", "Text: 'text' is a string")
                if len(text) > MAX_TEXT_CHARS:
                    raise ProtocolError("too_large", f"Text: at most {MAX_TEXT_CHARS} characters a message")
                self.stream.push_text(text, now_ns)
                return self.stream.submissions(now_ns)
            if kind == "Eos":
                self.stream.end(now_ns)
                return self.stream.submissions(now_ns)
            if kind == "Voice":
                return []
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; this endpoint takes Text and Eos")
        except ProtocolError as exc:
            return self._fail(exc)

    def _report(self, spoken: Spoken, now_ns: int) -> list[Action]:
        out: list[Action] = []
        for word, start in spoken.words:
            if self.open_word is not None:
                out.append(self._text(self.open_word, start))
            self.open_word = (word, start)
        if len(spoken.pcm):
            out.append(Send(_pack({"type": "Audio", "pcm": spoken.pcm.tolist()})))
        return out

    def _text(self, word: tuple[str, float], stop: float) -> Send:
        return Send(_pack({"type": "Text", "text": word[0], "start_s": word[1], "stop_s": stop}))

    def _finished(self, now_ns: int) -> list[Action]:
        self.closing = True
        assert self.stream is not None
        out: list[Action] = []
        if self.open_word is not None:
            out.append(self._text(self.open_word, round(self.stream.audio_s, 3)))
        return out + [Close(CLOSE_NORMAL, "")]

    def _error_actions(self, error: ProtocolError) -> list[Action]:
        if error.code == "at_capacity":
            error = ProtocolError("at_capacity", f"no free channels ({error.message})")
        return [Send(_pack({"type": "Error", "message": error.message}), error.code),
                Close(error.close_code or CLOSE_INTERNAL, error.message[:120])]


def _pack(message: dict) -> bytes:
    """Plain msgpack (floats as float32), as moshi-server's clients read it."""
    return msgpack.packb(message, use_single_float=True)


def _fields(message: dict, allowed: set[str]) -> None:
    extra = set(message) - allowed - {"type"}
    if extra:
        raise ProtocolError("unknown_field", f"unknown field(s) {', '.join(sorted(extra))}")
