"""Debian's speech synthesizers, driven to say the world's sentences with exact word timings.

* **espeak-ng** through ``libespeak-ng.so.1`` (``ctypes``): its synthesis callback reports a
  word event at the sample where each word starts and a phoneme event for every phoneme; a
  word ends where the next word starts or where a pause phoneme (``_``, ``_:``...) begins.
* **flite** through ``libflite.so.1`` and its voice libraries (``ctypes``): the utterance's
  ``Word`` relation, each word's first and last segment in the ``Segment`` relation.
* **festival** (``festival -b`` on a scheme file of many utterances): the ``Word``
  relation's ``word_start`` and ``word_end`` features, the wave saved by ``utt.save.wave``.

Each returns the audio as float32 at the synthesizer's rate and the words with their start and
end in seconds, read from the synthesizer, never guessed; a synthesizer that splits or drops
a word raises :class:`SynthesisError`. Speaking rate and pitch are the synthesizers' own
(espeak's words per minute and pitch, flite's and festival's duration stretch and f0 target).

The libraries keep global state: use one instance of each synthesizer per process, from one
thread. Both libraries draw noise from the C library's ``rand()``; ``synthesize`` seeds it
(``seed``) first, so flite says the same thing twice. espeak-ng also carries state from one
utterance to the next (its durations move by a few samples from call to call): a process that
makes the same calls in the same order gets the same audio, and the word times are always
those of the audio returned.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from models.dsm_streams import TimedWord


_libc = ctypes.CDLL("libc.so.6")


class SynthesisError(RuntimeError):
    """A synthesizer failed, or its words are not the words it was given."""


@dataclass(frozen=True)
class Voice:
    """A voice of one synthesizer: ``name`` is ``"synthesizer:voice"`` (``"espeak:en-us+f3"``)."""

    name: str

    @property
    def synthesizer(self) -> str:
        return self.name.partition(":")[0]

    @property
    def ident(self) -> str:
        return self.name.partition(":")[2]


@dataclass
class Rendering:
    """One sentence spoken: mono float32 samples in [-1, 1], their rate, the timed words."""

    audio: np.ndarray
    sample_rate: int
    words: list[TimedWord]


ESPEAK_VOICES = ("en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029",
                 "en-us-nyc")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt",
                   "klatt2", "klatt3", "klatt4", "croak", "whisper", "whisperf", "Alicia", "Andy", "Annie", "Denis",
                   "Gene", "Jacky", "Lee", "Michael", "Mike", "Storm", "adam", "anika", "aunty", "belinda",
                   "benjamin", "boris", "caleb", "david", "ed", "edward", "grandma", "grandpa", "iven", "john",
                   "linda", "max", "norbert", "paul", "quincy", "rob", "robert", "shelby", "steph", "travis",
                   "victor", "zac")
# flite's slt is the same speaker as festival's held-out us-slt-hts voice (CMU ARCTIC slt): not
# used at all; awb_time is a talking clock.
FLITE_VOICES = ("kal", "kal16", "awb", "rms")
FESTIVAL_VOICES = ("kal_diphone", "ked_diphone")
# Debian's festvox-us-slt-hts: never used for training in any form (models.speech_corpus)
FESTIVAL_HELDOUT_VOICE = "cmu_us_slt_arctic_hts"


def training_voices() -> list[Voice]:
    """Every voice the corpus may train on (the held-out voice and its speaker excluded)."""
    espeak = [Voice(f"espeak:{base}{'+' + variant if variant else ''}")
              for base in ESPEAK_VOICES for variant in ESPEAK_VARIANTS]
    return espeak + [Voice(f"flite:{v}") for v in FLITE_VOICES] + [Voice(f"festival:{v}") for v in FESTIVAL_VOICES]


def heldout_voice() -> Voice:
    return Voice(f"festival:{FESTIVAL_HELDOUT_VOICE}")


def _check_words(said: Sequence[str], heard: Sequence[str], voice: str) -> None:
    if list(said) != list(heard):
        raise SynthesisError(f"{voice} said {list(heard)} for {list(said)}")


# -- espeak-ng ----------------------------------------------------------------------------

class _EspeakEvent(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_ESPEAK_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                    ctypes.POINTER(_EspeakEvent))
_EVENT_END_OF_LIST, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7
_AUDIO_OUTPUT_SYNCHRONOUS, _INITIALIZE_PHONEME_EVENTS = 2, 1
_ESPEAK_RATE, _ESPEAK_PITCH = 1, 3
_POS_CHARACTER = 1


class Espeak:
    """espeak-ng in this process. ``rate`` 1.0 is 175 words a minute; ``pitch`` scales the
    voice's base pitch (espeak's 0-100 scale, 50 by default)."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libespeak-ng.so.1")
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise SynthesisError("espeak_Initialize failed")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, bytes]] = []  # (type, text_position, sample, phoneme)
        self._phoneme_counts: dict[tuple[str, str], int] = {}
        self._callback = _ESPEAK_CALLBACK(self._collect)  # kept referenced: C calls it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_END_OF_LIST:
            e = events[i]
            phoneme = bytes(e.id).split(b"\0")[0] if e.type == _EVENT_PHONEME else b""
            self._events.append((e.type, e.text_position, e.sample, phoneme))
            i += 1
        return 0

    def synthesize(self, words: Sequence[str], voice: str, rate: float = 1.0, pitch: float = 1.0,
                   seed: int = 0) -> Rendering:
        _libc.srand(seed)
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SynthesisError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(_ESPEAK_RATE, int(round(175 * rate)), 0)
        self.lib.espeak_SetParameter(_ESPEAK_PITCH, int(np.clip(round(50 * pitch), 0, 99)), 0)
        text = " ".join(words).encode()
        self._chunks, self._events = [], []
        self.lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        audio = (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)).astype(np.float32) / 32768
        # text positions are 1-based character offsets of each word in ``text``
        offsets = {m.start() + 1: i for i, m in enumerate(re.finditer(r"\S+", text.decode()))}
        starts: dict[int, int] = {}
        phonemes: list[tuple[int, int]] = []  # (word index of its event, sample) of spoken phonemes
        pauses: list[int] = []
        for kind, position, sample, phoneme in self._events:
            if kind == _EVENT_WORD:
                if position == 0:  # a stray event some variants send after the last word
                    continue
                if position not in offsets:
                    raise SynthesisError(f"espeak:{voice} reported a word at character {position} of {text!r}")
                starts.setdefault(offsets[position], sample)
            elif kind == _EVENT_PHONEME and phoneme.startswith(b"_"):
                pauses.append(sample)
            elif kind == _EVENT_PHONEME and position in offsets:
                phonemes.append((offsets[position], sample))
        if 0 not in starts:
            raise SynthesisError(f"espeak:{voice} reported no first word for {text!r}")
        for first in sorted(starts):
            joined = []  # the words after ``first`` that got no event of their own
            while first + 1 + len(joined) < len(words) and first + 1 + len(joined) not in starts:
                joined.append(first + 1 + len(joined))
            if joined:
                starts.update(self._split_joined(words, first, joined, phonemes, voice))
        timed = []
        for i, word in enumerate(words):
            start = starts[i]
            end = starts[i + 1] if i + 1 < len(words) else len(audio)
            end = min([end] + [p for p in pauses if start < p < end])
            timed.append(TimedWord(word, start / self.sample_rate, end / self.sample_rate))
        return Rendering(audio, self.sample_rate, timed)

    def _split_joined(self, words: Sequence[str], first: int, joined: list[int], phonemes: list[tuple[int, int]],
                      voice: str) -> dict[int, int]:
        """espeak speaks a few word pairs as one dictionary entry ("for the", "of the") and
        reports one word event for both: split the group's phoneme events at the number of
        phonemes each word has alone in the same voice."""
        group = [sample for index, sample in phonemes if index == first]
        counts = [self._phoneme_count(words[i], voice) for i in [first, *joined]]
        if sum(counts) != len(group) or min(counts) < 1:
            raise SynthesisError(f"espeak:{voice} joined {[words[i] for i in [first, *joined]]} into "
                                 f"{len(group)} phonemes; alone they have {counts}")
        starts, at = {}, 0
        for i, count in zip([first, *joined], counts):
            if i != first:
                starts[i] = group[at]
            at += count
        return starts

    def _phoneme_count(self, word: str, voice: str) -> int:
        key = (word, voice)
        if key not in self._phoneme_counts:
            saved = self._chunks, self._events
            self._chunks, self._events = [], []
            text = word.encode()
            self.lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
            self.lib.espeak_Synchronize()
            self._phoneme_counts[key] = sum(1 for kind, _, _, p in self._events
                                            if kind == _EVENT_PHONEME and not p.startswith(b"_"))
            self._chunks, self._events = saved
        return self._phoneme_counts[key]


