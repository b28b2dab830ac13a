"""An audio codec for speech synthesis: 16 kHz waveform <-> discrete tokens at 12.5 Hz (one
80 ms frame per step, several residual codebooks) <-> waveform.

Why this design rather than a neural codec such as Mimi: no pretrained codec can be fetched
here and two CPU cores cannot train one in minutes. The codec is instead the recogniser's own
features (``models.audio_frames.LogMelFrames``: 8 sub-frames x 80 log-mel bands per frame),
normalised per band, projected on their leading principal components and quantised by
residual k-means (codebook 0 the coarse shape, each next one the residual the ones before it
left), all fitted on training frames of one voice in seconds. Back to audio, the frame's
log-mel is mapped to a linear power spectrum (least squares through the mel filterbank) and
its phase is found by a streaming Griffin-Lim (:class:`StreamingGriffinLim`): each new frame's
1280 samples are solved for with the samples already sent held fixed, so audio comes out
frame by frame with 15 ms of extra latency and no seam between frames.

Everything is deterministic: the same codes give the same samples, in one pass or frame by
frame, whichever other streams share the batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.audio_frames import (FEATURES, FRAME_SAMPLES, HOP, N_FFT, N_MELS, SAMPLE_RATE, SUBFRAMES, TAIL, WINDOW,
                                 LogMelFrames, tails_of, whole_frames)

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
CODEC_NAME = "tts_codec"
LOG_FLOOR = 1e-6  # LogMelFrames' log(mel + 1e-6)


@dataclass
class CodecConfig:
    """The codec's shape and what it was fitted on (saved beside the codebooks)."""

    codebooks: int = 6
    codebook_size: int = 512
    components: int = 128  # principal components quantised (of the 640 features of a frame)
    gl_iterations: int = 24  # Griffin-Lim iterations per frame
    gl_context: int = 4  # sub-frame columns of the previous frame held in each frame's solve
    feature_mean: list[float] = field(default_factory=lambda: [0.0] * N_MELS)
    feature_std: list[float] = field(default_factory=lambda: [1.0] * N_MELS)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "CodecConfig":
        return cls(**json.loads(text))


class MelCodec(torch.nn.Module):
    """Frames of 16 kHz audio <-> codes ``[F, codebooks]`` (int64) <-> log-mel frames ``[F, 640]``."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        c = self.config = config
        self.features = LogMelFrames()
        self.register_buffer("mean", torch.tensor(c.feature_mean, dtype=torch.float32).repeat(SUBFRAMES))
        self.register_buffer("std", torch.tensor(c.feature_std, dtype=torch.float32).repeat(SUBFRAMES))
        self.register_buffer("basis", torch.eye(FEATURES)[: c.components].T.contiguous())  # [640, P]
        self.register_buffer("centre", torch.zeros(FEATURES))
        self.register_buffer("codewords", torch.zeros(c.codebooks, c.codebook_size, c.components))

    # -- analysis ---------------------------------------------------------------------------

    def normalised_features(self, audio: np.ndarray) -> torch.Tensor:
        """Normalised log-mel frames ``[F, 640]`` of ``audio`` (float32 [T], 16 kHz)."""
        frames = torch.from_numpy(whole_frames(audio))
        return (self.features(frames, tails_of(frames)) - self.mean) / self.std

    def project(self, normalised: torch.Tensor) -> torch.Tensor:
        return (normalised - self.centre) @ self.basis

    @torch.no_grad()
    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """The codes ``[F, codebooks]`` of ``audio`` (float32 [T] at 16 kHz, cut into whole frames)."""
        return self.quantise(self.project(self.normalised_features(audio)))

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """Residual quantisation of projected frames ``[N, P]`` -> codes ``[N, codebooks]``."""
        residual = x.clone()
        codes = []
        for book in self.codewords:
            index = torch.cdist(residual, book).argmin(-1)
            codes.append(index)
            residual = residual - book[index]
        return torch.stack(codes, -1)

    # -- synthesis --------------------------------------------------------------------------

    def decode_features(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., codebooks]`` -> log-mel frames ``[..., 8, 80]`` (as LogMelFrames gives)."""
        x = torch.zeros(*codes.shape[:-1], self.config.components, device=codes.device)
        for k in range(codes.shape[-1]):  # fewer codebooks than the codec has: a coarser frame
            x = x + self.codewords[k][codes[..., k]]
        # a broadcast product and sum rather than a matmul: the same bits for a frame whatever
        # the batch it is decoded in (BLAS picks kernels by size, and Griffin-Lim amplifies
        # the last bit into an audible difference a few frames later)
        normalised = (x[..., None, :] * self.basis).sum(-1) + self.centre
        return (normalised * self.std + self.mean).reshape(*codes.shape[:-1], SUBFRAMES, N_MELS)


# -- fitting ---------------------------------------------------------------------------------

