"""LightningDataModules that yield :class:`~reprokit.data.batching.PromptBatch` objects.

``batch_size`` of the training modules is the number of prompts per optimizer step over *all*
devices (the paper's 128); each process loads ``batch_size / world_size`` of them. Datasets are
map-style with a standard DataLoader, so under DDP Lightning injects its distributed sampler and
every process gets distinct prompts. Prompts are tokenized once in ``setup`` so an over-long prompt
is reported before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from reprokit import registry
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
from reprokit.data.benchmarks import load_benchmark
from reprokit.data.embedded import EMBEDDED_NAMES, get_embedded_examples
from reprokit.data.errors import DataError
from reprokit.data.readers import AUTO, Example, read_examples
from reprokit.data.templates import Prompt

__all__ = ["EvalDataModule", "MathDataModule", "OneShotDataModule", "Validation"]


@dataclass
class Validation:
    """Benchmarks validated before, during (every run.val_every steps) and after training."""

    benchmarks: list[str] = field(default_factory=lambda: ["math500"])
    """Benchmark names (math500, aime24, aime25, amc23, minerva_math, olympiadbench, a registered name such as
    world_test, or a 'package.module:function' of your own); empty list = none."""
    data_dir: str | None = None
    """Local data folder laid out like shared/data (else $REPROKIT_DATA_DIR, else the Hugging Face Hub)."""
    limit: int | None = 100
    """Problems per benchmark (None = all)."""
    batch_size: int = 16
    """Prompts per validation batch."""
    n: int = 1
    """Samples per problem (1 with temperature 0 = greedy pass@1)."""
    temperature: float = 0.0
    """Sampling temperature (0 = greedy)."""
    top_p: float | None = None
    """Nucleus sampling when temperature > 0; None = the rollouts' top_p."""
    max_new_tokens: int | None = None
    """Response length; None = the rollouts'."""
    reward: str | None = None
    """What grades validation (correct = reward >= 1); None = the training reward. Set it when training on another
    signal (a format-only or random reward) and test accuracy must still be the answer's."""

    def __post_init__(self):
        checks = [
            (self.n >= 1, "n", "must be >= 1"),
            (self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)"),
            (self.temperature > 0 or self.n == 1, "n", "greedy validation (temperature 0) takes n 1"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p", "must be in (0, 1] or null"),
            (self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1 or null"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"eval.{name}: {why} (got {getattr(self, name)!r})")


class _PromptDataModule(L.LightningDataModule):
    """Shared plumbing: prompt options, per-device batch size, loaders, optional validation benchmarks."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        prompt: Prompt | None,
        batch_size: int,
        num_workers: int,
        validation: Validation | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size} must be at least 1 prompt")
        self.tokenizer = tokenizer
        self.prompt = prompt or Prompt()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.validation = validation or Validation(benchmarks=[])
        self.train_dataset: PromptDataset | None = None
        self.val_dataset: PromptDataset | None = None

    def _tokenize(self, examples: Sequence[Example]) -> list[PromptItem]:
        return tokenize_examples(
            examples, self.tokenizer, template=self.prompt.template, cot_suffix=self.prompt.cot_suffix,
            max_prompt_length=self.prompt.max_prompt_length, drop_long_prompts=self.prompt.drop_long_prompts,
        )

    def _world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def _per_device_batch(self) -> int:
        world = self._world_size()
        if self.batch_size % world:
            raise DataError(
                f"batch_size={self.batch_size} prompts per step cannot be split evenly over {world} devices; "
                f"use a multiple of {world}"
            )
        return self.batch_size // world

    def _loader(self, dataset: PromptDataset, batch_size: int, loader_class: type = DataLoader, **kwargs: Any) -> DataLoader:
        return loader_class(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=partial(collate_prompts, pad_token_id=get_pad_token_id(self.tokenizer)),
            **kwargs,
        )

    def _setup_val(self) -> None:
        v = self.validation
        if v.benchmarks and self.val_dataset is None:
            examples = _load_benchmarks(v.benchmarks, v.data_dir, v.limit)
            self.val_dataset = PromptDataset(self._tokenize(examples))

    def val_dataloader(self) -> DataLoader | list:
        """The validation benchmarks' prompts in one loader (``fields["benchmark"]`` tells them apart); [] if none."""
        self._setup_val()
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self.validation.batch_size, shuffle=False)


def _load_benchmarks(names: Sequence[str], data_dir: str | Path | None, limit: int | None) -> list[Example]:
    if isinstance(names, str):
        names = [names]
    examples: list[Example] = []
    for name in names:
        examples.extend(load_benchmark(name, data_dir=data_dir, limit=limit))
    return examples


class OneShotDataModule(_PromptDataModule):
    """1-shot (or few-shot) RLVR data: every step trains on the same few examples, copied to fill a batch.

    Each copy is its own GRPO group, as in the paper (π1 repeated 128 times, 8 rollouts each). With
    several examples the copies alternate (π1, π13, π1, π13, …), so a batch of 128 holds 64 of each
    like the paper's merge files; when ``batch_size`` is not a multiple of the number of examples
    the first ones get one copy more. One epoch is one batch: the trainer's ``max_steps`` sets the
    run length. Under DDP each process takes a strided share of the batch; which copies land on
    which process does not change the summed gradient.

    Args:
        tokenizer: the policy's transformers tokenizer.
        examples: embedded names (``"pi1"``, ``"pi1,pi13"``), a registered example set ``"PREFIX:REST"``
            (``"world:train-00042"``: CPU-world train problems, see :mod:`reprokit.registry`), a data file for
            :func:`read_examples`, or a list of :class:`Example`.
        label: for embedded π1, ``"dataset"`` (12.8, what the paper trained on) or ``"true"`` (12.7).
        question_field / answer_field / id_field: fields when ``examples`` is a file.
        prompt: how each problem is rendered (:class:`reprokit.data.Prompt`: template, step-by-step suffix, longest
            prompt; a longer one raises, or is dropped with a warning with ``drop_long_prompts``).
        batch_size: prompts per optimizer step over all devices.
        num_workers: DataLoader workers.
        seed: unused by the fixed one-shot order; kept so every training module takes the same options.
        validation: optional validation benchmarks (:class:`Validation`).
    """

    def __init__(
        self,
        tokenizer: Any,
        examples: str | list[Example] = "pi1",
        *,
        label: str = "dataset",
        question_field: str = AUTO,
        answer_field: str = AUTO,
        id_field: str | None = None,
        prompt: Prompt | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        validation: Validation | None = None,
    ):
        super().__init__(
            tokenizer,
            prompt=prompt,
            batch_size=batch_size,
            num_workers=num_workers,
            validation=validation,
        )
        self.save_hyperparameters(ignore=["tokenizer", "validation", "prompt"] + ([] if isinstance(examples, (str, Path)) else ["examples"]))
        self.examples = examples
        self.label = label
        self.question_field = question_field
        self.answer_field = answer_field
        self.id_field = id_field
        self.seed = seed

    def _resolve_examples(self) -> list[Example]:
        source = self.examples
        if not isinstance(source, (str, Path)):
            return list(source)
        prefix, sep, rest = str(source).partition(":")
        if sep and registry.lookup("examples", prefix) and not Path(source).exists():
            return registry.resolve("examples", prefix, what="examples")(rest)
        if Path(source).exists():
            return read_examples(
                source, question_field=self.question_field, answer_field=self.answer_field, id_field=self.id_field
            )
        try:
            return get_embedded_examples(str(source), label=self.label)
        except DataError:
            raise DataError(
                f"examples={str(source)!r} is neither an embedded example ({', '.join(EMBEDDED_NAMES)}, or a comma "
                "list such as 'pi1,pi13') nor an existing data file; fix the name or the path"
            ) from None

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            examples = self._resolve_examples()
            if not examples:
                raise DataError("OneShotDataModule needs at least one example")
            if len(examples) > self.batch_size:
                raise DataError(
                    f"{len(examples)} examples do not fit one batch of batch_size={self.batch_size}; "
                    "raise batch_size or use MathDataModule for a full training set"
                )
            items = self._tokenize(examples)
            # Alternate the examples so every share of the batch holds them in equal proportion.
            self.train_dataset = PromptDataset([items[i % len(items)] for i in range(self.batch_size)])
        if stage in (None, "fit", "validate"):
            self._setup_val()

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_dataset, self._per_device_batch(), shuffle=False)


class MathDataModule(_PromptDataModule):
    """A full training file (e.g. DSR-sub, 1209 problems), reshuffled every epoch from ``seed``.

    The order is a pure function of (seed, epoch) (:class:`SeededEpochSampler`): two runs with one
    seed see identical batches and another seed gives another order. The loader saves its place in the
    epoch in every checkpoint (:class:`ResumableDataLoader`), so a run resumed at any step trains on the
    prompts an uninterrupted run would have. Under DDP the sampler gives each process a distinct share.

    Args:
        tokenizer: the policy's transformers tokenizer.
        path: training file or dataset for :func:`read_examples` (verl parquet is detected).
        question_field / answer_field / id_field / skip_invalid / split: passed to :func:`read_examples`.
        prompt: how each problem is rendered (:class:`reprokit.data.Prompt`).
        batch_size: prompts per optimizer step over all devices.
        num_workers: DataLoader workers.
        seed: data-order seed.
        drop_last: drop the last incomplete batch of an epoch, so every step has ``batch_size`` prompts.
        validation: optional validation benchmarks (:class:`Validation`).
    """

    def __init__(
        self,
        tokenizer: Any,
        path: str | Path,
        *,
        question_field: str = AUTO,
        answer_field: str = AUTO,
        id_field: str | None = None,
        skip_invalid: bool = False,
        split: str | None = None,
        prompt: Prompt | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        validation: Validation | None = None,
    ):
        super().__init__(
            tokenizer,
            prompt=prompt,
            batch_size=batch_size,
            num_workers=num_workers,
            validation=validation,
        )
        self.save_hyperparameters(ignore=["tokenizer", "validation", "prompt"])
        self.path = path
        self.question_field = question_field
        self.answer_field = answer_field
        self.id_field = id_field
        self.skip_invalid = skip_invalid
        self.split = split
        self.seed = seed
        self.drop_last = drop_last

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            examples = read_examples(
                self.path,
                question_field=self.question_field,
                answer_field=self.answer_field,
                id_field=self.id_field,
                skip_invalid=self.skip_invalid,
                split=self.split,
            )
            self.train_dataset = PromptDataset(self._tokenize(examples))
        if stage in (None, "fit", "validate"):
            self._setup_val()

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        per_device = self._per_device_batch()
        per_process = len(self.train_dataset) // self._world_size()
        if self.drop_last and per_process < per_device:
            raise DataError(
                f"{self.path}: {len(self.train_dataset)} prompts cannot fill one batch of {self.batch_size} "
                "(drop_last=True would leave no training step); lower batch_size or set drop_last=False"
            )
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        sampler = SeededEpochSampler(len(self.train_dataset), seed=self.seed, num_replicas=self._world_size(), rank=rank)
        return self._loader(
            self.train_dataset, per_device, loader_class=ResumableDataLoader, sampler=sampler, drop_last=self.drop_last
        )

    def refill_batch(self, size: int, generator: torch.Generator) -> PromptBatch:
        """``size`` further prompts drawn with ``generator`` (the dynamic-sampling refill of one process)."""
        self.setup("fit")
        rows = torch.randperm(len(self.train_dataset), generator=generator)[:size].tolist()
        return collate_prompts([self.train_dataset[i] for i in rows], pad_token_id=get_pad_token_id(self.tokenizer))


class EvalDataModule(_PromptDataModule):
    """Named benchmarks in one loader for validation, testing or prediction.

    Rows keep the benchmark order given and carry ``fields["benchmark"]``; ids are ``"<name>/<row>"``.
    ``batch_size`` here is prompts per device per forward pass, a throughput setting. Under DDP,
    Lightning's distributed sampler pads the last share by repeating a few prompts, so de-duplicate
    by example id when exact per-problem counts matter.

    Args:
        tokenizer: the policy's transformers tokenizer.
        benchmarks: names from :data:`~reprokit.data.benchmarks.BENCHMARKS`.
        data_dir: local data folder (``<dir>/eval/<name>/``); default ``$REPROKIT_DATA_DIR``, then the Hub.
        limit: first ``limit`` problems of each benchmark.
        prompt: how each problem is rendered (:class:`reprokit.data.Prompt`; match training).
        batch_size: prompts per device per step.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        tokenizer: Any,
        benchmarks: Sequence[str] = ("math500",),
        data_dir: str | Path | None = None,
        limit: int | None = None,
        *,
        prompt: Prompt | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ):
        benchmarks = [benchmarks] if isinstance(benchmarks, str) else list(benchmarks)
        if not benchmarks:
            raise DataError("EvalDataModule needs at least one benchmark name")
        super().__init__(
            tokenizer,
            prompt=prompt,
            batch_size=batch_size,
            num_workers=num_workers,
            validation=Validation(benchmarks=benchmarks, data_dir=None if data_dir is None else str(data_dir), limit=limit, batch_size=batch_size),
        )
        self.save_hyperparameters(ignore=["tokenizer", "validation", "prompt"])
        self.benchmarks = benchmarks

    def setup(self, stage: str | None = None) -> None:
        self._setup_val()

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