# -- flite --------------------------------------------------------------------------------

class _FliteWave(ctypes.Structure):
    _fields_ = [("type", ctypes.c_char_p), ("sample_rate", ctypes.c_int), ("num_samples", ctypes.c_int),
                ("num_channels", ctypes.c_int), ("samples", ctypes.POINTER(ctypes.c_short))]


class Flite:
    """flite in this process. ``rate`` divides the duration stretch; ``pitch`` scales the
    voice's f0 target mean."""

    WORD_START = b"R:SylStructure.daughter1.daughter1.R:Segment.p.end"
    WORD_END = b"R:SylStructure.daughtern.daughtern.R:Segment.end"

    def __init__(self) -> None:
        for name in ("libflite.so.1", "libflite_usenglish.so.1", "libflite_cmulex.so.1"):
            lib = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            if name == "libflite.so.1":
                self.lib = lib
        L = self.lib
        L.flite_init()
        for fn, res, args in (
                ("flite_synth_text", ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_void_p]),
                ("flite_feat_set_float", None, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]),
                ("flite_get_param_float", ctypes.c_float, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_float]),
                ("utt_relation", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
                ("relation_head", ctypes.c_void_p, [ctypes.c_void_p]),
                ("item_next", ctypes.c_void_p, [ctypes.c_void_p]),
                ("ffeature_float", ctypes.c_float, [ctypes.c_void_p, ctypes.c_char_p]),
                ("ffeature_string", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_char_p]),
                ("utt_wave", ctypes.POINTER(_FliteWave), [ctypes.c_void_p]),
                ("delete_utterance", None, [ctypes.c_void_p])):
            getattr(L, fn).restype = res
            getattr(L, fn).argtypes = args
        self._voices: dict[str, tuple[int, float]] = {}  # name -> (cst_voice*, its own f0 mean)

    def _voice(self, name: str) -> tuple[int, int, float]:
        """(cst_voice*, its features, its own f0 target mean), registered once."""
        if name not in self._voices:
            try:
                library = ctypes.CDLL(f"libflite_cmu_us_{name}.so.1")
            except OSError:
                raise SynthesisError(f"flite has no voice {name!r}") from None
            register = getattr(library, f"register_cmu_us_{name}")
            register.restype, register.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
            voice = register(None)
            f0 = self.lib.flite_get_param_float(self._features(voice), b"int_f0_target_mean", 100.0)
            self._voices[name] = (voice, f0)
        voice, f0 = self._voices[name]
        return voice, self._features(voice), f0

    @staticmethod
    def _features(voice: int) -> int:
        """``voice->features``: a ``cst_voice`` starts with its name, then its features."""
        return ctypes.cast(voice + ctypes.sizeof(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p))[0]

    def synthesize(self, words: Sequence[str], voice: str, rate: float = 1.0, pitch: float = 1.0,
                   seed: int = 0) -> Rendering:
        handle, features, f0 = self._voice(voice)
        _libc.srand(seed)
        self.lib.flite_feat_set_float(features, b"duration_stretch", 1.0 / rate)
        self.lib.flite_feat_set_float(features, b"int_f0_target_mean", f0 * pitch)
        utterance = self.lib.flite_synth_text(" ".join(words).encode(), handle)
        if not utterance:
            raise SynthesisError(f"flite:{voice} failed on {' '.join(words)!r}")
        try:
            w = self.lib.utt_wave(utterance).contents
            audio = np.ctypeslib.as_array(w.samples, (w.num_samples * w.num_channels,)).astype(np.float32) / 32768
            audio = audio.reshape(-1, w.num_channels)[:, 0].copy()
            timed = []
            item = self.lib.relation_head(self.lib.utt_relation(utterance, b"Word"))
            while item:
                timed.append(TimedWord(self.lib.ffeature_string(item, b"name").decode(),
                                       float(self.lib.ffeature_float(item, self.WORD_START)),
                                       float(self.lib.ffeature_float(item, self.WORD_END))))
                item = self.lib.item_next(item)
            rate_hz = int(w.sample_rate)
        finally:
            self.lib.delete_utterance(utterance)
        _check_words(words, [t.text for t in timed], f"flite:{voice}")
        return Rendering(audio, rate_hz, timed)


