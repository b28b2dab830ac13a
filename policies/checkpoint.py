"""What flow and diffusion policies share: the network, normalisation, and checkpoint files.

A checkpoint is two files named by :func:`policies.base.checkpoint_paths`: the network's
weights as safetensors and the :class:`policies.base.PolicyConfig` as JSON (H, A, S,
control rate, default denoising steps, normalisation statistics). ``load_policy`` rebuilds
the right family from them; it never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.action_net import ActionChunkNet, ActionNetConfig

from .base import CHECKPOINT_DIR, Family, PolicyConfig, checkpoint_paths

# Normalised actions are clipped to this many standard deviations after sampling: the
# demonstrations never leave it, and a guided step must not push a chunk to infinity.
ACTION_CLIP_STD = 5.0


class NormalizedChunkPolicy(nn.Module):
    """Base of the chunk policies: owns the ActionChunkNet and the normalisation statistics.

    ``state`` and chunks cross the public API in robot units; inside, the network sees
    ``(x - mean) / std`` for both. Statistics are buffers, so ``state_dict`` holds them too.
    """

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.net = ActionChunkNet(
            ActionNetConfig(
                horizon=config.horizon,
                action_dim=config.action_dim,
                state_dim=config.state_dim,
                hidden=config.hidden,
                blocks=int(config.extra.get("blocks", 2)),
            )
        )
        self.register_buffer("state_mean", torch.tensor(config.state_mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.tensor(config.state_std, dtype=torch.float32))
        self.register_buffer("action_mean", torch.tensor(config.action_mean, dtype=torch.float32))
        self.register_buffer("action_std", torch.tensor(config.action_std, dtype=torch.float32))
        self.eval()

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        return (state.to(torch.float32) - self.state_mean) / self.state_std

    def _check_state(self, state: torch.Tensor) -> torch.Tensor:
        state = torch.as_tensor(state, dtype=torch.float32)
        if state.dim() != 2 or state.shape[1] != self.config.state_dim:
            raise ValueError(f"state must be [B, {self.config.state_dim}], got {tuple(state.shape)}")
        return state

    def _noise(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        c = self.config
        return torch.randn((batch, c.horizon, c.action_dim), generator=generator)

    def training_loss(self, state: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Behaviour-cloning loss for normalised ``state`` [B, S] and normalised target chunks [B, H, A]."""
        raise NotImplementedError  # pragma: no cover - each family defines its objective


def save_policy(policy: NormalizedChunkPolicy, directory: Path = CHECKPOINT_DIR) -> tuple[Path, Path]:
    """Write ``policy`` as safetensors + JSON config; returns (weights, config) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    weights, config = checkpoint_paths(policy.config.task, policy.config.family, directory)
    tensors = {k: v.detach().contiguous().clone() for k, v in policy.state_dict().items()}
    save_file(tensors, str(weights))
    config.write_text(policy.config.to_json() + "\n")
    return weights, config


def build_policy(config: PolicyConfig) -> NormalizedChunkPolicy:
    """An untrained policy of ``config.family``."""
    if config.family == "flow":
        from .flow import FlowPolicy

        return FlowPolicy(config)
    if config.family == "diffusion":
        from .diffusion import DiffusionPolicy

        return DiffusionPolicy(config)
    raise ValueError(f"unknown policy family {config.family!r}")


def load_policy(task: str, family: Family = "flow", directory: Path = CHECKPOINT_DIR) -> NormalizedChunkPolicy:
    """The trained policy for ``task`` and ``family`` from its checkpoint files.

    Raises FileNotFoundError when the checkpoint is missing and ValueError when the weights
    do not match the config (a checkpoint from another architecture).
    """
    weights, config_path = checkpoint_paths(task, family, directory)
    if not weights.exists() or not config_path.exists():
        raise FileNotFoundError(f"no {family} checkpoint for task {task!r} in {directory}")
    config = PolicyConfig.from_json(config_path.read_text())
    policy = build_policy(config)
    try:
        policy.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {weights} does not match its config: {exc}") from exc
    policy.eval()
    for p in policy.parameters():
        p.requires_grad_(False)
    return policy
