"""Unbiased pass@k (Chen et al. 2021; the estimator of Yue et al. 2025, arXiv 2504.13837).

For a problem with ``n`` sampled responses of which ``c`` are correct,

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)    (and 1 when n - c < k).

The product form never builds a binomial, so it stays exact at n = 1024 and far beyond. It is
evaluated as ``-expm1(sum log1p(-k / i))``: the same product, with no cancellation when pass@k is
small and no rounding build-up over thousands of factors.

``_pass_at_k_update`` turns per-problem correctness into per-problem counts ``(n, c)``;
``_pass_at_k_compute`` averages the per-problem estimates; the ``PassAtK`` metric keeps the counts
as states and delegates to both.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

# Elements of one [problems, n_max] work array in pass_at_k_per_problem: ~32 MB of float64 per chunk.
_CHUNK_ELEMENTS = 1 << 22


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"pass_at_k: {name} must be an integer, got the bool {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"pass_at_k: {name} must be an integer, got {value!r} ({type(value).__name__})") from None


def _check_counts(n: int, c: int, k: int) -> None:
    if n < 0 or c < 0:
        raise ValueError(f"pass_at_k: counts must be non-negative, got n={n}, c={c}")
    if c > n:
        raise ValueError(f"pass_at_k: c={c} correct samples exceeds n={n} samples; c counts correct samples among n")
    if k < 1:
        raise ValueError(f"pass_at_k: k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(
            f"pass_at_k: k={k} exceeds n={n} (the number of samples); pass@k needs k <= n: "
            f"sample at least {k} responses or use a smaller k"
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct.

    ``1.0`` if ``n - c < k`` else ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``; exact (to float64 rounding)
    for any n, with no binomial coefficients.

    Raises:
        ValueError: if ``k > n``, ``c > n``, ``k < 1`` or a count is negative (the message names the values).
        TypeError: if a count is not an integer.

    Example:
        >>> pass_at_k(4, 1, 2)  # 1 - C(3, 2) / C(4, 2)
        0.5
    """
    n, c, k = _as_int(n, "n"), _as_int(c, "c"), _as_int(k, "k")
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    # Every i in (n-c, n] is > k here, so each log1p argument lies in (-1, 0).
    log_prod = math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    return -math.expm1(log_prod)


def powers_of_two(max_k: int) -> tuple[int, ...]:
    """``(1, 2, 4, ..., 2**m)`` with ``2**m <= max_k``: the k grid of pass@k curves."""
    max_k = _as_int(max_k, "max_k")
    if max_k < 1:
        raise ValueError(f"powers_of_two: max_k must be >= 1, got {max_k}")
    return tuple(1 << e for e in range(max_k.bit_length()))


def _check_ks(ks: Sequence[int], where: str) -> tuple[int, ...]:
    ks = tuple(_as_int(k, "k") for k in ks)
    if not ks:
        raise ValueError(f"{where}: ks is empty; give at least one k, e.g. ks=(1, 2, 4)")
    bad = [k for k in ks if k < 1]
    if bad:
        raise ValueError(f"{where}: every k must be >= 1, got ks={ks}")
    return ks


