"""Training: GRPO (:mod:`~reprokit.training.grpo`), supervised fine-tuning (:mod:`~reprokit.training.sft`), what
checkpoints hold (:mod:`~reprokit.training.checkpoints`) and the Trainer the recipes run
(:mod:`~reprokit.training.trainer`).
"""

from reprokit.training.grpo import GRPOConfig, GRPOModule, Rollout
from reprokit.training.sft import CausalLMModule, SFTDataModule
from reprokit.training.trainer import RunConfig, build_trainer

__all__ = ["CausalLMModule", "GRPOConfig", "GRPOModule", "Rollout", "RunConfig", "SFTDataModule", "build_trainer"]
