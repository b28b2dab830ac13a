"""Streaming speech recognition sessions, sans I/O: ``/v1/asr`` (Headway's protocol) and
``/api/asr-streaming`` (moshi-server's), over one :class:`AsrStream` each.

:class:`AsrStream` is the audio side both endpoints share. Audio arrives at the client's rate in
chunks of any size; it is resampled to the model's rate with torchaudio
(:class:`models.audio_resample.StreamingResampler`: the samples a whole-file resample gives) and
cut into 80 ms frames (:class:`models.audio_frames.FrameAssembler`). Each frame is one step of
the session's slot on the engine's ``STEP`` lane; :data:`PIPELINE_DEPTH` steps are queued at
once, so each batch finds every stream's next frame and a stream that is behind (a client
faster than real time) catches up one frame per batch, batched with everyone else's. Frames
are answered in order and none is ever dropped: an engine error ends the session.

The buffer is bounded: while more than half of ``max_buffer_s`` of audio waits, the session is
``paused`` (the pump stops reading; TCP pushes back on the client), and a frame that brings
the backlog past ``max_buffer_s`` (one frame of more than half the buffer) ends the session
with ``buffer_full`` (close 1009). A client whose frames are each at most half the buffer long
is never refused, however fast it sends.

``flush`` ends what was said so far without waiting for more audio: the resampler's look-ahead
and the last partial frame are padded with silence, then ``flush_frames`` (τ + 2) frames of
silence are fed as fast as the engine takes them, the last one ending the open word. That
silence is the model's, not the client's: word times are seconds of the client's audio (the
inserted silence is taken out again), so a stream may go on after a flush.

End of turn comes from the voice-activity detector stepped beside the recogniser
(:class:`models.vad.SileroVad`, one probability per frame): after speech (p >= 0.5), a pause of
``end_of_turn_s`` (p < 0.35 throughout) is one ``end_of_turn``.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream import protocol, wire
from stream.batcher import Lane
from stream.engine import Result
from stream.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL, ProtocolError
from stream.registry import AsrAudio, LoadedModel
from stream.session_actions import Action, CancelQueued, Close, Send, Submit, report_and_close

PIPELINE_DEPTH = 2  # steps of one stream queued at once
BUDGET_S = 600.0  # a frame is never given up for lateness: a stream that lags catches up
MIN_RATE, MAX_RATE = 4_000, 192_000
SPEECH, SILENCE = 0.5, 0.35  # VAD thresholds (silero's own hysteresis)
PAUSE_HORIZONS_S = (0.5, 1.0, 2.0, 3.0)  # moshi-server's four pause heads


@dataclass
class Heard:
    """What one answered frame makes known. Times are seconds of the client's audio."""

    frame: int  # frames processed so far, this one included
    words: list[dict]  # {"type": "word_started"|"word_ended", "text", "start_s"[, "end_s"]}
    vad: float  # probability that the frame holds speech
    silence_s: float  # how long the VAD has heard no speech
    buffered_s: float  # audio received (and silence inserted) not processed yet
    buffered_samples: int  # the same, in samples at the client's rate
    markers: list[Any] = field(default_factory=list)  # markers whose audio is now transcribed
    flushed: bool = False  # this frame ended a flush
    end_of_turn_s: float | None = None  # a pause began here, in a turn that had speech


