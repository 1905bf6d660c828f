"""Perplexity of responses under a model: PPL_model(y | x), the paper's check that RL outputs are already likely
under the base model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from reprokit.data.batching import get_pad_token_id
from reprokit.evaluation.specs import model_device

__all__ = ["response_perplexity"]


@torch.no_grad()
def response_perplexity(
    model,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    add_special_tokens: bool = False,
    batch_size: int = 8,
    chunk_size: int = 1024,
    progress: bool = False,
) -> list[float | None]:
    """PPL_model(y | x) = exp(-mean_t log p(y_t | x, y_<t)) of each response given its prompt.

    Prompts and responses are tokenized separately with ``tokenizer`` (the scoring model's own), so responses
    of a model with another vocabulary are scored as text. Log-probs come from the last hidden states through
    :func:`reprokit.algorithms.response_logprobs` (chunked, no ``[B, T, V]`` logits), at temperature 1.

    Args:
        prompts: rendered prompt texts (template applied).
        responses: response texts, one per prompt.
        add_special_tokens: tokenizer flag for the prompts (False for chat-template text that holds its markers).
        batch_size: sequences per forward pass.
        chunk_size: positions per chunk of the output-head pass.

    Returns:
        One perplexity per pair; None for an empty response (nothing to score).
    """
    from tqdm.auto import tqdm

    from reprokit.algorithms import response_logprobs

    if len(prompts) != len(responses):
        raise ValueError(f"response_perplexity: {len(prompts)} prompts but {len(responses)} responses")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
    pad_id = get_pad_token_id(tokenizer)
    device = model_device(model)
    was_training = model.training
    model.eval()
    out: list[float | None] = [None] * len(prompts)
    # Similar lengths share a batch: less padding.
    scorable = [i for i in range(len(prompts)) if response_ids[i]]
    order = sorted(scorable, key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    bar = tqdm(total=len(order), unit="response", desc="perplexity", disable=not progress, dynamic_ncols=True)
    try:
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            lengths = [len(prompt_ids[i]) + len(response_ids[i]) for i in rows]
            width = max(lengths)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, L]
            mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, L]
            labels = torch.full((len(rows), width - 1), -100, dtype=torch.long)  # [B, L-1]
            for b, i in enumerate(rows):
                p, r = len(prompt_ids[i]), len(response_ids[i])
                # Right padding keeps every real token at its natural position id.
                ids[b, : p + r] = torch.tensor(prompt_ids[i] + response_ids[i])  # [p + r]
                mask[b, : p + r] = 1
                labels[b, p - 1 : p + r - 1] = ids[b, p : p + r]  # position t predicts token t + 1
            first = min(len(prompt_ids[i]) for i in rows) - 1  # no response token is predicted before this
            target = labels[:, first:].to(device)  # [B, L-1-first]
            logp, _ = response_logprobs(
                model, ids.to(device), mask.to(device), target, first=first, chunk_size=chunk_size, with_entropy=False
            )  # [B, T]
            scored = (target != -100).float()  # [B, T]
            mean_logp = (logp.float() * scored).sum(-1) / scored.sum(-1)  # [B]
            for b, i in enumerate(rows):
                out[i] = math.exp(-float(mean_logp[b]))
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return out


