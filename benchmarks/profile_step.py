"""Where a learner step's time goes: torch.profiler's per-op table for one script at the CPU preset.

    python benchmarks/profile_step.py --script crr_ls            # fp32
    python benchmarks/profile_step.py --script crr_ls --bf16     # every pass in bfloat16 autocast

Synthetic data of cheetah_run's sizes (benchmarks/speed.py); prints ms per step, then the ops sorted by
their own (self) CPU time over --steps profiled steps.
"""

import argparse
import importlib
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--script", default="crr_ls", choices=["crr_ls", "dime_bc", "dime_awbc", "dime_multi"]
    )
    parser.add_argument("--bf16", action="store_true", help="profile the --bf16 learner step")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks first")
    parser.add_argument("--steps", type=int, default=20, help="profiled learner steps")
    parser.add_argument("--rows", type=int, default=20, help="ops listed")
    opts = parser.parse_args()
    module = importlib.import_module(opts.script)
    tradeoff = {} if opts.script == "dime_multi" else {"alpha": 0.5}
    args = module.Args(
        **tradeoff, hidden_sizes=(256, 256, 256), batch_size=256, num_samples=20, bf16=opts.bf16
    )
    args = module.check_device(args)[1]  # as main(): the allocator settings, the --bf16 check
    agent = module.Agent(17, 6, args)
    if opts.compile:
        module.compile_networks(agent)
    optimizers, size, gen = module.make_optimizers(agent, args), 100_000, torch.Generator().manual_seed(0)
    data = {"observations": torch.randn(size, 17), "next_observations": torch.randn(size, 17)}
    data.update(actions=torch.rand(size, 6) * 2 - 1, next_actions=torch.rand(size, 6) * 2 - 1)
    data.update(returns=torch.rand(size) * 5, discounts=torch.full((size,), 0.99**5))
    data["next_action_valid"] = torch.ones(size, dtype=torch.bool)
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms)
    step = lambda: module.learner_step(agent, optimizers, data, atoms, args, gen)
    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(opts.steps):
        step()
    mode = ("compile " if opts.compile else "") + ("bf16" if opts.bf16 else "fp32")
    ms = (time.perf_counter() - start) / opts.steps * 1e3
    print(f"{opts.script} {mode}, CPU preset, N = 20, {torch.get_num_threads()} threads: {ms:.1f} ms/step")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(opts.steps):
            step()
    print(
        prof.key_averages().table(
            sort_by="self_cpu_time_total", row_limit=opts.rows, max_name_column_width=40
        )
    )


if __name__ == "__main__":
    main()
