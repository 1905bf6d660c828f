"""``PassAtK``: unbiased pass@k averaged over problems, correct across processes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from reprokit.metrics.functional.pass_at_k import _check_ks, _pass_at_k_compute, _pass_at_k_update, powers_of_two


class PassAtK(Metric):
    """Unbiased pass@k (``1 - C(n-c, k) / C(n, k)`` per problem) averaged over problems.

    The state is one ``(n, c)`` pair per problem (samples, correct samples), concatenated across
    processes (``dist_reduce_fx="cat"``), so ``compute()`` averages over every problem seen by every
    process, and problems may have different sample counts.

    Args:
        ks: the k values. ``None`` (default) uses ``1, 2, 4, ...`` up to ``max_k``, or, when
            ``max_k`` is also ``None``, up to the smallest sample count among the problems seen.
        max_k: upper end of the default powers-of-two grid (ignored when ``ks`` is given).
        kwargs: torchmetrics ``Metric`` keyword arguments (``process_group``, ``sync_on_compute``, ...).

    ``update`` takes either per-problem correctness

    - a list with one entry per problem, each a bool (or 0/1) tensor or list of its samples
      (lengths may differ), or a ``[P, S]`` tensor,

    or the counts ``update(n=[P], c=[P])``.

    ``compute()`` returns ``{k: float64 scalar}``. A k larger than some problem's sample count
    raises ``ValueError`` naming the problem's index (in update order, process 0's problems first
    after a distributed sync) and its n.

    Example:
        >>> metric = PassAtK(ks=(1, 2))
        >>> metric.update([[True, False], [False, False, False, True]])
        >>> {k: round(float(v), 4) for k, v in metric.compute().items()}
        {1: 0.375, 2: 0.75}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    n_samples: list[Tensor] | Tensor
    n_correct: list[Tensor] | Tensor

    def __init__(self, ks: Sequence[int] | None = None, max_k: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ks = None if ks is None else _check_ks(ks, "PassAtK")
        self.max_k = max_k
        if ks is None and max_k is not None:
            self.ks = powers_of_two(max_k)
        self.add_state("n_samples", default=[], dist_reduce_fx="cat")
        self.add_state("n_correct", default=[], dist_reduce_fx="cat")

    def update(
        self,
        correct: Sequence[Sequence[bool] | Tensor] | Tensor | None = None,
        *,
        n: Tensor | Sequence[int] | None = None,
        c: Tensor | Sequence[int] | None = None,
    ) -> None:
        """Add problems: ``update(correct)`` with per-problem correctness, or ``update(n=..., c=...)``."""
        n_t, c_t = _pass_at_k_update(correct, n=n, c=c)  # [P], [P]
        # Counts are kept in the metric's float dtype (exact to 2**24): when a process saw no problem,
        # torchmetrics gathers an empty tensor of that dtype in its place, and all processes must agree.
        self.n_samples.append(n_t.to(device=self.device, dtype=self.dtype))
        self.n_correct.append(c_t.to(device=self.device, dtype=self.dtype))

    def compute(self) -> dict[int, Tensor]:
        """``{k: mean over problems of pass@k}``."""
        if isinstance(self.n_samples, list) and not self.n_samples:
            raise ValueError("PassAtK.compute: no problems seen; call update(...) first")
        n = dim_zero_cat(self.n_samples)  # [P]
        c = dim_zero_cat(self.n_correct)  # [P]
        if n.numel() == 0:
            raise ValueError("PassAtK.compute: no problems seen; call update(...) first")
        ks = self.ks if self.ks is not None else powers_of_two(int(n.min().item()))
        return _pass_at_k_compute(n, c, ks)
