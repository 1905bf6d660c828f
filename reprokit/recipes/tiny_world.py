"""The CPU-world study: base-vs-RL pass@k, 1-shot RLVR, forking tokens and distillation in minutes on CPU.

What it reproduces, on the arithmetic-chain world of `reprokit.worlds` (a base model pretrained from scratch
on a noisy teacher's solutions, see `reprokit/worlds/task.py and teacher.py`) with the kit's own GRPO code:
- pass@k (Yue et al. 2025): does RL raise pass@1 while pass@k at large k stays level or falls?
- 1-shot RLVR (Wang et al. 2025): GRPO on ONE train example, chosen by the variance rule (the example whose
  training accuracy varied most during the full-data GRPO run), evaluated on the whole test split.
- forking tokens (Wang et al. 2025): DAPO-style GRPO with the policy gradient on the top-20% entropy tokens.
- distillation: SFT on a teacher that writes a solution strategy absent from the base's pretraining corpus.
For every model: pass@k for k = 1 … n on the test split and on a harder slice (longer chains than
pretraining saw), token-entropy statistics and the top forking tokens, per-problem accuracy histograms and
the solved-set overlap with the base.

Where it departs from the papers: a 1–10 M-parameter model instead of 1.5–32 B; LoRA adapters (rank 32)
on a full-precision base (the `one_shot` recipe's `cpu` preset trains the same base in NF4, which keeps its
pass@1); a synthetic task instead of MATH; far fewer steps; the full-data RL runs draw from the first 320
train problems (`--study.train_problems`), so that 60 steps are 3 epochs and the variance rule has 3
accuracies per problem. When the full-data run saw each example only once, the variance rule has one
accuracy per example and falls back to p(1 − p), the variance of its 0/1 reward.

Outputs in --study.run_dir: findings.json, pass_at_k.png, entropy_histogram.png, accuracy_histograms.png,
and TensorBoard logs of every training under tb/ folders of grpo/, one_shot/, focal/, distill/.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from reprokit import plots
from reprokit.algorithms import focal_threshold, response_logprobs
from reprokit.cli import Recipe, parse
from reprokit.data import Example, MathDataModule, OneShotDataModule
from reprokit.metrics import TokenEntropy
from reprokit.metrics.functional import accuracy_histogram, powers_of_two, solved_set_overlap
from reprokit.policy import ModelConfig, eos_token_ids, load_policy
from reprokit.sampling import generate
from reprokit.training.grpo import GRPOConfig, GRPOModule
from reprokit.training.sft import CausalLMModule, SFTDataModule
from reprokit.training.trainer import RunConfig, build_trainer
from reprokit.worlds import (
    PROMPT_FORMAT,
    BaseConfig,
    WorldConfig,
    evaluate_pass_at_k,
    export_splits,
    make_splits,
    max_response_chars,
    pretrain_base,
    solution_pairs,
)

WORLD_REWARD = "world"
MODELS = ("base", "grpo", "one_shot", "focal", "distill")


@dataclass
class StudyConfig:
    """The study's training and evaluation budget."""

    run_dir: str = "runs/tiny_world"
    """Where findings.json, plots and each training's logs go."""
    base_model: str | None = None
    """A base model folder saved by pretrain_base to use as it is (default: load or pretrain the world's base)."""
    cache_dir: str | None = None
    """Where pretrained base models are cached (default $REPROKIT_CACHE/worlds or ~/.cache/reprokit/worlds)."""
    seed: int = 0
    """Seed of RL sampling and data order."""
    rl_steps: int = 60
    """GRPO updates of each RL run (full-data, one-shot, focal)."""
    train_problems: int | None = 320
    """Train-split problems the full-data RL runs (grpo, focal) draw from, the first N (None = all 1000). At
    320 and 16 prompts per step, 60 steps are 3 epochs: the variance rule that picks the 1-shot example
    (PAPERS.md §2) then sees 3 accuracies per problem, as the paper's rule needs several epochs of history."""
    prompts_per_step: int = 16
    """Prompts per rollout batch; each gets group_size responses."""
    group_size: int = 8
    """Responses per prompt."""
    lr: float = 2e-3
    """LoRA learning rate of the RL runs."""
    lora_r: int = 32
    """LoRA rank of the RL runs."""
    temperature: float = 1.0
    """Rollout and evaluation sampling temperature."""
    one_shot_example: str | None = None
    """Id of the train example for 1-shot RL (default: chosen by the variance rule)."""
    distill_steps: int = 300
    """SFT steps on the alternative teacher's traces."""
    distill_lr: float = 1e-3
    """SFT learning rate (full fine-tuning of the tiny base)."""
    eval_n: int = 256
    """Samples per problem for pass@k (k = 1, 2, 4, …, eval_n)."""
    eval_test_problems: int = 100
    """Test-split problems evaluated (the first N)."""
    eval_hard_problems: int = 50
    """Hard-slice problems evaluated (the first N)."""
    entropy_samples: int = 4
    """Responses per test problem scored for token-entropy statistics."""


