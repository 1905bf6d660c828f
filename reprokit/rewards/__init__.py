"""Rewards: functions ``(completions, answers, **row_fields) -> list[float]``.

A reward gets one completion and one label per rollout, plus the dataset row's other fields as
keyword arguments (which it may ignore). A reward that draws random numbers declares a ``generator`` keyword:
:func:`score` then passes it a ``torch.Generator`` (in training, seeded by the run seed, the process rank, the
step and the sampling round, so a resumed run draws what the uninterrupted one did).

``get_reward`` turns a config value into such a function: a built-in name from ``REWARDS``, a name of
:mod:`reprokit.registry` (``"world"``: the CPU world's grader), an import path ``"package.module:function"`` for
your own, or a callable. Built-ins are added by registering them in ``REWARDS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch

from reprokit import registry
from reprokit.rewards.choice import choice_reward, numeric_reward
from reprokit.rewards.math import extract_boxed, is_equivalent, math_reward

RewardFn = Callable[..., list[float]]
"""``(completions: list[str], answers: list[str], **row_fields) -> list[float]``, one per completion."""


def random_reward(
    completions: list[str], answers: list[str], *, generator: torch.Generator | None = None, **fields
) -> list[float]:
    """A reward that ignores the response: 1 with probability 1/2, else 0, drawn independently for every response
    (the spurious-rewards ablation, Bernoulli(0.5)). Two copies of the same text may score differently, so a policy
    cannot learn which texts pay. The draws come from ``generator`` (torch's global generator when None)."""
    device = generator.device if generator is not None else "cpu"
    draws = torch.rand(len(completions), generator=generator, device=device)  # [N]
    return (draws < 0.5).float().tolist()


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
    "score",
    "zero_reward",
]


def takes_generator(reward_fn: RewardFn) -> bool:
    """Whether ``reward_fn`` declares a ``generator`` keyword (a reward that draws random numbers)."""
    try:
        parameters = inspect.signature(reward_fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False
    param = parameters.get("generator")
    return param is not None and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)


def score(
    reward_fn: RewardFn,
    completions: list[str],
    answers: list[str],
    fields: Mapping[str, list],
    *,
    generator: torch.Generator | None = None,
) -> list[float]:
    """``reward_fn``'s rewards of ``completions`` as floats, one per completion (ValueError otherwise).

    ``fields`` are the row keyword lists (:func:`reward_keywords`); ``generator`` goes to a reward that declares a
    ``generator`` keyword and nowhere else.
    """
    extra = {"generator": generator} if generator is not None and takes_generator(reward_fn) else {}
    rewards = list(reward_fn(completions, answers, **fields, **extra))
    if len(rewards) != len(completions):
        name = getattr(reward_fn, "__name__", repr(reward_fn))
        raise ValueError(
            f"reward {name} returned {len(rewards)} values for {len(completions)} completions; a reward must return "
            "one float per completion"
        )
    return [float(r) for r in rewards]


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
