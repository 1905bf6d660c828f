"""GRPO advantages, losses, aggregation, k3 KL and the forking-token mask against plain
per-token Python loops."""

import math
import statistics
from fractions import Fraction

import pytest
import torch

from reprokit.algorithms import (
    LossDenominators,
    aggregate_denominator,
    aggregate_numerator,
    focal_mask,
    group_advantages,
    grpo_objective,
    kl_k3,
    overlong_penalty,
)

AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
MAX_LEN = 16


def aggregate(values, mask, agg="token-mean", max_len=None):
    """A whole batch's masked reduction through the pieces training uses: its numerator over its denominator."""
    numerator = aggregate_numerator(values, mask, agg, max_len)
    return numerator / aggregate_denominator(mask, agg).to(numerator.dtype).clamp(min=1.0)


def policy_loss(logp, old_logp, adv, mask, eps_low=0.2, eps_high=0.2, agg="token-mean", max_len=None, dual_clip=None):
    """The policy-gradient term as training computes it: grpo_objective with no KL and no entropy bonus, over a batch
    that is one micro-batch (its own denominators)."""
    denominators = LossDenominators.from_counts(LossDenominators.counts(mask, mask, agg))
    loss, metrics = grpo_objective(
        logp, torch.zeros_like(logp), adv, mask, mask, denominators, old_logp=old_logp, loss_agg=agg, max_len=max_len,
        epsilon_low=eps_low, epsilon_high=eps_high, dual_clip=dual_clip,
    )
    return loss, metrics


# --------------------------------------------------------------------------------------------
# Reference implementations: one token at a time
# --------------------------------------------------------------------------------------------


