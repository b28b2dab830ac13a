"""A delayed-streams-modeling (DSM) speech synthesiser: the recogniser's decoder-only windowed
transformer (``models.dsm_asr.Block``) run the other way round -- the text stream leads, the
audio stream (codes of ``models.tts_codec``) follows ``audio_delay`` frames behind.

The streams, on the 80 ms grid (Kyutai's DSM-TTS, arXiv 2509.08753; moshi ``models/tts.py``):

* **text**: the DSM text tokens of ``models.dsm_streams`` aligned with no delay: a word that
  starts in audio frame ``f`` has its ``BOUNDARY`` token at frame ``f`` and its word token at
  ``f + 1`` (``PAD`` elsewhere). The model *writes* the boundaries -- at each step it says
  ``PAD`` (keep speaking) or ``BOUNDARY`` ("next word") -- and the word token after a boundary
  is taken from the queue of words the client sent (:class:`TextFeeder`). One more boundary
  after the last word says the speech is over.
* **lookahead**: the next ``lookahead`` words of the queue (not yet fed), so the model hears a
  couple of words ahead of the one it speaks; ``PAD`` where the text has ended. A stream steps
  only while that many words are queued (or the input has ended), so streaming the words in
  one by one gives exactly the tokens that the whole text at once gives.
* **audio**: codebook ``k`` of audio frame ``f`` is written at step ``f + audio_delay +
  delays[k]`` (``delays[k] = k`` by default: each residual codebook one step after the one
  before it, so it is predicted knowing them), read back as input at the next step.

After the end boundary at frame ``e`` the stream drains: audio frames ``0 .. e + TAIL_FRAMES``
are written, the last one complete at step ``e + TAIL_FRAMES + audio_delay + max(delays)``.

:meth:`DsmTts.step` advances a batch of slots (KV cache of ``window`` frames each, as
``models.dsm_asr.AsrSlots``) one frame, only the slots of an ``active`` mask; what a slot gets
does not depend on which other slots share its steps.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from models.dsm_asr import Block, WindowSlots
from models.dsm_streams import BOUNDARY, FIRST_WORD, PAD, TimedWord, WordTokenizer, frame_of

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
CHECKPOINT_NAME = "dsm_tts"
TAIL_FRAMES = 2  # audio frames written after the end boundary (the speech's last breath)


@dataclass
class DsmTtsConfig:
    """The synthesiser's shape and what it was trained on (saved beside the weights)."""

    words: list[str]  # word i is token FIRST_WORD + i (the recogniser's vocabulary)
    codebooks: int = 6
    codebook_size: int = 1024
    audio_delay: int = 2  # frames the audio stream lags the text stream
    delays: list[int] | None = None  # per codebook, after audio_delay; None: 0, 1, 2, ...
    lookahead: int = 2  # queued words the model sees ahead of the one it speaks
    max_padding: int = 20  # frames after a word token before a boundary is forced
    d_model: int = 192
    layers: int = 6
    heads: int = 4
    ff: int = 768
    window: int = 64
    voice: str = "flite:kal16"
    # The word being spoken is read at every step until the next boundary (not only at the
    # step after its boundary, with PAD between, as in DSM): a small model trained on one
    # voice otherwise loses track of the word it speaks and says another word of the grammar.
    hold_word: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.delays is None:
            self.delays = list(range(self.codebooks))

    @property
    def drain_steps(self) -> int:
        """Steps after the end boundary until the last audio frame is complete."""
        return TAIL_FRAMES + self.audio_delay + max(self.delays)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "DsmTtsConfig":
        return cls(**json.loads(text))


# -- the streams of one utterance (training) ---------------------------------------------------

@dataclass
class TtsStreams:
    """Teacher-forcing inputs and targets of one sequence of ``steps`` steps."""

    text: np.ndarray  # int64 [steps]: the text token read at each step
    ahead: np.ndarray  # int64 [steps, lookahead]: the queued words seen at each step
    audio: np.ndarray  # int64 [steps, codebooks]: the code written at each step (-1: none)
    end: int  # frame of the end boundary


