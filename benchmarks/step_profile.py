"""Where a method's CPU training step spends its time: torch.profiler over the loop's own step.

    python benchmarks/step_profile.py                       # essl, lean_cnn, batch 128, 20 steps
    python benchmarks/step_profile.py --method mocov2 --backbone small_cnn --batch-size 256
    python benchmarks/step_profile.py --shapes              # one row per operator and input shape

The step is benchmarks/throughput.py's (synthetic 60k x 1x28x28 images resident, channels_last,
fp32), after 5 untimed steps. The table is sorted by self CPU time; the profiler adds its own
overhead, so read the shares, not the absolute times (benchmarks/throughput.py times the step).
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import throughput
from leanssl.data.loader import DeviceLoader
from leanssl.models.backbones import DEFAULT_BACKBONE


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="essl")
    ap.add_argument("--backbone", default=DEFAULT_BACKBONE)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--shapes", action="store_true", help="group rows by input shape too")
    ap.add_argument("--rows", type=int, default=30)
    a = ap.parse_args(argv)
    cpu = torch.device("cpu")
    x, info = throughput.synthetic((1, 28, 28), a.images)
    ours = throughput.Ours(a.method, DeviceLoader(x, cpu), info, a.backbone, a.batch_size, cpu, "fp32")
    ours.run(5)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=a.shapes) as prof:
        ours.run(a.steps)
    table = prof.key_averages(group_by_input_shape=a.shapes).table(sort_by="self_cpu_time_total", row_limit=a.rows)
    print(f"{a.method}, {a.backbone}, batch {a.batch_size}, {a.steps} steps, {torch.get_num_threads()} threads")
    print(table)
    return table


if __name__ == "__main__":
    main()
