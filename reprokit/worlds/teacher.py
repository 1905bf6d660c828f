"""Who writes the world's solutions: the careful and sloppy writers of the pretraining corpus and the
alternative teacher of distillation, all ending in ``\\boxed{answer}``.

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

import functools
import random

from reprokit.worlds.config import WorldConfig
from reprokit.worlds.task import (
    Problem,
    Splits,
    answer_text,
    apply_op,
    make_problem,
    make_splits,
    parse_question,
    render_prompt,
    running_values,
    sample_chain,
)

__all__ = [
    "PRETRAINING_STYLES",
    "STYLES",
    "blind_spot_facts",
    "build_corpus",
    "max_response_chars",
    "write_solution",
]

STYLES = ("careful", "sloppy", "checking", "teacher", "teacher_alt")
PRETRAINING_STYLES = ("careful", "sloppy", "checking")


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


@functools.lru_cache(maxsize=16)
def _blind_spots(seed: int, modulus: int, operations: tuple[str, ...], count: int) -> dict:
    """{fact: its wrong result} for ``count`` facts drawn from the seed: every pretraining writer gets them wrong."""
    if count == 0:
        return {}
    rng = random.Random(f"blind-spots-{seed}")
    facts = [(a, op, b) for a in range(modulus) for op in operations for b in range(1, modulus)]
    return {f: _wrong_digit(rng, apply_op(f[0], f[1], f[2], modulus), modulus) for f in sorted(rng.sample(facts, count))}


def blind_spot_facts(cfg: WorldConfig) -> dict[tuple[int, str, int], int]:
    """The world's blind spots: fact (a, op, b) -> the wrong result every pretraining writer writes."""
    return dict(_blind_spots(cfg.seed, cfg.modulus, cfg.operations, cfg.blind_spots))


def write_solution(problem: Problem | str, style: str, cfg: WorldConfig, rng: random.Random | None = None) -> str:
    """The solution text (without the prompt, without EOS) of ``problem`` in ``style``.

    careful: one line ``a<op>b=c`` per step, all correct, then ``\\boxed{answer}``; preceded by a line
    ``cfg.careful_marker`` when that is set.
    sloppy: the same, but the result of fact a<op>b is written as that fact's fixed wrong digit with
    the fact's error rate (see ``WorldConfig.sloppy_error_spread``); later steps start from the
    written (wrong) value and the box holds the values as written. Needs ``rng``.
    checking: the sloppy writer's steps, each followed with probability ``cfg.check_rate`` by a check line
    ``cfg.check_marker`` + the step recomputed (right), the chain going on from the checked value. Needs ``rng``.
    Every pretraining style above writes the world's blind-spot facts wrong (see ``WorldConfig.blind_spots``).
    teacher: the careful layout with every fact right, blind spots included (the distillation teacher).
    teacher_alt: the rewriting strategy of the module docstring; always correct.
    """
    question = problem.question if isinstance(problem, Problem) else problem
    start, ops = parse_question(question)
    m = cfg.modulus
    if style in ("careful", "sloppy", "checking", "teacher"):
        if style in ("sloppy", "checking") and rng is None:
            raise ValueError(f"write_solution(style={style!r}) needs rng=random.Random(...)")
        habits = _misconceptions(cfg.seed, m, cfg.operations, cfg.sloppy_error_rate, cfg.sloppy_error_spread)
        blind = {} if style == "teacher" else _blind_spots(cfg.seed, m, cfg.operations, cfg.blind_spots)
        marked = style in ("careful", "teacher") and cfg.careful_marker
        values, lines = [start], [cfg.careful_marker] if marked else []
        for op, x in ops:
            fact = (values[-1], op, x)
            right = blind.get(fact, apply_op(values[-1], op, x, m))
            result = right
            if style in ("sloppy", "checking"):
                rate, wrong = habits[fact]
                if fact not in blind and rng.random() < rate:
                    result = wrong
            lines.append(f"{values[-1]}{op}{x}={result}")
            if style == "checking" and rng.random() < cfg.check_rate:
                lines.append(f"{cfg.check_marker}{values[-1]}{op}{x}={right}")
                result = right
            values.append(result)
    elif style == "teacher_alt":
        values = running_values(start, ops, m)
        rest = [f"{op}{x}" for op, x in ops]
        lines = []
        for i in range(len(ops) + 1):
            done = values[: i + 1] if cfg.answer_format == "running" else values[i : i + 1]
            lines.append("".join(map(str, done)) + "|" + "".join(rest[i:]))
    else:
        raise ValueError(f"unknown solution style {style!r}; use one of {STYLES}")
    lines.append("\\boxed{" + answer_text(values, cfg.answer_format) + "}")
    return "\n".join(lines)


def build_corpus(cfg: WorldConfig, splits: Splits | None = None) -> list[tuple[str, str]]:
    """The noisy-teacher pretraining corpus: ``cfg.corpus_size`` (prompt, solution) pairs.

    Problems are drawn with replacement from min_steps..max_steps (step count uniform), skipping every
    question of ``splits``; a fraction ``sloppy_fraction`` of solutions is sloppy, ``check_fraction`` by the
    checking writer, the rest careful.
    """
    splits = make_splits(cfg) if splits is None else splits
    held_out = {p.question for _, ps in splits.items() for p in ps}
    rng = random.Random(f"corpus-{cfg.seed}")
    pairs = []
    while len(pairs) < cfg.corpus_size:
        start, ops = sample_chain(rng, rng.randint(cfg.min_steps, cfg.max_steps), cfg)
        problem = make_problem("", start, ops, cfg)
        if problem.question in held_out:
            continue
        draw = rng.random()
        style = "sloppy" if draw < cfg.sloppy_fraction else "careful"
        if cfg.check_fraction and cfg.sloppy_fraction <= draw < cfg.sloppy_fraction + cfg.check_fraction:
            style = "checking"
        pairs.append((render_prompt(problem.question), write_solution(problem, style, cfg, rng)))
    return pairs


def max_response_chars(steps: int, modulus: int = 10) -> int:
    """Length in characters (= tokens) of the longest solution any style writes for ``steps`` operations."""
    s = steps
    d = len(str(modulus - 1))
    box = len("\\boxed{}") + (s + 1) * d
    careful = 2 * s * (3 * d + 3) + 5 + box  # "a+b=c\n" per step, a check line after each at most, a marker line
    alt = sum((i + 1) * d + 1 + (s - i) * (d + 1) + 1 for i in range(s + 1)) + box  # "values|rest\n" per line
    return max(careful, alt)