def align_tts_streams(words: Sequence[TimedWord], codes: np.ndarray, tokenizer: WordTokenizer,
                      config: DsmTtsConfig) -> TtsStreams:
    """The DSM-TTS streams of timed ``words`` spoken in audio whose codes are ``codes``
    ``[frames, codebooks]`` (``frames`` must reach ``e + TAIL_FRAMES``; shorter audio is
    padded with its last frame's codes, trailing silence)."""
    text_frames: list[int] = []
    next_free = 0
    for w in words:
        boundary = max(frame_of(w.start_s), next_free)
        text_frames.append(boundary)
        next_free = boundary + 2
    end = max(next_free, frame_of(words[-1].end_s)) if words else 0
    frames = end + TAIL_FRAMES + 1
    if codes.shape[0] < frames:
        codes = np.concatenate([codes, np.repeat(codes[-1:], frames - codes.shape[0], 0)])
    codes = codes[:frames]
    steps = frames + config.audio_delay + max(config.delays)
    text = np.full(steps, PAD, dtype=np.int64)
    fed_after = np.zeros(steps, dtype=np.int64)  # words fed once step t has been read
    for i, (w, b) in enumerate(zip(words, text_frames)):
        text[b] = BOUNDARY
        until = text_frames[i + 1] if i + 1 < len(words) else end
        text[b + 1: until if config.hold_word else b + 2] = tokenizer.token(w.text)
        fed_after[b + 1:] = i + 1
    text[end] = BOUNDARY
    ids = [tokenizer.token(w.text) for w in words] + [PAD] * config.lookahead
    ahead = np.array([ids[n: n + config.lookahead] for n in fed_after], dtype=np.int64)
    audio = np.full((steps, config.codebooks), -1, dtype=np.int64)
    for k, d in enumerate(config.delays):
        start = config.audio_delay + d
        audio[start: start + frames, k] = codes[:, k]
    return TtsStreams(text, ahead, audio, end)


# -- the model ------------------------------------------------------------------------------

@dataclass
class TtsSlots(WindowSlots):
    """:class:`~models.dsm_asr.WindowSlots` of one :class:`DsmTts` (``frame``: steps taken),
    with the codes its steps carry over."""

    previous_audio: torch.Tensor  # [S, codebooks] int64: codes written at the last step (card: none)
    none: int  # the code id that means "no code yet" (the codebook size)

    def reset(self, slot: int) -> None:
        super().reset(slot)
        self.previous_audio[slot] = self.none


@dataclass
class TtsStepOutput:
    """Per slot (rows of idle slots: -1): the boundary decision (1: ``BOUNDARY``), the codes
    written this step ``[S, codebooks]`` and the step index just taken."""

    boundary: torch.Tensor  # [S] int64
    audio: torch.Tensor  # [S, codebooks] int64
    frame: torch.Tensor  # [S] int64


