"""GRPO as a LightningModule: sample, grade, advantages, then clipped policy-gradient updates.

One training step is one rollout batch, in the order :meth:`GRPOModule.training_step` shows it:

1. :func:`rollout`: G responses to each prompt of the batch (every prompt is its own group, also when the same
   example is replicated), graded by the reward, turned into group-relative advantages; with dynamic sampling,
   groups whose rewards are all equal are dropped and further prompts sampled (DAPO);
2. :func:`logprob_passes`: the no-grad passes before the first update: the rollout's behaviour log-probs (when
   the step makes more than one update), the KL reference's log-probs and the rollout's entropies (focal mask);
3. per optimizer update (``num_iterations`` passes over the mini-batches of :func:`mini_batch_plan`):
   :func:`accumulate_gradients` over micro-batches, clip, ``optimizer.step()``.

Each stage returns a new value (a frozen :class:`Rollout`); none fills in its input. What the processes of a
DDP run agree on lives in :mod:`reprokit.training.processes`. The options come in three sections, each a
command-line group: ``rollout`` (:class:`RolloutConfig`), ``loss`` (:class:`LossConfig`) and ``train``
(:class:`TrainConfig`); validation's sampling is the ``eval`` section's (:class:`reprokit.data.Validation`).
"""

from __future__ import annotations

import copy
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torchmetrics import MeanMetric

from reprokit import registry
from reprokit.algorithms import (
    ADVANTAGE_SCALES,
    AGG_MODES,
    LossDenominators,
    aggregate_denominator,
    focal_count,
    focal_mask,
    group_advantages,
    grpo_objective,
    overlong_penalty,
    response_logprobs,
)
from reprokit.algorithms.schedules import LR_SCHEDULES, LRSchedule
from reprokit.data import Validation
from reprokit.data.batching import get_pad_token_id
from reprokit.metrics import PassAtK
from reprokit.policy import FINETUNES, eos_token_ids, keep_4bit_layers_trainable, reference_model
from reprokit.rewards import get_reward
from reprokit.sampling import Completions, MergedCopy, sample_and_grade, seeded_generator
from reprokit.training import processes
from reprokit.training.checkpoints import adapter_state_dict, load_adapter_state_dict, restore_rng_state, rng_state

FOCAL_SCOPES = ("batch", "micro_batch")


def _check(section: str, checks: list[tuple[bool, str, str]], values) -> None:
    for ok, name, why in checks:
        if not ok:
            raise ValueError(f"{section}.{name}: {why} (got {getattr(values, name)!r})")


