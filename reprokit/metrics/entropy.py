"""Token-entropy metrics: ``TokenEntropy`` (summary statistics) and ``HighEntropyOverlap``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from reprokit.metrics.functional.entropy import (
    _check_rho,
    _entropy_stats_compute,
    _entropy_stats_update,
    _high_entropy_overlap_compute,
    _high_entropy_overlap_update,
)


def _cat_or_empty(state: list[Tensor] | Tensor, like: Tensor) -> Tensor:
    if isinstance(state, list) and not state:
        return like.new_zeros(0)
    return dim_zero_cat(state)


class TokenEntropy(Metric):
    """Mean, quantiles and low/high fractions of token entropy over valid (masked-in) positions.

    ``update(entropy [B, T], mask [B, T])`` (e.g. ``entropy`` from ``token_entropy``, ``mask`` the
    response tokens). ``compute()`` returns float64 scalars:

    - ``mean``: mean entropy over every valid position seen,
    - ``p50``, ``p80``, ...: one per quantile in ``quantiles`` (linear interpolation, as ``torch.quantile``),
    - ``frac_low``: share of valid positions with entropy < ``low`` (default 0.01 nats),
    - ``frac_high``: share with entropy > ``threshold``.

    The valid entropies are kept as a concatenated state (``dist_reduce_fx="cat"``), so quantiles are
    exact and global across processes. ``mean``, ``frac_low`` and ``frac_high`` come from summed
    counters and stay exact even when ``max_values`` caps the stored values. All are NaN before any
    valid position is seen.

    Args:
        threshold: entropy (nats) above which a position counts as high-entropy. Default 0.672, the
            80th percentile of Qwen3-8B chain-of-thought tokens in arXiv 2506.01939.
        quantiles: the quantiles to report; the default includes the 80th percentile.
        low: entropy below which a position counts as near-deterministic (paper: half of CoT tokens
            are below 0.01).
        max_values: keep at most this many values per process by reservoir sampling (uniform over all
            values offered to this process), bounding memory on long evaluations. Quantiles then become
            estimates, and after a distributed sync or ``merge_state`` the pooled sample weighs each
            process's reservoir equally. ``None`` (default) keeps every value: exact.
        seed: seed of the reservoir sampling.
        kwargs: torchmetrics ``Metric`` keyword arguments.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    values: list[Tensor] | Tensor
    total: Tensor
    count: Tensor
    n_low: Tensor
    n_high: Tensor

    def __init__(
        self,
        threshold: float = 0.672,
        quantiles: Sequence[float] = (0.5, 0.8, 0.9, 0.99),
        low: float = 0.01,
        max_values: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.quantiles = tuple(float(q) for q in quantiles)
        if any(not 0 <= q <= 1 for q in self.quantiles):
            raise ValueError(f"TokenEntropy: quantiles must lie in [0, 1], got {self.quantiles}")
        if max_values is not None and max_values < 1:
            raise ValueError(f"TokenEntropy: max_values must be >= 1 or None (keep all), got {max_values}")
        self.threshold = float(threshold)
        self.low = float(low)
        self.max_values = max_values
        self._generator = torch.Generator().manual_seed(seed)
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("n_low", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("n_high", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, entropy: Tensor, mask: Tensor | None = None) -> None:
        """Add the entropies at positions where ``mask`` is true (``mask=None``: all positions)."""
        values, total, count, n_low, n_high = _entropy_stats_update(entropy, mask, self.low, self.threshold)
        # The metric's float dtype: a process with no values is gathered as an empty tensor of that dtype.
        values = values.to(device=self.device, dtype=self.dtype)  # [N_valid]
        if self.max_values is None:
            self.values.append(values)
        else:
            stored = _cat_or_empty(self.values, values)  # [<= max_values]
            seen = int(self.count.item())
            self.values = [_reservoir_update(stored, values, seen, self.max_values, self._generator)]
        self.total += total.to(self.total.device)
        self.count += count.to(self.count.device)
        self.n_low += n_low.to(self.n_low.device)
        self.n_high += n_high.to(self.n_high.device)

    def compute(self) -> dict[str, Tensor]:
        """``{"mean", "p50", "p80", ..., "frac_low", "frac_high"}``."""
        values = _cat_or_empty(self.values, self.total)  # [N]
        return _entropy_stats_compute(values, self.total, self.count, self.n_low, self.n_high, self.quantiles)


def _reservoir_update(stored: Tensor, new: Tensor, seen: int, cap: int, generator: torch.Generator) -> Tensor:
    """Algorithm R over ``new``, given a reservoir ``stored`` that has already been offered ``seen`` values.

    Vectorised: value j of ``new`` (the t-th offered overall, 0-based) draws r uniform in [0, t] and
    replaces slot r when r < cap; when several land on one slot the latest wins, as in the sequential loop.
    """
    if stored.numel() > cap:
        # Only after merge_state / forward: several reservoirs were concatenated; thin them uniformly.
        keep = torch.randperm(stored.numel(), generator=generator)[:cap].to(stored.device)
        stored = stored[keep]
    fill = min(cap - stored.numel(), new.numel())
    reservoir = torch.cat([stored, new[:fill]])  # [<= cap]
    rest = new[fill:]  # [M]
    if rest.numel() == 0:
        return reservoir
    first = max(seen, stored.numel()) + fill  # 0-based offer index of rest[0]
    offer = torch.arange(first, first + rest.numel(), dtype=torch.float64)  # [M]
    slot = (torch.rand(rest.numel(), generator=generator, dtype=torch.float64) * (offer + 1)).long()  # [M]
    accepted = slot < cap  # [M]
    latest = torch.full((cap,), -1, dtype=torch.long)  # [cap]
    latest.scatter_reduce_(0, slot[accepted], torch.arange(rest.numel())[accepted], reduce="amax")
    hit = latest >= 0  # [cap]
    reservoir[hit.to(reservoir.device)] = rest[latest[hit].to(rest.device)]
    return reservoir


class HighEntropyOverlap(Metric):
    """Overlap of two models' top-rho entropy positions on the same tokens.

    ``update(entropy_a [B, T], entropy_b [B, T], mask [B, T])`` with both models scored on the same
    token sequences (e.g. base and RL model on RL rollouts). ``compute()`` returns
    ``|top_a & top_b| / |top_a|`` (float64 scalar; NaN before any valid position), where ``top_x`` is
    the set of valid positions whose entropy under model x is >= the (1 - rho) quantile (linear
    interpolation) of x's valid entropies.

    The threshold is pooled over everything seen (all sequences, all updates, all processes), never
    per sequence, as in arXiv 2506.01939, which reports > 86% overlap of the top-20% positions
    between a base model and its RL-trained version. The paired valid entropies are kept as
    concatenated states (``dist_reduce_fx="cat"``), so the quantiles are exact and global.

    Args:
        rho: the top fraction, 0 < rho <= 1 (paper: 0.2).
        kwargs: torchmetrics ``Metric`` keyword arguments.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    values_a: list[Tensor] | Tensor
    values_b: list[Tensor] | Tensor

    def __init__(self, rho: float = 0.2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_rho(rho)
        self.rho = float(rho)
        self.add_state("values_a", default=[], dist_reduce_fx="cat")
        self.add_state("values_b", default=[], dist_reduce_fx="cat")

    def update(self, entropy_a: Tensor, entropy_b: Tensor, mask: Tensor | None = None) -> None:
        """Add the paired entropies at positions where ``mask`` is true (``None``: all positions)."""
        values_a, values_b = _high_entropy_overlap_update(entropy_a.detach(), entropy_b.detach(), mask)
        self.values_a.append(values_a.to(device=self.device, dtype=self.dtype))  # [N_valid]
        self.values_b.append(values_b.to(device=self.device, dtype=self.dtype))  # [N_valid]

    def compute(self) -> Tensor:
        """``|top_a & top_b| / |top_a|`` over every valid position seen."""
        empty = torch.zeros(0, device=self.device, dtype=self.dtype)
        values_a = _cat_or_empty(self.values_a, empty)  # [N]
        values_b = _cat_or_empty(self.values_b, empty)  # [N]
        return _high_entropy_overlap_compute(values_a, values_b, self.rho)