RECIPE = Recipe(
    name="tiny_world",
    description=__doc__.split("\n\n")[0],
    sections={"study": StudyConfig},
    run_dir_key="study.run_dir",
    aliases={"--quick": ["--preset", "quick"]},
)


def main(argv: list[str] | None = None) -> dict:
    """Run the study from the command line; returns findings.json's content.

    ``--quick`` is the ~5-minute version for CI (the ``quick`` preset); later flags override it.
    """
    parsed = parse(RECIPE, argv)
    parsed.print_notes()
    study: StudyConfig = parsed.section("study")
    run_dir = Path(study.run_dir)
    parsed.save(run_dir)
    return run_study(study, parsed.section("world"), run_dir, parsed.section("world_base"))


def run_study(study: StudyConfig, world: WorldConfig, run_dir: Path, base: BaseConfig | None = None) -> dict:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    if study.base_model:
        base_path = Path(study.base_model)
        world = _saved_world(base_path, world)
    else:
        base_path = pretrain_base(world, study.cache_dir, base=base)
    print(f"[reprokit] base model: {base_path}")
    paths = export_splits(world, run_dir / "data")
    splits = make_splits(world)
    rl_train = splits.train[: study.train_problems]
    paths["rl_train"] = run_dir / "data" / "rl_train.jsonl"
    paths["rl_train"].write_text("".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in rl_train))
    epochs = study.rl_steps * study.prompts_per_step / len(rl_train)
    print(f"[reprokit] RL train set: {len(rl_train)} problems, {epochs:.1f} epochs in {study.rl_steps} steps")
    test, hard = splits.test[: study.eval_test_problems], splits.hard[: study.eval_hard_problems]

    base_model, tokenizer = _load(base_path, study, lora=False)
    models = {"base": base_model.eval()}

    t = time.perf_counter()
    grpo_dir = run_dir / "grpo"
    models["grpo"] = _train_grpo(base_path, study, world, grpo_dir, _math_data(paths["rl_train"], study), _rl_config(study, world, accuracy_file=grpo_dir / "example_accuracy.json"))
    timings["grpo"] = time.perf_counter() - t

    example, selection = _choose_one_shot_example(study, rl_train, grpo_dir / "example_accuracy.json")
    print(f"[reprokit] one-shot example {example.id}: {example.question.strip()} (answer {example.answer}; {selection})")
    t = time.perf_counter()
    one_shot_data = lambda tok: OneShotDataModule(tok, examples=[example], batch_size=study.prompts_per_step, template=PROMPT_FORMAT, cot_suffix=False, seed=study.seed)
    models["one_shot"] = _train_grpo(base_path, study, world, run_dir / "one_shot", one_shot_data, _rl_config(study, world, kl_coef=0.001, entropy_coef=0.001))
    timings["one_shot"] = time.perf_counter() - t

    t = time.perf_counter()
    focal_cfg = _rl_config(study, world, epsilon_high=0.28, kl_coef=0.0, entropy_coef=0.0, top_entropy_quantile=0.2, dynamic_sampling=True)
    models["focal"] = _train_grpo(base_path, study, world, run_dir / "focal", _math_data(paths["rl_train"], study), focal_cfg)
    timings["focal"] = time.perf_counter() - t

    t = time.perf_counter()
    models["distill"] = _distill(base_path, study, world, splits.train, run_dir / "distill")
    timings["distill"] = time.perf_counter() - t

    t = time.perf_counter()
    findings = _evaluate(models, tokenizer, test, hard, study, world)
    timings["evaluation"] = time.perf_counter() - t
    findings["one_shot_example"] = {"id": example.id, "question": example.question, "answer": example.answer, "selection": selection}
    findings["base_model"] = str(base_path)
    findings["study"] = asdict(study)
    findings["timings_s"] = {**timings, "total": time.perf_counter() - started}
    (run_dir / "findings.json").write_text(json.dumps(findings, indent=2))
    _plot(findings, run_dir)
    _print_table(findings, run_dir)
    return findings


def _saved_world(base_path: Path, world: WorldConfig) -> WorldConfig:
    """The world a given base model was pretrained on (its world.json), so splits and lengths match it."""
    saved = base_path / "world.json"
    if not saved.is_file():
        raise SystemExit(f"--study.base_model {base_path}: no world.json there; pass a folder written by pretrain_base")
    values = json.loads(saved.read_text())
    values = values.get("world", values)
    known = {f.name for f in dataclasses.fields(WorldConfig)}
    kept = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return dataclasses.replace(world, **kept)