class AsrStream:
    """The audio of one session, from the client's samples to the engine's steps and back
    (see the module docstring)."""

    def __init__(self, audio: AsrAudio, input_rate: int, end_of_turn_s: float = 0.8):
        from models.audio_frames import FrameAssembler
        from models.audio_resample import StreamingResampler

        self.audio = audio
        self.input_rate = input_rate
        self.end_of_turn_s = end_of_turn_s
        self.resampler = StreamingResampler(input_rate, audio.sample_rate)
        self.assembler = FrameAssembler()
        self.frame_s = audio.frame_samples / audio.sample_rate
        self.received = 0  # client samples received
        self.samples = 0  # model-rate samples cut into frames or pending in the assembler (silence included)
        self.queue: deque[tuple[np.ndarray, bool]] = deque()  # frames not submitted (samples, ends a flush)
        self.made = 0  # frames made
        self.submitted = 0
        self.processed = 0
        self.inflight: dict[int, int] = {}  # submit key -> frame index
        self.answers: dict[int, dict] = {}  # frame index -> output, until processed in order
        self.inserted: list[tuple[float, float]] = []  # (stream time, seconds) of silence the server added
        self.markers: deque[tuple[int, Any]] = deque()  # (frames that must be processed, marker id)
        self.flush_ends: deque[int] = deque()  # frame index that ends each flush
        self._speech = False  # the VAD heard speech since the last end of turn
        self._silent_frames = 0  # frames since the VAD last heard speech
        self._pause_frames = 0  # frames of the current pause (p < SILENCE throughout)
        self._keys = itertools.count()

    # -- audio in ------------------------------------------------------------------------

    @property
    def buffered_s(self) -> float:
        """Seconds of audio received (or silence inserted) and not processed yet."""
        return ((self.made - self.processed) * self.frame_s + self.assembler.pending / self.audio.sample_rate
                + self.resampler.pending / self.input_rate)

    def push(self, samples: np.ndarray) -> None:
        """Take client samples (float32, the client's rate); ``buffer_full`` past the bound."""
        self.received += len(samples)
        self._frames(self.resampler.push(samples))
        if self.buffered_s > self.audio.max_buffer_s:
            raise ProtocolError("buffer_full", f"more than {self.audio.max_buffer_s:g} s of audio waiting to be "
                                               "transcribed; send at most real time plus what the server "
                                               "catches up (frames of at most half the buffer are never refused)")

    def flush(self) -> None:
        """End what was said so far: pad, then ``flush_frames`` frames of silence, the last one
        ending the open word."""
        self._frames(self.resampler.flush())
        start_s = self.samples / self.audio.sample_rate
        pad = self.assembler.flush()
        if len(pad):
            self.samples += self.audio.frame_samples - (self.samples % self.audio.frame_samples)
            self._queue(pad, False)
        silence = np.zeros(self.audio.frame_samples, dtype=np.float32)
        for i in range(self.audio.flush_frames):
            self._queue(silence, i == self.audio.flush_frames - 1)
        self.samples += self.audio.flush_frames * self.audio.frame_samples
        self.inserted.append((start_s, self.samples / self.audio.sample_rate - start_s))
        self.flush_ends.append(self.made - 1)

    def marker(self, marker_id: Any) -> None:
        """``marker_id`` is due once the audio received so far is transcribed: its frames and
        ``flush_frames`` more (their words out)."""
        ahead = self.resampler.pending * self.audio.sample_rate / self.input_rate
        frames = math.ceil((self.samples + ahead) / self.audio.frame_samples)
        self.markers.append((frames + self.audio.flush_frames, marker_id))

    def _frames(self, samples: np.ndarray) -> None:
        self.samples += len(samples)
        for frame in self.assembler.push(samples):
            self._queue(frame, False)

    def _queue(self, frame: np.ndarray, end: bool) -> None:
        self.queue.append((frame, end))
        self.made += 1

    # -- engine ----------------------------------------------------------------------------

    def submissions(self, now_ns: int) -> list[Submit]:
        """The steps to queue now (up to :data:`PIPELINE_DEPTH` in flight)."""
        out = []
        while self.queue and len(self.inflight) < PIPELINE_DEPTH:
            frame, end = self.queue.popleft()
            key = next(self._keys)
            self.inflight[key] = self.submitted
            self.submitted += 1
            out.append(Submit(key, {"pcm": frame, "end": end}, BUDGET_S, now_ns, lane=Lane.STEP))
        return out

    def answered(self, key: int, output: dict) -> list[Heard]:
        """A step's output -> what the frames now processed in order make known."""
        index = self.inflight.pop(key)
        self.answers[index] = output
        heard = []
        while self.processed in self.answers:
            heard.append(self._heard(self.answers.pop(self.processed)))
        return heard

    def _heard(self, output: dict) -> Heard:
        index = self.processed
        self.processed += 1
        vad = float(output.get("vad", 0.0))
        end_of_turn = None
        if vad >= SPEECH:
            self._speech, self._silent_frames, self._pause_frames = True, 0, 0
        else:
            self._silent_frames += 1
            self._pause_frames = self._pause_frames + 1 if vad < SILENCE else 0
            if self._speech and self._pause_frames * self.frame_s >= self.end_of_turn_s - 1e-9:
                self._speech = False
                end_of_turn = self.client_time((self.processed - self._pause_frames) * self.frame_s)
        words = []
        for event in output["words"]:
            event = dict(event)
            event["start_s"] = round(self.client_time(event["start_s"]), 3)
            if "end_s" in event:
                event["end_s"] = round(self.client_time(event["end_s"]), 3)
            words.append(event)
        markers = []
        while self.markers and self.markers[0][0] <= self.processed:
            markers.append(self.markers.popleft()[1])
        flushed = bool(self.flush_ends) and self.flush_ends[0] == index
        if flushed:
            self.flush_ends.popleft()
        buffered = self.buffered_s
        return Heard(self.processed, words, vad, self._silent_frames * self.frame_s, round(buffered, 4),
                     int(round(buffered * self.input_rate)), markers, flushed, end_of_turn)

    def client_time(self, stream_s: float) -> float:
        """Seconds of the stream (inserted silence included) -> seconds of the client's audio (a
        time inside inserted silence is where that silence began)."""
        shift = 0.0
        for start, length in self.inserted:
            if stream_s <= start:
                break
            shift += min(stream_s - start, length)
        return max(0.0, stream_s - shift)


