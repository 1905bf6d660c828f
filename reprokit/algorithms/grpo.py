"""GRPO objective pieces: group advantages, the clipped policy loss, the k3 KL term and the
forking-token (high-entropy) mask.

Everything here is a pure tensor function: no model, no optimizer, no process group. Shapes use
B = sequences in the (micro-)batch, T = response positions, N = B = num_groups * group_size.

Conventions shared with verl and TRL (GRPO: Shao et al. 2024; DAPO: Yu et al. 2025, arXiv 2503.14476; Dr. GRPO:
Liu et al. 2025, arXiv 2503.20783; the focal tokens: Wang et al. 2025, arXiv 2506.01939):

* Advantages are one scalar per response, broadcast over its tokens.
* The policy loss is the PPO clipped surrogate with separate lower / upper clip ranges
  ("clip-higher", DAPO) and verl's optional dual clip for negative advantages.
* Aggregation names follow verl: ``token-mean`` (TRL "dapo"/"bnpo"), ``seq-mean-token-mean``
  (TRL "grpo"), ``seq-mean-token-sum-norm`` (TRL "dr_grpo", divides by a constant max length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "AGG_MODES",
    "ADVANTAGE_SCALES",
    "group_advantages",
    "LossDenominators",
    "PolicyLossTokens",
    "aggregate_denominator",
    "aggregate_numerator",
    "focal_mask",
    "focal_count",
    "focal_topk",
    "grpo_objective",
    "kl_k3",
    "overlong_penalty",
    "policy_loss_tokens",
]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ADVANTAGE_SCALES = ("group", "batch", "none")

# Log-ratio bound before exp: exp(20) ~ 5e8 keeps float32 finite (exp(89) is inf, and inf * 0 at a
# padded position would turn the masked sum into NaN). Same bound as verl.
_LOG_RATIO_BOUND = 20.0
# verl's low_var_kl clamps the per-token k3 value to this range.
_KL_BOUND = 10.0


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """Per-response advantage r - mean(group r), optionally divided by a standard deviation.

    Args:
        rewards: ``[N]`` rewards laid out group-contiguously: responses ``g*group_size ... (g+1)*group_size - 1``
            belong to prompt ``g``.
        group_size: responses per prompt (G).
        scale: ``"group"`` divides by the group's unbiased std + eps (GRPO); ``"batch"`` divides by the
            unbiased std of all N rewards + eps; ``"none"`` does not divide (Dr. GRPO).
        eps: added to the std so a group with equal rewards gives 0, not NaN.

    Returns:
        ``[N]`` advantages in the rewards' floating dtype (float32 for integer / bool rewards).

    A std over a single value is undefined; it is taken as 0 here, so a group (or batch) of one
    response gets advantage 0: there is nothing to compare it with.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale={scale!r} is not one of {ADVANTAGE_SCALES}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [num_groups * group_size], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = rewards.numel()
    if n % group_size != 0:
        raise ValueError(
            f"number of rewards ({n}) is not divisible by group_size ({group_size}): "
            f"rewards must hold num_groups * group_size values, one group after the other"
        )
    if not rewards.is_floating_point():
        rewards = rewards.float()  # [N]

    grouped = rewards.view(n // group_size, group_size)  # [num_groups, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [num_groups, G]

    if scale == "group":
        std = _unbiased_std(grouped, dim=1)  # [num_groups, 1]
        centred = centred / (std + eps)  # [num_groups, G]
    elif scale == "batch":
        std = _unbiased_std(rewards, dim=0)  # [1]
        centred = centred / (std + eps)  # [num_groups, G]
    return centred.reshape(n)  # [N]


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment, added to the reward: 0 up to ``max_len - buffer`` tokens, then falling
    linearly to ``-factor`` at ``max_len`` (verl's DAPO reward manager: ``min(-(l - (max_len - buffer)) / buffer
    * factor, 0)``).

    Args:
        lengths: ``[N]`` response lengths in tokens (the EOS included, as verl counts its response mask).
        max_len: the maximum response length (max_new_tokens).
        buffer: the soft zone in tokens, ``0 < buffer < max_len``.
        factor: the penalty at ``max_len``.

    Returns:
        ``[N]`` float32 penalties, each in ``[-factor, 0]``.
    """
    if not 0 < buffer < max_len:
        raise ValueError(f"overlong buffer must be in (0, max_len={max_len}), got {buffer}")
    excess = lengths.float() - (max_len - buffer)  # [N]
    return (-excess / buffer * factor).clamp(max=0.0)  # [N]


def _unbiased_std(x: Tensor, dim: int) -> Tensor:
    """Unbiased std along ``dim`` (kept), 0 where only one value exists instead of NaN."""
    if x.shape[dim] < 2:
        return torch.zeros_like(x.narrow(dim, 0, 1))  # [..., 1, ...]
    return x.std(dim=dim, correction=1, keepdim=True)  # [..., 1, ...]


# --------------------------------------------------------------------------------------------
# Loss aggregation
# --------------------------------------------------------------------------------------------


def aggregate_numerator(loss_tokens: Tensor, mask: Tensor, agg: str = "token-mean", max_len: int | None = None) -> Tensor:
    """A masked reduction's sum part: a sum over rows, so the parts of a split batch add up; divided by
    :func:`aggregate_denominator` of the whole batch it is the batch's token-mean, seq-mean-token-mean or
    seq-mean-token-sum-norm (verl's names; TRL's dapo, grpo and dr_grpo), however the batch is split.

    token-mean: the sum of valid values; seq-mean-token-mean: the sum of each sequence's token mean
    (sequences with valid tokens); seq-mean-token-sum-norm: the sum of each sequence's token sum / max_len.
    """
    _check_agg(loss_tokens, mask, agg)
    mask = mask.to(loss_tokens.dtype)  # [B, T]
    # where(), not a product: a non-finite value at a padded position must not leak into the sum.
    masked = torch.where(mask > 0, loss_tokens, torch.zeros_like(loss_tokens))  # [B, T]
    if agg == "token-mean":
        return masked.sum()  # []
    sums = masked.sum(dim=1)  # [B]
    if agg == "seq-mean-token-mean":
        return (sums / mask.sum(dim=1).clamp(min=1.0)).sum()  # [] an empty row adds 0
    if max_len is None:
        raise ValueError(
            "agg='seq-mean-token-sum-norm' needs max_len (the constant divisor, normally the maximum "
            "response length of the run); pass max_len=..."
        )
    if max_len <= 0:
        raise ValueError(f"max_len must be > 0 for agg='seq-mean-token-sum-norm', got {max_len}")
    return (sums / max_len).sum()  # []


def aggregate_denominator(mask: Tensor, agg: str = "token-mean", rows: int | None = None) -> Tensor:
    """The count part of a masked reduction (float32 scalar): valid tokens (token-mean), sequences with at
    least one valid token (seq-mean-token-mean), or all sequences (seq-mean-token-sum-norm: ``rows`` of them
    when given, for a batch that carries placeholder rows that are not responses)."""
    if agg not in AGG_MODES:
        raise ValueError(f"agg={agg!r} is not one of {AGG_MODES}")
    valid = mask.bool()  # [B, T]
    if agg == "token-mean":
        return valid.sum().float()  # []
    if agg == "seq-mean-token-mean":
        return valid.any(dim=1).sum().float()  # []
    return torch.tensor(float(mask.shape[0] if rows is None else rows), device=mask.device)  # []


def _check_agg(loss_tokens: Tensor, mask: Tensor, agg: str) -> None:
    if agg not in AGG_MODES:
        raise ValueError(f"agg={agg!r} is not one of {AGG_MODES}")
    if loss_tokens.shape != mask.shape or loss_tokens.dim() != 2:
        raise ValueError(
            f"loss_tokens and mask must both be [B, T], got {tuple(loss_tokens.shape)} and {tuple(mask.shape)}"
        )


# --------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------


@dataclass
class PolicyLossTokens:
    """The clipped surrogate per token, before aggregation, and where each clip was active."""

    loss: Tensor  # [B, T] per-token loss (unmasked: combine with a mask when aggregating)
    ratio: Tensor  # [B, T] exp(logp - old_logp), detached
    low: Tensor  # [B, T] bool: A < 0 and ratio < 1 - epsilon_low
    high: Tensor  # [B, T] bool: A > 0 and ratio > 1 + epsilon_high
    dual: Tensor | None  # [B, T] bool: A < 0 and the dual bound active (None without dual_clip)

    def counts(self, mask: Tensor) -> dict[str, Tensor]:
        """Token counts under ``mask`` ``[B, T]``: clip/low_frac, clip/high_frac, clip/frac, clip/dual_frac and
        the summed ratio (ratio/mean), each still to be divided by the number of tokens counted over."""
        valid = mask.bool()  # [B, T]
        out = {
            "clip/low_frac": (self.low & valid).sum().float(),  # []
            "clip/high_frac": (self.high & valid).sum().float(),  # []
            "clip/frac": ((self.low | self.high) & valid).sum().float(),  # []
        }
        if self.dual is not None:
            out["clip/dual_frac"] = (self.dual & valid).sum().float()  # []
        out["ratio/mean"] = torch.where(valid, self.ratio, torch.zeros_like(self.ratio)).sum().float()  # []
        return out

    def deviation_max(self, mask: Tensor) -> Tensor:
        """max |ratio - 1| over the tokens of ``mask`` (0 when there are none): how far off-policy an update is."""
        deviation = torch.where(mask.bool(), (self.ratio - 1.0).abs(), torch.zeros_like(self.ratio))  # [B, T]
        return deviation.max().float() if deviation.numel() else torch.zeros((), device=self.ratio.device)  # []


def policy_loss_tokens(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    dual_clip: float | None = None,
) -> PolicyLossTokens:
    """The PPO / GRPO clipped surrogate per token, with clip-higher and an optional dual clip: with
    ratio = exp(logp - old_logp) and A the response's advantage,
    ``loss = -min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A)``, and for A < 0 with
    ``dual_clip`` c: ``min(loss, -c * A)``. With one on-policy update ``old_logp`` is ``logp.detach()``: the ratio
    is 1 and the clip never acts."""
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.dim() != 2:
        raise ValueError(
            f"logp, old_logp and mask must all be [B, T], got {tuple(logp.shape)}, "
            f"{tuple(old_logp.shape)} and {tuple(mask.shape)}"
        )
    if advantages.dim() == 1:
        if advantages.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages has {advantages.shape[0]} entries but logp has B={logp.shape[0]} rows")
        adv = advantages.unsqueeze(1)  # [B, 1]
    elif advantages.shape == logp.shape:
        adv = advantages  # [B, T]
    else:
        raise ValueError(
            f"advantages must be [B] or [B, T], got {tuple(advantages.shape)} for logp {tuple(logp.shape)}"
        )
    if not (0.0 <= epsilon_low < 1.0) or epsilon_high < 0.0:
        raise ValueError(f"need 0 <= epsilon_low < 1 and epsilon_high >= 0, got {epsilon_low}, {epsilon_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (verl uses 3.0) or None, got {dual_clip}")
    adv = adv.to(logp.dtype).detach()  # [B, 1] or [B, T]

    log_ratio = (logp - old_logp.detach()).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -adv * ratio  # [B, T]
    clipped = -adv * ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)  # [B, T]
    # The max of the two negated terms is the min of the surrogates: the pessimistic bound.
    loss_tokens = torch.maximum(unclipped, clipped)  # [B, T]

    shape = logp.shape
    neg = (adv < 0).expand(shape)  # [B, T]
    pos = (adv > 0).expand(shape)  # [B, T]
    with torch.no_grad():
        low = neg & (ratio < 1.0 - epsilon_low)  # [B, T]
        high = pos & (ratio > 1.0 + epsilon_high)  # [B, T]
    dual = None
    if dual_clip is not None:
        # For A < 0 the clipped loss -A * ratio grows without bound as ratio grows; cap it at -c * A.
        dual_bound = -adv * dual_clip  # [B, 1] or [B, T]
        with torch.no_grad():
            dual = neg & (loss_tokens > dual_bound)  # [B, T]
        loss_tokens = torch.where(neg, torch.minimum(loss_tokens, dual_bound), loss_tokens)  # [B, T]
    return PolicyLossTokens(loss=loss_tokens, ratio=ratio.detach(), low=low, high=high, dual=dual)


# --------------------------------------------------------------------------------------------
# KL to the reference policy
# --------------------------------------------------------------------------------------------


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref_logp - logp.

    Unbiased for the KL with samples from the policy, always >= 0, and lower variance than
    log-ratio (k1) (verl's ``low_var_kl``, TRL's GRPO KL term). d is clamped to [-20, 20] before
    exp and the result to [-10, 10], as in verl, so one token whose probability collapsed cannot
    dominate the batch or overflow.

    Args:
        logp: ``[B, T]`` policy log-probs of the sampled tokens (with grad).
        ref_logp: ``[B, T]`` reference-model log-probs of the same tokens.

    Returns:
        ``[B, T]`` per-token KL; reduce it with :func:`aggregate_numerator` / :func:`aggregate_denominator`.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp and ref_logp must have the same shape, got {tuple(logp.shape)} and {tuple(ref_logp.shape)}"
        )
    d = (ref_logp.detach() - logp).clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)  # [B, T]
    return (torch.exp(d) - d - 1.0).clamp(-_KL_BOUND, _KL_BOUND)  # [B, T]


# --------------------------------------------------------------------------------------------
# Forking tokens: keep only the top-fraction entropy tokens
# --------------------------------------------------------------------------------------------


def _check_fraction(fraction: float) -> None:
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"focal fraction (the share of highest-entropy tokens kept) must be in (0, 1], got {fraction}")


def focal_mask(
    entropy: Tensor,
    mask: Tensor,
    fraction: float,
    *,
    pooled: Tensor | None = None,
    offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Keep only the high-entropy ("forking") tokens: exactly ``ceil(fraction * N)`` of the N valid tokens.

    Args:
        entropy: ``[B, T]`` per-token entropy at the rollout temperature (no grad needed).
        mask: ``[B, T]`` valid response tokens; padding never counts towards the selection.
        fraction: fraction of valid tokens kept, in (0, 1]; 1 keeps all valid tokens.
        pooled: ``[M]`` the valid entropies of the whole rollout batch in a fixed global order (every
            micro-batch and process, as the paper pools them), of which this batch's valid tokens, in
            row-major order, are ``pooled[offset : offset + N]``. None = this batch alone.
        offset: where this batch's valid tokens start in ``pooled``.

    Returns:
        ``(keep [B, T] bool, threshold scalar)``: the threshold is the smallest kept entropy (``+inf`` when
        nothing is kept). Multiply ``keep`` into the policy-loss mask.

    The paper's code keeps every token at or above the (1 - fraction) quantile, so tied entropies (a model that is
    certain writes many tokens at entropy ~0) can keep more than fraction of the tokens. Here the ``ceil(fraction * M)``
    highest are kept and ties at the threshold go to the tokens that come first in the pooled order, so the
    kept fraction is fraction up to rounding, whatever the ties.
    """
    _check_fraction(fraction)
    if entropy.shape != mask.shape:
        raise ValueError(
            f"entropy and mask must have the same shape, got {tuple(entropy.shape)} and {tuple(mask.shape)}"
        )
    valid = mask.bool()  # [B, T]
    entropy = entropy.detach()  # [B, T]
    local = entropy[valid]  # [N] row-major
    if pooled is None:
        pooled, offset = local, 0
    if offset < 0 or offset + local.numel() > pooled.numel():
        raise ValueError(f"this batch's {local.numel()} valid tokens at offset {offset} do not fit in pooled [{pooled.numel()}]")
    kept_pooled, threshold = focal_topk(pooled, fraction)  # [M], []
    keep = torch.zeros_like(valid)  # [B, T]
    keep[valid] = kept_pooled[offset : offset + local.numel()]
    return keep, threshold


