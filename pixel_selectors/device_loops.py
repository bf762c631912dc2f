"""Fixed-shape loops on the device, replayed as CUDA graphs (torch; no I/O).

The GPU paths of the region blocks (the greedy spread's parallel rounds, connected components and
class pieces by label propagation) are loops of a handful of element-wise and pooling kernels on
full-image tensors: on a 1024 x 2048 map each kernel takes a few microseconds of device time and
about ten of host time to launch, so the host's launches, not the device, set the pace. Every pass
keeps the shapes it started with, so ``run_passes`` captures a few passes and the check that follows
them once, as a CUDA graph, and replays it: one launch for the lot. The same passes run uncaptured on
a CPU, and wherever ``ACTIVEDA_CUDA_GRAPHS=0`` turns the graphs off; the results are the same either
way (the graph replays the same kernels on the same values).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch.profiler import record_function

# Set to 0 to run the passes uncaptured on a GPU too (debugging, or a comparison of both paths).
GRAPHS_ENV = "ACTIVEDA_CUDA_GRAPHS"
# Graphs kept per process (one per loop kind, image size and setting); each holds its static tensors.
CACHED_GRAPHS = 8
# Uncaptured runs before a capture, on a side stream (PyTorch's recipe: lazy initialisations happen there).
WARMUP_RUNS = 2


def graphs_enabled(device: torch.device) -> bool:
    """Whether ``run_passes`` captures its passes on ``device``: CUDA, not turned off by
    ``ACTIVEDA_CUDA_GRAPHS=0``, and not already inside a capture."""
    if device.type != "cuda" or os.environ.get(GRAPHS_ENV, "1").strip() == "0":
        return False
    return not torch.cuda.is_current_stream_capturing()


class _CapturedPasses:
    """``passes`` runs of ``body`` then ``check`` on static copies of the state, as one CUDA graph."""

    def __init__(self, state: Sequence[torch.Tensor], body: Callable, check: Callable, passes: int):
        self.state = [tensor.clone() for tensor in state]
        side = torch.cuda.Stream(device=self.state[0].device)
        side.wait_stream(torch.cuda.current_stream(self.state[0].device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                for _ in range(passes):
                    body(*self.state)
                check(*self.state)
        torch.cuda.current_stream(self.state[0].device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for _ in range(passes):
                body(*self.state)
            self.figures = check(*self.state)

    def load(self, state: Sequence[torch.Tensor]) -> None:
        for static, tensor in zip(self.state, state):
            static.copy_(tensor)

    def store(self, state: Sequence[torch.Tensor]) -> None:
        for static, tensor in zip(self.state, state):
            tensor.copy_(static)


_graphs: OrderedDict[tuple, _CapturedPasses] = OrderedDict()
_graphs_lock = threading.Lock()


def _captured(key: tuple, state: Sequence[torch.Tensor], body, check, passes: int) -> _CapturedPasses:
    """The graph for ``key`` (captured on first use; the least recently used goes past ``CACHED_GRAPHS``)."""
    full_key = (key, passes, tuple((t.shape, t.dtype, t.device) for t in state))
    entry = _graphs.get(full_key)
    if entry is None:
        entry = _CapturedPasses(state, body, check, passes)
        _graphs[full_key] = entry
        while len(_graphs) > CACHED_GRAPHS:
            _graphs.popitem(last=False)
    _graphs.move_to_end(full_key)
    return entry


def run_passes(
    key: tuple,
    state: Sequence[torch.Tensor],
    body: Callable[..., None],
    check: Callable[..., torch.Tensor],
    done: Callable[[list], bool],
    passes: int,
    label: str,
) -> int:
    """Run ``body(*state)`` ``passes`` times, then read ``check(*state)`` (a small 1-D tensor) on the
    host, until ``done(figures)``; the state tensors end updated in place. Returns the passes run.

    ``body`` must update the state in place, keep every shape, and never wait for the device (no
    ``.item()``, no mask indexing): on a GPU it is captured once per ``key`` (which must name every
    constant ``body`` and ``check`` close over besides the state) and replayed. Passes run after the
    loop's end must change nothing (a fixed point), since the check comes every ``passes`` passes.
    ``label`` names each block of passes in a profile (``benchmarks.profile_selectors``).
    """
    device = state[0].device
    count = 0
    if not graphs_enabled(device):
        while True:
            with record_function(label):
                for _ in range(passes):
                    body(*state)
                figures = check(*state).tolist()
            count += passes
            if done(figures):
                return count
    with _graphs_lock:  # one replay at a time: the static tensors are shared
        entry = _captured(key, state, body, check, passes)
        entry.load(state)
        while True:
            with record_function(f"{label} (graph)"):
                entry.graph.replay()
                figures = entry.figures.tolist()
            count += passes
            if done(figures):
                break
        entry.store(state)
    return count
