"""GRPO building blocks: advantages, losses, the forking-token mask, the whole objective, chunked log-probs."""

from reprokit.algorithms.grpo import (
    ADVANTAGE_SCALES,
    AGG_MODES,
    LossDenominators,
    aggregate_denominator,
    aggregate_numerator,
    focal_count,
    focal_mask,
    focal_topk,
    group_advantages,
    grpo_objective,
    kl_k3,
    overlong_penalty,
    policy_loss_tokens,
)
from reprokit.algorithms.logprobs import naive_logprobs_and_entropy, response_logprobs, token_logprobs_and_entropy

__all__ = [
    "ADVANTAGE_SCALES",
    "AGG_MODES",
    "LossDenominators",
    "aggregate_denominator",
    "aggregate_numerator",
    "focal_count",
    "focal_mask",
    "focal_topk",
    "group_advantages",
    "grpo_objective",
    "kl_k3",
    "naive_logprobs_and_entropy",
    "overlong_penalty",
    "policy_loss_tokens",
    "response_logprobs",
    "token_logprobs_and_entropy",
]
