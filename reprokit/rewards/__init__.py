"""Rewards: functions ``(completions, answers, **row_fields) -> list[float]``.

A reward gets one completion and one label per rollout, plus the dataset row's other fields as
keyword arguments (which it may ignore). ``get_reward`` turns a config value into such a function:
a built-in name from ``REWARDS``, a name of :mod:`reprokit.registry` (``"world"``: the CPU world's grader), an
import path ``"package.module:function"`` for your own, or a callable. Built-ins are added by registering them
in ``REWARDS``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence

from reprokit import registry
from reprokit.rewards.choice import choice_reward, numeric_reward
from reprokit.rewards.math import extract_boxed, is_equivalent, math_reward

RewardFn = Callable[..., list[float]]
"""``(completions: list[str], answers: list[str], **row_fields) -> list[float]``, one per completion."""

def random_reward(completions: list[str], answers: list[str], **fields) -> list[float]:
    """A reward that ignores correctness: 0 or 1 with probability 1/2, fixed by the completion's text (the spurious-
    reward ablation; reproducible, so a resumed run grades as an uninterrupted one)."""
    return [float(zlib.crc32(c.encode()) & 1) for c in completions]


def zero_reward(completions: list[str], answers: list[str], **fields) -> list[float]:
    """No reward at all: every advantage is 0 and only the entropy and KL terms train (the entropy-only ablation)."""
    return [0.0] * len(completions)


REWARDS: dict[str, RewardFn] = {
    "math": math_reward,
    "choice": choice_reward,
    "numeric": numeric_reward,
    "random": random_reward,
    "zero": zero_reward,
}
"""Built-in rewards by name."""

__all__ = [
    "REWARDS",
    "RewardFn",
    "extract_boxed",
    "get_reward",
    "is_equivalent",
    "math_reward",
    "random_reward",
    "reward_keywords",
    "zero_reward",
]


def reward_keywords(rows: Sequence[Mapping], repeat: int | Sequence[int]) -> dict[str, list]:
    """Dataset-row fields as reward keyword lists aligned with the completions: row i repeated ``repeat`` (or
    ``repeat[i]``) times. The ``answer`` field is left out: the label travels as the ``answers`` argument."""
    counts = [repeat] * len(rows) if isinstance(repeat, int) else list(repeat)
    keys = sorted(set().union(*(r.keys() for r in rows))) if rows else []
    out = {k: [r.get(k) for r, times in zip(rows, counts) for _ in range(times)] for k in keys}
    out.pop("answer", None)
    return out


def _how_to(spec: object) -> str:
    names = ", ".join(repr(name) for name in sorted({*REWARDS, *registry.names("reward")}))
    return (
        f"reward {spec!r}: write one of the built-in names ({names}) or an import path "
        "'package.module:function' to a function (completions, answers, **row_fields) -> list[float]"
    )


def get_reward(spec: str | RewardFn) -> RewardFn:
    """The reward function that ``spec`` names.

    ``"math"`` (or another key of ``REWARDS``), a name registered in :mod:`reprokit.registry` (``"world"``),
    ``"package.module:function"`` (imported; the attribute may be dotted, ``"module:Class.method"``), or a
    callable, returned unchanged. Anything else raises ValueError naming the spec and what to write instead.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{_how_to(spec)} (got a {type(spec).__name__})")
    name = spec.strip()
    if name in REWARDS:
        return REWARDS[name]
    if name in registry.RENAMED:
        raise ValueError(f"reward {name!r} has been renamed: write {registry.RENAMED[name]!r}")
    target = registry.lookup("reward", name)
    if target is None and ":" not in name:
        raise ValueError(f"unknown {_how_to(spec)}")
    try:
        obj = registry.import_object(target or name, what="reward")
    except ValueError as exc:
        raise ValueError(f"{exc}; {_how_to(spec)}") from None
    if not callable(obj):
        raise ValueError(f"{name} is not callable (a {type(obj).__name__}); {_how_to(spec)}")
    return obj
