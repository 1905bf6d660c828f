"""Pass@k of base and RL models (Yue et al. 2025, arXiv 2504.13837): does RL reach beyond the base model?

What it reproduces: each named model samples n responses per benchmark problem at T = 0.6, top-p = 0.95 with
the prompt used in RL training; responses are graded by the verifiable reward; the unbiased estimator
pass@k = 1 - C(n-c, k) / C(n, k) is averaged over problems for k = 1, 2, 4, ..., n. The paper finds that
the RL model wins at small k and the base model catches up around k = 64-256 and then passes it. Around the
curves: per-problem accuracy histograms (RL moves mass to 1 and also to 0), the solved-set overlap at k = n
(problems the RL model solves are almost all solved by the base too), and the perplexity under the base model
of each model's responses, PPL_base(Y) = exp(-mean_t log p_base(y_t | x, y_<t)) (RL responses lie in the
low part of the base's own range).

    python -m reprokit.recipes.pass_at_k --models base=Qwen/Qwen2.5-Math-1.5B rl=runs/x/checkpoints/step-500 \\
        --benchmarks math500 aime24 --n 256 --run_dir runs/pass_at_k/qwen

Where it departs from the paper:
- One n for every benchmark (default 256); the paper takes 128 for MATH500 / Minerva / GSM8K and 1024 for
  AIME24 / AMC23. Run AIME with `--n 1024` into its own run folder to match.
- LoRA checkpoints are evaluated on their base as trained (4-bit NF4 for the GPU presets); `--quantization none`
  loads the base in full precision instead.
- Perplexity is measured on at most `--ppl_samples` responses per problem and model (sample indices 0, 1, ...),
  re-tokenized with the base model's tokenizer, at temperature 1; empty responses are left out.
- A response counts as correct when its reward is >= 1 (the kit's math reward is 0 or 1).

Outputs in --run_dir: samples.jsonl (every response, appended as produced), pass_at_k.json / .csv / .png,
accuracy_histogram.json / .png, overlap.json / .csv / .png, perplexity.json / .png, perplexity_samples.jsonl
(the per-response cache), sampling.json (settings the samples were drawn with), summary.json and config.yaml.
Run the same command again to resume a killed run: only responses missing from samples.jsonl are generated.
`--regrade` grades every saved response again with the current --reward, without sampling.

CPU world: its base is a local model folder and its prompt is the bare question plus a newline, so set, in a
YAML file passed with --config, `data: {path: <world folder>/test.jsonl, id_field: id, template: "{question}\\n",
cot_suffix: false}` and `sampling: {reward: "world"}`.
"""

from __future__ import annotations

import csv
import json
import statistics
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from reprokit.cli import Recipe, gpu_preset, parse
from reprokit.data import DataError, Example, Prompt, load_benchmark, read_examples
from reprokit.evaluation import (
    Sample,
    correctness_by_problem,
    free_memory,
    load_model_spec,
    parse_models,
    read_jsonl_lines,
    read_samples,
    regrade_samples,
    render_prompts,
    response_perplexity,
    sample_to_jsonl,
)
from reprokit.metrics.functional import accuracy_histogram, pass_at_k_per_problem, powers_of_two, solved_set_overlap
from reprokit.plots import accuracy_histograms, bar_chart, box_plots, pass_at_k_curves
from reprokit.rewards import get_reward


@dataclass
class EvalRun:
    """Where the evaluation lives and what it does."""

    run_dir: str = "runs/pass_at_k"
    """Run directory: samples.jsonl, the tables and figures, config.yaml. Rerunning into it resumes."""
    seed: int = 0
    """Sampling seed; each batch's seed is derived from it and the batch's model, problems and sample indices."""
    device: str = "auto"
    """Where models run: auto (the current CUDA device if any, else CPU), cpu, cuda, cuda:1."""
    regrade: bool = False
    """Grade every response in samples.jsonl again with sampling.reward (no sampling), then redo the analyses."""
    progress_bar: bool = True
    """Show progress bars (problems done, samples/s, ETA)."""