# ------------------------------------------------------------------ training
def _load(base_path: Path, study: StudyConfig, *, lora: bool):
    cfg = ModelConfig(
        name_or_path=str(base_path),
        quantization="none",
        lora_r=study.lora_r,
        lora_alpha=2 * study.lora_r,
        lora_dropout=0.0,
        gradient_checkpointing=False,
    )
    model, tokenizer = load_policy(cfg)
    if not lora:
        model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return model, tokenizer


def _math_data(path: Path, study: StudyConfig):
    return lambda tokenizer: MathDataModule(
        tokenizer, path=str(path), question_field="question", answer_field="answer", id_field="id",
        batch_size=study.prompts_per_step, template=PROMPT_FORMAT, cot_suffix=False, seed=study.seed,
    )


def _rl_config(study: StudyConfig, world: WorldConfig, accuracy_file: Path | None = None, **overrides) -> GRPOConfig:
    values = dict(
        group_size=study.group_size,
        temperature=study.temperature,
        max_new_tokens=max_response_chars(world.max_steps, world.modulus) + 8,
        micro_batch_size=study.prompts_per_step * study.group_size,
        lr=study.lr,
        weight_decay=0.0,
        kl_coef=0.0,
        entropy_coef=0.0,
        reward=WORLD_REWARD,
        log_completions_every=10,
        accuracy_file=str(accuracy_file) if accuracy_file else None,
    )
    values.update(overrides)
    return GRPOConfig(**values)


def _train_grpo(base_path: Path, study: StudyConfig, world: WorldConfig, out: Path, data, cfg: GRPOConfig):
    L.seed_everything(study.seed, verbose=False)
    model, tokenizer = _load(base_path, study, lora=True)
    datamodule = data(tokenizer)
    module = GRPOModule(model, tokenizer, cfg, run_dir=str(out), seed=study.seed)
    run = RunConfig(run_dir=str(out), max_steps=study.rl_steps, checkpoint_every=study.rl_steps, accelerator="cpu", devices="1")
    trainer = build_trainer(run, out, val_every=0)
    trainer.fit(module, datamodule=datamodule)
    model.eval()
    return model


def _choose_one_shot_example(study: StudyConfig, train, accuracy_file: Path) -> tuple[Example, str]:
    by_id = {p.id: p for p in train}
    if study.one_shot_example is not None:
        if study.one_shot_example not in by_id:
            raise SystemExit(f"--study.one_shot_example {study.one_shot_example!r} is not a train-split id (e.g. {next(iter(by_id))!r})")
        chosen, why = study.one_shot_example, "given"
    else:
        history = json.loads(accuracy_file.read_text())
        epochs = max(len(v) for v in history.values())
        if epochs >= 2:
            scores = {k: float(np.var(v)) for k, v in history.items()}
            why = f"variance of training accuracy over {epochs} epochs, largest first"
        else:
            scores = {k: float(np.mean(v) * (1 - np.mean(v))) for k, v in history.items()}
            why = "one epoch of history: p(1 - p) of its training accuracy, the variance of its 0/1 reward"
        chosen = max(sorted(scores), key=lambda k: scores[k])
        why += f" (score {scores[chosen]:.3f})"
    p = by_id[chosen]
    return Example(id=p.id, question=p.question, answer=p.answer, fields={"steps": p.steps}), why


def _distill(base_path: Path, study: StudyConfig, world: WorldConfig, train, out: Path):
    L.seed_everything(study.seed, verbose=False)
    model, tokenizer = _load(base_path, study, lora=False)
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    pairs = [(PROMPT_FORMAT.format(question=q), r) for q, r in solution_pairs(train, "teacher_alt", world, seed=study.seed)]
    data = SFTDataModule(pairs, tokenizer, batch_size=32, max_length=512, seed=study.seed)
    module = CausalLMModule(model, lr=study.distill_lr, warmup_steps=10)
    run = RunConfig(run_dir=str(out), max_steps=study.distill_steps, checkpoint_every=study.distill_steps, accelerator="cpu", devices="1")
    trainer = build_trainer(run, out, val_every=0)
    trainer.fit(module, datamodule=data)
    model.eval()
    return model


