"""Forking-token RLVR (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv 2506.01939).

What it reproduces: a DAPO-style policy gradient applied ONLY to the top ρ = 20% highest-entropy response
tokens ("forking" tokens such as "wait", "thus", "suppose") matches or beats training on every token.
The entropy threshold is the (1 − ρ) quantile over all valid response tokens of the rollout batch, pooled
across micro-batches and processes, never per sequence; padding never counts. KL and entropy terms (both 0
in DAPO) are not masked.

Recipe (DAPO, as the paper's base algorithm): clip-low 0.2 / clip-high 0.28, token-mean loss, no KL, no
entropy bonus, dynamic sampling (groups whose rewards are all equal are dropped and further prompts sampled
until the step holds prompts_per_step informative groups, up to grpo.max_refill_rounds extra rounds),
truncated responses masked out (the overlong filter), rollout temperature 1.0. Exactly ceil(rho * N) of the
batch's N valid tokens are kept (ties at the threshold go to the earlier tokens). Data: DSR-sub (1209 problems) by default, or any
file / Hugging Face dataset with question and answer fields.

Where it departs from the paper (one GPU): Qwen2.5-Math-1.5B with LoRA on a 4-bit base instead of full
fine-tuning of Qwen3-8B/14B/32B; smaller batches; refill draws random prompts of the training set (DAPO
takes the next batches of its stream); the soft overlong penalty is replaced by masking truncated responses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from reprokit.data import MathDataModule, Validation
from reprokit.recipes._grpo import grpo_recipe, run_grpo_recipe
from reprokit.training.grpo import GRPOModule


@dataclass
class TrainData:
    """The training set."""

    path: str | None = None
    """Training file (jsonl/json/csv/parquet) or Hugging Face dataset; None = DSR-sub from the data folder."""
    data_dir: str | None = None
    """Data folder laid out like shared/data (else $REPROKIT_DATA_DIR) for the default DSR-sub file."""
    question_field: str = "auto"
    """Question field (dotted paths such as prompt.0.content; auto detects the verl parquet layout)."""
    answer_field: str = "auto"
    """Answer field (auto detects reward_model.ground_truth in verl parquet files)."""
    skip_invalid: bool = True
    """Skip rows without a question or answer (reported in one warning; DSR-sub has one empty label)."""
    id_field: str | None = None
    """Example id field (default: the row index), used for the per-example accuracy file."""
    prompts_per_step: int = 16
    """Prompts per rollout batch; each gets group_size responses."""
    template: str = "qwen25-math-cot"
    """Prompt template: qwen25-math-cot, r1, none, or a format string with {question}."""
    cot_suffix: bool = True
    """Append the "Let's think step by step ... \\boxed{}" instruction (skipped if already present)."""
    max_prompt_length: int = 1024
    """Longest prompt in tokens; longer ones are an error unless drop_long_prompts."""
    drop_long_prompts: bool = False
    """Drop prompts longer than max_prompt_length (counted in a warning) instead of stopping."""


def default_train_path(data: TrainData) -> str:
    if data.path:
        return data.path
    root = data.data_dir or os.environ.get("REPROKIT_DATA_DIR")
    candidate = Path(root) / "train" / "dsr_sub.parquet" if root else None
    if candidate is None or not candidate.is_file():
        raise SystemExit(
            "data.path is not set and DSR-sub was not found "
            f"({candidate or 'no --data.data_dir and no REPROKIT_DATA_DIR'}): pass --data.path FILE or "
            "--data.data_dir pointing at a folder with train/dsr_sub.parquet"
        )
    return str(candidate)


RECIPE = grpo_recipe("focal_tokens", __doc__.split("\n\n")[0], TrainData)


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe from the command line; returns the summary printed at the end."""
    return run(argv)[0]


def run(argv: list[str] | None = None) -> tuple[dict, L.Trainer, GRPOModule]:
    """Parse, build, train, validate; returns (summary, trainer, module) for callers that inspect the run."""
    return run_grpo_recipe(RECIPE, _train_data, argv)


def _train_data(tokenizer, data: TrainData, seed: int, validation: Validation | None) -> MathDataModule:
    return MathDataModule(
        tokenizer,
        path=default_train_path(data),
        skip_invalid=data.skip_invalid,
        question_field=data.question_field,
        answer_field=data.answer_field,
        id_field=data.id_field,
        batch_size=data.prompts_per_step,
        template=data.template,
        cot_suffix=data.cot_suffix,
        max_prompt_length=data.max_prompt_length,
        drop_long_prompts=data.drop_long_prompts,
        seed=seed,
        validation=validation,
    )


if __name__ == "__main__":
    main()
