"""Token-entropy analysis of a model's responses: the forking tokens of Wang et al. 2025 ("Beyond the 80/20
Rule", arXiv 2506.01939, §3 of PAPERS.md).

What it reproduces: in chain-of-thought most tokens are generated with near-zero entropy (half below 0.01
nats; 80th percentile 0.672 for Qwen3-8B), while a high-entropy minority ("wait", "however", "thus",
"suppose") decides where the reasoning goes; and RL keeps the base model's entropy pattern (> 86% of the
top-20% entropy positions are shared by base and RL model).

What it does:
1. Responses: samples ``--n`` responses per problem from ``--model`` (a benchmark such as math500, or a data
   file) at ``--temperature``, or reads them from a pass_at_k ``samples.jsonl`` (``--samples``).
2. Entropies: scores every response token with the model at the same temperature,
   H_t = -sum_v p_v log p_v over the full vocabulary (chunked, no [B, T, V] float32 tensor).
3. Writes to ``--run_dir``: ``entropy_stats.json`` (mean, percentiles, fraction below 0.01, 80th
   percentile, top-rho threshold), ``entropy_hist.png``, ``token_entropy.npz`` (every value with its token,
   response and position), ``responses.jsonl``, ``top_tokens.csv`` and ``top_tokens.png`` (the most frequent
   tokens among the top-rho entropy positions; the threshold pooled over all responses, as in the paper).
4. With ``--run_dir_of_training RUN`` (a GRPO run with ``checkpoints/step-N.ckpt``): scores the SAME
   token sequences (the base's responses) with every checkpoint and writes the overlap of the top-rho
   positions with the base's against the training step: ``overlap.csv``, ``overlap.png``, and the
   checkpoints' entropies of the same tokens in ``overlap_entropy.npz``.

Where it departs from the paper: the paper measured Qwen3 models on their own RL rollouts (AIME, T = 1.0);
the defaults here sample MATH500 problems from Qwen2.5-Math-1.5B at the rollout temperature of 1-shot RLVR
(T = 0.6, where PAPERS.md gives ≈ 0.72 nats/token for base models), fewer problems and samples to stay
quick; every one of these is an option.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from tqdm.auto import tqdm

from reprokit import plots
from reprokit.algorithms import response_logprobs
from reprokit.cli import Recipe, cpu_preset, parse
from reprokit.data import Example, Prompt, collate_prompts, get_pad_token_id, load_problems, tokenize_examples
from reprokit.evaluation import free_memory, load_model_spec
from reprokit.metrics import HighEntropyOverlap, TokenEntropy
from reprokit.metrics.functional import quantiles
from reprokit.policy import eos_token_ids
from reprokit.sampling import generate

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.8, 0.9, 0.95, 0.99)


@dataclass
class EntropyOptions:
    """The model, the responses and the analysis."""

    run_dir: str = "runs/entropy_analysis"
    """Output folder: entropy_stats.json, entropy_hist.png, top_tokens.csv/png, overlap.csv/png, ..."""
    seed: int = 0
    """Seed of the sampling."""
    model: str = "Qwen/Qwen2.5-Math-1.5B"
    """Model spec: Hub id, model folder, `tiny`, a checkpoint (RUN/checkpoints/step-N) or a run folder; with
    run_dir_of_training, the base that run started from."""
    quantization: Literal["none", "nf4", "auto"] = "none"
    """Base weights of every model loaded: none (full precision, so base and checkpoints differ only by what
    training changed), nf4 (4-bit, less memory), auto (checkpoints as trained, other models full precision)."""
    samples: str | None = None
    """A pass_at_k samples.jsonl to analyse instead of sampling (its responses, re-tokenized; the prompts are
    rebuilt from that run's config.yaml)."""
    samples_model: str | None = None
    """Whose responses in samples.jsonl to analyse (a model name of that run; default: its first model)."""
    problems: str = "math500"
    """Benchmark name (math500, aime24, world_test, ...), a data file (jsonl/json/csv/parquet), or a registered
    example set such as world:test / world:train / world:hard (the splits of the CPU world of --world.*)."""
    data_dir: str | None = None
    """Local data folder laid out like shared/data (else $REPROKIT_DATA_DIR, else the Hugging Face Hub)."""
    question_field: str = "auto"
    """Question field when problems is a data file."""
    answer_field: str = "auto"
    """Answer field when problems is a data file (read, not used)."""
    limit: int | None = 100
    """Problems to sample (the first ones); None = all."""
    rho: float = 0.2
    """Top fraction of positions counted as high-entropy (the paper's 20%)."""
    top_tokens: int = 30
    """Tokens in the frequency bar plot (the CSV lists every token seen at a high-entropy position)."""
    run_dir_of_training: str | None = None
    """A training run directory (checkpoints/step-N.ckpt): overlap of top-rho positions with the base per step."""
    max_checkpoints: int | None = 20
    """Checkpoints of run_dir_of_training to score, evenly spaced, the last always included; None = all."""

    def __post_init__(self):
        _check(self, [
            (0 < self.rho <= 1, "rho", "must be in (0, 1]"),
            (self.max_checkpoints is None or self.max_checkpoints >= 1, "max_checkpoints", "must be >= 1 or null"),
        ])


@dataclass
class EntropySampling:
    """How the responses are sampled and scored (the `sampling` section)."""

    n: int = 4
    """Responses sampled per problem."""
    temperature: float = 0.6
    """Sampling temperature, and the temperature of the entropies (the distribution the tokens came from)."""
    top_p: float = 1.0
    """Nucleus sampling (1.0 = off; entropies are always of the full tempered distribution)."""
    max_new_tokens: int = 3072
    """Longest response in tokens."""
    generation_batch_size: int = 64
    """Sequences decoded by one generate call."""
    score_batch_size: int = 8
    """Sequences per scoring forward pass."""
    chunk_size: int = 1024
    """Positions per chunk of the entropy pass: bounds the [chunk, vocab] logits held at once."""

    def __post_init__(self):
        _check(self, [
            (self.n >= 1, "n", "must be >= 1"),
            (self.temperature > 0, "temperature", "must be > 0: entropies are those of softmax(logits / temperature)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
        ])


def _check(values, checks: list[tuple[bool, str, str]]) -> None:
    for ok, name, why in checks:
        if not ok:
            raise ValueError(f"--{name}={getattr(values, name)!r}: {why}")


@dataclass
class Responses:
    """The token sequences analysed: prompt and response ids per response, in one order for every model."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    example_ids: list[str]
    prompts: list[str]
    texts: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.response_ids)


@dataclass
class Scores:
    """Per-token entropies of one model on :class:`Responses`, flattened in response order."""

    entropy: torch.Tensor  # [N_tokens] float32
    lengths: list[int] = field(default_factory=list)  # tokens per response


RECIPE = Recipe(
    name="entropy_analysis",
    description=__doc__.split("\n\n")[0],
    sections={"": EntropyOptions, "sampling": EntropySampling, "prompt": Prompt},
    run_dir_key="run_dir",
    default_preset=cpu_preset,
)


def main(argv: list[str] | None = None) -> dict:
    """Run from the command line; returns the contents of entropy_stats.json."""
    opts, sampling, prompt = parse_options(argv)
    run_dir = Path(opts.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(opts.seed, verbose=False)

    model, tokenizer = _load(opts.model, opts)
    if opts.samples:
        responses = read_samples(opts.samples, tokenizer, opts, sampling)
    else:
        responses = sample_responses(model, tokenizer, opts, sampling, prompt)
    if not any(responses.response_ids):
        raise SystemExit("every response is empty: nothing to analyse (raise --max_new_tokens or check the model)")
    write_responses(responses, run_dir / "responses.jsonl")
    base = score_responses(model, responses, sampling, desc="entropy (base)")
    del model
    free_memory()

    stats = entropy_summary(base.entropy, opts.rho)
    stats.update(model=opts.model, source=responses.source, temperature=sampling.temperature, num_responses=len(responses))
    _save_values(responses, base, run_dir / "token_entropy.npz")
    plots.entropy_histograms(base.entropy.double().numpy(), stats, run_dir / "entropy_hist.png")
    table = high_entropy_tokens(responses, base, tokenizer, stats["top_rho_threshold"])
    write_token_table(table, run_dir / "top_tokens.csv")
    plots.top_tokens(table[: opts.top_tokens], opts.rho, run_dir / "top_tokens.png")

    if opts.run_dir_of_training:
        rows, values = overlap_by_step(responses, base, opts, sampling)
        np.savez_compressed(run_dir / "overlap_entropy.npz", **values)
        write_overlap(rows, run_dir / "overlap.csv")
        plots.overlap_by_step(rows, opts.rho, run_dir / "overlap.png")
        stats["overlap"] = rows
    (run_dir / "entropy_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    _report(stats, table, run_dir)
    return stats


def parse_options(argv: list[str] | None = None) -> tuple[EntropyOptions, EntropySampling, Prompt]:
    """Defaults < --preset (presets/entropy_analysis/NAME.yaml; cpu when there is no CUDA device) < --config < flags."""
    parsed = parse(RECIPE, argv)
    parsed.print_notes()
    return parsed.section(""), parsed.section("sampling"), parsed.section("prompt")


# ---------------------------------------------------------------------------------------------- models


def _load(spec: str, opts: EntropyOptions):
    """(model, tokenizer) for a model spec, in eval mode."""
    model, tokenizer = load_model_spec(spec, quantization=opts.quantization)
    model.eval()
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- responses


def sample_responses(model, tokenizer, opts: EntropyOptions, sampling: EntropySampling, prompt: Prompt) -> Responses:
    """``sampling.n`` responses per problem, sampled at ``sampling.temperature`` (the prompts of the training recipes;
    a prompt longer than prompt.max_prompt_length is dropped with a warning)."""
    examples = _problems(opts)
    items = tokenize_examples(
        examples, tokenizer, template=prompt.template, cot_suffix=prompt.cot_suffix,
        max_prompt_length=prompt.max_prompt_length, drop_long_prompts=True,
    )
    pad_id = get_pad_token_id(tokenizer)
    eos_ids = eos_token_ids(tokenizer, model)
    device = next(model.parameters()).device
    per_call = max(1, sampling.generation_batch_size // sampling.n)
    out = Responses([], [], [], [], [], source=f"sampled: {opts.problems} ({len(items)} problems x {sampling.n})")
    for begin in tqdm(range(0, len(items), per_call), desc="sampling", unit="batch"):
        batch = collate_prompts(items[begin : begin + per_call], pad_id)
        comps = generate(
            model,
            tokenizer,
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            n=sampling.n,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            eos_ids=eos_ids,
            batch_size=sampling.generation_batch_size,
        )
        lengths = comps.lengths.tolist()
        for row in range(len(comps.texts)):
            item = items[begin + row // sampling.n]
            out.prompt_ids.append(list(item.input_ids))
            out.response_ids.append(comps.response_ids[row, : lengths[row]].tolist())
            out.example_ids.append(item.example_id)
            out.prompts.append(item.prompt)
            out.texts.append(comps.texts[row])
    return out


def _problems(opts: EntropyOptions):
    return load_problems(
        opts.problems, data_dir=opts.data_dir, limit=opts.limit, question_field=opts.question_field,
        answer_field=opts.answer_field,
    )


def read_samples(path: str | Path, tokenizer, opts: EntropyOptions, sampling: EntropySampling) -> Responses:
    """The responses of one model from a pass_at_k ``samples.jsonl``, re-tokenized with ``tokenizer``.

    The file holds response texts only; the prompts are rebuilt from the ``data`` section of the pass_at_k
    run's ``config.yaml`` beside it (benchmarks, data file, template, CoT suffix), exactly as that run
    rendered them. A response that reached its end token gets the tokenizer's EOS appended (decoding dropped
    it); a truncated one does not. ``opts.samples_model`` picks the model (default: the run's first),
    ``opts.limit`` the first problems and ``sampling.n`` the sample indices below n.
    """
    import yaml

    from reprokit.evaluation import parse_models
    from reprokit.evaluation import read_samples as read_sample_file

    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--samples {path}: no such file; pass the samples.jsonl of a pass_at_k run folder")
    config_path = path.parent / "config.yaml"
    if not config_path.is_file():
        raise SystemExit(
            f"--samples {path}: no {config_path} beside it; the prompts are rebuilt from the pass_at_k run's "
            "config, so keep samples.jsonl in its run folder"
        )
    config = yaml.safe_load(config_path.read_text()) or {}
    data = config.get("data") or {}
    model = opts.samples_model or next(iter(parse_models((config.get("eval") or {}).get("models") or ["?"])))
    samples = [s for s in read_sample_file(path) if s.model == model and s.sample_index < sampling.n]
    if not samples:
        raise SystemExit(f"--samples {path}: no responses of model {model!r} (set --samples_model to one of its models)")
    questions = _pass_at_k_questions(data)
    order = list(dict.fromkeys(s.problem_id for s in samples))
    keep = set(order[: opts.limit] if opts.limit else order)
    missing = sorted(keep - set(questions))
    if missing:
        raise SystemExit(
            f"--samples {path}: problem {missing[0]!r} is not among the problems of {config_path} "
            "(data.benchmarks / data.path); run the analysis where the pass_at_k run found its data"
        )
    sampled_at = _sampling_temperature(path.parent / "sampling.json")
    if sampled_at is not None and sampled_at != sampling.temperature:
        print(
            f"[reprokit] note: {path} was sampled at temperature {sampled_at}, the entropies are computed at "
            f"--temperature {sampling.temperature}; pass --temperature {sampled_at} to measure the sampling distribution"
        )
    template, cot_suffix = data.get("template", "qwen25-math-cot"), data.get("cot_suffix", True)
    examples = [Example(pid, questions[pid], "", {}) for pid in order if pid in keep]
    items = {
        item.example_id: item
        for item in tokenize_examples(
            examples, tokenizer, template=template, cot_suffix=cot_suffix, max_prompt_length=1 << 30
        )
    }
    out = Responses([], [], [], [], [], source=f"samples: {path} (model {model})")
    eos = tokenizer.eos_token_id
    position = {pid: i for i, pid in enumerate(order)}
    chosen = sorted((s for s in samples if s.problem_id in keep), key=lambda s: (position[s.problem_id], s.sample_index))
    for sample in chosen:
        item = items[sample.problem_id]
        ids = tokenizer(sample.text, add_special_tokens=False)["input_ids"]
        out.prompt_ids.append(list(item.input_ids))
        out.response_ids.append(ids + ([eos] if eos is not None and not sample.truncated else []))
        out.example_ids.append(sample.problem_id)
        out.prompts.append(item.prompt)
        out.texts.append(sample.text)
    return out


def _sampling_temperature(path: Path) -> float | None:
    """The temperature a pass_at_k run sampled at (its sampling.json), if recorded."""
    try:
        return float(json.loads(path.read_text())["settings"]["temperature"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pass_at_k_questions(data: dict) -> dict[str, str]:
    """problem_id -> question for the problems of a pass_at_k run (its ``data`` config section)."""
    from reprokit.recipes.pass_at_k import EvalData, load_eval_problems

    known = set(EvalData.__dataclass_fields__)
    problems = load_eval_problems(EvalData(**{k: v for k, v in data.items() if k in known}))
    return {ex.id: ex.question for examples in problems.values() for ex in examples}


def write_responses(responses: Responses, path: Path) -> None:
    with path.open("w") as f:
        for i in range(len(responses)):
            row = {
                "example_id": responses.example_ids[i],
                "prompt": responses.prompts[i],
                "response": responses.texts[i],
                "num_tokens": len(responses.response_ids[i]),
            }
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_responses(model, responses: Responses, sampling: EntropySampling, desc: str = "entropy") -> Scores:
    """Entropy of softmax(logits / T) at every response position of every response, under ``model``."""
    device = next(model.parameters()).device
    pad_id = 0  # padding is masked out of attention and cut from the results: any id will do
    pieces: list[torch.Tensor] = []
    # Similar lengths share a batch (less padding); results are put back in response order at the end.
    order = sorted(range(len(responses)), key=lambda i: len(responses.prompt_ids[i]) + len(responses.response_ids[i]))
    by_index: dict[int, torch.Tensor] = {}
    for begin in tqdm(range(0, len(order), sampling.score_batch_size), desc=desc, unit="batch", leave=False):
        rows = order[begin : begin + sampling.score_batch_size]
        prompts = [responses.prompt_ids[i] for i in rows]
        answers = [responses.response_ids[i] for i in rows]
        width_p = max(len(p) for p in prompts)
        width_r = max(1, max(len(r) for r in answers))
        seq = torch.full((len(rows), width_p + width_r), pad_id, dtype=torch.long)  # [B, L+T]
        mask = torch.zeros_like(seq)  # [B, L+T]
        for j, (p, r) in enumerate(zip(prompts, answers)):
            # Prompts left-padded and responses right-padded, as in a rollout: the response starts at width_p.
            seq[j, width_p - len(p) : width_p] = torch.tensor(p)
            seq[j, width_p : width_p + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[j, width_p - len(p) : width_p + len(r)] = 1
        seq, mask = seq.to(device), mask.to(device)
        # The hidden state at position i predicts token i+1: the response's tokens are predicted from width_p - 1 on.
        _, entropy = response_logprobs(
            model, seq, mask, seq[:, width_p:], first=width_p - 1, temperature=sampling.temperature,
            chunk_size=sampling.chunk_size,
        )  # [B, T]
        for j, i in enumerate(rows):
            by_index[i] = entropy[j, : len(answers[j])].float().cpu()  # [T_i]
    for i in range(len(responses)):
        pieces.append(by_index[i])
    return Scores(entropy=torch.cat(pieces) if pieces else torch.zeros(0), lengths=[len(p) for p in pieces])


# ---------------------------------------------------------------------------------------------- statistics


def entropy_summary(entropy: torch.Tensor, rho: float) -> dict:
    """TokenEntropy's mean, percentiles and fraction below 0.01, plus the pooled top-rho threshold."""
    metric = TokenEntropy(quantiles=QUANTILES, low=0.01, threshold=0.672)
    metric.update(entropy)
    values = {k: float(v) for k, v in metric.compute().items()}
    threshold = float(quantiles(entropy, (1.0 - rho,))[0])
    return {
        "num_tokens": int(entropy.numel()),
        **values,
        "low": 0.01,
        "high": 0.672,
        "rho": rho,
        "top_rho_threshold": threshold,
        "top_rho_count": int((entropy.double() >= threshold).sum()),
    }


def high_entropy_tokens(responses: Responses, scores: Scores, tokenizer, threshold: float) -> list[dict]:
    """Tokens at positions with entropy >= ``threshold``, most frequent first.

    Each row: rank, token_id, token (decoded, whitespace made visible), count (at high-entropy positions),
    share (of all high-entropy positions), occurrences (anywhere in the responses), high_rate
    (count / occurrences) and mean_entropy (at the high-entropy positions).
    """
    ids = torch.tensor([t for r in responses.response_ids for t in r], dtype=torch.long)  # [N]
    high = scores.entropy.double() >= threshold  # [N]
    counts = Counter(ids[high].tolist())
    everywhere = Counter(ids.tolist())
    sums: dict[int, float] = {}
    for token, value in zip(ids[high].tolist(), scores.entropy[high].tolist()):
        sums[token] = sums.get(token, 0.0) + value
    total = max(1, int(high.sum()))
    ordered = sorted(counts, key=lambda t: (-counts[t], t))
    return [
        {
            "rank": rank,
            "token_id": token,
            "token": visible(tokenizer.decode([token])),
            "count": counts[token],
            "share": counts[token] / total,
            "occurrences": everywhere[token],
            "high_rate": counts[token] / everywhere[token],
            "mean_entropy": sums[token] / counts[token],
        }
        for rank, token in enumerate(ordered, 1)
    ]


def visible(text: str) -> str:
    """Whitespace made readable in tables and plots: ' wait' -> '␣wait', newline -> '\\n'."""
    return text.replace(" ", "␣").replace("\n", "\\n").replace("\t", "\\t") or "∅"


def checkpoints_of(run_dir: str | Path, limit: int | None) -> list[tuple[int, Path]]:
    """(step, path) of RUN/checkpoints/step-N.ckpt, by step; at most ``limit``, evenly spaced, last included."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for path in folder.glob("step-*.ckpt"):
        match = re.fullmatch(r"step-(\d+)\.ckpt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    found.sort()
    if not found:
        raise SystemExit(
            f"--run_dir_of_training {run_dir}: no checkpoints/step-N.ckpt files; point it at the run directory "
            "of a training recipe (one_shot, focal_tokens) that saved checkpoints"
        )
    if limit is not None and len(found) > limit:
        picks = sorted({round(i * (len(found) - 1) / (limit - 1)) for i in range(limit)} if limit > 1 else {len(found) - 1})
        found = [found[i] for i in picks]
    return found


def overlap_by_step(responses: Responses, base: Scores, opts: EntropyOptions, sampling: EntropySampling) -> tuple[list[dict], dict[str, np.ndarray]]:
    """For every checkpoint: overlap of its top-rho entropy positions with the base's, on the base's tokens.

    Returns the rows of overlap.csv (step 0 is the base itself) and ``{"step_N": entropies}`` (each in the
    order of token_entropy.npz) for overlap_entropy.npz.
    """
    values = {}
    rows = [
        {"step": 0, "checkpoint": "base", "overlap": 1.0, "entropy_mean": float(base.entropy.double().mean())}
    ]
    for step, path in checkpoints_of(opts.run_dir_of_training, opts.max_checkpoints):
        model, _ = _load(str(path), opts)
        scores = score_responses(model, responses, sampling, desc=f"entropy (step {step})")
        del model
        free_memory()
        values[f"step_{step}"] = scores.entropy.numpy()
        metric = HighEntropyOverlap(rho=opts.rho)
        metric.update(base.entropy, scores.entropy)
        overlap = float(metric.compute())
        mean = float(scores.entropy.double().mean())
        rows.append({"step": step, "checkpoint": str(path), "overlap": overlap, "entropy_mean": mean})
        print(f"[reprokit] step {step}: top-{opts.rho:.0%} overlap with the base {overlap:.3f}")
    return rows, values


# ---------------------------------------------------------------------------------------------- outputs


def _save_values(responses: Responses, scores: Scores, path: Path) -> None:
    response = np.repeat(np.arange(len(scores.lengths)), scores.lengths)
    position = np.concatenate([np.arange(n) for n in scores.lengths]) if scores.lengths else np.zeros(0, int)
    np.savez_compressed(
        path,
        entropy=scores.entropy.numpy(),
        token_id=np.array([t for r in responses.response_ids for t in r], dtype=np.int64),
        response=response,
        position=position,
    )


def write_token_table(table: list[dict], path: Path) -> None:
    columns = ["rank", "token_id", "token", "count", "share", "occurrences", "high_rate", "mean_entropy"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)


def write_overlap(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "overlap", "entropy_mean", "checkpoint"])
        writer.writeheader()
        writer.writerows(rows)


def _report(stats: dict, table: list[dict], run_dir: Path) -> None:
    print(
        f"[reprokit] {stats['num_tokens']} tokens in {stats['num_responses']} responses: mean entropy "
        f"{stats['mean']:.3f} nats, p50 {stats['p50']:.4f}, p80 {stats['p80']:.3f}, "
        f"{stats['frac_low']:.1%} below 0.01"
    )
    words = ", ".join(repr(row["token"]) for row in table[:10])
    print(f"[reprokit] most frequent top-{stats['rho']:.0%} entropy tokens: {words}")
    print(f"[reprokit] outputs in {run_dir}: entropy_stats.json, entropy_hist.png, top_tokens.csv, top_tokens.png")
    if "overlap" in stats:
        print(f"[reprokit] overlap with the base per step: {run_dir / 'overlap.csv'}, {run_dir / 'overlap.png'}")


if __name__ == "__main__":
    main()
