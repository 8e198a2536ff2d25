"""Training-step time of student checkpoints side by side in one run (forward and backward of the student
alone on one batch of random crops, the teacher left out): what one architecture costs per step against
another, as a ratio, since absolute times on a shared machine are noisy.

Usage: python tools/bench_student_step.py [--batch 128] [--threads 2] [--repeats 6] STAGE.pt [STAGE2.pt ...]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge_model.train_consistent import load_stage, relational_loss  # noqa: E402
from edge_model.train_student import optimiser  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("checkpoints", nargs="+", type=Path)
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--repeats", type=int, default=6, help="Rounds over all checkpoints; the first is warm-up.")
args = parser.parse_args()
torch.set_num_threads(args.threads)
models = {path: load_stage(path)[0].float().to(memory_format=torch.channels_last) for path in args.checkpoints}
side = next(iter(models.values())).config.input_size
x = torch.randn(args.batch, 3, side, side).to(memory_format=torch.channels_last)
target = torch.randn(args.batch, 512)
optimisers = {path: optimiser([model], 1e-9, 0.0) for path, model in models.items()}
times: dict[Path, list[float]] = {path: [] for path in models}
for round_ in range(args.repeats):
    for path, model in models.items():  # interleaved, so drift in the machine's speed hits every model alike
        opt = optimisers[path]
        model.train()
        started = time.perf_counter()
        loss = relational_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if round_:
            times[path].append(time.perf_counter() - started)
first = None
for path, values in times.items():
    median = sorted(values)[len(values) // 2]
    first = first or median
    print(f"{path}: median {1000 * median:.0f} ms per {args.batch}-crop step, {median / first:.2f}x the first")
