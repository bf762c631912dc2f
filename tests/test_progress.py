"""Progress lines of a training job: printed at the interval with steps, losses, images/s, time left."""

from trainers.progress import StepProgress, format_duration


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_prints_at_the_interval_with_mean_losses_speed_and_time_left():
    lines, clock = [], FakeClock()
    progress = StepProgress("t1 round 2", images_per_step=8, interval_s=30, write=lines.append, clock=clock)
    progress(1, 301, {"seg": 9.0})  # the first step carries start-up: the clock starts after it
    for step in range(2, 12):  # 10 steps, 2 s each: no line before 30 s
        clock.now += 2.0
        progress(step, 301, {"seg": 1.0 if step % 2 else 3.0, "adv": 0.5})
    assert lines == []
    for step in range(12, 17):  # 5 more steps: 30 s since the clock started
        clock.now += 2.0
        progress(step, 301, {"seg": 2.0, "adv": 0.5})
    assert lines == ["[t1 round 2] step 16/301 (5%) | loss: adv 0.5000 seg 2.0000 | 4.0 images/s | 9 min 30 s left"]
    clock.now += 1.0
    progress(301, 301, {"seg": 1.0})  # the last step always prints
    assert lines[-1].startswith("[t1 round 2] step 301/301 (100%) | loss: seg 1.0000 | 2280.0 images/s | 0 s left")


def test_progress_off_prints_nothing_and_durations_read_well():
    lines = []
    progress = StepProgress("x", 4, interval_s=0, write=lines.append)
    for step in range(1, 5):
        progress(step, 4, {"seg": 1.0})
    assert lines == []
    assert (format_duration(42), format_duration(75), format_duration(3725)) == ("42 s", "1 min 15 s", "1 h 02 min")
