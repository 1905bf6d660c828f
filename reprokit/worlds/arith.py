"""The arithmetic-chain world: a synthetic task family small enough to pretrain a base model on CPU.

A problem is a chain of single-digit operations evaluated left to right modulo ``m`` (10 by default):

    question  3+4*2+7          start at 3, then +4, *2, +7, each result reduced mod 10
    prompt    "3+4*2+7\\n"      the raw question plus PROMPT_SEPARATOR (template "none", no CoT suffix)
    answer    3741             the running values 3, 7, 4, 1 written as one integer

The answer lists every running value (``answer_format="running"``) rather than only the last one,
because a one-digit answer can be guessed: a sampler that boxes a uniform random digit has
pass@16 = 1 - 0.9**16 = 0.81 and pass@64 = 0.999, so pass@k at large k would measure guessing, not
solving. The running answer has 10**steps values, and the start digit is never 0, so it is a plain
integer without leading zeros and the kit's math reward reads it the same way. ``"final"`` keeps the
last value only, for comparison.

Solutions come in three styles (see :func:`write_solution`), all ending in ``\\boxed{answer}``:

    careful      3+4=7            every step on its own line, always correct
                 7*2=4
                 4+7=1
                 \\boxed{3741}
    sloppy       same layout; the teacher has a fixed wrong result for every fact a<op>b and
                 writes it with that fact's error rate (mean ``sloppy_error_rate``, uneven across
                 facts); later steps continue from the wrong value, so the box is consistent
                 with the written chain, and wrong
    teacher_alt  3|+4*2+7         rewrite the problem: values so far | operations still to do;
                 37|*2+7          each line reads the last value and the next operation right
                 374|+7           beside the "|" (no look-up by position into the question) and
                 3741|            copies the rest, so the same local rule solves chains of any
                 \\boxed{3741}     length. Never in the pretraining corpus ("|" appears nowhere in it).

The pretraining corpus mixes careful and sloppy solutions (``sloppy_fraction``) of problems drawn
from ``min_steps..max_steps``; no question of the train, test or hard split is in it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reprokit.rewards.math import extract_boxed

__all__ = [
    "ANSWER_FORMATS",
    "EOS_TOKEN",
    "OPERATIONS",
    "PROMPT_FORMAT",
    "PROMPT_SEPARATOR",
    "PROMPT_TEMPLATE",
    "STYLES",
    "Problem",
    "Splits",
    "WorldConfig",
    "alphabet",
    "apply_op",
    "build_corpus",
    "build_tokenizer",
    "config_hash",
    "export_splits",
    "grade",
    "make_splits",
    "max_response_chars",
    "parse_question",
    "render_prompt",
    "reward",
    "solution_pairs",
    "teacher_error_rates",
    "write_solution",
]

OPERATIONS = ("+", "-", "*")
ANSWER_FORMATS = ("running", "final")
STYLES = ("careful", "sloppy", "teacher_alt")

# The prompt is the bare question plus a newline: template "none", no CoT suffix. PROMPT_FORMAT is the
# same thing as a reprokit.data.render_prompt format string (use it with cot_suffix=False).
PROMPT_TEMPLATE = "none"
PROMPT_SEPARATOR = "\n"
PROMPT_FORMAT = "{question}" + PROMPT_SEPARATOR
EOS_TOKEN = "<|endoftext|>"

# Bumped whenever problem sampling, solution text or training changes meaning, so old caches are not reused.
WORLD_VERSION = 3


@dataclass
class WorldConfig:
    """Everything that defines the arithmetic world and its pretrained base model.

    Two configs that compare equal give the same splits, corpus and base model (see :func:`config_hash`).
    """

    seed: int = 0
    """Seed for the splits, the corpus, the noisy teacher and the model's initialisation."""
    modulus: int = 10
    """Every running value is reduced modulo this; values and operands are single digits when <= 10."""
    operations: tuple[str, ...] = ("+", "*")
    """Operations a step may use, from '+', '-', '*'."""
    min_steps: int = 2
    """Fewest operations in a pretraining-corpus, train or test problem."""
    max_steps: int = 5
    """Most operations in a pretraining-corpus, train or test problem."""
    hard_min_steps: int = 6
    """Fewest operations in a hard-slice problem (longer than anything pretraining saw)."""
    hard_max_steps: int = 7
    """Most operations in a hard-slice problem."""
    answer_format: str = "running"
    """'running': the answer is every running value as one integer (3+4*2+7 -> 3741), too many values to
    guess; 'final': only the last value (one digit, guessed by chance 1 time in 10)."""
    num_train: int = 1000
    """Problems in the train split (RL prompts, distillation problems)."""
    num_test: int = 200
    """Problems in the test split (same step counts as pretraining)."""
    num_hard: int = 100
    """Problems in the hard slice (hard_min_steps..hard_max_steps operations)."""
    corpus_size: int = 60_000
    """Solved problems in the pretraining corpus."""
    sloppy_fraction: float = 0.8
    """Fraction of corpus solutions written by the sloppy teacher; the rest are careful."""
    sloppy_error_rate: float = 0.4
    """Mean probability that the sloppy teacher writes a step's result wrong (mean over facts a<op>b)."""
    sloppy_error_spread: float = 1.0
    """How unevenly the sloppy teacher's errors fall on facts: fact a<op>b is written wrong with rate
    sloppy_error_rate * w, w ~ Gamma(mean 1, coefficient of variation = this), clipped to 1; 0 makes
    every fact equally error-prone. The wrong result of a fact is always the same digit (a fixed
    misconception), so some problems are hard for the base model and others easy."""
    careful_marker: str = ""
    """A line the careful teacher writes before its steps (e.g. "#"); sloppy solutions never have it. Empty
    (the default): careful and sloppy solutions look alike, and only the digits tell them apart. With a
    marker, "be careful" is a mode the base can be switched into by its first token, which is what 1-shot RL
    needs to generalize (see README, "What the CPU world shows")."""
    hidden_size: int = 128
    """Base model width."""
    num_layers: int = 4
    """Base model transformer blocks."""
    num_heads: int = 4
    """Attention heads per block."""
    intermediate_size: int = 512
    """MLP width of each block."""
    pretrain_steps: int = 1000
    """Optimizer steps of pretraining."""
    batch_size: int = 64
    """Sequences per pretraining step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    eval_samples: int = 64
    """Samples per problem for the base model's pass@k in base_metrics.json."""
    eval_temperature: float = 1.0
    """Sampling temperature for base_metrics.json."""

    def __post_init__(self) -> None:
        self.operations = tuple(self.operations)
        bad = [op for op in self.operations if op not in OPERATIONS]
        if bad or not self.operations:
            raise ValueError(f"WorldConfig.operations={self.operations!r}: use a non-empty subset of {OPERATIONS}")
        if self.modulus < 2:
            raise ValueError(f"WorldConfig.modulus={self.modulus}: must be at least 2")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"WorldConfig.answer_format={self.answer_format!r}: use one of {ANSWER_FORMATS}")
        if self.answer_format == "running" and self.modulus > 10:
            raise ValueError(
                f"WorldConfig.answer_format='running' needs single-digit values but modulus={self.modulus}; "
                "use modulus <= 10 or answer_format='final'"
            )
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"WorldConfig: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not self.max_steps < self.hard_min_steps <= self.hard_max_steps:
            raise ValueError(
                "WorldConfig: the hard slice must be longer than pretraining: need max_steps < hard_min_steps <= "
                f"hard_max_steps, got {self.max_steps}, {self.hard_min_steps}, {self.hard_max_steps}"
            )
        if not 0.0 <= self.sloppy_fraction <= 1.0 or not 0.0 <= self.sloppy_error_rate <= 1.0:
            raise ValueError(
                f"WorldConfig.sloppy_fraction={self.sloppy_fraction}, sloppy_error_rate={self.sloppy_error_rate}: "
                "both are probabilities in [0, 1]"
            )
        if self.sloppy_error_spread < 0:
            raise ValueError(f"WorldConfig.sloppy_error_spread={self.sloppy_error_spread}: must be >= 0")
        if len(self.careful_marker) > 4 or any(c.isdigit() or c.isspace() or c in "\\{}" for c in self.careful_marker):
            raise ValueError(
                f"WorldConfig.careful_marker={self.careful_marker!r}: use at most 4 characters, none of them a digit, "
                "a space or newline, a backslash or a brace (they would read as part of a step or the answer), e.g. '#'"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"WorldConfig.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        for name in ("num_train", "num_test", "num_hard", "corpus_size", "pretrain_steps", "batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name}={getattr(self, name)}: must be at least 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["operations"] = list(self.operations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WorldConfig:
        """The inverse of :meth:`to_dict`; also reads a ``world.json`` (its ``config_hash`` key is ignored)."""
        return cls(**{k: v for k, v in d.items() if k != "config_hash"})


def config_hash(cfg: WorldConfig) -> str:
    """A short stable name for ``cfg`` (and the world's code version): the base model's cache folder."""
    values = cfg.to_dict()
    if not values["careful_marker"]:  # added after version 3: off, it leaves the hash (and the cache) as it was
        del values["careful_marker"]
    text = json.dumps({"version": WORLD_VERSION, **values}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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


def _running_values(start: int, ops: Sequence[tuple[str, int]], modulus: int) -> list[int]:
    values = [start]
    for op, x in ops:
        values.append(apply_op(values[-1], op, x, modulus))
    return values


def _answer_text(values: Sequence[int], answer_format: str) -> str:
    return "".join(str(v) for v in values) if answer_format == "running" else str(values[-1])


def _make_problem(pid: str, start: int, ops: Sequence[tuple[str, int]], cfg: WorldConfig) -> Problem:
    question = str(start) + "".join(f"{op}{x}" for op, x in ops)
    values = _running_values(start, ops, cfg.modulus)
    return Problem(id=pid, question=question, answer=_answer_text(values, cfg.answer_format), steps=len(ops))


def _sample_chain(rng: random.Random, steps: int, cfg: WorldConfig) -> tuple[int, list[tuple[str, int]]]:
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
        start, ops = _sample_chain(rng, rng.randint(lo, hi), cfg)
        p = _make_problem(f"{prefix}-{len(out):05d}", start, ops, cfg)
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


# ---------------------------------------------------------------------------------------------- solutions


def _wrong_digit(rng: random.Random, right: int, modulus: int) -> int:
    wrong = rng.randrange(modulus - 1)
    return wrong + (wrong >= right)


@functools.lru_cache(maxsize=16)
def _misconceptions(seed: int, modulus: int, operations: tuple[str, ...], rate: float, spread: float) -> dict:
    """The sloppy teacher's fixed habits: {(a, op, b): (error rate, wrong result)} for every fact.

    Rates are ``rate * w`` with one Gamma draw ``w`` per fact, rescaled so that w averages exactly 1 over
    the table, then clipped to 1.
    """
    rng = random.Random(f"teacher-{seed}")
    facts = [(a, op, b) for a in range(modulus) for op in operations for b in range(1, modulus)]
    if spread > 0:
        shape = 1.0 / spread**2
        weights = [rng.gammavariate(shape, 1.0 / shape) for _ in facts]
        mean = sum(weights) / len(weights)
        weights = [w / mean for w in weights]
    else:
        weights = [1.0] * len(facts)
    return {
        f: (min(1.0, rate * w), _wrong_digit(rng, apply_op(f[0], f[1], f[2], modulus), modulus))
        for f, w in zip(facts, weights)
    }


def teacher_error_rates(cfg: WorldConfig) -> dict[tuple[int, str, int], float]:
    """The sloppy teacher's error rate for every fact (a, op, b) of the world."""
    table = _misconceptions(cfg.seed, cfg.modulus, cfg.operations, cfg.sloppy_error_rate, cfg.sloppy_error_spread)
    return {f: r for f, (r, _) in table.items()}


def write_solution(problem: Problem | str, style: str, cfg: WorldConfig, rng: random.Random | None = None) -> str:
    """The solution text (without the prompt, without EOS) of ``problem`` in ``style``.

    careful: one line ``a<op>b=c`` per step, all correct, then ``\\boxed{answer}``; preceded by a line
    ``cfg.careful_marker`` when that is set.
    sloppy: the same, but the result of fact a<op>b is written as that fact's fixed wrong digit with
    the fact's error rate (see ``WorldConfig.sloppy_error_spread``); later steps start from the
    written (wrong) value and the box holds the values as written. Needs ``rng``.
    teacher_alt: the rewriting strategy of the module docstring; always correct.
    """
    question = problem.question if isinstance(problem, Problem) else problem
    start, ops = parse_question(question)
    m = cfg.modulus
    if style == "careful" or style == "sloppy":
        if style == "sloppy" and rng is None:
            raise ValueError("write_solution(style='sloppy') needs rng=random.Random(...)")
        habits = _misconceptions(cfg.seed, m, cfg.operations, cfg.sloppy_error_rate, cfg.sloppy_error_spread)
        values, lines = [start], [cfg.careful_marker] if style == "careful" and cfg.careful_marker else []
        for op, x in ops:
            result = apply_op(values[-1], op, x, m)
            if style == "sloppy":
                rate, wrong = habits[(values[-1], op, x)]
                if rng.random() < rate:
                    result = wrong
            lines.append(f"{values[-1]}{op}{x}={result}")
            values.append(result)
    elif style == "teacher_alt":
        values = _running_values(start, ops, m)
        rest = [f"{op}{x}" for op, x in ops]
        lines = []
        for i in range(len(ops) + 1):
            done = values[: i + 1] if cfg.answer_format == "running" else values[i : i + 1]
            lines.append("".join(map(str, done)) + "|" + "".join(rest[i:]))
    else:
        raise ValueError(f"unknown solution style {style!r}; use one of {STYLES}")
    lines.append("\\boxed{" + _answer_text(values, cfg.answer_format) + "}")
    return "\n".join(lines)


def render_prompt(question: str) -> str:
    """The exact prompt text: the question, then PROMPT_SEPARATOR (``"3+4*2+7\\n"``)."""
    return question + PROMPT_SEPARATOR


def solution_pairs(problems: Iterable[Problem], style: str, cfg: WorldConfig, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, solution) pairs for SFT, e.g. distillation traces: ``style="teacher_alt"``."""
    rng = random.Random(f"pairs-{seed}")
    return [(render_prompt(p.question), write_solution(p, style, cfg, rng)) for p in problems]


def build_corpus(cfg: WorldConfig, splits: Splits | None = None) -> list[tuple[str, str]]:
    """The noisy-teacher pretraining corpus: ``cfg.corpus_size`` (prompt, solution) pairs.

    Problems are drawn with replacement from min_steps..max_steps (step count uniform), skipping every
    question of ``splits``; a fraction ``sloppy_fraction`` of solutions is sloppy, the rest careful.
    """
    splits = make_splits(cfg) if splits is None else splits
    held_out = {p.question for _, ps in splits.items() for p in ps}
    rng = random.Random(f"corpus-{cfg.seed}")
    pairs = []
    while len(pairs) < cfg.corpus_size:
        start, ops = _sample_chain(rng, rng.randint(cfg.min_steps, cfg.max_steps), cfg)
        problem = _make_problem("", start, ops, cfg)
        if problem.question in held_out:
            continue
        style = "sloppy" if rng.random() < cfg.sloppy_fraction else "careful"
        pairs.append((render_prompt(problem.question), write_solution(problem, style, cfg, rng)))
    return pairs


def max_response_chars(steps: int, modulus: int = 10) -> int:
    """Length in characters (= tokens) of the longest solution any style writes for ``steps`` operations."""
    s = steps
    d = len(str(modulus - 1))
    box = len("\\boxed{}") + (s + 1) * d
    careful = s * (3 * d + 3) + box  # "a+b=c\n" per step
    alt = sum((i + 1) * d + 1 + (s - i) * (d + 1) + 1 for i in range(s + 1)) + box  # "values|rest\n" per line
    return max(careful, alt)


# ---------------------------------------------------------------------------------------------- grading


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
    """The world's reward in the kit's RewardFn form (``reprokit.worlds.arith:reward``)."""
    return [grade(c, a) for c, a in zip(completions, answers, strict=True)]


# ---------------------------------------------------------------------------------------------- tokenizer and files


def alphabet(cfg: WorldConfig) -> list[str]:
    """Every character any question, prompt or solution style of this world can contain, sorted."""
    chars = set("0123456789"[: min(cfg.modulus, 10)] if cfg.modulus <= 10 else "0123456789")
    chars |= set(cfg.operations) | set("=|\n") | set("\\boxed{}") | set(PROMPT_SEPARATOR) | set(cfg.careful_marker)
    return sorted(chars)


def build_tokenizer(cfg: WorldConfig):
    """A character-level ``PreTrainedTokenizerFast``: one id per character of :func:`alphabet`, plus
    ``<|endoftext|>`` (id 0) as EOS and PAD; left padding for generation. Characters outside the
    alphabet raise an error when encoded (there is no unknown token to hide them)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS_TOKEN: 0}
    for ch in alphabet(cfg):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, padding_side="left", model_max_length=1024
    )


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
