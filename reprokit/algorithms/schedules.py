"""Learning-rate schedules: the multiplier of the base LR at each optimizer update, for every trainer in the kit.

:class:`LRSchedule` is a callable object rather than a closure so that ``torch.optim.lr_scheduler.LambdaLR``
saves its state in checkpoints, and :meth:`LRSchedule.extend` defines what a resumed run with a longer
``max_steps`` does: the decay is rebuilt for the new length from the resumed step, continuing from the LR
it had reached (no jump)::

    schedule = LRSchedule("linear", warmup=0, total=100)      # step 50: factor 0.5
    schedule.extend(total=200, step=50)                       # step 50: still 0.5, then linearly to 0 at 200
"""

from __future__ import annotations

import math

__all__ = ["LR_SCHEDULES", "LRSchedule"]

LR_SCHEDULES = ("constant", "cosine", "linear")


class LRSchedule:
    """Linear warm-up over ``warmup`` updates, then constant, cosine or linear decay to ``floor`` at ``total``.

    Args:
        schedule: ``constant``, ``cosine`` or ``linear``.
        warmup: warm-up updates (the factor rises as (step + 1) / warmup).
        total: the update at which the decay reaches ``floor`` (the run's max_steps).
        floor: the factor the decay ends at, as a fraction of the base LR (0 = decay to 0).
    """

    def __init__(self, schedule: str = "constant", warmup: int = 0, total: int = 1, floor: float = 0.0):
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
        if warmup < 0 or not 0.0 <= floor <= 1.0:
            raise ValueError(f"need warmup >= 0 and 0 <= floor <= 1, got warmup={warmup}, floor={floor}")
        self.schedule = schedule
        self.warmup = int(warmup)
        self.total = max(1, int(total))
        self.floor = float(floor)
        # The decay runs from (anchor_step, anchor_progress) to (total, 1); extend() moves the anchor.
        self.anchor_step = self.warmup
        self.anchor_progress = 0.0

    def progress(self, step: int) -> float:
        """Where the decay stands at ``step``, from 0 (start) to 1 (``total``)."""
        if step <= self.anchor_step:
            return self.anchor_progress
        span = max(1, self.total - self.anchor_step)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        p = self.progress(step)
        shape = 0.5 * (1.0 + math.cos(math.pi * p)) if self.schedule == "cosine" else 1.0 - p
        return self.floor + (1.0 - self.floor) * shape

    def extend(self, total: int, step: int) -> None:
        """Rebuild the decay for a new ``total`` from ``step`` on, keeping the factor at ``step``.

        The rest of the decay (from the progress reached at ``step`` to the end) is stretched or squeezed onto
        the updates left, so the LR is continuous at ``step`` and reaches ``floor`` at the new ``total``. During
        warm-up nothing has decayed yet: the decay simply starts after warm-up and ends at the new ``total``.
        """
        total = max(1, int(total))
        if total == self.total:
            return
        if step > self.anchor_step:
            self.anchor_progress = self.progress(step)
            self.anchor_step = int(step)
        self.total = total

    def __repr__(self) -> str:
        return (
            f"LRSchedule({self.schedule!r}, warmup={self.warmup}, total={self.total}, floor={self.floor}, "
            f"anchor=({self.anchor_step}, {self.anchor_progress:.4f}))"
        )
