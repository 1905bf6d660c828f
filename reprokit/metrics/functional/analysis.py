"""Per-problem analyses of Yue et al. 2025 (arXiv 2504.13837): accuracy histogram, solved-set overlap."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

ACCURACY_BINS: tuple[str, ...] = (
    "0",
    *(f"({lo / 10:g},{(lo + 1) / 10:g}]" for lo in range(9)),
    "(0.9,1)",
    "1",
)
"""Labels of ``accuracy_histogram``: exactly 0, nine half-open tenths, (0.9, 1), exactly 1."""


def accuracy_histogram(acc: Sequence[float] | Tensor) -> dict[str, int]:
    """Count problems per accuracy bin: "0", "(0,0.1]", "(0.1,0.2]", ..., "(0.8,0.9]", "(0.9,1)", "1".

    Bins are closed on the right, except that exactly 0 and exactly 1 get their own bins (the
    paper's point: RL moves mass to 1 and also adds problems at 0). So 1e-9 and 0.1 go to
    "(0,0.1]", 0.95 to "(0.9,1)", 1.0 to "1". Bin edges are compared in the input's float dtype,
    so a float32 0.1 still lands in "(0,0.1]".

    Args:
        acc: per-problem accuracy (fraction of correct samples) in [0, 1].

    Returns:
        ``{label: count}`` with all 12 labels, in the order above.
    """
    values = torch.as_tensor(acc).detach().reshape(-1)  # [P]
    if not values.is_floating_point():
        values = values.to(torch.float64)
    bad = values.isnan() | (values < 0) | (values > 1)  # [P]
    if bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"accuracy_histogram: acc[{index}] = {values[index].item()} is not an accuracy in [0, 1] "
            f"({int(bad.sum())} value(s) out of range)"
        )
    edges = torch.tensor([i / 10 for i in range(1, 10)], dtype=values.dtype, device=values.device)  # [9]
    # bucketize(right=False): index j with edges[j-1] < x <= edges[j], i.e. the "(lo, hi]" bins.
    tenth = torch.bucketize(values, edges)  # [P] in 0..9
    bin_index = torch.where(values == 0, 0, torch.where(values == 1, 11, tenth + 1))  # [P] in 0..11
    counts = torch.bincount(bin_index.cpu(), minlength=len(ACCURACY_BINS))  # [12]
    return {label: int(count) for label, count in zip(ACCURACY_BINS, counts)}


def _as_mask(x: object) -> Tensor | None:
    """A bool vector if ``x`` is a boolean mask (bool tensor / array, or a sequence of bools), else None."""
    if isinstance(x, Tensor):
        return x.reshape(-1).cpu() if x.dtype == torch.bool else None
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.reshape(-1)) if x.dtype == np.bool_ else None
    if isinstance(x, Sequence) and not isinstance(x, (str, bytes)) and len(x) > 0:
        if all(isinstance(v, (bool, np.bool_)) for v in x):
            return torch.tensor([bool(v) for v in x], dtype=torch.bool)
    return None


def _as_id_set(x: Iterable[Hashable], name: str) -> set:
    if isinstance(x, Tensor):
        raise TypeError(
            f"solved_set_overlap: {name} is a {x.dtype} tensor; pass a bool mask (one flag per problem) "
            "or a collection of problem ids"
        )
    return set(x.tolist() if isinstance(x, np.ndarray) else x)


def solved_set_overlap(
    base_solved: Collection[Hashable] | Sequence[bool] | Tensor,
    other_solved: Collection[Hashable] | Sequence[bool] | Tensor,
    all_problems: Collection[Hashable] | None = None,
) -> dict[str, int]:
    """How the problems solved by one model (e.g. RL) sit against those solved by another (the base).

    Args:
        base_solved, other_solved: either boolean vectors over the same problems (bool tensor, bool
            array, or a list of bools) or collections of problem ids (a set of strings, say).
        all_problems: every problem id; with id collections it adds the ``neither`` count. Not needed
            for boolean vectors, whose length is the problem count.

    Returns:
        ``{"base_only", "both", "other_only"}`` counts, plus ``"neither"`` for boolean vectors or
        when ``all_problems`` is given. Yue et al. find ``other_only`` near 0 for RL vs base at large k.
    """
    base_mask, other_mask = _as_mask(base_solved), _as_mask(other_solved)
    if (base_mask is None) != (other_mask is None):
        raise TypeError(
            "solved_set_overlap: one argument is a boolean mask and the other a collection of ids; "
            "pass both in the same form"
        )
    if base_mask is not None:
        if base_mask.shape != other_mask.shape:
            raise ValueError(
                f"solved_set_overlap: base_solved has {base_mask.numel()} problems but other_solved has "
                f"{other_mask.numel()}; boolean masks must cover the same problems in the same order"
            )
        return {
            "base_only": int((base_mask & ~other_mask).sum()),
            "both": int((base_mask & other_mask).sum()),
            "other_only": int((~base_mask & other_mask).sum()),
            "neither": int((~base_mask & ~other_mask).sum()),
        }

    base, other = _as_id_set(base_solved, "base_solved"), _as_id_set(other_solved, "other_solved")
    out = {"base_only": len(base - other), "both": len(base & other), "other_only": len(other - base)}
    if all_problems is not None:
        universe = set(all_problems)
        unknown = (base | other) - universe
        if unknown:
            raise ValueError(
                f"solved_set_overlap: {len(unknown)} solved id(s) are not in all_problems, e.g. "
                f"{sorted(map(repr, unknown))[:3]}"
            )
        out["neither"] = len(universe - base - other)
    return out


def bootstrap_interval(
    values: Sequence[float] | Tensor,
    paired: Sequence[float] | Tensor | None = None,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The mean of per-problem ``values`` and its bootstrap interval over problems: ``(mean, low, high)``.

    With ``paired`` (the same problems under another model) it is the interval of ``mean(values - paired)``,
    resampling problems jointly: the interval of a difference measured on one problem set.

    Args:
        values: one number per problem (its accuracy over n samples, its pass@k, ...).
        paired: the other model's numbers on the same problems, or None.
        resamples: bootstrap resamples (problems drawn with replacement, as many as there are).
        level: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
        seed: the resampling seed (the interval is reproducible).
    """
    x = np.asarray(torch.as_tensor(values, dtype=torch.float64).reshape(-1))
    if paired is not None:
        other = np.asarray(torch.as_tensor(paired, dtype=torch.float64).reshape(-1))
        if other.shape != x.shape:
            raise ValueError(f"bootstrap_interval: {x.size} values but {other.size} paired values; pair them by problem")
        x = x - other
    if x.size == 0:
        raise ValueError("bootstrap_interval: no values")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_interval: level={level} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)  # [resamples]
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(x.mean()), float(low), float(high)


def stratified_bootstrap_interval(
    groups: Sequence[Sequence[float]],
    paired: Sequence[Sequence[float]] | None = None,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """The mean over groups of each group's mean (a benchmark average), with its bootstrap interval: every resample
    draws each group's problems with replacement from that group alone. ``(mean, low, high)``.

    With ``paired`` (the same problems under another model, group by group) it is the interval of the difference of
    the two averages, each group's problems resampled jointly for both models.
    """
    if not groups:
        raise ValueError("stratified_bootstrap_interval: no groups")
    rng = np.random.default_rng(seed)
    totals = np.zeros(resamples)
    point = 0.0
    for index, values in enumerate(groups):
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if paired is not None:
            other = np.asarray(paired[index], dtype=np.float64).reshape(-1)
            if other.shape != x.shape:
                raise ValueError(f"stratified_bootstrap_interval: group {index} has {x.size} values but {other.size} paired")
            x = x - other
        if x.size == 0:
            raise ValueError(f"stratified_bootstrap_interval: group {index} is empty")
        point += x.mean()
        totals += x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(totals / len(groups), [tail, 1 - tail])
    return float(point / len(groups)), float(low), float(high)

