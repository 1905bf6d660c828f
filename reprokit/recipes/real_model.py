"""The first finding on real weights: 1-shot RLVR, pass@k and forking tokens with Gemma-3-270M on 2 CPU cores.

What it runs (settings and predictions in docs/real_model.md, committed before the study's runs), every GRPO run
through the real entry points (`one_shot`, and `focal_tokens` with every token kept for the full-data run) with
the `gemma-270m-cpu` preset, two runs at a time on one CPU thread each:
- the base: test pass@1 (every test problem, `eval_n` samples at the rollout temperature), pass@k up to `k_n`,
  the token entropy of its test responses and the share of responses with a `\\boxed{}` (the format);
- full-data GRPO on the first `full_problems` train problems, `steps` steps: the variance rule's history and
  the full-data comparison;
- 1-shot GRPO, `steps` steps, on the variance rule's example (every seed) and on random train examples;
- for each trained model the same test pass@1 with a paired 95% bootstrap interval against the base, the format
  share and the entropy; for the first variance-rule run also pass@k and the top-20% entropy positions of the
  base's test responses under both models (their overlap, as the 80/20 paper measures it).

Where it departs from the papers: a 270 M base instead of 1.5 B; arithmetic word problems instead of MATH; LoRA
r 16 on a full-precision base; 20 steps of 4 prompts x 8 responses; responses cut at 32 tokens (the answer takes
about 21; the base goes on with questions of its own, so the reward reads the first box).

Outputs in --run_dir: findings.json, findings.md, pass_at_k.png, entropy.png, and each run's folder.
`--quick` (the `quick` preset) is the CI-sized smoke run: one step on 2 problems. Each job's result is saved in
results/ as it ends, so a study stopped midway and run again redoes only the jobs that had not finished.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

import torch
import yaml

from reprokit import plots
from reprokit.algorithms import response_logprobs
from reprokit.cli import PRESETS_DIR, Recipe, parse, preset_values
from reprokit.domains import word_problems as domain
from reprokit.evaluation import load_model_spec
from reprokit.metrics.functional import bootstrap_interval, entropy_stats, high_entropy_overlap, mean_pass_at_k, powers_of_two
from reprokit.policy import eos_token_ids
from reprokit.recipes.select_examples import rank_examples
from reprokit.sampling import sample_and_grade, seeded_generator


@dataclass
class RealStudy:
    """The study's runs and evaluation budget (docs/real_model.md fixed them before the runs)."""

    run_dir: str = "runs/real_model"
    """findings.json, findings.md, the figures and every run's folder."""
    one_shot_preset: str = "gemma-270m-cpu"
    """The one_shot preset every GRPO run starts from (model, LoRA, GRPO settings, prompt)."""
    steps: int = 20
    """GRPO steps of every run."""
    full_problems: int = 40
    """Train problems of the full-data run (the first N)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of the variance-rule 1-shot runs."""
    random_examples: int = 2
    """Random train examples (seed 0 each)."""
    eval_problems: int | None = None
    """Test problems of pass@1 (None = all 240)."""
    eval_n: int = 2
    """Samples per test problem for pass@1."""
    k_problems: int = 40
    """Test problems of the pass@k curves."""
    k_n: int = 32
    """Samples per problem of the pass@k curves: pass@1 ... pass@k_n."""
    workers: int = 2
    """Runs at once, each on one CPU thread."""
    seed: int = 0
    """Seed of the random examples and of every evaluation's sampling."""


RECIPE = Recipe(
    name="real_model", description=__doc__.split("\n\n")[0], sections={"study": RealStudy}, run_dir_key="study.run_dir",
    aliases={"--quick": ["--preset", "quick"]}, registry_sections=False,
)


