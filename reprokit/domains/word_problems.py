"""Arithmetic word problems: a domain a 270 M-parameter base can partly do, plugged in as a student adds theirs.

Everything the kit needs from a domain is here and reaches it by name (``reprokit.registry``), never by import:

* benchmark ``word_problems`` (``--eval.benchmarks [word_problems]``, ``evaluate``): the 240 test problems;
* examples ``word_problems:train-00012`` (``--data.examples``), ``word_problems:train`` (every train problem),
  ``word_problems:test``;
* reward ``word_problems``: 1 when the first ``\\boxed{}`` of the response holds the answer. A base model given a
  few-shot prompt goes on after its answer with more questions and answers of its own, so the answer to this
  question is the first box, not the last (the math reward's rule);
* :data:`TEMPLATE`: the few-shot prompt, a format string with ``{question}`` (``--prompt.template``), whose two
  solved examples show the answer format.

Problems are drawn from a fixed seed: one or two operations (add, take away, share equally, groups of) on
small numbers with everyday nouns. The train split (the first 400 draws after the test split's) never repeats a
test question.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from reprokit.data import Example
from reprokit.rewards.math import extract_boxed, is_equivalent

__all__ = ["TEMPLATE", "benchmark", "examples", "make_problems", "reward"]

TEMPLATE = (
    "Question: Mia has 4 pens and gets 3 more. How many pens does Mia have now?\n"
    "Answer: 4 + 3 = 7. The answer is \\boxed{7}.\n\n"
    "Question: A box holds 5 rows of 2 eggs. How many eggs are in the box?\n"
    "Answer: 5 x 2 = 10. The answer is \\boxed{10}.\n\n"
    "Question: {question}\nAnswer:"
)
"""The few-shot prompt (Gemma-3-270M has no chat template): two solved problems, then the question."""

TEST_SIZE, TRAIN_SIZE, SEED = 240, 400, 20261207
NAMES = ("Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Eva", "Ben", "Zoe", "Raj", "Ines", "Kofi")
THINGS = ("apples", "books", "stickers", "marbles", "pencils", "cookies", "coins", "cards", "shells", "stamps")


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: int
    steps: int


def _one_step(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randint(3, 30), rng.randint(2, 20)
        return f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b
    if kind == 1:
        b = rng.randint(2, 20)
        a = b + rng.randint(2, 25)
        return f"{name} has {a} {thing} and gives away {b}. How many {thing} does {name} have left?", a - b
    if kind == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"{name} has {a} bags with {b} {thing} in each bag. How many {thing} does {name} have?", a * b
    b, q = rng.randint(2, 6), rng.randint(2, 9)
    return f"{name} shares {b * q} {thing} equally among {b} friends. How many {thing} does each friend get?", q


def _two_step(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b, c = rng.randint(5, 20), rng.randint(2, 15), rng.randint(1, 9)
    if rng.random() < 0.5:
        return (f"{name} has {a} {thing}, gets {b} more, then gives {c} to a friend. How many {thing} does {name} "
                "have now?"), a + b - c
    k = rng.randint(2, 5)
    return f"{name} buys {k} packs of {b} {thing} and already had {c}. How many {thing} does {name} have?", k * b + c


def make_problems() -> dict[str, list[Problem]]:
    """The test and train splits, the same on every machine (seeded), test questions never in train."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {"test": [], "train": []}
    for split, size in (("test", TEST_SIZE), ("train", TRAIN_SIZE)):
        while len(splits[split]) < size:
            steps = 1 if rng.random() < 0.6 else 2
            question, answer = (_one_step if steps == 1 else _two_step)(rng)
            if question in seen:
                continue
            seen.add(question)
            splits[split].append(Problem(f"{split}-{len(splits[split]):05d}", question, answer, steps))
    return splits


def _example(problem: Problem, benchmark: str) -> Example:
    return Example(id=problem.id, question=problem.question, answer=str(problem.answer),
                   fields={"benchmark": benchmark, "steps": problem.steps})


def benchmark(name: str, limit: int | None = None) -> list[Example]:
    """The test split as a benchmark (``--eval.benchmarks [word_problems]``)."""
    problems = make_problems()["test"][:limit] if limit else make_problems()["test"]
    return [_example(p, name) for p in problems]


def examples(rest: str) -> list[Example]:
    """``train`` / ``test`` (a whole split) or problem ids (``train-00012``, comma list), as ``word_problems:REST``."""
    splits = make_problems()
    if rest in splits:
        return [_example(p, "word_problems") for p in splits[rest]]
    by_id = {p.id: p for ps in splits.values() for p in ps}
    wanted = [part.strip() for part in rest.split(",") if part.strip()]
    unknown = [w for w in wanted if w not in by_id]
    if unknown or not wanted:
        raise ValueError(
            f"word_problems:{rest}: unknown problem id(s) {unknown or [rest]}; give train, test or ids such as train-00012"
        )
    return [_example(by_id[w], "word_problems") for w in wanted]


def reward(completions: list[str], answers: list[str], **fields) -> list[float]:
    """1.0 when the first ``\\boxed{}`` of the response is equivalent to the answer (the math reward's equivalence:
    ``12.0`` and ``+12`` count for 12), else 0.0."""
    out = []
    for completion, answer in zip(completions, answers, strict=True):
        start = completion.find("\\boxed")
        end = completion.find("\\boxed", start + 1) if start >= 0 else -1
        boxed = extract_boxed(completion[start : end if end > 0 else None]) if start >= 0 else None  # the first box
        out.append(1.0 if boxed is not None and _same(boxed, str(answer)) else 0.0)
    return out


def _same(boxed: str, answer: str) -> bool:
    """Plain numbers compare by value at once; anything else goes to the math grader's equivalence."""
    try:
        return float(boxed.replace(",", "")) == float(answer)
    except ValueError:
        return is_equivalent(boxed, answer)
