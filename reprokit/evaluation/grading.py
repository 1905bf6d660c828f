"""Sampling responses into the samples file and grading them: resumable (only missing samples are generated),
re-gradable with another reward without sampling, and read back as per-problem correctness.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reprokit.data import Example, collate_prompts, tokenize_examples
from reprokit.data.batching import get_pad_token_id
from reprokit.data.templates import render_prompt, uses_chat_markup
from reprokit.evaluation.samples import Sample, SampleWriter, read_samples, write_samples_atomically
from reprokit.evaluation.specs import model_device
from reprokit.rewards import reward_keywords, score
from reprokit.sampling import sample_and_grade, seeded_generator

__all__ = [
    "SamplingReport",
    "correctness_by_problem",
    "grade",
    "regrade_samples",
    "render_prompts",
    "sample_to_jsonl",
]


@dataclass
class SamplingReport:
    """What one :func:`sample_to_jsonl` call did."""

    generated: int
    """Responses generated (and appended)."""
    problems: int
    """Problems that needed at least one response."""
    skipped: int
    """Responses already in the file, not generated again."""
    seconds: float
    tokens: int


def grade(
    reward_fn: Callable[..., list[float]], texts: list[str], examples: Sequence[Example], counts: Sequence[int]
) -> list[float]:
    """Rewards of ``texts``, where example i owns the next ``counts[i]`` texts."""
    answers = [ex.answer for ex, times in zip(examples, counts) for _ in range(times)]
    return score(reward_fn, texts, answers, reward_keywords([ex.fields for ex in examples], counts))


def _batch_seed(seed: int, model_name: str, problem_ids: Sequence[str], indices: Sequence[int]) -> int:
    """A seed fixed by what the batch generates, so a resumed run draws what an uninterrupted one would."""
    text = f"{seed}|{model_name}|{','.join(problem_ids)}|{','.join(map(str, indices))}"
    return zlib.crc32(text.encode())


def sample_to_jsonl(
    model,
    tokenizer,
    examples: Sequence[Example],
    path: str | Path,
    *,
    model_name: str,
    n: int,
    reward_fn: Callable[..., list[float]],
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 3072,
    batch_problems: int = 1,
    max_batch_sequences: int | None = None,
    template: str = "qwen25-math-cot",
    cot_suffix: bool = True,
    max_prompt_length: int = 4096,
    seed: int = 0,
    existing: Iterable[tuple[str, str, int]] | None = None,
    progress: bool = True,
) -> SamplingReport:
    """Sample the indices ``0..n-1`` of every example that the samples file lacks, grade them, append them.

    Problems whose missing responses number the same are batched ``batch_problems`` at a time (one
    ``reprokit.sampling.generate`` call of ``batch_problems x missing`` sequences, at most ``max_batch_sequences``;
    a problem missing more than that is split over several calls); each batch is graded with
    ``reward_fn`` and appended (flushed) before the next starts. Each batch's sampling seed is fixed by
    ``seed``, the model name, its problems and sample indices.

    Args:
        existing: keys ``(model, problem_id, sample_index)`` already present; None reads them from ``path``.
        examples: problems with ``fields["benchmark"]`` set (as ``load_benchmark`` does).

    Returns:
        A :class:`SamplingReport`.
    """
    from tqdm.auto import tqdm

    from reprokit.policy import eos_token_ids

    if n < 1 or batch_problems < 1:
        raise ValueError(f"sample_to_jsonl: n={n} and batch_problems={batch_problems} must be >= 1")
    path = Path(path)
    if existing is None:
        existing = (s.key for s in read_samples(path, repair=True))
    cap = max_batch_sequences or n
    units, missing_of, skipped = _work_units(examples, set(existing), model_name, n, cap)
    report = SamplingReport(generated=0, problems=len(missing_of), skipped=skipped, seconds=0.0, tokens=0)
    if not missing_of:
        return report

    # Tokenize everything first: an over-long prompt fails now, not hours into the run.
    need = list({ex.id: ex for group in units.values() for ex, _ in group}.values())
    items = {
        item.example_id: item
        for item in tokenize_examples(
            need, tokenizer, template=template, cot_suffix=cot_suffix, max_prompt_length=max_prompt_length
        )
    }
    pad_id = get_pad_token_id(tokenizer)
    eos_ids = eos_token_ids(tokenizer, model)
    device = model_device(model)
    start = time.perf_counter()
    bar = tqdm(
        total=len(missing_of), unit="problem", desc=f"sampling {model_name}", disable=not progress, dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.4g}/{total} [{elapsed}<{remaining}{postfix}]",
    )
    with SampleWriter(path) as writer:
        for count, group in units.items():
            per_call = max(1, min(batch_problems, cap // count))
            for begin in range(0, len(group), per_call):
                chunk = group[begin : begin + per_call]
                batch = collate_prompts([items[ex.id] for ex, _ in chunk], pad_id)
                problem_ids = [ex.id for ex, _ in chunk]
                key = _batch_seed(seed, model_name, problem_ids, [i for _, part in chunk for i in part])
                graded = sample_and_grade(
                    model, tokenizer, batch.input_ids.to(device), batch.attention_mask.to(device),
                    [ex.answer for ex, _ in chunk], [ex.fields for ex, _ in chunk], n=count, reward_fn=reward_fn,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, eos_ids=eos_ids,
                    generator=seeded_generator(device, key), reward_generator=seeded_generator("cpu", key, "reward"),
                )
                rows = _samples(graded, chunk, model_name)
                writer.write(rows)
                report.generated += len(rows)
                report.tokens += graded.comps.num_tokens
                elapsed = time.perf_counter() - start
                # A problem split over several calls advances the bar by its share per call.
                bar.update(sum(len(indices) / missing_of[ex.id] for ex, indices in chunk))
                bar.set_postfix(samples_per_s=f"{report.generated / max(elapsed, 1e-9):.1f}", tokens=report.tokens)
    bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _samples(graded, chunk: list[tuple[Example, list[int]]], model_name: str) -> list[Sample]:
    """The samples-file rows of one graded batch: ``chunk``'s problems with their sample indices, in order."""
    comps, rewards, count = graded.comps, graded.rewards.tolist(), graded.n
    lengths, truncated = comps.lengths.tolist(), comps.truncated.tolist()
    rows = []
    for p, (ex, indices) in enumerate(chunk):
        for j, index in enumerate(indices):
            r = p * count + j  # generate() is group-contiguous
            rows.append(Sample(
                model=model_name, benchmark=str(ex.fields.get("benchmark", "")), problem_id=ex.id, sample_index=index,
                text=comps.texts[r], correct=rewards[r], n_tokens=int(lengths[r]), truncated=bool(truncated[r]),
            ))
    return rows


