"""Flow-matching action-chunk policy with Euler integration (the RTC paper's policy class).

Notation (RTC, arXiv 2506.07339, Sec. 3; conditional flow matching, Lipman et al. 2023):
flow time tau runs from 0 (noise) to 1 (data). With eps ~ N(0, I) and a demonstration
chunk x1 (normalised),

    x_tau = (1 - tau) * eps + tau * x1                          (RTC eq. 1, linear path)
    v_theta(x_tau, tau, o) ~ x1 - eps                           (the velocity target)
    loss  = E || v_theta(x_tau, tau, o) - (x1 - eps) ||^2

and sampling integrates dx/dtau = v from tau = 0 with Euler steps of 1/n:

    x_{tau + 1/n} = x_tau + (1/n) * v_theta(x_tau, tau, o)      (RTC eq. 2)

n = 5 by default, as in the RTC Kinetix reference (``num_flow_steps = 5``). The real-time
chunking guide replaces v_theta at each step (RTC Algorithm 1, the ``StepGuide`` hook).
"""

from __future__ import annotations

import torch

from .base import PolicyConfig, StepGuide, WarmStart
from .normalized import ACTION_CLIP_STD, NormalizedChunkPolicy


class FlowPolicy(NormalizedChunkPolicy):
    """Flow-matching chunk policy; implements :class:`policies.base.ChunkPolicy`."""

    def __init__(self, config: PolicyConfig) -> None:
        if config.family != "flow":
            raise ValueError(f"FlowPolicy needs family 'flow', got {config.family!r}")
        super().__init__(config)

    def training_loss(self, state: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Conditional flow-matching loss; ``state`` and ``actions`` (x1) are normalised."""
        b = actions.shape[0]
        tau = torch.rand(b, generator=generator)
        eps = torch.randn(actions.shape, generator=generator)
        x_tau = (1.0 - tau[:, None, None]) * eps + tau[:, None, None] * actions
        v = self.net(x_tau, tau, state)
        return (v - (actions - eps)).square().mean()

    def sample(
        self,
        state: torch.Tensor,
        *,
        guide: StepGuide | None = None,
        warm_start: WarmStart | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Chunks [B, H, A] in robot units for states [B, S] (robot units).

        ``num_steps`` n sets the Euler step 1/n (default ``config.num_steps``). With
        ``warm_start`` (RTI), the given chunk x1' is re-noised to flow time
        tau0 = 1 - k/n, x_tau0 = (1 - tau0) eps + tau0 x1', and only the last k =
        ``warm_start.steps`` Euler steps run. With ``guide``, every step calls
        ``guide.flow_velocity(x, tau, denoise)`` instead of the network, and sampling runs
        with autograd on (the guide takes a vector-Jacobian product through ``denoise``).
        """
        state = self._check_state(state)
        b = state.shape[0]
        n = int(num_steps or self.config.num_steps)
        if n < 1:
            raise ValueError("num_steps must be >= 1")
        obs = self.normalize_state(state)
        eps = self._noise(b, generator)
        if warm_start is None:
            k, tau0, x = n, 0.0, eps
        else:
            k = int(warm_start.steps)
            if not 1 <= k <= n:
                raise ValueError(f"warm_start.steps must lie in [1, {n}], got {k}")
            if warm_start.chunk.shape != eps.shape:
                raise ValueError(f"warm_start.chunk must be {tuple(eps.shape)}, got {tuple(warm_start.chunk.shape)}")
            tau0 = 1.0 - k / n
            x = (1.0 - tau0) * eps + tau0 * self.normalize_actions(warm_start.chunk.to(torch.float32))
        dt = 1.0 / n
        for i in range(k):
            tau = torch.full((b,), tau0 + i * dt)
            if guide is None:
                with torch.no_grad():
                    v = self.net(x, tau, obs)
            else:
                def denoise(z: torch.Tensor, _tau: torch.Tensor = tau) -> torch.Tensor:
                    return self.net(z, _tau, obs)

                v = guide.flow_velocity(x, tau, denoise).detach()
            x = x + dt * v
        x = x.clamp(-ACTION_CLIP_STD, ACTION_CLIP_STD)
        return self.unnormalize_actions(x).detach()
