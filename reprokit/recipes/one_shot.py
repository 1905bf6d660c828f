"""1-shot RLVR (Wang et al. 2025, arXiv 2504.20571): GRPO on a single training example, π1 by default.

What it reproduces: RL with a verifiable reward on ONE math problem (π1, replicated to fill every batch,
each copy its own GRPO group) lifts a base model's accuracy on whole benchmarks (MATH500 36.0 → 72.8 for
Qwen2.5-Math-1.5B in the paper), and test accuracy keeps rising after training accuracy on π1 saturates.

Where it departs from the paper (all to fit one GPU; each is a flag you can change back):
- LoRA adapters (rank 64, all linear layers) on a 4-bit NF4 base instead of full fine-tuning. The KL
  reference is the same network with the adapter switched off, so no second model is held in memory.
  LoRA learns more slowly per step than full fine-tuning at the paper's lr 1e-6, so the presets use
  lr 2e-5 (a usual LoRA scale-up); set `--grpo.lr 1e-6` for the paper's value.
- Fewer prompts per step: the paper samples 128 copies of π1 × 8 responses = 1024 responses per step on
  8×A100; the presets take 16 (paper preset) or 8 (12 GB preset) copies × 8 responses, one update per
  rollout batch (on-policy, as the paper), with gradient accumulation over micro-batches.
- Shorter responses in the 12 GB preset (1024 instead of 3072 new tokens).
Everything else follows the paper: Qwen2.5-Math chat template with its system prompt and the
"Let's think step by step" suffix; reward 1 if the last \\boxed{} equals the label; clip 0.2; k3 KL 0.001;
entropy bonus 0.001 at the rollout temperature 0.6; token-mean loss; AdamW wd 0.01, constant lr;
checkpoint every 20 steps.

Run `python -m reprokit.recipes.one_shot --help` for every option. With no CUDA device and no --preset
it runs the `cpu` preset and says so: the same recipe on the CPU world (`reprokit.worlds`), its 1 M-parameter
base pretrained on first use, one world problem, test pass@1 printed before and after (about 3 minutes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from reprokit.data import EvalDataModule, OneShotDataModule
from reprokit.grpo_module import GRPOConfig, GRPOModule
from reprokit.models import ModelConfig, load_policy
from reprokit.recipes.common import RunConfig, build_parser, build_trainer, last_checkpoint, parse, save_config

RECIPE = "one_shot"


@dataclass
class OneShotData:
    """The training example(s)."""

    examples: str = "pi1"
    """Embedded example names (pi1, pi2, pi13, pi1209; comma list such as pi1,pi13) or a data file path."""
    label: str = "dataset"
    """π1's label: dataset (12.8, as the paper trains) or true (12.7; the paper reports the same results)."""
    question_field: str = "question"
    """Question field of a user data file."""
    answer_field: str = "answer"
    """Answer field of a user data file."""
    prompts_per_step: int = 16
    """Copies of the example(s) per rollout batch; each copy is one GRPO group of group_size responses."""
    template: str = "qwen25-math-cot"
    """Prompt template: qwen25-math-cot, r1, none, or a format string with {question}."""
    cot_suffix: bool = True
    """Append " Let's think step by step and output the final answer within \\boxed{}." as the paper does."""
    max_prompt_length: int = 1024
    """Longest prompt in tokens; a longer one is an error naming the example."""


