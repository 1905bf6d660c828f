"""Evaluate as the papers did: one command for a paper's table, every cell with its interval.

    python -m reprokit.recipes.evaluate --models base=Qwen/Qwen2.5-Math-1.5B rl=runs/one_shot/pi1-qwen2.5-math-1.5b \\
        --protocol one-shot-rlvr --run_dir runs/evaluate/pi1

Protocols (`--protocol`), each the benchmarks, samples, temperature and top-p of its paper and code:
- `one-shot-rlvr` (Wang et al. 2025, One-Shot-RLVR's Qwen2.5-Eval scripts): MATH500, Minerva, OlympiadBench
  greedy; AIME24, AIME25, AMC23 avg@8 at T = 0.6 (top-p 1); 3072 tokens; the Qwen2.5-Math chat prompt with the
  step-by-step suffix; the six-benchmark average, best over checkpoints, is the paper's figure.
- `80-20` (the 80/20 paper's released validation): AIME24 avg@32 and MATH500 with one sample, T = 1.0,
  top-p 0.7, 20480 tokens, the model's own chat template.
- `yue-pass-at-k` (Yue et al. 2025): T = 0.6, top-p 0.95, n = 128 on MATH500, Minerva and OlympiadBench and
  1024 on AIME24 and AMC23, 16384 tokens; the table gives pass@1 and pass@n (pass@k curves: `pass_at_k`).
- `cpu-world`: the CPU world's 200 test problems, 4 samples at T = 1.0, its prompt and grader (set the world
  with `--world.*` as in training).

A model is any spec `pass_at_k` takes (Hub id, model folder, checkpoint, `tiny`, `world`); a run folder with
several `checkpoints/step-N.ckpt` stands for every `--every`-th of them (the last always), named NAME.step-N, and
the table marks the checkpoint with the best average, as the 1-shot paper reports. Each cell is the mean over
problems of each problem's accuracy over its samples, with a 95% bootstrap interval over problems; every model
after the first also gets its paired difference from the first (the same problems resampled for both), and the
average's interval resamples each benchmark's problems apart. With AIME's 30 problems most differences between
1-shot checkpoints lie inside their interval.

Outputs in --run_dir: samples.jsonl (every response, appended as produced: a second call samples only what is
missing), protocol.json (the settings the samples were drawn with; another protocol needs another run_dir),
table.md, table.csv, results.json and table.png. `--limit N` and `--max_new_tokens` make quick runs.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from reprokit.cli import Recipe, parse
from reprokit.data import load_benchmark
from reprokit.evaluation import correctness_by_problem, free_memory, load_model_spec, parse_models, read_samples, sample_to_jsonl
from reprokit.metrics.functional import bootstrap_interval, stratified_bootstrap_interval
from reprokit.plots import interval_bars
from reprokit.rewards import get_reward


@dataclass(frozen=True)
class Benchmark:
    """One column of a protocol's table: how many samples of which kind each problem gets."""

    name: str
    n: int
    temperature: float
    top_p: float = 1.0


@dataclass(frozen=True)
class Protocol:
    """A paper's evaluation: its benchmarks and how it prompts, samples and grades them."""

    benchmarks: tuple[Benchmark, ...]
    max_new_tokens: int
    template: str
    cot_suffix: bool
    reward: str = "math"
    report: str = "avg"
    """avg: each problem's accuracy over its samples (greedy or avg@n); pass@n: also whether any sample solved it."""