# ------------------------------------------------------------------ the options, by concern
@dataclass
class RolloutConfig:
    """How responses are sampled and graded in training (the `rollout` section)."""

    group_size: int = 8
    """G: responses sampled per prompt; each prompt (each copy of a replicated example) is one group."""
    temperature: float = 0.6
    """Rollout sampling temperature; entropies (bonus, focal mask, logs) are computed at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling for rollouts (1.0 = off)."""
    max_new_tokens: int = 3072
    """Maximum response length; a response that reaches it without EOS counts as truncated."""
    generation_batch_size: int | None = None
    """Sequences decoded by one generate call (whole groups); None = the whole rollout batch at once."""
    stop_at_chat_end: bool = True
    """Responses also end at the chat end-of-turn token (<|im_end|>, <end_of_turn>), not only at the EOS of the
    model's generation config and tokenizer. The papers' verl stops only at the generation config's EOS, where a
    base model prompted with a chat layout often writes a new turn after <|im_end|>."""
    reward: str = "math"
    """Reward name (math) or 'package.module:function' with signature (completions, answers, **fields)."""
    response_stats: str | None = None
    """A 'package.module:function' (completions) -> {name: [one value per completion]}: behaviours of the
    responses (the CPU world's mode share and check rate), averaged as rollout/<name> in training and
    val/<benchmark>/<name> in validation."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: a response longer than max_new_tokens - overlong_buffer tokens gets
    -overlong_penalty * (excess / overlong_buffer) added to its training reward (down to -overlong_penalty at
    max_new_tokens). 0 = off. Which groups are informative (dynamic sampling) is still judged on the reward
    without it, as DAPO filters groups on accuracy."""
    overlong_penalty: float = 1.0
    """DAPO's overlong penalty factor (the reward added at max_new_tokens is -overlong_penalty)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (they carry no advantage) before the update. Alone (with
    max_refill_rounds 0) the step trains on the informative groups that are left, however few; with refill
    rounds it samples further groups first, as DAPO does."""
    max_refill_rounds: int = 0
    """With dynamic_sampling: extra rollout rounds per step that sample further prompts (the training set's
    DataModule draws fresh ones; a one-shot batch repeats its example) until the step holds prompts_per_step
    informative groups (DAPO; its recipe allows 10). 0 = no refill, train on what is left. Logged as
    rollout/rounds."""
    max_skipped_batches: int = 50
    """Stop with an error after this many consecutive rollout batches with nothing to learn from."""
    log_completions_every: int = 10
    """Write sample completions as TensorBoard text every N steps (0 = never)."""
    merged_copy: bool = False
    """Sample rollouts from a copy of the policy with the adapter merged into its weights (reprokit.sampling.
    MergedCopy), re-merged before every step: one plain matmul per layer instead of dequantizing the 4-bit base
    and two LoRA matmuls, for 2 more bytes per parameter of memory. Measured on CPU with an NF4 base: generation
    in 0.37x the CPU time of transformers' generate, against 0.65x from the policy itself (benchmarks/README.md).
    The copy rounds the merged weights to the compute dtype, so it samples from the policy up to that rounding."""

    def __post_init__(self):
        _check("rollout", [
            (self.group_size >= 2, "group_size", "needs >= 2 responses per prompt for a group-relative advantage"),
            (self.temperature > 0, "temperature", "must be > 0 for sampling rollouts"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            (0 <= self.overlong_buffer < self.max_new_tokens, "overlong_buffer", "must be >= 0 and < max_new_tokens (0 = off)"),
            (self.overlong_penalty >= 0, "overlong_penalty", "must be >= 0"),
            (self.max_refill_rounds >= 0, "max_refill_rounds", "must be >= 0 (0 = no refill)"),
            (self.max_refill_rounds == 0 or self.dynamic_sampling, "max_refill_rounds",
             "refills groups that dynamic sampling dropped: set dynamic_sampling true, or max_refill_rounds 0"),
            (self.generation_batch_size is None or self.generation_batch_size >= self.group_size,
             "generation_batch_size", "must hold at least one group (>= group_size)"),
        ], self)


@dataclass
class LossConfig:
    """The objective: clip ranges, aggregation, advantages, KL, entropy and the focal tokens (the `loss` section)."""

    epsilon_low: float = 0.2
    """Lower ratio clip: ratio >= 1 - epsilon_low."""
    epsilon_high: float = 0.2
    """Upper ratio clip: ratio <= 1 + epsilon_high (DAPO's clip-higher uses 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant (> 1) bounding the loss of negative-advantage tokens; None = off."""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (Dr. GRPO, divides by max_new_tokens)."""
    advantage_scale: str = "group"
    """group: (r - mean) / (std + eps) within each group; batch: divide by the batch std; none: Dr. GRPO."""
    kl_coef: float = 0.001
    """beta of the k3 KL penalty to the base (the adapter-free forward, or a frozen copy under full fine-tuning);
    0 skips the reference forward entirely."""
    entropy_coef: float = 0.001
    """Entropy bonus: loss = pg - entropy_coef * entropy (+ kl_coef * kl)."""
    focal_fraction: float = 1.0
    """The focal ("forking") tokens: policy gradient only on this fraction of response tokens, those of highest
    entropy (the 80/20 paper's 0.2); 1 keeps every token."""
    focal_scope: str = "batch"
    """Where the focal tokens are counted. batch: over the whole rollout batch, pooled over processes, from the
    rollout's entropies, fixed for all its updates (the 80/20 paper's formula). micro_batch: the top
    ceil(fraction * n) of each micro-batch on each process, from the entropy of the forward that takes the
    gradient, recomputed at every update (the paper's released code, get_global_entropy_top_mask)."""
    mask_truncated: bool = False
    """Give truncated responses (no EOS) zero loss instead of training on their reward."""

    def __post_init__(self):
        _check("loss", [
            (self.epsilon_low >= 0, "epsilon_low", "must be >= 0"),
            (self.epsilon_high >= 0, "epsilon_high", "must be >= 0"),
            (self.dual_clip is None or self.dual_clip > 1, "dual_clip", "must be > 1 or null"),
            (self.loss_agg in AGG_MODES, "loss_agg", f"must be one of {', '.join(AGG_MODES)}"),
            (self.advantage_scale in ADVANTAGE_SCALES, "advantage_scale", f"must be one of {', '.join(ADVANTAGE_SCALES)}"),
            (self.kl_coef >= 0, "kl_coef", "must be >= 0"),
            (0 < self.focal_fraction <= 1, "focal_fraction", "must be in (0, 1]; 1 keeps every token"),
            (self.focal_scope in FOCAL_SCOPES, "focal_scope", f"must be one of {', '.join(FOCAL_SCOPES)}"),
            (self.focal_scope != "micro_batch" or self.loss_agg != "seq-mean-token-mean", "focal_scope",
             "micro_batch chooses each micro-batch's tokens in its own forward, so the count of sequences with a kept "
             "token (the seq-mean-token-mean denominator) is unknown before it: use loss_agg token-mean (the released "
             "code's) or focal_scope batch"),
        ], self)

    @property
    def focal(self) -> bool:
        return self.focal_fraction < 1


@dataclass
class TrainConfig:
    """What trains and how the optimizer steps (the `train` section)."""

    finetune: str = "lora"
    """What trains: lora (the adapters of the model section on a frozen base, whose adapter-free forward is the KL
    reference) or full (every weight, model.quantization none; the KL reference is a frozen copy of the base)."""
    lr: float = 1e-6
    """AdamW learning rate of the trainable parameters."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    lr_schedule: str = "constant"
    """One of constant, cosine, linear (decay to 0 at max_steps), after warmup; advanced once per rollout step
    (every update of a step uses the same LR). A run resumed with a larger --max_steps keeps the LR it had reached
    and decays from there to 0 at the new max_steps (no jump)."""
    warmup_steps: int = 0
    """Linear warm-up over this many rollout steps (not optimizer updates)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping; the norm is still logged)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (per process); gradients accumulate over the mini-batch."""
    mini_batch_size: int | None = None
    """Prompts (groups) per optimizer update, over all processes (verl's ppo_mini_batch_size); None = the whole
    rollout batch, one update per pass. Each mini-batch is one optimizer step whose loss is a mean over that
    mini-batch; the updates after the first are off-policy (ratio against the rollout's log-probs), which is where
    the ratio clip acts. The step count (max_steps, checkpoint_every, val_every, checkpoint names, TensorBoard's
    x-axis) counts rollout steps; update/optimizer_steps logs the updates in each."""
    num_iterations: int = 1
    """Passes over the rollout batch's mini-batches (PPO epochs, verl's ppo_epochs). With 1 pass and one
    mini-batch the update is on-policy and the ratio is exactly 1."""
    logprob_chunk_size: int = 1024
    """Positions per chunk of the log-prob / entropy pass: bounds the [chunk, vocab] logits held at once."""

    def __post_init__(self):
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        _check("train", [
            (self.finetune in FINETUNES, "finetune", f"must be one of {', '.join(FINETUNES)}"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}"),
            (self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1"),
            (self.mini_batch_size is None or self.mini_batch_size >= 1, "mini_batch_size", "must be >= 1 prompt, or null for the whole rollout batch"),
            (self.num_iterations >= 1, "num_iterations", "must be >= 1"),
        ], self)


@dataclass(frozen=True)
class GRPOConfig:
    """The module's options: the rollout, loss, train and eval sections of a GRPO recipe, whole."""

    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Validation = field(default_factory=lambda: Validation(benchmarks=[]))

    @classmethod
    def of(cls, **settings) -> GRPOConfig:
        """Settings by their field name, each to its section (the CPU-world study and notebooks set a handful):
        ``GRPOConfig.of(group_size=4, lr=1e-3, kl_coef=0.0)``. An eval field is written with its section's prefix
        (``eval_n``), since rollout and eval share names."""
        sections = {"rollout": RolloutConfig, "loss": LossConfig, "train": TrainConfig}
        values: dict[str, dict] = {name: {} for name in [*sections, "eval"]}
        owner = {f.name: name for name, cls_ in sections.items() for f in fields(cls_)}
        for key, value in settings.items():
            if key.startswith("eval_"):
                values["eval"][key.removeprefix("eval_")] = value
            elif key in owner:
                values[owner[key]][key] = value
            else:
                raise TypeError(f"GRPOConfig.of: no section has a setting {key!r}")
        return cls(**{name: cls_(**values[name]) for name, cls_ in sections.items()},
                   eval=Validation(**{"benchmarks": [], **values["eval"]}))


# ------------------------------------------------------------------ the values the stages hand on
@dataclass(frozen=True)
class Rollout:
    """Everything the update needs about one rollout batch; rows are responses, group-contiguous."""

    sequences: torch.Tensor  # [N, L+T] prompt then response
    attention_mask: torch.Tensor  # [N, L+T]
    prompt_len: int  # L
    response_ids: torch.Tensor  # [N, T]
    loss_mask: torch.Tensor  # [N, T] response tokens that get loss
    advantages: torch.Tensor  # [N]
    rewards: torch.Tensor | None = None  # [N]
    old_logp: torch.Tensor | None = None  # [N, T] behaviour log-probs (several updates per step)
    ref_logp: torch.Tensor | None = None  # [N, T] KL reference log-probs (kl_coef > 0)
    entropy: torch.Tensor | None = None  # [N, T] rollout-time entropy (focal scope batch)
    pg_mask: torch.Tensor | None = None  # [N, T] tokens that get policy gradient (None = all of loss_mask)
    real_rows: int | None = None  # rows that are responses; a placeholder row (a process with none) is not

    _ROW_FIELDS = ("sequences", "attention_mask", "response_ids", "loss_mask", "advantages", "rewards", "old_logp",
                   "ref_logp", "entropy", "pg_mask")
    _TOKEN_FIELDS = ("response_ids", "loss_mask", "old_logp", "ref_logp", "entropy", "pg_mask")

    @property
    def num_rows(self) -> int:
        return self.sequences.shape[0]

    @property
    def num_real_rows(self) -> int:
        return self.num_rows if self.real_rows is None else self.real_rows

    @classmethod
    def from_completions(cls, comps: Completions, advantages: torch.Tensor, rewards: torch.Tensor, mask_truncated: bool) -> Rollout:
        loss_mask = comps.response_mask.clone()  # [N, T]
        if mask_truncated:
            loss_mask[comps.truncated] = 0
        return cls(
            sequences=torch.cat([comps.prompt_ids, comps.response_ids], dim=1),  # [N, L+T]
            attention_mask=torch.cat([comps.prompt_mask, comps.response_mask], dim=1),  # [N, L+T]
            prompt_len=comps.prompt_ids.shape[1], response_ids=comps.response_ids, loss_mask=loss_mask,
            advantages=advantages, rewards=rewards,
        )

    @classmethod
    def concat(cls, parts: list[Rollout], pad_id: int) -> Rollout:
        """Rows of several rollouts (e.g. refill rounds) in one: prompts left-padded, responses right-padded."""
        if len(parts) == 1:
            return parts[0]
        prompt_len = max(p.prompt_len for p in parts)
        width = max(p.response_ids.shape[1] for p in parts)
        pad = torch.nn.functional.pad
        rows: dict[str, list] = defaultdict(list)
        for p in parts:
            left, right = prompt_len - p.prompt_len, width - p.response_ids.shape[1]
            rows["sequences"].append(pad(pad(p.sequences, (left, 0), value=pad_id), (0, right), value=pad_id))
            rows["attention_mask"].append(pad(p.attention_mask, (left, right)))
            for name in cls._TOKEN_FIELDS:
                value = getattr(p, name)
                rows[name].append(None if value is None else pad(value, (0, right), value=pad_id if name == "response_ids" else 0))
            rows["advantages"].append(p.advantages)
            rows["rewards"].append(p.rewards)
        joined = {k: None if any(v is None for v in vs) else torch.cat(vs) for k, vs in rows.items()}
        return cls(prompt_len=prompt_len, **joined)

    def select(self, rows: torch.Tensor) -> Rollout:
        pick = {name: None if getattr(self, name) is None else getattr(self, name)[rows] for name in self._ROW_FIELDS}
        return Rollout(prompt_len=self.prompt_len, **pick)

    def placeholder(self) -> Rollout:
        """One row with nothing to learn from: the forward and backward a process runs so that every process
        makes the same collective calls (DDP all-reduces every backward) when it has fewer rows than another."""
        one = self.select(torch.zeros(1, dtype=torch.long, device=self.sequences.device))
        return replace(
            one, loss_mask=torch.zeros_like(one.loss_mask), advantages=torch.zeros_like(one.advantages), real_rows=0,
            pg_mask=None if one.pg_mask is None else torch.zeros_like(one.pg_mask),
        )

    def micro_batches(self, size: int) -> list[Rollout]:
        return [self.select(torch.arange(b, min(b + size, self.num_rows), device=self.sequences.device))
                for b in range(0, self.num_rows, size)]

    def trimmed(self) -> Rollout:
        """Drop left-padding columns no row uses and response columns past the longest response."""
        first = int((self.attention_mask[:, : self.prompt_len].sum(0) > 0).nonzero()[0])
        # Responses are right-padded, so the longest one bounds the columns worth computing.
        keep_t = max(1, int(self.attention_mask[:, self.prompt_len :].sum(-1).max()))
        cut = {name: None if getattr(self, name) is None else getattr(self, name)[:, :keep_t] for name in self._TOKEN_FIELDS}
        return replace(
            self, sequences=self.sequences[:, first : self.prompt_len + keep_t],
            attention_mask=self.attention_mask[:, first : self.prompt_len + keep_t], prompt_len=self.prompt_len - first, **cut,
        )


@dataclass(frozen=True)
class Round:
    """One rollout round: what was sampled for which prompts, and how it was graded."""

    batch: object  # PromptBatch
    comps: Completions
    rewards: torch.Tensor  # [N] the reward function's
    penalty: torch.Tensor  # [N] DAPO's overlong punishment (0 when off), added to the reward for the advantage
    informative: torch.Tensor  # [P] groups whose rewards are not all equal (before the overlong punishment)


@dataclass(frozen=True)
class Policy:
    """What every stage reads: the network, its tokenizer, the options and what grades and scores for them."""

    model: torch.nn.Module
    tokenizer: object
    cfg: GRPOConfig
    reward_fn: Callable
    eos_ids: list[int]
    reference: torch.nn.Module | None = None  # a frozen copy of the base (full fine-tuning), else the adapter-off forward

    def logprobs(self, ro: Rollout, *, with_entropy: bool, model=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) of the response tokens at the rollout temperature."""
        return response_logprobs(
            self.model if model is None else model, ro.sequences, ro.attention_mask, ro.response_ids,
            first=ro.prompt_len - 1,  # the hidden state at position i predicts token i+1
            temperature=self.cfg.rollout.temperature, chunk_size=self.cfg.train.logprob_chunk_size, with_entropy=with_entropy,
        )  # [n, T], [n, T] | None


# ------------------------------------------------------------------ step 1: sample, grade, advantages
def sample_round(policy: Policy, batch, generator: torch.Generator, reward_generator: torch.Generator, sampler=None) -> Round:
    """``group_size`` responses to each prompt of ``batch`` (sampled from ``sampler``, default the policy), their
    rewards and DAPO's overlong punishment."""
    cfg = policy.cfg.rollout
    graded = sample_and_grade(
        sampler or policy.model, policy.tokenizer, batch.input_ids, batch.attention_mask, batch.answers, batch.fields,
        n=cfg.group_size, reward_fn=policy.reward_fn, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=cfg.top_p, eos_ids=policy.eos_ids, batch_size=cfg.generation_batch_size, generator=generator,
        reward_generator=reward_generator,
    )
    grouped = graded.rewards.view(-1, cfg.group_size)  # [P, G]
    penalty = torch.zeros_like(graded.rewards)  # [N]
    if cfg.overlong_buffer:
        lengths = graded.comps.lengths.to(penalty.device)  # [N]
        penalty = overlong_penalty(lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)  # [N]
    informative = grouped.max(-1).values > grouped.min(-1).values  # [P]
    return Round(batch=batch, comps=graded.comps, rewards=graded.rewards, penalty=penalty, informative=informative)


def rollout(policy: Policy, batch, sample: Callable[[object, int], Round], refill: Callable[[int], object]) -> tuple[Rollout, list[Round]]:
    """Sample, grade and turn rewards into group advantages; with dynamic sampling keep only informative groups,
    and with refill rounds sample further prompts (``refill(round)``) until this process holds as many informative
    groups as it has prompts, or the rounds run out (every process takes part in each round's count, so all stop
    together). ``sample(batch, round)`` draws one round. Returns the rollout (a single placeholder row when no group
    was kept) and the rounds."""
    cfg = policy.cfg.rollout
    target, kept_groups, source = len(batch.prompts), 0, batch
    rounds: list[Round] = []
    parts: list[Rollout] = []
    while True:
        if source is not None:
            sampled = sample(source, len(rounds))
            rounds.append(sampled)
            shaped = sampled.rewards + sampled.penalty  # [N]
            advantages = group_advantages(shaped, cfg.group_size, scale=policy.cfg.loss.advantage_scale)  # [N]
            ro = Rollout.from_completions(sampled.comps, advantages, sampled.rewards, policy.cfg.loss.mask_truncated)
            keep = torch.ones_like(sampled.informative)  # [P]
            if cfg.dynamic_sampling:  # DAPO keeps the first informative groups up to the batch size
                keep = sampled.informative & (sampled.informative.cumsum(0) <= target - kept_groups)  # [P]
            kept_groups += int(keep.sum())
            rows = keep.repeat_interleave(cfg.group_size).nonzero().flatten()  # [n]
            if rows.numel():
                parts.append(ro.select(rows))
        if not (cfg.dynamic_sampling and cfg.max_refill_rounds > 0):
            break
        missing = torch.tensor([float(max(0, target - kept_groups))], device=batch.input_ids.device)
        if not processes.all_reduce(missing).item() or len(rounds) > cfg.max_refill_rounds:
            break
        source = refill(len(rounds)) if kept_groups < target else None
    if parts:
        return Rollout.concat(parts, pad_id=get_pad_token_id(policy.tokenizer)), rounds
    first = rounds[0]
    return Rollout.from_completions(first.comps, torch.zeros_like(first.rewards), first.rewards, True).placeholder(), rounds


def rollout_metrics(rounds: list[Round], stats: dict[str, list[float]]) -> dict[str, float]:
    rewards = torch.cat([r.rewards for r in rounds])  # [N]
    lengths = torch.cat([r.comps.lengths.float() for r in rounds])  # [N]
    seconds = sum(r.comps.seconds for r in rounds)
    out = {f"rollout/{name}": sum(values) / max(1, len(values)) for name, values in stats.items()}
    out.update({
        "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "reward/accuracy": float((rewards >= 1.0).float().mean()),
        "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
        "response/truncated_frac": float(torch.cat([r.comps.truncated.float() for r in rounds]).mean()),
        "groups/informative_frac": float(torch.cat([r.informative.float() for r in rounds]).mean()),
        "rollout/rounds": float(len(rounds)),
        "perf/gen_tokens_per_s": sum(r.comps.num_tokens for r in rounds) / max(seconds, 1e-9), "perf/gen_s": seconds,
    })
    penalty = torch.cat([r.penalty for r in rounds])  # [N]
    if penalty.any():
        out["reward/overlong_penalty"] = float(penalty.mean())
    return out


# ------------------------------------------------------------------ step 2: the no-grad passes
@torch.no_grad()
def logprob_passes(policy: Policy, ro: Rollout, behaviour: bool) -> Rollout:
    """``ro`` with the log-probs the updates need: behaviour log-probs (``behaviour``: the step makes more than one
    update), KL reference log-probs (kl_coef > 0) and rollout entropies (focal scope batch)."""
    loss = policy.cfg.loss
    need_entropy = loss.focal and loss.focal_scope == "batch"
    old, ref, ent = [], [], []
    width = ro.response_ids.shape[1]
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    for mb in ro.micro_batches(policy.cfg.train.micro_batch_size):
        mb = mb.trimmed()
        if behaviour or need_entropy:
            was = policy.model.training
            policy.model.eval()
            logp, entropy = policy.logprobs(mb, with_entropy=need_entropy)
            policy.model.train(was)
            old.append(pad(logp))
            if need_entropy:
                ent.append(pad(entropy))
        if loss.kl_coef > 0:
            if policy.reference is not None:
                ref_logp, _ = policy.logprobs(mb, with_entropy=False, model=policy.reference)
            else:
                with reference_model(policy.model):
                    ref_logp, _ = policy.logprobs(mb, with_entropy=False)
            ref.append(pad(ref_logp))
    return replace(
        ro, old_logp=torch.cat(old) if behaviour else None, entropy=torch.cat(ent) if need_entropy else None,
        ref_logp=torch.cat(ref) if loss.kl_coef > 0 else None,
    )  # [N, T] each


# ------------------------------------------------------------------ step 3: the updates
def with_focal_mask(ro: Rollout, fraction: float) -> tuple[Rollout, float]:
    """``ro`` with ``pg_mask``, the top ``fraction`` entropy tokens of the whole rollout batch (every process, in
    rank order), and the smallest kept entropy."""
    pooled, offset = processes.gather_ragged(ro.entropy[ro.loss_mask.bool()].float())  # [sum n]
    keep, threshold = focal_mask(ro.entropy, ro.loss_mask, fraction, pooled=pooled, offset=offset)  # [N, T], []
    return replace(ro, pg_mask=keep & ro.loss_mask.bool()), float(threshold)


def mini_batch_plan(ro: Rollout, cfg: GRPOConfig) -> list[torch.Tensor | None]:
    """The rows of each optimizer update of one pass: ``mini_batch_size * group_size / processes`` of this process's
    responses each, in order (verl's ppo_mini_batch_size * n / data-parallel size; the advantages are already the
    groups', so an update may hold part of a group). Every process makes the same number of updates (the most any
    process needs); an update for which a process has no rows is None (it runs a placeholder). ``[None]`` alone
    when the pass is one update of the whole batch."""
    size = cfg.train.mini_batch_size
    if size is None:
        return [None]
    world = processes.world_size()
    if (size * cfg.rollout.group_size) % world:
        raise ValueError(
            f"train.mini_batch_size={size}: mini_batch_size * group_size must be a multiple of the number of processes "
            f"({world}); each process takes its share of every mini-batch's responses"
        )
    per_update = size * cfg.rollout.group_size // world  # rows of this process per update
    rows = ro.num_real_rows
    device = ro.sequences.device
    plan = [torch.arange(b, min(b + per_update, rows), device=device) for b in range(0, rows, per_update)]
    updates = processes.global_max(-(-rows // per_update), device)
    return plan + [None] * (max(1, updates) - len(plan))


def accumulate_gradients(policy: Policy, ro: Rollout, backward: Callable, strategy=None) -> dict[str, float]:
    """Backward of the objective of ``ro`` (a rollout or one mini-batch of it) into ``.grad``, micro-batch by
    micro-batch; returns the metrics.

    The loss denominators are counted over all of ``ro`` on every process first, so the accumulated gradient is the
    same for every ``micro_batch_size`` and, under DDP, equals the gradient of all processes' rows in one process.
    With the focal scope batch the focal mask is ``ro.pg_mask`` (or, unset, ``ro``'s own top tokens); with
    micro_batch each micro-batch keeps its top ``ceil(fraction * n)`` tokens by the entropy of its own forward.
    """
    loss, device = policy.cfg.loss, ro.sequences.device
    metrics: dict[str, float] = {}
    per_micro_batch = loss.focal and loss.focal_scope == "micro_batch"
    if loss.focal and not per_micro_batch and ro.pg_mask is None:
        ro, metrics["focal/threshold"] = with_focal_mask(ro, loss.focal_fraction)
    valid = ro.loss_mask.bool()  # [N, T]
    size = policy.cfg.train.micro_batch_size
    n_micro = processes.global_max(-(-ro.num_rows // size), device)
    micro_batches = ro.micro_batches(size)
    micro_batches += [ro.placeholder()] * (n_micro - len(micro_batches))
    metrics["update/micro_batches"] = float(n_micro)
    if per_micro_batch:
        # Each micro-batch keeps ceil(fraction * n) of its n valid tokens: the counts are known before the forwards.
        kept = float(sum(focal_count(int(mb.loss_mask.bool().sum()), loss.focal_fraction) for mb in micro_batches))
        valid_count = float(aggregate_denominator(valid, loss.loss_agg, ro.num_real_rows))  # seq-mean-token-mean is refused
        local = torch.tensor([kept if loss.loss_agg == "token-mean" else valid_count, valid_count, kept, float(valid.sum())],
                             dtype=torch.float64)  # [4] as LossDenominators.counts
    else:
        local = LossDenominators.counts(valid, ro.pg_mask if loss.focal else valid, loss.loss_agg, rows=ro.num_real_rows)
    denominators = LossDenominators.from_counts(processes.all_reduce(local.to(device)), scale=processes.world_size())
    if loss.focal:
        metrics["focal/kept_frac"] = denominators.pg_tokens / max(1.0, denominators.valid_tokens)
    sums: dict[str, float] = defaultdict(float)
    thresholds = []
    for index, mb in enumerate(micro_batches):
        mb = mb.trimmed()
        with processes.no_backward_sync(strategy, sync=index == len(micro_batches) - 1):
            logp, entropy = policy.logprobs(mb, with_entropy=True)  # [n, T'], [n, T']
            pg_mask = mb.pg_mask if loss.focal else mb.loss_mask  # [n, T']
            if per_micro_batch:
                pg_mask, threshold = focal_mask(entropy, mb.loss_mask, loss.focal_fraction)  # [n, T'], []
                thresholds += [float(threshold)] if mb.loss_mask.any() else []
            objective, parts = grpo_objective(
                logp, entropy if loss.entropy_coef != 0 else entropy.detach(), mb.advantages, mb.loss_mask, pg_mask,
                denominators, old_logp=mb.old_logp, ref_logp=mb.ref_logp, loss_agg=loss.loss_agg,
                max_len=policy.cfg.rollout.max_new_tokens, epsilon_low=loss.epsilon_low, epsilon_high=loss.epsilon_high,
                dual_clip=loss.dual_clip, entropy_coef=loss.entropy_coef, kl_coef=loss.kl_coef,
            )
            backward(objective)
        for key, value in parts.items():
            sums[key] = max(sums[key], float(value)) if key.endswith("_max") else sums[key] + float(value)
    if not loss.focal:
        sums.pop("entropy/kept_mean", None)
    if per_micro_batch:
        metrics["focal/threshold"] = sum(thresholds) / len(thresholds) if thresholds else float("nan")
    return {**metrics, **sums}


def combine_updates(per_update: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over a step's updates (the max for ``*_max``), and how many there were."""
    out = {}
    for key in per_update[0]:
        values = [m[key] for m in per_update if key in m]
        out[key] = max(values) if key.endswith("_max") else sum(values) / len(values)
    out["update/optimizer_steps"] = float(len(per_update))
    return out


def response_stats(stats_fn: Callable | None, texts: list[str]) -> dict[str, list[float]]:
    """The behaviours ``rollout.response_stats`` measures, one value per response; {} without it."""
    if stats_fn is None:
        return {}
    stats = stats_fn(texts)
    for name, values in stats.items():
        if len(values) != len(texts):
            raise ValueError(f"rollout.response_stats returned {len(values)} values of {name!r} for {len(texts)} completions")
    return {name: [float(v) for v in values] for name, values in stats.items()}


def completions_text(first: Round, group: int) -> str:
    """The first response of up to four groups, with its prompt, answer and reward, as TensorBoard text."""
    lines, batch = [], first.batch
    for i in range(0, len(first.comps.texts), group)[:4]:
        lines.append(f"**prompt** ({batch.example_ids[i // group]}, answer `{batch.answers[i // group]}`, reward "
                     f"{first.rewards[i]:.2f}):\n\n    {batch.prompts[i // group][-500:]}\n\n**response:**\n\n    {first.comps.texts[i][:2000]}")
    return "\n\n---\n\n".join(lines)


def _no_closure() -> None:
    """The optimizer closure of a manual-optimization step (the gradients are already there)."""


# ------------------------------------------------------------------ the LightningModule
class GRPOModule(L.LightningModule):
    """GRPO / DAPO / Dr. GRPO / focal-token training of a causal LM, LoRA or full (manual optimization).

    Under DDP every process samples with its own seed (``seed``, its rank and the step), every loss is normalised by
    counts summed over all processes (so the gradient equals the single-process gradient of all processes'
    rollouts together), and every process runs the same collective calls in every step.
    """

    def __init__(self, model, tokenizer, config: GRPOConfig | None = None, run_dir: str | None = None, reward_fn=None, seed: int = 0):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.cfg = config or GRPOConfig()
        self.run_dir = Path(run_dir) if run_dir else None
        self.seed = int(seed)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only what trains: loading must not demand the frozen base
        keep_4bit_layers_trainable(model)
        # The KL reference: the adapter-free forward of a LoRA policy, else a frozen copy of the weights as they
        # are now (the base, before any update; a resumed run builds the module before loading its checkpoint).
        reference = None
        if self.cfg.loss.kl_coef > 0 and not hasattr(model, "disable_adapter"):
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.policy = Policy(
            model, tokenizer, self.cfg, get_reward(reward_fn if reward_fn is not None else self.cfg.rollout.reward),
            eos_token_ids(tokenizer, model, chat_end=self.cfg.rollout.stop_at_chat_end), reference,
        )
        self.reference = reference  # a submodule: moved to the device with the policy, never in a checkpoint
        self.val_reward_fn = get_reward(self.cfg.eval.reward) if self.cfg.eval.reward else self.policy.reward_fn
        stats = self.cfg.rollout.response_stats
        self.stats_fn = registry.import_object(stats, "rollout.response_stats") if stats else None
        self.example_accuracy = ExampleAccuracy()
        self.validation = ValidationTally(self.cfg.eval.n)
        self._skipped_in_a_row = 0
        self._rollouts_without_trainer = 0
        self._standalone_optimizer = None
        self._merged = None  # the sampling copy of rollout.merged_copy
        self.last_rollout: Rollout | None = None  # kept for inspection (callbacks, notebooks); replaced every step
        self.last_metrics: dict[str, float] = {}
        self.last_updates: list[dict[str, float]] = []

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: enable LoRA (lora_r > 0) or set train.finetune full")
        train = self.cfg.train
        opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, betas=train.betas)
        total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, LRSchedule(train.lr_schedule, warmup=train.warmup_steps, total=total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self):
        # A resumed run whose max_steps changed continues its decay from the LR it had reached (no jump); the
        # optimizer's LR itself was restored from the checkpoint, so it is set again from the schedule.
        sched = self.lr_schedulers()
        schedule = sched.lr_lambdas[0]
        if isinstance(schedule, LRSchedule) and self.trainer.max_steps > 0:
            schedule.extend(self.trainer.max_steps, sched.last_epoch)
            for group, base_lr in zip(sched.optimizer.param_groups, sched.base_lrs):
                group["lr"] = base_lr * schedule(sched.last_epoch)

    def training_step(self, batch, batch_idx):
        started, cfg = time.perf_counter(), self.cfg
        # 1. Sample the groups, grade them, advantages (dynamic sampling drops and refills groups).
        ro, rounds = self.sample(batch)
        metrics = rollout_metrics(rounds, response_stats(self.stats_fn, [t for r in rounds for t in r.comps.texts]))
        # 2. Skip a step with nothing to learn from, on every process together.
        if not self._has_signal(ro):
            return self._log_step({**metrics, "update/skipped": 1.0}, started)
        self._skipped_in_a_row = 0
        # 3. The no-grad passes: behaviour log-probs when the step makes several updates, reference, entropies.
        plan = mini_batch_plan(ro, cfg)
        ro = logprob_passes(self.policy, ro, behaviour=cfg.train.num_iterations * len(plan) > 1)
        if cfg.loss.focal and cfg.loss.focal_scope == "batch":
            ro, metrics["focal/threshold"] = with_focal_mask(ro, cfg.loss.focal_fraction)  # fixed for all updates
        self.last_rollout = ro
        # 4. The optimizer updates, then the LR schedule, once per rollout step.
        metrics.update(self.update(ro, plan))
        return self._log_step({**metrics, "update/skipped": 0.0}, started)

    def update(self, ro: Rollout, plan: list[torch.Tensor | None]) -> dict[str, float]:
        """``num_iterations`` passes over the mini-batches of ``plan``: per update, gradients over micro-batches,
        clip, ``optimizer.step()``; then one LR-schedule step. The first update is on-policy (its ratio is exactly 1);
        later ones take the ratio against the rollout's behaviour log-probs, where the clip acts."""
        cfg = self.cfg.train
        opt, sched = self._optimizer_and_scheduler()
        params = [p for p in self.model.parameters() if p.requires_grad]
        total = cfg.num_iterations * len(plan)
        self.last_updates = []
        for index in range(total):
            rows = plan[index % len(plan)]
            part = ro if len(plan) == 1 else ro.select(rows) if rows is not None else ro.placeholder()
            part = replace(part, old_logp=None) if index == 0 else part  # on-policy: the weights have not moved
            opt.zero_grad(set_to_none=True)
            update = accumulate_gradients(self.policy, part, self._backward, self._trainer and self.trainer.strategy)
            clip = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            update["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip))  # gradients already averaged
            update["lr"] = float(opt.param_groups[0]["lr"])
            self._optimizer_step(opt, counted=index == total - 1)
            self.last_updates.append(update)
        sched.step()
        return combine_updates(self.last_updates)

    # ---------------------------------------------------------------- the step's plumbing
    def sample_groups(self, batch, round_index: int) -> Round:
        """One rollout round of ``batch``, from this process's seeded streams (and the merged copy, when on)."""
        keys = (self._batch_index(), round_index)
        sampler = None
        if self.cfg.rollout.merged_copy:
            if self._merged is None:  # built on first use, where the policy lives by then
                self._merged = MergedCopy(self.model)
            if round_index == 0:
                self._merged.sync()  # the adapter changed in the last step's updates
            sampler = self._merged.model
        return sample_round(self.policy, batch, self._generator("rollout", *keys), self._generator("reward", *keys), sampler)

    def sample(self, batch) -> tuple[Rollout, list[Round]]:
        """Step 1 on ``batch``: :func:`rollout` from this process's seeded streams; records each example's accuracy
        and the sample completions. Outside a Trainer each call draws the next stream."""
        ro, rounds = rollout(self.policy, batch, self.sample_groups, lambda r: self._refill_batch(batch, r))
        if self._trainer is None:
            self._rollouts_without_trainer += 1
        for r in rounds:
            self.example_accuracy.record(r.batch.example_ids, r.rewards.view(-1, self.cfg.rollout.group_size), self.current_epoch)
        every, experiment = self.cfg.rollout.log_completions_every, getattr(self.logger, "experiment", None)
        if every and not self.global_step % every and hasattr(experiment, "add_text"):
            experiment.add_text("samples", completions_text(rounds[0], self.cfg.rollout.group_size), self.global_step)
        return ro, rounds

    def _has_signal(self, ro: Rollout) -> bool:
        """Whether any process has a response with loss; counts consecutive misses and stops after too many."""
        trainable = torch.tensor([float(ro.num_real_rows and ro.loss_mask[: ro.num_real_rows].any())], device=self.device)
        if processes.all_reduce(trainable).item():
            return True
        self._skipped_in_a_row += 1
        if self._skipped_in_a_row >= self.cfg.rollout.max_skipped_batches:
            raise RuntimeError(
                f"{self._skipped_in_a_row} rollout batches in a row had equal rewards within every group: nothing to "
                "learn from. The data is too hard or too easy for this model; pick other examples, raise "
                "rollout.group_size, or set rollout.dynamic_sampling false"
            )
        return False

    def _generator(self, *keys) -> torch.Generator:
        """This process's random stream for one sampling call: a function of the run seed, the rank and ``keys``."""
        return seeded_generator(self.device, self.seed, processes.rank(), *keys)

    def _batch_index(self) -> int:
        """Training batches drawn so far in the run, skipped ones included (restored on resume): the key of each
        step's rollout seed. The optimizer step would repeat while steps are skipped, and so would the samples."""
        if self._trainer is None:  # rollouts called by hand (notebooks, benchmarks): one stream per call
            return self._rollouts_without_trainer
        return int(self.trainer.fit_loop.epoch_loop.total_batch_idx)

    def _refill_batch(self, batch, round_index: int):
        """Prompts for a refill round: the DataModule's ``refill_batch`` when it has one (fresh prompts of a full
        training set), else the step's own prompts again (a one-shot batch is copies of one example anyway)."""
        refill = getattr(getattr(self.trainer, "datamodule", None) if self._trainer is not None else None, "refill_batch", None)
        if refill is None:
            return batch
        generator = seeded_generator("cpu", self.seed, processes.rank(), "refill", self._batch_index(), round_index)
        return refill(len(batch.prompts), generator).to(self.device)

    def _optimizer_and_scheduler(self):
        if self._trainer is not None:
            return self.optimizers(), self.lr_schedulers()
        if self._standalone_optimizer is None:  # called by hand (tests, notebooks): the same optimizer and schedule
            configured = self.configure_optimizers()
            self._standalone_optimizer = (configured["optimizer"], configured["lr_scheduler"]["scheduler"])
        return self._standalone_optimizer

    def _optimizer_step(self, opt, counted: bool) -> None:
        """Lightning counts every step of its optimizer wrapper as a training step (manual optimization); the
        updates of a rollout step before its last go through the same strategy call uncounted, so max_steps,
        checkpoints and logs count rollout steps."""
        if counted or self._trainer is None:
            opt.step()
        else:
            self.trainer.strategy.optimizer_step(opt.optimizer, closure=_no_closure, model=self)

    def _backward(self, loss: torch.Tensor) -> None:
        """Lightning's backward inside a Trainer (precision, DDP), a plain one outside (tests, notebooks)."""
        self.manual_backward(loss) if self._trainer is not None else loss.backward()

    def _log_step(self, metrics: dict, started: float) -> None:
        metrics["perf/step_s"] = time.perf_counter() - started
        self.last_metrics = metrics = processes.reduce_metrics(metrics, self.device)
        for key, value in metrics.items() if self._trainer is not None else ():
            self.log(key, float(value), prog_bar=key in ("reward/mean", "perf/step_s"), on_step=True, on_epoch=False, batch_size=1)

    # ---------------------------------------------------------------- per-example accuracy, validation, checkpoints
    def on_train_epoch_end(self):
        table = self.example_accuracy.gathered()
        if self.run_dir is not None and self.trainer.is_global_zero:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "example_accuracy.json").write_text(json.dumps(table))

    def on_validation_epoch_start(self):
        self.validation = ValidationTally(self.cfg.eval.n)

    def validation_step(self, batch, batch_idx):
        ev = self.cfg.eval
        graded = sample_and_grade(
            self.model, self.tokenizer, batch.input_ids, batch.attention_mask, batch.answers, batch.fields, n=ev.n,
            reward_fn=self.val_reward_fn, max_new_tokens=ev.max_new_tokens or self.cfg.rollout.max_new_tokens,
            temperature=ev.temperature, top_p=ev.top_p or self.cfg.rollout.top_p, eos_ids=self.policy.eos_ids,
            batch_size=self.cfg.rollout.generation_batch_size, generator=self._generator("validation", self.global_step, batch_idx),
            reward_generator=self._generator("validation reward", self.global_step, batch_idx),
        )
        self.validation.add(batch, graded.rewards >= 1.0, response_stats(self.stats_fn, graded.comps.texts), self.device)

    def on_validation_epoch_end(self):
        for key, value in self.validation.compute(self.device).items():
            self.log(key, value, sync_dist=False, prog_bar=key == "val/avg_pass@1", batch_size=1)
        self.val_problem_accuracy = self.validation.problems

    def _sharded(self) -> bool:
        """Whether the weights are sharded over processes (FSDP): Lightning then gathers and loads the full state
        dict itself, and the module's own parameters hold only this process's shard."""
        from lightning.pytorch.strategies import FSDPStrategy

        return self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy)

    def on_save_checkpoint(self, checkpoint: dict):
        if self._sharded():  # the gathered full state dict, less the frozen KL reference
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("reference.")}
        else:
            checkpoint["state_dict"] = adapter_state_dict(self.model)
        checkpoint.update(rng_state=rng_state(), grpo_config=asdict(self.cfg), example_accuracy=self.example_accuracy.state())

    def on_load_checkpoint(self, checkpoint: dict):
        if not self._sharded():
            load_adapter_state_dict(self.model, checkpoint)
        restore_rng_state(checkpoint.get("rng_state"))
        self.example_accuracy.load(checkpoint.get("example_accuracy", {}))


# ------------------------------------------------------------------ bookkeeping the module delegates to
def _epoch_table() -> defaultdict:
    """epoch -> accuracies; a named function so the module pickles."""
    return defaultdict(list)


class ExampleAccuracy:
    """Each training example's accuracy per epoch (``index -> [mean accuracy of epoch 0, 1, ...]``), the format of
    dsr_sub_acc_step_500.json that ``select_examples`` ranks; gathered over processes."""

    def __init__(self):
        self.by_example: dict[str, dict[int, list[float]]] = defaultdict(_epoch_table)

    def record(self, example_ids: list[str], grouped: torch.Tensor, epoch: int) -> None:
        for example_id, group in zip(example_ids, grouped):
            self.by_example[str(example_id)][epoch].append(float((group >= 1.0).float().mean()))

    def table(self, by_example: dict | None = None) -> dict[str, list[float]]:
        source = self.by_example if by_example is None else by_example
        return {k: [float(np.mean(v[e])) for e in sorted(v)] for k, v in source.items()}

    def gathered(self) -> dict[str, list[float]]:
        if processes.world_size() == 1:
            return self.table()
        parts = [None] * processes.world_size()
        torch.distributed.all_gather_object(parts, dict(self.by_example))
        merged: dict[str, dict[int, list[float]]] = defaultdict(_epoch_table)
        for part in parts:
            for example_id, by_epoch in part.items():
                for e, accs in by_epoch.items():
                    merged[example_id][e].extend(accs)
        return self.table(merged)

    def state(self) -> dict:
        return {k: dict(v) for k, v in self.by_example.items()}

    def load(self, state: dict) -> None:
        for example_id, by_epoch in state.items():
            for e, accs in by_epoch.items():
                self.by_example[example_id][int(e)] = list(accs)


class ValidationTally:
    """One validation pass's pass@k and response behaviours per benchmark, gathered over processes."""

    def __init__(self, n: int):
        self.n = n
        self.metrics: dict[str, PassAtK] = {}
        self.stats: dict[str, MeanMetric] = {}
        self.problems: dict[str, dict[str, float]] = {}  # benchmark -> problem id -> accuracy of its n samples

    def add(self, batch, correct: torch.Tensor, stats: dict[str, list[float]], device) -> None:
        per_problem = correct.view(-1, self.n)  # [P, n]
        for p, (row, row_fields) in enumerate(zip(per_problem, batch.fields)):
            name = str(row_fields.get("benchmark", "val"))
            self.metrics.setdefault(name, PassAtK(ks=sorted({1, self.n})).to(device)).update([row])
            self.problems.setdefault(name, {})[batch.example_ids[p]] = float(row.float().mean())
            for stat, values in stats.items():
                metric = self.stats.setdefault(f"{name}/{stat}", MeanMetric().to(device))
                metric.update(torch.tensor(values[p * self.n : (p + 1) * self.n]))

    def compute(self, device) -> dict[str, float]:
        """``val/<benchmark>/pass@k``, ``avg@n``, behaviours and ``val/avg_pass@1``; every process must call it."""
        names, stat_keys = set(self.metrics), set(self.stats)
        if processes.world_size() > 1:
            # compute() gathers across processes, so every process must hold every benchmark's metric.
            parts = [None] * processes.world_size()
            torch.distributed.all_gather_object(parts, (sorted(names), sorted(stat_keys), self.problems))
            names, stat_keys = set().union(*(g[0] for g in parts)), set().union(*(g[1] for g in parts))
            problems: dict[str, dict[str, float]] = {}
            for part in parts:  # the distributed sampler repeats a few problems to even the shares out
                for name, by_id in part[2].items():
                    problems.setdefault(name, {}).update(by_id)
            self.problems = problems
        out = {f"val/{key}": float(self.stats.setdefault(key, MeanMetric().to(device)).compute()) for key in sorted(stat_keys)}
        averages = []
        for name in sorted(names):
            values = self.metrics.setdefault(name, PassAtK(ks=sorted({1, self.n})).to(device)).compute()
            out.update({f"val/{name}/pass@{k}": float(v) for k, v in values.items()})
            out[f"val/{name}/avg@{self.n}"] = float(values[1])  # the mean accuracy over n samples is the unbiased pass@1
            averages.append(float(values[1]))
        if averages:
            out["val/avg_pass@1"] = float(np.mean(averages))
        return out
