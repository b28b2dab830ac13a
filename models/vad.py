"""Voice activity of many streams at once: Silero VAD (the ``silero-vad`` package's model), stepped
over slots like the recogniser.

The package's own wrapper (``load_silero_vad``) keeps one hidden state for one batch and resets
it whenever the batch size changes, so it cannot serve streams that come and go. This module
runs the same network -- its weights are read from the TorchScript model the package ships,
nothing is downloaded -- with the LSTM state and the 64-sample context held per slot, like
:class:`models.dsm_asr.AsrSlots`: :meth:`SileroVad.step` advances the active slots by one
80 ms frame (1280 samples at 16 kHz), idle slots untouched. It gives what the package's model
gives on the same audio (tested to 1e-6).

Silero reads 512-sample chunks (32 ms); 1280 = 2.5 chunks, so a slot's frames alternate between
2 and 3 chunks (with half a chunk carried over) and a frame's probability is the largest of
its chunks': the chance that the frame holds speech.

Importing the ``silero_vad`` package sets torch's thread count to 1 as a side effect; the
model file is found without importing it.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

CHUNK = 512  # samples per Silero step at 16 kHz
CONTEXT = 64  # samples of the previous chunk each step reads
FRAME_SAMPLES = 1280
HIDDEN = 128


def silero_model_path() -> Path:
    """The TorchScript model inside the installed ``silero-vad`` package."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("silero-vad is not installed (pip install silero-vad)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.jit"


@dataclass
class VadSlots:
    h: torch.Tensor  # [S, 128] LSTM state
    c: torch.Tensor  # [S, 128]
    context: torch.Tensor  # [S, 64]: the last samples of the last chunk
    carry: torch.Tensor  # [S, 256]: half a chunk carried over from the previous frame
    odd: torch.Tensor  # [S] bool: the slot carries half a chunk

    def reset(self, slot: int) -> None:
        for t in (self.h, self.c, self.context, self.carry):
            t[slot] = 0
        self.odd[slot] = False


class SileroVad:
    """Silero VAD v6 at 16 kHz, batched over slots (see the module docstring)."""

    def __init__(self, path: Path | None = None):
        with warnings.catch_warnings():  # torch deprecates TorchScript; the package ships its model as one
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path or silero_model_path()), map_location="cpu")
        state = {k: v.detach().clone() for k, v in module._model.state_dict().items()}
        self.basis = state["stft.forward_basis_buffer"]  # [258, 1, 256]: a real/imaginary STFT as a conv
        self.convs = [(state[f"encoder.{i}.reparam_conv.weight"], state[f"encoder.{i}.reparam_conv.bias"], stride)
                      for i, stride in enumerate((1, 2, 2, 1))]
        self.w_ih, self.w_hh = state["decoder.rnn.weight_ih"], state["decoder.rnn.weight_hh"]
        self.b = state["decoder.rnn.bias_ih"] + state["decoder.rnn.bias_hh"]
        self.out_w, self.out_b = state["decoder.decoder.2.weight"][:, :, 0], state["decoder.decoder.2.bias"]

    def new_slots(self, size: int) -> VadSlots:
        return VadSlots(torch.zeros(size, HIDDEN), torch.zeros(size, HIDDEN), torch.zeros(size, CONTEXT),
                        torch.zeros(size, CHUNK // 2), torch.zeros(size, dtype=torch.bool))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """The network before its LSTM (stateless): ``x`` [n, 64 + 512] (context, then a chunk) -> [n, 128]."""
        x = F.pad(x[:, None], (0, CONTEXT), mode="reflect")
        x = F.conv1d(x, self.basis, stride=CHUNK // 4)
        half = self.basis.shape[0] // 2
        x = (x[:, :half] ** 2 + x[:, half:] ** 2).sqrt()
        for weight, bias, stride in self.convs:
            x = F.relu(F.conv1d(x, weight, bias, stride=stride, padding=1))
        return x.squeeze(-1)

    def _decode(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The LSTM cell and the output: (speech probability [n], h, c)."""
        gates = x @ self.w_ih.T + h @ self.w_hh.T + self.b
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return torch.sigmoid(F.relu(h) @ self.out_w.T + self.out_b)[:, 0], h, c

    @torch.no_grad()
    def step(self, slots: VadSlots, frames: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Advance the ``active`` slots by one frame each (``frames`` [S, 1280] at 16 kHz); returns
        each frame's speech probability [S] (0 for idle slots)."""
        size = slots.h.shape[0]
        probability = torch.zeros(size)
        rows = active.nonzero().squeeze(1)
        n = rows.numel()
        if n == 0:
            return probability
        odd = slots.odd[rows]
        # each row's samples: its context, the carried half chunk (odd slots), then the frame
        audio = torch.zeros(n, CONTEXT + CHUNK + FRAME_SAMPLES)  # + room for an even row's unused third window
        audio[:, CONTEXT + CHUNK // 2: CONTEXT + CHUNK // 2 + FRAME_SAMPLES] = frames[rows]
        audio[odd, CONTEXT:CONTEXT + CHUNK // 2] = slots.carry[rows[odd]]
        start = torch.where(odd, 0, CHUNK // 2)  # where each row's first chunk begins, after the context
        # its context (the last 64 samples of its last chunk) right before its first chunk
        audio[torch.arange(n)[:, None], start[:, None] + torch.arange(CONTEXT)] = slots.context[rows]
        # every chunk of every row through the stateless part at once: windows 0 and 1 of all rows,
        # window 2 of the odd rows (window k = the 64 samples before chunk k, then chunk k)
        odd_rows = odd.nonzero().squeeze(1)
        row_index = torch.cat([torch.arange(n), torch.arange(n), odd_rows])
        offsets = torch.cat([start, start + CHUNK, start[odd_rows] + 2 * CHUNK])
        windows = audio[row_index[:, None], offsets[:, None] + torch.arange(CONTEXT + CHUNK)]
        encoded = self._encode(windows)
        h, c = slots.h[rows], slots.c[rows]
        p0, h, c = self._decode(encoded[:n], h, c)
        p1, h, c = self._decode(encoded[n:2 * n], h, c)
        best = torch.maximum(p0, p1)
        if odd_rows.numel():
            p2, h[odd_rows], c[odd_rows] = self._decode(encoded[2 * n:], h[odd_rows], c[odd_rows])
            best[odd_rows] = torch.maximum(best[odd_rows], p2)
        last = torch.where(odd, start + 2 * CHUNK, start + CHUNK)  # the last chunk used starts here
        slots.context[rows] = audio[torch.arange(n)[:, None], last[:, None] + CHUNK + torch.arange(CONTEXT)]
        slots.h[rows], slots.c[rows] = h, c
        even = ~odd  # an even slot leaves half a chunk over: it becomes odd
        slots.carry[rows[even]] = frames[rows[even], -CHUNK // 2:]
        slots.odd[rows] = even
        probability[rows] = best
        return probability
