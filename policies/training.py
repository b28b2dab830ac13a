"""Behaviour cloning of an action-chunk policy on expert demonstrations.

:func:`fit_statistics`, :func:`train_policy` and :func:`save_loss_curve` take tensors and
know nothing about simulators. The command ``headway train policy``
(``clients/train.py``) is where training meets the simulated tasks: it collects
demonstrations, trains with a tqdm progress bar, writes the checkpoint (safetensors + JSON
config) and a loss-curve PNG, and reports a synchronous closed-loop solve rate.

Everything is seeded: the same arguments give the same checkpoint (on the same torch build
and thread count).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from .base import PolicyConfig
from .checkpoint import build_policy
from .normalized import NormalizedChunkPolicy

DEFAULT_STEPS = {"flow": 6000, "diffusion": 6000}
DEFAULT_NUM_STEPS = {"flow": 5, "diffusion": 10}


def fit_statistics(states: torch.Tensor, chunks: torch.Tensor) -> dict[str, list[float]]:
    """Per-dimension mean and std of states [N, S] and actions (chunks [N, H, A]); stds are
    floored at 1e-3 so a constant dimension does not divide by zero."""
    actions = chunks.reshape(-1, chunks.shape[-1])
    return {
        "state_mean": states.mean(0).tolist(),
        "state_std": states.std(0).clamp(min=1e-3).tolist(),
        "action_mean": actions.mean(0).tolist(),
        "action_std": actions.std(0).clamp(min=1e-3).tolist(),
    }


def train_policy(
    config: PolicyConfig,
    states: torch.Tensor,
    chunks: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[NormalizedChunkPolicy, list[float]]:
    """Train a fresh policy of ``config.family`` on (states [N, S], chunks [N, H, A]) in
    robot units, ``steps`` AdamW steps with cosine decay. Returns the policy (eval mode)
    and the per-step training losses. ``config`` must already hold the statistics."""
    if states.shape[0] != chunks.shape[0] or states.shape[0] == 0:
        raise ValueError("states and chunks must be non-empty and of equal length")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    policy = build_policy(config)
    policy.train()
    x_states = policy.normalize_state(states)
    x_chunks = policy.normalize_actions(chunks.to(torch.float32))
    optimizer = torch.optim.AdamW(policy.net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(200, steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    losses: list[float] = []
    n = states.shape[0]
    bar = tqdm(range(steps), desc=f"train {config.task} {config.family}", disable=not progress, mininterval=1.0)
    for step in bar:
        idx = torch.randint(0, n, (batch_size,), generator=generator)
        loss = policy.training_loss(x_states[idx], x_chunks[idx], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.net.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.item()))
        if step % 100 == 0:
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
    policy.eval()
    return policy, losses


def save_loss_curve(losses: list[float], path: Path, title: str) -> Path:
    """Plot the training loss (raw and a 100-step running mean, log scale) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    steps = list(range(len(losses)))
    ax.plot(steps, losses, color="0.8", linewidth=0.5, label="batch loss")
    window = 100
    if len(losses) >= window:
        t = torch.tensor(losses)
        smooth = torch.nn.functional.avg_pool1d(t[None, None], window, stride=1)[0, 0].tolist()
        ax.plot(steps[window - 1 :], smooth, color="C0", label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
