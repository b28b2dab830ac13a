"""``headway train policy``: collect expert demonstrations from a simulated task and train
an action-chunk policy on them by behaviour cloning (``policies.training``).

This is where training meets the simulators, so it lives with their clients: ``policies``
stays a library that takes tensors (DESIGN rule 4). Not inside ``clients.sim``, whose
package imports torch: ``headway --help`` imports every command's module.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

SUMMARY = "collect expert demonstrations and train an action-chunk policy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="simulated task name (clients.sim.TASKS)")
    parser.add_argument("--family", choices=("flow", "diffusion"), default="flow",
                        help="flow matching or diffusion (default %(default)s)")
    parser.add_argument("--episodes", type=int, default=1000, help="expert rollouts to collect")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default per family)")
    parser.add_argument("--epochs", type=float, default=None, help="passes over the data instead of --steps")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per optimizer step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default %(default)s)")
    parser.add_argument("--hidden", type=int, default=256, help="width of the network's hidden layers (default %(default)s)")
    parser.add_argument("--num-steps", type=int, default=None, help="default denoising steps at inference")
    parser.add_argument("--prediction", choices=("epsilon", "v_prediction"), default="epsilon",
                        help="diffusion only: what the network predicts")
    parser.add_argument("--future-offset-max", type=int, default=0, help="VLASH offset training: delta ~ U{0..K}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demonstrations, training and evaluation (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default: the shipped ones, models/checkpoints)")
    parser.add_argument("--plot", type=Path, default=None, help="loss-curve PNG (default OUT/TASK_FAMILY_loss.png)")
    parser.add_argument("--eval-episodes", type=int, default=500, help="sync closed-loop check after training (0: skip)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    import torch

    from clients.sim import make_task
    from clients.sim.demonstrations import collect_demonstrations
    from clients.sim.expert_chunks import run_chunked
    from policies.base import CHECKPOINT_DIR, PolicyConfig
    from policies.checkpoint import save_policy
    from policies.training import DEFAULT_NUM_STEPS, DEFAULT_STEPS, fit_statistics, save_loss_curve, train_policy

    args.out = args.out or CHECKPOINT_DIR
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
