"""The action-chunk policy interface every sampler, strategy and server speaks.

Two levels:

* :class:`ChunkPolicy` is what the chunking maths samples from (``chunking.realtime_chunk``,
  the strategies, the benchmarks): ``sample(state, guide=..., warm_start=...)``.
* The **plug-in interface** is what a policy implements to be served by Headway (``headway
  serve --policy MODULE:FACTORY``, docs/own-policy.md): a :class:`PolicySpec` (observation
  keys, H, A, control rate, denoising steps), the action normalisation, ``encode`` (the
  observations of a batch, once per call) and the **one denoising step** -- a flow
  velocity (:class:`FlowPlugin`) or a diffusion network output (:class:`DiffusionPlugin`)
  -- around which Headway runs the sampling loop, real-time chunking's guidance included
  (``policies.sampling``). A policy that is neither samples whole chunks
  (:class:`OneShotPlugin`). The shipped ``FlowPolicy`` and ``DiffusionPolicy`` are plug-ins.

Conventions (fixed here so that training, sampling, chunking and serving agree):

* Shapes are batched along dim 0: states ``[B, S]``, chunks ``[B, H, A]``.
* A policy takes and returns **robot units**; normalisation is the policy's own business
  (``PolicyConfig`` carries the statistics).
* Per-item real-time chunking parameters are tensors of shape ``[B]`` (long):
  ``d`` (inference delay in ticks) and ``s`` (execution horizon), so every item of a
  batch may have its own. A previous chunk is ``[B, H, A]``, shifted so that index 0 is
  the action the robot executes at the tick the new chunk starts.
* Flow time ``tau`` runs from 0 (noise) to 1 (data), as in the RTC paper. Diffusion
  policies use their diffusers scheduler's timesteps and say so where they differ.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Protocol, Union

import torch

from chunking.future_state import FutureStateFn  # noqa: F401  (the plug-ins' optional ``future_state``)

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "models" / "checkpoints"

Family = Literal["flow", "diffusion"]


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a trained policy; saved as JSON beside its weights."""

    task: str
    family: Family
    horizon: int  # H
    action_dim: int  # A
    state_dim: int  # S
    control_hz: float
    num_steps: int  # denoising steps used by default at inference
    state_mean: list[float]
    state_std: list[float]
    action_mean: list[float]
    action_std: list[float]
    hidden: int = 256
    future_offset_max: int = 0  # VLASH training option: targets shifted by U{0..max} ticks
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "PolicyConfig":
        return cls(**json.loads(text))


def checkpoint_paths(task: str, family: Family, directory: Path = CHECKPOINT_DIR) -> tuple[Path, Path]:
    """(weights, config) paths of the shipped checkpoint for ``task`` and ``family``."""
    stem = directory / f"{task}_{family}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


class StepGuide(Protocol):
    """Wraps one denoising step (the RTC pattern: a wrapper, not a fork of the sampler).

    The sampler calls exactly one of these per step instead of the bare network, passing
    ``denoise``, a differentiable closure x -> network output for the current step.
    ``x`` is in the policy's normalised action space. Implementations live in ``chunking``.
    A sampler whose trajectory is longer than the chunk it serves (``PolicySpec.chunk_start``,
    ``trajectory_horizon``) asks the guide for ``widened(offset, length)``: the same
    guidance over the whole trajectory, nothing pulled outside the chunk.
    """

    def flow_velocity(self, x: torch.Tensor, tau: torch.Tensor, denoise) -> torch.Tensor:
        """Guided velocity at flow time ``tau`` ([B], 0 = noise, 1 = data)."""
        ...

    def diffusion_epsilon(self, x: torch.Tensor, alpha_bar: torch.Tensor, denoise) -> torch.Tensor:
        """Guided noise prediction at cumulative signal level ``alpha_bar`` ([B])."""
        ...


@dataclass
class WarmStart:
    """RTI warm start: begin from ``chunk`` (robot units, [B, H, A], usually the previous plan
    shifted by the executed steps), re-noised to the level of the last ``steps`` denoising
    steps, and run only those ``steps``."""

    chunk: torch.Tensor
    steps: int


