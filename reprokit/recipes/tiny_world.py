"""The CPU-world study: where one training example is enough and where it is not, and when distillation adds.

What it reproduces, on the CPU worlds of `reprokit.worlds` (arithmetic chains; a 1 M-parameter base pretrained
from scratch on a corpus whose writers differ from world to world, docs/cpu_worlds.md), with the kit's own
GRPO and SFT code:
- 1-shot RLVR (Wang et al. 2025): GRPO on ONE train example, picked by the variance rule (the example whose
  training accuracy varied most during a full-data GRPO run) and on random examples, each with several seeds,
  with the paper's ablations (a format/mode-only reward, entropy loss only, no entropy loss, a random reward)
  and curves over training steps (train reward, test pass@1, the share of responses in the world's mode or its
  rate of checks, token entropy);
- pass@k (Yue et al. 2025) in the control world: full-data GRPO and focal-token GRPO (the top-20% entropy
  tokens, Wang et al. 2025) against the base at k = 1 … 64;
- distillation: SFT on fresh teacher traces, full fine-tuning and LoRA, against GRPO with the same number of
  steps, on facts the base never writes right (the blind-spot world).
Every pass@1 and pass@k comes with a 95% bootstrap interval over the test problems, and every change with a
paired one.

Where it departs from the papers: a 1 M-parameter model instead of 1.5–32 B; LoRA (rank 32) on a full-precision
base; a synthetic task; 40 one-shot steps of 8 copies × 8 responses instead of 2000 of 128 × 8. The worlds'
parameters and the study's settings were fixed before its runs (docs/cpu_worlds.md); examples are picked by
the rule or at random, never by hand.

Outputs in --run_dir: findings.json, findings.md (the tables), curves_<world>.png (over training steps),
pass_at_k_worlds.png (base and 1-shot, every world), pass_at_k.png (the control world's RL models),
one_shot_gain.png and TensorBoard logs of every training under <world>/<run>/tb. `--quick` is the CI-sized
study: fewer worlds, steps, seeds and samples.
"""

from __future__ import annotations

import json
import math
import random
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch

from reprokit import plots, registry
from reprokit.algorithms import response_logprobs
from reprokit.cli import Recipe, parse
from reprokit.data import MathDataModule, OneShotDataModule, Prompt
from reprokit.metrics.functional import bootstrap_interval, mean_pass_at_k, pass_at_k, powers_of_two
from reprokit.policy import ModelConfig, eos_token_ids, load_base_model, load_policy
from reprokit.recipes.select_examples import rank_examples
from reprokit.sampling import sample_and_grade, seeded_generator
from reprokit.training.grpo import GRPOConfig, GRPOModule
from reprokit.training.sft import CausalLMModule, SFTDataModule
from reprokit.training.trainer import RunConfig, build_trainer
from reprokit.worlds import (
    PROMPT_FORMAT,
    WORLDS,
    WorldConfig,
    make_splits,
    max_response_chars,
    pretrain_base,
    write_solution,
)
from reprokit.worlds.names import behaviours
from reprokit.worlds.task import make_problem, parse_question, render_prompt, sample_chain
from reprokit.worlds.task import reward as task_reward
from reprokit.worlds.teacher import blind_spot_facts

WORLD_PROMPT = Prompt(template=PROMPT_FORMAT, cot_suffix=False)
ABLATIONS = {
    "mode-only reward": dict(reward="world_mode"),
    "entropy only": dict(reward="zero"),
    "no entropy loss": dict(entropy_coef=0.0),
    "random reward": dict(reward="random"),
}
# The spurious-rewards setting (docs/cpu_worlds.md, addendum): 8 optimizer updates of one group each per rollout
# step, the later ones off-policy, where the ratio clip acts. Run only when named in --study.one_shot_settings.
OFF_POLICY_ABLATIONS = {
    "random reward, 8 updates per step": dict(reward="random", mini_batch_size=1),
    "outcome reward, 8 updates per step": dict(mini_batch_size=1),
}