def ref_group_advantages(rewards, group_size, scale, eps):
    out = []
    batch_std = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    for g in range(len(rewards) // group_size):
        group = rewards[g * group_size : (g + 1) * group_size]
        mean = sum(group) / len(group)
        std = statistics.stdev(group) if len(group) > 1 else 0.0
        for r in group:
            if scale == "group":
                out.append((r - mean) / (std + eps))
            elif scale == "batch":
                out.append((r - mean) / (batch_std + eps))
            else:
                out.append(r - mean)
    return out


def ref_aggregate(values, mask, agg, max_len):
    """values / mask: nested lists [B][T] (floats or 0-d tensors)."""
    if agg == "token-mean":
        total, count = 0.0, 0
        for b in range(len(values)):
            for t in range(len(values[b])):
                if mask[b][t]:
                    total = total + values[b][t]
                    count += 1
        return total / max(count, 1)
    seq_values = []
    for b in range(len(values)):
        total, count = 0.0, 0
        for t in range(len(values[b])):
            if mask[b][t]:
                total = total + values[b][t]
                count += 1
        if agg == "seq-mean-token-mean":
            if count > 0:
                seq_values.append(total / count)
        else:
            seq_values.append(total / max_len)
    if not seq_values:
        return 0.0
    return sum(seq_values) / len(seq_values)


def ref_policy_loss(logp, old_logp, adv, mask, eps_low, eps_high, agg, max_len, dual_clip, exp=math.exp):
    """Returns (loss, per-token losses, counts). Works on floats (exp=math.exp) or on 0-d
    float64 tensors (exp=torch.exp), so the same loop also gives autograd gradients."""
    B, T = len(logp), len(logp[0])
    losses = [[0.0] * T for _ in range(B)]
    counts = {"low": 0, "high": 0, "either": 0, "dual": 0, "valid": 0}
    ratio_sum = 0.0
    for b in range(B):
        a = adv[b]
        for t in range(T):
            if not mask[b][t]:
                continue
            ratio = exp(logp[b][t] - old_logp[b][t])
            clipped_ratio = min(max(ratio, 1 - eps_low), 1 + eps_high)
            loss = -min(ratio * a, clipped_ratio * a)
            low = a < 0 and ratio < 1 - eps_low
            high = a > 0 and ratio > 1 + eps_high
            if dual_clip is not None and a < 0:
                if loss > -a * dual_clip:
                    counts["dual"] += 1
                loss = min(loss, -a * dual_clip)
            losses[b][t] = loss
            counts["low"] += int(low)
            counts["high"] += int(high)
            counts["either"] += int(low or high)
            counts["valid"] += 1
            ratio_sum += ratio.item() if isinstance(ratio, torch.Tensor) else ratio
    counts["ratio_mean"] = ratio_sum / max(counts["valid"], 1)
    return ref_aggregate(losses, mask, agg, max_len), losses, counts


def ref_kl_k3(logp, ref_logp):
    out = []
    for b in range(len(logp)):
        row = []
        for t in range(len(logp[b])):
            d = ref_logp[b][t] - logp[b][t]
            d = max(-20.0, min(20.0, d))
            k3 = math.exp(d) - d - 1.0
            row.append(max(-10.0, min(10.0, k3)))
        out.append(row)
    return out


def ref_quantile(values, q):
    """Linear interpolation between order statistics, as torch.quantile / numpy default."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def make_batch(dtype=torch.float64):
    """B = 7 responses, T = 9; ratios spread over [~0.3, ~5] so both clips and the dual clip act."""
    g = torch.Generator().manual_seed(0)
    B, T = 7, 9
    logp = -torch.rand(B, T, generator=g, dtype=dtype) * 3  # [B, T]
    old_logp = logp + torch.randn(B, T, generator=g, dtype=dtype) * 0.5  # [B, T]
    old_logp[1, 2] = logp[1, 2] - 1.7  # ratio ~5.5 with A < 0 -> dual clip
    old_logp[3, 0] = logp[3, 0] - 1.4  # ratio ~4 with A < 0
    old_logp[0, 0] = logp[0, 0] - 0.7  # ratio ~2 with A > 0 -> upper clip
    advantages = torch.tensor([1.3, -0.8, 0.0, -2.0, 0.5, -0.3, 0.9], dtype=dtype)  # [B]
    lengths = [9, 7, 3, 9, 1, 0, 5]  # one empty response
    mask = torch.zeros(B, T)  # [B, T]
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return logp, old_logp, advantages, mask


def as_lists(*tensors):
    return [x.tolist() for x in tensors]


# --------------------------------------------------------------------------------------------
# group_advantages
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_loop(scale):
    g = torch.Generator().manual_seed(1)
    rewards = torch.rand(12, generator=g, dtype=torch.float64)  # [N]
    rewards[4:8] = 1.0  # a group whose rewards are all equal
    got = group_advantages(rewards, group_size=4, scale=scale, eps=1e-6)
    want = ref_group_advantages(rewards.tolist(), 4, scale, 1e-6)
    assert got.shape == (12,)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert torch.all(got[4:8] == 0)


def test_group_advantages_binary_rewards_float32():
    rewards = torch.tensor([1, 0, 0, 0, 1, 1, 1, 1])  # integer 0/1 rewards
    got = group_advantages(rewards, group_size=4)
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all()
    want = ref_group_advantages([float(r) for r in rewards.tolist()], 4, "group", 1e-6)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float32), atol=1e-6)


def test_group_advantages_group_of_one_is_zero():
    got = group_advantages(torch.tensor([0.3, 1.0, 0.0]), group_size=1)
    assert torch.equal(got, torch.zeros(3))


def test_group_advantages_errors():
    with pytest.raises(ValueError, match=r"\(10\).*\(3\)"):
        group_advantages(torch.rand(10), group_size=3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.rand(6), group_size=3, scale="std")


# --------------------------------------------------------------------------------------------
# aggregate
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", AGGS)
def test_aggregate_matches_loop(agg):
    _, _, _, mask = make_batch()
    values = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # [B, T]
    values[mask == 0] = float("nan")  # padding must never leak in
    got = aggregate(values, mask, agg, max_len=MAX_LEN)
    want = ref_aggregate(values.tolist(), mask.tolist(), agg, MAX_LEN)
    assert got.item() == pytest.approx(want, abs=1e-12)


def test_aggregate_errors():
    x, m = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="max_len"):
        aggregate(x, m, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="agg"):
        aggregate(x, m, "sum")


# --------------------------------------------------------------------------------------------
# The policy-gradient term (grpo_objective without KL and entropy)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.2, 0.28)])
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_policy_loss_matches_loop(agg, eps_low, eps_high, dual_clip):
    logp, old_logp, adv, mask = make_batch()
    loss, metrics = policy_loss(
        logp, old_logp, adv, mask, eps_low, eps_high, agg=agg, max_len=MAX_LEN, dual_clip=dual_clip
    )
    want, _, counts = ref_policy_loss(
        *as_lists(logp, old_logp, adv, mask), eps_low, eps_high, agg, MAX_LEN, dual_clip
    )
    assert loss.item() == pytest.approx(want, abs=1e-12)

    n = counts["valid"]
    assert counts["low"] > 0 and counts["high"] > 0  # the batch exercises both clips
    assert metrics["loss/pg"].item() == pytest.approx(want, rel=1e-6, abs=1e-7)  # float32 metric
    assert metrics["clip/low_frac"].item() == pytest.approx(counts["low"] / n)
    assert metrics["clip/high_frac"].item() == pytest.approx(counts["high"] / n)
    assert metrics["clip/frac"].item() == pytest.approx(counts["either"] / n)
    assert metrics["ratio/mean"].item() == pytest.approx(counts["ratio_mean"], rel=1e-6)
    if dual_clip is None:
        assert "clip/dual_frac" not in metrics
    else:
        assert counts["dual"] > 0
        assert metrics["clip/dual_frac"].item() == pytest.approx(counts["dual"] / n)
    for value in metrics.values():  # detached scalars
        assert not value.requires_grad and value.is_floating_point() and value.dim() == 0


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_policy_loss_gradient_matches_loop(agg, dual_clip):
    logp, old_logp, adv, mask = make_batch()
    logp_a = logp.clone().requires_grad_()
    loss, _ = policy_loss(logp_a, old_logp, adv, mask, 0.2, 0.28, agg=agg, max_len=MAX_LEN, dual_clip=dual_clip)
    loss.backward()

    logp_b = logp.clone().requires_grad_()
    B, T = logp.shape
    cells = [[logp_b[b, t] for t in range(T)] for b in range(B)]  # 0-d float64 tensors
    ref, _, _ = ref_policy_loss(
        cells, old_logp.tolist(), adv.tolist(), mask.tolist(), 0.2, 0.28, agg, MAX_LEN, dual_clip, exp=torch.exp
    )
    ref.backward()
    assert torch.allclose(logp_a.grad, logp_b.grad, atol=1e-12)
    # Clipped tokens get no gradient; some unclipped ones do.
    assert (logp_a.grad == 0).any() and (logp_a.grad != 0).any()


def test_clip_higher_is_asymmetric():
    logp = torch.log(torch.tensor([[1.25, 0.78]], dtype=torch.float64))  # ratios vs old_logp = 0
    old_logp = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2)
    pos, neg = torch.tensor([1.0], dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64)
    # A > 0, ratio 1.25: clipped to 1.2 with the symmetric range, not with epsilon_high = 0.28.
    sym, m_sym = policy_loss(logp[:, :1], old_logp[:, :1], pos, mask[:, :1], 0.2, 0.2)
    high, m_high = policy_loss(logp[:, :1], old_logp[:, :1], pos, mask[:, :1], 0.2, 0.28)
    assert sym.item() == pytest.approx(-1.2) and m_sym["clip/high_frac"].item() == 1.0
    assert high.item() == pytest.approx(-1.25) and m_high["clip/high_frac"].item() == 0.0
    # A < 0, ratio 0.78: the lower side still clips at 0.8 whatever epsilon_high is.
    low, m_low = policy_loss(logp[:, 1:], old_logp[:, 1:], neg, mask[:, 1:], 0.2, 0.28)
    assert low.item() == pytest.approx(0.8) and m_low["clip/low_frac"].item() == 1.0


def test_dual_clip_caps_negative_advantage_loss():
    logp = torch.log(torch.tensor([[5.0, 5.0]], dtype=torch.float64))
    old_logp = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2)
    neg = torch.tensor([-2.0], dtype=torch.float64)
    plain, _ = policy_loss(logp, old_logp, neg, mask)
    capped, metrics = policy_loss(logp, old_logp, neg, mask, dual_clip=3.0)
    assert plain.item() == pytest.approx(10.0)  # -A * ratio
    assert capped.item() == pytest.approx(6.0)  # -A * c
    assert metrics["clip/dual_frac"].item() == 1.0
    # Positive advantages are never touched by the dual clip.
    pos_plain, _ = policy_loss(logp, old_logp, -neg, mask)
    pos_dual, _ = policy_loss(logp, old_logp, -neg, mask, dual_clip=3.0)
    assert pos_plain.item() == pos_dual.item()


@pytest.mark.parametrize("agg", AGGS)
def test_policy_loss_all_zero_mask_is_zero(agg):
    logp, old_logp, adv, _ = make_batch()
    logp = logp.clone().requires_grad_()
    mask = torch.zeros(logp.shape)
    loss, metrics = policy_loss(logp, old_logp, adv, mask, agg=agg, max_len=MAX_LEN, dual_clip=3.0)
    assert loss.item() == 0.0
    assert all(torch.isfinite(v) for v in metrics.values())
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))


def test_policy_loss_on_policy_ratio_one():
    logp, _, adv, mask = make_batch()
    loss, metrics = policy_loss(logp, logp, adv, mask)
    assert metrics["ratio/mean"].item() == pytest.approx(1.0)
    assert metrics["clip/frac"].item() == 0.0
    per_token = [[-adv[b].item()] * logp.shape[1] for b in range(logp.shape[0])]  # ratio 1: loss is -A
    want = ref_aggregate(per_token, mask.tolist(), "token-mean", None)
    assert loss.item() == pytest.approx(want)


def test_policy_loss_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(x, x, torch.zeros(2), torch.ones(2, 3), dual_clip=0.5)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(x, x, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="max_len"):
        policy_loss(x, x, torch.zeros(2), torch.ones(2, 3), agg="seq-mean-token-sum-norm")


# --------------------------------------------------------------------------------------------
# kl_k3
# --------------------------------------------------------------------------------------------


def test_kl_k3_matches_loop_including_clamps():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -30.0, -0.1, -5.0]], dtype=torch.float64)
    ref_logp = torch.tensor([[-1.0, -1.5, -3.0, -0.1, -40.0, -2.5]], dtype=torch.float64)
    # differences ref - logp: 0, 0.5, -2.5, 29.9 (clamp to 20, then to 10), -39.9 (clamp to -20), 2.5
    got = kl_k3(logp, ref_logp)
    want = ref_kl_k3(logp.tolist(), ref_logp.tolist())
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert got[0, 0].item() == 0.0
    assert got[0, 3].item() == 10.0  # exp(20) - 21 clamped
    assert got[0, 4].item() == pytest.approx(min(10.0, math.exp(-20) + 20 - 1))

    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 4
    ref_logp = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 4
    want = ref_kl_k3(logp.tolist(), ref_logp.tolist())
    assert torch.allclose(kl_k3(logp, ref_logp), torch.tensor(want, dtype=torch.float64), atol=1e-12)


def test_kl_k3_gradient_only_through_logp():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.tensor([[-1.5, -1.0]], dtype=torch.float64, requires_grad=True)
    kl_k3(logp, ref_logp).sum().backward()
    d = (ref_logp - logp).detach()
    assert torch.allclose(logp.grad, -(torch.exp(d) - 1))  # d/dlogp [e^d - d - 1] = -(e^d - 1)
    assert ref_logp.grad is None


# --------------------------------------------------------------------------------------------
# focal_mask / focal_threshold
# --------------------------------------------------------------------------------------------


def ref_focal_mask(entropy, mask, rho):
    """The ceil(rho * n) highest valid entropies; ties go to the earlier token in row-major order."""
    valid = [(entropy[b][t], b, t) for b in range(len(entropy)) for t in range(len(entropy[b])) if mask[b][t]]
    k = math.ceil(Fraction(str(rho)) * len(valid))
    # Python's sort is stable: among equal entropies the earlier position stays first.
    kept = sorted(valid, key=lambda item: -item[0])[:k]
    chosen = {(b, t) for _, b, t in kept}
    keep = [[(b, t) in chosen for t in range(len(entropy[b]))] for b in range(len(entropy))]
    return keep, (kept[-1][0] if kept else math.inf)


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.37, 1.0])
@pytest.mark.parametrize("ties", [False, True])
def test_focal_mask_matches_loop_and_ignores_padding(rho, ties):
    _, _, _, mask = make_batch()
    g = torch.Generator().manual_seed(4)
    entropy = torch.rand(mask.shape, generator=g) ** 3  # [B, T], mostly low like real CoT
    if ties:
        entropy = (entropy * 4).round() / 4  # few distinct values: the quantile rule would keep too many
    entropy[mask == 0] = 1e6  # padding with huge entropies must not raise the threshold
    keep, threshold = focal_mask(entropy, mask, rho)
    want_keep, want_threshold = ref_focal_mask(entropy.tolist(), mask.tolist(), rho)
    assert threshold.item() == pytest.approx(want_threshold, rel=1e-6)
    assert keep.dtype == torch.bool
    assert keep.tolist() == want_keep
    assert not keep[mask == 0].any()
    n_valid = int(mask.sum())
    # Exactly ceil(rho * N) tokens, ties or not.
    assert int(keep.sum()) == math.ceil(Fraction(str(rho)) * n_valid)


def test_focal_mask_pooled_over_parts_equals_the_whole_batch():
    """Two processes' parts, each selecting with the pooled entropies, keep what the whole batch keeps."""
    _, _, _, mask = make_batch()
    entropy = ((torch.rand(mask.shape, generator=torch.Generator().manual_seed(8)) * 3).round() / 3)  # ties
    whole, whole_threshold = focal_mask(entropy, mask, 0.2)
    parts = [(entropy[:2], mask[:2]), (entropy[2:], mask[2:])]
    pooled = torch.cat([e[m.bool()] for e, m in parts])
    offsets = [0, int(mask[:2].sum())]
    kept = [focal_mask(e, m, 0.2, pooled=pooled, offset=o) for (e, m), o in zip(parts, offsets)]
    assert torch.equal(torch.cat([k for k, _ in kept]), whole)
    assert all(t.item() == whole_threshold.item() for _, t in kept)


def test_focal_mask_rejects_a_fraction_outside_0_1():
    entropy, mask = torch.rand(2, 3), torch.ones(2, 3)
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="focal fraction"):
            focal_mask(entropy, mask, fraction)


def test_focal_mask_without_valid_tokens_keeps_nothing():
    keep, threshold = focal_mask(torch.rand(2, 3), torch.zeros(2, 3), 0.2)
    assert not keep.any() and math.isinf(threshold.item())


def test_overlong_penalty_is_dapos_linear_ramp_over_the_buffer():
    """verl's DAPO reward manager, restated: min(-(l - (L_max - L_cache)) / L_cache * factor, 0) per response."""
    max_len, buffer, factor = 20, 8, 0.5
    lengths = torch.tensor([1, 11, 12, 13, 16, 19, 20])

    def restated(length: int) -> float:
        exceed = length - (max_len - buffer)
        return min(-exceed / buffer * factor, 0.0)

    got = overlong_penalty(lengths, max_len, buffer, factor)
    assert got.tolist() == pytest.approx([restated(int(n)) for n in lengths], abs=1e-7)
    assert got[0] == 0 and got[2] == 0 and got[-1] == pytest.approx(-factor)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(lengths, max_len, 0)