PROTOCOLS = {
    "one-shot-rlvr": Protocol(
        benchmarks=(
            Benchmark("math500", 1, 0.0), Benchmark("aime24", 8, 0.6), Benchmark("amc23", 8, 0.6),
            Benchmark("minerva_math", 1, 0.0), Benchmark("olympiadbench", 1, 0.0), Benchmark("aime25", 8, 0.6),
        ),
        max_new_tokens=3072, template="qwen25-math-cot", cot_suffix=True,
    ),
    "80-20": Protocol(
        benchmarks=(Benchmark("aime24", 32, 1.0, 0.7), Benchmark("math500", 1, 1.0, 0.7)),
        max_new_tokens=20480, template="chat", cot_suffix=True,
    ),
    "yue-pass-at-k": Protocol(
        benchmarks=(
            Benchmark("math500", 128, 0.6, 0.95), Benchmark("minerva_math", 128, 0.6, 0.95),
            Benchmark("olympiadbench", 128, 0.6, 0.95), Benchmark("aime24", 1024, 0.6, 0.95),
            Benchmark("amc23", 1024, 0.6, 0.95),
        ),
        max_new_tokens=16384, template="qwen25-math-cot", cot_suffix=True, report="pass@n",
    ),
    "cpu-world": Protocol(
        benchmarks=(Benchmark("world_test", 4, 1.0),), max_new_tokens=87, template="{question}\n", cot_suffix=False,
        reward="world",
    ),
}


@dataclass
class EvaluateConfig:
    """What to evaluate, how, and where the results go."""

    models: list[str] = field(default_factory=lambda: ["base=Qwen/Qwen2.5-Math-1.5B"])
    """NAME=SPEC pairs (--models base=Qwen/Qwen2.5-Math-1.5B rl=runs/x); the first is the reference of the
    differences. A run folder with several checkpoints stands for its checkpoints."""
    protocol: str = "one-shot-rlvr"
    """one-shot-rlvr, 80-20, yue-pass-at-k or cpu-world."""
    run_dir: str = "runs/evaluate"
    """samples.jsonl, protocol.json, table.md / .csv / .png, results.json. Rerunning into it samples only what is missing."""
    every: int = 1
    """Of a run folder's checkpoints, evaluate every k-th (the last always)."""
    limit: int | None = None
    """Problems per benchmark (None = all): quick runs."""
    max_new_tokens: int | None = None
    """Response length (None = the protocol's)."""
    data_dir: str | None = None
    """Folder laid out like shared/data (else $REPROKIT_DATA_DIR)."""
    max_batch_sequences: int = 64
    """Most sequences one generate call decodes (memory)."""
    quantization: str = "auto"
    """auto (checkpoints as trained, other models full precision), none or nf4."""
    device: str = "auto"
    """auto (CUDA if present), cpu, cuda, cuda:1."""
    seed: int = 0
    """Sampling seed (each batch's seed also depends on its model, problems and sample indices)."""
    bootstrap: int = 1000
    """Bootstrap resamples of every interval."""
    progress_bar: bool = True
    """Progress bars with the time left."""

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol {self.protocol!r}: use one of {', '.join(PROTOCOLS)}")
        for name, ok in (("every", self.every >= 1), ("limit", self.limit is None or self.limit >= 1),
                         ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1)):
            if not ok:
                raise ValueError(f"--{name} {getattr(self, name)!r} must be >= 1")


RECIPE = Recipe(
    name="evaluate", description=__doc__.split("\n\n")[0], sections={"eval": EvaluateConfig}, run_dir_key="eval.run_dir",
)


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation from the command line; returns results.json's content."""
    parsed = parse(RECIPE, argv)
    parsed.print_notes()
    cfg: EvaluateConfig = parsed.section("eval")
    run_dir = Path(cfg.run_dir)
    protocol = PROTOCOLS[cfg.protocol]
    max_new_tokens = cfg.max_new_tokens or protocol.max_new_tokens
    _check_protocol(run_dir, cfg.protocol, protocol, max_new_tokens)
    parsed.save(run_dir)
    models = expand_run_folders(parse_models(cfg.models), cfg.every)
    problems = {b.name: load_benchmark(b.name, cfg.data_dir, cfg.limit) for b in protocol.benchmarks}
    print(
        f"[reprokit] {cfg.protocol}: {len(models)} models x "
        + ", ".join(f"{b.name} ({len(problems[b.name])} x {b.n})" for b in protocol.benchmarks)
        + f" into {run_dir}"
    )
    sample(cfg, protocol, models, problems, run_dir / "samples.jsonl", max_new_tokens)
    results = tabulate(cfg, protocol, models, problems, read_samples(run_dir / "samples.jsonl"))
    write_outputs(run_dir, results)
    print((run_dir / "table.md").read_text())
    print(f"[reprokit] {run_dir / 'table.md'}, table.csv, table.png, results.json")
    return results


