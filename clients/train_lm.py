"""``headway train lm``: train the embedded language model of the demo world.

Draws dialogues from the world's grammar (models/world_grammar.py: a command or question,
the table as context, the structured answer), holds out commands by sentence, trains a
byte-level BPE tokenizer and a small Llama (``transformers``) on the rest (models/world_lm.py),
saves both with ``save_pretrained`` into ``--out`` (default the shipped
``models/checkpoints/world_lm``, what ``headway serve`` answers ``/v1/chat`` with when no
``--llm`` is given), the loss curve beside it, and prints the held-out evaluation as JSON.
``--eval-only`` evaluates the checkpoint in ``--out`` again without training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SUMMARY = "train the embedded chat model of the demo world (served at /v1/chat by default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=8000, help="optimizer steps (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="dialogues per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default %(default)s)")
    parser.add_argument("--size", default="small", choices=("tiny", "small", "medium"),
                        help="model shape, models.world_lm.SIZES (default %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="tokenizer vocabulary (default %(default)s)")
    parser.add_argument("--dialogues", type=int, default=120000,
                        help="training dialogues drawn (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of dialogues, initialisation and batches")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint directory (default: the shipped models/checkpoints/world_lm)")
    parser.add_argument("--plot", type=Path, default=None, help="loss-curve PNG (default: OUT_loss.png beside OUT)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the checkpoint in --out; no training")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N held-out sentences")
    parser.add_argument("--typed", action="store_true",
                        help="also evaluate the held-out sentences as typed (a capital, closing punctuation): "
                             "the typed_* groups")
    parser.add_argument("--probe-every", type=int, default=1000,
                        help="every N steps, score grounding on training reach commands at fresh tables "
                             "(0: never; default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    import torch

    from models import world_lm

    torch.set_num_threads(max(1, args.threads))
    out = args.out or world_lm.CHECKPOINT_DIR
    train_sentences, heldout = world_lm.split_sentences()
    cases = world_lm.heldout_cases(heldout)[:args.eval_limit]
    if args.typed:
        cases += world_lm.heldout_cases(heldout, typed=True)[:args.eval_limit]
    if args.eval_only:
        if not (out / "config.json").is_file():
            raise SystemExit(f"no checkpoint in {out}; train one with: headway train lm --out {out}")
        print(json.dumps({"checkpoint": str(out), "evaluation": _evaluate(out, cases)}))
        return 0

    from tqdm import tqdm

    from models.lm_text import ChatFormat
    from policies.training import save_loss_curve

    t0 = time.perf_counter()
    dialogues = world_lm.sample_dialogues(train_sentences, args.dialogues, seed=args.seed)
    leaked = world_lm.leaks([text for d in dialogues for text, _ in d.turns], heldout)
    if leaked:
        raise SystemExit(f"{len(leaked)} training prompts say a held-out sentence, e.g. {leaked[0]!r}")
    tokenizer = world_lm.build_tokenizer(dialogues[:10000], args.vocab_size)
    fmt = ChatFormat.for_tokenizer(tokenizer)
    examples = [world_lm.encode_dialogue(tokenizer, fmt, d) for d in dialogues]
    model = world_lm.build_model(tokenizer, args.size, seed=args.seed)
    t_data = time.perf_counter() - t0
    bar = tqdm(total=args.steps, desc="train lm", unit="step", disable=args.no_progress)
    probe = world_lm.probe_cases(train_sentences)
    probes: list[dict] = []

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")
        if args.probe_every and (step + 1) % args.probe_every == 0:
            probes.append({"step": step + 1, **_probe(model, tokenizer, probe)})
            bar.write(f"step {step + 1}: grounding probe {probes[-1]}")

    t1 = time.perf_counter()
    losses = world_lm.train(model, examples, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            seed=args.seed, pad_id=tokenizer.pad_token_id, on_step=on_step)
    bar.close()
    t_train = time.perf_counter() - t1
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    plot = save_loss_curve(losses, args.plot or out.parent / f"{out.name}_loss.png",
                           f"world LM, {len(dialogues)} dialogues, {args.steps} steps")
    evaluation = _evaluate(out, cases)
    report = {"checkpoint": str(out), "loss_curve": str(plot),
              "parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
              "train_sentences": len(train_sentences), "heldout_sentences": len(heldout),
              "dialogues": len(dialogues), "training_tokens": sum(len(x) for x, _ in examples),
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "size": args.size,
              "seed": args.seed, "threads": args.threads,
              "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
              "grounding_probe": probes, "data_seconds": round(t_data, 1), "train_seconds": round(t_train, 1), "evaluation": evaluation}
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


def _probe(model, tokenizer, cases) -> dict:
    """Reach goals right, and not-on-table answers right, of the model as it is now."""
    import tempfile

    from models import world_lm
    from models.lm import CausalLM

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        result = world_lm.evaluate(CausalLM(tmp), cases)
    return {"reach": result["reach"]["goal_exact"], "not_on_table": result.get("not_on_table", {}).get("goal_exact")}


def _evaluate(path: Path, cases) -> dict:
    from models import world_lm
    from models.lm import CausalLM

    t = time.perf_counter()
    result = world_lm.evaluate(CausalLM(path), cases)
    result["seconds"] = round(time.perf_counter() - t, 1)
    return result