@dataclass
class StudyConfig:
    """Which worlds and runs the study has (the `study` section; docs/cpu_worlds.md fixed them before the runs)."""

    run_dir: str = "runs/tiny_world"
    """Where findings.json, findings.md, the plots and each training's logs go."""
    worlds: list[str] = field(default_factory=lambda: list(WORLDS))
    """Worlds to study, by name (reprokit.worlds.config.WORLDS)."""
    main_world: str = "mode-0.1"
    """The world whose random examples also get every seed."""
    ablation_worlds: list[str] = field(default_factory=lambda: ["mode-0.1", "selfcheck"])
    """Worlds that run the paper's ablations on their variance-rule example."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of every 1-shot setting."""
    random_examples: int = 4
    """Random train examples per world (each with every seed in main_world, seed 0 elsewhere)."""
    one_shot_settings: list[str] | None = None
    """Run only these 1-shot settings (variance rule, random examples, an ablation's name, or one of the off-policy
    ablations of docs/cpu_worlds.md's addendum); None = the study's own: the variance rule, random examples and
    the four ablations."""
    workers: int = 2
    """Runs trained at once, each in its own process on one CPU thread."""
    seed: int = 0
    """Seed of the random examples and of every evaluation's sampling."""


@dataclass
class StudyTraining:
    """How every run trains (the `training` section)."""

    one_shot_steps: int = 40
    """GRPO updates of a 1-shot run."""
    full_steps: int = 60
    """GRPO updates of the full-data run (the variance rule's history; the control world's RL model)."""
    full_problems: int = 160
    """Train problems of the full-data run (the first N): 60 steps of 8 prompts = 3 epochs."""
    prompts_per_step: int = 8
    """Prompts per rollout batch (copies of the example in a 1-shot run)."""
    group_size: int = 8
    """Responses per prompt."""
    lr: float = 5e-4
    """LoRA learning rate of every RL run."""
    lora_r: int = 32
    """LoRA rank of every RL and LoRA-SFT run."""
    temperature: float = 1.0
    """Rollout and evaluation temperature."""
    distill_traces: int = 4000
    """Fresh teacher traces of the distillation runs (each seen once)."""
    distill_batch: int = 32
    """Sequences per SFT step (traces / batch = the SFT and same-compute GRPO steps)."""
    distill_lr: float = 1e-3
    """SFT learning rate (full fine-tuning and LoRA)."""


@dataclass
class StudyEvaluation:
    """What every evaluation samples (the `evaluation` section)."""

    curve_every: int = 10
    """Evaluate the test curves every N steps."""
    curve_problems: int = 100
    """Test problems of each curve point."""
    curve_n: int = 2
    """Samples per problem of each curve point."""
    eval_problems: int = 200
    """Test problems of the final evaluation (the first N)."""
    eval_n: int = 4
    """Samples per problem of the final evaluation: pass@1 … pass@eval_n."""
    curve_k_n: int = 32
    """Samples per problem of the pass@k curves of the base and of the first variance-rule run of every world."""
    curve_k_problems: int = 100
    """Test problems of those curves."""
    control_n: int = 64
    """Samples per problem of the control world's pass@k comparison (base, full-data GRPO, focal tokens)."""
    control_problems: int = 100
    """Test problems of that comparison."""
    bootstrap: int = 1000
    """Bootstrap resamples of every interval."""


Study = SimpleNamespace
"""The three sections' settings in one namespace (no name repeats), as every job reads them."""
SECTIONS = {"study": StudyConfig, "training": StudyTraining, "evaluation": StudyEvaluation}


def study_of(**values) -> Study:
    """A study from settings by name (any of the sections'), the defaults for the rest."""
    merged = {}
    for cls in SECTIONS.values():
        names = {f.name for f in fields(cls)}
        merged.update(asdict(cls(**{k: v for k, v in values.items() if k in names})))
    unknown = set(values) - set(merged)
    if unknown:
        raise TypeError(f"no study setting {sorted(unknown)}")
    return Study(**merged)


RECIPE = Recipe(
    name="tiny_world",
    description=__doc__.split("\n\n")[0],
    sections=SECTIONS,
    run_dir_key="study.run_dir",
    aliases={"--quick": ["--preset", "quick"]},
    registry_sections=False,
)


def main(argv: list[str] | None = None) -> dict:
    """Run the study from the command line; returns findings.json's content.

    ``--quick`` is the ~5-minute version for CI (the ``quick`` preset); later flags override it.
    """
    parsed = parse(RECIPE, argv)
    parsed.print_notes()
    study = study_of(**{k: v for name in SECTIONS for k, v in asdict(parsed.section(name)).items()})
    run_dir = Path(study.run_dir)
    parsed.save(run_dir)
    return run_study(study, run_dir)