def pass_at_k_per_problem(n: Tensor, c: Tensor, ks: Sequence[int]) -> Tensor:
    """Vectorised unbiased pass@k for many problems at several k.

    Args:
        n: samples per problem, shape ``[P]`` (integer or integral float values).
        c: correct samples per problem, shape ``[P]``.
        ks: the k values.

    Returns:
        float64 tensor ``[P, K]`` with entry ``[p, j] = pass@ks[j]`` of problem ``p``, on ``n``'s device.

    Raises:
        ValueError: if a problem has ``k > n``, ``c > n`` or negative counts; the message names the
            problem's index and its counts.
    """
    ks = _check_ks(ks, "pass_at_k_per_problem")
    n = torch.as_tensor(n).reshape(-1)
    c = torch.as_tensor(c, device=n.device).reshape(-1)
    if n.shape != c.shape:
        raise ValueError(f"pass_at_k_per_problem: n has {n.numel()} problems but c has {c.numel()}; they must match")
    n64 = n.to(torch.float64)  # [P]
    c64 = c.to(torch.float64)  # [P]
    num_problems = n64.numel()
    out = torch.ones(num_problems, len(ks), dtype=torch.float64, device=n.device)  # [P, K]
    if num_problems == 0:
        return out
    _check_problem_counts(n64, c64, max(ks))

    n_max = int(n64.max().item())
    i = torch.arange(1, n_max + 1, dtype=torch.float64, device=n.device)  # [N]
    rows = max(1, _CHUNK_ELEMENTS // n_max)
    for start in range(0, num_problems, rows):
        n_chunk = n64[start : start + rows, None]  # [p, 1]
        c_chunk = c64[start : start + rows, None]  # [p, 1]
        # Factors i in (n-c, n]; the product over them is C(n-c, k) / C(n, k).
        in_range = (i > n_chunk - c_chunk) & (i <= n_chunk)  # [p, N]
        for j, k in enumerate(ks):
            # Factors with i <= k only occur when n - c < k, where pass@k is 1 anyway: keep log1p finite.
            log_factor = torch.log1p(-k / i.clamp(min=k + 1))  # [N]
            log_prod = torch.where(in_range, log_factor, 0.0).sum(dim=1)  # [p]
            value = -torch.expm1(log_prod)  # [p]
            always = (n_chunk - c_chunk).squeeze(1) < k  # [p]
            out[start : start + rows, j] = torch.where(always, 1.0, value)
    return out


def mean_pass_at_k(n: int | Sequence[int], correct: Sequence[int], ks: Sequence[int]) -> dict[int, float]:
    """``{k: pass@k averaged over problems}``: problem ``p`` drew ``n`` samples (one number for all, or one per
    problem) of which ``correct[p]`` were right; the same unbiased estimator as :func:`pass_at_k`."""
    c = torch.as_tensor(list(correct), dtype=torch.float64)  # [P]
    counts = torch.full_like(c, float(n)) if isinstance(n, int) else torch.as_tensor(list(n), dtype=torch.float64)  # [P]
    if c.numel() == 0:
        raise ValueError("mean_pass_at_k: no problems")
    means = pass_at_k_per_problem(counts, c, ks).mean(0)  # [K]
    return {int(k): float(v) for k, v in zip(ks, means)}


def _check_problem_counts(n: Tensor, c: Tensor, max_k: int) -> None:
    """Raise naming the first problem whose counts cannot give pass@max_k."""
    need_more = f"k={max_k} exceeds its sample count; sample at least {max_k} responses per problem or drop the larger k"
    checks = (
        (n != n.round(), "n is not an integer"),
        (c != c.round(), "c is not an integer"),
        (c < 0, "c is negative"),
        (c > n, "c (correct samples) exceeds n (samples)"),
        (n < max_k, need_more),
    )
    for bad, what in checks:
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"pass@k: problem {index} has n={_fmt(n[index])}, c={_fmt(c[index])}: {what} "
                f"({int(bad.sum())} problem(s) affected)"
            )


def _fmt(x: Tensor) -> str:
    value = float(x)
    return str(int(value)) if value.is_integer() else str(value)


def _per_problem_counts(correct: Any, index: int) -> tuple[int, int]:
    if isinstance(correct, Tensor):
        values = correct.detach().reshape(-1)
    elif isinstance(correct, Sequence) and not isinstance(correct, (str, bytes)):
        try:
            values = torch.tensor([float(v) for v in correct], dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"PassAtK.update: correct[{index}] must hold one bool (or 0/1) per sample, got {correct!r:.80}"
            ) from None
    else:
        raise TypeError(
            f"PassAtK.update: correct[{index}] is {type(correct).__name__}; each problem needs a list or "
            "tensor of per-sample correctness (bools, or 0/1)"
        )
    if values.numel() == 0:
        raise ValueError(f"PassAtK.update: correct[{index}] has no samples; every problem needs at least one")
    if values.dtype != torch.bool:
        if not bool(((values == 0) | (values == 1)).all()):
            odd = values[(values != 0) & (values != 1)][0].item()
            raise ValueError(
                f"PassAtK.update: correct[{index}] holds {odd!r}, not 0/1; pass booleans, e.g. rewards >= 1"
            )
        values = values != 0
    return values.numel(), int(values.sum())


