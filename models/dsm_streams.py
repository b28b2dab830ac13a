"""The time-aligned streams of delayed-streams modeling (DSM) for speech recognition.

Audio and text share one grid of 80 ms frames (12.5 Hz). The text stream is delayed by
τ frames behind the audio: the text token of frame ``t`` speaks about audio frame
``t - τ``, so a model that reads audio up to frame ``t`` has τ frames of look-ahead.

Text tokens follow Kyutai's ``TokenIds`` (moshi ``models/tts.py``): ``BOUNDARY`` (0) says
"a word starts here", ``PAD`` (3) fills the frames between words, 1 and 2 are the speaker
tokens (reserved, never produced here). A word's tokens fill the frames after its boundary
token; every word of the world's closed vocabulary is one token, so a word takes two frames
(boundary, word). A word starting at audio frame ``f`` has its boundary token at frame
``f + τ``, or at the first free frame after the previous word's token when that one is still
being written (fast speech), and its start time is read back as ``(boundary - τ) * 80 ms``.

Beside the text stream, an *activity* stream (also delayed by τ) says whether audio frame
``t - τ`` lies inside a word; a word ends at the first frame after its start that is not
inside a word, or where the next word starts.

:class:`WordDecoder` turns the streams back into words, one frame at a time, the same way
for a live stream and for a whole file.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

FRAME_S = 0.08  # one frame of the grid: 12.5 Hz
BOUNDARY, MAIN, OTHER, PAD = 0, 1, 2, 3  # moshi's TokenIds
FIRST_WORD = 4  # word i of the vocabulary is token FIRST_WORD + i
DEFAULT_TAU = 6  # text delay in frames (0.48 s, Kyutai stt-1b's asr_delay_in_tokens)


@dataclass(frozen=True)
class TimedWord:
    """A word and where it lies in the audio, in seconds."""

    text: str
    start_s: float
    end_s: float


class WordTokenizer:
    """Words <-> text tokens for a closed vocabulary (one token per word)."""

    def __init__(self, words: Sequence[str]):
        if len(set(words)) != len(words):
            raise ValueError("the vocabulary repeats a word")
        self.words = list(words)
        self._ids = {word: FIRST_WORD + i for i, word in enumerate(self.words)}

    @property
    def size(self) -> int:
        """Number of token ids, the four DSM tokens included."""
        return FIRST_WORD + len(self.words)

    def token(self, word: str) -> int:
        """The token of ``word``; ``KeyError`` for a word outside the vocabulary."""
        return self._ids[word]

    def word(self, token: int) -> str:
        if token < FIRST_WORD:
            raise ValueError(f"token {token} is not a word")
        return self.words[token - FIRST_WORD]


def frame_of(time_s: float) -> int:
    """The frame whose start is nearest to ``time_s``."""
    return int(np.floor(time_s / FRAME_S + 0.5))


@dataclass
class TextStream:
    """Per frame ``t`` (delayed by τ): the text token, and whether audio frame ``t - τ`` is
    inside a word (1.0) or not (0.0)."""

    tokens: np.ndarray  # int64 [frames]
    activity: np.ndarray  # float32 [frames]
    boundaries: list[int]  # frame of each word's boundary token, in word order


def align_text_stream(words: Sequence[TimedWord], num_frames: int, tokenizer: WordTokenizer,
                      tau: int = DEFAULT_TAU) -> TextStream:
    """The DSM text and activity streams of ``num_frames`` frames for timed ``words``.

    Words must be in time order. Raises ``ValueError`` when a word's tokens do not fit in
    ``num_frames`` (give the trailing frames a flush needs) and ``KeyError`` for a word
    outside the vocabulary.
    """
    tokens = np.full(num_frames, PAD, dtype=np.int64)
    activity = np.zeros(num_frames, dtype=np.float32)
    boundaries = []
    next_free = 0
    for word in words:
        boundary = max(frame_of(word.start_s) + tau, next_free)
        if boundary + 1 >= num_frames:
            raise ValueError(f"word {word.text!r} at {word.start_s:.2f} s does not fit in {num_frames} frames")
        tokens[boundary] = BOUNDARY
        tokens[boundary + 1] = tokenizer.token(word.text)
        boundaries.append(boundary)
        next_free = boundary + 2
        # audio frames whose centre lies inside the word, shifted by the delay
        first = int(np.ceil(word.start_s / FRAME_S - 0.5))
        last = int(np.ceil(word.end_s / FRAME_S - 0.5))  # exclusive
        activity[max(0, first + tau): max(0, min(num_frames, last + tau))] = 1.0
    return TextStream(tokens, activity, boundaries)


def allowed_after(previous: int, vocab_size: int) -> np.ndarray:
    """Which tokens may follow ``previous`` (bool [vocab_size]): a word only right after a
    boundary, and after a boundary only a word; never the speaker tokens."""
    allowed = np.zeros(vocab_size, dtype=bool)
    if previous == BOUNDARY:
        allowed[FIRST_WORD:] = True
    else:
        allowed[[BOUNDARY, PAD]] = True
    return allowed


@dataclass(frozen=True)
class WordStarted:
    """A word was recognised; its end is not known yet (moshi-server's ``Word``)."""

    text: str
    start_s: float


@dataclass(frozen=True)
class WordEnded:
    """A recognised word's end is known (moshi-server's ``EndWord``, with the word)."""

    text: str
    start_s: float
    end_s: float


WordEvent = WordStarted | WordEnded


class WordDecoder:
    """Words from the text and activity streams of one stream, frame by frame.

    ``feed(token, activity)`` takes frame ``t`` of both streams (``t`` counts the calls) and
    returns what it makes known: a :class:`WordStarted` when a word token follows its
    boundary, a :class:`WordEnded` once the audio after the word's start stops being speech
    (activity < 0.5) or the next word starts. ``finish()`` ends the open word at the last
    frame seen. The state is a few numbers and a bounded history of activity.
    """

    HISTORY = 64  # frames of activity kept to find the end of a word opened late

    def __init__(self, tokenizer: WordTokenizer, tau: int = DEFAULT_TAU):
        self.tokenizer = tokenizer
        self.tau = tau
        self.frame = 0
        self._boundary: int | None = None
        self._open: WordStarted | None = None
        self._open_frame = 0  # audio frame of the open word's start
        self._activity: deque[tuple[int, float]] = deque(maxlen=self.HISTORY)  # (audio frame, activity)

    def feed(self, token: int, activity: float) -> list[WordEvent]:
        t, self.frame = self.frame, self.frame + 1
        events: list[WordEvent] = []
        audio_frame = t - self.tau
        if audio_frame >= 0:
            self._activity.append((audio_frame, float(activity)))
        if token == BOUNDARY:
            self._boundary = t
        elif token >= FIRST_WORD:
            boundary = self._boundary if self._boundary == t - 1 else t - 1
            start_frame = max(0, boundary - self.tau)
            if self._open is not None:
                events.append(self._end(max(start_frame, self._open_frame + 1)))
            self._open = WordStarted(self.tokenizer.word(token), start_frame * FRAME_S)
            self._open_frame = start_frame
            events.append(self._open)
            self._boundary = None
        if self._open is not None:
            silent = [f for f, a in self._activity if f > self._open_frame and a < 0.5]
            if silent:
                events.append(self._end(silent[0]))
        return events

    def finish(self) -> list[WordEvent]:
        """End the open word (the stream is over): at the last audio frame seen."""
        if self._open is None:
            return []
        return [self._end(max(self._open_frame + 1, self.frame - self.tau))]

    def _end(self, end_frame: int) -> WordEnded:
        assert self._open is not None
        ended = WordEnded(self._open.text, self._open.start_s, end_frame * FRAME_S)
        self._open = None
        return ended


def decode_words(tokens: Sequence[int], activity: Sequence[float], tokenizer: WordTokenizer,
                 tau: int = DEFAULT_TAU) -> list[WordEnded]:
    """Every word of whole streams, with start and end (a finished :class:`WordDecoder`)."""
    decoder = WordDecoder(tokenizer, tau)
    events: list[WordEvent] = []
    for token, a in zip(tokens, activity):
        events.extend(decoder.feed(int(token), float(a)))
    events.extend(decoder.finish())
    return [e for e in events if isinstance(e, WordEnded)]


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level edit distance: substitutions + deletions + insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def word_error_rate(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]) -> float:
    """Corpus WER: total word errors over total reference words."""
    if len(references) != len(hypotheses):
        raise ValueError("as many hypotheses as references")
    words = sum(len(r) for r in references)
    errors = sum(word_errors(r, h) for r, h in zip(references, hypotheses))
    return errors / max(1, words)
