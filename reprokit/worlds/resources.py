"""The default arithmetic world as names the rest of the kit understands, so a preset can say "the world".

* ``ModelConfig.name_or_path: world`` is the world's pretrained base model (built on first use, a few minutes
  on two CPU cores, then read from the cache: :func:`reprokit.worlds.pretrain_base`).
* ``examples: world:train-00042`` (comma list allowed) are train-split problems by id, for one-shot runs.
* The benchmarks ``world_test`` and ``world_hard`` are the test split and the harder slice (longer chains than
  pretraining saw), evaluated like MATH500 through the benchmark registry.

Prompts are the bare question followed by :data:`~reprokit.worlds.PROMPT_SEPARATOR` (template
``"{question}\\n"`` with no chain-of-thought suffix), and the reward is ``reprokit.worlds.arith:reward``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from reprokit.data.errors import DataError
from reprokit.data.readers import Example
from reprokit.models import WORLD_MODEL

__all__ = [
    "WORLD_BENCHMARKS",
    "WORLD_EXAMPLES_PREFIX",
    "WORLD_MODEL",
    "world_base_path",
    "world_benchmark",
    "world_examples",
]

WORLD_EXAMPLES_PREFIX = "world:"
WORLD_BENCHMARKS = {"world_test": "test", "world_hard": "hard"}


def world_base_path(cache_dir: str | Path | None = None) -> Path:
    """The default world's base model folder, pretrained now if the cache does not hold it yet."""
    from reprokit.worlds.arith import WorldConfig
    from reprokit.worlds.pretrain import pretrain_base

    return pretrain_base(WorldConfig(), cache_dir)


@cache
def _splits():
    from reprokit.worlds.arith import WorldConfig, make_splits

    return make_splits(WorldConfig())


def _example(problem) -> Example:
    fields = {"id": problem.id, "question": problem.question, "answer": problem.answer, "steps": problem.steps}
    return Example(id=problem.id, question=problem.question, answer=problem.answer, fields=fields)


def world_examples(spec: str) -> list[Example]:
    """Train-split problems named in ``spec``: ``"world:train-00042"`` or ``"world:train-00042,train-00007"``."""
    ids = [part.strip() for part in spec.removeprefix(WORLD_EXAMPLES_PREFIX).split(",") if part.strip()]
    by_id = {p.id: p for p in _splits().train}
    unknown = [i for i in ids if i not in by_id]
    if unknown or not ids:
        raise DataError(
            f"examples={spec!r}: {', '.join(repr(i) for i in unknown) or 'no id given'} is not a problem of the "
            f"world's train split; name train ids after 'world:', e.g. 'world:{next(iter(by_id))}' "
            f"(ids train-00000 … train-{len(by_id) - 1:05d})"
        )
    return [_example(by_id[i]) for i in ids]


def world_benchmark(name: str, limit: int | None = None) -> list[Example]:
    """The test split (``world_test``) or the harder slice (``world_hard``), ids ``"<name>/<problem id>"``."""
    problems = getattr(_splits(), WORLD_BENCHMARKS[name])
    examples = [_example(p) for p in (problems if limit is None else problems[:limit])]
    for example in examples:
        example.fields["benchmark"] = name
        example.id = f"{name}/{example.id}"
    return examples
