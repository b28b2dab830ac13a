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
from .normalized import ACTION_CLIP_STD, NormalizedChunkPolicy

NUM_TRAIN_TIMESTEPS = 100
BETA_SCHEDULE = "squaredcos_cap_v2"
PREDICTION_TYPES = ("epsilon", "v_prediction")


class DiffusionPolicy(NormalizedChunkPolicy):
    """Diffusion chunk policy (epsilon or v prediction); implements :class:`policies.base.ChunkPolicy`."""

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
        # One DDIM scheduler per step count, configured once and never mutated afterwards,
        # so concurrent samplers with different step counts cannot disturb each other.
        self._samplers: dict[int, DDIMScheduler] = {}

    def sampler(self, num_steps: int) -> DDIMScheduler:
        """The DDIM scheduler for ``num_steps`` sampling steps (cached)."""
        if num_steps not in self._samplers:
            scheduler = DDIMScheduler(
                num_train_timesteps=self.num_train_timesteps,
                beta_schedule=BETA_SCHEDULE,
                clip_sample=False,
                prediction_type="epsilon",
                timestep_spacing="leading",
                steps_offset=0,
                set_alpha_to_one=True,
            )
            scheduler.set_timesteps(num_steps)
            self._samplers[num_steps] = scheduler
        return self._samplers[num_steps]

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
        if self.prediction_type == "epsilon":
            return output
        a = alpha_bar.reshape(-1, 1, 1)
        return a.sqrt() * output + (1.0 - a).sqrt() * x

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
        instead of the network, with autograd on.
        """
        state = self._check_state(state)
        b = state.shape[0]
        n = int(num_steps or self.config.num_steps)
        if n < 1:
            raise ValueError("num_steps must be >= 1")
        scheduler = self.sampler(n)
        timesteps = scheduler.timesteps
        obs = self.normalize_state(state)
        eps = self._noise(b, generator)
        if warm_start is None:
            x, start = eps, 0
        else:
            k = int(warm_start.steps)
            if not 1 <= k <= n:
                raise ValueError(f"warm_start.steps must lie in [1, {n}], got {k}")
            if warm_start.chunk.shape != eps.shape:
                raise ValueError(f"warm_start.chunk must be {tuple(eps.shape)}, got {tuple(warm_start.chunk.shape)}")
            start = n - k
            x0 = self.normalize_actions(warm_start.chunk.to(torch.float32))
            x = self.train_scheduler.add_noise(x0, eps, timesteps[start : start + 1].expand(b))
        alphas_cumprod = scheduler.alphas_cumprod
        for t in timesteps[start:]:
            tau = torch.full((b,), float(t) / self.num_train_timesteps)
            alpha_bar = alphas_cumprod[int(t)].expand(b).to(torch.float32)
            if guide is None:
                with torch.no_grad():
                    eps_hat = self._epsilon(self.net(x, tau, obs), x, alpha_bar)
            else:
                def denoise(z: torch.Tensor, _tau: torch.Tensor = tau, _ab: torch.Tensor = alpha_bar) -> torch.Tensor:
                    return self._epsilon(self.net(z, _tau, obs), z, _ab)

                eps_hat = guide.diffusion_epsilon(x, alpha_bar, denoise).detach()
            x = scheduler.step(eps_hat, int(t), x, eta=0.0).prev_sample
        x = x.clamp(-ACTION_CLIP_STD, ACTION_CLIP_STD)
        return self.unnormalize_actions(x).detach()
