"""GRPO as a LightningModule: sample, reward, advantage, then clipped policy-gradient updates on LoRA adapters.

One training step = one rollout batch: G responses for each of the batch's prompts (every prompt is its own
group, also when the same example is replicated), graded by a reward function, turned into group-relative
advantages, then `num_iterations` optimizer updates over micro-batches with gradient accumulation.
The KL reference is the same network with its LoRA adapter switched off, so no second model sits in memory.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import lightning as L
import numpy as np
import torch

from reprokit.algorithms import (
    aggregate,
    focal_mask,
    focal_threshold,
    group_advantages,
    kl_k3,
    policy_loss,
    token_logprobs_and_entropy,
)
from reprokit.metrics import PassAtK
from reprokit.checkpoints import adapter_state_dict, load_adapter_state_dict, restore_rng_state, rng_state
from reprokit.models import eos_token_ids, reference_model
from reprokit.rewards import get_reward
from reprokit.sampling import Completions, generate

LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
ADVANTAGE_SCALES = ("group", "batch", "none")
LR_SCHEDULES = ("constant", "cosine", "linear")


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
    """Sequences per forward/backward pass; gradients accumulate over the rollout batch."""
    num_iterations: int = 1
    """Optimizer updates per rollout batch. With 1 the update is on-policy and the ratio is exactly 1."""
    lr: float = 1e-6
    """AdamW learning rate of the trainable (LoRA) parameters."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    lr_schedule: str = "constant"
    """One of constant, cosine, linear (decay to 0 at max_steps), after warmup."""
    warmup_steps: int = 0
    """Linear warm-up updates."""
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
    """rho: policy gradient only on the top-rho highest-entropy response tokens of the whole rollout batch."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (they carry no advantage) before the update."""
    mask_truncated: bool = False
    """Give truncated responses (no EOS) zero loss instead of training on their reward."""
    reward: str = "math"
    """Reward name (math) or 'package.module:function' with signature (completions, answers, **fields)."""
    logprob_chunk_size: int = 1024
    """Positions per chunk of the log-prob / entropy pass: bounds the [chunk, vocab] logits held at once."""
    log_completions_every: int = 10
    """Write sample completions as TensorBoard text every N steps (0 = never)."""
    val_n: int = 1
    """Samples per validation problem (1 with val_temperature 0 = greedy pass@1)."""
    val_temperature: float = 0.0
    """Validation sampling temperature (0 = greedy)."""
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
            (self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1"),
            (self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1"),
            (self.num_iterations >= 1, "num_iterations", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.loss_agg in LOSS_AGGREGATIONS, "loss_agg", f"must be one of {', '.join(LOSS_AGGREGATIONS)}"),
            (self.advantage_scale in ADVANTAGE_SCALES, "advantage_scale", f"must be one of {', '.join(ADVANTAGE_SCALES)}"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}"),
            (self.epsilon_low >= 0 and self.epsilon_high >= 0, "epsilon_low/epsilon_high", "must be >= 0"),
            (self.dual_clip is None or self.dual_clip > 1, "dual_clip", "must be > 1 or null"),
            (self.kl_coef >= 0, "kl_coef", "must be >= 0"),
            (0 < self.top_entropy_quantile <= 1, "top_entropy_quantile", "must be in (0, 1]; 1 keeps every token"),
            (self.val_n >= 1, "val_n", "must be >= 1"),
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
    old_logp: torch.Tensor | None = None  # [N, T] behaviour log-probs (num_iterations > 1)
    ref_logp: torch.Tensor | None = None  # [N, T] adapter-free log-probs (kl_coef > 0)
    entropy: torch.Tensor | None = None  # [N, T] rollout-time entropy (focal mask)

    def select(self, rows: torch.Tensor) -> "Rollout":
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return Rollout(
            sequences=self.sequences[rows],
            attention_mask=self.attention_mask[rows],
            prompt_len=self.prompt_len,
            completion_ids=self.completion_ids[rows],
            mask=self.mask[rows],
            advantages=self.advantages[rows],
            old_logp=pick(self.old_logp),
            ref_logp=pick(self.ref_logp),
            entropy=pick(self.entropy),
        )

    def micro_batches(self, size: int):
        for begin in range(0, self.sequences.shape[0], size):
            yield self.select(torch.arange(begin, min(begin + size, self.sequences.shape[0])))

    def trimmed(self) -> "Rollout":
        """Drop left-padding columns no row uses and response columns past the longest response."""
        first = int((self.attention_mask[:, : self.prompt_len].sum(0) > 0).nonzero()[0])
        # Responses are right-padded, so the longest one bounds the columns worth computing.
        keep_t = max(1, int(self.attention_mask[:, self.prompt_len :].sum(-1).max()))
        cut = lambda t: None if t is None else t[:, :keep_t]  # noqa: E731
        return Rollout(
            sequences=self.sequences[:, first : self.prompt_len + keep_t],
            attention_mask=self.attention_mask[:, first : self.prompt_len + keep_t],
            prompt_len=self.prompt_len - first,
            completion_ids=self.completion_ids[:, :keep_t],
            mask=self.mask[:, :keep_t],
            advantages=self.advantages,
            old_logp=cut(self.old_logp),
            ref_logp=cut(self.ref_logp),
            entropy=cut(self.entropy),
        )


def _epoch_table() -> defaultdict:
    """epoch -> accuracies; a named function so the module pickles (ddp_spawn)."""
    return defaultdict(list)


def _split_fields(rows: list[dict], repeat: int) -> dict[str, list]:
    """Row dicts -> keyword lists aligned with the responses (each row repeated `repeat` times)."""
    keys = set().union(*(r.keys() for r in rows)) if rows else set()
    return {k: [r.get(k) for r in rows for _ in range(repeat)] for k in sorted(keys)}


class GRPOModule(L.LightningModule):
    """GRPO / DAPO / Dr. GRPO / focal-token training of a LoRA-adapted causal LM (manual optimization)."""

    def __init__(self, model, tokenizer, config: GRPOConfig | None = None, run_dir: str | None = None, reward_fn=None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = config or GRPOConfig()
        self.run_dir = Path(run_dir) if run_dir else None
        self.automatic_optimization = False
        # Checkpoints hold only the adapter: loading must not demand the frozen base weights.
        self.strict_loading = False
        # An explicit callable wins over the configured name (tests and notebooks pass functions directly).
        self.reward_fn = get_reward(reward_fn if reward_fn is not None else self.cfg.reward)
        self.eos_ids = eos_token_ids(tokenizer, model)
        self._example_acc: dict[str, dict[int, list[float]]] = defaultdict(_epoch_table)
        self.val_metrics: dict[str, PassAtK] = {}
        self._skipped_in_a_row = 0
        self.last_rollout: Rollout | None = None
        self.last_metrics: dict[str, float] = {}
        if self.cfg.kl_coef > 0 and not hasattr(model, "disable_adapter"):
            raise ValueError(
                "GRPOConfig.kl_coef > 0 needs a LoRA adapter (the KL reference is the model with its adapter off); "
                "enable LoRA in the model config or set kl_coef: 0"
            )

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: enable LoRA (lora_r > 0) or unfreeze the model")
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, betas=self.cfg.betas)
        total = max(1, self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 1)
        warmup, schedule = self.cfg.warmup_steps, self.cfg.lr_schedule

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if schedule == "cosine":
                return 0.5 * (1 + math.cos(math.pi * progress))
            if schedule == "linear":
                return 1 - progress
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ forward passes
    def _network(self):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.get_decoder(), base.get_output_embeddings()

    def _logprobs(self, ro: Rollout, *, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs (and entropies) of the response tokens at the rollout temperature."""
        decoder, lm_head = self._network()
        position_ids = (ro.attention_mask.cumsum(-1) - 1).clamp(min=0)  # [n, L+T]
        hidden = decoder(
            input_ids=ro.sequences, attention_mask=ro.attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # [n, L+T, H]
        # The hidden state at position i predicts token i+1: responses start at prompt_len.
        hidden = hidden[:, ro.prompt_len - 1 : -1]  # [n, T, H]
        return token_logprobs_and_entropy(
            hidden,
            lm_head,
            ro.completion_ids,
            temperature=self.cfg.temperature,
            chunk_size=self.cfg.logprob_chunk_size,
            with_entropy=with_entropy,
        )  # [n, T], [n, T] | None

    @torch.no_grad()
    def _score_rollout(self, ro: Rollout) -> Rollout:
        """The no-grad passes before the update: behaviour log-probs, reference log-probs, rollout entropies."""
        cfg = self.cfg
        need_old = cfg.num_iterations > 1
        need_entropy = cfg.top_entropy_quantile < 1
        old, ref, ent = [], [], []
        for mb in ro.micro_batches(cfg.micro_batch_size):
            mb = mb.trimmed()
            width = ro.completion_ids.shape[1]
            pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
            if need_old or need_entropy:
                was = self.model.training
                self.model.eval()
                logp, entropy = self._logprobs(mb, with_entropy=need_entropy)
                self.model.train(was)
                old.append(pad(logp))
                if need_entropy:
                    ent.append(pad(entropy))
            if cfg.kl_coef > 0:
                with reference_model(self.model):
                    ref_logp, _ = self._logprobs(mb, with_entropy=False)
                ref.append(pad(ref_logp))
        ro.old_logp = torch.cat(old) if need_old else None  # [N, T]
        ro.entropy = torch.cat(ent) if need_entropy else None  # [N, T]
        ro.ref_logp = torch.cat(ref) if cfg.kl_coef > 0 else None  # [N, T]
        return ro

    def _global_focal_threshold(self, entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The (1 - rho) entropy quantile over every valid response token of the batch, on every process."""
        valid = entropy[mask.bool()].float()  # [n_valid]
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            sizes = self.all_gather(torch.tensor([valid.numel()], device=valid.device)).flatten()  # [W]
            padded = torch.full((int(sizes.max()),), float("nan"), device=valid.device)
            padded[: valid.numel()] = valid
            pooled = self.all_gather(padded).flatten()  # [W * max]
            valid = pooled[~torch.isnan(pooled)]
        return focal_threshold(valid, self.cfg.top_entropy_quantile)

    # ------------------------------------------------------------------ the training step
    def _rollout(self, batch) -> tuple[Completions, torch.Tensor, list[str]]:
        cfg = self.cfg
        comps = generate(
            self.model,
            self.tokenizer,
            batch.input_ids,
            batch.attention_mask,
            n=cfg.group_size,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            eos_ids=self.eos_ids,
            batch_size=cfg.generation_batch_size,
        )
        answers = [a for a in batch.answers for _ in range(cfg.group_size)]
        extra = _split_fields(batch.fields, cfg.group_size)
        extra.pop("answer", None)
        rewards = self.reward_fn(comps.texts, answers, **extra)
        if len(rewards) != len(comps.texts):
            raise ValueError(f"reward {cfg.reward!r} returned {len(rewards)} values for {len(comps.texts)} completions")
        rewards = torch.tensor([float(r) for r in rewards], dtype=torch.float32, device=self.device)  # [N]
        return comps, rewards, answers

    def training_step(self, batch, batch_idx):
        cfg = self.cfg
        step_start = time.perf_counter()
        comps, rewards, answers = self._rollout(batch)
        n_resp = rewards.numel()
        advantages = group_advantages(rewards, cfg.group_size, scale=cfg.advantage_scale)  # [N]

        mask = comps.completion_mask.clone()  # [N, T]
        if cfg.mask_truncated:
            mask[comps.truncated] = 0
        keep = torch.ones(n_resp, dtype=torch.bool, device=rewards.device)  # [N]
        grouped = rewards.view(-1, cfg.group_size)  # [P, G]
        informative = grouped.max(-1).values > grouped.min(-1).values  # [P]
        if cfg.dynamic_sampling:
            keep = informative.repeat_interleave(cfg.group_size)  # [N]
        self._record_example_accuracy(batch.example_ids, grouped)

        metrics = self._rollout_metrics(comps, rewards, informative)
        self._maybe_log_text(batch, comps, rewards, answers)

        ro = Rollout(
            sequences=torch.cat([comps.prompt_ids, comps.completion_ids], dim=1),  # [N, L+T]
            attention_mask=torch.cat([comps.prompt_mask, comps.completion_mask], dim=1),  # [N, L+T]
            prompt_len=comps.prompt_ids.shape[1],
            completion_ids=comps.completion_ids,
            mask=mask,
            advantages=advantages,
        )
        if not bool(keep.any()) or not bool(mask[keep].any()):
            # Every group had equal rewards (or every response was masked): nothing to learn from this batch.
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
        ro = self._score_rollout(ro.select(keep.nonzero().flatten()))
        self.last_rollout = ro  # kept for inspection (callbacks, notebooks); replaced every step
        update_metrics = self._update(ro)
        metrics.update(update_metrics)
        metrics["update/skipped"] = 0.0
        self._log_step(metrics, step_start)
        return None

    def _update(self, ro: Rollout) -> dict[str, float]:
        cfg = self.cfg
        opt = self.optimizers()
        sched = self.lr_schedulers()
        valid = ro.mask.bool()  # [N, T]
        focal = cfg.top_entropy_quantile < 1
        metrics: dict[str, float] = {}
        if focal:
            threshold = self._global_focal_threshold(ro.entropy, ro.mask)
            pg_mask, _ = focal_mask(ro.entropy, ro.mask, cfg.top_entropy_quantile, threshold=threshold)  # [N, T]
            pg_mask = pg_mask & valid
            metrics["focal/threshold"] = float(threshold)
            metrics["focal/kept_frac"] = float(pg_mask.sum() / valid.sum().clamp(min=1))
        else:
            pg_mask = valid
        n_seq = ro.sequences.shape[0]
        pg_tokens = int(pg_mask.sum())
        all_tokens = int(valid.sum())
        max_len = cfg.max_new_tokens

        sums: dict[str, float] = defaultdict(float)
        for _ in range(cfg.num_iterations):
            opt.zero_grad(set_to_none=True)
            for rows in torch.arange(n_seq, device=ro.mask.device).split(cfg.micro_batch_size):
                mb = ro.select(rows).trimmed()
                mb_pg_mask = pg_mask[rows][:, : mb.mask.shape[1]]  # [n, T']
                mb_valid = mb.mask.bool()  # [n, T']
                need_entropy_grad = cfg.entropy_coef != 0
                logp, entropy = self._logprobs(mb, with_entropy=True)  # [n, T'], [n, T']
                # On-policy (one update per rollout): the behaviour policy is the current one, so ratio == 1.
                old = mb.old_logp if mb.old_logp is not None else logp.detach()  # [n, T']
                pg, pg_metrics = policy_loss(
                    logp,
                    old,
                    mb.advantages,
                    mb_pg_mask.to(logp.dtype),
                    epsilon_low=cfg.epsilon_low,
                    epsilon_high=cfg.epsilon_high,
                    agg=cfg.loss_agg,
                    max_len=max_len,
                    dual_clip=cfg.dual_clip,
                )
                # Each micro-batch's mean is re-weighted so the sum equals the mean over the whole rollout batch.
                by_tokens = cfg.loss_agg == "token-mean"
                w_pg = (int(mb_pg_mask.sum()) / max(1, pg_tokens)) if by_tokens else rows.numel() / n_seq
                w_all = (int(mb_valid.sum()) / max(1, all_tokens)) if by_tokens else rows.numel() / n_seq
                fmask = mb_valid.to(logp.dtype)  # [n, T']
                loss = w_pg * pg
                ent_agg = aggregate(entropy if need_entropy_grad else entropy.detach(), fmask, cfg.loss_agg, max_len)
                if need_entropy_grad:
                    loss = loss - cfg.entropy_coef * w_all * ent_agg
                if cfg.kl_coef > 0:
                    kl_agg = aggregate(kl_k3(logp, mb.ref_logp), fmask, cfg.loss_agg, max_len)
                    loss = loss + cfg.kl_coef * w_all * kl_agg
                    sums["kl/mean"] += w_all * float(kl_agg.detach())
                self.manual_backward(loss)

                sums["loss/pg"] += w_pg * float(pg.detach())
                sums["loss/total"] += float(loss.detach())
                sums["entropy/mean"] += float((entropy.detach() * fmask).sum())
                if focal:
                    sums["entropy/kept_sum"] += float((entropy.detach() * mb_pg_mask).sum())
                for key, value in pg_metrics.items():
                    if key.startswith(("clip/", "ratio/")):
                        sums[key] += w_pg * float(value)
            params = [p for p in self.model.parameters() if p.requires_grad]
            clip = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
            sums["grad_norm"] += float(grad_norm)
            opt.step()
            sched.step()

        iters = cfg.num_iterations
        for key, value in sums.items():
            metrics[key] = value / iters
        metrics["entropy/mean"] = sums["entropy/mean"] / iters / max(1, all_tokens)
        if focal:
            metrics["entropy/kept_mean"] = sums["entropy/kept_sum"] / iters / max(1, pg_tokens)
            metrics.pop("entropy/kept_sum", None)
        metrics["lr"] = float(sched.get_last_lr()[0])
        return metrics

    # ------------------------------------------------------------------ logging
    def _rollout_metrics(self, comps: Completions, rewards: torch.Tensor, informative: torch.Tensor) -> dict:
        lengths = comps.lengths.float()  # [N]
        return {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "reward/accuracy": float((rewards >= 1.0).float().mean()),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": float(lengths.max()),
            "response/truncated_frac": float(comps.truncated.float().mean()),
            "groups/informative_frac": float(informative.float().mean()),
            "perf/gen_tokens_per_s": comps.num_tokens / max(comps.seconds, 1e-9),
            "perf/gen_s": comps.seconds,
        }

    def _log_step(self, metrics: dict, step_start: float):
        metrics["perf/step_s"] = time.perf_counter() - step_start
        self.last_metrics = dict(metrics)
        for key, value in metrics.items():
            bar = key in ("reward/mean", "perf/step_s")
            self.log(key, float(value), prog_bar=bar, on_step=True, on_epoch=False, sync_dist=self.trainer.world_size > 1, batch_size=1)

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
        self._val_acc: dict[str, list[float]] = defaultdict(list)

    def validation_step(self, batch, batch_idx):
        cfg = self.cfg
        comps = generate(
            self.model,
            self.tokenizer,
            batch.input_ids,
            batch.attention_mask,
            n=cfg.val_n,
            max_new_tokens=cfg.val_max_new_tokens or cfg.max_new_tokens,
            temperature=cfg.val_temperature,
            top_p=cfg.top_p if cfg.val_temperature > 0 else 1.0,
            eos_ids=self.eos_ids,
            batch_size=cfg.generation_batch_size,
        )
        answers = [a for a in batch.answers for _ in range(cfg.val_n)]
        extra = _split_fields(batch.fields, cfg.val_n)
        extra.pop("answer", None)
        correct = torch.tensor(self.reward_fn(comps.texts, answers, **extra), device=self.device) >= 1.0  # [P*n]
        per_problem = correct.view(-1, cfg.val_n)  # [P, n]
        for row, fields_ in zip(per_problem, batch.fields):
            name = str(fields_.get("benchmark", "val"))
            if name not in self.val_metrics:
                self.val_metrics[name] = PassAtK(ks=sorted({1, cfg.val_n})).to(self.device)
            self.val_metrics[name].update([row])
            self._val_acc[name].append(float(row.float().mean()))

    def on_validation_epoch_end(self):
        averages = []
        for name, metric in sorted(self.val_metrics.items()):
            values = metric.compute()
            for k, v in values.items():
                self.log(f"val/{name}/pass@{k}", float(v), sync_dist=False, batch_size=1)
            avg = float(np.mean(self._val_acc[name]))
            self.log(f"val/{name}/avg@{self.cfg.val_n}", avg, batch_size=1)
            averages.append(float(values[1]))
        if averages:
            self.log("val/avg_pass@1", float(np.mean(averages)), prog_bar=True, batch_size=1)

    # ------------------------------------------------------------------ checkpoints: adapter + RNG, never the base
    def on_save_checkpoint(self, checkpoint: dict):
        checkpoint["state_dict"] = adapter_state_dict(self.model)
        checkpoint["rng_state"] = rng_state()
        checkpoint["grpo_config"] = asdict(self.cfg)
        checkpoint["example_accuracy"] = {k: dict(v) for k, v in self._example_acc.items()}

    def on_load_checkpoint(self, checkpoint: dict):
        load_adapter_state_dict(self.model, checkpoint)
        restore_rng_state(checkpoint.get("rng_state"))
        for example_id, by_epoch in checkpoint.get("example_accuracy", {}).items():
            for e, accs in by_epoch.items():
                self._example_acc[example_id][int(e)] = list(accs)


def config_from_dict(values: dict) -> GRPOConfig:
    """GRPOConfig from a dict, naming unknown keys (a typo would otherwise be silently ignored)."""
    known = {f.name for f in fields(GRPOConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown GRPO option(s) {unknown}; valid options: {sorted(known)}")
    return GRPOConfig(**values)
