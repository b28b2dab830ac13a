"""Diffusion action-chunk policy: DDPM training, DDIM sampling, through ``diffusers`` schedulers.

Notation (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"; diffusers' scheduler names):
integer timesteps t in 0 .. T-1 (T = ``num_train_timesteps`` = 100), noise schedule
beta_t ("squaredcos_cap_v2", the cosine schedule of Nichol & Dhariwal 2021), and
alpha_bar_t = prod_{i <= t} (1 - beta_i) (``scheduler.alphas_cumprod``). Time runs the
other way from flow time: t = T-1 is (almost) pure noise, t -> -1 is data.

Training (DDPM eq. 4 and the simple loss, eq. 14), with x0 a normalised demonstration chunk:

    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps       (``DDPMScheduler.add_noise``)
    loss = E || eps_theta(x_t, t, o) - eps ||^2                     (epsilon prediction)

Sampling: deterministic DDIM (eta = 0, DDIM eq. 12) over ``num_steps`` timesteps with
diffusers' default "leading" spacing (90, 80, ..., 0 for 10 steps), ``DDIMScheduler.step``:

    x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
    x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev) eps

Why not "trailing" spacing (99, 89, ..., 9)? The cosine schedule drives alpha_bar_99 to
2.4e-7, and the x0_hat of an epsilon-prediction step divides by sqrt(alpha_bar_t): at
t = 99 a network error of 0.1 in eps becomes ~200 in x0_hat, and the chunk never recovers
(measured: whack solve rate 0.005 with trailing spacing, 0.995 with leading, same weights).
Starting at t = 90 (alpha_bar 0.019) keeps the amplification near 7.

Optional v-prediction (Salimans & Ho 2022, "progressive distillation", Sec. 4), chosen per
checkpoint by ``config.extra["prediction_type"] = "v_prediction"``: the network predicts
v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (``DDPMScheduler.get_velocity``) and
the sampler converts it to eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) x_t, so the
DDIM step and the guide still speak epsilon. Epsilon prediction stays the default.

The network is fed tau = t / T (so its ``tau`` input runs from ~1 = noise to 0 = data, the
opposite of the flow policy's; each policy is trained with its own convention). The
real-time chunking guide replaces eps_theta at each step via
``guide.diffusion_epsilon(x, alpha_bar_t, denoise)`` (the ``StepGuide`` hook).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from .base import PolicyConfig, StepGuide, WarmStart
from .normalized import NormalizedChunkPolicy
from .sampling import to_epsilon

NUM_TRAIN_TIMESTEPS = 100
BETA_SCHEDULE = "squaredcos_cap_v2"
PREDICTION_TYPES = ("epsilon", "v_prediction")


class DiffusionPolicy(NormalizedChunkPolicy):
    """Diffusion chunk policy (epsilon or v prediction); implements :class:`policies.base.ChunkPolicy`
    and, with ``scheduler`` and :meth:`denoise`, the diffusion plug-in interface."""

    def __init__(self, config: PolicyConfig) -> None:
        if config.family != "diffusion":
            raise ValueError(f"DiffusionPolicy needs family 'diffusion', got {config.family!r}")
        super().__init__(config)
        self.num_train_timesteps = int(config.extra.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS))
        self.prediction_type = str(config.extra.get("prediction_type", "epsilon"))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=BETA_SCHEDULE,
            clip_sample=False,
            prediction_type=self.prediction_type,
        )
        # The sampler's template (``policies.sampling`` copies it per step count).
        self.scheduler = DDIMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=BETA_SCHEDULE,
            clip_sample=False,
            prediction_type=self.prediction_type,
            timestep_spacing="leading",
            steps_offset=0,
            set_alpha_to_one=True,
        )

    def training_loss(self, state: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """DDPM loss (epsilon or v target); ``state`` and ``actions`` (x0) are normalised."""
        b = actions.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator)
        eps = torch.randn(actions.shape, generator=generator)
        x_t = self.train_scheduler.add_noise(actions, eps, t)
        pred = self.net(x_t, t.float() / self.num_train_timesteps, state)
        if self.prediction_type == "v_prediction":
            target = self.train_scheduler.get_velocity(actions, eps, t)
        else:
            target = eps
        return (pred - target).square().mean()

    def _epsilon(self, output: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """The network's output for x at cumulative signal level ``alpha_bar`` ([B]) as an eps estimate."""
        return to_epsilon(output, x, alpha_bar, self.prediction_type)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """The network's output at ``x`` and integer timesteps ``t`` ([B]), fed tau = t / T."""
        return self.net(x, (t.to(torch.float64) / self.num_train_timesteps).to(torch.float32), conditioning)

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

        ``num_steps`` n DDIM steps (default ``config.num_steps``). With ``warm_start``
        (RTI), the given chunk x0' is re-noised with ``add_noise`` to the timestep where
        the last k = ``warm_start.steps`` steps begin, and only those k steps run. With
        ``guide``, each step calls ``guide.diffusion_epsilon(x, alpha_bar_t, denoise)``
        instead of the network, with autograd on. The loop is ``policies.sampling``'s, as
        for every diffusion plug-in.
        """
        state = self._check_state(state)
        return self._sampler.sample(self.encode({"state": state}), state.shape[0], guide=guide,
                                    warm_start=warm_start, num_steps=num_steps, generator=generator)
