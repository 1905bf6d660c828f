"""Learning-rate schedules: the multiplier of the base LR at each optimizer update, for every trainer in the kit.

:class:`LRSchedule` is a callable object rather than a closure so that ``torch.optim.lr_scheduler.LambdaLR``
saves its state in checkpoints, and :meth:`LRSchedule.extend` defines what a resumed run with a longer
``max_steps`` does: the decay is rebuilt for the new length from the resumed step, continuing from the LR
it had reached (no jump)::

    schedule = LRSchedule("linear", warmup=0, total=100)      # the update at step 49 runs at factor 0.51
    schedule.extend(total=200, step=50)                       # resumed after 50: 0.51 at step 49, then down to 0 at 200
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
        # The decay in pieces (start step, progress there, the total it heads for); extend() adds one.
        self.segments: list[tuple[int, float, int]] = [(self.warmup, 0.0, self.total)]

    def progress(self, step: int) -> float:
        """Where the decay stands at ``step``, from 0 (start) to 1 (``total``)."""
        start, start_progress, total = self.segments[0]
        for segment in self.segments:
            if segment[0] <= step:
                start, start_progress, total = segment
        if step <= start:
            return start_progress
        span = max(1, total - start)
        return min(1.0, start_progress + (1.0 - start_progress) * (step - start) / span)

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        p = self.progress(step)
        shape = 0.5 * (1.0 + math.cos(math.pi * p)) if self.schedule == "cosine" else 1.0 - p
        return self.floor + (1.0 - self.floor) * shape

    def extend(self, total: int, step: int) -> None:
        """Rebuild the decay for a new ``total`` when a run resumes at ``step`` (``step`` updates done).

        The last update done (``step - 1``) keeps its factor, and the rest of the decay, from the progress reached
        there to the end, is spread over the updates up to the new ``total``: the LR is continuous, keeps
        decreasing, and reaches ``floor`` at the new ``total``. (A run that had finished its decay continues from
        the small LR of its last update rather than from 0.) During warm-up nothing has decayed yet: the decay
        simply starts after warm-up and ends at the new ``total``.
        """
        total = max(1, int(total))
        if total == self.total:
            return
        last = max(int(step) - 1, self.warmup)
        self.segments = [seg for seg in self.segments if seg[0] < last] + [(last, self.progress(last), total)]
        self.total = total

    def __repr__(self) -> str:
        return f"LRSchedule({self.schedule!r}, warmup={self.warmup}, total={self.total}, floor={self.floor}, segments={self.segments})"
