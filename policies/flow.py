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
from .normalized import NormalizedChunkPolicy


class FlowPolicy(NormalizedChunkPolicy):
    """Flow-matching chunk policy; implements :class:`policies.base.ChunkPolicy` and, with
    :meth:`velocity`, the flow plug-in interface (:class:`policies.base.FlowPlugin`)."""

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

    def velocity(self, x: torch.Tensor, tau: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """The network's velocity at ``x`` and flow time ``tau`` for the normalised state ``conditioning``."""
        return self.net(x, tau, conditioning)

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
        The loop is ``policies.sampling``'s, as for every flow plug-in.
        """
        state = self._check_state(state)
        return self._sampler.sample(self.encode({"state": state}), state.shape[0], guide=guide,
                                    warm_start=warm_start, num_steps=num_steps, generator=generator)