def pcm_from_bytes(data: bytes, dtype: np.dtype, carry: bytes) -> tuple[np.ndarray, bytes]:
    """Samples of ``carry + data`` in ``dtype`` (little-endian int16 or float32) as float32 in
    [-1, 1], and the bytes of an incomplete last sample (the next frame completes it)."""
    data = carry + data
    whole = len(data) - len(data) % dtype.itemsize
    samples = np.frombuffer(data[:whole], dtype=dtype)
    if dtype.kind == "i":
        return samples.astype(np.float32) / 32768.0, data[whole:]
    samples = samples.astype(np.float32)
    if not np.isfinite(samples).all():
        raise ProtocolError("not_finite", "audio: f32le samples contain NaN or Inf")
    return samples, data[whole:]


FORMATS = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}


class _AsrSessionBase:
    """What both endpoints share: admission, the stream's steps, pausing, errors, drain."""

    route: str
    stepped = True
    hello_timeout_s: float | None = None

    def __init__(self, model: LoadedModel, *, budget_s: float = BUDGET_S, max_pending: int = 8):
        """``budget_s`` and ``max_pending`` are the server's settings for request/reply
        endpoints; a speech stream keeps its own (:data:`BUDGET_S`, :data:`PIPELINE_DEPTH`)."""
        if model.asr is None:
            raise ValueError(f"model {model.name!r} is not a speech recogniser")
        self.model = model
        self.asr: AsrAudio = model.asr
        self.closing = False
        self.stream: AsrStream | None = None

    @classmethod
    def serves(cls, model: LoadedModel) -> bool:
        return model.asr is not None

    @property
    def paused(self) -> bool:
        return (self.stream is not None and not self.closing
                and self.stream.buffered_s > self.asr.max_buffer_s / 2)

    def opened(self) -> list[Action]:
        return []

    def hello_timed_out(self) -> list[Action]:
        return []

    def drain(self) -> list[Action]:
        """Close with 1001 now (a stream has no end to wait for)."""
        if self.closing:
            return []
        self.closing = True
        return self._give_up() + [Close(CLOSE_GOING_AWAY, "server shutting down")]

    def answered(self, key: int, outcome: Result | ProtocolError, now_ns: int) -> list[Action]:
        if self.closing or self.stream is None or key not in self.stream.inflight:
            return []
        if isinstance(outcome, ProtocolError):
            # a lost frame would be a silent gap in the transcript: the stream ends instead
            error = outcome if outcome.close_code is not None else ProtocolError("internal", outcome.message)
            return self._fail(error)
        actions: list[Action] = []
        for heard in self.stream.answered(key, outcome.output):
            actions += self._report(heard)
        return actions + self.stream.submissions(now_ns)

    def _give_up(self) -> list[Action]:
        if self.stream is not None and self.stream.inflight:
            self.stream.inflight.clear()
            return [CancelQueued()]
        return []

    def _fail(self, error: ProtocolError) -> list[Action]:
        self.closing = True
        return self._give_up() + self._error_actions(error)

    # -- per endpoint ----------------------------------------------------------------------

    def _report(self, heard: Heard) -> list[Action]:
        raise NotImplementedError

    def _error_actions(self, error: ProtocolError) -> list[Action]:
        raise NotImplementedError


