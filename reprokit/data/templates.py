"""Prompt templates: how a problem becomes the text the policy continues.

``qwen25-math-cot`` is the prompt of the 1-shot RLVR paper and of the Qwen2.5-Math evaluation
(the tokenizer's chat template, Qwen2.5-Math system prompt); ``chat`` is the tokenizer's chat template with the
problem as the only (user) turn, as verl renders the 80/20 paper's prompts; ``r1`` is the plain-text
DeepSeek-R1-Zero prompt; ``none`` is the bare problem (Dr. GRPO found Qwen2.5-Math base models
score best with no template). Any string containing ``{question}`` is a template too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["COT_SUFFIX", "PROMPT_TEMPLATES", "QWEN25_MATH_SYSTEM", "R1_TEMPLATE", "Prompt", "render_prompt", "uses_chat_markup"]

COT_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
QWEN25_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
R1_TEMPLATE = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the User with "
    "the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>.\nUser: {question}\nAssistant: <think>"
)


def _qwen25_math_cot(question: str, tokenizer: Any = None) -> str:
    """The tokenizer's chat template with the Qwen2.5-Math system prompt, ready for the assistant turn.

    Without a tokenizer, or with one that has no chat template but knows ChatML's markers, the Qwen2.5 ChatML
    layout is written out directly; for Qwen2.5 tokenizers both give the same text. A tokenizer with neither
    (Gemma's base model, a character tokenizer) would read the markers as plain text and lose its BOS token: that
    is an error naming the templates that work.
    """
    messages = [{"role": "system", "content": QWEN25_MATH_SYSTEM}, {"role": "user", "content": question}]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if tokenizer is not None and not _knows(tokenizer, "<|im_start|>"):
        raise ValueError(
            "template 'qwen25-math-cot' needs the tokenizer's chat template or ChatML's <|im_start|> token, and this "
            f"tokenizer ({type(tokenizer).__name__}) has neither; use template 'none' or 'r1', or a format string "
            "such as 'Question: {question}\nAnswer:' (prompt.template)"
        )
    return (
        f"<|im_start|>system\n{QWEN25_MATH_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def _chat(question: str, tokenizer: Any = None) -> str:
    """The tokenizer's own chat template with the problem as the one user turn and no system prompt, ready for the
    assistant turn: how verl's RL datasets render a prompt (``apply_chat_template([user], add_generation_prompt)``)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"template 'chat' needs a tokenizer with a chat template, and {type(tokenizer).__name__} has none; use "
            "template 'qwen25-math-cot', 'none' or a format string with {question} (prompt.template)"
        )
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def _knows(tokenizer: Any, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return isinstance(token_id, int) and token_id != getattr(tokenizer, "unk_token_id", None)


def _r1(question: str, tokenizer: Any = None) -> str:
    """DeepSeek-R1-Zero plain-text prompt; the completion starts inside ``<think>``."""
    return R1_TEMPLATE.replace("{question}", question)


def _none(question: str, tokenizer: Any = None) -> str:
    """The problem text alone."""
    return question


PROMPT_TEMPLATES: dict[str, Callable[[str, Any], str]] = {
    "qwen25-math-cot": _qwen25_math_cot,
    "chat": _chat,
    "r1": _r1,
    "none": _none,
}


def render_prompt(
    question: str, template: str = "qwen25-math-cot", tokenizer: Any = None, *, cot_suffix: bool = True
) -> str:
    """Render one problem as prompt text.

    Args:
        question: the problem text.
        template: a name from :data:`PROMPT_TEMPLATES`, or a format string containing ``{question}``
            (only ``{question}`` is substituted, so other braces such as ``\\boxed{}`` stay as written).
        tokenizer: a transformers tokenizer; ``qwen25-math-cot`` and ``chat`` use it (its chat template).
        cot_suffix: append :data:`COT_SUFFIX` to the problem, as the 1-shot RLVR data does, unless the
            problem already ends with it (verl training files already carry it).

    Raises:
        ValueError: for an unknown template name without ``{question}``.
    """
    if cot_suffix and not question.rstrip().endswith(COT_SUFFIX.strip()):
        question = question + COT_SUFFIX
    if template in PROMPT_TEMPLATES:
        return PROMPT_TEMPLATES[template](question, tokenizer)
    if "{question}" in template:
        return template.replace("{question}", question)
    raise ValueError(
        f"unknown prompt template {template!r}; use one of {', '.join(PROMPT_TEMPLATES)} "
        "or a format string containing '{question}'"
    )


def uses_chat_markup(template: str) -> bool:
    """Whether the rendered text already holds the model's special markers (no BOS/EOS to add)."""
    return template in ("qwen25-math-cot", "chat")


@dataclass
class Prompt:
    """How a problem becomes the text the model continues: the `prompt` section every recipe shares."""

    template: str = "qwen25-math-cot"
    """qwen25-math-cot (the Qwen2.5-Math chat prompt), chat (the tokenizer's chat template, one user turn), r1, none,
    or a format string with {question} (the CPU world: "{question}\\n", written in YAML)."""
    cot_suffix: bool = True
    """Append " Let's think step by step and output the final answer within \\boxed{}." as the 1-shot paper does
    (skipped when the problem already ends with it)."""
    max_prompt_length: int = 1024
    """Longest prompt in tokens; a longer one is an error naming the problem, unless drop_long_prompts."""
    drop_long_prompts: bool = False
    """Drop prompts longer than max_prompt_length (counted in a warning) instead of stopping."""

    def __post_init__(self):
        if self.template not in PROMPT_TEMPLATES and "{question}" not in self.template:
            raise ValueError(
                f"prompt.template={self.template!r}: use one of {', '.join(PROMPT_TEMPLATES)} or a format string "
                "containing {question}"
            )
        if self.max_prompt_length < 1:
            raise ValueError(f"prompt.max_prompt_length={self.max_prompt_length} must be at least 1 token")

