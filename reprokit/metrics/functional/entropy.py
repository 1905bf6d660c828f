"""Token entropy and the statistics of "forking tokens" (Wang et al. 2025, arXiv 2506.01939).

H_t = -sum_v p_v log p_v with p = softmax(logits_t / T) over the full vocabulary, in nats.
``token_entropy`` is for measuring, not training: it runs without autograd and works through the
positions in chunks, so a float32 copy of a ``[B, T, V]`` logits tensor (2.4 GB for 4 x 1024 tokens
of a 152k vocabulary) is never built; bf16 logits are upcast one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Elements (positions x vocabulary) of one float32 chunk when chunk_size is None: 128 MB per temporary.
_CHUNK_ELEMENTS = 1 << 25


@torch.no_grad()
def token_entropy(logits: Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """Full-vocabulary entropy (nats) of ``softmax(logits / temperature)`` at every position.

    Args:
        logits: ``[..., V]``, any float dtype (bf16 / fp16 are upcast to float32 one chunk at a time).
        temperature: sampling temperature T > 0; use the rollout temperature (e.g. 0.6) to measure the
            distribution the samples came from.
        chunk_size: positions per chunk over the flattened leading dimensions; ``None`` picks enough
            positions for about 2**25 elements per chunk. Any value works, it need not divide the length.

    Returns:
        ``[...]`` (the leading shape of ``logits``), float32 (float64 for float64 logits), no grad.
        Positions whose logits are all ``-inf`` give NaN.
    """
    if not logits.is_floating_point():
        raise TypeError(f"token_entropy: logits must be a float tensor, got {logits.dtype}")
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"token_entropy: logits must be [..., V] with V >= 1, got shape {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"token_entropy: temperature must be > 0, got {temperature}")
    vocab = logits.shape[-1]
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // vocab)
    if chunk_size < 1:
        raise ValueError(f"token_entropy: chunk_size must be >= 1 (positions per chunk), got {chunk_size}")

    dtype = torch.promote_types(logits.dtype, torch.float32)
    flat = logits.reshape(-1, vocab)  # [N, V], a view when logits is contiguous
    out = torch.empty(flat.shape[0], dtype=dtype, device=logits.device)  # [N]
    for start in range(0, flat.shape[0], chunk_size):
        scaled = flat[start : start + chunk_size].to(dtype) / temperature  # [n, V]
        logp = torch.log_softmax(scaled, dim=-1)  # [n, V]
        p = logp.exp()  # [n, V]
        # p = 0 (a -inf logit, or underflow) contributes 0, not 0 * -inf = NaN.
        out[start : start + chunk_size] = -torch.where(p > 0, p * logp, 0.0).sum(dim=-1)  # [n]
    return out.reshape(logits.shape[:-1])  # [...]


def masked_values(values: Tensor, mask: Tensor | None, name: str = "entropy") -> Tensor:
    """The entries of ``values`` where ``mask`` is true, flattened: ``[N_valid]``.

    ``mask`` must have ``values``' shape (bool, or 0/1); ``None`` keeps every entry.
    """
    if mask is None:
        return values.reshape(-1)
    if mask.shape != values.shape:
        raise ValueError(
            f"{name} has shape {tuple(values.shape)} but mask has {tuple(mask.shape)}; "
            "they must match (one flag per position, True = response token)"
        )
    return values[mask.to(device=values.device, dtype=torch.bool)]  # [N_valid]


def quantiles(values: Tensor, qs: Sequence[float]) -> Tensor:
    """Quantiles with linear interpolation, like ``torch.quantile`` / ``numpy.quantile`` defaults.

    Unlike ``torch.quantile`` there is no input size limit (it refuses more than 2**24 values,
    fewer tokens than one evaluation run). Computed in float64; NaN for an empty input.

    Returns:
        float64 ``[len(qs)]``.
    """
    q = torch.as_tensor(list(qs), dtype=torch.float64, device=values.device)  # [Q]
    if bool(((q < 0) | (q > 1)).any()):
        raise ValueError(f"quantiles must lie in [0, 1], got {list(qs)}")
    if values.numel() == 0:
        return torch.full_like(q, float("nan"))
    ordered = values.reshape(-1).to(torch.float64).sort().values  # [N]
    pos = q * (ordered.numel() - 1)  # [Q]
    lo = pos.floor().long()  # [Q]
    hi = pos.ceil().long()  # [Q]
    return torch.lerp(ordered[lo], ordered[hi], pos - lo)  # [Q]


def _top_fraction_mask(values: Tensor, rho: float) -> Tensor:
    """Values at or above the (1 - rho) quantile of ``values``: the top-rho positions, ``[N]`` bool."""
    threshold = quantiles(values, (1.0 - rho,))[0]
    return values.to(torch.float64) >= threshold


def _check_rho(rho: float) -> None:
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1] (the top fraction of positions, e.g. 0.2), got {rho}")


def _high_entropy_overlap_update(
    entropy_a: Tensor, entropy_b: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Valid entropies of both models at the same positions: ``([N_valid], [N_valid])``, paired."""
    if entropy_a.shape != entropy_b.shape:
        raise ValueError(
            f"entropy_a has shape {tuple(entropy_a.shape)} but entropy_b has {tuple(entropy_b.shape)}; "
            "score both models on the same token sequences"
        )
    return masked_values(entropy_a, mask, "entropy_a"), masked_values(entropy_b, mask, "entropy_b")


