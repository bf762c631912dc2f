"""Progress lines of a training job: steps, losses, images/s and the time left, at an interval.

A round of thousands of steps on real data takes hours; without these lines it is silent until it
ends. ``train_loop`` gives one ``StepProgress`` to ``engine.run_job`` on the first Train worker only
(rank 0), whose stdout Ray forwards to the driver's terminal. Plain Python: a test calls it with
numbers and a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def format_duration(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``, ``3725`` -> ``1 h 02 min``: what a person reads at a glance."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StepProgress:
    """Called after every step as ``progress(done, total, losses)``; prints one line every
    ``interval_s`` seconds (and after the last step): the mean of each loss since the previous line,
    images per second over the same span, and the time left at that speed.

    ``images_per_step`` counts what one step of the whole job consumes (source and target images
    per worker times the workers), as ``train/images_per_s`` does. ``interval_s <= 0`` prints nothing.
    """

    def __init__(
        self,
        label: str,
        images_per_step: int,
        interval_s: float,
        write: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.images_per_step, self.interval_s = label, images_per_step, interval_s
        self.write = write or (lambda line: print(line, flush=True))
        self.clock = clock
        self._last_time: float | None = None
        self._last_step = 0
        self._sums: dict[str, float] = {}
        self._count = 0

    def __call__(self, done: int, total: int, losses: Mapping[str, float]) -> None:
        if self.interval_s <= 0:
            return
        now = self.clock()
        if self._last_time is None:  # the first step also paid for start-up: measure from its end
            self._last_time, self._last_step = now, done
            return
        for name, value in losses.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._count += 1
        if now - self._last_time < self.interval_s and done < total:
            return
        steps = done - self._last_step
        rate = steps / max(now - self._last_time, 1e-9)
        mean = " ".join(f"{name} {value / self._count:.4f}" for name, value in sorted(self._sums.items()))
        left = format_duration((total - done) / rate) if rate > 0 else "?"
        self.write(
            f"[{self.label}] step {done}/{total} ({100 * done / max(total, 1):.0f}%) | loss: {mean or 'none'} | "
            f"{rate * self.images_per_step:.1f} images/s | {left} left"
        )
        self._last_time, self._last_step, self._sums, self._count = now, done, {}, 0
