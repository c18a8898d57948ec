"""Learner speed against d3rlpy's CRR on the same dataset, timed in one run, alternating.

    python benchmarks/vs_d3rlpy.py                                  # zoo cheetah_run, CPU preset
    python benchmarks/vs_d3rlpy.py --scripts crr_ls dime_bc --rounds 3 --steps 300

d3rlpy is not a project dependency: it runs in its own virtual environment, given by --d3rlpy-python
(benchmarks/README.md shows how to make it). Every measurement is a fresh process (`--worker`), and the
rounds alternate d3rlpy and our scripts so that both see the same machine load; the best round of each
configuration is kept.

- d3rlpy: `CRRConfig(batch_size=256, n_action_samples=4)` with 256×3 encoders for actor and critic (its
  defaults otherwise: scalar critic, advantage "mean", exp weights, β = 1), a step being what its `fit`
  loop does: `dataset.sample_transition_batch` then `algo.update`.
- ours: the script's `learner_step` (minibatch drawn on the device, C51 critic with 101 atoms, N = 20
  sampled actions) at the CPU preset, fp32 and --bf16.

Prints ms per learner step and the ratio d3rlpy / ours (≥ 1: ours is no slower).
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, BATCH, D3RLPY_SAMPLES = (256, 256, 256), 256, 4


def d3rlpy_worker(dataset: str, steps: int, warmup: int) -> float:
    """Seconds per d3rlpy CRR step (batch sampling + update) on the project HDF5 `dataset`."""
    import d3rlpy
    import h5py
    import numpy as np

    with h5py.File(dataset, "r") as h5:
        columns = {k: h5[k][:] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    data = d3rlpy.dataset.MDPDataset(
        columns["observations"].astype(np.float32),
        columns["actions"].astype(np.float32),
        columns["rewards"].astype(np.float32),
        columns["terminals"].astype(np.float32),
        timeouts=columns["timeouts"].astype(np.float32),
    )
    encoder = d3rlpy.models.VectorEncoderFactory(list(HIDDEN))
    config = d3rlpy.algos.CRRConfig(
        batch_size=BATCH,
        n_action_samples=D3RLPY_SAMPLES,
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
    )
    algo = config.create(device="cpu:0")
    algo.build_with_dataset(data)

    def step():
        algo.update(data.sample_transition_batch(BATCH))

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def ours_worker(script: str, dataset: str, steps: int, warmup: int, bf16: bool, compile: bool) -> float:
    """Seconds per learner step of one of our scripts (CPU preset, N = 20): the offline ones on `dataset`,
    the online ones on a full replay of random transitions of the same sizes (benchmarks/speed.py)."""
    import importlib

    import torch

    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import speed

    from common.datasets import load_hdf5, nstep_transitions

    if script in speed.ONLINE:
        timer = speed.time_morl_learner if script == "dime_morl" else speed.time_finetune_learner
        return timer("cpu", torch.device("cpu"), steps, 20, compile, bf16)

    module = importlib.import_module(script)
    tradeoff = {} if script == "dime_multi" else {"alpha": 0.5}
    args = module.Args(**tradeoff, hidden_sizes=HIDDEN, batch_size=BATCH, num_samples=20, bf16=bf16)
    ds = load_hdf5(dataset)
    data = {k: torch.as_tensor(v) for k, v in nstep_transitions(ds, args.n_step, args.gamma).items()}
    agent = module.Agent(ds.observations.shape[1], ds.actions.shape[1], args)
    if compile:
        module.compile_networks(agent)
    optimizers = module.make_optimizers(agent, args)
    atoms = torch.linspace(args.v_min, args.v_max, args.num_atoms)
    gen = torch.Generator().manual_seed(0)
    for _ in range(warmup):
        module.learner_step(agent, optimizers, data, atoms, args, gen)
    start = time.perf_counter()
    for _ in range(steps):
        stats = module.learner_step(agent, optimizers, data, atoms, args, gen)
    stats["loss"].item()
    return (time.perf_counter() - start) / steps


def measure(python: str, worker: list[str], opts, threads: int) -> float:
    """Run one worker process and return its seconds per step."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [python, os.path.abspath(__file__), "--worker", *worker, "--dataset", opts.dataset]
    command += ["--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(worker)} failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_step"]


def default_dataset() -> str:
    """The zoo cheetah_run dataset (built on first use, ~1 minute on 2 cores)."""
    sys.path.insert(0, ROOT)
    from common.datasets import cache_dir, load_zoo

    return os.path.join(cache_dir(), load_zoo("cheetah_run").source.split(":", 1)[1] + ".hdf5")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", help="project/D4RL HDF5 file (default: the zoo cheetah_run dataset)")
    scripts = ["crr_ls", "dime_bc", "dime_awbc", "dime_multi", "dime_morl", "dime_finetune"]
    parser.add_argument("--scripts", nargs="+", default=scripts, choices=scripts)
    modes = ["fp32", "bf16", "compile-fp32", "compile-bf16"]
    parser.add_argument("--modes", nargs="+", default=modes[:2], choices=modes, help="precision, --compile")
    parser.add_argument("--d3rlpy-python", default=os.path.join(ROOT, ".venv-d3rlpy", "bin", "python"))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best is kept")
    parser.add_argument("--steps", type=int, default=200, help="timed learner steps per measurement")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before (caches, compilation)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP threads of every worker")
    parser.add_argument("--out", help="also write the table as JSON to this file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:  # inside a measurement process
        kind, *modes = opts.worker
        if kind == "d3rlpy":
            sec = d3rlpy_worker(opts.dataset, opts.steps, opts.warmup)
        else:
            sec = ours_worker(
                kind, opts.dataset, opts.steps, opts.warmup, "bf16" in modes, "compile" in modes
            )
        print(json.dumps({"seconds_per_step": sec}))
        return
    if not os.path.exists(opts.d3rlpy_python):
        sys.exit(f"error: no d3rlpy interpreter at {opts.d3rlpy_python}; make one (benchmarks/README.md)")
    opts.dataset = opts.dataset or default_dataset()
    configs = [("d3rlpy", (opts.d3rlpy_python, ["d3rlpy"]))]
    for script in opts.scripts:
        for mode in opts.modes:
            worker = [script, *mode.split("-")]
            configs.append((f"{script} {mode}", (sys.executable, worker)))
    best = {name: float("inf") for name, _ in configs}
    for r in range(opts.rounds):
        for name, (python, worker) in configs:
            sec = measure(python, worker, opts, opts.threads)
            best[name] = min(best[name], sec)
            print(f"round {r + 1}: {name:<20} {sec * 1e3:7.1f} ms/step", file=sys.stderr, flush=True)
    reference = best["d3rlpy"]
    print(
        f"dataset {opts.dataset}; {opts.threads} threads; best of {opts.rounds} rounds × {opts.steps} steps"
    )
    print(f"{'learner':<22}{'N':>3}{'critic':>8}{'ms/step':>9}{'steps/s':>9}{'ratio':>7}")
    rows = []
    for name, _ in configs:
        n, critic = (D3RLPY_SAMPLES, "scalar") if name == "d3rlpy" else (20, "C51")
        ratio = reference / best[name]
        print(f"{name:<22}{n:>3}{critic:>8}{best[name] * 1e3:>9.1f}{1 / best[name]:>9.1f}{ratio:>7.2f}")
        rows.append(
            dict(learner=name, num_samples=n, critic=critic, ms_per_step=best[name] * 1e3, ratio=ratio)
        )
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump({"dataset": opts.dataset, "threads": opts.threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