def main(argv: list[str] | None = None) -> dict:
    parsed = parse(RECIPE, argv)
    parsed.print_notes()
    study: RealStudy = parsed.section("study")
    run_dir = Path(study.run_dir)
    parsed.save(run_dir)
    started = time.perf_counter()
    rng = random.Random(f"{study.seed}-random-examples")
    randoms = [f"train-{i:05d}" for i in rng.sample(range(study.full_problems, len(domain.make_problems()["train"])), study.random_examples)]
    print(f"[reprokit] Gemma-3-270M study in {run_dir}: {study.workers} runs at a time, {study.steps} steps each")
    ready = [{"kind": "base"}, {"kind": "full"}]
    results: dict[str, dict] = {}
    with ProcessPoolExecutor(max_workers=study.workers, initializer=_one_thread) as pool:
        running: dict = {}
        while ready or running:
            while ready and len(running) < study.workers:
                job = ready.pop(0)
                running[pool.submit(run_job, job, asdict(study), str(run_dir))] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                result = future.result()
                results[result["name"]] = result
                print(f"[reprokit] {result['name']}: pass@1 {result['pass@1'][0]:.3f} ({result['seconds']:.0f} s)", flush=True)
                if job["kind"] == "full":
                    pick = result["variance example"]
                    ready += [{"kind": "one_shot", "example": pick, "seed": s, "setting": "variance rule", "first": s == study.seeds[0]} for s in study.seeds]
                    ready += [{"kind": "one_shot", "example": e, "seed": 0, "setting": f"random example {i + 1}"} for i, e in enumerate(randoms)]
    findings = _findings(results, study)
    findings["seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "findings.json").write_text(json.dumps(findings, indent=2) + "\n")
    table = _table(findings)
    (run_dir / "findings.md").write_text(table)
    _figures(results, study, run_dir)
    print(table)
    print(f"[reprokit] study took {findings['seconds'] / 60:.1f} min: {run_dir / 'findings.md'}, pass_at_k.png, entropy.png")
    return findings


def _one_thread() -> None:
    import logging
    import warnings

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.fabric.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------ one job, in a worker process
def run_job(job: dict, values: dict, run_dir: str) -> dict:
    """One job's result, saved as it ends: a study run again into the same folder redoes only unfinished jobs."""
    saved = Path(run_dir) / "results" / f"{_job_name(job)}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    result = _run_job(job, RealStudy(**values), Path(run_dir))
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result))
    return result


def _job_name(job: dict) -> str:
    return job["kind"] if job["kind"] != "one_shot" else f"one_shot-{job['example']}-seed{job['seed']}"


def _run_job(job: dict, study: RealStudy, run_dir: Path) -> dict:
    started = time.perf_counter()
    kind = job["kind"]
    if kind == "base":
        name, spec = "base", BASE
    else:
        name = "full-data GRPO" if kind == "full" else f"1-shot {job['setting']}, seed {job['seed']}"
        spec = str(_train(job, study, run_dir))
    model, tokenizer = load_model_spec(spec, device="cpu")
    test = domain.benchmark("word_problems", study.eval_problems)
    evaluated = _evaluate(model, tokenizer, test, study.eval_n, study, entropy=True)
    result = {"name": name, "job": job, **{k: v for k, v in evaluated.items() if k != "responses"}}
    if kind == "full":
        history = json.loads((Path(spec) / "example_accuracy.json").read_text())
        result["variance example"] = rank_examples(history)[0].index
    if kind == "base" or job.get("first"):
        result["pass@k"] = _evaluate(model, tokenizer, test[: study.k_problems], study.k_n, study, entropy=False)["pass@k"]
    if job.get("first"):
        # The 80/20 paper's overlap: this model's test responses, each token's entropy under it and under the base.
        base, _ = load_model_spec(BASE, device="cpu")
        mine = torch.cat([_entropies(model, c, study)[0].flatten() for c in evaluated["responses"]])
        theirs = torch.cat([_entropies(base, c, study)[0].flatten() for c in evaluated["responses"]])
        valid = ~mine.isnan()
        result["top-20% overlap with the base"] = float(high_entropy_overlap(mine, theirs, valid, rho=0.2))
        result["entropy under the base"] = _entropy_summary(theirs[valid])
    result["seconds"] = time.perf_counter() - started
    return result


BASE = "gemma-3-270m"


