"""run_passes: fixed-shape loops in blocks of passes, checked between blocks (the CPU path; the CUDA
graph path is compared with it in tests/test_gpu.py)."""

import pytest
import torch

from pixel_selectors.device_loops import GRAPHS_ENV, graphs_enabled, run_passes


def counting_loop(target: int, passes: int) -> tuple[int, int, list]:
    counter = torch.zeros(1, dtype=torch.int64)
    seen = []

    def body(counter):
        counter += 1

    def done(figures):
        seen.append(figures[0])
        return figures[0] >= target

    ran = run_passes(("count",), (counter,), body, lambda counter: counter, done, passes=passes, label="count")
    return ran, int(counter), seen


@pytest.mark.parametrize("target, passes, expected", [(5, 2, 6), (6, 2, 6), (1, 4, 4), (7, 1, 7)])
def test_passes_run_in_blocks_and_stop_at_the_first_check_that_is_done(target, passes, expected):
    ran, counter, seen = counting_loop(target, passes)
    assert ran == expected and counter == expected  # the state is updated in place
    assert seen == list(range(passes, expected + 1, passes))  # one check per block, after its passes


def test_graphs_are_off_on_a_cpu_and_where_the_environment_turns_them_off(monkeypatch):
    assert not graphs_enabled(torch.device("cpu"))
    monkeypatch.setenv(GRAPHS_ENV, "0")
    assert not graphs_enabled(torch.device("cuda"))  # decided before any CUDA call