@dataclass
class EvalModels:
    """The models to compare."""

    models: list[str] = field(default_factory=lambda: ["base=Qwen/Qwen2.5-Math-1.5B"])
    """NAME=SPEC pairs: SPEC is a Hub id, a model folder, a peft adapter folder, a training checkpoint
    (runs/x/checkpoints/step-500[.ckpt]), a run folder (its last.ckpt) or tiny. The first is the base unless
    base_model says otherwise. On the command line: --models base=Qwen/Qwen2.5-Math-1.5B rl=runs/x."""
    base_model: str | None = None
    """Name of the reference model for the overlap table and the perplexity scorer (default: the first)."""
    quantization: Literal["auto", "none", "nf4"] = "auto"
    """Base weights: auto (checkpoints as trained, other models full precision), none, or nf4 (4-bit)."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """auto = bfloat16 on a CUDA device that supports it, else float32."""


@dataclass
class EvalData:
    """The problems."""

    benchmarks: list[str] = field(default_factory=lambda: ["math500"])
    """Benchmark names (math500, aime24, aime25, amc23, minerva_math, olympiadbench); [] with data.path alone."""
    path: str | None = None
    """A data file of your own (JSONL, JSON, CSV, parquet) evaluated as one more benchmark."""
    name: str | None = None
    """Benchmark name of data.path (default: the file name without extension)."""
    question_field: str = "auto"
    """Question field of data.path (auto: question, problem, prompt, ...)."""
    answer_field: str = "auto"
    """Answer field of data.path (auto: answer, final_answer, ground_truth, ...)."""
    id_field: str | None = None
    """Id field of data.path (default: the row number)."""
    data_dir: str | None = None
    """Folder laid out like shared/data (else $REPROKIT_DATA_DIR, else the Hugging Face Hub)."""
    limit: int | None = None
    """Problems per benchmark (None = all)."""

    def __post_init__(self):
        if not self.benchmarks and not self.path:
            raise ValueError("data.benchmarks is empty and data.path is unset: name a benchmark or a data file")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit={self.limit}: give a positive number of problems, or null for all")


@dataclass
class Sampling:
    """How responses are sampled, graded and scored."""

    n: int = 256
    """Responses per problem and model; pass@k is reported for k = 1, 2, 4, ..., n."""
    temperature: float = 0.6
    """Sampling temperature (the paper's 0.6); 0 = greedy."""
    top_p: float = 0.95
    """Nucleus sampling mass (the paper's 0.95)."""
    max_new_tokens: int = 3072
    """Longest response in tokens; longer ones are cut and marked truncated."""
    batch_problems: int = 1
    """Problems per generate call (each with its n responses); raise it when n is small."""
    max_batch_sequences: int = 256
    """Most sequences one generate call decodes (bounds memory); a problem's n responses are split to fit."""
    reward: str = "math"
    """Reward: a built-in name (math) or package.module:function returning one float per response."""
    ppl_samples: int = 8
    """Responses per problem and model scored for the perplexity plot (0 = skip perplexity)."""
    ppl_batch_size: int = 8
    """Sequences per forward pass when scoring perplexity."""

    def __post_init__(self):
        checks = [
            (self.n >= 1, f"sampling.n={self.n} must be >= 1"),
            (self.temperature >= 0, f"sampling.temperature={self.temperature} must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, f"sampling.top_p={self.top_p} must be in (0, 1]"),
            (self.max_new_tokens >= 1, f"sampling.max_new_tokens={self.max_new_tokens} must be >= 1"),
            (self.batch_problems >= 1, f"sampling.batch_problems={self.batch_problems} must be >= 1"),
            (self.max_batch_sequences >= 1, f"sampling.max_batch_sequences={self.max_batch_sequences} must be >= 1"),
            (self.ppl_samples >= 0, f"sampling.ppl_samples={self.ppl_samples} must be >= 0 (0 = no perplexity)"),
            (self.ppl_batch_size >= 1, f"sampling.ppl_batch_size={self.ppl_batch_size} must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


SECTIONS = {"run": EvalRun, "eval": EvalModels, "data": EvalData, "prompt": Prompt, "sampling": Sampling}
RECIPE = Recipe(
    name="pass_at_k",
    description=(
        __doc__.split("\n\n")[0]
        + "\n\nEvery option may also be written by its own name: --models base=Qwen/Qwen2.5-Math-1.5B rl=runs/x "
        "--benchmarks math500 aime24 --n 256 --limit 100 --regrade."
    ),
    sections=SECTIONS,
    default_preset=gpu_preset,
    no_short_flags=("path", "name"),
)
# Settings every response in one samples.jsonl must share; see _check_settings.
SAMPLING_SETTINGS = ("temperature", "top_p", "max_new_tokens", "template", "cot_suffix", "reward")


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe from the command line; returns the summary (also written to summary.json)."""
    return run(argv)


def run(argv: list[str] | None = None) -> dict:
    parsed = parse(RECIPE, argv)
    parsed.print_notes()
    run_cfg: EvalRun = parsed.section("run")
    models_cfg: EvalModels = parsed.section("eval")
    data: EvalData = parsed.section("data")
    prompt: Prompt = parsed.section("prompt")
    sampling: Sampling = parsed.section("sampling")
    models = parse_models(models_cfg.models)
    base = models_cfg.base_model or next(iter(models))
    if base not in models:
        raise SystemExit(f"eval.base_model={base!r} is not one of the model names {', '.join(models)}")
    run_dir = Path(run_cfg.run_dir)
    device = None if run_cfg.device == "auto" else run_cfg.device

    def load(name: str):
        options = dict(quantization=models_cfg.quantization, compute_dtype=models_cfg.compute_dtype, device=device)
        return load_model_spec(models[name], **options)

    benchmarks = load_eval_problems(data)
    problems = [ex for examples in benchmarks.values() for ex in examples]
    samples_path = run_dir / "samples.jsonl"
    sampled = {s.model for s in read_samples(samples_path, repair=True)}
    _check_settings(run_dir, models, prompt, sampling, sampled=sampled, regrade=run_cfg.regrade)
    config_path = parsed.save(run_dir)
    print(f"[reprokit] run directory {run_dir} (config saved to {config_path})")
    print(
        f"[reprokit] {len(problems)} problems ({', '.join(f'{b}: {len(e)}' for b, e in benchmarks.items())}), "
        f"{len(models)} models, n = {sampling.n}, T = {sampling.temperature}, top-p = {sampling.top_p}"
    )
    # 1. Sample what samples.jsonl lacks (or regrade it), one model in memory at a time.
    if run_cfg.regrade:
        generated, scorer = _regrade(samples_path, problems, sampling, run_cfg.progress_bar), None
    else:
        generated, scorer = _sample_missing(samples_path, problems, models, base, load, prompt, sampling, run_cfg)
    samples = read_samples(samples_path)
    # 2. Per benchmark and model: rewards per problem -> pass@k, accuracy histogram, solved set at k = n.
    pass_at_k, histograms, overlap = _analyses(samples, benchmarks, models, base, sampling)
    # 3. Perplexity under the base model of each model's responses.
    perplexity = None
    if sampling.ppl_samples:
        perplexity = _perplexities(
            run_dir, samples, benchmarks, models, base, scorer=scorer, load=load, prompt=prompt, sampling=sampling,
            progress=run_cfg.progress_bar,
        )
    del scorer
    free_memory()
    # 4. Tables and figures.
    files = _write_outputs(run_dir, benchmarks, base, pass_at_k, histograms, overlap, perplexity)
    summary = {
        "run_dir": str(run_dir), "models": models, "base_model": base,
        "problems": {bench: len(examples) for bench, examples in benchmarks.items()},
        "generated": generated, "samples": len(samples), "pass_at_k": pass_at_k, "overlap": overlap,
        "perplexity_median": None if perplexity is None else {
            b: {m: stats["median"] for m, stats in by.items()} for b, by in perplexity["benchmarks"].items()
        },
        "files": files,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _report(pass_at_k, overlap, perplexity, base, run_dir)
    return summary


def _regrade(samples_path: Path, problems: list[Example], sampling: Sampling, progress: bool) -> dict[str, int]:
    counts = regrade_samples(samples_path, {ex.id: ex for ex in problems}, get_reward(sampling.reward), progress=progress)
    print(f"[reprokit] regraded {counts['regraded']} responses with {sampling.reward!r}: {counts['changed']} changed")
    if counts["unknown"]:
        print(f"[reprokit] {counts['unknown']} responses belong to problems not loaded now; their grades are kept")
    return {}


def _sample_missing(samples_path, problems, models, base, load, prompt: Prompt, sampling: Sampling, run_cfg: EvalRun):
    """Sample the responses the file lacks, model by model; returns the counts generated and the base model, kept
    loaded (last) when the perplexity scoring needs it."""
    existing = {s.key for s in read_samples(samples_path, repair=True)}
    generated = {name: 0 for name in models}
    scorer = None
    for name in sorted(models, key=lambda m: m == base):  # the base last: still loaded for the perplexity scoring
        missing = sum(1 for ex in problems for i in range(sampling.n) if (name, ex.id, i) not in existing)
        if not missing:
            print(f"[reprokit] {name}: all {sampling.n} responses of every problem are in {samples_path.name}")
            continue
        print(f"[reprokit] {name}: loading {models[name]} to sample {missing} responses")
        model, tokenizer = load(name)
        report = sample_to_jsonl(
            model, tokenizer, problems, samples_path, model_name=name, n=sampling.n,
            reward_fn=get_reward(sampling.reward), temperature=sampling.temperature, top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens, batch_problems=sampling.batch_problems,
            max_batch_sequences=sampling.max_batch_sequences, template=prompt.template, cot_suffix=prompt.cot_suffix,
            max_prompt_length=prompt.max_prompt_length, seed=run_cfg.seed, existing=existing,
            progress=run_cfg.progress_bar,
        )
        generated[name] = report.generated
        print(
            f"[reprokit] {name}: {report.generated} responses in {report.seconds:.1f} s "
            f"({report.generated / max(report.seconds, 1e-9):.1f} samples/s, {report.tokens} tokens)"
        )
        if name == base and sampling.ppl_samples:
            scorer = (model, tokenizer)
        else:
            del model, tokenizer
            free_memory()
    return generated, scorer


def _analyses(samples, benchmarks, models, base, sampling: Sampling):
    pass_at_k, histograms, overlap = {}, {}, {}
    for bench, examples in benchmarks.items():
        rewards = {
            name: _nonempty(correctness_by_problem(samples, name, examples, sampling.n), name, bench) for name in models
        }
        pass_at_k[bench] = {name: _pass_at_k(table) for name, table in rewards.items()}
        histograms[bench] = {
            name: accuracy_histogram([_accuracy(r) for r in table.values()]) for name, table in rewards.items()
        }
        overlap[bench] = {
            name: {
                "k": _n_used(rewards[name]),
                **solved_set_overlap(
                    _solved(rewards[base]), _solved(rewards[name]), all_problems=set(rewards[base]) | set(rewards[name])
                ),
            }
            for name in models
            if name != base
        }
    return pass_at_k, histograms, overlap


# ---------------------------------------------------------------------------------------------- problems and settings
def load_eval_problems(data: EvalData) -> dict[str, list[Example]]:
    """{benchmark: problems}; a data file becomes one more benchmark with ids "<name>/<id>"."""
    benchmarks = {name: load_benchmark(name, data.data_dir, data.limit) for name in data.benchmarks}
    if data.path:
        name = data.name or Path(data.path).stem
        if name in benchmarks:
            raise DataError(f"data.name={name!r} is also in data.benchmarks; give data.path another data.name")
        examples = read_examples(
            data.path, question_field=data.question_field, answer_field=data.answer_field, id_field=data.id_field
        )
        if data.limit is not None:
            examples = examples[: data.limit]
        for ex in examples:
            ex.fields["benchmark"] = name
            ex.id = f"{name}/{ex.id}"
        benchmarks[name] = examples
    seen: dict[str, str] = {}
    for bench, examples in benchmarks.items():
        for ex in examples:
            if ex.id in seen:
                raise DataError(
                    f"problem id {ex.id!r} occurs twice ({seen[ex.id]} and {bench}); ids must be unique: "
                    "set data.id_field to a unique column, or leave it unset to number the rows"
                )
            seen[ex.id] = bench
    return benchmarks


def _check_settings(
    run_dir: Path, models: dict[str, str], prompt: Prompt, sampling: Sampling, *, sampled: set[str], regrade: bool
) -> None:
    """Responses in one samples.jsonl must come from one setting: refuse to mix, and say how to proceed.

    ``sampled``: the model names that already have responses in the file.
    """
    path = run_dir / "sampling.json"
    current = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_new_tokens": sampling.max_new_tokens,
        "template": prompt.template,
        "cot_suffix": prompt.cot_suffix,
        "reward": sampling.reward,
    }
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved_settings, saved_models = saved.get("settings", {}), saved.get("models", {})
    for name, spec in models.items():
        old = saved_models.get(name)
        if name in sampled and old is not None and old != spec:
            raise SystemExit(
                f"{path}: the responses of model {name!r} in samples.jsonl come from {old!r}, but --models now names "
                f"{spec!r}. Give the new model another name, or use another --run_dir"
            )
    if sampled and not regrade:
        for key in SAMPLING_SETTINGS:
            if key in saved_settings and saved_settings[key] != current[key]:
                if key == "reward":
                    hint = f"pass --regrade to grade the saved responses with {current[key]!r}"
                else:
                    hint = f"use another --run_dir, or pass --{key} {saved_settings[key]!r} to continue this one"
                raise SystemExit(
                    f"{path}: the responses in samples.jsonl were drawn with {key}={saved_settings[key]!r}, this run "
                    f"asks for {key}={current[key]!r}; one file must not mix settings: {hint}"
                )
    # A regrade samples nothing: the saved sampling settings stay, only the reward is new.
    settings = {**current, **saved_settings, "reward": sampling.reward} if regrade and sampled else current
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"settings": settings, "models": {**{m: saved_models[m] for m in sampled if m in saved_models}, **models}}
    path.write_text(json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- analyses
def _nonempty(table: dict[str, list[float]], model: str, bench: str) -> dict[str, list[float]]:
    """Problems without responses (a --regrade before sampling finished) are left out, with a note."""
    empty = [pid for pid, rewards in table.items() if not rewards]
    if empty:
        warnings.warn(
            f"{bench}/{model}: {len(empty)} problem(s) have no responses yet (e.g. {empty[0]}); left out", stacklevel=2
        )
    kept = {pid: rewards for pid, rewards in table.items() if rewards}
    if not kept:
        raise SystemExit(f"{bench}/{model}: no responses in samples.jsonl; run without --regrade to sample them")
    return kept


def _is_correct(reward: float) -> bool:
    return reward >= 1.0


def _accuracy(rewards: list[float]) -> float:
    return sum(map(_is_correct, rewards)) / len(rewards)


def _n_used(table: dict[str, list[float]]) -> int:
    """The largest k every problem supports: the fewest responses any problem has."""
    return min(len(r) for r in table.values())


def _solved(table: dict[str, list[float]]) -> set[str]:
    """Problems with at least one correct response, i.e. solved at k = n."""
    return {pid for pid, rewards in table.items() if any(map(_is_correct, rewards))}


def _k_grid(n: int) -> list[int]:
    """1, 2, 4, ..., and n itself when n is no power of two."""
    ks = list(powers_of_two(n))
    return ks if ks[-1] == n else [*ks, n]


def _pass_at_k(table: dict[str, list[float]]) -> dict[int, float]:
    n = torch.tensor([len(r) for r in table.values()])  # [P]
    c = torch.tensor([sum(map(_is_correct, r)) for r in table.values()])  # [P]
    ks = _k_grid(int(n.min()))
    mean = pass_at_k_per_problem(n, c, ks).mean(dim=0)  # [K]
    return {k: float(mean[j]) for j, k in enumerate(ks)}


def _perplexities(run_dir, samples, benchmarks, models, base, *, scorer, load, prompt, sampling, progress) -> dict:
    """PPL_base of the first ppl_samples responses per problem and model; cached per response in a JSONL.

    ``scorer``: the base's (model, tokenizer) if it is still loaded, else None and ``load(base)`` loads it.
    """
    cache_path = run_dir / "perplexity_samples.jsonl"
    scorer_id = f"{base}={models[base]}"
    cache: dict[tuple[str, str, int], float | None] = {}
    # A line cut off by a kill is dropped (that response is scored again), so appends start on a fresh line.
    for _, line in read_jsonl_lines(cache_path, repair=True):
        row = json.loads(line)
        if row.get("scorer") == scorer_id:
            cache[(row["model"], row["problem_id"], row["sample_index"], row.get("text_crc"))] = row["ppl"]
    wanted: list[Sample] = [
        s for s in samples
        if s.model in models and s.sample_index < min(sampling.ppl_samples, sampling.n)
    ]
    examples = {ex.id: ex for exs in benchmarks.values() for ex in exs}
    wanted = [s for s in wanted if s.problem_id in examples]
    # The text's checksum is part of the key: a response sampled again (samples.jsonl replaced) is scored again.
    key = {s.key: (*s.key, zlib.crc32(s.text.encode())) for s in wanted}
    todo = [s for s in wanted if key[s.key] not in cache]
    if todo:
        if scorer is None:
            print(f"[reprokit] perplexity: loading the base {models[base]} to score {len(todo)} responses")
            scorer = load(base)
        model, tokenizer = scorer
        prompts, add_special = render_prompts(
            [examples[s.problem_id] for s in todo], tokenizer, template=prompt.template, cot_suffix=prompt.cot_suffix
        )
        values = response_perplexity(
            model, tokenizer, prompts, [s.text for s in todo], add_special_tokens=add_special,
            batch_size=sampling.ppl_batch_size, progress=progress,
        )
        with cache_path.open("a", encoding="utf-8") as f:
            for s, value in zip(todo, values):
                cache[key[s.key]] = value
                f.write(json.dumps({"scorer": scorer_id, "model": s.model, "problem_id": s.problem_id,
                                    "sample_index": s.sample_index, "text_crc": key[s.key][3], "ppl": value}) + "\n")
    result: dict = {"scorer": base, "scorer_spec": models[base], "ppl_samples": sampling.ppl_samples, "benchmarks": {}}
    for bench, exs in benchmarks.items():
        ids = {ex.id for ex in exs}
        result["benchmarks"][bench] = {
            name: _describe([cache[key[s.key]] for s in wanted
                             if s.model == name and s.problem_id in ids and cache[key[s.key]] is not None])
            for name in models
        }
    return result


def _describe(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "mean": None, "median": None, "q1": None, "q3": None, "values": []}
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"count": len(values), "mean": statistics.fmean(values), "median": median, "q1": q1, "q3": q3,
            "min": min(values), "max": max(values), "values": values}


# ---------------------------------------------------------------------------------------------- outputs
def _write_outputs(run_dir, benchmarks, base, pass_at_k, histograms, overlap, perplexity) -> list[str]:
    """Every table (JSON, CSV) and figure (PNG); returns the file names."""
    files = []

    def write_json(name: str, obj) -> None:
        (run_dir / name).write_text(json.dumps(obj, indent=2) + "\n")
        files.append(name)

    def write_csv(name: str, header: list[str], rows: list[list]) -> None:
        with (run_dir / name).open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        files.append(name)

    curves = [(b, m, curve) for b, by in pass_at_k.items() for m, curve in by.items()]
    write_json("pass_at_k.json", {b: {m: {str(k): v for k, v in c.items()} for m, c in by.items()} for b, by in pass_at_k.items()})
    write_csv("pass_at_k.csv", ["benchmark", "model", "k", "pass_at_k"],
              [[b, m, k, f"{v:.6f}"] for b, m, curve in curves for k, v in curve.items()])
    subtitles = {b: f"{len(benchmarks[b])} problems, n = {max(max(c) for c in by.values())}" for b, by in pass_at_k.items()}
    pass_at_k_curves(pass_at_k, run_dir / "pass_at_k.png", subtitles=subtitles)
    files.append("pass_at_k.png")

    write_json("accuracy_histogram.json", histograms)
    accuracy_histograms(histograms, run_dir / "accuracy_histogram.png")
    files.append("accuracy_histogram.png")

    write_json("overlap.json", {"base_model": base, "benchmarks": overlap})
    write_csv("overlap.csv", ["benchmark", "base_model", "model", "k", "base_only", "both", "other_only", "neither"],
              [[b, base, m, o["k"], o["base_only"], o["both"], o["other_only"], o["neither"]]
               for b, by in overlap.items() for m, o in by.items()])
    if any(overlap.values()):
        bars = {b: {m: {key: o[key] for key in ("base_only", "both", "other_only")} for m, o in by.items()}
                for b, by in overlap.items() if by}
        bar_chart(bars, run_dir / "overlap.png", ylabel="problems solved at k = n", title=f"solved sets against {base}")
        files.append("overlap.png")

    if perplexity is not None:
        write_json("perplexity.json", perplexity)
        boxes = {b: {m: s["values"] for m, s in by.items()} for b, by in perplexity["benchmarks"].items()}
        box_plots(boxes, run_dir / "perplexity.png", ylabel=f"PPL under {base}",
                  title=f"perplexity of each model's responses under {base}", clip_quantile=0.99)
        files.append("perplexity.png")
    return files


def _report(pass_at_k, overlap, perplexity, base, run_dir) -> None:
    for bench, by_model in pass_at_k.items():
        ks = sorted({k for curve in by_model.values() for k in curve})
        width = max(len(m) for m in by_model) + 2
        print(f"[reprokit] {bench}: pass@k")
        print("    " + "model".ljust(width) + "".join(f"{'k=' + str(k):>8}" for k in ks))
        for model, curve in by_model.items():
            print("    " + model.ljust(width) + "".join(f"{curve[k]:>8.3f}" if k in curve else f"{'':>8}" for k in ks))
        for model, o in overlap[bench].items():
            print(f"    solved at k={o['k']}: {base} only {o['base_only']}, both {o['both']}, "
                  f"{model} only {o['other_only']}")
        if perplexity:
            stats = perplexity["benchmarks"][bench]
            print("    median PPL under " + base + ": " + ", ".join(
                f"{m} {s['median']:.3f}" if s["median"] is not None else f"{m} n/a" for m, s in stats.items()))
    print(f"[reprokit] tables and figures in {run_dir}")


if __name__ == "__main__":
    main()