def run_study(study: Study, run_dir: Path) -> dict:
    unknown = [w for w in study.worlds if w not in WORLDS]
    if unknown:
        raise SystemExit(f"--study.worlds: unknown world(s) {unknown}; the worlds are {', '.join(WORLDS)}")
    settings = ["variance rule", "random examples", *ABLATIONS, *OFF_POLICY_ABLATIONS]
    unknown = [name for name in study.one_shot_settings or () if name not in settings]
    if unknown:
        raise SystemExit(f"--study.one_shot_settings: unknown setting(s) {unknown}; the settings are {', '.join(settings)}")
    started = time.perf_counter()
    for name in study.worlds:  # every base exists before the workers start (shipped, or pretrained once)
        pretrain_base(WORLDS[name])
    print(f"[reprokit] CPU-world study: {', '.join(study.worlds)}; {study.workers} runs at a time in {run_dir}")
    first = [_job("full", w) for w in study.worlds] + [_job("base", w) for w in study.worlds]
    if "control" in study.worlds:
        first += [_job("focal", "control"), _job("sft", "control", "full")]
    if "blindspot" in study.worlds:
        first += [_job("sft", "blindspot", "full"), _job("sft", "blindspot", "lora"), _job("grpo_same_compute", "blindspot")]
    with ProcessPoolExecutor(max_workers=study.workers, initializer=_worker_init) as pool:
        done = _run_all(pool, first, study, run_dir)
    findings = _findings(done, study)
    findings["seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "findings.json").write_text(json.dumps(findings, indent=2))
    _plot(findings, done, study, run_dir)
    table = _table(findings, study)
    (run_dir / "findings.md").write_text(table)
    print(table)
    print(f"[reprokit] study took {findings['seconds'] / 60:.1f} min: {run_dir / 'findings.json'}, findings.md, *.png")
    return findings


def _job(kind: str, world: str, setting: str = "", seed: int = 0, **extra) -> dict:
    return {"kind": kind, "world": world, "setting": setting, "seed": seed, **extra}


def _key(job: dict) -> tuple:
    return (job["kind"], job["world"], job["setting"], job["seed"])


def _one_shot_jobs(world: str, variance_example: str | None, study: Study) -> list[dict]:
    """A world's 1-shot runs: the variance-rule example (from its full-data run), random train examples drawn from
    the seed, and the ablations on the variance-rule example."""
    rng = random.Random(f"{study.seed}-{world}")
    random_ids = [f"train-{i:05d}" for i in rng.sample(range(study.full_problems), study.random_examples)]
    jobs = [_job("one_shot", world, "variance rule", seed, example=variance_example) for seed in study.seeds]
    for i, example in enumerate(random_ids):
        for seed in study.seeds if world == study.main_world else study.seeds[:1]:
            jobs.append(_job("one_shot", world, f"random example {i + 1}", seed, example=example))
    if world in study.ablation_worlds:
        names = list(ABLATIONS) + [n for n in OFF_POLICY_ABLATIONS if n in (study.one_shot_settings or ())]
        jobs += [_job("one_shot", world, name, seed, example=variance_example) for name in names for seed in study.seeds]
    if study.one_shot_settings is None:
        return jobs
    wanted = set(study.one_shot_settings)
    return [j for j in jobs if j["setting"] in wanted or (j["setting"].startswith("random example") and "random examples" in wanted)]


def _cost(job: dict, study: Study) -> float:
    """A job's rough cost in sampled responses (a trained response costs about two evaluation samples): the queue
    starts the longest ready job first, so that no long job runs alone at the end."""
    evals = study.eval_problems * study.eval_n
    curve_k = study.curve_k_problems * study.curve_k_n
    control_k = study.control_problems * study.control_n if job["world"] == "control" else 0

    def grpo(steps: int) -> float:  # rollouts, the curve points (before step 1 and every curve_every), the final eval
        batch = study.prompts_per_step * study.group_size
        return 2 * steps * batch + (steps // study.curve_every + 1) * study.curve_problems * study.curve_n + evals

    kind = job["kind"]
    if kind == "base":
        return evals + curve_k + control_k
    if kind == "one_shot":
        first_variance_run = job["setting"] == "variance rule" and job["seed"] == study.seeds[0]
        return grpo(study.one_shot_steps) + (curve_k if first_variance_run else 0)
    if kind in ("full", "focal"):
        return grpo(study.full_steps) + control_k
    if kind == "grpo_same_compute":
        return grpo(study.distill_traces // study.distill_batch)
    return 2 * study.distill_traces + evals  # sft


def _run_all(pool, jobs: list[dict], study: Study, run_dir: Path) -> dict:
    """Run ``jobs`` and the 1-shot runs that each world's full-data run makes ready, ``study.workers`` at a time,
    the longest ready job first. Returns every result by :func:`_key`."""
    ready = list(jobs)
    total = len(jobs) + sum(len(_one_shot_jobs(j["world"], None, study)) for j in jobs if j["kind"] == "full")
    running: dict = {}
    out = {}
    while ready or running:
        ready.sort(key=lambda j: _cost(j, study))
        while ready and len(running) < study.workers:
            job = ready.pop()
            running[pool.submit(run_job, job, vars(study), str(run_dir))] = job
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            job = running.pop(future)
            result = future.result()
            out[_key(job)] = result
            if job["kind"] == "full":
                ready += _one_shot_jobs(job["world"], result["variance_example"], study)
            label = " ".join(str(v) for v in (job["kind"], job["world"], job["setting"], f"seed {job['seed']}") if v)
            summary = f"pass@1 {result['eval']['pass@1']:.3f}" if "eval" in result else ""
            print(f"[reprokit] {len(out)}/{total} {label}: {summary} ({result['seconds']:.0f} s)", flush=True)
    return out


def _worker_init() -> None:
    """One thread per run, and no per-run notices: the study prints one line per finished run, and each run's own
    logs are in its folder. (Lightning's accelerator summary and its 'max_steps reached' would be 3 lines a run.)"""
    import logging
    import warnings

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------ one job, in a worker process
def run_job(job: dict, study_values: dict, run_dir: str) -> dict:
    """Train and evaluate one run; everything it returns is plain data (the parent builds the findings)."""
    study = Study(**study_values)
    world = WORLDS[job["world"]]
    registry.configure("world", world)  # the world's names (reward, mode) read it
    started = time.perf_counter()
    L.seed_everything(job["seed"], verbose=False)
    out_dir = Path(run_dir) / job["world"] / "_".join(str(v).replace(" ", "-") for v in (job["kind"], job["setting"], job["seed"]) if v != "")
    splits = make_splits(world)
    test = splits.test[: study.eval_problems]
    kind = job["kind"]
    result: dict = {"job": job}
    if kind == "base":
        model, tokenizer = _load(world, study, lora=False)
        result["eval"] = evaluate(model, tokenizer, world, test, study.eval_n, study)
        result["curve_k"] = evaluate(model, tokenizer, world, splits.test[: study.curve_k_problems], study.curve_k_n, study)
        if job["world"] == "control":
            result["pass_at_k"] = evaluate(model, tokenizer, world, splits.test[: study.control_problems], study.control_n, study)
        if world.blind_spots:
            result["blind"] = blind_spot_measure(model, tokenizer, world, study)
    elif kind in ("full", "focal"):
        overrides = dict(kl_coef=0.0, entropy_coef=0.0)
        if kind == "focal":
            overrides.update(epsilon_high=0.28, focal_fraction=0.2)
        model, tokenizer, curves = _grpo(world, study, out_dir, job["seed"], study.full_steps, None, **overrides)
        result.update(curves=curves, eval=evaluate(model, tokenizer, world, test, study.eval_n, study))
        if kind == "full":
            history = json.loads((out_dir / "example_accuracy.json").read_text())
            result["variance_example"] = rank_examples(history)[0].index
        if job["world"] == "control":
            result["pass_at_k"] = evaluate(model, tokenizer, world, splits.test[: study.control_problems], study.control_n, study)
    elif kind == "one_shot":
        overrides = dict(kl_coef=0.001, entropy_coef=0.001)
        overrides.update(ABLATIONS.get(job["setting"], OFF_POLICY_ABLATIONS.get(job["setting"], {})))
        model, tokenizer, curves = _grpo(world, study, out_dir, job["seed"], study.one_shot_steps, job["example"], **overrides)
        result.update(curves=curves, example=job["example"], eval=evaluate(model, tokenizer, world, test, study.eval_n, study))
        if job["setting"] == "variance rule" and job["seed"] == study.seeds[0]:
            result["curve_k"] = evaluate(model, tokenizer, world, splits.test[: study.curve_k_problems], study.curve_k_n, study)
    elif kind == "sft":
        model, tokenizer = _sft(world, study, out_dir, job["seed"], lora=job["setting"] == "lora")
        result["eval"] = evaluate(model, tokenizer, world, test, study.eval_n, study)
        if world.blind_spots:
            result["blind"] = blind_spot_measure(model, tokenizer, world, study)
    elif kind == "grpo_same_compute":
        steps = study.distill_traces // study.distill_batch
        model, tokenizer, curves = _grpo(world, study, out_dir, job["seed"], steps, None, kl_coef=0.0, entropy_coef=0.0)
        result.update(curves=curves, eval=evaluate(model, tokenizer, world, test, study.eval_n, study))
        result["blind"] = blind_spot_measure(model, tokenizer, world, study)
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    result["seconds"] = time.perf_counter() - started
    return result


def _load(world: WorldConfig, study: Study, *, lora: bool, full_finetune: bool = False):
    """The world's base: with LoRA adapters (the only trainable weights), or plain (every weight trainable when
    ``full_finetune``, else frozen)."""
    cfg = ModelConfig(
        name_or_path=str(pretrain_base(world)), quantization="none", lora_r=study.lora_r, lora_alpha=2 * study.lora_r,
        lora_dropout=0.0, gradient_checkpointing=False,
    )
    if lora:
        return load_policy(cfg)
    model, tokenizer = load_base_model(cfg)
    for p in model.parameters():
        p.requires_grad_(full_finetune)
    return model, tokenizer


def _grpo_config(world: WorldConfig, study: Study, **overrides) -> GRPOConfig:
    values = dict(
        group_size=study.group_size, temperature=study.temperature,
        max_new_tokens=max_response_chars(world.max_steps, world.modulus) + 8,
        micro_batch_size=study.prompts_per_step * study.group_size, lr=study.lr, weight_decay=0.0,
        reward="world", eval_reward="world", response_stats="reprokit.worlds.names:behaviours",
        log_completions_every=0,
    )
    values.update(overrides)
    return GRPOConfig.of(**values)


def _grpo(world, study: Study, out: Path, seed: int, steps: int, example: str | None, **overrides):
    """A GRPO run of ``steps`` updates: on one train example (copied to fill the batch) or on the first
    full_problems train problems; returns the trained model, its tokenizer and its curves."""
    model, tokenizer = _load(world, study, lora=True)
    cfg = _grpo_config(world, study, **overrides)
    if example is None:
        path = out / "train.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        rows = make_splits(world).train[: study.full_problems]
        path.write_text("".join(json.dumps({"id": p.id, "question": p.question, "answer": p.answer}) + "\n" for p in rows))
        data = MathDataModule(
            tokenizer, path=str(path), question_field="question", answer_field="answer", id_field="id",
            batch_size=study.prompts_per_step, prompt=WORLD_PROMPT, seed=seed,
        )
    else:
        data = OneShotDataModule(
            tokenizer, examples=f"world:{example}", batch_size=study.prompts_per_step, prompt=WORLD_PROMPT, seed=seed,
        )
    module = GRPOModule(model, tokenizer, cfg, run_dir=str(out), seed=seed)
    curves = Curves(world, study, make_splits(world).test[: study.curve_problems])
    run = RunConfig(
        run_dir=str(out), max_steps=steps, seed=seed, checkpoint_every=steps, accelerator="cpu", devices="1",
        progress_bar=False,
    )
    trainer = build_trainer(run, out, val_every=0, callbacks=[curves])
    trainer.fit(module, datamodule=data)
    model.eval()
    return model, tokenizer, curves.points


class Curves(L.Callback):
    """Train reward, rollout entropy and mode share every step; test pass@1, mode share, check rate and token
    entropy every curve_every steps (and before the first)."""

    def __init__(self, world: WorldConfig, study: Study, problems):
        self.world, self.study, self.problems = world, study, problems
        self.points: dict[str, list[tuple[int, float]]] = {}

    def _add(self, name: str, step: int, value: float) -> None:
        self.points.setdefault(name, []).append((step, float(value)))

    def _evaluate(self, pl_module, step: int) -> None:
        was = pl_module.model.training
        stats = evaluate(pl_module.model, pl_module.tokenizer, self.world, self.problems, self.study.curve_n, self.study, seed_key=step)
        pl_module.model.train(was)
        for name in ("pass@1", "mode", "checks", "entropy"):
            self._add(f"test {name}", step, stats[name])

    def on_train_start(self, trainer, pl_module):
        self._evaluate(pl_module, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step, metrics = trainer.global_step, pl_module.last_metrics
        self._add("train reward", step, metrics.get("reward/mean", math.nan))
        self._add("train entropy", step, metrics.get("entropy/mean", math.nan))
        self._add("train clip", step, metrics.get("clip/frac", math.nan))
        if step % self.study.curve_every == 0 and metrics.get("update/skipped") == 0.0:
            self._evaluate(pl_module, step)


@torch.no_grad()
def evaluate(model, tokenizer, world: WorldConfig, problems, n: int, study: Study, seed_key: int = -1) -> dict:
    """pass@1 … pass@n with per-problem values, the mode share, the check rate and token entropy of ``n``
    responses per problem (seeded: the same problems and seed give the same draw)."""
    was = model.training
    model.eval()
    max_new = max_response_chars(max(p.steps for p in problems), world.modulus) + 8
    prompts = [render_prompt(p.question) for p in problems]
    correct, modes, checks, entropies = [], [], [], []
    per_call = max(1, 512 // n)
    for begin in range(0, len(prompts), per_call):
        chunk = problems[begin : begin + per_call]
        enc = tokenizer(prompts[begin : begin + per_call], return_tensors="pt", padding=True, add_special_tokens=False)
        graded = sample_and_grade(
            model, tokenizer, enc.input_ids, enc.attention_mask, [p.answer for p in chunk], [{}] * len(chunk), n=n,
            reward_fn=task_reward, max_new_tokens=max_new, temperature=study.temperature,
            eos_ids=eos_token_ids(tokenizer, model), generator=seeded_generator("cpu", study.seed, "evaluate", seed_key, begin),
        )
        comps = graded.comps
        correct += graded.correct()
        stats = behaviours(comps.texts)
        modes += stats.get("mode", [0.0] * len(comps.texts))  # 0 in a world without the behaviour
        checks += stats.get("checks", [0.0] * len(comps.texts))
        sequences = torch.cat([comps.prompt_ids, comps.response_ids], 1)
        attention = torch.cat([comps.prompt_mask, comps.response_mask], 1)
        _, entropy = response_logprobs(
            model, sequences, attention, comps.response_ids, first=comps.prompt_ids.shape[1] - 1,
            temperature=study.temperature,
        )
        valid = comps.response_mask.bool()
        entropies.append(entropy[valid])
    model.train(was)
    out = {f"pass@{k}": v for k, v in mean_pass_at_k(n, correct, powers_of_two(n)).items()}
    out.update(
        n=n, correct=correct, ids=[p.id for p in problems], mode=float(np.mean(modes)), checks=float(np.mean(checks)),
        entropy=float(torch.cat(entropies).mean()) if entropies else 0.0,
    )
    return out


def blind_spot_measure(model, tokenizer, world: WorldConfig, study: Study) -> dict:
    """The probability the model gives the right result at the blind-spot steps of the teacher's solutions of the
    test problems (teacher forcing), and which test problems contain a blind-spot fact."""
    blind = blind_spot_facts(world)
    probs, blind_ids = [], []
    was = model.training
    model.eval()
    for p in make_splits(world).test[: study.eval_problems]:
        start, ops = parse_question(p.question)
        text = render_prompt(p.question) + write_solution(p, "teacher", world)
        value, cursor, positions = start, 0, []
        for op, x in ops:  # the teacher writes every step as "a<op>b=c", in order, all right
            eq = text.index("=", cursor)
            if (value, op, x) in blind:
                positions.append(eq)  # the character tokenizer has one token per character: "=" predicts c
            value, cursor = int(text[eq + 1]), eq + 1
        if positions:
            blind_ids.append(p.id)
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids  # [1, L]
            with torch.no_grad():
                logp, _ = response_logprobs(model, ids, torch.ones_like(ids), ids[:, 1:], first=0, with_entropy=False)
            probs += [float(logp[0, pos].exp()) for pos in positions]
    model.train(was)
    return {"p_right": float(np.mean(probs)) if probs else math.nan, "steps": len(probs), "problems": blind_ids}


def _sft(world: WorldConfig, study: Study, out: Path, seed: int, *, lora: bool):
    """SFT on fresh teacher traces: problems drawn from the task, none of them in a split, each seen once."""
    rng = random.Random(f"distill-{seed}")
    held_out = {p.question for _, ps in make_splits(world).items() for p in ps}
    style = "teacher" if world.blind_spots else "teacher_alt"
    pairs = []
    while len(pairs) < study.distill_traces:
        start, ops = sample_chain(rng, rng.randint(world.min_steps, world.max_steps), world)
        problem = make_problem("", start, ops, world)
        if problem.question not in held_out:
            pairs.append((render_prompt(problem.question), write_solution(problem, style, world, rng)))
    model, tokenizer = _load(world, study, lora=lora, full_finetune=not lora)
    model.train()
    data = SFTDataModule(pairs, tokenizer, batch_size=study.distill_batch, max_length=512, seed=seed)
    module = CausalLMModule(model, lr=study.distill_lr, warmup_steps=10, lr_schedule="constant")
    steps = study.distill_traces // study.distill_batch
    run = RunConfig(run_dir=str(out), max_steps=steps, checkpoint_every=steps, accelerator="cpu", devices="1", progress_bar=False)
    trainer = build_trainer(run, out, val_every=0)
    trainer.fit(module, datamodule=data)
    model.eval()
    return model, tokenizer


# ------------------------------------------------------------------ findings
def _interval(values, study: Study, paired=None) -> list[float]:
    return [round(v, 4) for v in bootstrap_interval(values, paired, resamples=study.bootstrap, seed=study.seed)]


def _accuracy(result: dict) -> list[float]:
    return [c / result["eval"]["n"] for c in result["eval"]["correct"]]


def _findings(done: dict, study: Study) -> dict:
    findings: dict = {"worlds": {}, "study": dict(vars(study))}
    for world in study.worlds:
        base = done[("base", world, "", 0)]
        base_acc = _accuracy(base)
        w: dict = {"base": _summary(base, study), "settings": {}}
        full = done[("full", world, "", 0)]
        w["full-data GRPO"] = _summary(full, study, base_acc)
        w["variance example"] = full["variance_example"]
        settings: dict[str, list[dict]] = {}
        for key, result in done.items():
            if key[0] == "one_shot" and key[1] == world:
                label = "random examples" if key[2].startswith("random example") else key[2]
                settings.setdefault(label, []).append(result)
        for label, results in settings.items():
            # One model per run; the setting's pass@1 is the mean over its runs of the per-problem accuracy.
            mean_acc = np.mean([_accuracy(r) for r in results], axis=0)
            w["settings"][label] = {
                "runs": len(results),
                "pass@1": _interval(mean_acc, study),
                "change": _interval(mean_acc, study, base_acc),
                "per run": [round(r["eval"]["pass@1"], 4) for r in results],
                "mode": round(float(np.mean([r["eval"]["mode"] for r in results])), 4),
                "checks": round(float(np.mean([r["eval"]["checks"] for r in results])), 4),
                "entropy": round(float(np.mean([r["eval"]["entropy"] for r in results])), 4),
                "examples": sorted({r["example"] for r in results}),
                "saturated at": _saturation(results),
                "train clip/frac": round(float(np.nanmean([v for r in results for _, v in r["curves"].get("train clip", [])] or [math.nan])), 5),
            }
        first = done.get(("one_shot", world, "variance rule", study.seeds[0]))
        w["pass@k curve"] = {"base": _pass_at_k_interval(base["curve_k"], study)}
        if first is not None and "curve_k" in first:
            w["pass@k curve"]["1-shot (variance rule, first seed)"] = _pass_at_k_interval(first["curve_k"], study)
        if world == "control":
            w["pass@k"] = {
                name: _pass_at_k_interval(done[key]["pass_at_k"], study)
                for name, key in (("base", ("base", world, "", 0)), ("full-data GRPO", ("full", world, "", 0)), ("focal tokens", ("focal", world, "", 0)))
            }
            w["focal tokens"] = _summary(done[("focal", world, "", 0)], study, base_acc)
        for key, result in done.items():
            if key[1] == world and key[0] in ("sft", "grpo_same_compute"):
                label = f"SFT ({key[2]} fine-tuning)" if key[0] == "sft" else "GRPO, same steps"
                w[label] = _summary(result, study, base_acc)
        if "blind" in base:
            w["blind spots"] = _blind(done, world, study)
        findings["worlds"][world] = w
    return findings


def _summary(result: dict, study: Study, base_acc: list[float] | None = None) -> dict:
    acc = _accuracy(result)
    out = {k: round(v, 4) for k, v in result["eval"].items() if k.startswith("pass@")}
    out["pass@1"] = _interval(acc, study)
    out.update(mode=round(result["eval"]["mode"], 4), checks=round(result["eval"]["checks"], 4), entropy=round(result["eval"]["entropy"], 4))
    if base_acc is not None:
        out["change"] = _interval(acc, study, base_acc)
    return out


def _pass_at_k_interval(ev: dict, study: Study) -> dict:
    n = ev["n"]
    return {str(k): _interval([pass_at_k(n, c, k) for c in ev["correct"]], study) for k in powers_of_two(n)}


def _saturation(results: list[dict]) -> float | None:
    """The mean first step at which a run's train reward reached 0.9 (None if none did)."""
    steps = []
    for r in results:
        hit = [s for s, v in r["curves"].get("train reward", []) if v >= 0.9]
        if hit:
            steps.append(min(hit))
    return round(float(np.mean(steps)), 1) if steps else None


def _blind(done: dict, world: str, study: Study) -> dict:
    base = done[("base", world, "", 0)]
    ids = set(base["blind"]["problems"])
    out = {"problems with a blind-spot fact": len(ids), "steps": base["blind"]["steps"]}
    for label, key in (("base", ("base", world, "", 0)), ("SFT (full fine-tuning)", ("sft", world, "full", 0)),
                       ("SFT (lora fine-tuning)", ("sft", world, "lora", 0)), ("GRPO, same steps", ("grpo_same_compute", world, "", 0))):
        if key not in done:
            continue
        result = done[key]
        ev = result["eval"]
        acc = [c / ev["n"] for c, pid in zip(ev["correct"], ev["ids"]) if pid in ids]
        solved = [float(c > 0) for c, pid in zip(ev["correct"], ev["ids"]) if pid in ids]
        out[label] = {
            "p_right": round(result["blind"]["p_right"], 4) if "blind" in result else None,
            "pass@1 on blind problems": _interval(acc, study) if acc else None,
            f"pass@{ev['n']} on blind problems": _interval(solved, study) if solved else None,
        }
    return out


# ------------------------------------------------------------------ report
def _plot(findings: dict, done: dict, study: Study, run_dir: Path) -> None:
    for world in study.worlds:
        panels: dict[str, dict] = {}
        for key, result in done.items():
            if key[1] != world or "curves" not in result or key[0] not in ("one_shot",):
                continue
            label = f"{key[2]} #{key[3]}"
            if key[2].startswith("random example"):
                label = f"random examples #{key[2].split()[-1]}.{key[3]}"
            quantities = ["train reward", "test pass@1"]
            if WORLDS[world].careful_marker:
                quantities.append("test mode")
            if WORLDS[world].check_fraction:
                quantities.append("test checks")
            for quantity in quantities + ["train entropy"]:
                panels.setdefault(quantity, {})[label] = result["curves"].get(quantity, [])
        if panels:
            plots.step_curves(panels, run_dir / f"curves_{world}.png", title=f"1-shot GRPO in the {world} world")
    gains = {
        world: {label: tuple(s["change"]) for label, s in w["settings"].items()}
        for world, w in findings["worlds"].items() if w["settings"]
    }
    if gains:
        plots.interval_bars(gains, run_dir / "one_shot_gain.png", ylabel="test pass@1 change from the base (95% CI)")
    curves = {world: w["pass@k curve"] for world, w in findings["worlds"].items()}
    plots.pass_at_k_curves(
        {world: {m: {k: v[0] for k, v in c.items()} for m, c in by_model.items()} for world, by_model in curves.items()},
        run_dir / "pass_at_k_worlds.png",
        bands={world: {m: {k: (v[1], v[2]) for k, v in c.items()} for m, c in by_model.items()} for world, by_model in curves.items()},
        subtitles={world: f"{study.curve_k_problems} problems, n = {study.curve_k_n}" for world in curves},
    )
    control = findings["worlds"].get("control", {}).get("pass@k")
    if control:
        plots.pass_at_k_curves(
            {"control world": {m: {k: v[0] for k, v in c.items()} for m, c in control.items()}},
            run_dir / "pass_at_k.png",
            bands={"control world": {m: {k: (v[1], v[2]) for k, v in c.items()} for m, c in control.items()}},
            subtitles={"control world": f"{study.control_problems} test problems, n = {study.control_n}"},
        )


def _fmt(iv) -> str:
    return f"{iv[0]:.3f} [{iv[1]:.3f}, {iv[2]:.3f}]" if iv else "—"


def _table(findings: dict, study: Study) -> str:
    lines = [
        "| world | model | runs | test pass@1 [95% CI] | change from base [95% CI] | mode share | checks / step | entropy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for world, w in findings["worlds"].items():
        rows = [("base", 1, w["base"]), ("full-data GRPO", 1, w["full-data GRPO"])]
        for label in ("focal tokens", "SFT (full fine-tuning)", "SFT (lora fine-tuning)", "GRPO, same steps"):
            if label in w:
                rows.append((label, 1, w[label]))
        for label, s in w["settings"].items():
            rows.append((f"1-shot: {label}", s["runs"], s))
        for label, runs, s in rows:
            lines.append(
                f"| {world} | {label} | {runs} | {_fmt(s['pass@1'])} | {_fmt(s.get('change'))} | {s['mode']:.3f} | "
                f"{s['checks']:.3f} | {s['entropy']:.3f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
