"""CPU worlds: a task family with verifiable answers, writers of a pretraining corpus, and a tiny base model
pretrained on it from scratch on CPU; a client of the kit, reached through names of :mod:`reprokit.registry`.

``pretrain_base(WorldConfig())`` returns a folder with a base model that solves the test split at low pass@1
and high pass@k, JSONL splits for the kit's readers and ``base_metrics.json``. The modules: what defines a
world (:mod:`~reprokit.worlds.config`), the task (:mod:`~reprokit.worlds.task`), who writes solutions
(:mod:`~reprokit.worlds.teacher`), the base model (:mod:`~reprokit.worlds.base`) and the registered names
(:mod:`~reprokit.worlds.names`).
"""

from reprokit.worlds.base import (
    build_model,
    default_cache_dir,
    evaluate_pass_at_k,
    load_base,
    load_world_config,
    pretrain_base,
)
from reprokit.worlds.config import WORLDS, BaseConfig, WorldConfig, config_hash
from reprokit.worlds.task import (
    EOS_TOKEN,
    PROMPT_FORMAT,
    PROMPT_SEPARATOR,
    PROMPT_TEMPLATE,
    Problem,
    Splits,
    alphabet,
    build_tokenizer,
    export_splits,
    grade,
    make_splits,
    parse_question,
    render_prompt,
    reward,
)
from reprokit.worlds.teacher import (
    STYLES,
    build_corpus,
    max_response_chars,
    write_solution,
)

__all__ = [
    "EOS_TOKEN",
    "PROMPT_FORMAT",
    "PROMPT_SEPARATOR",
    "PROMPT_TEMPLATE",
    "STYLES",
    "WORLDS",
    "BaseConfig",
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
    "write_solution",
]
