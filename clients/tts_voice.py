"""The one voice Headway's speech synthesis is trained to speak: flite's ``kal16`` (CMU's
"kal" diphone voice at 16 kHz, a clear male US voice), at its default rate and pitch, with no
augmentation -- a TTS voice should be clean, unlike the recogniser's training audio.

The utterances are rendered here (``clients.synthesizers.Flite``, in-process, about a
millisecond each) from the speech corpus's TRAINING sentences only (``sentences.jsonl``,
``heldout`` false); held-out sentences are rendered only for evaluation. Leading silence is
cut to one frame so that a model trained on them starts speaking at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOICE = "flite:kal16"
LEAD_S = 0.08  # silence kept before the first word
TAIL_S = 0.24  # at most this much silence kept after the last word


@dataclass
class VoiceUtterance:
    """One sentence in the TTS voice: 16 kHz float32 audio and its timed words."""

    text: str
    audio: np.ndarray
    words: list  # models.dsm_streams.TimedWord


def corpus_sentences(corpus: Path) -> tuple[list[str], list[str]]:
    """(training, held-out) sentence texts of the speech corpus in ``corpus``."""
    rows = [json.loads(line) for line in (corpus / "sentences.jsonl").read_text().splitlines() if line]
    return [r["text"] for r in rows if not r["heldout"]], [r["text"] for r in rows if r["heldout"]]


def render(texts: list[str]) -> list[VoiceUtterance]:
    """``texts`` in the TTS voice, trimmed to ``LEAD_S`` before the first word and at most
    ``TAIL_S`` after the last."""
    from clients.synthesizers import Flite
    from models.dsm_streams import TimedWord

    flite = Flite()
    name = VOICE.split(":", 1)[1]
    out = []
    for text in texts:
        r = flite.synthesize(text.split(), name)
        if r.sample_rate != 16_000:
            raise ValueError(f"{VOICE} speaks at {r.sample_rate} Hz; 16 kHz expected")
        cut = max(0, int((r.words[0].start_s - LEAD_S) * 16_000))
        end = min(len(r.audio), int((r.words[-1].end_s + TAIL_S) * 16_000))
        shift = cut / 16_000
        words = [TimedWord(w.text, w.start_s - shift, w.end_s - shift) for w in r.words]
        out.append(VoiceUtterance(text, r.audio[cut:end].astype(np.float32), words))
    return out
