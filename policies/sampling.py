"""Headway's sampling loops around a plug-in's one denoising step (``policies.base``).

One loop per family, for the shipped policies and every plug-in alike:

* **flow**: Euler integration of the plug-in's ``velocity`` from flow time 0 (noise) to 1
  (data) in n steps of 1/n (RTC eq. 2).
* **diffusion**: the plug-in's diffusers scheduler, copied once per step count with
  ``prediction_type="epsilon"``; each network output is converted to a noise prediction
  (:func:`to_epsilon`), so that the real-time chunking guide and the scheduler both speak
  epsilon whatever the network predicts. The scheduler's own ``step`` (DDIM, DDPM with its
  variance noise drawn from the same generator, ...) does the rest, so a plug-in's plain
  sampling is the sampler it was trained with.

With a ``guide`` (``policies.base.StepGuide``, real-time chunking) every step calls the guide
instead of the bare step, with autograd available; with a ``warm_start`` (RTI) only the last
k steps run, from the given chunk re-noised to their level. A trajectory longer than the
served chunk (``PolicySpec.chunk_start``/``trajectory_horizon``) is denoised whole and the
chunk cut out of it; the guide is widened to the trajectory so that nothing outside the
chunk is pulled.

:class:`BoundPolicy` binds a plug-in to one batch of observations and presents it as a
``ChunkPolicy`` whose state is the concatenation of the spec's state keys: that is what
``chunking.realtime_chunk`` samples (future-state rollout replaces the state; the other keys,
images and prompts, stay as observed).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .base import (ImageInput, ImageMapInput, ObservationBatch, PolicyPlugin, PolicySpec, StepGuide, TextInput,
                   VectorInput, WarmStart)

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def to_epsilon(output: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """A diffusion network's ``output`` for ``x`` at cumulative signal level ``alpha_bar`` ([B])
    as a noise prediction, from ``x_t = sqrt(ᾱ) x0 + sqrt(1-ᾱ) ε`` (and, for v-prediction,
    ``v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0``)."""
    if prediction_type == "epsilon":
        return output
    a = alpha_bar.reshape(-1, 1, 1).to(x.dtype)
    if prediction_type == "sample":
        return (x - a.sqrt() * output) / (1.0 - a).sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * output + (1.0 - a).sqrt() * x
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


class PluginSampler:
    """Samples chunks from one plug-in (see the module docstring); keeps the per-step-count
    copies of a diffusion plug-in's scheduler."""

    def __init__(self, plugin: PolicyPlugin) -> None:
        self.plugin = plugin
        self.spec: PolicySpec = plugin.spec
        if self.spec.family == "diffusion" and plugin.prediction_type not in PREDICTION_TYPES:  # type: ignore[attr-defined]
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, "
                             f"got {plugin.prediction_type!r}")  # type: ignore[attr-defined]
        self._schedulers: dict[int, Any] = {}

    def scheduler(self, num_steps: int) -> Any:
        """The plug-in's scheduler set to ``num_steps`` steps, predicting epsilon (cached; never
        mutated afterwards, so samplers of different step counts cannot disturb each other)."""
        if num_steps not in self._schedulers:
            template = self.plugin.scheduler  # type: ignore[attr-defined]
            scheduler = type(template).from_config(template.config, prediction_type="epsilon")
            scheduler.set_timesteps(num_steps)
            self._schedulers[num_steps] = scheduler
        return self._schedulers[num_steps]

    def sample(self, conditioning: Any, batch: int, *, guide: StepGuide | None = None,
               warm_start: WarmStart | None = None, num_steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Chunks ``[batch, H, A]`` in robot units for ``conditioning`` (``plugin.encode``'s).

        ``num_steps`` n overrides ``spec.num_steps``. A one-shot plug-in samples its chunks
        itself: it ignores ``guide`` (there is no denoising step to guide) and refuses a
        warm start. Raises ``ValueError`` for n < 1 or a warm start that does not fit.
        """
        spec = self.spec
        if spec.family == "oneshot":
            if warm_start is not None:
                raise ValueError("a one-shot policy has no denoising steps to warm-start")
            return self.plugin.sample_chunk(conditioning, generator)  # type: ignore[attr-defined]
        n = int(num_steps or spec.num_steps)
        if n < 1:
            raise ValueError("num_steps must be >= 1")
        windowed = spec.chunk_start != 0 or spec.trajectory != spec.horizon
        if guide is not None and windowed:
            guide = guide.widened(spec.chunk_start, spec.trajectory)  # type: ignore[attr-defined]
        eps = torch.randn((batch, spec.trajectory, spec.action_dim), generator=generator)
        if warm_start is not None:
            if windowed:
                raise ValueError("a warm start needs the whole trajectory; this policy serves rows "
                                 f"{spec.chunk_start}..{spec.chunk_start + spec.horizon - 1} of {spec.trajectory}")
            if warm_start.chunk.shape != eps.shape:
                raise ValueError(f"warm_start.chunk must be {tuple(eps.shape)}, got {tuple(warm_start.chunk.shape)}")
            if not 1 <= int(warm_start.steps) <= n:
                raise ValueError(f"warm_start.steps must lie in [1, {n}], got {int(warm_start.steps)}")
        loop = self._flow if spec.family == "flow" else self._diffusion
        x = loop(conditioning, eps, guide, warm_start, n, generator)
        if spec.action_clip is not None:
            x = x.clamp(-spec.action_clip, spec.action_clip)
        chunk = x[:, spec.chunk_start:spec.chunk_start + spec.horizon]
        return self.plugin.unnormalize_actions(chunk).detach()

    def _flow(self, conditioning: Any, eps: torch.Tensor, guide: StepGuide | None, warm_start: WarmStart | None,
              n: int, generator: torch.Generator | None) -> torch.Tensor:
        """Euler from tau0 (0, or 1 - k/n for a warm start x_tau0 = (1 - tau0) eps + tau0 x1')."""
        plugin, b = self.plugin, eps.shape[0]
        if warm_start is None:
            k, tau0, x = n, 0.0, eps
        else:
            k = int(warm_start.steps)
            tau0 = 1.0 - k / n
            x = (1.0 - tau0) * eps + tau0 * plugin.normalize_actions(warm_start.chunk.to(torch.float32))
        dt = 1.0 / n
        for i in range(k):
            tau = torch.full((b,), tau0 + i * dt)
            if guide is None:
                with torch.no_grad():
                    v = plugin.velocity(x, tau, conditioning)  # type: ignore[attr-defined]
            else:
                def denoise(z: torch.Tensor, _tau: torch.Tensor = tau) -> torch.Tensor:
                    return plugin.velocity(z, _tau, conditioning)  # type: ignore[attr-defined]

                v = guide.flow_velocity(x, tau, denoise).detach()
            x = x + dt * v
        return x

    def _diffusion(self, conditioning: Any, eps: torch.Tensor, guide: StepGuide | None,
                   warm_start: WarmStart | None, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """The scheduler's timesteps from the first (or, warm-started, from step n - k, the given
        chunk x0' noised there with ``add_noise``)."""
        plugin, b = self.plugin, eps.shape[0]
        prediction_type = plugin.prediction_type  # type: ignore[attr-defined]
        scheduler = self.scheduler(n)
        timesteps = scheduler.timesteps
        if warm_start is None:
            x, start = eps, 0
        else:
            start = n - int(warm_start.steps)
            x0 = plugin.normalize_actions(warm_start.chunk.to(torch.float32))
            x = scheduler.add_noise(x0, eps, timesteps[start:start + 1].expand(b))
        alphas_cumprod = scheduler.alphas_cumprod
        for t in timesteps[start:]:
            step_t = torch.full((b,), int(t), dtype=torch.long)
            alpha_bar = alphas_cumprod[int(t)].expand(b).to(torch.float32)

            def denoise(z: torch.Tensor, _t: torch.Tensor = step_t, _ab: torch.Tensor = alpha_bar) -> torch.Tensor:
                return to_epsilon(plugin.denoise(z, _t, conditioning), z, _ab, prediction_type)  # type: ignore[attr-defined]

            if guide is None:
                with torch.no_grad():
                    eps_hat = denoise(x)
            else:
                eps_hat = guide.diffusion_epsilon(x, alpha_bar, denoise).detach()
            x = scheduler.step(eps_hat, int(t), x, generator=generator).prev_sample
        return x


class BoundPolicy:
    """A plug-in bound to one batch of observations, as a ``ChunkPolicy`` over its state.

    ``state`` is ``[B, S]``, the spec's state keys concatenated; ``sample(state, ...)`` puts
    the given state back into those keys (it may be a rolled-forward one), encodes the batch
    and samples. Every other key is sampled as observed.
    """

    def __init__(self, sampler: PluginSampler, observation: ObservationBatch, batch: int) -> None:
        self.sampler = sampler
        self.plugin = sampler.plugin
        self.spec = sampler.spec
        self.observation = observation
        keys = self.spec.state_keys
        self.state = torch.cat([observation[k] for k in keys], dim=1) if keys else torch.zeros(batch, 0)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.plugin.normalize_actions(actions)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.plugin.unnormalize_actions(actions)

    def with_state(self, state: torch.Tensor) -> ObservationBatch:
        """The observation with its state keys replaced by the columns of ``state`` ([B, S])."""
        observation = dict(self.observation)
        column = 0
        for key in self.spec.state_keys:
            size = self.spec.inputs[key].size  # type: ignore[union-attr]
            observation[key] = state[:, column:column + size]
            column += size
        return observation

    def sample(self, state: torch.Tensor, *, guide: StepGuide | None = None, warm_start: WarmStart | None = None,
               num_steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Chunks ``[B, H, A]`` in robot units (``ChunkPolicy.sample``)."""
        with torch.no_grad():
            conditioning = self.plugin.encode(self.with_state(state))
        return self.sampler.sample(conditioning, state.shape[0], guide=guide, warm_start=warm_start,
                                   num_steps=num_steps, generator=generator)


def collate(observations: Sequence[Mapping[str, Any]], spec: PolicySpec) -> ObservationBatch:
    """Stack the declared keys of validated observations (numpy arrays, strings) along dim 0:
    vectors float32 ``[B, n]``, images uint8 ``[B, H, W, 3]``, image maps a dict of those,
    instructions a list of B strings (None where absent). Undeclared keys are left out."""
    batch: ObservationBatch = {}
    for key, kind in spec.inputs.items():
        if isinstance(kind, VectorInput):
            batch[key] = torch.from_numpy(np.stack([np.asarray(o[key], dtype=np.float32) for o in observations]))
        elif isinstance(kind, ImageInput):
            batch[key] = torch.from_numpy(np.stack([np.asarray(o[key], dtype=np.uint8) for o in observations]))
        elif isinstance(kind, ImageMapInput):
            batch[key] = {camera: torch.from_numpy(np.stack([np.asarray(o[key][camera], dtype=np.uint8)
                                                             for o in observations]))
                          for camera in kind.cameras}
        elif isinstance(kind, TextInput):
            batch[key] = [o.get(key) for o in observations]
        else:
            raise TypeError(f"input {key!r}: unknown kind {type(kind).__name__}")
    return batch


def blank_observation(spec: PolicySpec) -> dict[str, Any]:
    """An observation of zeros (and an empty instruction) with every declared key, as the
    server would pass it on: to warm a plug-in up before serving."""
    observation: dict[str, Any] = {}
    for key, kind in spec.inputs.items():
        if isinstance(kind, VectorInput):
            observation[key] = np.zeros(kind.size, dtype=np.float32)
        elif isinstance(kind, ImageInput):
            observation[key] = np.zeros((kind.height, kind.width, 3), dtype=np.uint8)
        elif isinstance(kind, ImageMapInput):
            observation[key] = {c: np.zeros((kind.height, kind.width, 3), dtype=np.uint8) for c in kind.cameras}
        elif isinstance(kind, TextInput):
            observation[key] = ""
    return observation