# ------------------------------------------------------------------ evaluation
def _evaluate(models: dict, tokenizer, test, hard, study: StudyConfig, world: WorldConfig) -> dict:
    ks = list(powers_of_two(study.eval_n))
    hard_tokens = max_response_chars(world.hard_max_steps, world.modulus) + 8
    findings: dict = {"test": {}, "hard": {}, "accuracy_histogram": {}, "overlap_with_base": {}, "entropy": {}, "forking_tokens": {}}
    solved: dict[str, dict[str, set]] = {}
    for name, model in models.items():
        print(f"[reprokit] evaluating {name}: pass@k with n = {study.eval_n} on {len(test)} test and {len(hard)} hard problems")
        solved[name] = {}
        for split, problems, max_new in (("test", test, None), ("hard", hard, hard_tokens)):
            result = evaluate_pass_at_k(model, tokenizer, problems, study.eval_n, ks, temperature=study.temperature, max_new_tokens=max_new, seed=study.seed)
            findings[split][name] = {k: result[f"pass@{k}"] for k in ks}
            acc = [c / study.eval_n for c in result["num_correct"]]
            findings["accuracy_histogram"].setdefault(split, {})[name] = accuracy_histogram(acc)
            solved[name][split] = {i for i, c in zip(result["ids"], result["num_correct"]) if c > 0}
        entropy, tokens = _entropy_stats(model, tokenizer, test, study, world)
        findings["entropy"][name] = entropy
        findings["forking_tokens"][name] = tokens
    for name in models:
        findings[name] = findings["test"][name]
        if name != "base":
            findings["overlap_with_base"][name] = {
                split: solved_set_overlap(solved["base"][split], solved[name][split]) for split in ("test", "hard")
            }
    return findings


@torch.no_grad()
def _entropy_stats(model, tokenizer, problems, study: StudyConfig, world: WorldConfig) -> tuple[dict, list]:
    """Token entropy of the model's own responses at the sampling temperature, and its top-20% tokens."""
    prompts = [PROMPT_FORMAT.format(question=p.question) for p in problems]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    comps = generate(
        model, tokenizer, enc["input_ids"], enc["attention_mask"], n=study.entropy_samples,
        max_new_tokens=max_response_chars(world.max_steps, world.modulus) + 8, temperature=study.temperature,
        eos_ids=eos_token_ids(tokenizer, model),
    )
    sequences = torch.cat([comps.prompt_ids, comps.completion_ids], 1)  # [N, L+T]
    attention = torch.cat([comps.prompt_mask, comps.completion_mask], 1)  # [N, L+T]
    _, entropy = response_logprobs(
        model, sequences, attention, comps.completion_ids, first=comps.prompt_ids.shape[1] - 1,
        temperature=study.temperature,
    )  # [N, T]
    metric = TokenEntropy()
    metric.update(entropy, comps.completion_mask)
    stats = {k: float(v) for k, v in metric.compute().items()}
    valid = comps.completion_mask.bool()  # [N, T]
    threshold = focal_threshold(entropy[valid], 0.2)
    top = (entropy >= threshold) & valid  # [N, T]
    counts = Counter(tokenizer.convert_ids_to_tokens(comps.completion_ids[top].tolist()))
    stats["top20_threshold"] = float(threshold)
    return stats, [[tok.replace("\n", "\\n"), n] for tok, n in counts.most_common(10)]


# ------------------------------------------------------------------ report
def _plot(findings: dict, run_dir: Path):
    splits = ("test", "hard")
    plots.pass_at_k_curves({f"CPU world, {split} split": findings[split] for split in splits}, run_dir / "pass_at_k.png")
    entropy = {name: {"mean": e["mean"], "80th percentile": e["p80"]} for name, e in findings["entropy"].items()}
    plots.bar_chart(
        {"Token entropy of each model's own responses": entropy}, run_dir / "entropy_histogram.png",
        ylabel="token entropy (nats)",
    )
    plots.accuracy_histograms(
        {f"Per-problem accuracy, {split} split": findings["accuracy_histogram"][split] for split in splits},
        run_dir / "accuracy_histograms.png",
    )


def _print_table(findings: dict, run_dir: Path):
    ks = list(findings["test"]["base"])
    show = [k for k in ks if int(k) in (1, 4, 16, 64, 256) or k == ks[-1]]
    print("[reprokit] pass@k on the test split (hard slice in brackets)")
    print("model     " + "".join(f"{'pass@' + str(k):>18}" for k in show))
    for name in findings["test"]:
        cells = "".join(f"{findings['test'][name][k]:>9.3f} [{findings['hard'][name][k]:.3f}]" for k in show)
        print(f"{name:<10}{cells}")
    print(f"[reprokit] findings: {run_dir / 'findings.json'}; plots: {run_dir}/*.png; TensorBoard: tensorboard --logdir {run_dir}")


if __name__ == "__main__":
    main()
