"""Real-time chunking guidance: inpaint the new chunk towards the previous one.

Implements ``policies.base.StepGuide`` (the sampler calls it once per denoising step), as
in RTC (Black, Galliker, Levine 2025, arXiv 2506.07339: Algorithm 1, ΠGDM-style guidance
with the soft mask; names follow the paper and the Kinetix reference's ``realtime_action``):

Flow policies (flow time ``tau`` from 0 = noise to 1 = data, Euler ``x <- x + dt * v``):

1. one-step estimate of the clean chunk:   ``x̂1 = x + (1 - tau) * v(x, tau)``
2. weighted error to the previous chunk:   ``e = W ⊙ (Y - x̂1)``
3. vector-Jacobian product (one backward): ``g = eᵀ ∂x̂1/∂x``
4. guidance weight, clipped at beta:        ``w(tau) = min(beta, (1-tau)/tau * 1/r²)``,
   ``r² = (1-tau)² / (tau² + (1-tau)²)``; at tau = 0 the infinite ratio is replaced by beta
5. guided velocity:                         ``v + w * g``

Diffusion policies (diffusers schedulers, epsilon prediction, ``x_t = sqrt(ᾱ) x0 +
sqrt(1-ᾱ) ε``): the same guidance expressed through the noise prediction. Derivation:

* ``x̂0 = (x - sqrt(1-ᾱ) ε(x)) / sqrt(ᾱ)`` and ``g = eᵀ ∂x̂0/∂x`` with ``e = W ⊙ (Y - x̂0)``.
* The flow path maps onto the variance-preserving path by ``x_vp = x_flow / c`` with
  ``c = sqrt(tau² + (1-tau)²)``, ``sqrt(ᾱ) = tau / c``, ``sqrt(1-ᾱ) = (1-tau) / c``.
  Under this map the flow weight becomes ``w = min(beta, 1 / sqrt(ᾱ (1-ᾱ)))``
  (``(tau²+(1-tau)²) / (tau (1-tau))`` written in ᾱ), and ``r² = 1 - ᾱ``.
* Flow guidance adds ``Δv = w g_flow`` to the velocity, i.e. ``Δscore = tau/(1-tau) Δv``.
  In VP coordinates (``score_vp = c score_flow``, ``g_vp = c g_flow``) that is
  ``Δscore_vp = sqrt(ᾱ)/sqrt(1-ᾱ) * w * g``; and since ``ε = -sqrt(1-ᾱ) score``,
  **``ε_guided = ε - sqrt(ᾱ) * w * g``** (minus: a higher score toward Y is less noise).
  Unclipped this is ``Δscore = g / (1-ᾱ) = g / r²``, exactly ΠGDM's correction; it moves
  ``x̂0`` by ``+sqrt(1-ᾱ) w g`` (toward ``Y``), the same as the flow update moves ``x̂1``.

At pure noise (``ᾱ`` below ``MIN_ALPHA_BAR``, e.g. the first "trailing" DDIM step at
``t = T-1`` where ``ᾱ ≈ 2e-7``) the ε-parametrised clean estimate divides the network's
error by ``sqrt(ᾱ)`` and is meaningless, so that step runs unguided (a flow policy's
``x̂1`` has no such singularity: its velocity parametrisation stays finite at tau = 0).

Items whose weights are all zero (no previous chunk) get ``e = 0``, so ``g = 0`` and the
step is the plain one; ``beta = 0`` gives ``w = 0`` and plain sampling as well.

Autograd: the correction needs a backward pass even while sampling, so the sampler must
call the guide with autograd available (``torch.no_grad`` is fine: the guide re-enables
gradients; ``torch.inference_mode`` is left for the span of the guide call). Plain
sampling stays under inference mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from chunking.soft_mask import Schedule, prefix_weights

Denoise = Callable[[torch.Tensor], torch.Tensor]

# Below this cumulative signal level a diffusion step runs unguided (see module docstring).
MIN_ALPHA_BAR = 1e-3


@dataclass
class RTCConfig:
    """Guidance parameters. ``beta = 5`` is the Kinetix reference value for H = 8 and
    5 flow steps (LeRobot uses 10 for H = 50 and 10 steps). ``schedule="zeros"`` is the
    hard-masking ablation (freeze the first d actions only)."""

    beta: float = 5.0
    schedule: Schedule = "exp"


def flow_guidance_weight(tau: torch.Tensor, beta: float) -> torch.Tensor:
    """``w(tau) = min(beta, (1-tau)/tau * (tau² + (1-tau)²) / (1-tau)²)`` (the paper's clipped
    ΠGDM weight, ``r² = (1-tau)² / (tau² + (1-tau)²)``),
    simplified to ``(tau² + (1-tau)²) / (tau (1-tau))``; beta where tau is 0 or 1."""
    tau = tau.to(torch.float64)
    denom = tau * (1.0 - tau)
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    w = (tau**2 + (1.0 - tau) ** 2) / safe
    w = torch.where(denom > 0, w, torch.full_like(w, float("inf")))
    return w.clamp(max=beta).to(torch.float32)


def diffusion_guidance_weight(alpha_bar: torch.Tensor, beta: float) -> torch.Tensor:
    """The flow weight expressed in ᾱ: ``min(beta, 1 / sqrt(ᾱ (1 - ᾱ)))``; beta at ᾱ ∈ {0, 1}."""
    ab = alpha_bar.to(torch.float64)
    prod = ab * (1.0 - ab)
    safe = torch.where(prod > 0, prod, torch.ones_like(prod))
    w = torch.where(prod > 0, safe.rsqrt(), torch.full_like(prod, float("inf")))
    return w.clamp(max=beta).to(torch.float32)


def _per_item(value: torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        value = value.expand(batch)
    return value.reshape(batch, 1, 1)


class RealTimeChunkingGuide:
    """StepGuide that inpaints toward ``target`` ([B, H, A], the policy's *normalised*
    action space, index 0 = the request tick) with per-item weights ``weights`` ([B, H]).

    Build it with :meth:`for_policy` from a chunk in robot units.
    """

    def __init__(self, target: torch.Tensor, weights: torch.Tensor, beta: float) -> None:
        if target.dim() != 3 or weights.shape != target.shape[:2]:
            raise ValueError(f"target must be [B, H, A] and weights [B, H]; got {tuple(target.shape)}, {tuple(weights.shape)}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.target = target.detach()
        self.weights = weights.detach().to(target.dtype)
        self.beta = float(beta)
        self.active = bool((self.weights != 0).any()) and self.beta > 0

    @classmethod
    def for_policy(
        cls,
        policy,
        prev_chunk: torch.Tensor,
        has_prev: torch.Tensor,
        d: torch.Tensor | int,
        s: torch.Tensor | int,
        config: RTCConfig | None = None,
    ) -> "RealTimeChunkingGuide":
        """Guide for ``policy`` from a previous chunk in robot units ([B, H, A], shifted so
        index 0 is the request tick); items with ``has_prev`` False get zero weights."""
        config = config or RTCConfig()
        batch, horizon = prev_chunk.shape[:2]
        weights = prefix_weights(horizon, d, s, config.schedule)
        if weights.shape[0] == 1 and batch > 1:
            weights = weights.expand(batch, horizon)
        weights = weights * torch.as_tensor(has_prev, dtype=torch.bool).reshape(batch, 1).to(weights.dtype)
        target = policy.normalize_actions(prev_chunk)
        return cls(target, weights.to(target.device), config.beta)

    def widened(self, offset: int, length: int) -> "RealTimeChunkingGuide":
        """The same guidance for a sampler whose trajectory (``[B, length, A]``) holds the
        chunk at rows ``offset .. offset + H - 1``: target and weights are zero everywhere
        else, so the whole trajectory is denoised and only the chunk is pulled."""
        batch, horizon, action_dim = self.target.shape
        if offset < 0 or offset + horizon > length:
            raise ValueError(f"a chunk of {horizon} rows at {offset} does not fit a trajectory of {length}")
        target = self.target.new_zeros((batch, length, action_dim))
        target[:, offset:offset + horizon] = self.target
        weights = self.weights.new_zeros((batch, length))
        weights[:, offset:offset + horizon] = self.weights
        return RealTimeChunkingGuide(target, weights, self.beta)

    def _vjp(self, x: torch.Tensor, denoise: Denoise, estimate) -> tuple[torch.Tensor, torch.Tensor]:
        """(network output, g = eᵀ ∂x̂/∂x) where x̂ = estimate(x, output)."""
        with torch.inference_mode(False), torch.enable_grad():
            x_in = (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)
            out = denoise(x_in)
            x_hat = estimate(x_in, out)
            error = self.weights[..., None] * (self.target - x_hat)
            (g,) = torch.autograd.grad(x_hat, x_in, grad_outputs=error.detach())
        return out.detach(), g.detach()

    def flow_velocity(self, x: torch.Tensor, tau: torch.Tensor, denoise: Denoise) -> torch.Tensor:
        """Guided velocity at flow time ``tau`` ([B] or scalar; 0 = noise, 1 = data)."""
        if not self.active:
            return denoise(x)
        batch = x.shape[0]
        tau_b = _per_item(tau, batch, x)
        v, g = self._vjp(x, denoise, lambda xi, vi: xi + (1.0 - tau_b) * vi)
        if tau_b.numel() == 1:  # batch of one: a Python scalar saves a handful of tiny kernels per step
            t = float(tau_b)
            w_scalar = min(self.beta, (t * t + (1 - t) ** 2) / (t * (1 - t))) if 0.0 < t < 1.0 else self.beta
            return v + w_scalar * g
        w = _per_item(flow_guidance_weight(tau_b.reshape(batch), self.beta), batch, x)
        return v + w * g

    def diffusion_epsilon(self, x: torch.Tensor, alpha_bar: torch.Tensor, denoise: Denoise) -> torch.Tensor:
        """Guided noise prediction at cumulative signal level ``alpha_bar`` ([B] or scalar)."""
        if not self.active:
            return denoise(x)
        batch = x.shape[0]
        ab = _per_item(alpha_bar, batch, x)
        if bool((ab < MIN_ALPHA_BAR).all()):
            return denoise(x)
        ab = ab.clamp(min=MIN_ALPHA_BAR)
        sqrt_ab, sqrt_1m = ab.sqrt(), (1.0 - ab).clamp(min=0).sqrt()
        eps, g = self._vjp(x, denoise, lambda xi, ei: (xi - sqrt_1m * ei) / sqrt_ab)
        w = _per_item(diffusion_guidance_weight(ab.reshape(batch), self.beta), batch, x)
        w = torch.where(_per_item(alpha_bar, batch, x) < MIN_ALPHA_BAR, torch.zeros_like(w), w)
        return eps - sqrt_ab * w * g
