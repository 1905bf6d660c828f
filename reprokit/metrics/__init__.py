"""Metrics of the RLVR studies as torchmetrics ``Metric`` classes; plain functions live in ``functional``."""

from reprokit.metrics.entropy import HighEntropyOverlap, TokenEntropy
from reprokit.metrics.pass_at_k import PassAtK

__all__ = ["HighEntropyOverlap", "PassAtK", "TokenEntropy"]
