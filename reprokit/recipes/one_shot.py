"""1-shot RLVR (Wang et al. 2025, arXiv 2504.20571): GRPO on a single training example, π1 by default.

What it reproduces: RL with a verifiable reward on ONE math problem (π1, replicated to fill every batch,
each copy its own GRPO group) lifts a base model's accuracy on whole benchmarks (MATH500 36.0 → 72.8 for
Qwen2.5-Math-1.5B in the paper), and test accuracy keeps rising after training accuracy on π1 saturates.

The paper's own run is the `paper` preset: One-Shot-RLVR's training_1.5b_pi1_r128.sh with its verl defaults
written out (full fine-tuning, 128 copies of π1 × 8 responses per step, one on-policy update, lr 1e-6, 8 GPUs).
The one-GPU presets depart from it (`--departures` prints how; README gives each reason), mainly:
- LoRA adapters (rank 64, all linear layers) on a 4-bit NF4 base instead of full fine-tuning. The KL
  reference is the same network with the adapter switched off, so no second model is held in memory.
  LoRA learns more slowly per step than full fine-tuning at the paper's lr 1e-6, so the presets use
  lr 2e-5 (a usual LoRA scale-up).
- 16 (24 GB) or 8 (12 GB) copies × 8 responses per step instead of 128 × 8; shorter responses in the 12 GB
  preset (1024 instead of 3072 new tokens).
- Responses end at the chat end token `<|im_end|>`; the paper's vLLM stops only at the EOS.
Everything else follows the paper: Qwen2.5-Math chat template with its system prompt and the
"Let's think step by step" suffix; reward 1 if the last \\boxed{} equals the label; clip 0.2; k3 KL 0.001;
entropy bonus 0.001 at the rollout temperature 0.6; token-mean loss; AdamW wd 0.01, constant lr; one on-policy
update per rollout step; checkpoint every 20 steps.

Run `python -m reprokit.recipes.one_shot --help` for every option. With no CUDA device and no --preset
it runs the `cpu` preset and says so: the same recipe on the CPU world (`reprokit.worlds`), its 1 M-parameter
base shipped with the package, one world problem, test pass@1 printed before and after (about 2 minutes).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L

from reprokit.data import OneShotDataModule, Prompt, Validation
from reprokit.recipes._grpo import grpo_recipe, run_grpo_recipe
from reprokit.training.grpo import GRPOModule


@dataclass
class OneShotData:
    """The training example(s)."""

    examples: str = "pi1"
    """Embedded example names (pi1, pi2, pi13, pi1209; comma list such as pi1,pi13), a registered example set
    (world:train-00136, word_problems:train-00012), or a data file path."""
    label: str = "dataset"
    """π1's label: dataset (12.8, as the paper trains) or true (12.7; the paper reports the same results)."""
    question_field: str = "question"
    """Question field of a user data file."""
    answer_field: str = "answer"
    """Answer field of a user data file."""
    prompts_per_step: int = 16
    """Copies of the example(s) per rollout batch; each copy is one GRPO group of group_size responses."""


RECIPE = grpo_recipe("one_shot", __doc__.split("\n\n")[0], OneShotData)


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe from the command line; returns the summary printed at the end."""
    return run(argv)[0]


def run(argv: list[str] | None = None) -> tuple[dict, L.Trainer, GRPOModule]:
    """Parse, build, train, validate; returns (summary, trainer, module) for callers that inspect the run."""
    return run_grpo_recipe(RECIPE, _train_data, argv)


def _train_data(tokenizer, data: OneShotData, prompt: Prompt, seed: int, validation: Validation | None) -> OneShotDataModule:
    return OneShotDataModule(
        tokenizer, examples=data.examples, label=data.label, question_field=data.question_field,
        answer_field=data.answer_field, batch_size=data.prompts_per_step, prompt=prompt, seed=seed, validation=validation,
    )


if __name__ == "__main__":
    main()
