"""Learner and actor speed of the scripts, measured on synthetic data (nothing is trained).

    python benchmarks/speed.py                       # CPU preset and paper size, on CUDA when present
    python benchmarks/speed.py --presets cpu --steps 50

Prints ms per learner step and learner steps/s per script and preset, and env steps/s of the actors.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dime_morl  # noqa: E402

PRESETS = {  # name: (hidden sizes, batch size)
    "cpu": ((256, 256, 256), 256),
    "paper": ((1024, 1024, 1024, 1024, 1024, 512), 512),
}


def time_morl_learner(preset, device, steps, num_samples=20, compile=False, obs_dim=17, act_dim=6) -> float:
    """Seconds per dime_morl learner step on a full replay of random transitions (cheetah_run sizes)."""
    hidden, batch = PRESETS[preset]
    args = dime_morl.Args(
        env_id="cheetah_run",
        hidden_sizes=hidden,
        batch_size=batch,
        buffer_size=100_000,
        num_samples=num_samples,
    )
    agent = dime_morl.Agent(obs_dim, act_dim, 2, args).to(device)
    if compile:
        dime_morl.compile_networks(agent)
    optimizers = dime_morl.make_optimizers(agent, args)
    replay = dime_morl.Replay(args.buffer_size, args.num_envs, obs_dim, act_dim, 2, device)
    for v in replay.data.values():
        v.copy_(torch.rand(v.shape) < 0.001 if v.dtype == torch.bool else torch.randn(v.shape))
    replay.full = True
    atoms = dime_morl.critic_supports(args, act_dim).to(device)
    gen = torch.Generator(device).manual_seed(0)
    warmup = 10 if compile else 5
    for i in range(steps + warmup):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        stats = dime_morl.learner_step(agent, optimizers, replay, atoms, args, gen)
    stats["loss"].item()  # wait for the device
    return (time.perf_counter() - start) / steps


def time_actors(env_id: str, num_envs: int, steps: int) -> float:
    """Environment steps per second of the vector env with random actions (physics only)."""
    envs = dime_morl.make_envs(env_id, num_envs)
    envs.reset(seed=[0] * num_envs)
    start = time.perf_counter()
    for _ in range(steps):
        envs.step(envs.action_space.sample())
    return steps * num_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--steps", type=int, default=30, help="timed learner steps per measurement")
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even when CUDA is present")
    opts = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not opts.cpu else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    print(f"device: {device} ({where}, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(
        f"{'script':<11}{'preset':<7}{'hidden':<30}{'batch':>6}{'N':>4}{'compile':>9}{'ms/step':>9}{'steps/s':>9}"
    )
    for preset in opts.presets:
        steps = opts.steps if preset == "cpu" or device.type == "cuda" else max(opts.steps // 10, 3)
        variants = [(20, False), (20, True), (4, False)] if preset == "cpu" else [(20, False)]
        for num_samples, compile in variants:
            sec = time_morl_learner(preset, device, steps, num_samples, compile)
            hidden, batch = PRESETS[preset]
            row = f"{'dime_morl':<11}{preset:<7}{str(hidden):<30}{batch:>6}{num_samples:>4}{str(compile):>9}"
            print(f"{row}{sec * 1e3:>9.1f}{1 / sec:>9.1f}")
    print(
        f"actors: cheetah_run, 4 envs: {time_actors('cheetah_run', 4, 500):.0f} env steps/s (random actions)"
    )


if __name__ == "__main__":
    main()