def _check_protocol(run_dir: Path, name: str, protocol: Protocol, max_new_tokens: int) -> None:
    """Every response in one samples.jsonl is drawn the same way: a second call with other settings is refused."""
    settings = {"protocol": name, **asdict(protocol), "max_new_tokens": max_new_tokens}
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    path = run_dir / "protocol.json"
    if path.is_file() and (run_dir / "samples.jsonl").is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            raise SystemExit(
                f"{run_dir}: its samples were drawn with other settings ({', '.join(f'{k}: {saved.get(k)!r}' for k in changed)}); "
                "evaluate into another --run_dir"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def expand_run_folders(models: dict[str, str], every: int) -> dict[str, str]:
    """A run folder with several step checkpoints becomes NAME.step-N for every ``every``-th of them (the last
    always); any other spec stays as it is."""
    out = {}
    for name, spec in models.items():
        folder = Path(spec) / "checkpoints"
        steps = sorted(
            (int(m.group(1)), p) for p in folder.glob("step-*.ckpt") if (m := re.fullmatch(r"step-(\d+)\.ckpt", p.name))
        ) if folder.is_dir() else []
        if len(steps) < 2:
            out[name] = spec
            continue
        chosen = steps[every - 1 :: every]
        if chosen[-1] != steps[-1]:
            chosen.append(steps[-1])
        out.update({f"{name}.step-{step}": str(path) for step, path in chosen})
    return out


def sample(cfg: EvaluateConfig, protocol: Protocol, models: dict[str, str], problems: dict, path: Path, max_new_tokens: int) -> None:
    """Sample what samples.jsonl lacks, one model in memory at a time."""
    reward_fn = get_reward(protocol.reward)
    existing = {s.key for s in read_samples(path, repair=True)}
    device = None if cfg.device == "auto" else cfg.device
    for index, (name, spec) in enumerate(models.items(), 1):
        missing = sum(
            1 for b in protocol.benchmarks for ex in problems[b.name] for i in range(b.n) if (name, ex.id, i) not in existing
        )
        if not missing:
            print(f"[reprokit] model {index}/{len(models)} {name}: every response is in {path.name}")
            continue
        print(f"[reprokit] model {index}/{len(models)} {name}: loading {spec} to sample {missing} responses")
        model, tokenizer = load_model_spec(spec, quantization=cfg.quantization, device=device)
        for b in protocol.benchmarks:
            sample_to_jsonl(
                model, tokenizer, problems[b.name], path, model_name=name, n=b.n, reward_fn=reward_fn,
                temperature=b.temperature, top_p=b.top_p, max_new_tokens=max_new_tokens,
                batch_problems=max(1, cfg.max_batch_sequences // b.n), max_batch_sequences=cfg.max_batch_sequences,
                template=protocol.template, cot_suffix=protocol.cot_suffix, seed=cfg.seed, existing=existing,
                progress=cfg.progress_bar,
            )
        del model, tokenizer
        free_memory()


def tabulate(cfg: EvaluateConfig, protocol: Protocol, models: dict[str, str], problems: dict, samples) -> dict:
    """Per model and benchmark: the mean accuracy and its interval; the average; the paired difference from the
    first model; and, with report pass@n, the share of problems any sample solved."""
    first = next(iter(models))
    names = [b.name for b in protocol.benchmarks]
    accuracy: dict[str, dict[str, list[float]]] = {}
    solved: dict[str, dict[str, list[float]]] = {}
    for model in models:
        accuracy[model], solved[model] = {}, {}
        for b in protocol.benchmarks:
            table = correctness_by_problem(samples, model, problems[b.name], b.n)
            short = [pid for pid, rewards in table.items() if len(rewards) < b.n]
            if short:
                raise SystemExit(f"{model} on {b.name}: {len(short)} problems lack samples (e.g. {short[0]}); run again to finish")
            accuracy[model][b.name] = [float(np.mean([r >= 1.0 for r in table[ex.id]])) for ex in problems[b.name]]
            solved[model][b.name] = [float(any(r >= 1.0 for r in table[ex.id])) for ex in problems[b.name]]
    interval = dict(resamples=cfg.bootstrap, seed=cfg.seed)
    rows = {}
    for model in models:
        row = {b: bootstrap_interval(accuracy[model][b], **interval) for b in names}
        row["average"] = stratified_bootstrap_interval([accuracy[model][b] for b in names], **interval)
        entry = {"accuracy": row}
        if model != first:
            diff = {b: bootstrap_interval(accuracy[model][b], accuracy[first][b], **interval) for b in names}
            diff["average"] = stratified_bootstrap_interval(
                [accuracy[model][b] for b in names], [accuracy[first][b] for b in names], **interval
            )
            entry["difference"] = diff
        if protocol.report == "pass@n":
            entry["pass@n"] = {b: bootstrap_interval(solved[model][b], **interval) for b in names}
        rows[model] = entry
    best = {}
    for model in models:
        run = model.rsplit(".step-", 1)[0] if ".step-" in model else None
        if run is not None and (run not in best or rows[model]["accuracy"]["average"][0] > rows[best[run]]["accuracy"]["average"][0]):
            best[run] = model
    return {
        "protocol": cfg.protocol, "settings": {b.name: asdict(b) for b in protocol.benchmarks}, "reference": first,
        "problems": {b: len(problems[b]) for b in names}, "models": models, "rows": rows,
        "best checkpoint": best, "limit": cfg.limit,
    }


def _how(setting: dict) -> str:
    if setting["temperature"] == 0:
        return "greedy"
    return f"avg@{setting['n']}, T {setting['temperature']}, top-p {setting['top_p']}"


def _cell(iv) -> str:
    return f"{100 * iv[0]:.1f} [{100 * iv[1]:.1f}, {100 * iv[2]:.1f}]"


def _diff(iv) -> str:
    return f"{100 * iv[0]:+.1f} [{100 * iv[1]:+.1f}, {100 * iv[2]:+.1f}]"


def write_outputs(run_dir: Path, results: dict) -> None:
    columns = [*results["problems"], "average"]
    settings = results["settings"]
    head = [f"{b} ({_how(s)}, {results['problems'][b]} problems)" for b, s in settings.items()]
    lines = [
        f"Protocol {results['protocol']}: accuracy in % with 95% bootstrap intervals over problems; "
        f"Δ rows are paired differences from {results['reference']}.",
        "",
        "| model | " + " | ".join([*head, "average"]) + " |",
        "|---|" + "---|" * len(columns),
    ]
    best = set(results["best checkpoint"].values())
    csv_rows = []
    for model, entry in results["rows"].items():
        mark = " (best average)" if model in best else ""
        lines.append(f"| {model}{mark} | " + " | ".join(_cell(entry["accuracy"][c]) for c in columns) + " |")
        if "difference" in entry:
            lines.append(f"| Δ {model} | " + " | ".join(_diff(entry["difference"][c]) for c in columns) + " |")
        if "pass@n" in entry:
            lines.append(f"| pass@n {model} | " + " | ".join(_cell(entry["pass@n"][c]) for c in results["problems"]) + " | |")
        for c in columns:
            acc, diff = entry["accuracy"][c], entry.get("difference", {}).get(c, (None, None, None))
            csv_rows.append([model, c, *acc, *diff])
    (run_dir / "table.md").write_text("\n".join(lines) + "\n")
    with open(run_dir / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "benchmark", "accuracy", "low", "high", "difference", "difference_low", "difference_high"])
        writer.writerows(csv_rows)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    bars = {c: {m: tuple(100 * v for v in e["accuracy"][c]) for m, e in results["rows"].items()} for c in columns}
    interval_bars(bars, run_dir / "table.png", ylabel="accuracy % (95% CI)", title=f"protocol {results['protocol']}", reference=None)


if __name__ == "__main__":
    main()