def kmeans(x: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means of ``x`` ``[N, D]`` into ``k`` centroids, started from ``k`` random rows;
    an empty cluster is restarted at the row farthest from its centroid."""
    centroids = x[torch.randperm(x.shape[0], generator=generator)[:k]].clone()
    for _ in range(iterations):
        distance = torch.cdist(x, centroids)
        nearest = distance.argmin(-1)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, x)
        counts = torch.bincount(nearest, minlength=k).to(x.dtype)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel():
            worst = distance.gather(1, nearest[:, None]).squeeze(1).topk(empty.numel()).indices
            centroids[empty] = x[worst]
    return centroids


@torch.no_grad()
def fit_codec(audios: list[np.ndarray], config: CodecConfig, *, iterations: int = 20, seed: int = 0,
              max_frames: int = 60_000, progress=None) -> tuple[MelCodec, dict]:
    """Fit the normalisation, the projection and the residual codebooks on ``audios`` (16 kHz
    float32, one voice, training sentences only). Returns the codec and the share of the
    projected variance each codebook depth leaves unexplained."""
    generator = torch.Generator().manual_seed(seed)
    probe = MelCodec(config)
    raw = torch.cat([probe.features(f, tails_of(f)) for f in (torch.from_numpy(whole_frames(a)) for a in audios)])
    bands = raw.reshape(-1, N_MELS)
    config.feature_mean = bands.mean(0).tolist()
    config.feature_std = bands.std(0).clamp_min(1e-3).tolist()
    codec = MelCodec(config)
    normalised = (raw - codec.mean) / codec.std
    if normalised.shape[0] > max_frames:
        normalised = normalised[torch.randperm(normalised.shape[0], generator=generator)[:max_frames]]
    centre = normalised.mean(0)
    _, _, vt = torch.linalg.svd(normalised - centre, full_matrices=False)
    codec.centre.copy_(centre)
    codec.basis.copy_(vt[: config.components].T)
    x = codec.project(normalised)
    total = x.square().sum().item()
    residual = x.clone()
    unexplained = []
    for k in range(config.codebooks):
        book = kmeans(residual, config.codebook_size, iterations, generator)
        codec.codewords[k].copy_(book)
        residual = residual - book[torch.cdist(residual, book).argmin(-1)]
        unexplained.append(residual.square().sum().item() / total)
        if progress is not None:
            progress(k)
    dropped = ((normalised - centre) - (normalised - centre) @ codec.basis @ codec.basis.T).square().sum().item()
    return codec.eval(), {"frames": int(normalised.shape[0]), "unexplained_by_depth": unexplained,
                          "unexplained_by_projection": dropped / (normalised - centre).square().sum().item()}


def save_codec(codec: MelCodec, directory: Path = CHECKPOINT_DIR, name: str = CODEC_NAME) -> tuple[Path, Path]:
    """Write ``NAME.safetensors`` (codebooks, projection) and ``NAME.json`` (config)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    weights, config = directory / f"{name}.safetensors", directory / f"{name}.json"
    state = {k: v.detach().contiguous() for k, v in codec.state_dict().items()}
    save_file(state, str(weights))
    config.write_text(codec.config.to_json())
    return weights, config


def load_codec(directory: Path = CHECKPOINT_DIR, name: str = CODEC_NAME) -> MelCodec:
    from safetensors.torch import load_file

    codec = MelCodec(CodecConfig.from_json((directory / f"{name}.json").read_text()))
    codec.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
    return codec.eval()


# -- back to a waveform -----------------------------------------------------------------------

class StreamingGriffinLim:
    """Log-mel frames -> 16 kHz audio, frame by frame, for ``size`` streams (slots) batched.

    Column ``c`` of a stream (sub-frame ``j`` of frame ``t``, ``c = 8t + j``) analyses samples
    ``[160c - 240, 160c + 160)`` (``LogMelFrames``' window). Decoding frame ``t`` solves for
    samples ``[1280t - 240, 1280t + 1280)`` by Griffin-Lim with momentum (Perraudin et al.
    2013) over the frame's 8 columns and ``context`` columns before them, holding the samples
    before ``1280t - 240`` at what was already sent (real-time iterative spectrogram
    inversion, Zhu et al. 2007), and sends ``[1280t - 240, 1280t + 1040)``: 1280 samples a
    frame, 240 samples (15 ms) behind; the last 240 are refined by the next frame. New columns'
    phases start from the previous column's, advanced by each bin's frequency (deterministic).
    """

    def __init__(self, size: int, iterations: int = 24, context: int = 4, momentum: float = 0.99):
        import torchaudio.functional as AF

        self.size, self.iterations, self.context, self.momentum = size, iterations, context, momentum
        fbanks = AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, SAMPLE_RATE / 2, N_MELS, SAMPLE_RATE, norm="slaney",
                                    mel_scale="slaney")  # [257, 80]
        self.mel_to_power = torch.linalg.pinv(fbanks)  # [80, 257]: least squares back through the filterbank
        self.window = torch.hann_window(WINDOW, periodic=True)
        self.columns = context + SUBFRAMES
        self.span = (self.columns - 1) * HOP + WINDOW  # samples of one solve
        self.fixed = context * HOP  # samples before 1280t - 240 inside the solve
        bins = torch.arange(N_FFT // 2 + 1, dtype=torch.float32)
        self.advance = 2 * math.pi * bins * HOP / N_FFT  # phase advance per column of each bin
        self.norm = self._overlap(self.window.square().expand(self.columns, WINDOW)).clamp_min(1e-3)
        self.history = torch.zeros(size, self.fixed)  # the last samples sent before the free part
        self.pending = torch.zeros(size, TAIL)  # estimate of the first 240 free samples
        self.magnitudes = torch.zeros(size, context, N_FFT // 2 + 1)  # the context columns' targets
        self.phase = torch.zeros(size, N_FFT // 2 + 1)  # the last column's phase

    def reset(self, slot: int) -> None:
        self.history[slot] = 0
        self.pending[slot] = 0
        self.magnitudes[slot] = 0
        self.phase[slot] = 0

    def magnitude(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Log-mel ``[..., 8, 80]`` -> linear magnitudes ``[..., 8, 257]``."""
        mel = (log_mel.exp() - LOG_FLOOR).clamp_min(0)
        power = (mel[..., :, None] * self.mel_to_power).sum(-2)  # batch-invariant, as decode_features
        return power.clamp_min(0).sqrt()

    def _overlap(self, pieces: torch.Tensor) -> torch.Tensor:
        """Overlap-add windowed columns ``[..., C, 400]`` into ``[..., span]``."""
        flat = pieces.reshape(-1, self.columns, WINDOW).transpose(1, 2)
        out = torch.nn.functional.fold(flat, (1, self.span), (1, WINDOW), stride=(1, HOP))
        return out.reshape(*pieces.shape[:-2], self.span)

    def _analyse(self, signal: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(signal.unfold(-1, WINDOW, HOP) * self.window, n=N_FFT)

    def _synthesise(self, spectrum: torch.Tensor) -> torch.Tensor:
        pieces = torch.fft.irfft(spectrum, n=N_FFT)[..., :WINDOW] * self.window
        return self._overlap(pieces) / self.norm

    @torch.no_grad()
    def step(self, log_mel: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The next 1280 samples ``[n, 1280]`` of the streams in ``rows`` ``[n]`` from their next
        frame's log-mel ``[n, 8, 80]``; other slots are left untouched."""
        n = rows.numel()
        if n == 0:
            return torch.zeros(0, FRAME_SAMPLES)
        new = self.magnitude(log_mel)  # [n, 8, 257]
        target = torch.cat([self.magnitudes[rows], new], 1)  # [n, C, 257]
        steps = torch.arange(1, SUBFRAMES + 1, dtype=torch.float32)[:, None] * self.advance
        phase = torch.cat([torch.zeros(n, self.context, new.shape[-1]), self.phase[rows, None, :] + steps], 1)
        history = self.history[rows]
        signal = torch.cat([history, self.pending[rows], torch.zeros(n, self.span - self.fixed - TAIL)], 1)
        # the context columns' phases come from the samples already sent, the new ones from the advance
        analysed = self._analyse(signal)
        angles = torch.cat([analysed[:, : self.context], torch.polar(torch.ones_like(phase[:, self.context:]),
                                                                      phase[:, self.context:])], 1)
        angles = angles / angles.abs().clamp_min(1e-8)
        previous = torch.zeros_like(angles)
        for _ in range(self.iterations):
            signal = self._synthesise(target * angles)
            signal = torch.cat([history, signal[:, self.fixed:]], 1)
            rebuilt = self._analyse(signal)
            accelerated = rebuilt - self.momentum / (1 + self.momentum) * previous
            previous = rebuilt
            angles = accelerated / accelerated.abs().clamp_min(1e-8)
        signal = self._synthesise(target * angles)
        out = signal[:, self.fixed: self.fixed + FRAME_SAMPLES]
        sent = torch.cat([history, out], 1)
        self.history[rows] = sent[:, -self.fixed:]
        self.pending[rows] = signal[:, self.fixed + FRAME_SAMPLES: self.fixed + FRAME_SAMPLES + TAIL]
        self.magnitudes[rows] = new[:, -self.context:]
        self.phase[rows] = torch.angle(angles[:, -1])
        return out.clamp(-1.0, 1.0)


def resynthesise(codec: MelCodec, codes: torch.Tensor, iterations: int | None = None) -> np.ndarray:
    """Audio (float32, 16 kHz) of codes ``[F, codebooks]``, frame by frame as a stream gets it."""
    c = codec.config
    vocoder = StreamingGriffinLim(1, iterations or c.gl_iterations, c.gl_context)
    mel = codec.decode_features(codes)
    rows = torch.zeros(1, dtype=torch.long)
    return torch.cat([vocoder.step(mel[t:t + 1], rows) for t in range(mel.shape[0])], 1)[0].numpy()


@torch.no_grad()
def encode_many(codec: MelCodec, audios: list[np.ndarray], chunk: int = 8192) -> list[torch.Tensor]:
    """:meth:`MelCodec.encode` of each of ``audios``, quantised in large batches (faster)."""
    features = [codec.project(codec.normalised_features(a)) for a in audios]
    flat = torch.cat(features)
    codes = torch.cat([codec.quantise(flat[i: i + chunk]) for i in range(0, flat.shape[0], chunk)])
    return list(codes.split([f.shape[0] for f in features]))
