"""Synthetic worlds: task families with verifiable answers plus a tiny base model pretrained on them on CPU.

The arithmetic-chain world (:mod:`reprokit.worlds.arith`) is the CPU stand-in for "a base model and a
math benchmark": ``pretrain_base(WorldConfig())`` returns a folder with a base model that solves the
test split at low pass@1 and high pass@k, JSONL splits for the kit's readers and ``base_metrics.json``.
"""

from reprokit.worlds.arith import (
    EOS_TOKEN,
    PROMPT_FORMAT,
    PROMPT_SEPARATOR,
    PROMPT_TEMPLATE,
    STYLES,
    Problem,
    Splits,
    WorldConfig,
    alphabet,
    build_corpus,
    build_tokenizer,
    config_hash,
    export_splits,
    grade,
    make_splits,
    max_response_chars,
    parse_question,
    render_prompt,
    reward,
    solution_pairs,
    teacher_error_rates,
    write_solution,
)
from reprokit.worlds.pretrain import (
    build_model,
    default_cache_dir,
    evaluate_pass_at_k,
    load_base,
    load_world_config,
    pretrain_base,
)

__all__ = [
    "EOS_TOKEN",
    "PROMPT_FORMAT",
    "PROMPT_SEPARATOR",
    "PROMPT_TEMPLATE",
    "STYLES",
    "Problem",
    "Splits",
    "WorldConfig",
    "alphabet",
    "build_corpus",
    "build_model",
    "build_tokenizer",
    "config_hash",
    "default_cache_dir",
    "evaluate_pass_at_k",
    "export_splits",
    "grade",
    "load_base",
    "load_world_config",
    "make_splits",
    "max_response_chars",
    "parse_question",
    "pretrain_base",
    "render_prompt",
    "reward",
    "solution_pairs",
    "teacher_error_rates",
    "write_solution",
]
