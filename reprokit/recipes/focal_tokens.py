"""Forking-token RLVR (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv 2506.01939).

What it reproduces: a DAPO-style policy gradient applied ONLY to the top ρ = 20% highest-entropy response
tokens ("forking" tokens such as "wait", "thus", "suppose") matches or beats training on every token.
`--loss.focal_scope batch` (default) takes the top ⌈ρ·N⌉ of all N valid response tokens of the rollout batch,
pooled across micro-batches and processes, from the rollout's entropies (the paper's formula);
`--loss.focal_scope micro_batch` takes the top ⌈ρ·n⌉ of each micro-batch on each process from the training
forward's entropy, recomputed at every update (the released code's get_global_entropy_top_mask). Padding never
counts; KL and entropy terms (both 0 in DAPO) are not masked.

Recipe (DAPO, as the paper's base algorithm): clip-low 0.2 / clip-high 0.28, token-mean loss, no KL, no
entropy bonus, dynamic sampling (groups whose rewards are all equal are dropped and further prompts sampled
until the step holds prompts_per_step informative groups, up to rollout.max_refill_rounds extra rounds), several
optimizer updates per rollout step (train.mini_batch_size; the later ones off-policy, where clip-higher acts),
rollout temperature 1.0, DAPO's soft overlong punishment (rollout.overlong_buffer) or the masking of truncated
responses (loss.mask_truncated). Data: DSR-sub (1209 problems) by default, or any file / Hugging Face dataset
with question and answer fields.

The released code's run is the `paper` preset (Qwen3-14B-Base, full fine-tuning, 512 prompts × 16 responses,
16 updates per step, 20480-token responses, 16 nodes × 8 GPUs with FSDP). The one-GPU preset departs from it
(`--departures` prints how; README gives each reason): Qwen2.5-Math-1.5B with LoRA on a 4-bit base, 16 × 8 per
step in 4 updates, 3072-token responses with truncated ones masked, the paper's batch-wide focal formula; refill
draws random prompts of the training set (DAPO takes the next batches of its stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L

from reprokit.data import MathDataModule, Prompt, Validation
from reprokit.data.benchmarks import default_data_dirs
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


def default_train_path(data: TrainData) -> str:
    if data.path:
        return data.path
    roots = [Path(data.data_dir)] if data.data_dir else default_data_dirs()
    for root in roots:
        if (root / "train" / "dsr_sub.parquet").is_file():
            return str(root / "train" / "dsr_sub.parquet")
    tried = ", ".join(str(r / "train" / "dsr_sub.parquet") for r in roots) or "no --data.data_dir, no REPROKIT_DATA_DIR"
    raise SystemExit(
        f"data.path is not set and DSR-sub was not found ({tried}): pass --data.path FILE or "
        "--data.data_dir pointing at a folder with train/dsr_sub.parquet"
    )


RECIPE = grpo_recipe("focal_tokens", __doc__.split("\n\n")[0], TrainData)


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe from the command line; returns the summary printed at the end."""
    return run(argv)[0]


def run(argv: list[str] | None = None) -> tuple[dict, L.Trainer, GRPOModule]:
    """Parse, build, train, validate; returns (summary, trainer, module) for callers that inspect the run."""
    return run_grpo_recipe(RECIPE, _train_data, argv)


def _train_data(tokenizer, data: TrainData, prompt: Prompt, seed: int, validation: Validation | None) -> MathDataModule:
    return MathDataModule(
        tokenizer, path=default_train_path(data), skip_invalid=data.skip_invalid, question_field=data.question_field,
        answer_field=data.answer_field, id_field=data.id_field, batch_size=data.prompts_per_step, prompt=prompt, seed=seed,
        validation=validation,
    )


if __name__ == "__main__":
    main()
