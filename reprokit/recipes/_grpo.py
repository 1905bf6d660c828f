"""What the GRPO recipes share: their command line, the policy, validation before and after training, the fit and
the report. ``one_shot`` and ``focal_tokens`` differ only in their data section and training DataModule.

A GRPO recipe's sections, each a group of its command line and YAML: ``run`` (:class:`RunConfig`), ``model``
(:class:`ModelConfig`), ``rollout``, ``loss`` and ``train`` (:mod:`reprokit.training.grpo`), ``data`` (the
recipe's own), ``prompt`` (:class:`reprokit.data.Prompt`) and ``eval`` (:class:`reprokit.data.Validation`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

from reprokit.cli import Recipe, gpu_preset, parse
from reprokit.data import EvalDataModule, Prompt, Validation
from reprokit.metrics.functional import bootstrap_interval
from reprokit.policy import ModelConfig, load_policy
from reprokit.training.grpo import GRPOConfig, GRPOModule, LossConfig, RolloutConfig, TrainConfig
from reprokit.training.trainer import RunConfig, build_trainer, last_checkpoint, refuse_to_overwrite

__all__ = ["grpo_recipe", "run_grpo_recipe"]


def grpo_recipe(name: str, description: str, data_class: type) -> Recipe:
    """The command line of a GRPO recipe: its sections, the data one its own."""
    return Recipe(
        name=name,
        description=description,
        sections={
            "run": RunConfig, "model": ModelConfig, "rollout": RolloutConfig, "loss": LossConfig, "train": TrainConfig,
            "data": data_class, "prompt": Prompt, "eval": Validation,
        },
        resumable=True,
        default_preset=gpu_preset,
    )


def run_grpo_recipe(
    recipe: Recipe,
    build_data: Callable[[Any, Any, Prompt, int, Validation | None], L.LightningDataModule],
    argv: list[str] | None = None,
) -> tuple[dict, L.Trainer, GRPOModule]:
    """Parse, build, validate, train, validate, report; returns (summary, trainer, module).

    ``build_data(tokenizer, data, prompt, seed, validation)`` makes the recipe's training DataModule; ``validation`` is
    the eval section when validation runs inside fit (``run.val_every``), else None.
    """
    parsed = parse(recipe, argv)
    parsed.print_notes()
    run: RunConfig = parsed.section("run")
    run_dir = Path(run.run_dir)
    refuse_to_overwrite(run_dir, parsed.resume)
    config_path = parsed.save(run_dir)
    print(f"[reprokit] run directory {run_dir} (config saved to {config_path})")
    L.seed_everything(run.seed, workers=True, verbose=False)

    ev: Validation = parsed.section("eval")
    cfg = GRPOConfig(parsed.section("rollout"), parsed.section("loss"), parsed.section("train"), ev)
    model, tokenizer = load_policy(parsed.section("model"), finetune=cfg.train.finetune)
    prompt: Prompt = parsed.section("prompt")
    train_data = build_data(tokenizer, parsed.section("data"), prompt, run.seed, ev if ev.benchmarks and run.val_every else None)
    eval_dl = _eval_dataloader(ev, tokenizer, prompt)
    module = GRPOModule(model, tokenizer, cfg, run_dir=str(run_dir), seed=run.seed)
    trainer = build_trainer(run, run_dir, val_every=run.val_every if eval_dl is not None else 0, model=model)
    ckpt = last_checkpoint(run_dir) if parsed.resume else None
    if parsed.resume and ckpt is None:
        raise SystemExit(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")

    if run.description:
        print(f"[reprokit] {run.description}")
    before, before_problems = _validate(trainer, module, eval_dl) if eval_dl is not None and ckpt is None else ({}, {})
    if before and trainer.is_global_zero:
        _report_validation("before training", before, before_problems)
    trainer.fit(module, datamodule=train_data, ckpt_path=str(ckpt) if ckpt else None)
    after, after_problems = _validate(trainer, module, eval_dl) if eval_dl is not None else ({}, {})
    summary = {
        "steps": trainer.global_step, "before": before, "after": after, "train": module.last_metrics,
        "intervals": _intervals(before_problems, after_problems),
    }
    if trainer.is_global_zero:
        _report(run_dir, summary)
        print(f"[reprokit] the paper's evaluation of its checkpoints: {evaluate_command(parsed, run_dir)}")
    return summary, trainer, module


def evaluate_command(parsed, run_dir: Path) -> str:
    """The `evaluate` command that scores this run's checkpoints against its base: the CPU world's protocol (with the
    run's world settings) for a world base, the 1-shot paper's six benchmarks otherwise."""
    import shlex
    from dataclasses import asdict, fields

    from reprokit import registry

    base = parsed.section("model").name_or_path
    args = ["python", "-m", "reprokit.recipes.evaluate", "--models", f"base={base}", f"rl={run_dir}"]
    if registry.lookup("model", base) and base == "world":
        args += ["--protocol", "cpu-world"]
        for section in registry.names("section"):
            value = parsed.section(section)
            default = type(value)()
            args += [
                item for f in fields(value) if getattr(value, f.name) != getattr(default, f.name)
                for item in (f"--{section}.{f.name}", str(asdict(value)[f.name]))
            ]
    else:
        args += ["--protocol", "one-shot-rlvr"]
    args += ["--run_dir", str(Path("runs") / "evaluate" / run_dir.name)]
    return shlex.join(args)


def _eval_dataloader(ev: Validation, tokenizer, prompt: Prompt):
    if not ev.benchmarks:
        return None
    dm = EvalDataModule(tokenizer, benchmarks=ev.benchmarks, data_dir=ev.data_dir, limit=ev.limit, batch_size=ev.batch_size, prompt=prompt)
    dm.setup("validate")
    return dm.val_dataloader()


def _validate(trainer: L.Trainer, module: GRPOModule, dataloader) -> tuple[dict[str, float], dict]:
    """The validation metrics and, per benchmark, each problem's accuracy (for intervals)."""
    results = trainer.validate(module, dataloaders=dataloader, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}, dict(module.val_problem_accuracy)


def _intervals(before: dict, after: dict) -> dict:
    """Per benchmark: pass@1 before and after with 95% bootstrap intervals over its problems, and the change
    (paired: the same problems)."""
    out = {}
    for name in sorted(set(before) | set(after)):
        entry = {}
        for when, problems in (("before", before), ("after", after)):
            if name in problems:
                entry[when] = bootstrap_interval(list(problems[name].values()))
        if name in before and name in after:
            ids = sorted(set(before[name]) & set(after[name]))
            entry["change"] = bootstrap_interval([after[name][i] for i in ids], [before[name][i] for i in ids])
        out[name] = entry
    return out


def _fmt_interval(iv) -> str:
    return f"{iv[0]:.3f} [95% CI {iv[1]:.3f}, {iv[2]:.3f}]"


def _report_validation(when: str, metrics: dict[str, float], problems: dict) -> None:
    for name in sorted(problems):
        values = list(problems[name].values())
        stats = [f"{k.rsplit('/', 1)[1]} {v:.3f}" for k, v in sorted(metrics.items()) if k.startswith(f"val/{name}/") and "@" not in k]
        extra = f"; {', '.join(stats)}" if stats else ""
        print(f"[reprokit] {when}: {name} pass@1 {_fmt_interval(bootstrap_interval(values))} over {len(values)} problems{extra}")


def _report(run_dir: Path, summary: dict):
    print(f"[reprokit] finished {summary['steps']} steps")
    for key in sorted(set(summary["before"]) | set(summary["after"])):
        if "pass@1" in key or (key.startswith("val/") and "@" not in key):
            b, a = summary["before"].get(key), summary["after"].get(key)
            fmt = lambda v: "  n/a" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"[reprokit] {key}: before {fmt(b)}  after {fmt(a)}")
    for name, entry in summary["intervals"].items():
        parts = [f"{when} {_fmt_interval(entry[when])}" for when in ("before", "after") if when in entry]
        if "change" in entry:
            parts.append(f"change {_fmt_interval(entry['change'])}")
        print(f"[reprokit] {name} pass@1: " + "; ".join(parts))
    print(f"[reprokit] TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    print(f"[reprokit] checkpoints: {run_dir / 'checkpoints'}")