class DsmTts(nn.Module):
    def __init__(self, config: DsmTtsConfig):
        super().__init__()
        c = self.config = config
        self.tokenizer = WordTokenizer(c.words)
        vocab = self.tokenizer.size
        self.text_in = nn.Embedding(vocab, c.d_model)
        self.ahead_in = nn.ModuleList(nn.Embedding(vocab, c.d_model) for _ in range(c.lookahead))
        self.audio_in = nn.ModuleList(nn.Embedding(c.codebook_size + 1, c.d_model) for _ in range(c.codebooks))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))  # the recogniser's block
        self.norm = nn.LayerNorm(c.d_model)
        self.text_head = nn.Linear(c.d_model, 2)  # PAD or BOUNDARY next
        self.audio_head = nn.Linear(c.d_model, c.codebooks * c.codebook_size)
        self.register_buffer("delays", torch.tensor(c.delays, dtype=torch.long), persistent=False)

    def _embed(self, text: torch.Tensor, ahead: torch.Tensor, previous_audio: torch.Tensor) -> torch.Tensor:
        x = self.text_in(text)
        for j, table in enumerate(self.ahead_in):
            x = x + table(ahead[..., j])
        for k, table in enumerate(self.audio_in):
            x = x + table(previous_audio[..., k])
        return x

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(x)
        c = self.config
        return self.text_head(x), self.audio_head(x).reshape(*x.shape[:-1], c.codebooks, c.codebook_size)

    def forward(self, text: torch.Tensor, ahead: torch.Tensor, audio: torch.Tensor,
                input_noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced: text ``[B, T]``, ahead ``[B, T, L]``, the codes written at each step
        ``[B, T, K]`` (-1: none) -> boundary logits ``[B, T, 2]`` (about step t + 1) and code
        logits ``[B, T, K, card]`` (about step t). ``input_noise``: the fraction of the codes
        read back as input replaced by random codes (training: the model learns to carry on
        from codes it got wrong, as it must when it runs on its own)."""
        none = self.config.codebook_size
        written = torch.where(audio < 0, none, audio)
        previous = torch.cat([torch.full_like(written[:, :1], none), written[:, :-1]], 1)
        if input_noise > 0:
            flip = (torch.rand(previous.shape) < input_noise) & (previous != none)
            previous = torch.where(flip, torch.randint_like(previous, none), previous)
        x = self._embed(text, ahead, previous)
        for block in self.blocks:
            x = block(x)
        return self._heads(x)

    # -- streaming ------------------------------------------------------------------------

    def new_slots(self, size: int) -> TtsSlots:
        c = self.config
        shape = (c.layers, size, c.heads, c.window, c.d_model // c.heads)
        slots = TtsSlots(keys=torch.zeros(shape), values=torch.zeros(shape),
                         positions=torch.full((size, c.window), -1, dtype=torch.long),
                         frame=torch.zeros(size, dtype=torch.long),
                         previous_audio=torch.full((size, c.codebooks), c.codebook_size, dtype=torch.long),
                         none=c.codebook_size)
        return slots

    @torch.no_grad()
    def step(self, slots: TtsSlots, text: torch.Tensor, ahead: torch.Tensor, active: torch.Tensor,
             frames: torch.Tensor | None = None, temperature: float = 0.0,
             generators: Sequence[torch.Generator | None] | None = None) -> TtsStepOutput:
        """Advance the ``active`` slots (bool ``[S]``) one step: ``text`` ``[S]`` and ``ahead``
        ``[S, lookahead]`` are what each reads (rows of idle slots ignored); ``frames`` ``[S]``
        the number of audio frames each stream speaks once its end is known (-1: not yet).
        Codes are the argmax (``temperature`` 0) or sampled with each slot's own generator;
        codes of audio frames outside the stream are written as ``card`` (none), as in
        training."""
        c = self.config
        size = slots.size
        boundary = torch.full((size,), -1, dtype=torch.long)
        codes = torch.full((size, c.codebooks), -1, dtype=torch.long)
        frame = torch.full((size,), -1, dtype=torch.long)
        rows = active.nonzero().squeeze(1)
        if rows.numel() == 0:
            return TtsStepOutput(boundary, codes, frame)
        position = slots.frame[rows]
        slot_index = position % c.window
        slots.positions[rows, slot_index] = position
        positions = slots.positions[rows]
        x = self._embed(text[rows], ahead[rows], slots.previous_audio[rows])
        for layer, block in enumerate(self.blocks):
            x = block.step(x, slots.keys[layer], slots.values[layer], rows, slot_index, positions, position)
        text_logits, audio_logits = self._heads(x)
        if temperature <= 0:
            written = audio_logits.argmax(-1)
        else:
            probs = (audio_logits / temperature).softmax(-1)
            written = torch.stack([torch.multinomial(probs[i], 1, generator=generators[int(r)] if generators else None)[:, 0]
                                   for i, r in enumerate(rows.tolist())])
        # an audio frame before the first (the delayed codebooks' first steps) has no code
        audio_frame = position[:, None] - (c.audio_delay + self.delays)[None, :]
        before = audio_frame < 0
        if frames is not None:
            known = frames[rows][:, None]
            before = before | ((known >= 0) & (audio_frame >= known))
        written = torch.where(before, c.codebook_size, written)
        slots.previous_audio[rows] = written
        slots.frame[rows] = position + 1
        boundary[rows] = text_logits.argmax(-1)
        codes[rows] = torch.where(before, -1, written)
        frame[rows] = position
        return TtsStepOutput(boundary, codes, frame)


class TextFeeder:
    """The text side of one stream: a queue of words the client sends (``push``; ``end`` when
    there are no more), read by the model one word per ``BOUNDARY`` it writes.

    Per step: ``ready()`` says whether the step can run (the word to feed, if any, and
    ``lookahead`` words after it are queued, or the input has ended); ``inputs()`` gives the
    text token and lookahead of this step; ``advance(boundary)`` takes the model's decision
    (forced to a boundary after ``max_padding`` frames of one word, to nothing once over).
    ``finished`` is true once the end boundary has been read: ``drain`` steps remain.
    """

    def __init__(self, tokenizer: WordTokenizer, lookahead: int, max_padding: int, hold_word: bool = False):
        self.tokenizer, self.lookahead, self.max_padding = tokenizer, lookahead, max_padding
        self.hold_word = hold_word  # the word is read at every step until the next boundary
        self.queue: deque[int] = deque()
        self.ended = False
        self.current = PAD  # the text token the next step reads
        self.pop_pending = False  # the next step reads the next queued word
        self.since_word = 0
        self.finished = False  # the end boundary has been read
        self.words_fed: list[str] = []
        self.word_frames: list[int] = []  # the frame each fed word's boundary was at
        self.step_index = 0
        self.end_frame = -1  # frame of the end boundary, once read

    def push(self, word: str) -> None:
        """Queue ``word``; ``KeyError`` outside the vocabulary (check with :meth:`known` first)."""
        if self.ended:
            raise ValueError("the text has ended")
        self.queue.append(self.tokenizer.token(word))

    def known(self, word: str) -> bool:
        try:
            self.tokenizer.token(word)
            return True
        except KeyError:
            return False

    def end(self) -> None:
        self.ended = True

    def ready(self) -> bool:
        if self.finished or self.ended:
            return True
        need = self.lookahead + (1 if self.pop_pending else 0)
        return len(self.queue) >= need

    def inputs(self) -> tuple[int, list[int]]:
        """The text token and the lookahead of this step (pops the word to feed, once)."""
        if self.pop_pending:
            self.pop_pending = False
            if self.queue:
                self.current = self.queue.popleft()
                self.words_fed.append(self.tokenizer.word(self.current))
                self.word_frames.append(self.step_index - 1)
                self.since_word = 0
            else:  # the boundary just read was the end one
                self.current = PAD
                self.finished = True
                self.end_frame = self.step_index - 1
        ahead = [self.queue[j] if j < len(self.queue) else PAD for j in range(self.lookahead)]
        return self.current, ahead

    def advance(self, boundary: bool) -> None:
        """After the step: the model's decision about the next step's text token."""
        read = self.current
        self.step_index += 1
        self.since_word += 1
        if read == BOUNDARY:
            self.pop_pending = True
            self.current = PAD
            return
        if self.finished:
            boundary = False
        elif self.since_word >= self.max_padding:
            boundary = True
        self.current = BOUNDARY if boundary else (read if self.hold_word and not self.finished else PAD)


# -- files ----------------------------------------------------------------------------------

def save_dsm_tts(model: DsmTts, directory: Path = CHECKPOINT_DIR, name: str = CHECKPOINT_NAME) -> tuple[Path, Path]:
    """Write ``NAME.safetensors`` (weights as float16, to keep the shipped file small; loaded
    back as float32) and ``NAME.json`` (config)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights, config = directory / f"{name}.safetensors", directory / f"{name}.json"
    save_file({k: (v.half() if v.is_floating_point() else v).detach().contiguous()
               for k, v in model.state_dict().items()}, str(weights))
    config.write_text(model.config.to_json())
    return weights, config


def load_dsm_tts(directory: Path = CHECKPOINT_DIR, name: str = CHECKPOINT_NAME) -> DsmTts:
    from safetensors.torch import load_file

    model = DsmTts(DsmTtsConfig.from_json((directory / f"{name}.json").read_text()))
    state = load_file(str(directory / f"{name}.safetensors"))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


# -- running streams ------------------------------------------------------------------------

@dataclass
class StreamStep:
    """What one step of one stream made known: the audio frames completed (codes ``[n, K]``,
    in order, ``first_frame`` the index of the first), the words fed this step with their
    start frame, and whether the stream is over (its last frame written)."""

    codes: np.ndarray
    first_frame: int
    words: list[tuple[str, int]]
    done: bool


class TtsRunner:
    """``size`` synthesis streams of one :class:`DsmTts`: per slot a :class:`TextFeeder` and
    the codes written but not yet complete (codebook ``k`` of a frame arrives ``delays[k]``
    steps after codebook 0). :meth:`step` advances the given ready slots together."""

    def __init__(self, model: DsmTts, size: int, temperature: float = 0.0, seed: int = 0):
        self.model, self.size, self.temperature, self.seed = model, size, temperature, seed
        c = model.config
        self.state = model.new_slots(size)
        self.feeders = [self._feeder() for _ in range(size)]
        self.pending: list[dict[int, np.ndarray]] = [{} for _ in range(size)]  # frame -> codes (-1 missing)
        self.next_frame = [0] * size  # the next complete frame to hand out
        self.frames = torch.full((size,), -1, dtype=torch.long)  # audio frames of each stream, once known
        self.generators = [torch.Generator().manual_seed(seed) for _ in range(size)]
        self._text = torch.full((size,), PAD, dtype=torch.long)
        self._ahead = torch.full((size, c.lookahead), PAD, dtype=torch.long)

    def _feeder(self) -> TextFeeder:
        c = self.model.config
        return TextFeeder(self.model.tokenizer, c.lookahead, c.max_padding, c.hold_word)

    def open(self, slot: int, seed: int | None = None) -> None:
        self.state.reset(slot)
        self.feeders[slot] = self._feeder()
        self.pending[slot] = {}
        self.next_frame[slot] = 0
        self.frames[slot] = -1
        self.generators[slot].manual_seed(self.seed if seed is None else seed)

    def step(self, rows: Sequence[int]) -> list[StreamStep]:
        """One step of each slot in ``rows`` (each must be ``feeders[slot].ready()``)."""
        c = self.model.config
        active = torch.zeros(self.size, dtype=torch.bool)
        fed_before = {}
        for slot in rows:
            feeder = self.feeders[slot]
            if not feeder.ready():
                raise ValueError(f"slot {slot} is waiting for words")
            fed_before[slot] = len(feeder.words_fed)
            token, ahead = feeder.inputs()
            if feeder.finished and self.frames[slot] < 0:
                self.frames[slot] = feeder.end_frame + TAIL_FRAMES + 1
            self._text[slot] = token
            self._ahead[slot] = torch.tensor(ahead)
            active[slot] = True
        out = self.model.step(self.state, self._text, self._ahead, active, self.frames, self.temperature,
                              self.generators)
        results = []
        for slot in rows:
            feeder = self.feeders[slot]
            feeder.advance(bool(out.boundary[slot] == 1))
            position = int(out.frame[slot])
            for k, d in enumerate(c.delays):
                f = position - c.audio_delay - d
                code = int(out.audio[slot, k])
                if f >= 0 and code >= 0:
                    self.pending[slot].setdefault(f, np.full(c.codebooks, -1, dtype=np.int64))[k] = code
            complete = []
            while self.next_frame[slot] in self.pending[slot] and (self.pending[slot][self.next_frame[slot]] >= 0).all():
                complete.append(self.pending[slot].pop(self.next_frame[slot]))
                self.next_frame[slot] += 1
            first = self.next_frame[slot] - len(complete)
            words = list(zip(feeder.words_fed[fed_before[slot]:], feeder.word_frames[fed_before[slot]:]))
            done = bool(self.frames[slot] >= 0 and self.next_frame[slot] >= int(self.frames[slot]))
            codes = np.stack(complete) if complete else np.zeros((0, c.codebooks), dtype=np.int64)
            results.append(StreamStep(codes, first, words, done))
        return results


def synthesize_codes(model: DsmTts, words: Sequence[str], max_steps: int = 2000, temperature: float = 0.0,
                     seed: int = 0) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """The codes ``[frames, K]`` of ``words`` said by one stream with the whole text known at
    once, and each word's start frame."""
    runner = TtsRunner(model, 1, temperature, seed)
    runner.open(0)
    for w in words:
        runner.feeders[0].push(w)
    runner.feeders[0].end()
    codes, timed = [], []
    for _ in range(max_steps):
        result = runner.step([0])[0]
        codes.append(result.codes)
        timed.extend(result.words)
        if result.done:
            break
    return np.concatenate(codes), timed