class AsrProtocol(_AsrSessionBase):
    """``/v1/asr`` (docs/protocol.md): a JSON ``hello`` (text frame), then audio as binary frames
    of raw PCM in the hello's format and ``flush`` as a text frame; out, JSON text frames:
    ``ready``, ``word`` (as soon as a word is recognised), ``word_end`` (once its end is
    known), ``step``, ``end_of_turn``, ``flushed``, ``error``."""

    route = "/v1/asr"
    hello_timeout_s = 10.0

    def __init__(self, model: LoadedModel, *, budget_s: float = BUDGET_S, max_pending: int = 8):
        super().__init__(model, budget_s=budget_s, max_pending=max_pending)
        self.ready = False
        self.dtype = FORMATS["pcm_s16le"]
        self._carry = b""

    def refused(self, error: ProtocolError) -> list[Action]:
        self.closing = True
        return report_and_close(error)

    def hello_timed_out(self) -> list[Action]:
        return self.refused(ProtocolError("missing_field", f"no hello within {self.hello_timeout_s:.0f} s"))

    def received(self, frame: bytes | str, now_ns: int) -> list[Action]:
        if self.closing:
            return []
        try:
            if not self.ready:
                return self._hello(protocol.decode(frame))
            assert self.stream is not None
            if isinstance(frame, bytes):
                samples, self._carry = pcm_from_bytes(frame, self.dtype, self._carry)
                self.stream.push(samples)
                return self.stream.submissions(now_ns)
            message = protocol.decode(frame)
            kind = protocol.message_type(message)
            if kind == "flush":
                _fields(message, set())
                self._carry = b""  # an incomplete sample cannot be finished by audio after the flush
                self.stream.flush()
                return self.stream.submissions(now_ns)
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; this endpoint takes 'flush' as "
                                                "a text frame and audio as binary frames")
        except ProtocolError as exc:
            return self._fail(exc)

    def _hello(self, message: dict) -> list[Action]:
        kind = protocol.message_type(message)
        if kind != "hello":
            raise ProtocolError("unknown_type", f"the first message is a 'hello', not {kind!r}")
        _fields(message, {"model", "sample_rate", "format", "channels", "end_of_turn_ms"})
        name = message.get("model")
        if name is not None and name != self.model.name:
            raise ProtocolError("bad_type", f"model: this session serves {self.model.name!r}; another model is "
                                            "chosen with ?model=NAME in the URL")
        if "sample_rate" not in message:
            raise ProtocolError("missing_field", "hello: 'sample_rate' (Hz) is required")
        rate = message["sample_rate"]
        if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
            raise ProtocolError("bad_type", f"sample_rate: an integer from {MIN_RATE} to {MAX_RATE} (Hz)")
        fmt = message.get("format", "pcm_s16le")
        if fmt not in FORMATS:
            raise ProtocolError("bad_type", f"format: one of {', '.join(FORMATS)} (little-endian, mono)")
        channels = message.get("channels", 1)
        if channels != 1:
            raise ProtocolError("unsupported", "channels: the recogniser takes mono audio (channels 1)")
        eot = message.get("end_of_turn_ms", 800)
        if isinstance(eot, bool) or not isinstance(eot, (int, float)) or not 80 <= eot <= 10_000:
            raise ProtocolError("bad_type", "end_of_turn_ms: a pause length from 80 to 10000 ms")
        self.dtype = FORMATS[fmt]
        self.stream = AsrStream(self.asr, rate, eot / 1000.0)
        self.ready = True
        a = self.asr
        frame_ms = 1000.0 * a.frame_samples / a.sample_rate
        ready = {"type": "ready",
                 "model": {"name": self.model.name, "sample_rate": a.sample_rate, "frame_ms": frame_ms,
                           "delay_ms": a.tau * frame_ms, "flush_frames": a.flush_frames},
                 "sample_rate": rate, "format": fmt, "channels": 1, "end_of_turn_ms": eot,
                 "max_buffer_s": a.max_buffer_s}
        return [_text(ready)]

    def _report(self, heard: Heard) -> list[Action]:
        # A word goes out the frame it is recognised (DSM's text delay after its start), not
        # when its end is known (the next word or a pause, τ frames after that): a client
        # prefilling a prompt word by word gets each word a word's length sooner.
        out = [_text({"type": "word", "text": w["text"], "start": w["start_s"]}) if w["type"] == "word_started"
               else _text({"type": "word_end", "text": w["text"], "start": w["start_s"], "end": w["end_s"]})
               for w in heard.words]
        out.append(_text({"type": "step", "frames": heard.frame, "buffered": heard.buffered_s,
                          "vad": round(heard.vad, 4)}))
        if heard.end_of_turn_s is not None:
            out.append(_text({"type": "end_of_turn", "at": round(heard.end_of_turn_s, 3), "frames": heard.frame}))
        if heard.flushed:
            assert self.stream is not None
            out.append(_text({"type": "flushed", "frames": heard.frame,
                              "audio_s": round(self.stream.received / self.stream.input_rate, 4)}))
        return out

    def _error_actions(self, error: ProtocolError) -> list[Action]:
        return report_and_close(error)


