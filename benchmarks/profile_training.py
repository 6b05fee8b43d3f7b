"""Where a PixelNet training step spends its time: torch.profiler over a few steps, grouped by kind of work.

The model is the throughput benchmark's (64 channels, 7 blocks, 28x28, batch
64, Adam) at --levels (256 by default); the table groups the profiler's
operators into convolutions, BatchNorm, elementwise work (ReLU, adds,
copies, fills), the softmax loss and the optimizer, with each group's share
of the step.  It also counts the multiply-adds of every convolution, to show
how far from the machine's matmul speed the convolutions run.

    python benchmarks/profile_training.py
    python benchmarks/profile_training.py --levels 2 --norm none
    python benchmarks/profile_training.py --levels 2 --kernel 5 --batch 32 --conditional   # the default model
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `pixelnet train` runs; before torch loads OpenMP

import torch  # noqa: E402
from torch.profiler import profile  # noqa: E402

from pixelnet.config import TrainConfig  # noqa: E402
from pixelnet.model import ModelConfig  # noqa: E402
from pixelnet.model.build import build_model  # noqa: E402
from pixelnet.model.layers import MaskedConv2d  # noqa: E402
from pixelnet.training.loop import TrainStep  # noqa: E402

GROUPS = {  # operator name fragment -> group, first match wins
    "convolution": "convolutions (forward and backward)",
    "batch_norm": "BatchNorm (forward and backward)",
    "softmax": "softmax loss (forward and backward)",
    "nll_loss": "softmax loss (forward and backward)",
    "Adam": "Adam step",
    "clamp_min": "elementwise: ReLU, adds, copies, fills",
    "threshold_backward": "elementwise: ReLU, adds, copies, fills",
    "add": "elementwise: ReLU, adds, copies, fills",
    "copy_": "elementwise: ReLU, adds, copies, fills",
    "fill_": "elementwise: ReLU, adds, copies, fills",
}


def conv_macs(model: torch.nn.Module, height: int, width: int) -> int:
    """Multiply-adds of one image's forward convolutions, counting only the kernel rows each conv runs."""
    total = 0
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            k = m.kernel_size[0]
            rows = k // 2 + 1
            total += m.out_channels * (m.in_channels // m.groups) * rows * k * height * width
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--levels", type=int, default=256)
    ap.add_argument("--norm", default="batch", choices=["batch", "none"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--kernel", type=int, default=3, help="the blocks' masked k x k convs")
    ap.add_argument("--conditional", action="store_true", help="class-conditional, 10 classes")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="pixelcnn", channels=64, blocks=7, first_kernel=7, kernel=args.kernel, head="softmax",
                                    norm=args.norm,
                                    conditional=args.conditional, levels=args.levels, image_channels=1, height=28,
                                    width=28, n_classes=10)).train()
    step = TrainStep(model, TrainConfig(batch_size=args.batch, lr=1e-3, lr_schedule="constant", warmup_fraction=0.0,
                                        ema_decay=0.0),
                     total_steps=args.steps + 3)
    x = torch.randint(0, args.levels, (args.batch, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (args.batch,)) if args.conditional else None
    for _ in range(3):
        step(x, y)
    t0 = time.perf_counter()
    with profile() as prof:
        for _ in range(args.steps):
            step(x, y).item()
    wall = (time.perf_counter() - t0) / args.steps

    shares: dict[str, float] = {}
    total = 0.0
    for ev in prof.key_averages():
        total += ev.self_cpu_time_total
        group = next((g for frag, g in GROUPS.items() if frag in ev.key), "other")
        shares[group] = shares.get(group, 0.0) + ev.self_cpu_time_total
    macs = conv_macs(model, 28, 28) * args.batch * 3  # forward + the two backward products
    print(f"# {args.steps} steps of batch {args.batch}, levels {args.levels}, kernel {args.kernel}, norm {args.norm}, "
          f"{'conditional, ' if args.conditional else ''}"
          f"threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"{wall * 1e3:.0f} ms a step under the profiler ({args.batch / wall:.0f} images/s)")
    print("| work | share of the step |")
    print("|---|---:|")
    for group, us in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {us / total:.0%} |")
    conv_s = shares.get("convolutions (forward and backward)", 0.0) / 1e6 / args.steps
    print(f"\nconvolutions: {macs / 1e9:.2f} G multiply-adds a step (forward and backward), "
          f"{2 * macs / conv_s / 1e9:.0f} GFLOP/s while they run")
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    print(f"a 2048 x 2048 matmul on this machine: {2 * 2048 ** 3 * 5 / (time.perf_counter() - t0) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