# -- festival ----------------------------------------------------------------------------

_FESTIVAL_PROGRAM = """
(define (headway_say voice stretch pitch text wav)
  (eval (list voice))
  (Parameter.set 'Duration_Stretch stretch)
  (if (and (boundp 'int_lr_params) (assoc 'target_f0_mean int_lr_params))
      (set! int_lr_params
            (cons (list 'target_f0_mean (* pitch (car (cdr (assoc 'target_f0_mean int_lr_params)))))
                  int_lr_params)))
  (set! utt (utt.synth (eval (list 'Utterance 'Text text))))
  (utt.save.wave utt wav 'riff)
  (format t "UTT %s\\n" wav)
  (mapcar (lambda (w) (format t "W %s %f %f\\n" (item.name w) (item.feat w "word_start") (item.feat w "word_end")))
          (utt.relation.items utt 'Word))
  (format t "END\\n"))
"""


@dataclass(frozen=True)
class FestivalRequest:
    words: tuple[str, ...]
    voice: str
    rate: float = 1.0
    pitch: float = 1.0


class Festival:
    """festival as a subprocess, many utterances per run (:meth:`synthesize_many`)."""

    def __init__(self, timeout_s: float = 600.0) -> None:
        self.timeout_s = timeout_s

    def synthesize(self, words: Sequence[str], voice: str, rate: float = 1.0, pitch: float = 1.0) -> Rendering:
        rendering = self.synthesize_many([FestivalRequest(tuple(words), voice, rate, pitch)])[0]
        if isinstance(rendering, SynthesisError):
            raise rendering
        return rendering

    def synthesize_many(self, requests: Sequence[FestivalRequest]) -> list[Rendering | SynthesisError]:
        """One festival run for all ``requests``: per request, its rendering, or the error
        saying why its words could not be timed. Raises :class:`SynthesisError` when festival
        itself fails."""
        with tempfile.TemporaryDirectory(prefix="headway-festival-") as tmp:
            lines = [_FESTIVAL_PROGRAM]
            for i, r in enumerate(requests):
                if not all(re.fullmatch(r"[a-z]+", w) for w in r.words):
                    raise SynthesisError(f"festival is given lowercase words only, not {r.words}")
                lines.append(f'(headway_say \'voice_{r.voice} {1.0 / r.rate:.4f} {r.pitch:.4f} "{" ".join(r.words)}" '
                             f'"{tmp}/{i}.wav")')
            program = Path(tmp) / "say.scm"
            program.write_text("\n".join(lines) + "\n")
            done = subprocess.run(["festival", "-b", str(program)], capture_output=True, text=True,
                                  timeout=self.timeout_s, env={**os.environ, "LANG": "C"})
            if done.returncode != 0:
                raise SynthesisError(f"festival failed ({done.returncode}): {done.stderr[-2000:]}")
            timings: list[list[TimedWord]] = []
            for line in done.stdout.splitlines():
                if line.startswith("UTT "):
                    timings.append([])
                elif line.startswith("W ") and timings:
                    _, word, start, end = line.split()
                    timings[-1].append(TimedWord(word, float(start), float(end)))
            if len(timings) != len(requests):
                raise SynthesisError(f"festival said {len(timings)} of {len(requests)} utterances: {done.stderr[-2000:]}")
            out: list[Rendering | SynthesisError] = []
            for i, (r, timed) in enumerate(zip(requests, timings)):
                try:
                    _check_words(r.words, [t.text for t in timed], f"festival:{r.voice}")
                except SynthesisError as error:
                    out.append(error)
                    continue
                audio, rate_hz = read_wav(Path(tmp) / f"{i}.wav")
                out.append(Rendering(audio, rate_hz, timed))
            return out


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file as mono float32 in [-1, 1] and its sample rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit samples; 16-bit PCM expected")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
        return data[:, 0].astype(np.float32) / 32768, w.getframerate()


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Mono float32 in [-1, 1] as a 16-bit PCM WAV file (clipped)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