def _train(job: dict, study: RealStudy, run_dir: Path) -> Path:
    """One GRPO run through the real entry point, from the study's preset; returns its run folder. A finished run is
    kept, one stopped after a checkpoint resumes from it, one stopped before its first starts again."""
    from reprokit.recipes import focal_tokens, one_shot

    recipe = one_shot if job["kind"] == "one_shot" else focal_tokens
    out = run_dir / (_job_name(job) if job["kind"] == "one_shot" else "full-data")
    common = ["--max_steps", str(study.steps), "--run.progress_bar", "false"]
    if (out / "checkpoints" / f"step-{study.steps}.ckpt").is_file():
        return out  # finished
    if (out / "checkpoints" / "last.ckpt").is_file():
        recipe.run(["--run_dir", str(out), "--resume", *common])
        return out
    shutil.rmtree(out, ignore_errors=True)
    common += ["--eval.benchmarks", "[]", "--run_dir", str(out)]
    if job["kind"] == "one_shot":
        one_shot.run(["--preset", study.one_shot_preset, "--data.examples", f"word_problems:{job['example']}",
                      "--run.seed", str(job["seed"]), *common])
        return out
    preset = _preset(study)
    data = preset.pop("data")
    train = run_dir / "full-data-train.jsonl"  # the first full_problems train problems, as a data file
    problems = domain.make_problems()["train"][: study.full_problems]
    train.write_text("".join(json.dumps({"id": p.id, "question": p.question, "answer": str(p.answer)}) + "\n" for p in problems))
    preset["data"] = {k: v for k, v in data.items() if k not in ("examples", "label")} | {
        "path": str(train), "question_field": "question", "answer_field": "answer", "id_field": "id",
    }
    config = run_dir / "full-data.yaml"
    config.write_text(yaml.safe_dump(preset))
    focal_tokens.run(["--config", str(config), "--run.seed", "0", *common])
    return out


def _setting(study: RealStudy, key: str):
    """One setting of the study's preset as the one_shot recipe resolves it (its default where the preset is silent)."""
    return _preset_settings(study.one_shot_preset)[key]


@cache
def _preset_settings(preset: str) -> dict:
    """Every setting of a one_shot preset, parsed once per process (the evaluation asks for some per chunk)."""
    from reprokit.recipes import one_shot

    return preset_values(one_shot.RECIPE, preset)


def _preset(study: RealStudy) -> dict:
    return yaml.safe_load((PRESETS_DIR / "one_shot" / f"{study.one_shot_preset}.yaml").read_text())