def _high_entropy_overlap_compute(values_a: Tensor, values_b: Tensor, rho: float) -> Tensor:
    """|top_a & top_b| / |top_a| over the pooled values; NaN when there are none."""
    _check_rho(rho)
    if values_a.numel() == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=values_a.device)
    top_a = _top_fraction_mask(values_a, rho)  # [N]
    top_b = _top_fraction_mask(values_b, rho)  # [N]
    return (top_a & top_b).sum().to(torch.float64) / top_a.sum()


def high_entropy_overlap(entropy_a: Tensor, entropy_b: Tensor, mask: Tensor | None = None, rho: float = 0.2) -> Tensor:
    """Share of model A's top-rho entropy positions that are also among model B's.

    ``top_x`` = valid positions whose entropy is >= the (1 - rho) quantile (linear interpolation) of
    model x's valid entropies, the quantile pooled over all sequences (as the paper's threshold,
    never per sequence). Returns ``|top_a & top_b| / |top_a|`` as a float64 scalar.

    Args:
        entropy_a, entropy_b: ``[B, T]`` (any equal shapes) entropies of two models on the same tokens.
        mask: same shape, True at the positions to count (response tokens); ``None`` counts all.
        rho: top fraction, 0 < rho <= 1.
    """
    values_a, values_b = _high_entropy_overlap_update(entropy_a, entropy_b, mask)
    return _high_entropy_overlap_compute(values_a, values_b, rho)


def _entropy_stats_update(
    entropy: Tensor, mask: Tensor | None, low: float, threshold: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Valid entropies ``[N_valid]`` and their sum, count, count below ``low``, count above ``threshold``."""
    if not entropy.is_floating_point():
        raise TypeError(f"entropy must be a float tensor, got {entropy.dtype}")
    values = masked_values(entropy.detach(), mask)  # [N_valid]
    total = values.sum(dtype=torch.float64)
    count = torch.tensor(values.numel(), dtype=torch.long, device=values.device)
    return values, total, count, (values < low).sum(), (values > threshold).sum()


def _entropy_stats_compute(
    values: Tensor,
    total: Tensor,
    count: Tensor,
    n_low: Tensor,
    n_high: Tensor,
    qs: Sequence[float],
) -> dict[str, Tensor]:
    """``mean``, one ``p{100 q}`` per quantile q, ``frac_low`` and ``frac_high``; float64, NaN when empty."""
    count = count.to(torch.float64)
    out = {"mean": total.to(torch.float64) / count}
    for q, value in zip(qs, quantiles(values, qs)):
        out[quantile_key(q)] = value
    out["frac_low"] = n_low.to(torch.float64) / count
    out["frac_high"] = n_high.to(torch.float64) / count
    return out


def quantile_key(q: float) -> str:
    """The result key of quantile ``q``: 0.5 -> ``"p50"``, 0.8 -> ``"p80"``, 0.995 -> ``"p99.5"``."""
    return f"p{round(100 * q, 6):g}"


def entropy_stats(
    entropy: Tensor,
    mask: Tensor | None = None,
    qs: Sequence[float] = (0.5, 0.8, 0.9, 0.99),
    low: float = 0.01,
    threshold: float = 0.672,
) -> dict[str, Tensor]:
    """Summary of the valid entries of ``entropy`` (e.g. ``[B, T]`` from ``token_entropy``).

    Keys: ``mean``; ``p50``, ``p80``, ... (one per quantile, linear interpolation); ``frac_low``
    (share of valid positions with entropy < ``low``); ``frac_high`` (share > ``threshold``).
    The defaults follow arXiv 2506.01939: half of CoT tokens lie below 0.01 nats and the
    80th percentile is 0.672 on Qwen3-8B. Values are float64 scalars, NaN without valid positions.
    """
    values, total, count, n_low, n_high = _entropy_stats_update(entropy, mask, low, threshold)
    return _entropy_stats_compute(values, total, count, n_low, n_high, qs)
