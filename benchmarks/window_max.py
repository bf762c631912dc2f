"""The window maximum of the greedy rounds (``pixel_selectors.regions._window_max``): one pooling over the
(2r + 1)^2 window against one pooling per axis, side by side on one device, for the dtypes the rounds
pool (float32 priorities, float16 picks). Prints microseconds per call; both must agree exactly.

    python -m benchmarks.window_max [--device cuda] [--size 1024x2048] [--calls 200]
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.gpu_check import refuse_absent_packages, size_arg


def per_call_us(function, calls: int, synchronize) -> float:
    for _ in range(5):  # warm-up: kernels chosen, memory cached
        function()
    synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        function()
    synchronize()
    return (time.perf_counter() - started) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--size", type=size_arg, default=(1024, 2048), help="HEIGHTxWIDTH (1024x2048)")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per figure (200)")
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be >= 1")
    refuse_absent_packages()
    import torch
    import torch.nn.functional as F

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu)", file=sys.stderr)
        return 2
    device = torch.device(args.device)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    height, width = args.size
    for dtype in (torch.float32, torch.float16):
        values = (torch.rand(1, 1, height, width, device=device) * 100).round().to(dtype)
        for reach in (1, 2, 3):
            side = 2 * reach + 1

            def one():
                return F.max_pool2d(values, side, 1, reach)

            def per_axis():
                rows = F.max_pool2d(values, (side, 1), 1, (reach, 0))
                return F.max_pool2d(rows, (1, side), 1, (0, reach))

            if not torch.equal(one(), per_axis()):
                print(f"error: the two window maxima differ at reach {reach} in {dtype}", file=sys.stderr)
                return 1
            print(
                f"{str(dtype).removeprefix('torch.')} reach {reach} ({side}x{side}) at {height}x{width} on "
                f"{device.type}: one pooling {per_call_us(one, args.calls, synchronize):.1f} us, "
                f"one per axis {per_call_us(per_axis, args.calls, synchronize):.1f} us",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