def _pass_at_k_update(
    correct: Sequence[Sequence[bool] | Tensor] | Tensor | None = None,
    n: Tensor | Sequence[int] | None = None,
    c: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-problem counts from correctness (a list of per-problem samples, or ``[P, S]``) or from ``(n, c)``.

    Returns:
        ``(n, c)``: int64 tensors ``[P]`` on the CPU (or on ``correct``/``n``'s device when given as tensors).
    """
    if correct is not None and (n is not None or c is not None):
        raise ValueError("PassAtK.update: give either `correct` or both `n` and `c`, not both")
    if correct is None:
        if n is None or c is None:
            raise ValueError("PassAtK.update: give `correct` (per-problem correctness) or both `n` and `c` (counts)")
        n_t = torch.as_tensor(n).reshape(-1)
        c_t = torch.as_tensor(c, device=n_t.device).reshape(-1)
        if n_t.shape != c_t.shape:
            raise ValueError(f"PassAtK.update: n has {n_t.numel()} problems but c has {c_t.numel()}; they must match")
        n64, c64 = n_t.to(torch.float64), c_t.to(torch.float64)
        for name, values in (("n", n64), ("c", c64)):
            bad = (values != values.round()) | (values < 0)
            if bool(bad.any()):
                index = int(bad.nonzero()[0, 0])
                raise ValueError(f"PassAtK.update: {name}[{index}]={values[index].item()} is not a count (>= 0 integer)")
        bad = (c64 > n64) | (n64 < 1)
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"PassAtK.update: problem {index} has n={_fmt(n64[index])}, c={_fmt(c64[index])}; "
                "need n >= 1 and 0 <= c <= n"
            )
        return n64.long(), c64.long()

    if isinstance(correct, Tensor):
        if correct.ndim != 2:
            raise ValueError(
                f"PassAtK.update: a tensor `correct` must be [P, S] (problems x samples), got shape "
                f"{tuple(correct.shape)}; for uneven sample counts pass a list of per-problem tensors"
            )
        if correct.shape[1] == 0:
            raise ValueError("PassAtK.update: `correct` has zero samples per problem")
        flags = correct if correct.dtype == torch.bool else correct != 0  # [P, S]
        if correct.dtype != torch.bool and not bool(((correct == 0) | (correct == 1)).all()):
            row = int((~((correct == 0) | (correct == 1))).any(dim=1).nonzero()[0, 0])
            _per_problem_counts(correct[row], row)  # raises with the offending value
        n_t = torch.full((correct.shape[0],), correct.shape[1], dtype=torch.long, device=correct.device)  # [P]
        return n_t, flags.sum(dim=1).long()  # [P], [P]

    if not isinstance(correct, Sequence) or isinstance(correct, (str, bytes)):
        raise TypeError(
            f"PassAtK.update: `correct` must be a list of per-problem correctness or a [P, S] tensor, "
            f"got {type(correct).__name__}"
        )
    counts = [_per_problem_counts(problem, index) for index, problem in enumerate(correct)]
    device = next((p.device for p in correct if isinstance(p, Tensor)), torch.device("cpu"))
    n_t = torch.tensor([nc[0] for nc in counts], dtype=torch.long, device=device)  # [P]
    c_t = torch.tensor([nc[1] for nc in counts], dtype=torch.long, device=device)  # [P]
    return n_t, c_t


def _pass_at_k_compute(n: Tensor, c: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """Average of the per-problem pass@k over problems: ``{k: float64 scalar}``."""
    if n.numel() == 0:
        raise ValueError("pass@k: no problems seen; call update(...) with at least one problem first")
    per_problem = pass_at_k_per_problem(n, c, ks)  # [P, K]
    mean = per_problem.mean(dim=0)  # [K]
    return {int(k): mean[j] for j, k in enumerate(ks)}
