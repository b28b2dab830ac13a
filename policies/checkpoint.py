"""Checkpoint files of the chunk policies: save, build and load.

A checkpoint is two files named by :func:`policies.base.checkpoint_paths`: the network's
weights as safetensors and the :class:`policies.base.PolicyConfig` as JSON (H, A, S,
control rate, default denoising steps, normalisation statistics). ``load_policy`` rebuilds
the right family from them; it never unpickles anything.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from .base import CHECKPOINT_DIR, Family, PolicyConfig, checkpoint_paths
from .normalized import NormalizedChunkPolicy


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
    # Each family is imported only when built: the diffusion family imports diffusers (~1 s).
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
