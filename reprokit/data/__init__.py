"""Data for RLVR: examples from files, the embedded 1-shot examples, benchmarks, prompts and DataModules.

Example::

    from reprokit.data import OneShotDataModule
    dm = OneShotDataModule(tokenizer, "pi1", batch_size=128)   # π1 copied 128 times per step
"""

from reprokit.data.batching import (
    PromptBatch,
    PromptDataset,
    PromptItem,
    ResumableDataLoader,
    SeededEpochSampler,
    collate_prompts,
    get_pad_token_id,
    tokenize_examples,
)
from reprokit.data.benchmarks import BENCHMARKS, Benchmark, load_benchmark, load_problems
from reprokit.data.embedded import EMBEDDED_NAMES, get_embedded_examples
from reprokit.data.errors import DataError
from reprokit.data.modules import EvalDataModule, MathDataModule, OneShotDataModule, Validation
from reprokit.data.readers import Example, read_examples
from reprokit.data.templates import COT_SUFFIX, PROMPT_TEMPLATES, QWEN25_MATH_SYSTEM, Prompt, render_prompt

__all__ = [
    "BENCHMARKS",
    "COT_SUFFIX",
    "EMBEDDED_NAMES",
    "PROMPT_TEMPLATES",
    "QWEN25_MATH_SYSTEM",
    "Benchmark",
    "DataError",
    "EvalDataModule",
    "Example",
    "MathDataModule",
    "OneShotDataModule",
    "Prompt",
    "PromptBatch",
    "PromptDataset",
    "PromptItem",
    "ResumableDataLoader",
    "SeededEpochSampler",
    "Validation",
    "collate_prompts",
    "get_embedded_examples",
    "load_benchmark",
    "load_problems",
    "get_pad_token_id",
    "read_examples",
    "render_prompt",
    "tokenize_examples",
]
