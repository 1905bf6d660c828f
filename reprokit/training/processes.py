"""What one process of a multi-process run (DDP, FSDP) must agree on with the others, in one place.

Every process samples its own rollouts, but the loss denominators, the focal mask's ranking, the number of
micro-batches and optimizer updates, the decision to skip a step and the logged metrics are global: every process
computes them from the same all-reduced counts and makes the same collective calls in the same order, also when
it has nothing of its own to train on (it then runs a placeholder micro-batch that adds zero). In a single
process every function here is the identity.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["all_reduce", "gather_ragged", "global_max", "no_backward_sync", "rank", "reduce_metrics", "world_size"]


def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if world_size() > 1 else 0


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) over processes, in place; the identity in a single process."""
    if world_size() > 1:
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(tensor, op=ops[op])
    return tensor


def global_max(value: int, device: torch.device) -> int:
    """The largest ``value`` any process holds (how many micro-batches or updates every process must run)."""
    return int(all_reduce(torch.tensor([float(value)], device=device), op="max").item())


def gather_ragged(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's 1-D ``values`` concatenated in rank order, and where this process's start in it."""
    if world_size() == 1:
        return values, 0
    sizes = torch.tensor([values.numel()], device=values.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    torch.distributed.all_gather(all_sizes, sizes)
    counts = [int(s) for s in all_sizes]
    padded = torch.zeros(max(1, max(counts)), device=values.device, dtype=values.dtype)
    padded[: values.numel()] = values
    parts = [torch.zeros_like(padded) for _ in counts]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]), sum(counts[: rank()])


def no_backward_sync(strategy, sync: bool):
    """DDP all-reduces gradients at every backward; accumulate locally and reduce once, at the last micro-batch."""
    if sync or strategy is None or not hasattr(strategy, "block_backward_sync"):
        return contextlib.nullcontext()
    return strategy.block_backward_sync()


def reduce_metrics(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over processes (the max for ``*_max`` and ``rollout/rounds``), in two collectives.

    Every process logs the same keys in every step (the skip decision is global), so the vectors line up; the
    update's metrics are each process's share of a global mean times the number of processes, so their mean over
    processes is the global value.
    """
    world = world_size()
    if world == 1:
        return metrics
    keys = sorted(metrics)
    by_max = [k for k in keys if k.endswith("_max") or k == "rollout/rounds"]
    by_mean = [k for k in keys if k not in by_max]
    out = {}
    for names, op in ((by_mean, "sum"), (by_max, "max")):
        if names:
            values = all_reduce(torch.tensor([float(metrics[k]) for k in names], dtype=torch.float64, device=device), op)
            out.update({name: value / world if op == "sum" else value for name, value in zip(names, values.tolist())})
    return out
