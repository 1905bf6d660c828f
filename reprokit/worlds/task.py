"""The arithmetic-chain task: problems and their seeded splits, the prompt, the grader and reward, the alphabet.

A problem is a chain of single-digit operations evaluated left to right modulo ``m`` (10 by default):

    question  3+4*2+7          start at 3, then +4, *2, +7, each result reduced mod 10
    prompt    "3+4*2+7\\n"      the raw question plus PROMPT_SEPARATOR (template "none", no CoT suffix)
    answer    3741             the running values 3, 7, 4, 1 written as one integer

The answer lists every running value (``answer_format="running"``) rather than only the last one,
because a one-digit answer can be guessed: a sampler that boxes a uniform random digit has
pass@16 = 1 - 0.9**16 = 0.81 and pass@64 = 0.999, so pass@k at large k would measure guessing, not
solving. The running answer has 10**steps values, and the start digit is never 0, so it is a plain
integer without leading zeros and the kit's math reward reads it the same way. ``"final"`` keeps the
last value only, for comparison. Who writes the solutions is :mod:`reprokit.worlds.teacher`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reprokit.rewards.math import extract_boxed
from reprokit.worlds.config import OPERATIONS, WorldConfig

__all__ = [
    "EOS_TOKEN",
    "PROMPT_FORMAT",
    "PROMPT_SEPARATOR",
    "PROMPT_TEMPLATE",
    "Problem",
    "Splits",
    "alphabet",
    "answer_text",
    "apply_op",
    "build_tokenizer",
    "export_splits",
    "grade",
    "make_problem",
    "make_splits",
    "parse_question",
    "render_prompt",
    "reward",
    "running_values",
    "sample_chain",
]

# The prompt is the bare question plus a newline: template "none", no CoT suffix. PROMPT_FORMAT is the
# same thing as a reprokit.data.render_prompt format string (use it with cot_suffix=False).
PROMPT_TEMPLATE = "none"
PROMPT_SEPARATOR = "\n"
PROMPT_FORMAT = "{question}" + PROMPT_SEPARATOR
EOS_TOKEN = "<|endoftext|>"


@dataclass(frozen=True)
class Problem:
    """One chain problem. ``answer`` is the gold integer as a string; ``steps`` the number of operations."""

    id: str
    question: str
    answer: str
    steps: int


@dataclass
class Splits:
    """The world's held-out problem sets; pairwise disjoint and absent from the pretraining corpus."""

    train: list[Problem] = field(default_factory=list)
    test: list[Problem] = field(default_factory=list)
    hard: list[Problem] = field(default_factory=list)

    def items(self) -> Iterable[tuple[str, list[Problem]]]:
        return (("train", self.train), ("test", self.test), ("hard", self.hard))


# ---------------------------------------------------------------------------------------------- problems


def apply_op(value: int, op: str, operand: int, modulus: int) -> int:
    if op == "+":
        return (value + operand) % modulus
    if op == "-":
        return (value - operand) % modulus
    if op == "*":
        return (value * operand) % modulus
    raise ValueError(f"unknown operation {op!r}; use one of {OPERATIONS}")


_STEP = re.compile(r"([+\-*])(\d+)")


def parse_question(question: str) -> tuple[int, list[tuple[str, int]]]:
    """``"3+4*2+7"`` -> ``(3, [("+", 4), ("*", 2), ("+", 7)])``."""
    m = re.fullmatch(r"(\d+)((?:[+\-*]\d+)+)", question.strip())
    if m is None:
        raise ValueError(f"not a chain question: {question!r} (expected e.g. '3+4*2+7')")
    return int(m.group(1)), [(op, int(x)) for op, x in _STEP.findall(m.group(2))]


def running_values(start: int, ops: Sequence[tuple[str, int]], modulus: int) -> list[int]:
    values = [start]
    for op, x in ops:
        values.append(apply_op(values[-1], op, x, modulus))
    return values


def answer_text(values: Sequence[int], answer_format: str) -> str:
    return "".join(str(v) for v in values) if answer_format == "running" else str(values[-1])


def make_problem(pid: str, start: int, ops: Sequence[tuple[str, int]], cfg: WorldConfig) -> Problem:
    question = str(start) + "".join(f"{op}{x}" for op, x in ops)
    values = running_values(start, ops, cfg.modulus)
    return Problem(id=pid, question=question, answer=answer_text(values, cfg.answer_format), steps=len(ops))


def sample_chain(rng: random.Random, steps: int, cfg: WorldConfig) -> tuple[int, list[tuple[str, int]]]:
    # Start and operands avoid 0: a running answer then never has a leading zero, and '*0' would
    # collapse the rest of the chain to a trivially guessable tail.
    start = rng.randrange(1, cfg.modulus)
    ops = [(rng.choice(cfg.operations), rng.randrange(1, cfg.modulus)) for _ in range(steps)]
    return start, ops


