"""GRPO building blocks: advantages, losses, the forking-token mask, chunked log-probs."""

from reprokit.algorithms.grpo import (
    ADVANTAGE_SCALES,
    AGG_MODES,
    aggregate,
    focal_mask,
    focal_threshold,
    group_advantages,
    kl_k3,
    policy_loss,
)
from reprokit.algorithms.logprobs import naive_logprobs_and_entropy, token_logprobs_and_entropy

__all__ = [
    "ADVANTAGE_SCALES",
    "AGG_MODES",
    "aggregate",
    "focal_mask",
    "focal_threshold",
    "group_advantages",
    "kl_k3",
    "naive_logprobs_and_entropy",
    "policy_loss",
    "token_logprobs_and_entropy",
]