@torch.no_grad()
def _evaluate(model, tokenizer, problems, n: int, study: RealStudy, *, entropy: bool) -> dict:
    """``n`` samples per problem at the rollout temperature: pass@1 with each problem's accuracy, pass@1 ... pass@n
    (each with its interval), the format share (responses with a \\boxed{}) and, with ``entropy``, the token
    entropy of the responses (a forward pass over them all)."""
    model.eval()
    prompts = [domain.TEMPLATE.replace("{question}", ex.question) for ex in problems]
    max_new = _setting(study, "rollout.max_new_tokens")
    per_call = max(1, 64 // n)
    correct, boxed, responses = [], [], []
    for begin in range(0, len(prompts), per_call):
        chunk = problems[begin : begin + per_call]
        enc = tokenizer(prompts[begin : begin + per_call], return_tensors="pt", padding=True)
        graded = sample_and_grade(
            model, tokenizer, enc.input_ids, enc.attention_mask, [ex.answer for ex in chunk], [ex.fields for ex in chunk],
            n=n, reward_fn=domain.reward, max_new_tokens=max_new, temperature=_temperature(study),
            eos_ids=eos_token_ids(tokenizer, model), generator=seeded_generator("cpu", study.seed, "evaluate", n, begin),
        )
        correct += graded.correct()
        boxed += ["\\boxed{" in t for t in graded.comps.texts]
        responses.append(graded.comps)
    accuracy = [c / n for c in correct]
    out = {
        "pass@1": bootstrap_interval(accuracy, seed=study.seed), "accuracy": accuracy,
        "pass@k": {str(k): bootstrap_interval([_pass(n, c, k) for c in correct], seed=study.seed) for k in powers_of_two(n)},
        "format share": sum(boxed) / len(boxed), "responses": responses,
    }
    if entropy:
        values = torch.cat([e[~e.isnan()] for e, _ in (_entropies(model, c, study) for c in responses)])
        out.update({"entropy": _entropy_summary(values), "entropy values": values.tolist()})
    return out


def _temperature(study: RealStudy) -> float:
    return float(_setting(study, "rollout.temperature"))


def _pass(n: int, c: int, k: int) -> float:
    return mean_pass_at_k(n, [c], [k])[k]


def _entropies(model, comps, study: RealStudy) -> tuple[torch.Tensor, torch.Tensor]:
    """Each response token's entropy at the rollout temperature under ``model`` (NaN past a response's end)."""
    sequences = torch.cat([comps.prompt_ids, comps.response_ids], 1)
    attention = torch.cat([comps.prompt_mask, comps.response_mask], 1)
    _, entropy = response_logprobs(
        model, sequences, attention, comps.response_ids, first=comps.prompt_ids.shape[1] - 1,
        temperature=_temperature(study), chunk_size=_setting(study, "train.logprob_chunk_size"),
    )
    mask = comps.response_mask.bool()
    return torch.where(mask, entropy.float(), torch.nan), mask


def _entropy_summary(values: torch.Tensor) -> dict:
    stats = entropy_stats(values, qs=(0.5, 0.8))
    return {"tokens": int(values.numel()), "mean": float(stats["mean"]), "share below 0.01": float(stats["frac_low"]),
            "p50": float(stats["p50"]), "p80": float(stats["p80"])}


# ------------------------------------------------------------------ findings
def _findings(results: dict, study: RealStudy) -> dict:
    base = results["base"]
    out = {"study": asdict(study), "base": _summary(base, None), "models": {}}
    for name, result in results.items():
        if name != "base":
            out["models"][name] = _summary(result, base)
    settings: dict[str, list[dict]] = {}
    for name, result in results.items():
        if result["job"]["kind"] == "one_shot":
            settings.setdefault("1-shot " + result["job"]["setting"].rstrip("0123456789 ").replace("random example", "random examples"), []).append(result)
    for label, group in settings.items():
        mean_acc = [sum(r["accuracy"][i] for r in group) / len(group) for i in range(len(base["accuracy"]))]
        out["models"][f"{label} (mean of {len(group)})"] = {
            "runs": len(group), "pass@1": bootstrap_interval(mean_acc, seed=study.seed),
            "change": bootstrap_interval(mean_acc, base["accuracy"], seed=study.seed),
            "format share": sum(r["format share"] for r in group) / len(group),
        }
    out["variance example"] = results["full-data GRPO"]["variance example"]
    out["pass@k"] = {name: r["pass@k"] for name, r in results.items() if r["job"]["kind"] == "base" or r["job"].get("first")}
    for name, r in results.items():
        if "top-20% overlap with the base" in r:
            out["entropy overlap"] = {"model": name, "top-20% overlap": r["top-20% overlap with the base"],
                                      "entropy under the model": r["entropy"], "entropy under the base": r["entropy under the base"]}
    return out


def _summary(result: dict, base: dict | None) -> dict:
    out = {"pass@1": result["pass@1"], "format share": result["format share"], "entropy": result["entropy"]}
    if base is not None:
        out["change"] = bootstrap_interval(result["accuracy"], base["accuracy"])
    return out


def _fmt(iv) -> str:
    return f"{iv[0]:.3f} [{iv[1]:.3f}, {iv[2]:.3f}]"


def _table(findings: dict) -> str:
    lines = ["| model | test pass@1 [95% CI] | change from base [95% CI] | format share |", "|---|---|---|---|"]
    lines.append(f"| base | {_fmt(findings['base']['pass@1'])} | — | {findings['base']['format share']:.3f} |")
    for name, s in findings["models"].items():
        lines.append(f"| {name} | {_fmt(s['pass@1'])} | {_fmt(s['change'])} | {s['format share']:.3f} |")
    return "\n".join(lines) + "\n"


def _figures(results: dict, study: RealStudy, run_dir: Path) -> None:
    import numpy as np

    curves = {name: r["pass@k"] for name, r in results.items() if r["job"]["kind"] == "base" or r["job"].get("first")}
    plots.pass_at_k_curves(
        {"Gemma-3-270M": {m: {int(k): v[0] for k, v in c.items()} for m, c in curves.items()}}, run_dir / "pass_at_k.png",
        bands={"Gemma-3-270M": {m: {int(k): (v[1], v[2]) for k, v in c.items()} for m, c in curves.items()}},
        subtitles={"Gemma-3-270M": f"{study.k_problems} test problems, n = {study.k_n}"},
    )

    fig_values = {name: np.asarray(r["entropy values"]) for name, r in results.items()
                  if r["job"]["kind"] == "base" or r["job"].get("first")}
    plots.entropy_comparison(fig_values, run_dir / "entropy.png")


if __name__ == "__main__":
    main()