def focal_count(n: int, fraction: float) -> int:
    """How many of ``n`` valid tokens the focal mask keeps: ``ceil(fraction * n)`` (at most n)."""
    _check_fraction(fraction)
    return min(n, math.ceil(fraction * n - 1e-9))  # the epsilon keeps 0.2 * 10 from rounding up to 3


def focal_topk(values: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """Which of ``values`` ``[M]`` are the ``ceil(fraction * M)`` highest (ties: lower index first), and the smallest
    kept value (``+inf`` for an empty input)."""
    _check_fraction(fraction)
    values = values.detach().reshape(-1).float()  # [M]
    m = values.numel()
    keep = torch.zeros(m, dtype=torch.bool, device=values.device)  # [M]
    if m == 0:
        return keep, torch.tensor(math.inf, device=values.device)
    k = focal_count(m, fraction)
    order = torch.argsort(values, descending=True, stable=True)  # [M] stable: ties keep index order
    keep[order[:k]] = True
    return keep, values[order[k - 1]]


# --------------------------------------------------------------------------------------------
# The whole objective
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossDenominators:
    """The counts that turn the objective's sums into means over the WHOLE rollout batch.

    Counted once over every micro-batch (and, under DDP, summed over every process) before the update, so
    the gradient does not depend on how the batch is split. ``scale`` multiplies the loss: the number of
    processes, because DDP averages gradients over them and each process must contribute its share of the
    global sum, not its own mean.
    """

    pg: float  # aggregate_denominator of the policy-gradient mask (valid & focal)
    valid: float  # aggregate_denominator of the valid mask (entropy, KL)
    pg_tokens: float  # tokens in the policy-gradient mask (for per-token metrics)
    valid_tokens: float  # valid response tokens (for per-token metrics)
    scale: float = 1.0  # processes whose gradients DDP averages

    @staticmethod
    def counts(loss_mask: Tensor, pg_mask: Tensor, agg: str, rows: int | None = None) -> Tensor:
        """``[4]`` float64 local counts (pg, valid, pg_tokens, valid_tokens): sum them over micro-batches and
        processes, then :meth:`from_counts`. ``rows``: the responses among the rows (see aggregate_denominator)."""
        return torch.stack(
            [
                aggregate_denominator(pg_mask, agg, rows),
                aggregate_denominator(loss_mask, agg, rows),
                pg_mask.bool().sum().float(),
                loss_mask.bool().sum().float(),
            ]
        ).double()  # [4]

    @classmethod
    def from_counts(cls, counts: Tensor, scale: float = 1.0) -> "LossDenominators":
        pg, valid, pg_tokens, valid_tokens = (float(c) for c in counts.tolist())
        return cls(pg=pg, valid=valid, pg_tokens=pg_tokens, valid_tokens=valid_tokens, scale=float(scale))


def grpo_objective(
    logp: Tensor,
    entropy: Tensor,
    advantages: Tensor,
    loss_mask: Tensor,
    pg_mask: Tensor,
    denominators: LossDenominators,
    *,
    old_logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
    loss_agg: str = "token-mean",
    max_len: int | None = None,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    dual_clip: float | None = None,
    entropy_coef: float = 0.0,
    kl_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO / DAPO / Dr. GRPO loss of one micro-batch, as its share of the whole batch's loss::

        loss = agg_pg(clipped surrogate) - entropy_coef * agg_valid(entropy) + kl_coef * agg_valid(k3 KL)

    where ``agg_pg`` aggregates over ``pg_mask`` (the valid tokens, or only the forking ones) and ``agg_valid``
    over ``loss_mask`` (KL and entropy are not focal-masked), each as ``aggregate_numerator / denominator`` with
    the whole batch's denominators, times ``denominators.scale``. Summing this loss over the micro-batches of a
    batch (and averaging over processes, as DDP does with gradients) gives exactly the loss of the whole batch
    in one piece, for every ``loss_agg``.

    Args:
        logp: ``[B, T]`` log-probs of the sampled tokens under the policy (with grad).
        entropy: ``[B, T]`` per-token entropy (with grad when ``entropy_coef != 0``).
        advantages: ``[B]`` one advantage per response.
        loss_mask: ``[B, T]`` response tokens that get loss (truncated responses may be masked out).
        pg_mask: ``[B, T]`` tokens that get policy gradient, a subset of ``loss_mask``.
        denominators: the whole batch's counts (:class:`LossDenominators`).
        old_logp: ``[B, T]`` behaviour log-probs; None = on-policy (ratio 1: ``logp.detach()``).
        ref_logp: ``[B, T]`` reference log-probs, needed when ``kl_coef > 0``.
        loss_agg, max_len: see :func:`aggregate`.
        epsilon_low, epsilon_high, dual_clip: see :func:`policy_loss`.
        entropy_coef, kl_coef: weights of the entropy bonus and the KL penalty.

    Returns:
        ``(loss, metrics)``: metrics are this micro-batch's detached shares, on the same scale as the loss, so
        they too add up over micro-batches to the batch's value: ``loss/pg``, ``loss/total``, ``entropy/mean``
        (per valid token), ``entropy/kept_mean`` (per policy-gradient token), ``kl/mean`` (when ``kl_coef > 0``),
        ``clip/*`` and ``ratio/mean`` (per policy-gradient token); except ``ratio/deviation_max``, the largest
        ``|ratio - 1|`` of the micro-batch's policy-gradient tokens, which combines by its maximum.
    """
    if kl_coef > 0 and ref_logp is None:
        raise ValueError("grpo_objective: kl_coef > 0 needs ref_logp (the reference model's log-probs)")
    valid_f = loss_mask.to(logp.dtype)  # [B, T]
    pg_f = (pg_mask.bool() & loss_mask.bool()).to(logp.dtype)  # [B, T]
    old = logp.detach() if old_logp is None else old_logp  # [B, T]
    tokens = policy_loss_tokens(logp, old, advantages, pg_f, epsilon_low, epsilon_high, dual_clip)
    scale = denominators.scale
    per = lambda value, count: value * (scale / max(count, 1.0))  # noqa: E731  share of a global mean

    pg = per(aggregate_numerator(tokens.loss, pg_f, loss_agg, max_len), denominators.pg)  # []
    loss = pg
    if entropy_coef != 0:
        loss = loss - entropy_coef * per(aggregate_numerator(entropy, valid_f, loss_agg, max_len), denominators.valid)
    kl = None
    if kl_coef > 0:
        kl = per(aggregate_numerator(kl_k3(logp, ref_logp), valid_f, loss_agg, max_len), denominators.valid)  # []
        loss = loss + kl_coef * kl

    with torch.no_grad():
        ent = entropy.detach()  # [B, T]
        metrics = {
            "loss/pg": pg.detach(),
            "loss/total": loss.detach(),
            "entropy/mean": per((ent * valid_f).sum(), denominators.valid_tokens),
            "entropy/kept_mean": per((ent * pg_f).sum(), denominators.pg_tokens),
        }
        if kl is not None:
            metrics["kl/mean"] = kl.detach()
        for key, count in tokens.counts(pg_f).items():
            metrics[key] = per(count, denominators.pg_tokens)
        metrics["ratio/deviation_max"] = tokens.deviation_max(pg_f)  # a max: not a share, not summed
    return loss, metrics
