"""The stand-in policy: an inference server's identity model, for capacity work.

It has the shape of a real action-chunk policy (H = 50 actions of dimension A = 14 from a
14-dimensional state) and the cost profile of a GPU at small batches: every batched call
takes ``latency_s`` whatever the batch size. Its output is deterministic and depends on
the input, so tests can check that every client got *its own* chunk:

    actions[b, h, j] = state[b, j] + (h + 1) * step * tanh(state[b, j])

Numpy only (no torch), so serving it starts instantly.
"""

from __future__ import annotations

import time

import numpy as np

H = 50  # prediction horizon
A = 14  # action dimension
S = 14  # state dimension
STEP = 0.01


_RAMP = (np.arange(1, H + 1, dtype=np.float32) * STEP)[None, :, None]  # [1, H, 1]: (h + 1) * STEP


def standin_actions(states: np.ndarray) -> np.ndarray:
    """Chunks [B, H, A] (float32) for states [B, S]; the formula in the module docstring."""
    states = np.asarray(states, dtype=np.float32)[:, None, :]
    return states + _RAMP * np.tanh(states)


class StandinPolicy:
    """Batched calls of fixed duration.

    ``sample(states, degraded)`` returns ``standin_actions(states)`` after ``latency_s`` in
    total has passed since the call began (``degraded_latency_s`` if any item is degraded,
    the way a sampler running fewer denoising steps gets faster). Sleeping releases the GIL,
    like torch kernels do.
    """

    horizon = H
    action_dim = A
    state_dim = S

    def __init__(self, latency_s: float = 0.02, degraded_latency_s: float | None = None):
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        self.latency_s = latency_s
        self.degraded_latency_s = latency_s / 2 if degraded_latency_s is None else degraded_latency_s

    def sample(self, states: np.ndarray, degraded: bool = False) -> np.ndarray:
        """Chunks for ``states`` [B, S]; ``degraded``: some item of the batch runs degraded."""
        start = time.monotonic()
        chunks = standin_actions(states)
        remaining = (self.degraded_latency_s if degraded else self.latency_s) - (time.monotonic() - start)
        if remaining > 0:
            time.sleep(remaining)
        return chunks
