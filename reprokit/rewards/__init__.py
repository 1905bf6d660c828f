"""Rewards: functions ``(completions, answers, **row_fields) -> list[float]``.

A reward gets one completion and one label per rollout, plus the dataset row's other fields as
keyword arguments (which it may ignore). ``get_reward`` turns a config value into such a function:
a built-in name from ``REWARDS``, an import path ``"package.module:function"`` for your own, or a
callable. Built-ins are added by registering them in ``REWARDS``.
"""

from __future__ import annotations

from collections.abc import Callable

from reprokit.registry import import_object
from reprokit.rewards.choice import choice_reward, numeric_reward
from reprokit.rewards.math import extract_boxed, is_equivalent, math_reward

RewardFn = Callable[..., list[float]]
"""``(completions: list[str], answers: list[str], **row_fields) -> list[float]``, one per completion."""

REWARDS: dict[str, RewardFn] = {"math": math_reward, "choice": choice_reward, "numeric": numeric_reward}
"""Built-in rewards by name."""

__all__ = ["REWARDS", "RewardFn", "extract_boxed", "get_reward", "is_equivalent", "math_reward"]


def _how_to(spec: object) -> str:
    names = ", ".join(repr(name) for name in sorted(REWARDS))
    return (
        f"reward {spec!r}: write one of the built-in names ({names}) or an import path "
        "'package.module:function' to a function (completions, answers, **row_fields) -> list[float]"
    )


def get_reward(spec: str | RewardFn) -> RewardFn:
    """The reward function that ``spec`` names.

    ``"math"`` (or another key of ``REWARDS``), ``"package.module:function"`` (imported; the
    attribute may be dotted, ``"module:Class.method"``), or a callable, returned unchanged.
    Anything else raises ValueError naming the spec and what to write instead.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"{_how_to(spec)} (got a {type(spec).__name__})")
    name = spec.strip()
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise ValueError(f"unknown {_how_to(spec)}")
    try:
        obj = import_object(name, what="reward")
    except ValueError as exc:
        raise ValueError(f"{exc}; {_how_to(spec)}") from None
    if not callable(obj):
        raise ValueError(f"{name} is not callable (a {type(obj).__name__}); {_how_to(spec)}")
    return obj
