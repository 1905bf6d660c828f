"""Sampling responses from a causal LM: the rollout stage of GRPO and of every evaluation recipe."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class Completions:
    """Responses sampled for a batch of prompts, laid out group-contiguously (prompt i's n samples at i*n … i*n+n-1)."""

    prompt_ids: torch.Tensor  # [N, L] left-padded, each prompt repeated n times
    prompt_mask: torch.Tensor  # [N, L]
    completion_ids: torch.Tensor  # [N, T] right-padded with the pad id
    completion_mask: torch.Tensor  # [N, T] 1 up to and including the first EOS
    truncated: torch.Tensor  # [N] bool: no EOS within max_new_tokens
    texts: list[str]  # decoded responses, special tokens removed
    seconds: float  # wall time spent in generate

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)  # [N]

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask that keeps tokens up to and including the first EOS; also whether each row never hit EOS.

    The pad id is often an EOS id too, so the mask cannot come from `!= pad`: only the first EOS ends a response.
    """
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)  # [N, T]
    for eos in eos_ids:
        is_eos |= completion_ids == eos
    seen_before = (is_eos.cumsum(-1) - is_eos.long()) > 0  # [N, T] an EOS strictly earlier in the row
    mask = (~seen_before).long()  # [N, T]
    truncated = ~is_eos.any(-1)  # [N]
    return mask, truncated


@torch.no_grad()
def generate(
    model,
    tokenizer,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_ids: list[int] | None = None,
    batch_size: int | None = None,
) -> Completions:
    """Sample `n` responses for each left-padded prompt; `temperature == 0` means greedy decoding.

    `batch_size` bounds how many sequences one `generate` call decodes at once (memory), in whole groups.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    eos_ids = list(eos_ids) if eos_ids else [tokenizer.eos_token_id]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    was_training = model.training
    # Dropout off and the KV cache on (gradient checkpointing turns the cache off in train mode).
    model.eval()
    prompts_per_call = max(1, (batch_size or n * input_ids.shape[0]) // n)
    sample_kwargs = (
        dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        if temperature > 0
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    )
    start = time.perf_counter()
    chunks = []
    try:
        for begin in range(0, input_ids.shape[0], prompts_per_call):
            ids = input_ids[begin : begin + prompts_per_call]  # [p, L]
            mask = attention_mask[begin : begin + prompts_per_call]  # [p, L]
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                eos_token_id=eos_ids,
                pad_token_id=pad_id,
                use_cache=True,
                **sample_kwargs,
            )  # [p*n, L + t]
            chunks.append(out[:, ids.shape[1] :])
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start

    width = max(c.shape[1] for c in chunks)
    completion_ids = torch.cat(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks]
    )  # [N, T]
    completion_mask, truncated = completion_mask_from_ids(completion_ids, eos_ids)  # [N, T], [N]
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad_id)  # [N, T]
    texts = tokenizer.batch_decode(completion_ids * completion_mask + pad_id * (1 - completion_mask), skip_special_tokens=True)
    return Completions(
        prompt_ids=input_ids.repeat_interleave(n, dim=0),  # [N, L]
        prompt_mask=attention_mask.repeat_interleave(n, dim=0),  # [N, L]
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        truncated=truncated,
        texts=texts,
        seconds=seconds,
    )
