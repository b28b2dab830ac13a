"""``headway train policy``: behaviour cloning of an action-chunk policy on expert demonstrations.

The library part (:func:`fit_statistics`, :func:`train_policy`, :func:`save_loss_curve`)
takes tensors and knows nothing about simulators. The command (:func:`main`) is where
training meets the simulated tasks: it collects demonstrations from ``clients.sim``
(imported inside ``main`` only, so ``policies`` as a library stays free of ``clients``),
trains with a tqdm progress bar, writes the checkpoint (safetensors + JSON config) and a
loss-curve PNG, and reports a synchronous closed-loop solve rate.

Everything is seeded: the same arguments give the same checkpoint (on the same torch build
and thread count).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .base import CHECKPOINT_DIR, PolicyConfig
from .checkpoint import NormalizedChunkPolicy, build_policy, save_policy

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="simulated task name (clients.sim.TASKS)")
    parser.add_argument("--family", choices=("flow", "diffusion"), default="flow")
    parser.add_argument("--episodes", type=int, default=1000, help="expert rollouts to collect")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default per family)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the data instead of --steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--num-steps", type=int, default=None, help="default denoising steps at inference")
    parser.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="epsilon",
                        help="diffusion only: what the network predicts")
    parser.add_argument("--future-offset-max", type=int, default=0, help="VLASH offset training: delta ~ U{0..K}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=CHECKPOINT_DIR, help="checkpoint directory")
    parser.add_argument("--plot", type=Path, default=None, help="loss-curve PNG (default OUT/TASK_FAMILY_loss.png)")
    parser.add_argument("--eval-episodes", type=int, default=500, help="sync closed-loop check after training (0: skip)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    # The command is the one place where training meets the simulator (see module docstring).
    from clients.sim import make_task
    from clients.sim.demonstrations import collect_demonstrations
    from clients.sim.expert_chunks import run_chunked

    torch.set_num_threads(max(1, args.threads))
    task = make_task(args.task)
    t0 = time.perf_counter()
    demos = collect_demonstrations(task, args.episodes, args.future_offset_max, seed=args.seed)
    t_collect = time.perf_counter() - t0
    stats = fit_statistics(demos.states, demos.chunks)
    family = args.family
    config = PolicyConfig(
        task=task.name,
        family=family,
        horizon=task.horizon,
        action_dim=task.action_dim,
        state_dim=task.state_dim,
        control_hz=task.control_hz,
        num_steps=int(args.num_steps or DEFAULT_NUM_STEPS[family]),
        hidden=args.hidden,
        future_offset_max=args.future_offset_max,
        extra={"episodes": args.episodes, "samples": len(demos), "seed": args.seed, "action_noise_std": task.action_noise_std,
               **({"prediction_type": args.prediction} if family == "diffusion" else {})},
        **stats,
    )
    if args.epochs is not None:
        steps = max(1, int(math.ceil(args.epochs * len(demos) / args.batch_size)))
    else:
        steps = int(args.steps or DEFAULT_STEPS[family])
    t1 = time.perf_counter()
    policy, losses = train_policy(
        config, demos.states, demos.chunks, steps=steps, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, progress=not args.no_progress,
    )
    t_train = time.perf_counter() - t1
    window = max(1, min(100, steps // 5))  # loss averaged over the first and last window
    config.extra.update({"steps": steps, "batch_size": args.batch_size, "final_loss": sum(losses[-window:]) / window})
    weights, config_path = save_policy(policy, args.out)
    plot = args.plot or args.out / f"{task.name}_{family}_loss.png"
    save_loss_curve(losses, plot, f"{task.name} {family}: {len(demos)} samples, {steps} steps")
    report = {
        "task": task.name, "family": family, "samples": len(demos), "steps": steps,
        "collect_s": round(t_collect, 1), "train_s": round(t_train, 1),
        "first_loss": round(sum(losses[:window]) / window, 4),
        "final_loss": round(config.extra["final_loss"], 4),
        "weights": str(weights), "config": str(config_path), "loss_curve": str(plot),
    }
    if args.eval_episodes > 0:
        gen = torch.Generator().manual_seed(args.seed + 1)
        solved = run_chunked(
            make_task(args.task), "sync", 0, 1, args.eval_episodes, seed=args.seed + 1000,
            chunk_fn=lambda s: policy.sample(s, generator=gen),
        )
        report["sync_s1_solve_rate"] = round(solved.float().mean().item(), 3)
        expert = run_chunked(make_task(args.task), "closed", 0, 1, args.eval_episodes, seed=args.seed + 1000)
        report["expert_solve_rate"] = round(expert.float().mean().item(), 3)
    print(json.dumps(report))
    return 0