@dataclass
class EvalData:
    """Benchmarks validated before, during (every run.val_every steps) and after training."""

    benchmarks: list[str] = field(default_factory=lambda: ["math500"])
    """Benchmark names (math500, aime24, aime25, amc23, minerva_math, olympiadbench); empty list = none."""
    data_dir: str | None = None
    """Local data folder laid out like shared/data (else $REPROKIT_DATA_DIR, else the Hugging Face Hub)."""
    limit: int | None = 100
    """Problems per benchmark (None = all)."""
    batch_size: int = 16
    """Prompts per validation batch."""


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe from the command line; returns the summary printed at the end."""
    return run(argv)[0]


def run(argv: list[str] | None = None) -> tuple[dict, L.Trainer, GRPOModule]:
    """Parse, build, train, validate; returns (summary, trainer, module) for callers that inspect the run."""
    return run_grpo_recipe(RECIPE, __doc__.split("\n\n")[0], OneShotData, _train_data, argv)


def _train_data(tokenizer, data: OneShotData, seed: int, val_options: dict) -> OneShotDataModule:
    return OneShotDataModule(
        tokenizer,
        examples=data.examples,
        label=data.label,
        question_field=data.question_field,
        answer_field=data.answer_field,
        batch_size=data.prompts_per_step,
        template=data.template,
        cot_suffix=data.cot_suffix,
        max_prompt_length=data.max_prompt_length,
        seed=seed,
        **val_options,
    )


def run_grpo_recipe(
    recipe: str,
    description: str,
    data_class: type,
    build_data: Callable[[Any, Any, int, dict], L.LightningDataModule],
    argv: list[str] | None = None,
) -> tuple[dict, L.Trainer, GRPOModule]:
    """What the GRPO recipes share: the command line (presets, --config, --resume), the policy, validation on
    the eval benchmarks before and after training, the fit, the report.

    ``data_class`` is the recipe's ``data`` section; ``build_data(tokenizer, data, seed, val_options)`` makes its
    training DataModule (``val_options`` are the DataModule arguments for validation inside fit).
    """
    parser = build_parser(
        recipe, description, {"model": ModelConfig, "grpo": GRPOConfig, "data": data_class, "eval": EvalData}
    )
    cfg, notes = parse(recipe, parser, argv)
    for note in notes:
        print(f"[reprokit] {note}")
    init = parser.instantiate(cfg)
    run: RunConfig = init.run
    run_dir = Path(run.run_dir)
    config_path = save_config(parser, cfg, run_dir)
    print(f"[reprokit] run directory {run_dir} (config saved to {config_path})")
    L.seed_everything(run.seed, workers=True, verbose=False)

    model, tokenizer = load_policy(init.model)
    ev: EvalData = init.eval
    train_data = build_data(tokenizer, init.data, run.seed, _val_options(ev, run))
    eval_dl = _eval_dataloader(ev, tokenizer, init.data)

    grpo: GRPOConfig = init.grpo
    if grpo.accuracy_file is None:
        grpo.accuracy_file = str(run_dir / "example_accuracy.json")
    module = GRPOModule(model, tokenizer, grpo, run_dir=str(run_dir), seed=run.seed)
    trainer = build_trainer(run, run_dir, val_every=run.val_every if eval_dl is not None else 0)
    ckpt = last_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and ckpt is None:
        raise SystemExit(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")

    before = _validate(trainer, module, eval_dl) if eval_dl is not None and ckpt is None else {}
    trainer.fit(module, datamodule=train_data, ckpt_path=str(ckpt) if ckpt else None)
    after = _validate(trainer, module, eval_dl) if eval_dl is not None else {}
    summary = {"steps": trainer.global_step, "before": before, "after": after, "train": module.last_metrics}
    if trainer.is_global_zero:
        _report(run_dir, summary)
    return summary, trainer, module


def _val_options(ev: EvalData, run: RunConfig) -> dict:
    """Validation inside fit (every run.val_every steps) comes from the training DataModule."""
    if not (ev.benchmarks and run.val_every):
        return {}
    return dict(val_benchmarks=ev.benchmarks, data_dir=ev.data_dir, val_limit=ev.limit, val_batch_size=ev.batch_size)


def _eval_dataloader(ev: EvalData, tokenizer, data):
    if not ev.benchmarks:
        return None
    dm = EvalDataModule(
        tokenizer,
        benchmarks=ev.benchmarks,
        data_dir=ev.data_dir,
        limit=ev.limit,
        batch_size=ev.batch_size,
        template=data.template,
        cot_suffix=data.cot_suffix,
        max_prompt_length=data.max_prompt_length,
    )
    dm.setup("validate")
    return dm.val_dataloader()


def _validate(trainer: L.Trainer, module: GRPOModule, dataloader) -> dict[str, float]:
    results = trainer.validate(module, dataloaders=dataloader, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def _report(run_dir: Path, summary: dict):
    print(f"[reprokit] finished {summary['steps']} steps")
    for key in sorted(set(summary["before"]) | set(summary["after"])):
        if "pass@1" in key:
            b, a = summary["before"].get(key), summary["after"].get(key)
            fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"[reprokit] {key}: before {fmt(b)}  after {fmt(a)}")
    print(f"[reprokit] TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    print(f"[reprokit] checkpoints: {run_dir / 'checkpoints'}")


if __name__ == "__main__":
    main()