class MoshiAsrProtocol(_AsrSessionBase):
    """``/api/asr-streaming``: moshi-server's protocol, so Kyutai's client scripts work unmodified.

    Binary msgpack maps tagged by ``type``. In: ``Audio{pcm}`` (float32 samples at 24 kHz, a
    list or a float array), ``Marker{id}``, ``Init`` (accepted before any audio). Out: ``Ready``
    on connect, ``Word{text, start_time}`` when a word is recognised, ``EndWord{stop_time}`` when
    its end is known, ``Step{step_idx, prs, buffered_pcm}`` per frame (``prs``: the four pause
    probabilities moshi's semantic VAD gives for 0.5, 1, 2 and 3 s, here ``min(1, pause /
    horizon)`` from Silero's voice activity), ``Marker{id}`` once the audio sent before it is
    transcribed (its frames and ``flush_frames`` more: send silence after a marker, as Kyutai's
    clients do), ``Error{message}`` before a close. Text frames are ignored, as moshi-server does.
    """

    route = "/api/asr-streaming"
    SAMPLE_RATE = 24_000

    def __init__(self, model: LoadedModel, *, budget_s: float = BUDGET_S, max_pending: int = 8):
        super().__init__(model, budget_s=budget_s, max_pending=max_pending)
        self.stream = AsrStream(self.asr, self.SAMPLE_RATE)

    def refused(self, error: ProtocolError) -> list[Action]:
        self.closing = True
        if error.code == "at_capacity":  # moshi-server's words for it
            error = ProtocolError("at_capacity", f"no free channels ({error.message})")
        return self._error_actions(error)

    def opened(self) -> list[Action]:
        return [Send(wire.packb({"type": "Ready"}))]

    def received(self, frame: bytes | str, now_ns: int) -> list[Action]:
        if self.closing or isinstance(frame, str):
            return []
        assert self.stream is not None
        try:
            message = protocol.decode(frame)
            kind = protocol.message_type(message)
            if kind == "Audio":
                self.stream.push(_pcm(message.get("pcm")))
                return self.stream.submissions(now_ns)
            if kind == "Marker":
                marker = message.get("id")
                if isinstance(marker, bool) or not isinstance(marker, int):
                    raise ProtocolError("bad_type", "Marker: 'id' is an integer")
                self.stream.marker(marker)
                return []
            if kind == "Init":
                if self.stream.received:
                    raise ProtocolError("unsupported", "Init: a stream is reset only before its first audio")
                return []
            if kind == "OggOpus":
                raise ProtocolError("unsupported", "OggOpus is not supported here; send Audio{pcm} (float32, 24 kHz)")
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; this endpoint takes Audio and Marker")
        except ProtocolError as exc:
            return self._fail(exc)

    def _report(self, heard: Heard) -> list[Action]:
        out = []
        for w in heard.words:
            if w["type"] == "word_started":
                out.append(Send(wire.packb({"type": "Word", "text": w["text"], "start_time": w["start_s"]})))
            else:
                out.append(Send(wire.packb({"type": "EndWord", "stop_time": w["end_s"]})))
        prs = [round(min(1.0, heard.silence_s / h), 4) for h in PAUSE_HORIZONS_S]
        out.append(Send(wire.packb({"type": "Step", "step_idx": heard.frame, "prs": prs,
                                    "buffered_pcm": heard.buffered_samples})))
        out += [Send(wire.packb({"type": "Marker", "id": m})) for m in heard.markers]
        return out

    def _error_actions(self, error: ProtocolError) -> list[Action]:
        return [Send(wire.packb({"type": "Error", "message": error.message}), error.code),
                Close(error.close_code or CLOSE_INTERNAL, error.message[:120])]


def _pcm(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind != "f":
            raise ProtocolError("bad_shape", "Audio: 'pcm' is a list (or 1-D float array) of samples")
        samples = value.astype(np.float32)
    elif isinstance(value, list):
        try:
            samples = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ProtocolError("bad_type", "Audio: 'pcm' holds numbers only") from None
        if samples.ndim != 1:
            raise ProtocolError("bad_shape", "Audio: 'pcm' is a flat list of samples")
    else:
        raise ProtocolError("missing_field" if value is None else "bad_type",
                            "Audio: 'pcm' is a list of float32 samples at 24 kHz")
    if not np.isfinite(samples).all():
        raise ProtocolError("not_finite", "Audio: 'pcm' contains NaN or Inf")
    return samples


def _text(message: dict) -> Send:
    return Send(protocol.encode_text(message))


def _fields(message: dict, allowed: set[str]) -> None:
    for name in message:
        if name != "type" and name not in allowed:
            raise ProtocolError("unknown_field", f"unknown field {name!r}"
                                + (f" (expected: {', '.join(sorted(allowed))})" if allowed else ""))
