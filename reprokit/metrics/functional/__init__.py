"""Functional metrics: plain functions on tensors, the core the ``reprokit.metrics`` classes delegate to."""

from reprokit.metrics.functional.analysis import (
    ACCURACY_BINS,
    accuracy_histogram,
    bootstrap_interval,
    solved_set_overlap,
    stratified_bootstrap_interval,
)
from reprokit.metrics.functional.entropy import (
    entropy_stats,
    high_entropy_overlap,
    masked_values,
    quantile_key,
    quantiles,
    token_entropy,
)
from reprokit.metrics.functional.pass_at_k import mean_pass_at_k, pass_at_k, pass_at_k_per_problem, powers_of_two

__all__ = [
    "ACCURACY_BINS",
    "accuracy_histogram",
    "bootstrap_interval",
    "entropy_stats",
    "high_entropy_overlap",
    "masked_values",
    "mean_pass_at_k",
    "pass_at_k",
    "pass_at_k_per_problem",
    "powers_of_two",
    "quantile_key",
    "quantiles",
    "solved_set_overlap",
    "stratified_bootstrap_interval",
    "token_entropy",
]
