"""The CPU world as names of :mod:`reprokit.registry`, so any recipe can train and evaluate it like a real model and
benchmark. The world is the one of the recipe's ``--world.*`` / ``--world_base.*`` sections (their defaults
without a recipe):

* model ``world``: the world's pretrained base model folder (built on first use, a few minutes on two CPU
  cores, then read from the cache: :func:`reprokit.worlds.base.pretrain_base`);
* examples ``world:train-00042`` (comma list allowed) are train-split problems by id; ``world:train``,
  ``world:test`` and ``world:hard`` are whole splits;
* benchmarks ``world_test`` and ``world_hard``: the test split and the harder slice (longer chains than
  pretraining saw), evaluated like MATH500;
* traces ``world:teacher_alt`` (or ``world:careful``): the train split solved by that writer, for distillation;
* reward ``world``: :func:`reprokit.worlds.task.reward`; :func:`mode_reward` rewards the world's mode alone;
* :func:`behaviours` (``GRPOConfig.response_stats``): whether a response is in the careful mode (its first line
  is the world's careful marker) and its rate of checks (check lines per step line).

Prompts are the bare question followed by :data:`~reprokit.worlds.task.PROMPT_SEPARATOR` (template
``"{question}\\n"`` with no chain-of-thought suffix).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from reprokit import registry
from reprokit.data.errors import DataError
from reprokit.data.readers import Example
from reprokit.worlds.config import BaseConfig, WorldConfig

__all__ = ["BENCHMARK_SPLITS", "base_model", "behaviours", "benchmark", "current", "examples", "mode_reward", "teacher_traces"]

BENCHMARK_SPLITS = {"world_test": "test", "world_hard": "hard"}


def current() -> tuple[WorldConfig, BaseConfig]:
    """The world the running recipe chose (``--world.*``, ``--world_base.*``), else the default one."""
    return registry.settings("world") or WorldConfig(), registry.settings("world_base") or BaseConfig()


def base_model() -> str:
    """The current world's base model folder, pretrained now if the cache does not hold it yet."""
    from reprokit.worlds.base import pretrain_base

    world, base = current()
    return str(pretrain_base(world, base=base))


def _splits(world: WorldConfig):
    return _splits_by_key(json.dumps(world.to_dict(), sort_keys=True))


@cache
def _splits_by_key(key: str):
    from reprokit.worlds.task import make_splits

    return make_splits(WorldConfig.from_dict(json.loads(key)))


def _splits_of_current():
    world, _ = current()
    return _splits(world)


def _example(problem) -> Example:
    fields = {"id": problem.id, "question": problem.question, "answer": problem.answer, "steps": problem.steps}
    return Example(id=problem.id, question=problem.question, answer=problem.answer, fields=fields)


def examples(spec: str) -> list[Example]:
    """Problems named after ``world:``: a whole split (``train``, ``test``, ``hard``) or train ids (``train-00042``,
    comma-separated)."""
    splits = _splits_of_current()
    spec = spec.removeprefix("world:")
    if spec in ("train", "test", "hard"):
        return [_example(p) for p in getattr(splits, spec)]
    ids = [part.strip() for part in spec.split(",") if part.strip()]
    by_id = {p.id: p for p in splits.train}
    unknown = [i for i in ids if i not in by_id]
    if unknown or not ids:
        raise DataError(
            f"examples='world:{spec}': {', '.join(repr(i) for i in unknown) or 'no id given'} is not a problem of the "
            f"world's train split; name train ids after 'world:', e.g. 'world:{next(iter(by_id))}' "
            f"(ids train-00000 … train-{len(by_id) - 1:05d}), or a whole split: world:train, world:test, world:hard"
        )
    return [_example(by_id[i]) for i in ids]


def benchmark(name: str, limit: int | None = None) -> list[Example]:
    """The test split (``world_test``) or the harder slice (``world_hard``), ids ``"<name>/<problem id>"``."""
    if name not in BENCHMARK_SPLITS:
        raise DataError(f"benchmark {name!r} is not a world benchmark; use one of {', '.join(BENCHMARK_SPLITS)}")
    problems = getattr(_splits_of_current(), BENCHMARK_SPLITS[name])
    out = [_example(p) for p in (problems if limit is None else problems[:limit])]
    for example in out:
        example.fields["benchmark"] = name
        example.id = f"{name}/{example.id}"
    return out


def teacher_traces(style: str, path: Path) -> Path:
    """The current world's train split solved in ``style`` as a traces file (problem, response per line).

    ``teacher_alt`` is the rewriting strategy the world's pretraining corpus never shows, the stand-in for a
    stronger teacher's new reasoning pattern. Prompts are the world's: template ``{question}`` + newline,
    no CoT suffix (the distill cpu preset sets both).
    """
    from reprokit.worlds.teacher import STYLES, write_solution

    if style not in STYLES or style == "sloppy":
        raise SystemExit(f"--data.file world:{style}: use world:teacher_alt or world:careful")
    world, _ = current()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for problem in _splits(world).train:
            f.write(json.dumps({"problem": problem.question, "response": write_solution(problem, style, world)}) + "\n")
    return path


def behaviours(completions: list[str]) -> dict[str, list[float]]:
    """Per response, the behaviours the current world has: ``mode`` in a world with a careful marker (1 if the
    response's first line is the marker) and ``checks`` in a world with a checking writer (check lines per step
    line; 0 without steps)."""
    world, _ = current()
    mode, checks = [], []
    for text in completions:
        lines = text.split("\n")
        mode.append(float(bool(world.careful_marker) and lines[0] == world.careful_marker))
        steps = sum("=" in line and not line.startswith(world.check_marker) for line in lines)
        checked = sum(line.startswith(world.check_marker) and "=" in line for line in lines) if world.check_fraction else 0
        checks.append(checked / steps if steps else 0.0)
    out = {}
    if world.careful_marker:
        out["mode"] = mode
    if world.check_fraction:
        out["checks"] = checks
    return out


def mode_reward(completions: list[str], answers: list[str], **fields) -> list[float]:
    """1 for a response in the world's mode, whatever its answer: it starts with the careful marker (mode worlds)
    or has a check line (the self-check world). The format-only reward of the 1-shot paper's ablation."""
    world, _ = current()
    stats = behaviours(completions)
    key = "mode" if world.careful_marker else "checks"
    if key not in stats:
        raise ValueError("reward 'world_mode' needs a world with a careful marker or a checking writer (--world.careful_marker '#' or --world.check_fraction 0.2)")
    return [float(v > 0) for v in stats[key]]