class ChunkPolicy(Protocol):
    """A policy that samples action chunks. Implemented by ``FlowPolicy`` and ``DiffusionPolicy``."""

    config: PolicyConfig

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor: ...

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor: ...

    def sample(
        self,
        state: torch.Tensor,
        *,
        guide: StepGuide | None = None,
        warm_start: WarmStart | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Return chunks [B, H, A] in robot units for states [B, S] (robot units)."""
        ...


# ---------------------------------------------------------------------------------------
# The plug-in interface: what a policy implements to be served (docs/own-policy.md)


@dataclass(frozen=True)
class VectorInput:
    """A float vector of ``size`` entries (a robot state, joint positions); the policy gets
    float32 ``[B, size]``."""

    size: int


@dataclass(frozen=True)
class ImageInput:
    """A uint8 RGB camera image ``height`` x ``width``. Clients may send it ``[H, W, 3]``
    (LIBERO, DROID) or ``[3, H, W]`` (ALOHA); the policy gets uint8 ``[B, H, W, 3]``."""

    height: int
    width: int


@dataclass(frozen=True)
class ImageMapInput:
    """A map camera name -> image (ALOHA's ``images``), with exactly the names ``cameras``;
    the policy gets a dict name -> uint8 ``[B, H, W, 3]``."""

    cameras: tuple[str, ...]
    height: int
    width: int


@dataclass(frozen=True)
class TextInput:
    """A language instruction of at most ``max_length`` characters; the policy gets a list
    of B strings (None where an optional instruction was not sent)."""

    max_length: int = 1024
    required: bool = False


ObservationInput = Union[VectorInput, ImageInput, ImageMapInput, TextInput]
# A batch of observations as ``encode`` gets it: each declared key, stacked along dim 0.
ObservationBatch = dict[str, Any]
PluginFamily = Literal["flow", "diffusion", "oneshot"]
PLUGIN_FAMILIES = ("flow", "diffusion", "oneshot")


@dataclass(frozen=True)
class PolicySpec:
    """What Headway needs to know to serve a policy.

    * ``family``: ``"flow"`` (Headway integrates the plug-in's velocity), ``"diffusion"``
      (Headway steps the plug-in's diffusers scheduler with its network output) or
      ``"oneshot"`` (the plug-in samples whole chunks; real-time chunking cannot inpaint).
    * ``horizon`` H, ``action_dim`` A, ``control_hz``: a served chunk is ``[H, A]``, one
      action per control tick.
    * ``inputs``: observation key -> what it is; clients send exactly these keys
      (``headway serve --obs-map`` renames them), anything else is refused.
    * ``state_keys``: the :class:`VectorInput` keys that together (concatenated in this
      order) are the robot state that future-state rollout moves forward.
    * ``num_steps``: denoising steps by default (a degraded request runs half).
    * ``trajectory_horizon`` / ``chunk_start``: for a denoiser whose trajectory is longer
      than the chunk served (LeRobot's diffusion policy predicts from its oldest observed
      tick): the trajectory is ``[T, A]`` and the chunk is its rows ``chunk_start ..
      chunk_start + H - 1``. Default: the trajectory is the chunk.
    * ``action_clip``: clip the sampled trajectory to this many units of the normalised
      action space before un-normalising (None: no clip).
    * ``name``: the model's name at ``?model=NAME`` (default: the factory's module).
    """

    family: PluginFamily
    horizon: int
    action_dim: int
    control_hz: float
    inputs: Mapping[str, ObservationInput]
    state_keys: tuple[str, ...] = ()
    num_steps: int = 10
    trajectory_horizon: int | None = None
    chunk_start: int = 0
    action_clip: float | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.family not in PLUGIN_FAMILIES:
            raise ValueError(f"family must be one of {PLUGIN_FAMILIES}, got {self.family!r}")
        if self.horizon < 1 or self.action_dim < 1 or self.num_steps < 1 or not self.control_hz > 0:
            raise ValueError("horizon, action_dim and num_steps must be >= 1 and control_hz > 0")
        for key in self.state_keys:
            if not isinstance(self.inputs.get(key), VectorInput):
                raise ValueError(f"state key {key!r} is not a VectorInput of inputs {sorted(self.inputs)}")
        if self.chunk_start < 0 or self.chunk_start + self.horizon > self.trajectory:
            raise ValueError(f"the chunk (rows {self.chunk_start}..{self.chunk_start + self.horizon - 1}) "
                             f"does not fit the trajectory of {self.trajectory}")

    @property
    def trajectory(self) -> int:
        """T, the rows of the trajectory the denoiser works on."""
        return self.trajectory_horizon if self.trajectory_horizon is not None else self.horizon

    @property
    def state_dim(self) -> int:
        """S, the size of the concatenated state keys."""
        return sum(self.inputs[key].size for key in self.state_keys)  # type: ignore[union-attr]


class PolicyPlugin(Protocol):
    """What every served policy has (see the module docstring and docs/own-policy.md).

    Optionally an attribute ``future_state``: a ``FutureStateFn`` that rolls the
    state of ``spec.state_keys`` forward through pending actions (VLASH), e.g.
    ``chunking.future_state.last_commanded_position`` for absolute joint or end-effector
    targets; without it a session cannot ask for future state.
    """

    spec: PolicySpec

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Robot units -> the space the denoiser works in ([..., A])."""
        ...

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize_actions`."""
        ...

    def encode(self, observation: ObservationBatch) -> Any:
        """The conditioning of one batch (each declared key stacked along dim 0), computed
        once per call and handed to every denoising step: e.g. normalised state and image
        features. Runs without gradients."""
        ...


class FlowPlugin(PolicyPlugin, Protocol):
    def velocity(self, x: torch.Tensor, tau: torch.Tensor, conditioning: Any) -> torch.Tensor:
        """The flow velocity at ``x`` ([B, T, A], normalised) and flow time ``tau`` ([B],
        0 = noise, 1 = data). Differentiable in ``x``: real-time chunking takes a
        vector-Jacobian product through it."""
        ...


class DiffusionPlugin(PolicyPlugin, Protocol):
    """``scheduler`` is a configured diffusers scheduler (DDPM, DDIM, ...): Headway copies it
    per step count and steps it; ``prediction_type`` says what ``denoise`` predicts:
    ``"epsilon"``, ``"sample"`` (x0) or ``"v_prediction"``."""

    scheduler: Any
    prediction_type: str

    def denoise(self, x: torch.Tensor, t: torch.Tensor, conditioning: Any) -> torch.Tensor:
        """The network output at ``x`` ([B, T, A], normalised) and integer timesteps ``t``
        ([B] long, the scheduler's). Differentiable in ``x``."""
        ...


class OneShotPlugin(PolicyPlugin, Protocol):
    def sample_chunk(self, conditioning: Any, generator: torch.Generator | None) -> torch.Tensor:
        """Chunks ``[B, H, A]`` in robot units."""
        ...
