"""Causal-LM supervised training: next-token loss on response tokens, for pretraining and distillation.

``SFTDataModule`` turns (prompt, response) pairs into right-padded batches whose labels are -100 on
prompt and padding positions; ``CausalLMModule`` trains any transformers causal LM on them (full
fine-tuning, or a peft LoRA model whose frozen weights stay out of the optimizer).
Nothing here knows about a particular task: the CPU world and the distillation recipe both use it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from reprokit.algorithms.schedules import LRSchedule

__all__ = ["CausalLMModule", "SFTDataModule", "masked_lm_loss", "read_pairs"]

IGNORE_INDEX = -100
LR_SCHEDULES = ("cosine", "constant")


# ---------------------------------------------------------------------------------------------- data


def read_pairs(path: str | Path, prompt_field: str = "prompt", response_field: str = "response") -> list[tuple[str, str]]:
    """(prompt, response) pairs from a JSONL file with one object per line."""
    pairs = []
    with Path(path).open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e}); each line must be one JSON object") from None
            missing = [k for k in (prompt_field, response_field) if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(
                    f"{path}:{lineno}: field(s) {missing} missing or not a string; each line needs string fields "
                    f"{prompt_field!r} and {response_field!r} (set prompt_field/response_field to rename them)"
                )
            pairs.append((row[prompt_field], row[response_field]))
    if not pairs:
        raise ValueError(f"{path}: no (prompt, response) rows found")
    return pairs


def _tokenize_pairs(pairs, tokenizer, max_length: int, add_eos: bool) -> list[tuple[list[int], int]]:
    """Token ids of prompt + response (+ EOS) and the prompt length, for every pair.

    Prompt and response are tokenized separately so the mask boundary is exact and the prompt ids are
    the ones generation will see when the prompt is tokenized alone.
    """
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    out = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if len(p) >= max_length:
            raise ValueError(
                f"pair {i}: the prompt alone is {len(p)} tokens, max_length={max_length} leaves no room for the "
                "response; raise max_length or shorten the prompt"
            )
        ids = (p + r + eos)[:max_length]
        out.append((ids, len(p)))
    return out


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[tuple[list[int], int]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.examples[i]


class _RightPadCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[tuple[list[int], int]]) -> dict[str, Tensor]:
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        for row, (ids, prompt_len) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class SFTDataModule(L.LightningDataModule):
    """(prompt, response) pairs as right-padded batches with the prompt masked out of the labels.

    Batches are dicts of LongTensors ``input_ids`` [B, T], ``attention_mask`` [B, T] and ``labels``
    [B, T] (token ids on response and EOS positions, -100 on prompt and padding).

    Args:
        pairs: a list of (prompt, response) string pairs, or a JSONL path with ``prompt_field`` and
            ``response_field`` string fields.
        tokenizer: a transformers tokenizer with a pad (or EOS) token.
        batch_size: sequences per batch.
        max_length: longest sequence in tokens; longer ones lose the end of their response.
        seed: seed of the shuffling order.
        add_eos: append the tokenizer's EOS to every response, so the model learns to stop.
        prompt_field / response_field: JSONL field names.
        num_workers: DataLoader workers (0 is fine: batches are built from pre-tokenized ids).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]] | str | Path,
        tokenizer: Any,
        batch_size: int = 8,
        max_length: int = 1024,
        seed: int = 0,
        add_eos: bool = True,
        prompt_field: str = "prompt",
        response_field: str = "response",
        num_workers: int = 0,
    ):
        super().__init__()
        if isinstance(pairs, (str, Path)):
            pairs = read_pairs(pairs, prompt_field, response_field)
        if len(pairs) == 0:
            raise ValueError("SFTDataModule: pairs is empty; pass at least one (prompt, response) pair")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ValueError("SFTDataModule: the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        self.pairs = list(pairs)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.seed = seed
        self.add_eos = add_eos
        self.num_workers = num_workers
        self.collate = _RightPadCollator(pad_id)
        self.dataset: _PairDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = _PairDataset(_tokenize_pairs(self.pairs, self.tokenizer, self.max_length, self.add_eos))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )


# ---------------------------------------------------------------------------------------------- training


def masked_lm_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy over positions whose label is not -100.

    Returns (loss, number of scored tokens). The token mean is over the whole batch, so a long
    response weighs more than a short one, as in ordinary LM training.
    """
    targets = labels[:, 1:]  # [B, T-1]: position t predicts token t+1
    keep = targets != IGNORE_INDEX  # [B, T-1]
    scored = logits[:, :-1][keep].float()  # [N, V]; only response positions reach the softmax
    n_tokens = keep.sum()
    if scored.shape[0] == 0:
        return logits.sum() * 0.0, n_tokens
    return F.cross_entropy(scored, targets[keep], reduction="mean"), n_tokens


class CausalLMModule(L.LightningModule):
    """Next-token training of a transformers causal LM on :class:`SFTDataModule` batches.

    Only parameters with ``requires_grad`` reach AdamW, so a peft LoRA model trains its adapters and
    nothing else. Logs ``train/loss``, ``train/lr``, ``train/tokens_per_s`` (non-padding tokens through
    forward + backward + optimizer per wall-clock second) and ``train/response_tokens``.

    Args:
        model: a transformers ``*ForCausalLM`` (or a peft model wrapping one).
        lr: peak learning rate.
        weight_decay: AdamW decay, applied to matrices only (not to norms and biases).
        betas: AdamW betas.
        warmup_steps: linear warm-up from 0 to ``lr``.
        lr_schedule: 'cosine' (decay to ``min_lr_ratio * lr`` at the trainer's last step) or 'constant'.
        min_lr_ratio: the cosine schedule's floor as a fraction of ``lr``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"CausalLMModule.lr_schedule={lr_schedule!r}: use one of {LR_SCHEDULES}")
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.tokens_seen = 0
        self._last_step_end: float | None = None

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, T, V]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])  # [B, T, V]
        loss, n_tokens = masked_lm_loss(logits, batch["labels"])
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/response_tokens", n_tokens.float(), batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss

    def on_train_batch_end(self, outputs, batch: dict[str, Tensor], batch_idx: int) -> None:
        tokens = int(batch["attention_mask"].sum())
        self.tokens_seen += tokens
        now = time.perf_counter()
        if self._last_step_end is not None:
            # Step-end to step-end: data loading, forward, backward and the optimizer step all count.
            self.log("train/tokens_per_s", tokens / max(now - self._last_step_end, 1e-9), prog_bar=True)
        self._last_step_end = now

    def configure_optimizers(self):
        hp = self.hparams
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("CausalLMModule: the model has no trainable parameters (all requires_grad=False)")
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr, betas=tuple(hp.betas))
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        floor = hp.min_lr_ratio if hp.lr_schedule == "cosine" else 0.0
        schedule = LRSchedule(hp.lr_schedule, warmup=hp.warmup_steps, total=total, floor=floor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
