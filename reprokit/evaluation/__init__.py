"""Evaluation building blocks of the analysis recipes: load a model from one string (:mod:`.specs`), the resumable
samples file (:mod:`.samples`), sampling and grading into it (:mod:`.grading`), and the perplexity of responses
under a model (:mod:`.perplexity`).
"""

from reprokit.evaluation.grading import (
    SamplingReport,
    correctness_by_problem,
    grade,
    regrade_samples,
    render_prompts,
    sample_to_jsonl,
)
from reprokit.evaluation.perplexity import response_perplexity
from reprokit.evaluation.samples import Sample, SampleWriter, read_jsonl_lines, read_samples
from reprokit.evaluation.specs import (
    QUANTIZATION_CHOICES,
    ModelSource,
    ModelSpecError,
    free_memory,
    load_model_spec,
    model_device,
    parse_models,
    resolve_model_spec,
)

__all__ = [
    "QUANTIZATION_CHOICES",
    "ModelSource",
    "ModelSpecError",
    "Sample",
    "SampleWriter",
    "SamplingReport",
    "correctness_by_problem",
    "free_memory",
    "grade",
    "load_model_spec",
    "model_device",
    "parse_models",
    "read_jsonl_lines",
    "read_samples",
    "regrade_samples",
    "render_prompts",
    "resolve_model_spec",
    "response_perplexity",
    "sample_to_jsonl",
]