def _space_size(cfg: WorldConfig, lo: int, hi: int) -> int:
    per_step = len(cfg.operations) * (cfg.modulus - 1)
    return sum((cfg.modulus - 1) * per_step**s for s in range(lo, hi + 1))


def _sample_unique(rng, n, lo, hi, cfg, taken: set[str], prefix: str) -> list[Problem]:
    available = _space_size(cfg, lo, hi) - len(taken)
    if n > 0.5 * available:
        raise ValueError(
            f"WorldConfig: {n} {prefix} problems with {lo}..{hi} steps leave too few of the ~{available} free "
            f"questions; lower num_{prefix} or widen the step range"
        )
    out: list[Problem] = []
    while len(out) < n:
        start, ops = sample_chain(rng, rng.randint(lo, hi), cfg)
        p = make_problem(f"{prefix}-{len(out):05d}", start, ops, cfg)
        if p.question not in taken:
            taken.add(p.question)
            out.append(p)
    return out


def make_splits(cfg: WorldConfig) -> Splits:
    """Seeded train / test / hard splits, pairwise disjoint (the corpus avoids all three, see build_corpus).

    Step counts are uniform over the split's range; within a split no question repeats.
    """
    rng = random.Random(f"splits-{cfg.seed}")
    taken: set[str] = set()
    hard = _sample_unique(rng, cfg.num_hard, cfg.hard_min_steps, cfg.hard_max_steps, cfg, taken, "hard")
    test = _sample_unique(rng, cfg.num_test, cfg.min_steps, cfg.max_steps, cfg, taken, "test")
    train = _sample_unique(rng, cfg.num_train, cfg.min_steps, cfg.max_steps, cfg, taken, "train")
    return Splits(train=train, test=test, hard=hard)


# ---------------------------------------------------------------------------------------------- prompt and grading


def render_prompt(question: str) -> str:
    """The exact prompt text: the question, then PROMPT_SEPARATOR (``"3+4*2+7\\n"``)."""
    return question + PROMPT_SEPARATOR


_INT = re.compile(r"[+-]?\d+")


def grade(completion: str, answer: str) -> float:
    """1.0 if the last ``\\boxed{}`` of ``completion`` holds the integer ``answer``, else 0.0.

    Integers compare by value (``\\boxed{+07}`` matches ``7``), as the kit's math reward does; anything
    that is not a plain integer must match the answer's text exactly.
    """
    pred = extract_boxed(completion)
    if pred is None:
        return 0.0
    pred, gold = pred.strip(), answer.strip()
    if _INT.fullmatch(pred) and _INT.fullmatch(gold):
        return float(int(pred) == int(gold))
    return float(pred == gold)


def reward(completions: list[str], answers: list[str], **fields) -> list[float]:
    """The world's reward in the kit's RewardFn form (``world``)."""
    return [grade(c, a) for c, a in zip(completions, answers, strict=True)]


# ---------------------------------------------------------------------------------------------- tokenizer and files


def alphabet(cfg: WorldConfig) -> list[str]:
    """Every character any question, prompt or solution style of this world can contain, sorted."""
    chars = set("0123456789"[: min(cfg.modulus, 10)] if cfg.modulus <= 10 else "0123456789")
    chars |= set(cfg.operations) | set("=|\n") | set("\\boxed{}") | set(PROMPT_SEPARATOR) | set(cfg.careful_marker)
    if cfg.check_fraction:
        chars |= set(cfg.check_marker)
    return sorted(chars)


def build_tokenizer(cfg: WorldConfig):
    """A character-level tokenizer (:func:`reprokit.tiny.build_char_tokenizer`): ``<|endoftext|>`` (id 0) as EOS
    and PAD, then one id per character of :func:`alphabet`; left padding for generation. Characters outside the
    alphabet raise an error when encoded (there is no unknown token to hide them)."""
    from reprokit.tiny import build_char_tokenizer

    return build_char_tokenizer(alphabet(cfg), specials=(EOS_TOKEN,), unk_token=None, model_max_length=1024)


def export_splits(cfg: WorldConfig, out_dir: str | Path, splits: Splits | None = None) -> dict[str, Path]:
    """Write ``train.jsonl``, ``test.jsonl``, ``hard.jsonl`` (fields ``id``, ``question``, ``answer``,
    ``steps``) for the kit's generic readers; returns {split name: path}."""
    splits = make_splits(cfg) if splits is None else splits
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, problems in splits.items():
        paths[name] = out_dir / f"{name}.jsonl"
        with paths[name].open("w") as f:
            for p in problems:
                f.write(json.dumps(dataclasses.asdict(p)) + "\n")
    return paths