def _work_units(examples, done: set, model_name: str, n: int, cap: int):
    """The (problem, sample indices) still to sample, at most ``cap`` indices each, grouped by size so that one
    generate call draws the same number of responses for every prompt in it; the count missing per problem and
    the count already there."""
    units: dict[int, list[tuple[Example, list[int]]]] = defaultdict(list)
    missing_of: dict[str, int] = {}
    skipped = 0
    for ex in examples:
        missing = [i for i in range(n) if (model_name, ex.id, i) not in done]
        skipped += n - len(missing)
        if missing:
            missing_of[ex.id] = len(missing)
            for begin in range(0, len(missing), cap):
                part = missing[begin : begin + cap]
                units[len(part)].append((ex, part))
    return units, missing_of, skipped


def regrade_samples(
    path: str | Path,
    examples: Mapping[str, Example] | Sequence[Example],
    reward_fn: Callable[..., list[float]],
    *,
    chunk_size: int = 2048,
    progress: bool = True,
) -> dict[str, int]:
    """Grade every sample in the file again with ``reward_fn`` and rewrite the file (atomically); no sampling.

    Samples of problems not in ``examples`` keep their grade (counted as ``unknown``).

    Returns:
        ``{"samples", "regraded", "changed", "unknown"}`` counts.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    if not isinstance(examples, Mapping):
        examples = {ex.id: ex for ex in examples}
    samples = read_samples(path, repair=True)
    known = [s for s in samples if s.problem_id in examples]
    changed = 0
    bar = tqdm(total=len(known), unit="sample", desc="regrading", disable=not progress, dynamic_ncols=True)
    for begin in range(0, len(known), chunk_size):
        part = known[begin : begin + chunk_size]
        rewards = grade(reward_fn, [s.text for s in part], [examples[s.problem_id] for s in part], [1] * len(part))
        for sample, reward in zip(part, rewards):
            changed += reward != sample.correct
            sample.correct = reward
        bar.update(len(part))
    bar.close()
    write_samples_atomically(path, samples)
    return {"samples": len(samples), "regraded": len(known), "changed": changed, "unknown": len(samples) - len(known)}


def correctness_by_problem(
    samples: Iterable[Sample], model: str, examples: Sequence[Example], n: int | None = None
) -> dict[str, list[float]]:
    """``{problem_id: [reward of sample 0, 1, ...]}`` of one model over ``examples`` (sample indices < n).

    Problems without samples map to an empty list.
    """
    table: dict[str, dict[int, float]] = {ex.id: {} for ex in examples}
    for s in samples:
        if s.model == model and s.problem_id in table and (n is None or s.sample_index < n):
            table[s.problem_id][s.sample_index] = s.correct
    return {pid: [by_index[i] for i in sorted(by_index)] for pid, by_index in table.items()}


def render_prompts(
    examples: Sequence[Example], tokenizer, *, template: str, cot_suffix: bool
) -> tuple[list[str], bool]:
    """Prompt texts as sampling renders them, and the ``add_special_tokens`` flag to tokenize them with."""
    prompts = [render_prompt(ex.question, template, tokenizer, cot_suffix=cot_suffix) for ex in examples]
    return prompts, not uses_chat_markup(template)
