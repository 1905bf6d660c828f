"""From examples to a left-padded batch of prompts for generation."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from reprokit.data.errors import DataError
from reprokit.data.readers import Example
from reprokit.data.templates import render_prompt, uses_chat_markup

__all__ = [
    "PromptBatch",
    "PromptDataset",
    "PromptItem",
    "ResumableDataLoader",
    "SeededEpochSampler",
    "collate_prompts",
    "get_pad_token_id",
    "tokenize_examples",
]


@dataclass
class PromptItem:
    """One rendered, tokenized prompt (a dataset item before collation)."""

    prompt: str
    input_ids: list[int]
    answer: str
    example_id: str
    fields: dict = field(default_factory=dict)


@dataclass
class PromptBatch:
    """Prompts ready for ``generate``: token ids are LEFT-padded so every prompt ends at the last column.

    Attributes:
        prompts: rendered prompt text, one per row.
        input_ids: ``LongTensor [P, L]``, pad id on the left.
        attention_mask: ``LongTensor [P, L]``, 0 on the padding, 1 on prompt tokens.
        answers: reference answers, one per row.
        example_ids: id of the example each row came from (repeated for one-shot copies).
        fields: the example's source row, one dict per row (benchmark name for evaluation).
    """

    prompts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answers: list[str]
    example_ids: list[str]
    fields: list[dict]

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, *args: Any, **kwargs: Any) -> PromptBatch:
        """Move the tensors (``Tensor.to`` arguments); Lightning calls this to place the batch."""
        return replace(
            self,
            input_ids=self.input_ids.to(*args, **kwargs),
            attention_mask=self.attention_mask.to(*args, **kwargs),
        )


def collate_prompts(items: Sequence[PromptItem], pad_token_id: int) -> PromptBatch:
    """Stack items into a :class:`PromptBatch`, padding on the left with ``pad_token_id``."""
    if not items:
        raise DataError("cannot build a batch from zero prompts")
    length = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)  # [P, L]
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)  # [P, L]
    for row, item in enumerate(items):
        n = len(item.input_ids)
        # Left padding: generation appends after the last column, so every prompt must end there.
        input_ids[row, length - n :] = torch.tensor(item.input_ids, dtype=torch.long)  # [n]
        attention_mask[row, length - n :] = 1
    return PromptBatch(
        prompts=[item.prompt for item in items],
        input_ids=input_ids,
        attention_mask=attention_mask,
        answers=[item.answer for item in items],
        example_ids=[item.example_id for item in items],
        fields=[dict(item.fields) for item in items],
    )


def get_pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (the attention mask hides padding either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    raise DataError(
        "the tokenizer has neither a pad token nor an EOS token; set one, e.g. tokenizer.pad_token = '<pad>' "
        "after tokenizer.add_special_tokens({'pad_token': '<pad>'})"
    )


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    template: str = "qwen25-math-cot",
    cot_suffix: bool = True,
    max_prompt_length: int = 1024,
    drop_long_prompts: bool = False,
) -> list[PromptItem]:
    """Render and tokenize examples; prompts over ``max_prompt_length`` tokens are never cut.

    Raises:
        DataError: a prompt is longer than ``max_prompt_length`` (naming the example, its length and
            the options to change), unless ``drop_long_prompts`` drops such examples with a warning.
    """
    if max_prompt_length < 1:
        raise DataError(f"max_prompt_length={max_prompt_length} must be at least 1 token")
    prompts = [render_prompt(ex.question, template, tokenizer, cot_suffix=cot_suffix) for ex in examples]
    # Chat-template text already holds the model's markers; plain text gets the usual BOS/EOS rules.
    try:
        encoded = tokenizer(prompts, add_special_tokens=not uses_chat_markup(template))["input_ids"]
    except Exception as err:  # e.g. a character-level tokenizer without an unknown token meets a new character
        raise _untokenizable(examples, prompts, tokenizer, err) from err
    items, too_long = [], []
    for example, prompt, ids in zip(examples, prompts, encoded):
        if len(ids) > max_prompt_length:
            too_long.append((example.id, len(ids)))
            continue
        items.append(PromptItem(prompt, list(ids), example.answer, example.id, example.fields))
    if too_long:
        first_id, first_len = too_long[0]
        what = (
            f"example '{first_id}' has a {first_len}-token prompt, longer than max_prompt_length={max_prompt_length}"
            f" ({len(too_long)} of {len(prompts)} prompts are too long)"
        )
        if not drop_long_prompts:
            raise DataError(
                f"{what}; raise max_prompt_length, or set drop_long_prompts=True to drop them with a warning "
                "(prompts are never truncated)"
            )
        if not items:
            raise DataError(f"{what}; every prompt is too long: raise max_prompt_length")
        warnings.warn(f"dropped {len(too_long)} prompt(s) (drop_long_prompts=True): {what}", stacklevel=2)
    return items


def _untokenizable(examples: Sequence[Example], prompts: Sequence[str], tokenizer: Any, err: Exception) -> DataError:
    """A DataError naming the first prompt the tokenizer cannot encode, and the characters it cannot."""
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    for example, prompt in zip(examples, prompts):
        try:
            tokenizer(prompt)
        except Exception:
            unknown = sorted({ch for ch in prompt if ch not in vocab}) if vocab else []
            chars = f" (characters it does not know: {''.join(unknown)!r})" if unknown else ""
            return DataError(
                f"example '{example.id}': the model's tokenizer cannot encode its prompt{chars}: "
                f"{type(err).__name__}: {err}. A character-level model such as the CPU world's (model 'world') "
                "knows only its own task's characters: train it on its own problems (examples 'world:<id>', "
                "template '{question}\\n', cot_suffix false), or choose a model that reads this data (e.g. 'tiny')"
            )
    return DataError(f"the model's tokenizer cannot encode these prompts: {type(err).__name__}: {err}")


class PromptDataset(Dataset):
    """Map-style dataset of tokenized prompts, so Lightning can shard it with a DistributedSampler."""

    def __init__(self, items: Sequence[PromptItem]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> PromptItem:
        return self.items[index]


class SeededEpochSampler(DistributedSampler):
    """A fresh permutation per epoch, drawn from a generator seeded with ``seed + epoch``, split over processes.

    The order is a pure function of (seed, epoch): two runs with one seed see the same data, and another seed
    gives another order. With ``num_replicas`` processes the permutation is padded (repeating its start) to a
    multiple of them and process ``rank`` takes every ``num_replicas``-th index from position ``rank``, as
    torch's ``DistributedSampler`` splits; being one, it is left in place by Lightning. Lightning calls
    :meth:`set_epoch` at every epoch start. :class:`ResumableDataLoader` makes a mid-epoch resume continue
    where the checkpoint was taken.
    """

    def __init__(self, num_items: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ would look up the process group; the split is given explicitly instead.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"SeededEpochSampler: rank {rank} is not in [0, {num_replicas})")
        self.num_items = num_items
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.shuffle = True
        self.drop_last = False
        self.num_samples = -(-num_items // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        order += order[: self.total_size - len(order)]  # pad so that every process gets as many
        return iter(order[self.rank : self.total_size : self.num_replicas])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position within the epoch is saved in checkpoints (Lightning's stateful-loader protocol).

    Without it a run resumed mid-epoch replays the epoch's first batches and never sees the rest (Lightning
    restarts a plain loader at the epoch's beginning). The state is the epoch and the number of batches handed
    out in it; on load, the first iteration of that same epoch skips them, so the resumed run trains on exactly
    the batches an uninterrupted run would have. The sampler must be deterministic per epoch
    (:class:`SeededEpochSampler`).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._epoch = 0
        self._yielded = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        epoch = getattr(self.sampler, "epoch", 0)
        iterator = super().__iter__()
        skip = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip = self._resume[1]
        self._resume = None
        for _ in range(skip):
            next(iterator, None)
        self._epoch, self._yielded = epoch, skip
        for batch in iterator:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))
