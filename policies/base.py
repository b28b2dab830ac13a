"""The action-chunk policy interface every sampler, strategy and server speaks.

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
from typing import Literal, Protocol

import torch

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
