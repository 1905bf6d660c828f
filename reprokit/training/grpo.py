"""GRPO as a LightningModule: sample, reward, advantage, then clipped policy-gradient updates on LoRA adapters.

One training step = one rollout batch: G responses for each of the batch's prompts (every prompt is its own
group, also when the same example is replicated), graded by a reward function, turned into group-relative
advantages, then `num_iterations` optimizer updates over micro-batches with gradient accumulation.
The KL reference is the same network with its LoRA adapter switched off, so no second model sits in memory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torchmetrics import MeanMetric

from reprokit import registry
from reprokit.algorithms import (
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
from reprokit.metrics import PassAtK
from reprokit.policy import FINETUNES, eos_token_ids, keep_4bit_layers_trainable, reference_model
from reprokit.evaluation.grading import sample_and_grade
from reprokit.rewards import get_reward
from reprokit.sampling import Completions, seeded_generator
from reprokit.training.checkpoints import adapter_state_dict, load_adapter_state_dict, restore_rng_state, rng_state

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ADVANTAGE_SCALES = ("group", "batch", "none")
FOCAL_SCOPES = ("batch", "micro_batch")


@dataclass
class GRPOConfig:
    """Options of the GRPO update. Field names are the recipe's command-line flags and YAML keys."""

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
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (per process); gradients accumulate over the mini-batch."""
    mini_batch_size: int | None = None
    """Prompts (groups) per optimizer update, over all processes (verl's ppo_mini_batch_size); None = the whole
    rollout batch, one update per pass. The rollout is split into mini-batches of whole groups, each one optimizer
    step whose loss is a mean over that mini-batch; the updates after the first are off-policy (ratio against the
    rollout's log-probs), which is where the ratio clip acts. The step count (max_steps, checkpoint_every,
    val_every, checkpoint names, TensorBoard's x-axis) counts rollout steps; update/optimizer_steps logs the
    updates in each. The LR schedule and its warm-up advance once per rollout step, as verl's do."""
    num_iterations: int = 1
    """Passes over the rollout batch's mini-batches (PPO epochs, verl's ppo_epochs). With 1 pass and one
    mini-batch the update is on-policy and the ratio is exactly 1."""
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
    """beta of the k3 KL penalty to the adapter-free base; 0 skips the reference forward entirely."""
    entropy_coef: float = 0.001
    """Entropy bonus: loss = pg - entropy_coef * entropy (+ kl_coef * kl)."""
    top_entropy_quantile: float = 1.0
    """rho: policy gradient only on the top-rho highest-entropy response tokens (focal_scope says of what)."""
    focal_scope: str = "batch"
    """Where the top-rho tokens are counted. batch: over the whole rollout batch, pooled over processes, from the
    rollout's entropies, fixed for all its updates (the 80/20 paper's formula). micro_batch: the top ceil(rho*n) of
    each micro-batch on each process, from the entropy of the forward that takes the gradient, recomputed at every
    update (the 80/20 paper's released code, get_global_entropy_top_mask)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (they carry no advantage) before the update. Alone (with
    max_refill_rounds 0) the step trains on the informative groups that are left, however few; with refill
    rounds it samples further groups first, as DAPO does."""
    max_refill_rounds: int = 0
    """With dynamic_sampling: extra rollout rounds per step that sample further prompts (the training set's
    DataModule draws fresh ones; a one-shot batch repeats its example) until the step holds prompts_per_step
    informative groups (DAPO; its recipe allows 10). 0 = no refill, train on what is left. Logged as
    rollout/rounds."""
    mask_truncated: bool = False
    """Give truncated responses (no EOS) zero loss instead of training on their reward."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: a response longer than max_new_tokens - overlong_buffer tokens gets
    -overlong_penalty * (excess / overlong_buffer) added to its training reward (down to -overlong_penalty at
    max_new_tokens). 0 = off. Which groups are informative (dynamic sampling) is still judged on the reward
    without it, as DAPO filters groups on accuracy."""
    overlong_penalty: float = 1.0
    """DAPO's overlong penalty factor (the reward added at max_new_tokens is -overlong_penalty)."""
    stop_at_chat_end: bool = True
    """Responses also end at the chat end-of-turn token (<|im_end|>, <end_of_turn>), not only at the EOS of the
    model's generation config and tokenizer. The papers' verl stops only at the generation config's EOS, where a
    base model prompted with a chat layout often writes a new turn after <|im_end|>."""
    reward: str = "math"
    """Reward name (math) or 'package.module:function' with signature (completions, answers, **fields)."""
    val_reward: str | None = None
    """What validation grades with (correct = reward >= 1); None = the training reward. Set it when training on
    another signal (a format-only or random reward) and test accuracy must still be the answer's."""
    response_stats: str | None = None
    """A 'package.module:function' (completions) -> {name: [one value per completion]}: behaviours of the
    responses (the CPU world's mode share and check rate), averaged as rollout/<name> in training and
    val/<benchmark>/<name> in validation."""
    logprob_chunk_size: int = 1024
    """Positions per chunk of the log-prob / entropy pass: bounds the [chunk, vocab] logits held at once."""
    log_completions_every: int = 10
    """Write sample completions as TensorBoard text every N steps (0 = never)."""
    val_n: int = 1
    """Samples per validation problem (1 with val_temperature 0 = greedy pass@1)."""
    val_temperature: float = 0.0
    """Validation sampling temperature (0 = greedy)."""
    val_top_p: float | None = None
    """Validation nucleus sampling when val_temperature > 0; None = top_p."""
    val_max_new_tokens: int | None = None
    """Validation response length; None = max_new_tokens."""
    max_skipped_batches: int = 50
    """Stop with an error after this many consecutive rollout batches with nothing to learn from."""
    accuracy_file: str | None = None
    """Write per-example training accuracy per epoch here (index -> list), the input of select_examples."""

    def __post_init__(self):
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        checks = [
            (self.group_size >= 2, "group_size", "needs >= 2 responses per prompt for a group-relative advantage"),
            (self.temperature > 0, "temperature", "must be > 0 for sampling rollouts"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.val_top_p is None or 0 < self.val_top_p <= 1, "val_top_p", "must be in (0, 1] or null"),
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            (self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1"),
            (self.num_iterations >= 1, "num_iterations", "must be >= 1"),
            (self.mini_batch_size is None or self.mini_batch_size >= 1, "mini_batch_size", "must be >= 1 prompt, or null for the whole rollout batch"),
            (self.focal_scope in FOCAL_SCOPES, "focal_scope", f"must be one of {', '.join(FOCAL_SCOPES)}"),
            (self.focal_scope != "micro_batch" or self.loss_agg != "seq-mean-token-mean", "focal_scope",
             "micro_batch chooses each micro-batch's tokens in its own forward, so the count of sequences with a kept "
             "token (the seq-mean-token-mean denominator) is unknown before it: use loss_agg token-mean (the released "
             "code's) or focal_scope batch"),
            (0 <= self.overlong_buffer < self.max_new_tokens, "overlong_buffer", "must be >= 0 and < max_new_tokens (0 = off)"),
            (self.overlong_penalty >= 0, "overlong_penalty", "must be >= 0"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.finetune in FINETUNES, "finetune", f"must be one of {', '.join(FINETUNES)}"),
            (self.loss_agg in LOSS_AGGREGATIONS, "loss_agg", f"must be one of {', '.join(LOSS_AGGREGATIONS)}"),
            (self.advantage_scale in ADVANTAGE_SCALES, "advantage_scale", f"must be one of {', '.join(ADVANTAGE_SCALES)}"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}"),
            (self.epsilon_low >= 0 and self.epsilon_high >= 0, "epsilon_low/epsilon_high", "must be >= 0"),
            (self.dual_clip is None or self.dual_clip > 1, "dual_clip", "must be > 1 or null"),
            (self.kl_coef >= 0, "kl_coef", "must be >= 0"),
            (0 < self.top_entropy_quantile <= 1, "top_entropy_quantile", "must be in (0, 1]; 1 keeps every token"),
            (self.val_n >= 1, "val_n", "must be >= 1"),
            (self.max_refill_rounds >= 0, "max_refill_rounds", "must be >= 0 (0 = no refill)"),
            (self.max_refill_rounds == 0 or self.dynamic_sampling, "max_refill_rounds",
             "refills groups that dynamic sampling dropped: set dynamic_sampling true, or max_refill_rounds 0"),
            (self.val_temperature > 0 or self.val_n == 1, "val_n", "greedy validation (val_temperature 0) takes val_n 1"),
            (self.generation_batch_size is None or self.generation_batch_size >= self.group_size,
             "generation_batch_size", "must hold at least one group (>= group_size)"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"GRPOConfig.{name}: {why} (got {getattr(self, name.split('/')[0])!r})")


@dataclass
class Rollout:
    """Everything the update needs about one rollout batch; rows are responses, group-contiguous."""

    sequences: torch.Tensor  # [N, L+T] prompt then response
    attention_mask: torch.Tensor  # [N, L+T]
    prompt_len: int  # L
    completion_ids: torch.Tensor  # [N, T]
    mask: torch.Tensor  # [N, T] response tokens that get loss
    advantages: torch.Tensor  # [N]
    rewards: torch.Tensor | None = None  # [N]
    old_logp: torch.Tensor | None = None  # [N, T] behaviour log-probs (num_iterations > 1)
    ref_logp: torch.Tensor | None = None  # [N, T] adapter-free log-probs (kl_coef > 0)
    entropy: torch.Tensor | None = None  # [N, T] rollout-time entropy (focal mask)
    pg_mask: torch.Tensor | None = None  # [N, T] tokens that get policy gradient (None = all of mask)
    real_rows: int | None = None  # rows that are responses; a placeholder row (a process with none) is not

    _ROW_FIELDS = ("sequences", "attention_mask", "completion_ids", "mask", "advantages", "rewards", "old_logp",
                   "ref_logp", "entropy", "pg_mask")
    _TOKEN_FIELDS = ("completion_ids", "mask", "old_logp", "ref_logp", "entropy", "pg_mask")

    @property
    def num_rows(self) -> int:
        return self.sequences.shape[0]

    @property
    def num_real_rows(self) -> int:
        return self.num_rows if self.real_rows is None else self.real_rows

    @classmethod
    def from_completions(cls, comps: Completions, advantages: torch.Tensor, rewards: torch.Tensor, mask_truncated: bool) -> "Rollout":
        mask = comps.completion_mask.clone()  # [N, T]
        if mask_truncated:
            mask[comps.truncated] = 0
        return cls(
            sequences=torch.cat([comps.prompt_ids, comps.completion_ids], dim=1),  # [N, L+T]
            attention_mask=torch.cat([comps.prompt_mask, comps.completion_mask], dim=1),  # [N, L+T]
            prompt_len=comps.prompt_ids.shape[1],
            completion_ids=comps.completion_ids,
            mask=mask,
            advantages=advantages,
            rewards=rewards,
        )

    @classmethod
    def concat(cls, parts: list["Rollout"], pad_id: int) -> "Rollout":
        """Rows of several rollouts (e.g. refill rounds) in one: prompts left-padded, responses right-padded."""
        if len(parts) == 1:
            return parts[0]
        prompt_len = max(p.prompt_len for p in parts)
        width = max(p.completion_ids.shape[1] for p in parts)
        rows: dict[str, list] = defaultdict(list)
        for p in parts:
            left, right = prompt_len - p.prompt_len, width - p.completion_ids.shape[1]
            pad = torch.nn.functional.pad
            rows["sequences"].append(pad(pad(p.sequences, (left, 0), value=pad_id), (0, right), value=pad_id))
            rows["attention_mask"].append(pad(p.attention_mask, (left, right)))
            for name in cls._TOKEN_FIELDS:
                value = getattr(p, name)
                rows[name].append(None if value is None else pad(value, (0, right), value=pad_id if name == "completion_ids" else 0))
            rows["advantages"].append(p.advantages)
            rows["rewards"].append(p.rewards)
        joined = {k: None if any(v is None for v in vs) else torch.cat(vs) for k, vs in rows.items()}
        return cls(prompt_len=prompt_len, **joined)

    def select(self, rows: torch.Tensor) -> "Rollout":
        pick = {name: None if getattr(self, name) is None else getattr(self, name)[rows] for name in self._ROW_FIELDS}
        return Rollout(prompt_len=self.prompt_len, **pick)

    def placeholder(self) -> "Rollout":
        """One row with nothing to learn from: the forward and backward a process runs so that every process
        makes the same collective calls (DDP all-reduces every backward) when it has fewer rows than another."""
        one = self.select(torch.zeros(1, dtype=torch.long, device=self.sequences.device))
        one.mask = torch.zeros_like(one.mask)
        one.pg_mask = None if one.pg_mask is None else torch.zeros_like(one.pg_mask)
        one.advantages = torch.zeros_like(one.advantages)
        one.real_rows = 0
        return one

    def micro_batches(self, size: int):
        for begin in range(0, self.num_rows, size):
            yield self.select(torch.arange(begin, min(begin + size, self.num_rows), device=self.sequences.device))

    def trimmed(self) -> "Rollout":
        """Drop left-padding columns no row uses and response columns past the longest response."""
        first = int((self.attention_mask[:, : self.prompt_len].sum(0) > 0).nonzero()[0])
        # Responses are right-padded, so the longest one bounds the columns worth computing.
        keep_t = max(1, int(self.attention_mask[:, self.prompt_len :].sum(-1).max()))
        cut = {name: None if getattr(self, name) is None else getattr(self, name)[:, :keep_t] for name in self._TOKEN_FIELDS}
        return Rollout(
            sequences=self.sequences[:, first : self.prompt_len + keep_t],
            attention_mask=self.attention_mask[:, first : self.prompt_len + keep_t],
            prompt_len=self.prompt_len - first,
            advantages=self.advantages,
            rewards=self.rewards,
            real_rows=self.real_rows,
            **cut,
        )


def _no_closure() -> None:
    """The optimizer closure of a manual-optimization step (the gradients are already there)."""


def _epoch_table() -> defaultdict:
    """epoch -> accuracies; a named function so the module pickles (ddp_spawn)."""
    return defaultdict(list)


@dataclass
class _Sampled:
    """One rollout round: what was sampled for which prompts, and how it was graded."""

    batch: object  # PromptBatch
    comps: Completions
    rewards: torch.Tensor  # [N] the reward function's
    penalty: torch.Tensor  # [N] DAPO's overlong punishment (0 when off), added to the reward for the advantage
    answers: list[str]
    informative: torch.Tensor  # [P] groups whose rewards are not all equal (before the overlong punishment)


class GRPOModule(L.LightningModule):
    """GRPO / DAPO / Dr. GRPO / focal-token training of a LoRA-adapted causal LM (manual optimization).

    One training step is :meth:`rollout` (sample, grade, advantages, dynamic sampling), :meth:`score` (the
    no-grad passes) and :meth:`update` (the objective of :func:`reprokit.algorithms.grpo_objective` over
    micro-batches, backward, clip, optimizer step).

    Under DDP every process samples with its own seed (``seed``, its rank and the step), every loss is normalised
    by counts summed over all processes (so the gradient equals the single-process gradient of all processes'
    rollouts together), and every process runs the same collective calls in every step: the decision to skip a
    step is global, and a process with fewer micro-batches runs placeholder ones that add nothing.
    """

    def __init__(
        self,
        model,
        tokenizer,
        config: GRPOConfig | None = None,
        run_dir: str | None = None,
        reward_fn=None,
        seed: int = 0,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = config or GRPOConfig()
        self.run_dir = Path(run_dir) if run_dir else None
        self.seed = int(seed)
        self.automatic_optimization = False
        # Checkpoints hold only the adapter: loading must not demand the frozen base weights.
        self.strict_loading = False
        # An explicit callable wins over the configured name (tests and notebooks pass functions directly).
        self.reward_fn = get_reward(reward_fn if reward_fn is not None else self.cfg.reward)
        self.val_reward_fn = get_reward(self.cfg.val_reward) if self.cfg.val_reward else self.reward_fn
        self.stats_fn = registry.import_object(self.cfg.response_stats, "GRPOConfig.response_stats") if self.cfg.response_stats else None
        self.eos_ids = eos_token_ids(tokenizer, model, chat_end=self.cfg.stop_at_chat_end)
        keep_4bit_layers_trainable(model)
        self._example_acc: dict[str, dict[int, list[float]]] = defaultdict(_epoch_table)
        self.val_metrics: dict[str, PassAtK] = {}
        self._skipped_in_a_row = 0
        self._focal_threshold = float("nan")
        self._rollouts_without_trainer = 0
        self._val_problems: dict[str, dict[str, float]] = {}
        self.val_problem_accuracy: dict[str, dict[str, float]] = {}
        self.last_rollout: Rollout | None = None
        self._standalone_optimizer = None
        self.last_updates: list[dict[str, float]] = []
        self.last_metrics: dict[str, float] = {}
        # The KL reference: the adapter-free forward of a LoRA policy, else a frozen copy of the weights as they
        # are now (the base, before any update; a resumed run builds the module before loading its checkpoint).
        self.reference = None
        if self.cfg.kl_coef > 0 and not hasattr(model, "disable_adapter"):
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: enable LoRA (lora_r > 0) or unfreeze the model")
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, betas=self.cfg.betas)
        total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 1
        schedule = LRSchedule(self.cfg.lr_schedule, warmup=self.cfg.warmup_steps, total=total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
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

    # ------------------------------------------------------------------ processes
    def _world(self) -> int:
        dist = torch.distributed
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _rank(self) -> int:
        return torch.distributed.get_rank() if self._world() > 1 else 0

    def _all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or max) over processes, in place; the identity in a single process."""
        if self._world() > 1:
            ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
            torch.distributed.all_reduce(tensor, op=ops[op])
        return tensor

    def _no_backward_sync(self, sync: bool):
        """DDP all-reduces gradients at every backward; accumulate locally and reduce once, at the last one."""
        strategy = self.trainer.strategy if self._trainer is not None else None
        if sync or strategy is None or not hasattr(strategy, "block_backward_sync"):
            return contextlib.nullcontext()
        return strategy.block_backward_sync()

    def _generator(self, *keys) -> torch.Generator:
        """This process's random stream for one sampling call: a function of the run seed, the rank and ``keys``."""
        return seeded_generator(self.device, self.seed, self._rank(), *keys)

    def _batch_index(self) -> int:
        """Training batches drawn so far in the run, skipped ones included (restored on resume): the key of each
        step's rollout seed. The optimizer step would repeat while steps are skipped, and so would the samples."""
        if self._trainer is None:  # rollouts called by hand (notebooks, benchmarks): one stream per call
            return self._rollouts_without_trainer
        return int(self.trainer.fit_loop.epoch_loop.total_batch_idx)

    # ------------------------------------------------------------------ forward passes
    def _logprobs(self, ro: Rollout, *, with_entropy: bool, model=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) of the response tokens at the rollout temperature (of ``model``:
        default the policy)."""
        return response_logprobs(
            self.model if model is None else model,
            ro.sequences,
            ro.attention_mask,
            ro.completion_ids,
            first=ro.prompt_len - 1,  # the hidden state at position i predicts token i+1
            temperature=self.cfg.temperature,
            chunk_size=self.cfg.logprob_chunk_size,
            with_entropy=with_entropy,
        )  # [n, T], [n, T] | None

    # ------------------------------------------------------------------ the training step
    def training_step(self, batch, batch_idx):
        cfg = self.cfg
        step_start = time.perf_counter()
        ro, metrics = self.rollout(batch)
        # The decision to update is global: a process that skipped alone would leave the others waiting in the
        # first all-reduce of their backward.
        trainable = torch.tensor([float(ro.num_real_rows and ro.mask[: ro.num_real_rows].any())], device=self.device)
        if not self._all_reduce(trainable).item():
            metrics["update/skipped"] = 1.0
            self._log_step(metrics, step_start)
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row >= cfg.max_skipped_batches:
                raise RuntimeError(
                    f"{self._skipped_in_a_row} rollout batches in a row had equal rewards within every group "
                    f"(reward mean {metrics['reward/mean']:.3f}): nothing to learn from. The data is too hard or too "
                    "easy for this model; pick other examples, raise group_size, or set grpo.dynamic_sampling false"
                )
            return None
        self._skipped_in_a_row = 0
        plan = self.mini_batch_plan(ro)
        ro = self.score(ro, behaviour=cfg.num_iterations * len(plan) > 1)
        self.last_rollout = ro  # kept for inspection (callbacks, notebooks); replaced every step
        metrics.update(self.update(ro, plan))
        metrics["update/skipped"] = 0.0
        self._log_step(metrics, step_start)
        return None

    def rollout(self, batch) -> tuple[Rollout, dict[str, float]]:
        """Sample ``group_size`` responses per prompt, grade them, and turn rewards into group advantages.

        With ``dynamic_sampling`` only groups whose rewards differ are kept; with ``max_refill_rounds > 0``
        further prompts are sampled (DAPO) until this process holds as many informative groups as it has
        prompts, or the rounds run out. Every process takes part in each round's count, so all stop together.
        Returns the rollout (possibly a single placeholder row when no group was kept) and its metrics.
        """
        cfg = self.cfg
        target = len(batch.prompts)
        rounds: list[_Sampled] = []
        parts: list[Rollout] = []
        kept_groups = 0
        source = batch
        while True:
            if source is not None:
                sampled = self._sample_and_grade(source, round_index=len(rounds))
                rounds.append(sampled)
                advantages = group_advantages(sampled.rewards + sampled.penalty, cfg.group_size, scale=cfg.advantage_scale)  # [N]
                ro = Rollout.from_completions(sampled.comps, advantages, sampled.rewards, cfg.mask_truncated)
                keep = torch.ones_like(sampled.informative)  # [P]
                if cfg.dynamic_sampling:
                    # DAPO keeps the first informative groups up to the batch size.
                    keep = sampled.informative & (sampled.informative.cumsum(0) <= target - kept_groups)  # [P]
                kept_groups += int(keep.sum())
                rows = keep.repeat_interleave(cfg.group_size).nonzero().flatten()  # [n]
                if rows.numel():
                    parts.append(ro.select(rows))
            if not (cfg.dynamic_sampling and cfg.max_refill_rounds > 0):
                break
            missing = torch.tensor([float(max(0, target - kept_groups))], device=self.device)
            if not self._all_reduce(missing).item() or len(rounds) > cfg.max_refill_rounds:
                break
            source = self._refill_batch(batch, len(rounds)) if kept_groups < target else None

        first = rounds[0]
        if self._trainer is None:
            self._rollouts_without_trainer += 1
        self._maybe_log_text(first.batch, first.comps, first.rewards, first.answers)
        metrics = self._rollout_metrics(rounds)
        if parts:
            ro = Rollout.concat(parts, pad_id=self._pad_id())
        else:
            ro = Rollout.from_completions(first.comps, torch.zeros_like(first.rewards), first.rewards, True).placeholder()
        return ro, metrics

    def _sample_and_grade(self, batch, round_index: int) -> _Sampled:
        cfg = self.cfg
        graded = sample_and_grade(
            self.model, self.tokenizer, batch.input_ids, batch.attention_mask, batch.answers, batch.fields,
            n=cfg.group_size, reward_fn=self.reward_fn, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_p=cfg.top_p, eos_ids=self.eos_ids, batch_size=cfg.generation_batch_size,
            generator=self._generator("rollout", self._batch_index(), round_index),
            reward_generator=self._generator("reward", self._batch_index(), round_index),
        )
        comps, rewards = graded.comps, graded.rewards  # [N]
        answers = [a for a in batch.answers for _ in range(cfg.group_size)]
        grouped = rewards.view(-1, cfg.group_size)  # [P, G]
        self._record_example_accuracy(batch.example_ids, grouped)
        informative = grouped.max(-1).values > grouped.min(-1).values  # [P]
        penalty = torch.zeros_like(rewards)  # [N]
        if cfg.overlong_buffer:
            penalty = overlong_penalty(comps.lengths.to(rewards.device), cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
        return _Sampled(batch=batch, comps=comps, rewards=rewards, penalty=penalty, answers=answers, informative=informative)

    def _refill_batch(self, batch, round_index: int):
        """Prompts for a refill round: the DataModule's ``refill_batch`` when it has one (fresh prompts of a full
        training set), else the step's own prompts again (a one-shot batch is copies of one example anyway)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        refill = getattr(datamodule, "refill_batch", None)
        if refill is None:
            return batch
        generator = seeded_generator("cpu", self.seed, self._rank(), "refill", self._batch_index(), round_index)
        return refill(len(batch.prompts), generator).to(self.device)

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

    @torch.no_grad()
    def score(self, ro: Rollout, behaviour: bool | None = None) -> Rollout:
        """The no-grad passes before the first update: behaviour log-probs (``behaviour``: when the step makes
        more than one update; None = when num_iterations > 1), reference log-probs, rollout entropies."""
        cfg = self.cfg
        need_old = cfg.num_iterations > 1 if behaviour is None else behaviour
        need_entropy = cfg.top_entropy_quantile < 1 and cfg.focal_scope == "batch"
        old, ref, ent = [], [], []
        width = ro.completion_ids.shape[1]
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
        for mb in ro.micro_batches(cfg.micro_batch_size):
            mb = mb.trimmed()
            if need_old or need_entropy:
                was = self.model.training
                self.model.eval()
                logp, entropy = self._logprobs(mb, with_entropy=need_entropy)
                self.model.train(was)
                old.append(pad(logp))
                if need_entropy:
                    ent.append(pad(entropy))
            if cfg.kl_coef > 0:
                if self.reference is not None:
                    ref_logp, _ = self._logprobs(mb, with_entropy=False, model=self.reference)
                else:
                    with reference_model(self.model):
                        ref_logp, _ = self._logprobs(mb, with_entropy=False)
                ref.append(pad(ref_logp))
        return dataclasses.replace(
            ro,
            old_logp=torch.cat(old) if need_old else None,  # [N, T]
            entropy=torch.cat(ent) if need_entropy else None,  # [N, T]
            ref_logp=torch.cat(ref) if cfg.kl_coef > 0 else None,  # [N, T]
        )

    def _focal_mask(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-rho entropy tokens of the whole rollout batch: pooled over every process, in rank order."""
        valid = ro.mask.bool()  # [N, T]
        local = ro.entropy[valid].float()  # [n_valid]
        pooled, offset = local, 0
        if self._world() > 1:
            sizes = self.all_gather(torch.tensor([local.numel()], device=local.device)).flatten().tolist()  # [W]
            padded = torch.zeros(max(1, max(sizes)), device=local.device)
            padded[: local.numel()] = local
            gathered = self.all_gather(padded).reshape(len(sizes), -1)  # [W, max]
            pooled = torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])  # [sum n]
            offset = sum(sizes[: self._rank()])
        return focal_mask(ro.entropy, ro.mask, self.cfg.top_entropy_quantile, pooled=pooled, offset=offset)

    def mini_batch_plan(self, ro: Rollout) -> list[torch.Tensor | None]:
        """The rows of each optimizer update of one pass: ``mini_batch_size * group_size / processes`` of this
        process's responses each, in order (verl's ppo_mini_batch_size * n / data-parallel size; the advantages are
        already the groups', so an update may hold part of a group). Every process makes the same number of updates
        (the most any process needs); an update for which a process has no rows is None (it runs a placeholder).
        ``[None]`` alone when the pass is one update of the whole batch."""
        cfg = self.cfg
        if cfg.mini_batch_size is None:
            return [None]
        world = self._world()
        if (cfg.mini_batch_size * cfg.group_size) % world:
            raise ValueError(
                f"GRPOConfig.mini_batch_size={cfg.mini_batch_size}: mini_batch_size * group_size must be a multiple of "
                f"the number of processes ({world}); each process takes its share of every mini-batch's responses"
            )
        per_update = cfg.mini_batch_size * cfg.group_size // world  # rows of this process per update
        rows = ro.num_real_rows
        local = -(-rows // per_update)
        updates = int(self._all_reduce(torch.tensor([float(local)], device=self.device), op="max").item())
        device = ro.sequences.device
        plan = [torch.arange(begin, min(begin + per_update, rows), device=device) for begin in range(0, rows, per_update)]
        return plan + [None] * (max(1, updates) - len(plan))

    def update(self, ro: Rollout, plan: list[torch.Tensor | None] | None = None) -> dict[str, float]:
        """``num_iterations`` passes over the mini-batches of ``plan`` (None: the whole batch), one optimizer step
        each: gradients over micro-batches, clip, step. The LR schedule advances once, after the last update.

        The first update is on-policy: its ratio is exp(logp - logp.detach()) = 1 exactly. Every later one takes the
        ratio against the rollout's behaviour log-probs (``ro.old_logp``, from :meth:`score`), so its clip acts.
        Returns the mean of each metric over the updates (the max for ``*_max``) and ``update/optimizer_steps``.
        """
        cfg = self.cfg
        plan = plan or [None]
        opt, sched = self._optimizer_and_scheduler()
        if cfg.top_entropy_quantile < 1 and cfg.focal_scope == "batch":
            ro = self.with_focal_mask(ro)  # the whole batch's top tokens, fixed for all its updates
        total = cfg.num_iterations * len(plan)
        if total > 1 and ro.old_logp is None:
            raise ValueError("update: several updates per rollout need its behaviour log-probs; score(ro, behaviour=True) first")
        per_update: list[dict[str, float]] = []
        for index in range(total):
            rows = plan[index % len(plan)]
            mb = ro if rows is None and len(plan) == 1 else ro.select(rows) if rows is not None else ro.placeholder()
            if index == 0:
                mb = dataclasses.replace(mb, old_logp=None)  # on-policy: the weights have not moved yet
            opt.zero_grad(set_to_none=True)
            metrics = self.accumulate_gradients(mb)
            params = [p for p in self.model.parameters() if p.requires_grad]
            clip = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            # Gradients are already averaged over processes: the norm is the same on every process.
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip))
            metrics["lr"] = float(opt.param_groups[0]["lr"])  # the LR this update uses
            self._optimizer_step(opt, counted=index == total - 1)
            per_update.append(metrics)
        sched.step()
        self.last_updates = per_update  # each update's metrics, kept for inspection; replaced every step
        out = {}
        for key in per_update[0]:
            values = [m[key] for m in per_update if key in m]
            out[key] = max(values) if key.endswith("_max") else sum(values) / len(values)
        out["update/optimizer_steps"] = float(total)
        return out

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

    def with_focal_mask(self, ro: Rollout) -> Rollout:
        """``ro`` with ``pg_mask``: the top-rho entropy tokens of the whole rollout batch (every process)."""
        if ro.pg_mask is not None:
            return ro
        pg_mask, threshold = self._focal_mask(ro)  # [N, T]
        self._focal_threshold = float(threshold)
        return dataclasses.replace(ro, pg_mask=pg_mask & ro.mask.bool())

    def accumulate_gradients(self, ro: Rollout) -> dict[str, float]:
        """Backward of the rollout's (or mini-batch's) objective into ``.grad``, micro-batch by micro-batch; returns
        metrics.

        The loss denominators are taken over everything given (every process) first, so the accumulated gradient
        is the same for every ``micro_batch_size`` and, under DDP, equals the gradient of all processes' rows in
        one process. With focal_scope batch the focal mask is the given rows' own when ``ro.pg_mask`` is unset
        (:meth:`update` sets it from the whole batch); with micro_batch each micro-batch keeps its top
        ``ceil(rho * n)`` tokens by the entropy of its own forward.
        """
        cfg = self.cfg
        metrics: dict[str, float] = {}
        focal = cfg.top_entropy_quantile < 1
        per_micro_batch = focal and cfg.focal_scope == "micro_batch"
        if focal and not per_micro_batch:
            ro = self.with_focal_mask(ro)
            metrics["focal/threshold"] = self._focal_threshold
        valid = ro.mask.bool()  # [N, T]
        n_micro = -(-ro.num_rows // cfg.micro_batch_size)
        n_micro = int(self._all_reduce(torch.tensor([float(n_micro)], device=self.device), op="max").item())
        micro_batches = list(ro.micro_batches(cfg.micro_batch_size))
        micro_batches += [ro.placeholder()] * (n_micro - len(micro_batches))
        metrics["update/micro_batches"] = float(n_micro)
        if per_micro_batch:
            # Each micro-batch keeps ceil(rho * n) of its n valid tokens: the counts are known before the forwards.
            kept = float(sum(focal_count(int(mb.mask.bool().sum()), cfg.top_entropy_quantile) for mb in micro_batches))
            valid_count = aggregate_denominator(valid, cfg.loss_agg, ro.num_real_rows)  # seq-mean-token-mean is refused
            local = torch.tensor([float(valid_count) if cfg.loss_agg != "token-mean" else kept, float(valid_count), kept,
                                  float(valid.sum())], dtype=torch.float64)  # [4] as LossDenominators.counts
        else:
            local = LossDenominators.counts(valid, ro.pg_mask if focal else valid, cfg.loss_agg, rows=ro.num_real_rows)
        # Whole counts (all processes): each micro-batch's loss is its share of the mean over everything given.
        denominators = LossDenominators.from_counts(self._all_reduce(local.to(self.device)), scale=self._world())
        if focal:
            metrics["focal/kept_frac"] = denominators.pg_tokens / max(1.0, denominators.valid_tokens)

        sums: dict[str, float] = defaultdict(float)
        thresholds = []
        for index, mb in enumerate(micro_batches):
            mb = mb.trimmed()
            with self._no_backward_sync(sync=index == len(micro_batches) - 1):
                logp, entropy = self._logprobs(mb, with_entropy=True)  # [n, T'], [n, T']
                pg_mask = mb.pg_mask if focal else mb.mask  # [n, T']
                if per_micro_batch:
                    pg_mask, threshold = focal_mask(entropy, mb.mask, cfg.top_entropy_quantile)  # [n, T'], []
                    if mb.mask.any():
                        thresholds.append(float(threshold))
                loss, parts = grpo_objective(
                    logp,
                    entropy if cfg.entropy_coef != 0 else entropy.detach(),
                    mb.advantages,
                    mb.mask,
                    pg_mask,
                    denominators,
                    old_logp=mb.old_logp,
                    ref_logp=mb.ref_logp,
                    loss_agg=cfg.loss_agg,
                    max_len=cfg.max_new_tokens,
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    dual_clip=cfg.dual_clip,
                    entropy_coef=cfg.entropy_coef,
                    kl_coef=cfg.kl_coef,
                )
                self._backward(loss)
            for key, value in parts.items():
                sums[key] = max(sums[key], float(value)) if key.endswith("_max") else sums[key] + float(value)
        if not focal:
            sums.pop("entropy/kept_mean", None)
        if per_micro_batch:
            metrics["focal/threshold"] = sum(thresholds) / len(thresholds) if thresholds else float("nan")
        metrics.update(sums)
        return metrics

    def _backward(self, loss: torch.Tensor) -> None:
        """Lightning's backward inside a Trainer (precision, DDP), a plain one outside (tests, notebooks)."""
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()

    # ------------------------------------------------------------------ logging
    def _rollout_metrics(self, rounds: list[_Sampled]) -> dict[str, float]:
        rewards = torch.cat([r.rewards for r in rounds])  # [N]
        lengths = torch.cat([r.comps.lengths.float() for r in rounds])  # [N]
        truncated = torch.cat([r.comps.truncated.float() for r in rounds])  # [N]
        informative = torch.cat([r.informative.float() for r in rounds])  # [P]
        seconds = sum(r.comps.seconds for r in rounds)
        stats = self._response_stats([t for r in rounds for t in r.comps.texts])
        return {
            **{f"rollout/{name}": sum(values) / max(1, len(values)) for name, values in stats.items()},
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "reward/accuracy": float((rewards >= 1.0).float().mean()),
            **({"reward/overlong_penalty": float(torch.cat([r.penalty for r in rounds]).mean())} if self.cfg.overlong_buffer else {}),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": float(lengths.max()),
            "response/truncated_frac": float(truncated.mean()),
            "groups/informative_frac": float(informative.mean()),
            "rollout/rounds": float(len(rounds)),
            "perf/gen_tokens_per_s": sum(r.comps.num_tokens for r in rounds) / max(seconds, 1e-9),
            "perf/gen_s": seconds,
        }

    def _response_stats(self, texts: list[str]) -> dict[str, list[float]]:
        if self.stats_fn is None:
            return {}
        stats = self.stats_fn(texts)
        for name, values in stats.items():
            if len(values) != len(texts):
                raise ValueError(
                    f"response_stats {self.cfg.response_stats!r} returned {len(values)} values of {name!r} for "
                    f"{len(texts)} completions"
                )
        return {name: [float(v) for v in values] for name, values in stats.items()}

    def _log_step(self, metrics: dict, step_start: float):
        metrics["perf/step_s"] = time.perf_counter() - step_start
        metrics = self._reduce_metrics(metrics)
        self.last_metrics = dict(metrics)
        for key, value in metrics.items():
            bar = key in ("reward/mean", "perf/step_s")
            self.log(key, float(value), prog_bar=bar, on_step=True, on_epoch=False, batch_size=1)

    def _reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The mean over processes (the max for ``*_max`` and ``rollout/rounds``), in two collectives.

        Every process logs the same keys in every step (the skip decision is global), so the vectors line up.
        The update's metrics are each process's share of a global mean times the number of processes, so their
        mean over processes is the global value.
        """
        world = self._world()
        if world == 1:
            return metrics
        keys = sorted(metrics)
        by_max = [k for k in keys if k.endswith("_max") or k == "rollout/rounds"]
        by_mean = [k for k in keys if k not in by_max]
        out = {}
        for names, op in ((by_mean, "sum"), (by_max, "max")):
            if not names:
                continue
            values = self._all_reduce(torch.tensor([float(metrics[k]) for k in names], dtype=torch.float64, device=self.device), op)
            for name, value in zip(names, values.tolist()):
                out[name] = value / world if op == "sum" else value
        return out

    def _maybe_log_text(self, batch, comps: Completions, rewards: torch.Tensor, answers: list[str]):
        every = self.cfg.log_completions_every
        if not every or self.global_step % every or self.logger is None:
            return
        experiment = getattr(self.logger, "experiment", None)
        if not hasattr(experiment, "add_text"):
            return
        lines = []
        for i in range(0, len(comps.texts), self.cfg.group_size)[:4]:
            lines.append(
                f"**prompt** ({batch.example_ids[i // self.cfg.group_size]}, answer `{answers[i]}`, reward {rewards[i]:.2f}):\n\n"
                f"    {batch.prompts[i // self.cfg.group_size][-500:]}\n\n**response:**\n\n    {comps.texts[i][:2000]}"
            )
        experiment.add_text("samples", "\n\n---\n\n".join(lines), self.global_step)

    # ------------------------------------------------------------------ per-example accuracy (example selection)
    def _record_example_accuracy(self, example_ids: list[str], grouped: torch.Tensor):
        epoch = self.current_epoch
        for example_id, group in zip(example_ids, grouped):
            self._example_acc[str(example_id)][epoch].append(float((group >= 1.0).float().mean()))

    def example_accuracy_table(self) -> dict[str, list[float]]:
        """index -> per-epoch mean accuracy, the format of dsr_sub_acc_step_500.json."""
        table = {}
        for example_id, by_epoch in self._example_acc.items():
            table[example_id] = [float(np.mean(by_epoch[e])) for e in sorted(by_epoch)]
        return table

    def on_train_epoch_end(self):
        if not self.cfg.accuracy_file:
            return
        table = self.example_accuracy_table()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, dict(self._example_acc))
            merged: dict[str, dict[int, list[float]]] = defaultdict(_epoch_table)
            for part in gathered:
                for example_id, by_epoch in part.items():
                    for e, accs in by_epoch.items():
                        merged[example_id][e].extend(accs)
            table = {k: [float(np.mean(v[e])) for e in sorted(v)] for k, v in merged.items()}
        if self.trainer.is_global_zero:
            path = Path(self.cfg.accuracy_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(table))

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self):
        self.val_metrics = {}
        self.val_stats = {}
        self._val_problems: dict[str, dict[str, float]] = {}

    def validation_step(self, batch, batch_idx):
        cfg = self.cfg
        graded = sample_and_grade(
            self.model, self.tokenizer, batch.input_ids, batch.attention_mask, batch.answers, batch.fields,
            n=cfg.val_n, reward_fn=self.val_reward_fn, max_new_tokens=cfg.val_max_new_tokens or cfg.max_new_tokens,
            temperature=cfg.val_temperature, top_p=cfg.val_top_p or cfg.top_p, eos_ids=self.eos_ids,
            batch_size=cfg.generation_batch_size, generator=self._generator("validation", self.global_step, batch_idx),
            reward_generator=self._generator("validation reward", self.global_step, batch_idx),
        )
        comps = graded.comps
        correct = graded.rewards >= 1.0  # [P*n]
        per_problem = correct.view(-1, cfg.val_n)  # [P, n]
        stats = self._response_stats(comps.texts)
        for p, (row, fields_) in enumerate(zip(per_problem, batch.fields)):
            name = str(fields_.get("benchmark", "val"))
            if name not in self.val_metrics:
                self.val_metrics[name] = PassAtK(ks=sorted({1, cfg.val_n})).to(self.device)
            self.val_metrics[name].update([row])
            self._val_problems.setdefault(name, {})[batch.example_ids[p]] = float(row.float().mean())
            for stat, values in stats.items():
                key = f"{name}/{stat}"
                if key not in self.val_stats:
                    self.val_stats[key] = MeanMetric().to(self.device)
                self.val_stats[key].update(torch.tensor(values[p * cfg.val_n : (p + 1) * cfg.val_n]))

    def on_validation_epoch_end(self):
        names, stat_keys = set(self.val_metrics), set(self.val_stats)
        if self._world() > 1:
            # compute() gathers across processes, so every process must hold every benchmark's metric, also one
            # whose share of the benchmark was empty.
            gathered = [None] * self._world()
            torch.distributed.all_gather_object(gathered, (sorted(names), sorted(stat_keys)))
            names = set().union(*(g[0] for g in gathered))
            stat_keys = set().union(*(g[1] for g in gathered))
        for key in sorted(stat_keys):
            metric = self.val_stats.setdefault(key, MeanMetric().to(self.device))
            self.log(f"val/{key}", float(metric.compute()), sync_dist=False, batch_size=1)
        problems = self._val_problems
        if self._world() > 1:
            gathered = [None] * self._world()
            torch.distributed.all_gather_object(gathered, problems)
            problems = {}
            for part in gathered:  # the distributed sampler repeats a few problems to even the shares out
                for name, by_id in part.items():
                    problems.setdefault(name, {}).update(by_id)
        self.val_problem_accuracy = problems  # benchmark -> problem id -> accuracy of its val_n samples
        averages = []
        for name in sorted(names):
            if name not in self.val_metrics:
                self.val_metrics[name] = PassAtK(ks=sorted({1, self.cfg.val_n})).to(self.device)
            values = self.val_metrics[name].compute()  # every process's problems
            for k, v in values.items():
                self.log(f"val/{name}/pass@{k}", float(v), sync_dist=False, batch_size=1)
            # The mean accuracy over problems of n samples each is the unbiased pass@1.
            self.log(f"val/{name}/avg@{self.cfg.val_n}", float(values[1]), sync_dist=False, batch_size=1)
            averages.append(float(values[1]))
        if averages:
            self.log("val/avg_pass@1", float(np.mean(averages)), prog_bar=True, batch_size=1)

    # ------------------------------------------------------------------ checkpoints: adapter + RNG, never the base
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
        checkpoint["rng_state"] = rng_state()
        checkpoint["grpo_config"] = asdict(self.cfg)
        checkpoint["example_accuracy"] = {k: dict(v) for k, v in self._example_acc.items()}

    def on_load_checkpoint(self, checkpoint: dict):
        if not self._sharded():
            load_adapter_state_dict(self.model, checkpoint)
        restore_rng_state(checkpoint.get("rng_state"))
        for example_id, by_epoch in checkpoint.get("example_accuracy", {}).items():
            for e, accs in by_epoch.items():
                self._example_acc[example_id][int(e)] = list(accs)
