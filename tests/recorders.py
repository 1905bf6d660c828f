"""Helpers that recipe runs started by the tests load by name (``--run.callbacks recorders:StepRecorder``,
``--rollout.reward recorders:share_of_a``): the tests put this folder on the child processes' PYTHONPATH."""

from pathlib import Path

import lightning as L
import torch


class StepRecorder(L.Callback):
    """Writes, per process and step, what the step trained on and the gradient it produced.

    ``<run_dir>/record/rank{R}-batch{B}.pt`` (B counts training batches from 0, skipped ones too) holds the adapter before the update, the prompts' example ids, the
    sampled rollout as the update saw it (after scoring), the gradient of the first optimizer update (before
    clipping when max_grad_norm is null), every optimizer update of the step as ``updates`` (the weights it started
    from and its gradient, seen by a step pre-hook of the torch optimizer), and the step's logged metrics.
    """

    def on_train_start(self, trainer, pl_module):
        self._updates = []

        def before_step(optimizer, args, kwargs):
            named = [(n, p) for n, p in pl_module.model.named_parameters() if p.requires_grad]
            self._updates.append({
                "adapter": {n: p.detach().clone() for n, p in named},
                "grads": {n: p.grad.detach().clone() for n, p in named if p.grad is not None},
            })

        trainer.optimizers[0].register_step_pre_hook(before_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._record = {
            "adapter": {n: p.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad},
            "example_ids": list(batch.example_ids),
        }
        self._grads = None
        self._updates.clear()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self._grads is None:
            self._grads = {
                n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters() if p.requires_grad and p.grad is not None
            }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ro = pl_module.last_rollout if self._grads is not None else None
        self._record.update(
            grads=self._grads,
            updates=list(self._updates),
            metrics=dict(pl_module.last_metrics),
            rollout=None if ro is None else {k: v for k, v in vars(ro).items() if not k.startswith("_")},
            global_step=trainer.global_step,
        )
        out = Path(pl_module.run_dir) / "record"
        out.mkdir(parents=True, exist_ok=True)
        batch_index = trainer.fit_loop.epoch_loop.total_batch_idx
        torch.save(self._record, out / f"rank{trainer.global_rank}-batch{batch_index}.pt")


def share_of_a(completions, answers, **fields):
    """A reward a random tiny model earns unevenly: the share of 'a' in the response."""
    return [sum(ch == "a" for ch in c) / max(1, len(c)) for c in completions]


def share_of_a_except_on_rank_one(completions, answers, **fields):
    """share_of_a on process 0; 0 for every response on process 1, whose groups are then all uninformative."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return [0.0] * len(completions) if rank == 1 else share_of_a(completions, answers)


_calls = {"n": 0}


def share_of_a_then_hang_on_rank_one(completions, answers, **fields):
    """share_of_a, except that process 1 never returns from its second call: process 0 then waits for it in
    a collective, where a Python signal handler cannot run."""
    _calls["n"] += 1
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 1 and _calls["n"] >= 2:
        import time

        time.sleep(3600)
    return share_of_a(completions, answers)
