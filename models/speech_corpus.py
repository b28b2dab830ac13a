"""The speech corpus's rules, apart from the synthesizers that speak it (``clients.speech_data``):
which sentences and voices are held out, what one utterance's record holds, and the checks
every record passes.

Held out, never used for training in any form: 10% of the sentences, and the voice
``festival:cmu_us_slt_arctic_hts`` (Debian's ``festvox-us-slt-hts``) together with flite's
``slt``, the same speaker (CMU ARCTIC slt) through another synthesizer. Splits:

* ``train``: training sentences, training voices;
* ``test_seen_voices``: held-out sentences, training voices;
* ``test_heldout_voice``: held-out sentences, the held-out voice.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from models.dsm_streams import TimedWord
from models.world_grammar import Sentence

HELDOUT_VOICE = "festival:cmu_us_slt_arctic_hts"
# voices of the held-out speaker: never rendered for training
HELDOUT_SPEAKER_VOICES = frozenset({HELDOUT_VOICE, "flite:slt"})
HELDOUT_FRACTION = 0.1
SPLITS = ("train", "test_seen_voices", "test_heldout_voice")


def split_sentences(sentences: Sequence[Sentence], heldout_fraction: float = HELDOUT_FRACTION,
                    seed: int = 0) -> tuple[list[Sentence], list[Sentence]]:
    """(training, held-out) sentences: ``round(fraction * n)`` held out, chosen at random
    (seeded) among the sentences whose every word also occurs in a training sentence, so
    that no held-out word is one the model never heard."""
    count = round(heldout_fraction * len(sentences))
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    remaining = Counter(word for s in sentences for word in s.words)
    heldout: set[int] = set()
    for i in order:
        if len(heldout) == count:
            break
        words = Counter(sentences[i].words)
        if all(remaining[word] > n for word, n in words.items()):
            heldout.add(i)
            remaining.subtract(words)
    if len(heldout) < count:
        raise ValueError(f"only {len(heldout)} of {count} sentences can be held out with every word kept in training")
    train = [s for i, s in enumerate(sentences) if i not in heldout]
    return train, [s for i, s in enumerate(sentences) if i in heldout]


@dataclass
class Utterance:
    """One line of the corpus manifest: a sentence spoken by a voice, how, and where its
    words lie in the audio file."""

    id: str
    split: str  # one of SPLITS
    sentence: str
    voice: str  # "synthesizer:voice"
    rate: float  # the synthesizer's speaking rate (1.0: its default)
    pitch: float  # the synthesizer's pitch (1.0: its default)
    augment: dict[str, Any]  # speed, gain_db, noise_snr_db, room_rt60_s, telephone (None: not applied)
    sample_rate: int
    num_samples: int
    words: list[TimedWord]
    path: str  # relative to the corpus directory
    kind: str = ""  # the sentence's kind (world_grammar)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate

    def to_json(self) -> str:
        record = asdict(self)
        record["words"] = [[w.text, round(w.start_s, 6), round(w.end_s, 6)] for w in self.words]
        return json.dumps(record)

    @classmethod
    def from_json(cls, line: str) -> "Utterance":
        record = json.loads(line)
        record["words"] = [TimedWord(text, start, end) for text, start, end in record["words"]]
        return cls(**record)


class CorpusError(ValueError):
    """A record breaks a rule of the corpus."""


def check_timings(words: Sequence[TimedWord], duration_s: float, tolerance_s: float = 1e-3) -> None:
    """Raise :class:`CorpusError` unless every word lies in ``[0, duration]`` with start <
    end, and each word starts no earlier than the previous one ends."""
    previous_end = 0.0
    for word in words:
        if not (word.start_s < word.end_s):
            raise CorpusError(f"{word.text!r} ends ({word.end_s:.3f} s) before it starts ({word.start_s:.3f} s)")
        if word.start_s < previous_end - tolerance_s or word.start_s < -tolerance_s:
            raise CorpusError(f"{word.text!r} starts at {word.start_s:.3f} s, before {previous_end:.3f} s")
        if word.end_s > duration_s + tolerance_s:
            raise CorpusError(f"{word.text!r} ends at {word.end_s:.3f} s, after the audio ({duration_s:.3f} s)")
        previous_end = word.end_s


def check_utterance(u: Utterance) -> None:
    """Raise :class:`CorpusError` unless ``u`` keeps the corpus's rules: its words are the
    sentence's, timed within the audio; the held-out speaker is in its own split only."""
    if u.split not in SPLITS:
        raise CorpusError(f"{u.id}: unknown split {u.split!r}")
    if [w.text for w in u.words] != u.sentence.split():
        raise CorpusError(f"{u.id}: words {[w.text for w in u.words]} are not the sentence {u.sentence!r}")
    check_timings(u.words, u.duration_s)
    heldout_speaker = u.voice in HELDOUT_SPEAKER_VOICES
    if (u.split == "test_heldout_voice") != heldout_speaker:
        raise CorpusError(f"{u.id}: voice {u.voice} in split {u.split}")


def check_corpus(utterances: Iterable[Utterance], heldout_sentences: set[str]) -> None:
    """Every record passes :func:`check_utterance`; training records use no held-out
    sentence, test records only held-out ones."""
    for u in utterances:
        check_utterance(u)
        if (u.split == "train") == (u.sentence in heldout_sentences):
            raise CorpusError(f"{u.id}: sentence {u.sentence!r} in split {u.split}")
